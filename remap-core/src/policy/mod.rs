//! The I/O policy: what every request and every failure does, written once for every
//! frontend (`docs/design.md`, "I/O semantics").
//!
//! [`RemapDevice`](crate::RemapDevice) runs it behind its lock-free fast path, and the kernel
//! target (`remap-kmod`) runs it in its work queue behind its gate. Both give it the same
//! three seams ([`seam`]): synchronous block I/O on the main and the spare device, with a
//! way to order "data durable before the record that names it"; a [`Journal`] that makes
//! records durable; and the time, passed in. Everything else is decided here: which requests
//! split where ([`runs`]), how a failing read is isolated and retried, when a block becomes
//! pending, how a failing write is isolated and the blocks moved to spares (contiguous
//! choice, the old spare retired only once the data has a new home, at most
//! [`MAX_SPARE_ATTEMPTS`] spare blocks per block), partial writes over unreadable blocks,
//! write-zeroes and discard, manual map and unmap, when a commit happens, and the exhausted
//! and poisoned states. Errors and their `errno` are [`PolicyError`]'s.
//!
//! `no_std` + `alloc`, no floating point: the kernel links it.

mod engine;
mod error;
mod geometry;
pub mod runs;
pub mod seam;

pub use engine::{Policy, Tunables, update_gauges};
pub use error::PolicyError;
pub use geometry::Geometry;
pub use seam::{BlockIo, Dev, IoFault, Journal};

use crate::health::{HealthInputs, HealthReport, HealthState, HealthThresholds, evaluate};
use crate::stats::StatsSnapshot;

/// The most read retries a configuration may ask for (the superblock keeps the same limit).
pub const MAX_READ_RETRIES: u32 = 16;
/// The most spare blocks tried for one block before its write fails.
pub const MAX_SPARE_ATTEMPTS: u32 = 8;
/// Free spare blocks kept clear around the start of a new run of remapped blocks, so
/// neighbouring runs that grow at the same time do not interleave.
pub const RUN_GAP: u64 = 64;
/// Write-zeroes that must go through the write path are done in pieces of at most this size.
pub const ZERO_PIECE: u64 = 1 << 20;

/// The health verdict every frontend reports: the evaluation of the counters against the
/// thresholds, and critical whatever the figures once writes have stopped after a metadata
/// failure (the device needs an operator).
pub fn verdict(
    stats: &StatsSnapshot,
    thresholds: &HealthThresholds,
    poisoned: bool,
) -> HealthReport {
    let mut report = evaluate(&HealthInputs::from_snapshot(stats), thresholds);
    if poisoned {
        report.state = HealthState::Critical;
    }
    report
}

/// What a frontend asks of the device, for the rules that need no table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Read,
    Write,
    WriteZeroes,
    Discard,
    Flush,
}

/// Whether `request` is refused outright: once writes have stopped after a metadata failure
/// (poisoned) only reads are served, since the table in memory may be ahead of the one on
/// disk and nothing may be acknowledged as durable through it.
#[inline]
pub fn refused(request: Request, poisoned: bool) -> bool {
    poisoned && request != Request::Read
}
