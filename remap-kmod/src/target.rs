//! The target's state and every decision it makes, independent of the kernel.
//!
//! The state is split in two, because the kernel touches it from two kinds of context:
//!
//! - [`Shared`]: counters, gauges and fixed geometry. Atomics and constants only, so the
//!   bio completion path (interrupt context), `dmsetup status` and the read-only messages use
//!   it at any time, concurrently.
//! - [`State`]: the remap table, the spare pool and the journal. The fast path reads it
//!   ([`State::route`], through `&State`) while the C glue's gate is open; everything that
//!   changes it (the slow path, the table-changing messages, checkpoints) runs in the
//!   target's single work queue with the gate closed and every bio mapped through the old
//!   table completed, so it holds the only reference (`&mut State`). That is how "lookups
//!   take no global write lock; a remap is serialized and re-checks the table" (DESIGN.md)
//!   is done in the kernel.
//!
//! The semantics are those of `remap_core::RemapDevice` (DESIGN.md, "I/O semantics"): a
//! failed read is retried block by block, blocks that still fail become pending (persisted)
//! and the read fails with no data; a failed write moves each failing block to a fresh spare
//! block, the data is made durable, the journal record written, and only then does the write
//! succeed; a write to a pending block moves it; a failing spare block is retired. Every
//! change to the table goes through [`remap_core::record::apply`], the same function journal
//! replay uses, and is journaled through `remap-meta`, so the host tools read what the kernel
//! wrote. The kernel exports a logical block size equal to the remap block size, so every
//! request here covers whole blocks.

use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use remap_core::health::{HealthInputs, HealthReport, evaluate};
use remap_core::record::{self, ApplyError, Record, RemapCause};
use remap_core::spare::SpareError;
use remap_core::table::TableError;
use remap_core::{Entry, HealthThresholds, RemapTable, Segment, SpareAllocator, Stats};
use remap_meta::counters;
use remap_meta::error::FormatError;
use remap_meta::journal::{CommitError, Journal, StateView};
use remap_meta::recovery::{RecoverError, recover};
use remap_meta::superblock::IdentityKind;
use remap_meta::{DeviceIdentity, META_BLOCK};

use crate::io::{BlockIo, Dev, EINVAL, EIO, ENOSPC, IoFailure, SpareMeta, WriteFlags};
use crate::options::{Lossy, Options};

/// Spare blocks tried for one block before its write fails (the engine's limit).
pub const MAX_SPARE_ATTEMPTS: u32 = 8;
/// The largest request the slow path takes at once, in bytes; the C glue cuts bios into
/// pieces of at most this size.
pub const MAX_SLOW_BYTES: u64 = 256 * 1024;

/// The kind of a data request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Op {
    Read = 0,
    Write = 1,
    Discard = 2,
    WriteZeroes = 3,
    Flush = 4,
}

impl Op {
    pub fn from_u32(v: u32) -> Option<Op> {
        Some(match v {
            0 => Op::Read,
            1 => Op::Write,
            2 => Op::Discard,
            3 => Op::WriteZeroes,
            4 => Op::Flush,
            _ => return None,
        })
    }
}

/// Where the first part of a request goes (the fast path's answer). `blocks` is how many
/// blocks from the start take that route; the C glue accepts that much of the bio and
/// device-mapper resubmits the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To the main device, same offset.
    Main { blocks: u64 },
    /// To the spare device at byte `offset`.
    Spare { blocks: u64, offset: u64 },
    /// Fails with EIO at once (a read of a pending block).
    Fail { blocks: u64 },
    /// Done without I/O (a discard of a pending block: nothing to discard).
    Skip { blocks: u64 },
    /// Must go through the work queue (a write to a pending block moves it).
    Slow { blocks: u64 },
}

/// Why a spare device was refused at table load. The message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    #[error(
        "the spare device holds no valid remap superblock (copy A: {a}; copy B: {b}); format it with `remap create` first: the target never formats or overwrites metadata it cannot read"
    )]
    NotFormatted { a: FormatError, b: FormatError },
    #[error("reading the spare's metadata failed: {0}")]
    Recover(RecoverError<IoFailure>),
    #[error(
        "the spare was formatted for a main device of {formatted} bytes, but the table maps {mapped} bytes"
    )]
    SizeMismatch { formatted: u64, mapped: u64 },
    #[error("the main device has {actual} bytes, less than the {mapped} bytes the table maps")]
    MainTooSmall { actual: u64, mapped: u64 },
    #[error(
        "remap block size {block} is larger than the page size {page}: the kernel cannot export it as the logical block size"
    )]
    BlockTooLarge { block: u32, page: u32 },
    #[error(
        "main device size {size} is not a multiple of the remap block size {block}: the kernel target needs whole blocks"
    )]
    PartialBlock { size: u64, block: u32 },
    #[error(
        "the {dev} device's logical block size {logical} is larger than the remap block size {block}: single blocks could not be written to it"
    )]
    DeviceBlockTooLarge {
        dev: &'static str,
        logical: u32,
        block: u32,
    },
    #[error(
        "the spare was formatted for another main device: {kind} '{expected}' was recorded, this main device has '{found}'"
    )]
    IdentityMismatch {
        kind: &'static str,
        expected: Lossy,
        found: Lossy,
    },
    #[error(
        "the spare was formatted for the main device with {kind} '{expected}', which the kernel cannot read; check the main device and add the optional argument main_identity:{expected}"
    )]
    IdentityUnverifiable { kind: &'static str, expected: Lossy },
    #[error("the health thresholds contradict each other: {0}")]
    Thresholds(remap_core::health::ThresholdError),
}

impl OpenError {
    /// A short, static reason for `ti->error` (the detail goes to the kernel log).
    pub fn summary(&self) -> &'static core::ffi::CStr {
        match self {
            OpenError::NotFormatted { .. } => c"spare device is not formatted for remap",
            OpenError::Recover(_) => c"cannot read the spare device's remap metadata",
            OpenError::SizeMismatch { .. } | OpenError::MainTooSmall { .. } => {
                c"spare was formatted for a main device of another size"
            }
            OpenError::BlockTooLarge { .. }
            | OpenError::PartialBlock { .. }
            | OpenError::DeviceBlockTooLarge { .. } => {
                c"remap geometry not supported by the kernel target"
            }
            OpenError::IdentityMismatch { .. } => c"spare was formatted for another main device",
            OpenError::IdentityUnverifiable { .. } => {
                c"main device identity must be confirmed with main_identity:"
            }
            OpenError::Thresholds(_) => c"invalid health thresholds",
        }
    }
}

/// Why a slow-path request or a message failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SlowError {
    #[error("block {lba}: read failed on the main device; the block is now pending")]
    ReadFailed { lba: u64 },
    #[error(
        "block {lba} is pending: its data could not be read; writing the whole block restores it"
    )]
    Pending { lba: u64 },
    #[error("block {lba}: spare block {spare} failed a read and was retired; the block is pending")]
    SpareReadFailed { lba: u64, spare: u64 },
    #[error("block {lba}: write failed and the spare pool is exhausted ({pool} blocks)")]
    SpareExhausted { lba: u64, pool: u64 },
    #[error("block {lba}: the remap table is full ({capacity} entries)")]
    TableFull { lba: u64, capacity: usize },
    #[error("block {lba}: no spare block accepted the write after {attempts} attempts")]
    SpareWritesFailed { lba: u64, attempts: u32 },
    #[error("metadata commit failed; the target refuses writes until it is reloaded: {0}")]
    MetadataFailed(CommitError<IoFailure>),
    #[error("the target refuses writes after an earlier metadata failure; reload it")]
    Poisoned,
    #[error("block {lba} is already remapped to spare block {spare}")]
    AlreadyRemapped { lba: u64, spare: u64 },
    #[error("block {lba} cannot be read, so it cannot be copied to a spare: {why}")]
    Unreadable { lba: u64, why: &'static str },
    #[error("block {lba} is beyond the device ({blocks} blocks)")]
    OutOfRange { lba: u64, blocks: u64 },
    #[error("request of {len} bytes at block {lba} is not whole blocks or is too large")]
    BadRequest { lba: u64, len: u64 },
    #[error("the remap table contradicts itself; the target refuses writes: {0}")]
    Inconsistent(ApplyError),
    #[error("{0}")]
    Io(IoFailure),
}

impl SlowError {
    /// The one mapping from a slow-path error to the errno a bio or message completes with.
    pub fn errno(&self) -> i32 {
        match self {
            SlowError::SpareExhausted { .. } | SlowError::TableFull { .. } => ENOSPC,
            SlowError::OutOfRange { .. } | SlowError::BadRequest { .. } => EINVAL,
            SlowError::AlreadyRemapped { .. } => EINVAL,
            SlowError::Io(e) => e.errno,
            _ => EIO,
        }
    }
}

/// What the kernel knows about the devices when a table is loaded.
#[derive(Debug, Clone, Copy)]
pub struct OpenParams<'a> {
    /// The table line's length, in bytes.
    pub target_bytes: u64,
    pub main_dev_bytes: u64,
    pub spare_dev_bytes: u64,
    /// The main device's device-mapper UUID, when it is a device-mapper device with one.
    pub main_dm_uuid: Option<&'a [u8]>,
    pub page_size: u32,
    /// Logical block sizes of the two devices: the slow path writes single blocks to both.
    pub main_logical_block: u32,
    pub spare_logical_block: u32,
    /// Monotonic time, for the throughput figure.
    pub now_ns: u64,
}

/// Counters, gauges and constants: what may be read from any context at any time.
#[derive(Debug)]
pub struct Shared {
    pub stats: Stats,
    pub thresholds: HealthThresholds,
    pub read_retries: u32,
    /// log2 of the block size.
    pub block_shift: u32,
    /// Logical blocks.
    pub blocks: u64,
    pub pool_offset: u64,
    pub pool_blocks: u64,
    pub uuid: [u8; 16],
    pub options: Options,
    /// Set when a metadata write failed: writes are refused until the table is reloaded,
    /// because the table in memory could run ahead of the one on disk.
    pub poisoned: AtomicBool,
    /// Monotonic ns when counting started (activation or `clear_stats`).
    pub since_ns: AtomicU64,
}

/// The table, the pool and the journal. See the module docs for who may hold it how.
#[derive(Debug)]
pub struct State {
    table: RemapTable,
    spares: SpareAllocator,
    journal: Journal,
    blocks: u64,
    block_shift: u32,
    pool_offset: u64,
    journal_range: (u64, u64),
    /// Data was written to the spare since its last flush (see [`SpareMeta`]).
    spare_dirty: bool,
}

/// A read failure found while isolating, settled after the scan.
enum ReadFailure {
    Main,
    Spare(u64),
    Pending,
}

/// Open a spare device: recover its metadata (reading only) and check that it belongs to
/// this main device. Nothing is written, so a refused spare is left exactly as it was.
pub fn open<I: BlockIo + ?Sized>(
    io: &mut I,
    params: &OpenParams<'_>,
    options: Options,
) -> Result<(State, Shared), OpenError> {
    let mut dirty = false;
    let mut meta = SpareMeta {
        io,
        journal: (0, 0),
        dirty: &mut dirty,
    };
    let rec = recover(&mut meta, params.spare_dev_bytes).map_err(|e| match e {
        RecoverError::NoSuperblock { a, b } => OpenError::NotFormatted { a, b },
        other => OpenError::Recover(other),
    })?;
    let sb = rec.superblock;
    let g = sb.geometry;
    if g.main_size != params.target_bytes {
        return Err(OpenError::SizeMismatch {
            formatted: g.main_size,
            mapped: params.target_bytes,
        });
    }
    if params.main_dev_bytes < params.target_bytes {
        return Err(OpenError::MainTooSmall {
            actual: params.main_dev_bytes,
            mapped: params.target_bytes,
        });
    }
    let block = g.block_size.bytes();
    if block > params.page_size {
        return Err(OpenError::BlockTooLarge {
            block,
            page: params.page_size,
        });
    }
    for (dev, logical) in [
        ("main", params.main_logical_block),
        ("spare", params.spare_logical_block),
    ] {
        if logical > block {
            return Err(OpenError::DeviceBlockTooLarge {
                dev,
                logical,
                block,
            });
        }
    }
    if !g.main_size.is_multiple_of(u64::from(block)) {
        return Err(OpenError::PartialBlock {
            size: g.main_size,
            block,
        });
    }
    check_identity(
        &sb.identity,
        params.main_dm_uuid,
        options.main_identity.as_deref(),
    )?;
    let thresholds = options.thresholds(sb.thresholds);
    thresholds.validate().map_err(OpenError::Thresholds)?;
    let stats = Stats::new();
    stats.restore(&counters::to_snapshot(&rec.counters));
    let shared = Shared {
        stats,
        thresholds,
        read_retries: options.read_retries.unwrap_or(sb.read_retries),
        block_shift: g.block_size.shift(),
        blocks: g.main_blocks(),
        pool_offset: g.pool_offset,
        pool_blocks: g.pool_blocks,
        uuid: sb.uuid,
        options,
        poisoned: AtomicBool::new(false),
        since_ns: AtomicU64::new(params.now_ns),
    };
    // Both copies of the ring (remap-meta writes every journal block twice).
    let journal_end =
        g.journal_block_offset(1, g.journal_blocks.saturating_sub(1)) + META_BLOCK as u64;
    let state = State {
        table: rec.table,
        spares: rec.spares,
        journal: rec.journal,
        blocks: g.main_blocks(),
        block_shift: g.block_size.shift(),
        pool_offset: g.pool_offset,
        journal_range: (g.journal_block_offset(0, 0), journal_end),
        spare_dirty: false,
    };
    state.update_gauges(&shared);
    Ok((state, shared))
}

/// The main device must be the one the spare was formatted for. A device-mapper UUID the
/// kernel reads itself; a serial number or WWN it cannot, so the table line must confirm it.
fn check_identity(
    recorded: &DeviceIdentity,
    dm_uuid: Option<&[u8]>,
    asserted: Option<&[u8]>,
) -> Result<(), OpenError> {
    let kind = recorded.kind.as_str();
    let expected = recorded.value();
    let mismatch = |found: &[u8]| OpenError::IdentityMismatch {
        kind,
        expected: Lossy(expected.to_vec()),
        found: Lossy(found.to_vec()),
    };
    match recorded.kind {
        IdentityKind::None => Ok(()),
        IdentityKind::DmUuid => match dm_uuid {
            Some(found) if found == expected => Ok(()),
            Some(found) => Err(mismatch(found)),
            None => Err(mismatch(b"(no device-mapper UUID)")),
        },
        _ => match asserted {
            Some(found) if found == expected => Ok(()),
            Some(found) => Err(mismatch(found)),
            None => Err(OpenError::IdentityUnverifiable {
                kind,
                expected: Lossy(expected.to_vec()),
            }),
        },
    }
}

impl Shared {
    pub fn block_bytes(&self) -> u64 {
        1 << self.block_shift
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::Relaxed)
    }

    /// Count one completed request (the C glue calls this from bio completion).
    pub fn account(&self, op: Op, bytes: u64, latency_ns: u64, remapped: bool, ok: bool) {
        let s = &self.stats;
        match op {
            Op::Read => {
                Stats::bump(&s.reads);
                if ok {
                    s.bytes_read.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            Op::Write => {
                Stats::bump(&s.writes);
                if ok {
                    s.bytes_written.fetch_add(bytes, Ordering::Relaxed);
                }
            }
            Op::Discard => Stats::bump(&s.trims),
            Op::WriteZeroes => Stats::bump(&s.write_zeroes),
            Op::Flush => {
                Stats::bump(&s.flushes);
                if !ok {
                    Stats::bump(&s.flush_errors);
                }
            }
        }
        if op != Op::Flush {
            Stats::bump(if remapped {
                &s.remapped_ios
            } else {
                &s.normal_ios
            });
        }
        if !ok {
            Stats::bump(&s.failed_ios);
        }
        s.latency.record(latency_ns);
    }

    /// Count the spare device's half of a flush: the request itself is counted once, on
    /// the main device's half; a failure of either half is a flush error.
    pub fn account_spare_flush(&self, ok: bool) {
        if !ok {
            Stats::bump(&self.stats.flush_errors);
            Stats::bump(&self.stats.failed_ios);
        }
    }

    /// Zero the I/O and error counters (the `clear_stats` message); the gauges describing
    /// the table and the pool are facts, not counts, and stay.
    pub fn clear_stats(&self, now_ns: u64) {
        self.stats.clear_counters();
        self.since_ns.store(now_ns, Ordering::Relaxed);
    }

    /// remap-core's verdict; critical whatever the figures once metadata writes failed.
    pub fn health(&self) -> HealthReport {
        let mut h = evaluate(
            &HealthInputs::from_snapshot(&self.stats.snapshot()),
            &self.thresholds,
        );
        if self.is_poisoned() {
            h.state = remap_core::HealthState::Critical;
        }
        h
    }
}

impl State {
    pub fn table(&self) -> &RemapTable {
        &self.table
    }

    pub fn spares(&self) -> &SpareAllocator {
        &self.spares
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn block_bytes(&self) -> u64 {
        1 << self.block_shift
    }

    fn spare_byte(&self, spare: u64) -> u64 {
        self.pool_offset + (spare << self.block_shift)
    }

    fn update_gauges(&self, sh: &Shared) {
        let s = &sh.stats;
        s.pending_blocks
            .store(self.table.pending_count() as u64, Ordering::Relaxed);
        s.remapped_blocks
            .store(self.table.remapped_count() as u64, Ordering::Relaxed);
        s.spares_total
            .store(self.spares.pool_blocks(), Ordering::Relaxed);
        s.spares_used
            .store(self.spares.used_count(), Ordering::Relaxed);
        s.spares_retired
            .store(self.spares.retired_count(), Ordering::Relaxed);
    }

    /// The fast path: where the first run of `[lba, lba + blocks)` goes. One search when the
    /// range holds no entry. Never allocates. After a metadata failure every write fails:
    /// the table in memory may be ahead of the one on disk, and a write acknowledged through
    /// it could be lost by the next load.
    #[inline]
    pub fn route(&self, sh: &Shared, lba: u64, blocks: u64, op: Op) -> Route {
        let end = lba.saturating_add(blocks).min(self.blocks);
        if lba >= end || (op != Op::Read && sh.is_poisoned()) {
            // Outside the device: device-mapper never sends this; fail it rather than guess.
            return Route::Fail { blocks };
        }
        match self.table.segments(lba, end - lba).next() {
            None => Route::Fail { blocks },
            Some(Segment::Main { blocks, .. }) => Route::Main { blocks },
            Some(Segment::Spare { spare, blocks, .. }) => Route::Spare {
                blocks,
                offset: self.spare_byte(spare),
            },
            Some(Segment::Pending { blocks, .. }) => match op {
                Op::Read => Route::Fail { blocks },
                Op::Discard => Route::Skip { blocks },
                Op::Write | Op::WriteZeroes | Op::Flush => Route::Slow { blocks },
            },
        }
    }

    fn check_request(&self, lba: u64, len: u64) -> Result<u64, SlowError> {
        let bs = self.block_bytes();
        if len == 0 || !len.is_multiple_of(bs) || len > MAX_SLOW_BYTES {
            return Err(SlowError::BadRequest { lba, len });
        }
        let blocks = len >> self.block_shift;
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks => Ok(blocks),
            _ => Err(SlowError::OutOfRange {
                lba,
                blocks: self.blocks,
            }),
        }
    }

    /// Byte range of block `b` inside a request starting at block `lba`.
    fn span(&self, lba: u64, b: u64) -> core::ops::Range<usize> {
        let bs = self.block_bytes() as usize;
        let at = (b - lba) as usize * bs;
        at..at + bs
    }

    /// Read `buf` from `dev` at `at`, retrying media errors `read_retries` times. Every
    /// failed attempt is counted in `errors`.
    fn read_retrying<I: BlockIo + ?Sized>(
        sh: &Shared,
        io: &mut I,
        dev: Dev,
        at: u64,
        buf: &mut [u8],
    ) -> Result<(), IoFailure> {
        let errors = match dev {
            Dev::Main => &sh.stats.main_read_errors,
            Dev::Spare => &sh.stats.spare_read_errors,
        };
        let mut attempt = 0;
        loop {
            match io.read(dev, at, buf) {
                Ok(()) => {
                    if attempt > 0 {
                        Stats::bump(&sh.stats.transient_recoveries);
                    }
                    return Ok(());
                }
                Err(e) if !e.is_media() => return Err(e),
                Err(e) => {
                    Stats::bump(errors);
                    if attempt >= sh.read_retries {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Apply one record. A full table is an ordinary refusal (nothing changed); any other
    /// refusal means the state contradicts itself, and writes stop.
    fn apply(&mut self, sh: &Shared, rec: &Record) -> Result<(), SlowError> {
        match record::apply(&mut self.table, &mut self.spares, self.blocks, rec) {
            Ok(()) => Ok(()),
            Err(ApplyError::Table(TableError::Full { lba, capacity })) => {
                Err(SlowError::TableFull { lba, capacity })
            }
            Err(e) => {
                sh.poisoned.store(true, Ordering::Relaxed);
                Err(SlowError::Inconsistent(e))
            }
        }
    }

    /// Make `records` durable (they are already applied). On failure writes stop.
    fn commit<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        records: &[Record],
    ) -> Result<(), SlowError> {
        self.update_gauges(sh);
        let counters = counters::from_snapshot(&sh.stats.snapshot());
        let view = StateView {
            table: &self.table,
            spares: &self.spares,
            counters: &counters,
        };
        let mut meta = SpareMeta {
            io,
            journal: self.journal_range,
            dirty: &mut self.spare_dirty,
        };
        match self.journal.commit(&mut meta, records, &view) {
            Ok(_) => {
                Stats::bump(&sh.stats.commits);
                Ok(())
            }
            Err(e) => {
                sh.poisoned.store(true, Ordering::Relaxed);
                Err(SlowError::MetadataFailed(e))
            }
        }
    }

    /// Write a checkpoint of the whole state (the `checkpoint` message, and suspend).
    pub fn checkpoint<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
    ) -> Result<u64, SlowError> {
        if sh.is_poisoned() {
            return Err(SlowError::Poisoned);
        }
        self.update_gauges(sh);
        let counters = counters::from_snapshot(&sh.stats.snapshot());
        let view = StateView {
            table: &self.table,
            spares: &self.spares,
            counters: &counters,
        };
        let mut meta = SpareMeta {
            io,
            journal: self.journal_range,
            dirty: &mut self.spare_dirty,
        };
        match self.journal.checkpoint(&mut meta, &view) {
            Ok(()) => Ok(self.journal.superblock().checkpoint_sequence),
            Err(e) => {
                sh.poisoned.store(true, Ordering::Relaxed);
                Err(SlowError::MetadataFailed(e))
            }
        }
    }

    /// Journal blocks written since the last checkpoint.
    pub fn journal_live_blocks(&self) -> u32 {
        self.journal.live_blocks()
    }

    /// The slow read of whole blocks `[lba, lba + buf.len()/block)`: each run read where it
    /// lives; if anything fails, block by block with retries. Blocks that still fail become
    /// pending (their spare retired, when they had one), that is committed, `buf` is zeroed
    /// and the read fails: no data is handed out for a request that failed.
    pub fn slow_read<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        lba: u64,
        buf: &mut [u8],
        now_s: u32,
    ) -> Result<(), SlowError> {
        let blocks = self.check_request(lba, buf.len() as u64)?;
        let mut clean = true;
        for seg in self.table.segments(lba, blocks) {
            let (dev, at, l, n) = match seg {
                Segment::Main { lba: l, blocks: n } => (Dev::Main, l << self.block_shift, l, n),
                Segment::Spare {
                    lba: l,
                    spare,
                    blocks: n,
                } => (Dev::Spare, self.spare_byte(spare), l, n),
                Segment::Pending { .. } => {
                    clean = false;
                    break;
                }
            };
            let range = self.span(lba, l).start..self.span(lba, l + n - 1).end;
            match io.read(dev, at, &mut buf[range]) {
                Ok(()) => {}
                Err(e) if !e.is_media() => return Err(SlowError::Io(e)),
                Err(_) => {
                    clean = false;
                    break;
                }
            }
        }
        if clean {
            return Ok(());
        }
        let mut failures: Vec<(u64, ReadFailure)> = Vec::new();
        for b in lba..lba + blocks {
            let range = self.span(lba, b);
            match self.table.get(b) {
                None => match Self::read_retrying(
                    sh,
                    io,
                    Dev::Main,
                    b << self.block_shift,
                    &mut buf[range],
                ) {
                    Ok(()) => {}
                    Err(e) if !e.is_media() => return Err(SlowError::Io(e)),
                    Err(_) => failures.push((b, ReadFailure::Main)),
                },
                Some(Entry {
                    spare: Some(spare), ..
                }) => {
                    let at = self.spare_byte(spare);
                    match Self::read_retrying(sh, io, Dev::Spare, at, &mut buf[range]) {
                        Ok(()) => {}
                        Err(e) if !e.is_media() => return Err(SlowError::Io(e)),
                        Err(_) => failures.push((b, ReadFailure::Spare(spare))),
                    }
                }
                Some(_) => failures.push((b, ReadFailure::Pending)),
            }
        }
        let Some(first) = failures.first().map(|(b, f)| match f {
            ReadFailure::Main => SlowError::ReadFailed { lba: *b },
            ReadFailure::Spare(s) => SlowError::SpareReadFailed { lba: *b, spare: *s },
            ReadFailure::Pending => SlowError::Pending { lba: *b },
        }) else {
            // Every block read on retry: a transient failure, already counted.
            return Ok(());
        };
        buf.fill(0);
        let mut records = Vec::new();
        for (b, f) in failures {
            let rec = match f {
                ReadFailure::Main => Record::Pending {
                    lba: b,
                    time_s: now_s,
                },
                ReadFailure::Spare(spare) => {
                    Stats::bump(&sh.stats.spares_retired_events);
                    Record::SpareRetired {
                        spare,
                        lba: Some(b),
                        time_s: now_s,
                    }
                }
                ReadFailure::Pending => continue,
            };
            self.apply(sh, &rec)?;
            Stats::bump(&sh.stats.pending_marked);
            records.push(rec);
        }
        if !records.is_empty() {
            self.commit(sh, io, &records)?;
        }
        Err(first)
    }

    /// The slow write of whole blocks: each run written where it lives; a run that fails is
    /// written block by block, and every block that fails (or is pending) moves to a spare.
    /// Returns only once every moved block's data and record are durable.
    pub fn slow_write<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        lba: u64,
        buf: &[u8],
        fua: bool,
        now_s: u32,
    ) -> Result<(), SlowError> {
        if sh.is_poisoned() {
            return Err(SlowError::Poisoned);
        }
        let blocks = self.check_request(lba, buf.len() as u64)?;
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::PLAIN
        };
        let mut to_move: Vec<u64> = Vec::new();
        let segments: Vec<Segment> = self.table.segments(lba, blocks).collect();
        for seg in segments {
            let (dev, l, n, at) = match seg {
                Segment::Main { lba: l, blocks: n } => (Dev::Main, l, n, l << self.block_shift),
                Segment::Spare {
                    lba: l,
                    spare,
                    blocks: n,
                } => (Dev::Spare, l, n, self.spare_byte(spare)),
                Segment::Pending { lba: l, blocks: n } => {
                    to_move.extend(l..l + n);
                    continue;
                }
            };
            let range = self.span(lba, l).start..self.span(lba, l + n - 1).end;
            match io.write(dev, at, &buf[range], flags) {
                Ok(()) => continue,
                Err(e) if !e.is_media() => return Err(SlowError::Io(e)),
                Err(_) => {}
            }
            // Isolate: block by block, so only the blocks that fail move.
            let errors = match dev {
                Dev::Main => &sh.stats.main_write_errors,
                Dev::Spare => &sh.stats.spare_write_errors,
            };
            for (i, b) in (l..l + n).enumerate() {
                let at = at + ((i as u64) << self.block_shift);
                match io.write(dev, at, &buf[self.span(lba, b)], flags) {
                    Ok(()) => {}
                    Err(e) if !e.is_media() => return Err(SlowError::Io(e)),
                    Err(_) => {
                        Stats::bump(errors);
                        to_move.push(b);
                    }
                }
            }
        }
        if to_move.is_empty() {
            return Ok(());
        }
        self.move_blocks(sh, io, lba, buf, &to_move, now_s)
    }

    /// Move each block of `lbas` to a fresh spare block holding its bytes from `buf` (which
    /// starts at block `lba`), then commit. Returns the first failure after doing what can be
    /// done for the other blocks.
    fn move_blocks<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        lba: u64,
        buf: &[u8],
        lbas: &[u64],
        now_s: u32,
    ) -> Result<(), SlowError> {
        let mut records: Vec<Record> = Vec::new();
        let mut first_error: Option<SlowError> = None;
        for &b in lbas {
            let data = &buf[self.span(lba, b)];
            let current = self.table.get(b);
            let cause = match current {
                None => RemapCause::WriteError,
                Some(e) if e.is_remapped() => RemapCause::SpareFailure,
                Some(_) => RemapCause::Rewrite,
            };
            // A spare that failed a write is retired before the block moves on.
            if let Some(old) = current.and_then(|e| e.spare) {
                let rec = Record::SpareRetired {
                    spare: old,
                    lba: Some(b),
                    time_s: now_s,
                };
                self.apply(sh, &rec)?;
                Stats::bump(&sh.stats.spares_retired_events);
                records.push(rec);
            }
            match self.place(sh, io, b, data, cause, now_s, &mut records)? {
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !records.is_empty() {
            self.commit(sh, io, &records)?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Write `data` to a fresh spare block for block `b` and apply the remap (not yet
    /// committed). Spare blocks that fail the write are retired and the next is tried.
    /// The outer error stops everything (the state is inconsistent); the inner one is this
    /// block's failure.
    #[allow(clippy::too_many_arguments)]
    fn place<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        b: u64,
        data: &[u8],
        cause: RemapCause,
        now_s: u32,
        records: &mut Vec<Record>,
    ) -> Result<Result<u64, SlowError>, SlowError> {
        // Keep runs of bad blocks on runs of spare blocks: follow the block before.
        let hint = b
            .checked_sub(1)
            .and_then(|p| self.table.get(p))
            .and_then(|e| e.spare);
        for _ in 0..MAX_SPARE_ATTEMPTS {
            let spare = match self.spares.next_free(hint) {
                Ok(s) => s,
                Err(SpareError::Exhausted { pool }) => {
                    return Ok(Err(SlowError::SpareExhausted { lba: b, pool }));
                }
                Err(e) => {
                    sh.poisoned.store(true, Ordering::Relaxed);
                    return Err(SlowError::Inconsistent(e.into()));
                }
            };
            match io.write(Dev::Spare, self.spare_byte(spare), data, WriteFlags::PLAIN) {
                Ok(()) => {
                    self.spare_dirty = true;
                    let rec = Record::Remap {
                        lba: b,
                        spare,
                        cause,
                        time_s: now_s,
                    };
                    match self.apply(sh, &rec) {
                        Ok(()) => {}
                        Err(e @ SlowError::TableFull { .. }) => return Ok(Err(e)),
                        Err(e) => return Err(e),
                    }
                    Stats::bump(&sh.stats.remaps);
                    records.push(rec);
                    return Ok(Ok(spare));
                }
                Err(e) if !e.is_media() => return Ok(Err(SlowError::Io(e))),
                Err(_) => {
                    Stats::bump(&sh.stats.spare_write_errors);
                    let rec = Record::SpareRetired {
                        spare,
                        lba: None,
                        time_s: now_s,
                    };
                    self.apply(sh, &rec)?;
                    Stats::bump(&sh.stats.spares_retired_events);
                    records.push(rec);
                }
            }
        }
        Ok(Err(SlowError::SpareWritesFailed {
            lba: b,
            attempts: MAX_SPARE_ATTEMPTS,
        }))
    }

    /// Discard whole blocks where they live. Pending blocks have nothing to discard; remapped
    /// blocks stay remapped.
    pub fn slow_discard<I: BlockIo + ?Sized>(
        &mut self,
        io: &mut I,
        lba: u64,
        blocks: u64,
    ) -> Result<(), SlowError> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks && blocks > 0 => {}
            _ => {
                return Err(SlowError::OutOfRange {
                    lba,
                    blocks: self.blocks,
                });
            }
        }
        for seg in self.table.segments(lba, blocks) {
            let r = match seg {
                Segment::Main { lba: l, blocks: n } => {
                    io.discard(Dev::Main, l << self.block_shift, n << self.block_shift)
                }
                Segment::Spare {
                    spare, blocks: n, ..
                } => io.discard(Dev::Spare, self.spare_byte(spare), n << self.block_shift),
                Segment::Pending { .. } => Ok(()),
            };
            r.map_err(SlowError::Io)?;
        }
        Ok(())
    }

    /// Move block `lba` to a spare now, copying its data (the `map` message). Refused if the
    /// block is already on a spare, or its data cannot be read.
    pub fn map_block<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        lba: u64,
        now_s: u32,
    ) -> Result<u64, SlowError> {
        if lba >= self.blocks {
            return Err(SlowError::OutOfRange {
                lba,
                blocks: self.blocks,
            });
        }
        if sh.is_poisoned() {
            return Err(SlowError::Poisoned);
        }
        match self.table.get(lba) {
            Some(Entry {
                spare: Some(spare), ..
            }) => return Err(SlowError::AlreadyRemapped { lba, spare }),
            Some(_) => {
                return Err(SlowError::Unreadable {
                    lba,
                    why: "it is pending (no readable copy exists); write the block to restore it",
                });
            }
            None => {}
        }
        let mut data = vec![0u8; self.block_bytes() as usize];
        Self::read_retrying(sh, io, Dev::Main, lba << self.block_shift, &mut data).map_err(
            |e| {
                if e.is_media() {
                    SlowError::Unreadable {
                        lba,
                        why: "the main device fails to read it",
                    }
                } else {
                    SlowError::Io(e)
                }
            },
        )?;
        let mut records = Vec::new();
        let placed = self.place(sh, io, lba, &data, RemapCause::Manual, now_s, &mut records)?;
        if !records.is_empty() {
            self.commit(sh, io, &records)?;
        }
        placed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_rules() {
        let none = DeviceIdentity::NONE;
        assert!(check_identity(&none, None, None).is_ok());
        let dm = DeviceIdentity::new(IdentityKind::DmUuid, b"LVM-abc");
        assert!(check_identity(&dm, Some(b"LVM-abc"), None).is_ok());
        assert!(matches!(
            check_identity(&dm, Some(b"LVM-xyz"), None),
            Err(OpenError::IdentityMismatch { .. })
        ));
        assert!(matches!(
            check_identity(&dm, None, Some(b"LVM-abc")),
            Err(OpenError::IdentityMismatch { .. })
        ));
        let serial = DeviceIdentity::new(IdentityKind::Serial, b"WD-1");
        assert!(matches!(
            check_identity(&serial, None, None),
            Err(OpenError::IdentityUnverifiable { .. })
        ));
        assert!(check_identity(&serial, None, Some(b"WD-1")).is_ok());
        assert!(matches!(
            check_identity(&serial, None, Some(b"WD-2")),
            Err(OpenError::IdentityMismatch { .. })
        ));
    }
}
