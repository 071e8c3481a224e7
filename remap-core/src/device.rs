//! [`RemapDevice`]: the remapping block device, itself a [`BlockBackend`].
//!
//! # Semantics (DESIGN.md, "I/O semantics")
//!
//! - A read error on main never becomes data: the request is retried block by block (a
//!   bounded number of times), blocks that still fail are marked pending and persisted, and
//!   the read returns an error.
//! - A write error on main moves each failing block to a spare block; the data is written
//!   there and flushed, the mapping is committed to the store, and only then does the write
//!   return success.
//! - A write covering a pending block moves it; a partial write merges with the rest of the
//!   block read from where the block's latest data lives, and fails if that cannot be read.
//! - A spare block that fails is retired; the block moves to a fresh spare on the next write.
//! - Spare exhaustion fails the write with `ENOSPC`; nothing already mapped changes.
//!
//! # Concurrency
//!
//! The table and pool sit behind one `RwLock`. Requests hold it shared for their whole I/O,
//! so a change to the table (taken exclusively) never interleaves with a request touching
//! the same blocks. While the table is empty, requests skip the lock: they note a generation
//! counter before their I/O and check it after; every table change bumps it, and a request
//! that raced with one simply runs again under the lock (reads and writes are idempotent).
//! A failed metadata commit stops all writes (`DeviceError::MetadataFailed`) until the
//! device is reopened, because the in-memory table could otherwise run ahead of the disk.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::backend::{BlockBackend, IoError, IoOp, check_range, errno};
use crate::clock::Clock;
use crate::geometry::BlockSize;
use crate::health::{HealthInputs, HealthReport, HealthThresholds, evaluate};
use crate::hot::{Hot, HotCounters, Local};
use crate::record::{self, ApplyError, Record, RemapCause};
use crate::regions::RegionMap;
use crate::spare::{SpareAllocator, SpareError};
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{EngineView, MetaStore, Settings, StoreError};
use crate::table::{Entry, RemapTable, Segment, TableError};

/// The most read retries a configuration may ask for.
pub const MAX_READ_RETRIES: u32 = 16;
/// The most spare blocks tried for one block before giving up on the write.
pub const MAX_SPARE_ATTEMPTS: u32 = 8;
/// Free spare blocks kept clear around the start of a new run of remapped blocks, so
/// neighbouring runs that grow at the same time do not interleave.
const RUN_GAP: u64 = 64;
/// Write-zeroes that must go through the write path are done in pieces of this size.
const ZERO_PIECE: u64 = 1 << 20;
/// One request in this many (per thread) is timed for the latency histogram. Reading the
/// clock twice costs more than the rest of the fast path together (a 4 KiB read from memory
/// took twice as long with it); a uniform sample keeps the histogram's shape and mean.
pub const LATENCY_SAMPLE_EVERY: u64 = 64;

/// Tunables of a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Extra attempts for a read that fails, before the block is declared pending.
    pub read_retries: u32,
    pub thresholds: HealthThresholds,
}

impl Default for DeviceConfig {
    fn default() -> Self {
        DeviceConfig {
            read_retries: 3,
            thresholds: HealthThresholds::default(),
        }
    }
}

/// Where the spare pool lies on the spare device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub block_size: BlockSize,
    /// Byte offset of spare block 0 on the spare device.
    pub spare_offset: u64,
    /// Number of spare blocks.
    pub spare_blocks: u64,
}

/// The state a device starts from: empty for a new device, recovered from disk otherwise.
#[derive(Debug, Clone)]
pub struct InitialState {
    pub table: RemapTable,
    pub spares: SpareAllocator,
    /// Lifetime counters to continue from.
    pub lifetime: StatsSnapshot,
}

/// Why a request or an operation on the device failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    #[error("block {lba}: read failed on the main device; the block is now pending: {source}")]
    ReadFailed {
        lba: u64,
        #[source]
        source: IoError,
    },
    #[error(
        "block {lba} is pending: its data could not be read; a write covering the whole block restores it"
    )]
    Pending { lba: u64 },
    #[error(
        "block {lba}: spare block {spare} failed a read and was retired; the block is pending: {source}"
    )]
    SpareReadFailed {
        lba: u64,
        spare: u64,
        #[source]
        source: IoError,
    },
    #[error("block {lba}: write failed and the spare pool is exhausted ({pool} blocks)")]
    SpareExhausted { lba: u64, pool: u64 },
    #[error("block {lba}: the remap table is full ({capacity} entries)")]
    TableFull { lba: u64, capacity: usize },
    #[error(
        "block {lba}: partial write to a block that must move, and the rest of the block cannot be read"
    )]
    PartialWriteUnreadable { lba: u64 },
    #[error("block {lba}: no spare block accepted the write after {attempts} attempts")]
    SpareWritesFailed { lba: u64, attempts: u32 },
    #[error("metadata commit failed; the device refuses writes until it is reopened: {source}")]
    MetadataFailed {
        #[source]
        source: StoreError,
    },
    #[error("the device refuses writes after an earlier metadata failure; reopen it")]
    Poisoned,
    #[error("spare device flush failed: {source}")]
    SpareFlush {
        #[source]
        source: IoError,
    },
    #[error("block {lba} is not remapped")]
    NotRemapped { lba: u64 },
    #[error("block {lba} is already remapped to spare block {spare}")]
    AlreadyRemapped { lba: u64, spare: u64 },
    #[error("block {lba} cannot be read (pass zero_unreadable to map it with zeroes): {reason}")]
    Unreadable { lba: u64, reason: String },
    #[error("block {lba}: the main device still fails there: {reason}")]
    MainStillFailing { lba: u64, reason: String },
    #[error("block {lba} is beyond the device ({blocks} blocks)")]
    BlockOutOfRange { lba: u64, blocks: u64 },
    #[error("bad configuration: {0}")]
    Config(String),
    #[error("state does not match the layout: {0}")]
    Inconsistent(#[from] ApplyError),
    #[error(transparent)]
    Io(#[from] IoError),
}

impl DeviceError {
    /// The one mapping from an engine error to an `errno` for frontends.
    pub fn errno(&self) -> i32 {
        match self {
            DeviceError::SpareExhausted { .. } | DeviceError::TableFull { .. } => errno::ENOSPC,
            DeviceError::BlockOutOfRange { .. } | DeviceError::Config(_) => errno::EINVAL,
            DeviceError::Io(e) => e.errno(),
            _ => errno::EIO,
        }
    }
}

impl From<DeviceError> for IoError {
    fn from(e: DeviceError) -> Self {
        match e {
            DeviceError::Io(io) => io,
            other => IoError::Engine {
                errno: other.errno(),
                source: Box::new(other),
            },
        }
    }
}

struct Engine {
    table: RemapTable,
    spares: SpareAllocator,
}

/// A failure seen during a read, settled under the write lock afterwards.
enum ReadFailure {
    Main(IoError),
    Spare(u64, IoError),
    Pending,
}

/// How a request was served, for the normal/remapped counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Normal,
    Remapped,
}

/// The remapping device over a main device `M` and a spare device `S`.
pub struct RemapDevice<M, S> {
    main: M,
    spare: S,
    block_size: BlockSize,
    size_bytes: u64,
    blocks: u64,
    spare_offset: u64,
    engine: RwLock<Engine>,
    store: Mutex<Box<dyn MetaStore>>,
    /// Bumped before and after every table change (odd while one is under way).
    generation: AtomicU64,
    /// Table entries, mirrored for the lock-free fast path.
    entries: AtomicU64,
    poisoned: AtomicBool,
    stats: Stats,
    /// Fast-path counters, per thread (reads, writes, bytes, normal I/Os).
    hot: HotCounters,
    /// Regions holding table entries, readable without the lock.
    regions: RegionMap,
    clock: Arc<dyn Clock>,
    read_retries: AtomicU32,
    thresholds: RwLock<HealthThresholds>,
    /// Put a block that follows a remapped block on the next spare block (runs stay runs).
    contiguous_spares: AtomicBool,
}

impl<M, S> std::fmt::Debug for RemapDevice<M, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemapDevice")
            .field("block_size", &self.block_size)
            .field("size_bytes", &self.size_bytes)
            .field("spare_offset", &self.spare_offset)
            .field("entries", &self.entries.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Holds the table exclusively and keeps the generation odd until dropped.
struct Change<'a> {
    engine: RwLockWriteGuard<'a, Engine>,
    generation: &'a AtomicU64,
    entries: &'a AtomicU64,
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        self.entries
            .store(self.engine.table.len() as u64, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }
}

impl<M: BlockBackend, S: BlockBackend> RemapDevice<M, S> {
    /// Build a device. The logical size is the main device's size; blocks are `layout`'s.
    pub fn new(
        main: M,
        spare: S,
        layout: Layout,
        state: InitialState,
        store: Box<dyn MetaStore>,
        clock: Arc<dyn Clock>,
        config: DeviceConfig,
    ) -> Result<Self, DeviceError> {
        if config.read_retries > MAX_READ_RETRIES {
            return Err(DeviceError::Config(format!(
                "read retries {} is above the limit of {MAX_READ_RETRIES}",
                config.read_retries
            )));
        }
        config
            .thresholds
            .validate()
            .map_err(|e| DeviceError::Config(e.to_string()))?;
        let pool_end = layout
            .spare_blocks
            .checked_mul(layout.block_size.bytes_u64())
            .and_then(|b| b.checked_add(layout.spare_offset));
        match pool_end {
            Some(end) if end <= spare.size_bytes() => {}
            _ => {
                return Err(DeviceError::Config(format!(
                    "spare pool of {} blocks at offset {} does not fit on a spare device of {} bytes",
                    layout.spare_blocks,
                    layout.spare_offset,
                    spare.size_bytes()
                )));
            }
        }
        if state.spares.pool_blocks() != layout.spare_blocks {
            return Err(DeviceError::Config(format!(
                "allocator has {} blocks, layout {}",
                state.spares.pool_blocks(),
                layout.spare_blocks
            )));
        }
        let size_bytes = main.size_bytes();
        let blocks = layout.block_size.blocks_for(size_bytes);
        if let Some((lba, _)) = state.table.range(blocks, u64::MAX).next() {
            return Err(DeviceError::BlockOutOfRange { lba, blocks });
        }
        let stats = Stats::new();
        stats.restore(&state.lifetime);
        let regions = RegionMap::new(blocks, &state.table);
        let device = RemapDevice {
            main,
            spare,
            block_size: layout.block_size,
            size_bytes,
            blocks,
            spare_offset: layout.spare_offset,
            entries: AtomicU64::new(state.table.len() as u64),
            engine: RwLock::new(Engine {
                table: state.table,
                spares: state.spares,
            }),
            store: Mutex::new(store),
            generation: AtomicU64::new(0),
            poisoned: AtomicBool::new(false),
            stats,
            hot: HotCounters::new(),
            regions,
            clock,
            read_retries: AtomicU32::new(config.read_retries),
            contiguous_spares: AtomicBool::new(true),
            thresholds: RwLock::new(config.thresholds),
        };
        device.update_gauges(&device.engine.read());
        Ok(device)
    }

    pub fn block_size(&self) -> BlockSize {
        self.block_size
    }

    /// Logical blocks (the last may be partial when the main size is not a multiple).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Where the spare pool lies on the spare device (so tests and tools can address a spare
    /// block's bytes, e.g. to inject a fault there).
    pub fn layout(&self) -> Layout {
        Layout {
            block_size: self.block_size,
            spare_offset: self.spare_offset,
            spare_blocks: self.engine.read().spares.pool_blocks(),
        }
    }

    pub fn main(&self) -> &M {
        &self.main
    }

    pub fn spare(&self) -> &S {
        &self.spare
    }

    /// Whether a metadata failure has stopped writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    // ----- geometry helpers -----

    /// Byte range of block `lba` on main (the last block may be short).
    fn block_span(&self, lba: u64) -> (u64, u64) {
        let start = lba << self.block_size.shift();
        (
            start,
            self.block_size.bytes_u64().min(self.size_bytes - start),
        )
    }

    fn spare_byte(&self, spare: u64) -> u64 {
        self.spare_offset + (spare << self.block_size.shift())
    }

    /// Blocks touched by `[offset, offset + len)`, `len > 0`.
    fn blocks_of(&self, offset: u64, len: u64) -> (u64, u64) {
        let first = self.block_size.block_of(offset);
        let last = self.block_size.block_of(offset + len - 1);
        (first, last - first + 1)
    }

    /// The part of block `lba` inside the request at `offset` of `len` bytes: its byte offset
    /// on main, its range in the request buffer, and its offset inside the block.
    fn part(&self, lba: u64, offset: u64, len: u64) -> (u64, Range<usize>, usize) {
        let (start, blen) = self.block_span(lba);
        let lo = start.max(offset);
        let hi = (start + blen).min(offset + len);
        (
            lo,
            (lo - offset) as usize..(hi - offset) as usize,
            (lo - start) as usize,
        )
    }

    /// Device ranges of a segment clipped to the request: (main byte offset, buffer range).
    fn clip(&self, lba: u64, blocks: u64, offset: u64, len: u64) -> (u64, Range<usize>) {
        let seg_start = lba << self.block_size.shift();
        let seg_end = ((lba + blocks) << self.block_size.shift()).min(self.size_bytes);
        let lo = seg_start.max(offset);
        let hi = seg_end.min(offset + len);
        (lo, (lo - offset) as usize..(hi - offset) as usize)
    }

    // ----- fast-path bracket -----

    /// Start of the lock-free path for the request at `offset` of `len` bytes (`len > 0`):
    /// the generation, if no table change is under way and no region the request touches
    /// holds an entry.
    #[inline]
    fn fast_begin(&self, offset: u64, len: u64) -> Option<u64> {
        let g = self.generation.load(Ordering::SeqCst);
        if g & 1 != 0 {
            return None;
        }
        if self.entries.load(Ordering::SeqCst) != 0 {
            let first = self.block_size.block_of(offset);
            let last = self.block_size.block_of(offset + len - 1);
            if self.regions.any(first, last) {
                return None;
            }
        }
        Some(g)
    }

    #[inline]
    fn fast_end(&self, g: u64) -> bool {
        self.generation.load(Ordering::SeqCst) == g
    }

    fn change(&self) -> Change<'_> {
        let engine = self.engine.write();
        self.generation.fetch_add(1, Ordering::SeqCst);
        Change {
            engine,
            generation: &self.generation,
            entries: &self.entries,
        }
    }

    // ----- accounting -----

    /// Count a request as it starts, and read the clock if it is one of the timed ones
    /// (every [`LATENCY_SAMPLE_EVERY`]th request of each thread, the first included).
    #[inline]
    fn begin(&self, op: IoOp) -> (Local<'_>, Option<u64>) {
        let s = &self.stats;
        let local = self.hot.local(LATENCY_SAMPLE_EVERY);
        match op {
            IoOp::Read => local.add(Hot::Reads, 1),
            IoOp::Write => local.add(Hot::Writes, 1),
            IoOp::Trim => Stats::bump(&s.trims),
            IoOp::WriteZeroes => Stats::bump(&s.write_zeroes),
            IoOp::Flush => Stats::bump(&s.flushes),
        }
        let t0 = local.timed.then(|| self.clock.now_ns());
        (local, t0)
    }

    /// Finish accounting a request started with [`begin`](Self::begin).
    #[inline]
    fn account(
        &self,
        op: IoOp,
        len: u64,
        started: (Local<'_>, Option<u64>),
        route: Route,
        ok: bool,
    ) {
        let s = &self.stats;
        let (local, t0) = started;
        if ok {
            match op {
                IoOp::Read => local.add(Hot::BytesRead, len),
                IoOp::Write => local.add(Hot::BytesWritten, len),
                _ => {}
            }
        }
        if op != IoOp::Flush {
            match route {
                Route::Normal => local.add(Hot::NormalIos, 1),
                Route::Remapped => Stats::bump(&s.remapped_ios),
            }
        }
        if !ok {
            Stats::bump(&s.failed_ios);
        }
        if let Some(t0) = t0 {
            s.latency.record(self.clock.now_ns().saturating_sub(t0));
        }
    }

    fn update_gauges(&self, e: &Engine) {
        let s = &self.stats;
        s.pending_blocks
            .store(e.table.pending_count() as u64, Ordering::Relaxed);
        s.remapped_blocks
            .store(e.table.remapped_count() as u64, Ordering::Relaxed);
        s.spares_total
            .store(e.spares.pool_blocks(), Ordering::Relaxed);
        s.spares_used
            .store(e.spares.used_count(), Ordering::Relaxed);
        s.spares_retired
            .store(e.spares.retired_count(), Ordering::Relaxed);
    }

    // ----- reads -----

    /// Read `buf.len()` bytes at `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let len = buf.len() as u64;
        check_range(IoOp::Read, offset, len, self.size_bytes)?;
        if len == 0 {
            return Ok(());
        }
        let t0 = self.begin(IoOp::Read);
        let r = self.read_routed(offset, buf);
        let route = r.as_ref().map_or(Route::Remapped, |&route| route);
        self.account(IoOp::Read, len, t0, route, r.is_ok());
        r.map(|_| ())
    }

    fn read_routed(&self, offset: u64, buf: &mut [u8]) -> Result<Route, DeviceError> {
        if let Some(g) = self.fast_begin(offset, buf.len() as u64) {
            match self.main.read_at(offset, buf) {
                Ok(()) if self.fast_end(g) => return Ok(Route::Normal),
                // Raced with a table change: read again under the lock.
                Ok(()) => {}
                Err(e) if !e.is_media() => return Err(e.into()),
                Err(_) => return self.read_isolating(offset, buf).map(|()| Route::Remapped),
            }
        }
        let len = buf.len() as u64;
        let (first, count) = self.blocks_of(offset, len);
        {
            let engine = self.engine.read();
            if !engine.table.any_in(first, count) {
                match self.main.read_at(offset, buf) {
                    Ok(()) => return Ok(Route::Normal),
                    Err(e) if !e.is_media() => return Err(e.into()),
                    Err(_) => {}
                }
            } else {
                let mut clean = true;
                for seg in engine.table.segments(first, count) {
                    let r = match seg {
                        Segment::Main { lba, blocks } => {
                            let (at, range) = self.clip(lba, blocks, offset, len);
                            self.main.read_at(at, &mut buf[range])
                        }
                        Segment::Spare { lba, spare, blocks } => {
                            let (at, range) = self.clip(lba, blocks, offset, len);
                            let inner = at - (lba << self.block_size.shift());
                            self.spare
                                .read_at(self.spare_byte(spare) + inner, &mut buf[range])
                        }
                        Segment::Pending { .. } => {
                            clean = false;
                            break;
                        }
                    };
                    match r {
                        Ok(()) => {}
                        Err(e) if !e.is_media() => return Err(e.into()),
                        Err(_) => {
                            clean = false;
                            break;
                        }
                    }
                }
                if clean {
                    return Ok(Route::Remapped);
                }
            }
        }
        self.read_isolating(offset, buf).map(|()| Route::Remapped)
    }

    /// Read `buf` from `backend` at `at`, retrying media errors. Counts every failed attempt
    /// in `errors`; returns the last error if all attempts fail.
    fn read_retrying(
        &self,
        backend: &dyn BlockBackend,
        at: u64,
        buf: &mut [u8],
        errors: &AtomicU64,
    ) -> Result<(), IoError> {
        let mut failed = false;
        let mut attempt = 0;
        loop {
            match backend.read_at(at, buf) {
                Ok(()) => {
                    if failed {
                        Stats::bump(&self.stats.transient_recoveries);
                    }
                    return Ok(());
                }
                Err(e) if !e.is_media() => return Err(e),
                Err(e) => {
                    Stats::bump(errors);
                    failed = true;
                    if attempt >= self.read_retries.load(Ordering::Relaxed) {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// The careful read: block by block with retries; blocks that still fail are marked
    /// pending (or their spare retired) and the read fails.
    fn read_isolating(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let len = buf.len() as u64;
        let (first, count) = self.blocks_of(offset, len);
        let mut failures: Vec<(u64, ReadFailure)> = Vec::new();
        for lba in first..first + count {
            let (at, range, inner) = self.part(lba, offset, len);
            let engine = self.engine.read();
            match engine.table.get(lba) {
                None => {
                    match self.read_retrying(
                        &self.main,
                        at,
                        &mut buf[range],
                        &self.stats.main_read_errors,
                    ) {
                        Ok(()) => {}
                        Err(e) if !e.is_media() => return Err(e.into()),
                        Err(e) => failures.push((lba, ReadFailure::Main(e))),
                    }
                }
                Some(Entry {
                    spare: Some(spare), ..
                }) => {
                    let at = self.spare_byte(spare) + inner as u64;
                    match self.read_retrying(
                        &self.spare,
                        at,
                        &mut buf[range],
                        &self.stats.spare_read_errors,
                    ) {
                        Ok(()) => {}
                        Err(e) if !e.is_media() => return Err(e.into()),
                        Err(e) => failures.push((lba, ReadFailure::Spare(spare, e))),
                    }
                }
                Some(_) => failures.push((lba, ReadFailure::Pending)),
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        // Never hand out what was read: the caller gets an error and no data.
        buf.fill(0);
        self.settle_read_failures(failures)
    }

    /// Persist what the failed reads taught us, then report the first failure.
    fn settle_read_failures(&self, failures: Vec<(u64, ReadFailure)>) -> Result<(), DeviceError> {
        let now = self.clock.now_s() as u32;
        let mut records = Vec::new();
        {
            let mut change = self.change();
            let engine = &mut *change.engine;
            for (lba, f) in &failures {
                let current = engine.table.get(*lba);
                let rec = match f {
                    // Still on main (nobody moved it meanwhile): pending.
                    ReadFailure::Main(_) if current.is_none() => Record::Pending {
                        lba: *lba,
                        time_s: now,
                    },
                    ReadFailure::Spare(spare, _)
                        if current.and_then(|e| e.spare) == Some(*spare) =>
                    {
                        Record::SpareRetired {
                            spare: *spare,
                            lba: Some(*lba),
                            time_s: now,
                        }
                    }
                    _ => continue,
                };
                self.apply(engine, &rec)?;
                records.push(rec);
            }
            if !records.is_empty() {
                for rec in &records {
                    match rec {
                        Record::Pending { lba, .. } => {
                            Stats::bump(&self.stats.pending_marked);
                            tracing::warn!(lba, "read failed on main; block marked pending");
                        }
                        Record::SpareRetired { spare, lba, .. } => {
                            Stats::bump(&self.stats.spares_retired_events);
                            Stats::bump(&self.stats.pending_marked);
                            tracing::warn!(
                                spare,
                                lba,
                                "spare block failed a read; retired, block pending"
                            );
                        }
                        _ => {}
                    }
                }
                self.commit(engine, &records)?;
            }
        }
        let Some((lba, f)) = failures.into_iter().next() else {
            return Ok(());
        };
        Err(match f {
            ReadFailure::Main(source) => DeviceError::ReadFailed { lba, source },
            ReadFailure::Spare(spare, source) => {
                DeviceError::SpareReadFailed { lba, spare, source }
            }
            ReadFailure::Pending => DeviceError::Pending { lba },
        })
    }

    /// Apply one record to the in-memory state. A full table is an ordinary refusal (nothing
    /// changed); any other refusal means the state contradicts itself, so writes stop.
    fn apply(&self, engine: &mut Engine, rec: &Record) -> Result<(), DeviceError> {
        match record::apply(&mut engine.table, &mut engine.spares, self.blocks, rec) {
            Ok(()) => {
                if let Some(lba) = rec.lba() {
                    self.regions.update(&engine.table, lba);
                }
                Ok(())
            }
            Err(ApplyError::Table(TableError::Full { lba, capacity })) => {
                Err(DeviceError::TableFull { lba, capacity })
            }
            Err(e) => {
                self.poisoned.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, ?rec, "engine state contradicts itself; refusing writes");
                Err(DeviceError::Inconsistent(e))
            }
        }
    }

    /// Make `records` durable; on failure stop all writes.
    fn commit(&self, engine: &Engine, records: &[Record]) -> Result<(), DeviceError> {
        self.update_gauges(engine);
        let stats = self.stats();
        let view = EngineView {
            table: &engine.table,
            spares: &engine.spares,
            stats: &stats,
        };
        match self.store.lock().commit(records, &view) {
            Ok(()) => {
                Stats::bump(&self.stats.commits);
                Ok(())
            }
            Err(source) => {
                self.poisoned.store(true, Ordering::SeqCst);
                tracing::error!(error = %source, "metadata commit failed; refusing writes until reopened");
                Err(DeviceError::MetadataFailed { source })
            }
        }
    }

    // ----- writes -----

    /// Write `buf` at `offset`.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.write_op(IoOp::Write, offset, buf, false)
    }

    /// Write `buf` at `offset` and make it durable before returning.
    pub fn write_fua(&self, offset: u64, buf: &[u8]) -> Result<(), DeviceError> {
        self.write_op(IoOp::Write, offset, buf, true)
    }

    fn write_op(&self, op: IoOp, offset: u64, buf: &[u8], fua: bool) -> Result<(), DeviceError> {
        let len = buf.len() as u64;
        check_range(op, offset, len, self.size_bytes)?;
        if self.is_poisoned() {
            return Err(DeviceError::Poisoned);
        }
        if len == 0 {
            return Ok(());
        }
        let t0 = self.begin(op);
        let r = self.write_routed(offset, buf, fua);
        let route = r.as_ref().map_or(Route::Remapped, |&route| route);
        self.account(op, len, t0, route, r.is_ok());
        r.map(|_| ())
    }

    #[inline]
    fn write_backend<B: BlockBackend + ?Sized>(
        backend: &B,
        at: u64,
        buf: &[u8],
        fua: bool,
    ) -> Result<(), IoError> {
        if fua {
            backend.write_at_fua(at, buf)
        } else {
            backend.write_at(at, buf)
        }
    }

    fn write_routed(&self, offset: u64, buf: &[u8], fua: bool) -> Result<Route, DeviceError> {
        if let Some(g) = self.fast_begin(offset, buf.len() as u64) {
            match Self::write_backend(&self.main, offset, buf, fua) {
                Ok(()) if self.fast_end(g) => return Ok(Route::Normal),
                // Raced with a table change: write again under the lock, where it belongs.
                Ok(()) => {}
                Err(e) if !e.is_media() => return Err(e.into()),
                Err(_) => {
                    return self
                        .write_isolating(offset, buf, fua)
                        .map(|()| Route::Remapped);
                }
            }
        }
        let len = buf.len() as u64;
        let (first, count) = self.blocks_of(offset, len);
        {
            let engine = self.engine.read();
            if !engine.table.any_in(first, count) {
                match Self::write_backend(&self.main, offset, buf, fua) {
                    Ok(()) => return Ok(Route::Normal),
                    Err(e) if !e.is_media() => return Err(e.into()),
                    Err(_) => {}
                }
            } else {
                let mut clean = true;
                for seg in engine.table.segments(first, count) {
                    let r = match seg {
                        Segment::Main { lba, blocks } => {
                            let (at, range) = self.clip(lba, blocks, offset, len);
                            Self::write_backend(&self.main, at, &buf[range], fua)
                        }
                        Segment::Spare { lba, spare, blocks } => {
                            let (at, range) = self.clip(lba, blocks, offset, len);
                            let inner = at - (lba << self.block_size.shift());
                            Self::write_backend(
                                &self.spare,
                                self.spare_byte(spare) + inner,
                                &buf[range],
                                fua,
                            )
                        }
                        Segment::Pending { .. } => {
                            clean = false;
                            break;
                        }
                    };
                    match r {
                        Ok(()) => {}
                        Err(e) if !e.is_media() => return Err(e.into()),
                        Err(_) => {
                            clean = false;
                            break;
                        }
                    }
                }
                if clean {
                    return Ok(Route::Remapped);
                }
            }
        }
        self.write_isolating(offset, buf, fua)
            .map(|()| Route::Remapped)
    }

    /// The careful write: block by block; blocks that fail (or are pending) move to spares.
    fn write_isolating(&self, offset: u64, buf: &[u8], fua: bool) -> Result<(), DeviceError> {
        let len = buf.len() as u64;
        let (first, count) = self.blocks_of(offset, len);
        let mut to_move = Vec::new();
        for lba in first..first + count {
            let (at, range, inner) = self.part(lba, offset, len);
            let engine = self.engine.read();
            let (r, errors) = match engine.table.get(lba) {
                None => (
                    Self::write_backend(&self.main, at, &buf[range], fua),
                    &self.stats.main_write_errors,
                ),
                Some(Entry {
                    spare: Some(spare), ..
                }) => (
                    Self::write_backend(
                        &self.spare,
                        self.spare_byte(spare) + inner as u64,
                        &buf[range],
                        fua,
                    ),
                    &self.stats.spare_write_errors,
                ),
                Some(_) => {
                    to_move.push(lba);
                    continue;
                }
            };
            match r {
                Ok(()) => {}
                Err(e) if !e.is_media() => return Err(e.into()),
                Err(e) => {
                    Stats::bump(errors);
                    tracing::debug!(lba, error = %e, "write failed; moving the block");
                    to_move.push(lba);
                }
            }
        }
        if to_move.is_empty() {
            return Ok(());
        }
        self.move_blocks(offset, buf, &to_move)
    }

    /// Move each block in `lbas` to a fresh spare block holding the request's bytes merged
    /// with the rest of the block, then flush the spare and commit. Returns the first
    /// failure after doing what can be done for the other blocks.
    fn move_blocks(&self, offset: u64, buf: &[u8], lbas: &[u64]) -> Result<(), DeviceError> {
        let len = buf.len() as u64;
        let now = self.clock.now_s() as u32;
        let mut change = self.change();
        let engine = &mut *change.engine;
        let mut records: Vec<Record> = Vec::new();
        let mut first_error: Option<DeviceError> = None;
        let mut block = vec![0u8; self.block_size.bytes() as usize];
        for &lba in lbas {
            let (at, range, inner) = self.part(lba, offset, len);
            let (_, blen) = self.block_span(lba);
            let blen = blen as usize;
            let current = engine.table.get(lba);
            // Someone may have moved the block since we failed: try where it lives now.
            if let Some(spare) = current.and_then(|e| e.spare) {
                match self
                    .spare
                    .write_at(self.spare_byte(spare) + inner as u64, &buf[range.clone()])
                {
                    Ok(()) => continue,
                    Err(e) if !e.is_media() => {
                        first_error.get_or_insert(e.into());
                        continue;
                    }
                    Err(_) => Stats::bump(&self.stats.spare_write_errors),
                }
            }
            let cause = match current {
                None => RemapCause::WriteError,
                Some(e) if e.is_remapped() => RemapCause::SpareFailure,
                Some(_) => RemapCause::Rewrite,
            };
            // Assemble the whole block: the request's bytes over the rest of the block.
            let whole = range.len() == blen;
            if !whole {
                let source: Option<(&dyn BlockBackend, u64, &AtomicU64)> = match current {
                    None => Some((&self.main, at - inner as u64, &self.stats.main_read_errors)),
                    Some(Entry { spare: Some(s), .. }) => Some((
                        &self.spare,
                        self.spare_byte(s),
                        &self.stats.spare_read_errors,
                    )),
                    Some(e) if e.main_is_current() => {
                        Some((&self.main, at - inner as u64, &self.stats.main_read_errors))
                    }
                    Some(_) => None,
                };
                let read = match source {
                    Some((dev, from, errors)) => {
                        self.read_retrying(dev, from, &mut block[..blen], errors)
                    }
                    None => {
                        first_error.get_or_insert(DeviceError::PartialWriteUnreadable { lba });
                        continue;
                    }
                };
                if let Err(e) = read {
                    // The rest of the block is unreadable: the block becomes (or stays) pending.
                    let rec = match current {
                        None => Some(Record::Pending { lba, time_s: now }),
                        Some(Entry { spare: Some(s), .. }) => Some(Record::SpareRetired {
                            spare: s,
                            lba: Some(lba),
                            time_s: now,
                        }),
                        Some(_) => None,
                    };
                    if let Some(rec) = rec {
                        self.apply(engine, &rec)?;
                        Stats::bump(&self.stats.pending_marked);
                        records.push(rec);
                    }
                    tracing::warn!(lba, error = %e, "partial write to a failing block whose rest is unreadable");
                    first_error.get_or_insert(DeviceError::PartialWriteUnreadable { lba });
                    continue;
                }
            }
            block[inner..inner + range.len()].copy_from_slice(&buf[range]);
            // Contiguity: follow the spare of the block before, if it has one.
            let mut moved = false;
            for _ in 0..MAX_SPARE_ATTEMPTS {
                let spare = match self.choose_spare(&engine.table, &engine.spares, lba) {
                    Ok(s) => s,
                    Err(SpareError::Exhausted { pool }) => {
                        tracing::error!(lba, pool, "spare pool exhausted");
                        first_error.get_or_insert(DeviceError::SpareExhausted { lba, pool });
                        break;
                    }
                    Err(e) => return Err(DeviceError::Inconsistent(e.into())),
                };
                match self.spare.write_at(self.spare_byte(spare), &block[..blen]) {
                    Ok(()) => {
                        // The old spare, if any, failed a write: retire it now that the data
                        // has a new home. Retiring it earlier would leave the block pending
                        // (unreadable) if no new spare can be had, though its old spare may
                        // still read back the data it held.
                        if let Some(old) = current.and_then(|e| e.spare) {
                            let rec = Record::SpareRetired {
                                spare: old,
                                lba: Some(lba),
                                time_s: now,
                            };
                            self.apply(engine, &rec)?;
                            Stats::bump(&self.stats.spares_retired_events);
                            records.push(rec);
                        }
                        let rec = Record::Remap {
                            lba,
                            spare,
                            cause,
                            time_s: now,
                        };
                        match self.apply(engine, &rec) {
                            Ok(()) => {}
                            Err(e @ DeviceError::TableFull { .. }) => {
                                first_error.get_or_insert(e);
                                break;
                            }
                            Err(e) => return Err(e),
                        }
                        Stats::bump(&self.stats.remaps);
                        tracing::warn!(lba, spare, ?cause, "block remapped");
                        records.push(rec);
                        moved = true;
                        break;
                    }
                    Err(e) if !e.is_media() => {
                        first_error.get_or_insert(e.into());
                        break;
                    }
                    Err(e) => {
                        Stats::bump(&self.stats.spare_write_errors);
                        let rec = Record::SpareRetired {
                            spare,
                            lba: None,
                            time_s: now,
                        };
                        self.apply(engine, &rec)?;
                        Stats::bump(&self.stats.spares_retired_events);
                        tracing::warn!(spare, error = %e, "spare block failed a write; retired");
                        records.push(rec);
                    }
                }
            }
            if !moved && first_error.is_none() {
                first_error = Some(DeviceError::SpareWritesFailed {
                    lba,
                    attempts: MAX_SPARE_ATTEMPTS,
                });
            }
        }
        if !records.is_empty() {
            if records.iter().any(|r| matches!(r, Record::Remap { .. })) {
                // The data must be durable before the mapping that points at it.
                if let Err(source) = self.spare.flush() {
                    self.poisoned.store(true, Ordering::SeqCst);
                    Stats::bump(&self.stats.flush_errors);
                    return Err(DeviceError::SpareFlush { source });
                }
            }
            self.commit(engine, &records)?;
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    // ----- flush, trim, write-zeroes -----

    /// Make every completed write durable on both devices.
    pub fn flush(&self) -> Result<(), DeviceError> {
        let t0 = self.begin(IoOp::Flush);
        let r = if self.is_poisoned() {
            Err(DeviceError::Poisoned)
        } else {
            self.main
                .flush()
                .and_then(|()| self.spare.flush())
                .map_err(|e| {
                    Stats::bump(&self.stats.flush_errors);
                    DeviceError::from(e)
                })
        };
        self.account(IoOp::Flush, 0, t0, Route::Normal, r.is_ok());
        r
    }

    /// Discard `[offset, offset + len)`: forwarded to whichever device holds each block.
    /// Remapped blocks stay remapped; pending blocks stay pending.
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        check_range(IoOp::Trim, offset, len, self.size_bytes)?;
        if self.is_poisoned() {
            return Err(DeviceError::Poisoned);
        }
        if len == 0 {
            return Ok(());
        }
        let t0 = self.begin(IoOp::Trim);
        let (first, count) = self.blocks_of(offset, len);
        let mut route = Route::Normal;
        let r = (|| {
            let engine = self.engine.read();
            for seg in engine.table.segments(first, count) {
                match seg {
                    Segment::Main { lba, blocks } if self.main.supports_trim() => {
                        let (at, range) = self.clip(lba, blocks, offset, len);
                        self.main.trim(at, range.len() as u64)?;
                    }
                    Segment::Spare { lba, spare, blocks } => {
                        route = Route::Remapped;
                        if self.spare.supports_trim() {
                            let (at, range) = self.clip(lba, blocks, offset, len);
                            let inner = at - (lba << self.block_size.shift());
                            self.spare
                                .trim(self.spare_byte(spare) + inner, range.len() as u64)?;
                        }
                    }
                    Segment::Pending { .. } => route = Route::Remapped,
                    Segment::Main { .. } => {}
                }
            }
            Ok::<(), IoError>(())
        })();
        self.account(IoOp::Trim, len, t0, route, r.is_ok());
        r.map_err(Into::into)
    }

    /// Make `[offset, offset + len)` read as zeroes, with the same remap rules as a write.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError> {
        check_range(IoOp::WriteZeroes, offset, len, self.size_bytes)?;
        if self.is_poisoned() {
            return Err(DeviceError::Poisoned);
        }
        if len == 0 {
            return Ok(());
        }
        let t0 = self.begin(IoOp::WriteZeroes);
        let (first, count) = self.blocks_of(offset, len);
        let mut route = Route::Normal;
        // Whether some block could not be zeroed in place (a media error, or a pending block):
        // then the whole request goes through the write path, exactly as a write of zeroes
        // would, so every block that must move does (not only those before the first
        // failure) and no block is split into partial writes.
        let mut through_writes = false;
        let r = (|| {
            let engine = self.engine.read();
            for seg in engine.table.segments(first, count) {
                let (at, range) = self.clip(seg.lba(), seg.blocks(), offset, len);
                let n = range.len() as u64;
                let r = match seg {
                    Segment::Main { .. } => self.main.write_zeroes(at, n),
                    Segment::Spare { lba, spare, .. } => {
                        route = Route::Remapped;
                        let inner = at - (lba << self.block_size.shift());
                        self.spare.write_zeroes(self.spare_byte(spare) + inner, n)
                    }
                    Segment::Pending { .. } => {
                        through_writes = true;
                        break;
                    }
                };
                match r {
                    Ok(()) => {}
                    Err(e) if !e.is_media() => return Err(DeviceError::from(e)),
                    Err(_) => {
                        through_writes = true;
                        break;
                    }
                }
            }
            Ok(())
        })();
        let r = r.and_then(|()| {
            if through_writes {
                route = Route::Remapped;
                self.zero_through_writes(offset, len, fua)?;
            }
            if fua {
                self.main.flush()?;
                self.spare.flush()?;
            }
            Ok(())
        });
        self.account(IoOp::WriteZeroes, len, t0, route, r.is_ok());
        r
    }

    /// Zero `[offset, offset + len)` through the write path (which moves blocks that fail),
    /// in pieces of at most `ZERO_PIECE` bytes cut at block borders. Every piece is tried;
    /// the first failure is returned, unless the device stops taking writes.
    fn zero_through_writes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError> {
        let zeroes = vec![0u8; ZERO_PIECE.min(len) as usize];
        let end = offset + len;
        let mut at = offset;
        let mut first_error = None;
        while at < end {
            let mut piece_end = (at + ZERO_PIECE).min(end);
            if piece_end < end {
                // ZERO_PIECE is at least one block, so the cut still makes progress.
                let cut = piece_end & !(self.block_size.bytes_u64() - 1);
                if cut > at {
                    piece_end = cut;
                }
            }
            if let Err(e) = self.write_isolating(at, &zeroes[..(piece_end - at) as usize], fua) {
                if self.is_poisoned() {
                    return Err(e);
                }
                first_error.get_or_insert(e);
            }
            at = piece_end;
        }
        first_error.map_or(Ok(()), Err)
    }

    // ----- administration -----

    /// Move block `lba` to a spare now, copying its data. If its data cannot be read the
    /// move is refused, unless `zero_unreadable` accepts zeroes in its place.
    pub fn map_block(&self, lba: u64, zero_unreadable: bool) -> Result<u64, DeviceError> {
        self.check_block(lba)?;
        if self.is_poisoned() {
            return Err(DeviceError::Poisoned);
        }
        let mut change = self.change();
        let engine = &mut *change.engine;
        let current = engine.table.get(lba);
        if let Some(spare) = current.and_then(|e| e.spare) {
            return Err(DeviceError::AlreadyRemapped { lba, spare });
        }
        let (start, blen) = self.block_span(lba);
        let mut block = vec![0u8; blen as usize];
        let readable = match current {
            None => self
                .read_retrying(&self.main, start, &mut block, &self.stats.main_read_errors)
                .map_err(|e| e.to_string()),
            Some(e) if e.main_is_current() => self
                .read_retrying(&self.main, start, &mut block, &self.stats.main_read_errors)
                .map_err(|e| e.to_string()),
            Some(_) => Err("its spare failed and no other copy exists".to_string()),
        };
        if let Err(reason) = readable {
            if !zero_unreadable {
                return Err(DeviceError::Unreadable { lba, reason });
            }
            block.fill(0);
        }
        let now = self.clock.now_s() as u32;
        let mut records = Vec::new();
        let mut chosen = None;
        for _ in 0..MAX_SPARE_ATTEMPTS {
            let spare = match self.choose_spare(&engine.table, &engine.spares, lba) {
                Ok(s) => s,
                Err(SpareError::Exhausted { pool }) => {
                    return Err(DeviceError::SpareExhausted { lba, pool });
                }
                Err(e) => return Err(DeviceError::Inconsistent(e.into())),
            };
            match self.spare.write_at(self.spare_byte(spare), &block) {
                Ok(()) => {
                    chosen = Some(spare);
                    break;
                }
                Err(e) if !e.is_media() => return Err(e.into()),
                Err(_) => {
                    Stats::bump(&self.stats.spare_write_errors);
                    let rec = Record::SpareRetired {
                        spare,
                        lba: None,
                        time_s: now,
                    };
                    self.apply(engine, &rec)?;
                    Stats::bump(&self.stats.spares_retired_events);
                    records.push(rec);
                }
            }
        }
        let result = match chosen {
            Some(spare) => {
                if let Err(source) = self.spare.flush() {
                    Stats::bump(&self.stats.flush_errors);
                    // Retirements already applied in memory cannot be committed now: stop
                    // writes rather than let the table run ahead of the disk.
                    if !records.is_empty() {
                        self.poisoned.store(true, Ordering::SeqCst);
                    }
                    return Err(DeviceError::SpareFlush { source });
                }
                let rec = Record::Remap {
                    lba,
                    spare,
                    cause: RemapCause::Manual,
                    time_s: now,
                };
                self.apply(engine, &rec)?;
                Stats::bump(&self.stats.remaps);
                tracing::info!(lba, spare, "block remapped by request");
                records.push(rec);
                Ok(spare)
            }
            None => Err(DeviceError::SpareWritesFailed {
                lba,
                attempts: MAX_SPARE_ATTEMPTS,
            }),
        };
        if !records.is_empty() {
            self.commit(engine, &records)?;
        }
        result
    }

    /// Move block `lba` back to main: copy its data there, flush, read it back and compare,
    /// then free the spare. Refused, with nothing changed, if main still fails there.
    pub fn unmap_block(&self, lba: u64) -> Result<(), DeviceError> {
        self.check_block(lba)?;
        if self.is_poisoned() {
            return Err(DeviceError::Poisoned);
        }
        let mut change = self.change();
        let engine = &mut *change.engine;
        let Some(spare) = engine.table.get(lba).and_then(|e| e.spare) else {
            return Err(DeviceError::NotRemapped { lba });
        };
        let (start, blen) = self.block_span(lba);
        let mut block = vec![0u8; blen as usize];
        self.read_retrying(
            &self.spare,
            self.spare_byte(spare),
            &mut block,
            &self.stats.spare_read_errors,
        )
        .map_err(|source| DeviceError::SpareReadFailed { lba, spare, source })?;
        let still_failing = |reason: String| DeviceError::MainStillFailing { lba, reason };
        self.main
            .write_at(start, &block)
            .and_then(|()| self.main.flush())
            .map_err(|e| still_failing(e.to_string()))?;
        let mut check = vec![0u8; blen as usize];
        self.main
            .read_at(start, &mut check)
            .map_err(|e| still_failing(e.to_string()))?;
        if check != block {
            return Err(still_failing(
                "data read back differs from data written".into(),
            ));
        }
        let rec = Record::Unmap {
            lba,
            time_s: self.clock.now_s() as u32,
        };
        self.apply(engine, &rec)?;
        Stats::bump(&self.stats.unmaps);
        tracing::info!(lba, spare, "block moved back to main");
        self.commit(engine, &[rec])
    }

    fn check_block(&self, lba: u64) -> Result<(), DeviceError> {
        if lba >= self.blocks {
            return Err(DeviceError::BlockOutOfRange {
                lba,
                blocks: self.blocks,
            });
        }
        Ok(())
    }

    /// Write a checkpoint of the whole state through the store.
    pub fn checkpoint(&self) -> Result<(), DeviceError> {
        let engine = self.engine.write();
        self.update_gauges(&engine);
        let stats = self.stats();
        let view = EngineView {
            table: &engine.table,
            spares: &engine.spares,
            stats: &stats,
        };
        self.store
            .lock()
            .checkpoint(&view)
            .map_err(|source| DeviceError::MetadataFailed { source })
    }

    /// Flush both devices and checkpoint: what a clean shutdown does.
    pub fn shutdown(&self) -> Result<(), DeviceError> {
        self.flush()?;
        self.checkpoint()
    }

    // ----- allocation policy, scrub, settings -----

    /// The spare block for block `lba`. With contiguity on (the default): right after the
    /// spare of the block before, or right before the spare of the block after, so a run of
    /// bad blocks lands on a run of spare blocks and reads of it stay one spare I/O; a block
    /// with no remapped neighbour starts a new run where it has room to grow. Off: the lowest
    /// free block.
    fn choose_spare(
        &self,
        table: &RemapTable,
        spares: &SpareAllocator,
        lba: u64,
    ) -> Result<u64, SpareError> {
        if !self.contiguous_spares.load(Ordering::Relaxed) {
            return spares.next_free(None);
        }
        let free = |s: u64| spares.state(s) == Ok(crate::spare::SpareState::Free);
        let neighbour = |l: Option<u64>| l.and_then(|l| table.get(l)).and_then(|e| e.spare);
        if let Some(s) = neighbour(lba.checked_sub(1)).and_then(|s| s.checked_add(1))
            && free(s)
        {
            return Ok(s);
        }
        if let Some(s) = neighbour(lba.checked_add(1)).and_then(|s| s.checked_sub(1))
            && free(s)
        {
            return Ok(s);
        }
        spares.next_free_for_run(RUN_GAP)
    }

    /// Choose the spare allocation policy: contiguous (the default) or always the lowest free
    /// block. For measuring what contiguity buys.
    pub fn set_contiguous_spares(&self, on: bool) {
        self.contiguous_spares.store(on, Ordering::Relaxed);
    }

    /// A scrub read: read `buf.len()` bytes at `offset` from wherever the blocks live, with
    /// the same isolation, retries and pending marks as a client read, but counted as scrub
    /// work, not as client I/O. Never writes user data. On error, the blocks that could not
    /// be read are pending (see [`entries`](Self::entries)).
    pub fn scrub_read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        check_range(IoOp::Read, offset, buf.len() as u64, self.size_bytes)?;
        if buf.is_empty() {
            return Ok(());
        }
        let r = self.read_routed(offset, buf).map(|_| ());
        match &r {
            Ok(()) => {
                self.stats
                    .scrubbed_bytes
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
            Err(_) => Stats::bump(&self.stats.scrub_errors),
        }
        r
    }

    /// The persisted settings (thresholds, read retries, scrub progress), or the device's
    /// own if its store keeps none.
    pub fn settings(&self) -> Settings {
        self.store.lock().settings().unwrap_or(Settings {
            thresholds: self.thresholds(),
            read_retries: self.read_retries.load(Ordering::Relaxed),
            scrub_cursor: 0,
            scrub_passes: 0,
        })
    }

    /// Change settings: validated, made durable by the store, then applied.
    pub fn update_settings(
        &self,
        change: impl FnOnce(&mut Settings),
    ) -> Result<Settings, DeviceError> {
        let mut store = self.store.lock();
        let mut s = store.settings().unwrap_or(Settings {
            thresholds: self.thresholds(),
            read_retries: self.read_retries.load(Ordering::Relaxed),
            scrub_cursor: 0,
            scrub_passes: 0,
        });
        change(&mut s);
        s.thresholds
            .validate()
            .map_err(|e| DeviceError::Config(e.to_string()))?;
        if s.read_retries > MAX_READ_RETRIES {
            return Err(DeviceError::Config(format!(
                "read retries {} is above the limit of {MAX_READ_RETRIES}",
                s.read_retries
            )));
        }
        if s.scrub_cursor > self.blocks {
            return Err(DeviceError::BlockOutOfRange {
                lba: s.scrub_cursor,
                blocks: self.blocks,
            });
        }
        store
            .save_settings(&s)
            .map_err(|source| DeviceError::MetadataFailed { source })?;
        *self.thresholds.write() = s.thresholds;
        self.read_retries.store(s.read_retries, Ordering::Relaxed);
        Ok(s)
    }

    // ----- inspection -----

    /// Every counter: the shared ones and the per-thread fast-path ones, summed.
    pub fn stats(&self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        let h = &self.hot;
        s.reads = s.reads.wrapping_add(h.sum(Hot::Reads));
        s.writes = s.writes.wrapping_add(h.sum(Hot::Writes));
        s.bytes_read = s.bytes_read.wrapping_add(h.sum(Hot::BytesRead));
        s.bytes_written = s.bytes_written.wrapping_add(h.sum(Hot::BytesWritten));
        s.normal_ios = s.normal_ios.wrapping_add(h.sum(Hot::NormalIos));
        s
    }

    /// Zero the I/O and error counters (gauges describing the table and pool stay).
    pub fn clear_counters(&self) {
        self.stats.clear_counters();
        self.hot.clear();
    }

    pub fn thresholds(&self) -> HealthThresholds {
        *self.thresholds.read()
    }

    pub fn set_thresholds(&self, t: HealthThresholds) -> Result<(), DeviceError> {
        t.validate()
            .map_err(|e| DeviceError::Config(e.to_string()))?;
        *self.thresholds.write() = t;
        Ok(())
    }

    pub fn health(&self) -> HealthReport {
        evaluate(
            &HealthInputs::from_snapshot(&self.stats()),
            &self.thresholds(),
        )
    }

    /// The entry for block `lba`.
    pub fn entry(&self, lba: u64) -> Option<Entry> {
        self.engine.read().table.get(lba)
    }

    /// Entries with `lba` in `[start, end)`.
    pub fn entries(&self, start: u64, end: u64) -> Vec<(u64, Entry)> {
        self.engine.read().table.range(start, end).collect()
    }

    /// How `[lba, lba + blocks)` splits into main, spare and pending runs.
    pub fn segments(&self, lba: u64, blocks: u64) -> Vec<Segment> {
        self.engine.read().table.segments(lba, blocks).collect()
    }

    /// Run `f` with the table and pool held shared.
    pub fn with_state<R>(&self, f: impl FnOnce(&RemapTable, &SpareAllocator) -> R) -> R {
        let engine = self.engine.read();
        f(&engine.table, &engine.spares)
    }

    /// Sequence number of the newest durable metadata change.
    pub fn sequence(&self) -> u64 {
        self.store.lock().sequence()
    }
}

impl<M: BlockBackend, S: BlockBackend> BlockBackend for RemapDevice<M, S> {
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.read(offset, buf).map_err(Into::into)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.write(offset, buf).map_err(Into::into)
    }

    fn flush(&self) -> Result<(), IoError> {
        RemapDevice::flush(self).map_err(Into::into)
    }

    fn write_at_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.write_fua(offset, buf).map_err(Into::into)
    }

    fn supports_fua(&self) -> bool {
        self.main.supports_fua() && self.spare.supports_fua()
    }

    fn supports_trim(&self) -> bool {
        self.main.supports_trim() || self.spare.supports_trim()
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), IoError> {
        RemapDevice::trim(self, offset, len).map_err(Into::into)
    }

    fn supports_write_zeroes(&self) -> bool {
        self.main.supports_write_zeroes()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        RemapDevice::write_zeroes(self, offset, len, false).map_err(Into::into)
    }
}
