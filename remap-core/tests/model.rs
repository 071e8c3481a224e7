//! The model-based test over the in-memory store: random reads, writes (aligned, unaligned,
//! multi-block, FUA), write-zeroes, trims, flushes, injected faults on main and spare, failed
//! commits, and crashes with reopen from the committed records, against the reference model
//! in `remap_core::testing::model`. A failure shrinks to a minimal history and prints it.
//!
//! `REMAP_MODEL_CASES` sets the case count (default 1,000); `REMAP_MODEL_SEED` repeats a run.

use remap_core::testing::model::{self, MemStoreHarness};

#[test]
fn device_matches_the_reference_model() {
    model::run::<MemStoreHarness>();
}
