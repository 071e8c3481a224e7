//! The model-based test of `remap-core` again, with the real on-disk store under it: the
//! journal, checkpoints and superblocks live on the simulated spare device, and after each
//! simulated crash the device is rebuilt from the crash image of the spare alone, through
//! the same recovery `remap` runs on open. A 4-block journal makes the ring wrap and
//! checkpoints happen within short histories.
//!
//! Every reopen after a crash here also crashes a second time during the first metadata
//! write after recovery: it opens the device, checkpoints (superblock updates included),
//! cuts the power at a point of that history chosen from the reopen count, with a seeded
//! choice of which unflushed writes survive, and opens again from that image. The model's
//! expectations do not change: a checkpoint changes no block's contents.
//!
//! `REMAP_MODEL_CASES` sets the case count (default 1,000); `REMAP_MODEL_SEED` repeats a run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use remap_core::BlockBackend;
use remap_core::clock::Clock;
use remap_core::device::DeviceConfig;
use remap_core::testing::model::{
    self, Harness, HarnessError, ModelDevice, ModelGeometry, ModelMain, ModelSpare,
};
use remap_meta::{CreateOptions, DeviceIdentity, Geometry, create, open};

const JOURNAL_BLOCKS: u32 = 4;

/// Formats the spare with `remap_meta::create` and reopens with `remap_meta::open`.
#[derive(Debug, Default)]
struct JournalHarness {
    /// Where the spare pool starts: everything before it is metadata.
    metadata_bytes: u64,
    /// Reopens so far: picks the second crash's point and outcome.
    reopens: u64,
}

/// Second crashes that cut a checkpoint after recovery part way, over the whole run.
static SECOND_CRASHES_INSIDE: AtomicU64 = AtomicU64::new(0);

fn plan(geometry: &ModelGeometry) -> Geometry {
    Geometry::smallest_for_pool(
        geometry.main_bytes,
        geometry.block_size,
        JOURNAL_BLOCKS,
        geometry.spare_blocks,
    )
    .expect("the model's geometry can be laid out")
}

impl Harness for JournalHarness {
    const CAN_FAIL_COMMITS: bool = true;

    fn new() -> Self {
        JournalHarness::default()
    }

    fn spare_bytes(&self, geometry: &ModelGeometry) -> u64 {
        plan(geometry).spare_size
    }

    fn create(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<dyn Clock>,
        config: DeviceConfig,
    ) -> Result<ModelDevice, HarnessError> {
        let opts = CreateOptions {
            block_size: geometry.block_size,
            journal_blocks: Some(JOURNAL_BLOCKS),
            pool_blocks: Some(geometry.spare_blocks),
            thresholds: config.thresholds,
            read_retries: config.read_retries,
            ..Default::default()
        };
        let sb = create(&*spare, main.size_bytes(), DeviceIdentity::NONE, &opts)?;
        self.metadata_bytes = sb.geometry.pool_offset;
        // Formatting is not part of the history under test: make it durable.
        spare.flush()?;
        Ok(open(main, spare, &DeviceIdentity::NONE, clock)?.device)
    }

    fn reopen(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        _geometry: &ModelGeometry,
        clock: Arc<dyn Clock>,
        _config: DeviceConfig,
    ) -> Result<ModelDevice, HarnessError> {
        // Recovery, then the first metadata writes after it, then a second power cut.
        self.reopens += 1;
        let crash = spare.inner();
        let start = crash.history_len();
        open(
            main.clone(),
            spare.clone(),
            &DeviceIdentity::NONE,
            clock.clone(),
        )?
        .device
        .checkpoint()?;
        let written = crash.history_len() - start;
        let point = start + (self.reopens.wrapping_mul(7919) % (written as u64 + 1)) as usize;
        if point > start && point < crash.history_len() {
            SECOND_CRASHES_INSIDE.fetch_add(1, Ordering::Relaxed);
        }
        let image = crash.crash_image_seeded(point, self.reopens);
        // Put the second crash's image back on the spare, durably, and open from it.
        spare.write_at(0, &image)?;
        spare.flush()?;
        Ok(open(main, spare, &DeviceIdentity::NONE, clock)?.device)
    }

    /// A dying metadata region: every write to it fails (the spare's faults are in 512-byte
    /// sectors, and a reopen after a crash starts with a healthy spare).
    fn fail_commits(&mut self, spare: &ModelSpare) {
        spare.fail_writes(0..self.metadata_bytes.div_ceil(512));
    }
}

#[test]
fn device_with_the_journal_store_matches_the_reference_model() {
    model::run::<JournalHarness>();
    let inside = SECOND_CRASHES_INSIDE.load(Ordering::Relaxed);
    eprintln!("model: {inside} second crashes inside the first checkpoint after recovery");
    assert!(
        inside > 0,
        "the second crash must land inside the checkpoint sometimes"
    );
}
