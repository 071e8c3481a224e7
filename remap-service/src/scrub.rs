//! The scrub: read every block of a range, so that bad blocks are found (and marked pending,
//! persisted) before the data on them is needed. Shared by `remap scrub` (in the
//! foreground, with a progress bar) and `remap serve` (in the background, started and watched
//! through the control socket).
//!
//! - Reads go through [`RemapDevice::scrub_read`]: main or spare, wherever each block lives,
//!   with the engine's isolation and retries; a block that cannot be read is marked pending
//!   by the engine, durably, before the read returns. Nothing here writes user data.
//! - A *resumable* scrub (one that starts at the persisted cursor) saves the cursor with
//!   [`RemapDevice::update_settings`] every few seconds and when it stops, always at a chunk
//!   boundary, so the next resumable scrub starts exactly after the last chunk read. When a
//!   resumable scrub reaches the last block, a pass is complete: the pass counter goes up and
//!   the cursor returns to 0. So a pass is counted only when every block of the device was
//!   read by a chain of resumable scrubs.
//! - A scrub of an explicit range (not resumable) is a one-off check: it leaves the cursor and
//!   the pass count alone.
//! - The rate limit is a token bucket ([`crate::throttle`]) charged before each chunk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use remap_core::{BlockBackend, DeviceError, RemapDevice};
use serde::{Deserialize, Serialize};

use crate::blocks::OutOfRange;
use crate::throttle::Throttle;

/// The largest chunk read at once.
pub const MAX_CHUNK_BYTES: u64 = 1 << 20;
/// How often a resumable scrub saves its cursor.
pub const SAVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unreadable blocks listed by number in a status (all are counted).
pub const MAX_LISTED_BLOCKS: usize = 1024;

/// What to scrub and how fast.
#[derive(Debug, Clone, PartialEq)]
pub struct ScrubPlan {
    /// First block to read.
    pub first: u64,
    /// One past the last block to read.
    pub end: u64,
    /// Save the cursor and count passes (the scrub started at the persisted cursor).
    pub resumable: bool,
    /// Limit in bytes per second.
    pub rate_bytes_per_s: Option<u64>,
    /// Blocks read at once.
    pub chunk_blocks: u64,
    pub save_interval: Duration,
}

impl ScrubPlan {
    /// Chunk size for a rate: about a tenth of a second of reading (so a stop is quick and
    /// the rate is smooth), at least one block, at most [`MAX_CHUNK_BYTES`] or `max_bytes`.
    pub fn chunk_blocks_for(block_size: u64, rate: Option<u64>, max_bytes: u64) -> u64 {
        let want = rate.map_or(max_bytes, |r| r / 10).min(max_bytes);
        (want / block_size.max(1)).max(1)
    }
}

/// Where a scrub is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScrubState {
    /// No scrub has run in this process.
    #[default]
    Idle,
    Running,
    /// Reached the end of its range.
    Finished,
    /// Stopped on request before the end; the cursor is saved (if resumable).
    Stopped,
    /// Stopped by an error other than an unreadable block.
    Failed,
}

impl ScrubState {
    pub fn as_str(self) -> &'static str {
        match self {
            ScrubState::Idle => "idle",
            ScrubState::Running => "running",
            ScrubState::Finished => "finished",
            ScrubState::Stopped => "stopped",
            ScrubState::Failed => "failed",
        }
    }
}

/// The progress of one scrub, as the progress bar, the control socket and the metrics see
/// it. `--json` prints it at the end.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ScrubStatus {
    pub state: ScrubState,
    pub resumable: bool,
    /// The range: first block and one past the last.
    pub first_block: u64,
    pub end_block: u64,
    /// The next block to read.
    pub cursor: u64,
    /// Blocks and bytes read by this scrub.
    pub blocks_read: u64,
    pub bytes_read: u64,
    /// Blocks that could not be read (pending now), counted and, up to
    /// [`MAX_LISTED_BLOCKS`], listed.
    pub unreadable_count: u64,
    pub unreadable: Vec<u64>,
    /// Of those, blocks that were not pending before this scrub.
    pub newly_pending: u64,
    pub rate_limit_bytes_per_s: Option<u64>,
    pub elapsed_s: f64,
    /// Measured: bytes read over elapsed time.
    pub bytes_per_s: f64,
    /// Persisted scrub progress after this scrub (as of its last save).
    pub saved_cursor: u64,
    pub passes: u64,
    /// This scrub completed a pass.
    pub pass_completed: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

impl ScrubStatus {
    /// Blocks in the range.
    pub fn total_blocks(&self) -> u64 {
        self.end_block.saturating_sub(self.first_block)
    }

    /// Share of the range done, 0 to 1.
    pub fn fraction_done(&self) -> f64 {
        let total = self.total_blocks();
        if total == 0 {
            return 1.0;
        }
        self.cursor.saturating_sub(self.first_block) as f64 / total as f64
    }
}

/// Why a scrub stopped before its end (unreadable blocks are findings, not errors).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScrubError {
    #[error("block {lba}: scrub read failed: {source}")]
    Read {
        lba: u64,
        #[source]
        source: DeviceError,
    },
    #[error("cannot save the scrub cursor (block {cursor}): {source}")]
    SaveCursor {
        cursor: u64,
        #[source]
        source: DeviceError,
    },
    #[error("flush and checkpoint after the scrub failed: {source}")]
    Shutdown {
        #[source]
        source: DeviceError,
    },
}

/// Why a scrub range was refused before anything was read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    #[error(transparent)]
    OutOfRange(#[from] OutOfRange),
    #[error("{}: the range starts at block {first}, after its last block {last}", path.display())]
    Reversed {
        path: PathBuf,
        first: u64,
        last: u64,
    },
    #[error("{}: the saved scrub cursor (block {cursor}) is already past the last block asked for ({last}); name a first block to check an earlier range", path.display())]
    CursorPast {
        path: PathBuf,
        cursor: u64,
        last: u64,
    },
}

impl ScrubPlan {
    /// The plan for a scrub of `device` (whose main device is `path`, for messages): from
    /// `first` (a one-off check of a range, which leaves the cursor alone) or else from the
    /// saved cursor (resumable), to `last` inclusive or else the end, at `rate` bytes per
    /// second or unlimited, in chunks of at most `max_chunk_bytes`.
    pub fn for_range<M: BlockBackend, S: BlockBackend>(
        device: &RemapDevice<M, S>,
        path: &Path,
        first: Option<u64>,
        last: Option<u64>,
        rate: Option<u64>,
        max_chunk_bytes: u64,
    ) -> Result<ScrubPlan, RangeError> {
        let blocks = device.blocks();
        let block_size = device.block_size();
        for lba in [first, last].into_iter().flatten() {
            if lba >= blocks {
                return Err(OutOfRange {
                    path: path.to_path_buf(),
                    lba,
                    blocks,
                    block_size: block_size.bytes(),
                }
                .into());
            }
        }
        if let (Some(first), Some(last)) = (first, last)
            && first > last
        {
            return Err(RangeError::Reversed {
                path: path.to_path_buf(),
                first,
                last,
            });
        }
        let settings = device.settings();
        if let Some(last) = last
            && first.is_none()
            && settings.scrub_cursor > last
        {
            return Err(RangeError::CursorPast {
                path: path.to_path_buf(),
                cursor: settings.scrub_cursor,
                last,
            });
        }
        Ok(ScrubPlan {
            first: first.unwrap_or(settings.scrub_cursor.min(blocks)),
            end: last.map_or(blocks, |t| t + 1),
            resumable: first.is_none(),
            rate_bytes_per_s: rate,
            chunk_blocks: ScrubPlan::chunk_blocks_for(
                block_size.bytes_u64(),
                rate,
                max_chunk_bytes,
            ),
            save_interval: SAVE_INTERVAL,
        })
    }
}

/// Whether a scrub read error is a finding (the block is unreadable and now pending) rather
/// than a failure of the device pair.
fn is_finding(e: &DeviceError) -> bool {
    matches!(
        e,
        DeviceError::ReadFailed { .. }
            | DeviceError::Pending { .. }
            | DeviceError::SpareReadFailed { .. }
    )
}

/// Blocks in `[first, end)` without a readable copy: pending, or whose spare was retired.
fn unreadable_in<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    first: u64,
    end: u64,
) -> BTreeSet<u64> {
    device
        .entries(first, end)
        .into_iter()
        .filter(|(_, e)| !e.is_remapped())
        .map(|(lba, _)| lba)
        .collect()
}

/// Run a scrub to the end of `plan` or until `stop` is set. `status` is updated after every
/// chunk (others may read it meanwhile); `on_chunk` is called after every chunk too.
pub fn run<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    plan: &ScrubPlan,
    stop: &AtomicBool,
    status: &Mutex<ScrubStatus>,
    on_chunk: &mut dyn FnMut(&ScrubStatus),
) -> Result<ScrubStatus, ScrubError> {
    let block_size = device.block_size().bytes_u64();
    let size = device.size_bytes();
    let end = plan.end.min(device.blocks());
    let chunk_blocks = plan
        .chunk_blocks
        .clamp(1, (MAX_CHUNK_BYTES / block_size).max(1));
    let mut buf = vec![0u8; (chunk_blocks * block_size) as usize];
    let mut throttle = plan
        .rate_bytes_per_s
        .map(|r| Throttle::new(r, chunk_blocks * block_size));
    let settings = device.settings();
    {
        let mut s = status.lock();
        *s = ScrubStatus {
            state: ScrubState::Running,
            resumable: plan.resumable,
            first_block: plan.first,
            end_block: end,
            cursor: plan.first,
            rate_limit_bytes_per_s: plan.rate_bytes_per_s,
            saved_cursor: settings.scrub_cursor,
            passes: settings.scrub_passes,
            ..ScrubStatus::default()
        };
    }
    tracing::info!(
        first = plan.first,
        end,
        resumable = plan.resumable,
        rate = ?plan.rate_bytes_per_s,
        "scrub started"
    );
    let started = Instant::now();
    let mut last_save = Instant::now();
    let mut cursor = plan.first;
    let mut failure: Option<ScrubError> = None;
    while cursor < end {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let blocks = chunk_blocks.min(end - cursor);
        let offset = cursor * block_size;
        let len = (blocks * block_size).min(size - offset);
        if let Some(t) = throttle.as_mut()
            && !t.take(len, stop)
        {
            break;
        }
        let before = unreadable_in(device, cursor, cursor + blocks);
        let found = match device.scrub_read(offset, &mut buf[..len as usize]) {
            Ok(()) => BTreeSet::new(),
            Err(e) if is_finding(&e) => {
                let mut now = unreadable_in(device, cursor, cursor + blocks);
                if now.is_empty() {
                    // The engine named a block but a concurrent write has already moved it:
                    // it was unreadable all the same.
                    if let Some(lba) = lba_of(&e) {
                        now.insert(lba);
                    }
                }
                now
            }
            Err(source) => {
                failure = Some(ScrubError::Read {
                    lba: cursor,
                    source,
                });
                break;
            }
        };
        cursor += blocks;
        let mut s = status.lock();
        for &lba in &found {
            let new = !before.contains(&lba);
            if new {
                tracing::warn!(lba, "scrub: block unreadable; marked pending");
                s.newly_pending += 1;
            } else {
                tracing::info!(lba, "scrub: block still unreadable (already pending)");
            }
            s.unreadable_count += 1;
            if s.unreadable.len() < MAX_LISTED_BLOCKS {
                s.unreadable.push(lba);
            }
        }
        s.cursor = cursor;
        s.blocks_read += blocks;
        s.bytes_read += len;
        s.elapsed_s = started.elapsed().as_secs_f64();
        s.bytes_per_s = rate(s.bytes_read, s.elapsed_s);
        let snapshot = s.clone();
        drop(s);
        if plan.resumable && last_save.elapsed() >= plan.save_interval && cursor < end {
            save(device, status, |c| c.scrub_cursor = cursor)?;
            last_save = Instant::now();
        }
        on_chunk(&snapshot);
    }

    let reached_end = cursor >= end && failure.is_none();
    if plan.resumable {
        if reached_end && end >= device.blocks() {
            save(device, status, |c| {
                c.scrub_cursor = 0;
                c.scrub_passes = c.scrub_passes.saturating_add(1);
            })?;
            status.lock().pass_completed = true;
            tracing::info!("scrub: pass complete");
        } else {
            save(device, status, |c| c.scrub_cursor = cursor)?;
        }
    }
    let mut s = status.lock();
    s.elapsed_s = started.elapsed().as_secs_f64();
    s.bytes_per_s = rate(s.bytes_read, s.elapsed_s);
    s.state = match (&failure, reached_end) {
        (Some(_), _) => ScrubState::Failed,
        (None, true) => ScrubState::Finished,
        (None, false) => ScrubState::Stopped,
    };
    s.error = failure.as_ref().map(ToString::to_string);
    tracing::info!(
        state = s.state.as_str(),
        cursor,
        bytes = s.bytes_read,
        unreadable = s.unreadable_count,
        "scrub ended"
    );
    let done = s.clone();
    drop(s);
    match failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds
    } else {
        0.0
    }
}

fn lba_of(e: &DeviceError) -> Option<u64> {
    match e {
        DeviceError::ReadFailed { lba, .. }
        | DeviceError::Pending { lba }
        | DeviceError::SpareReadFailed { lba, .. } => Some(*lba),
        _ => None,
    }
}

/// Persist a change to the scrub settings and mirror it in `status`.
fn save<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    status: &Mutex<ScrubStatus>,
    change: impl FnOnce(&mut remap_core::store::Settings),
) -> Result<(), ScrubError> {
    let mut cursor = 0;
    let saved = device
        .update_settings(|s| {
            change(s);
            cursor = s.scrub_cursor;
        })
        .map_err(|source| ScrubError::SaveCursor { cursor, source })?;
    let mut s = status.lock();
    s.saved_cursor = saved.scrub_cursor;
    s.passes = saved.scrub_passes;
    Ok(())
}

/// Scrub a pair at rest: [`run`], then, if it marked blocks pending, a clean shutdown (flush
/// and checkpoint; the pending marks are durable already, the checkpoint shortens the next
/// replay).
pub fn run_at_rest<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    plan: &ScrubPlan,
    stop: &AtomicBool,
    on_chunk: &mut dyn FnMut(&ScrubStatus),
) -> Result<ScrubStatus, ScrubError> {
    let status = Mutex::new(ScrubStatus::default());
    let s = run(device, plan, stop, &status, on_chunk)?;
    if s.newly_pending > 0 {
        device
            .shutdown()
            .map_err(|source| ScrubError::Shutdown { source })?;
    }
    Ok(s)
}
