//! [`RemapDevice`]: the remapping block device, itself a [`BlockBackend`].
//!
//! # Semantics
//!
//! Every decision about a failure is [`crate::policy`]'s, the same code the kernel target
//! runs (`docs/design.md`, "I/O semantics"): reads and writes are tried run by run
//! ([`crate::policy::runs`]), and a request that meets a media error or a pending block
//! goes to [`Policy`], which isolates block by block, marks pending, moves blocks to spares
//! and commits. This file supplies the seams (the two backends, with an explicit spare
//! flush for "data durable before record"; the [`MetaStore`]; the clock) and the
//! concurrency around them.
//!
//! # Concurrency
//!
//! The table and pool sit behind one `RwLock`. Requests into regions that hold no entry
//! skip the lock: they note a generation counter before their I/O and check it after; every
//! table change bumps it, and a request that raced with one simply runs again under the
//! lock (reads and writes are idempotent). Other requests hold the lock shared for their
//! runs. The slow path holds it exclusively, so it is serialized and sees the table as it
//! is. A failed metadata commit stops all writes (`DeviceError::MetadataFailed`) until the
//! device is reopened, because the in-memory table could otherwise run ahead of the disk.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock, RwLockWriteGuard};

use crate::backend::{
    BlockBackend, IoError, IoOp, Load, Through, Transfer, check_range, load_payload,
};
use crate::clock::Clock;
use crate::geometry::BlockSize;
use crate::health::{HealthReport, HealthThresholds};
use crate::hot::{Hot, HotCounters, Local};
use crate::policy::runs::{self, Runs};
use crate::policy::{
    BlockIo, Dev, Geometry, Journal, Policy, PolicyError, Request, Tunables, refused, update_gauges,
};
use crate::record::Record;
use crate::regions::RegionMap;
use crate::spare::SpareAllocator;
use crate::stats::{Stats, StatsSnapshot};
use crate::store::{EngineView, MetaStore, Settings, StoreError};
use crate::table::{Entry, RemapTable, Segment};

pub use crate::policy::{MAX_READ_RETRIES, MAX_SPARE_ATTEMPTS};

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

/// Why a request or an operation on the device failed: the policy's error over this
/// device's seams (see [`PolicyError`], whose `errno()` is the one mapping to the wire).
pub type DeviceError = PolicyError<IoError, StoreError>;

impl From<IoError> for DeviceError {
    fn from(e: IoError) -> Self {
        PolicyError::Io(e)
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

/// How a request was served, for the normal/remapped counters.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Normal,
    Remapped,
}

impl Route {
    #[inline]
    fn of(remapped: bool) -> Route {
        if remapped {
            Route::Remapped
        } else {
            Route::Normal
        }
    }
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

/// The policy's I/O seam over a device's two backends. "Data durable before record" is an
/// explicit flush of the spare.
struct Pair<'a, M, S> {
    main: &'a M,
    spare: &'a S,
}

impl<M: BlockBackend, S: BlockBackend> Pair<'_, M, S> {
    fn backend(&self, dev: Dev) -> &dyn BlockBackend {
        match dev {
            Dev::Main => self.main,
            Dev::Spare => self.spare,
        }
    }
}

impl<M: BlockBackend, S: BlockBackend> BlockIo for Pair<'_, M, S> {
    type Error = IoError;

    #[inline]
    fn read(&mut self, dev: Dev, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        match dev {
            Dev::Main => self.main.read_at(offset, buf),
            Dev::Spare => self.spare.read_at(offset, buf),
        }
    }

    #[inline]
    fn write(&mut self, dev: Dev, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoError> {
        match dev {
            Dev::Main => write_backend(self.main, offset, buf, fua),
            Dev::Spare => write_backend(self.spare, offset, buf, fua),
        }
    }

    fn flush(&mut self, dev: Dev) -> Result<(), IoError> {
        self.backend(dev).flush()
    }

    fn order_spare_data(&mut self) -> Result<(), IoError> {
        self.spare.flush()
    }

    fn discard(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoError> {
        let b = self.backend(dev);
        if b.supports_trim() {
            b.trim(offset, len)
        } else {
            Ok(())
        }
    }

    fn write_zeroes(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoError> {
        self.backend(dev).write_zeroes(offset, len)
    }
}

/// The policy's journal seam over the device's [`MetaStore`].
struct StoreJournal<'a, M, S> {
    device: &'a RemapDevice<M, S>,
}

impl<M: BlockBackend, S: BlockBackend> StoreJournal<'_, M, S> {
    fn view<R>(
        &self,
        table: &RemapTable,
        spares: &SpareAllocator,
        f: impl FnOnce(&mut dyn MetaStore, &EngineView<'_>) -> R,
    ) -> R {
        let stats = self.device.stats();
        let view = EngineView {
            table,
            spares,
            stats: &stats,
        };
        f(&mut **self.device.store.lock(), &view)
    }
}

impl<M: BlockBackend, S: BlockBackend> Journal<Pair<'_, M, S>> for StoreJournal<'_, M, S> {
    type Error = StoreError;

    fn commit_records(
        &mut self,
        _io: &mut Pair<'_, M, S>,
        records: &[Record],
        table: &RemapTable,
        spares: &SpareAllocator,
    ) -> Result<(), StoreError> {
        self.view(table, spares, |store, view| store.commit(records, view))
    }

    fn write_checkpoint(
        &mut self,
        _io: &mut Pair<'_, M, S>,
        table: &RemapTable,
        spares: &SpareAllocator,
    ) -> Result<(), StoreError> {
        self.view(table, spares, |store, view| store.checkpoint(view))
    }
}

/// The remapping device over a main device `M` and a spare device `S`.
pub struct RemapDevice<M, S> {
    main: M,
    spare: S,
    block_size: BlockSize,
    size_bytes: u64,
    blocks: u64,
    spare_offset: u64,
    geometry: Geometry,
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
            geometry: Geometry::new(layout.block_size, size_bytes, layout.spare_offset),
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

    /// The policy's I/O seam over the two backends.
    #[inline]
    fn io(&self) -> Pair<'_, M, S> {
        Pair {
            main: &self.main,
            spare: &self.spare,
        }
    }

    fn tunables(&self) -> Tunables {
        Tunables {
            read_retries: self.read_retries.load(Ordering::Relaxed),
            contiguous_spares: self.contiguous_spares.load(Ordering::Relaxed),
        }
    }

    /// Run `f` on the serialized slow path: the table held exclusively (the generation odd,
    /// so lock-free requests that raced with it run again under the lock), the policy over
    /// this device's seams, and the region map kept current with every changed entry.
    fn slow<R>(
        &self,
        f: impl FnOnce(
            &mut Policy<'_, Pair<'_, M, S>, StoreJournal<'_, M, S>>,
        ) -> Result<R, DeviceError>,
    ) -> Result<R, DeviceError> {
        let mut change = self.change();
        let engine = &mut *change.engine;
        let mut io = self.io();
        let mut journal = StoreJournal { device: self };
        let regions = &self.regions;
        let on_change = |table: &RemapTable, lba: u64| regions.update(table, lba);
        let mut policy = Policy {
            table: &mut engine.table,
            spares: &mut engine.spares,
            geometry: &self.geometry,
            io: &mut io,
            journal: &mut journal,
            stats: &self.stats,
            poisoned: &self.poisoned,
            tunables: self.tunables(),
            now_s: self.clock.now_s() as u32,
            on_change: &on_change,
        };
        let r = f(&mut policy);
        if let Err(e) = &r {
            if self.is_poisoned() {
                tracing::error!(error = %e, "refusing writes until the device is reopened");
            } else {
                tracing::debug!(error = %e, "slow path failed");
            }
        }
        r
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
        let t0 = local.timed.then(|| self.clock.elapsed_ns());
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
            s.latency.record(self.clock.elapsed_ns().saturating_sub(t0));
        }
    }

    fn update_gauges(&self, e: &Engine) {
        update_gauges(&self.stats, &e.table, &e.spares);
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
                Err(_) => {
                    return self
                        .slow(|p| p.read_isolating(offset, buf))
                        .map(|()| Route::Remapped);
                }
            }
        }
        {
            let engine = self.engine.read();
            if let Runs::Done { remapped } =
                runs::read(&engine.table, &self.geometry, &mut self.io(), offset, buf)?
            {
                return Ok(Route::of(remapped));
            }
        }
        self.slow(|p| p.read_isolating(offset, buf))
            .map(|()| Route::Remapped)
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
        if refused(Request::Write, self.is_poisoned()) {
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

    /// Write `buf.len()` bytes at `offset` by `transfer` when the fast path would write
    /// them to the main device in one piece and main offers a
    /// [`splice_write_fd`](BlockBackend::splice_write_fd); otherwise, or if the transfer
    /// fails or races with a table change, `load` fills `buf` and the normal write takes
    /// it (and remaps a failing block as [`write`](Self::write) does). Counted once.
    pub fn write_through(
        &self,
        offset: u64,
        buf: &mut [u8],
        transfer: &mut Transfer<'_>,
        load: &mut Load<'_>,
    ) -> Result<Through, DeviceError> {
        let len = buf.len() as u64;
        check_range(IoOp::Write, offset, len, self.size_bytes)?;
        if refused(Request::Write, self.is_poisoned()) {
            return Err(DeviceError::Poisoned);
        }
        if len == 0 {
            return Ok(Through::Buffered);
        }
        let t0 = self.begin(IoOp::Write);
        let r = if self.transfer_write_fast(offset, len, transfer) {
            Ok((Through::Transferred, Route::Normal))
        } else {
            load_payload(load, buf)
                .map_err(DeviceError::from)
                .and_then(|()| self.write_routed(offset, buf, false))
                .map(|route| (Through::Buffered, route))
        };
        let route = r.as_ref().map_or(Route::Remapped, |&(_, route)| route);
        self.account(IoOp::Write, len, t0, route, r.is_ok());
        r.map(|(through, _)| through)
    }

    /// The fast path of [`write_through`](Self::write_through).
    fn transfer_write_fast(&self, offset: u64, len: u64, transfer: &mut Transfer<'_>) -> bool {
        let Some(fd) = self.main.splice_write_fd() else {
            return false;
        };
        let Some(g) = self.fast_begin(offset, len) else {
            return false;
        };
        transfer(fd, offset).is_ok() && self.fast_end(g)
    }

    fn write_routed(&self, offset: u64, buf: &[u8], fua: bool) -> Result<Route, DeviceError> {
        if let Some(g) = self.fast_begin(offset, buf.len() as u64) {
            match write_backend(&self.main, offset, buf, fua) {
                Ok(()) if self.fast_end(g) => return Ok(Route::Normal),
                // Raced with a table change: write again under the lock, where it belongs.
                Ok(()) => {}
                Err(e) if !e.is_media() => return Err(e.into()),
                Err(_) => {
                    return self
                        .slow(|p| p.write_isolating(offset, buf, fua))
                        .map(|()| Route::Remapped);
                }
            }
        }
        {
            let engine = self.engine.read();
            if let Runs::Done { remapped } = runs::write(
                &engine.table,
                &self.geometry,
                &mut self.io(),
                offset,
                buf,
                fua,
            )? {
                return Ok(Route::of(remapped));
            }
        }
        self.slow(|p| p.write_isolating(offset, buf, fua))
            .map(|()| Route::Remapped)
    }

    // ----- flush, trim, write-zeroes -----

    /// Make every completed write durable on both devices.
    pub fn flush(&self) -> Result<(), DeviceError> {
        let t0 = self.begin(IoOp::Flush);
        let r = if refused(Request::Flush, self.is_poisoned()) {
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
        if refused(Request::Discard, self.is_poisoned()) {
            return Err(DeviceError::Poisoned);
        }
        if len == 0 {
            return Ok(());
        }
        let t0 = self.begin(IoOp::Trim);
        let r = {
            let engine = self.engine.read();
            runs::discard(&engine.table, &self.geometry, &mut self.io(), offset, len)
        };
        let route = Route::of(!matches!(r, Ok(Runs::Done { remapped: false })));
        self.account(IoOp::Trim, len, t0, route, r.is_ok());
        r.map(|_| ()).map_err(Into::into)
    }

    /// Make `[offset, offset + len)` read as zeroes, with the same remap rules as a write:
    /// zeroed in place run by run, and through the write path if any block cannot be.
    pub fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError> {
        check_range(IoOp::WriteZeroes, offset, len, self.size_bytes)?;
        if refused(Request::WriteZeroes, self.is_poisoned()) {
            return Err(DeviceError::Poisoned);
        }
        if len == 0 {
            return Ok(());
        }
        let t0 = self.begin(IoOp::WriteZeroes);
        let r = (|| {
            let in_place = {
                let engine = self.engine.read();
                runs::write_zeroes(&engine.table, &self.geometry, &mut self.io(), offset, len)?
            };
            let remapped = match in_place {
                Runs::Done { remapped } => remapped,
                Runs::Slow => {
                    self.slow(|p| p.zero_through_writes(offset, len, fua))?;
                    true
                }
            };
            if fua {
                self.main.flush()?;
                self.spare.flush()?;
            }
            Ok(remapped)
        })();
        let route = Route::of(!matches!(r, Ok(false)));
        self.account(IoOp::WriteZeroes, len, t0, route, r.is_ok());
        r.map(|_| ())
    }

    // ----- administration -----

    /// Move block `lba` to a spare now, copying its data. If its data cannot be read the
    /// move is refused, unless `zero_unreadable` accepts zeroes in its place.
    pub fn map_block(&self, lba: u64, zero_unreadable: bool) -> Result<u64, DeviceError> {
        let spare = self.slow(|p| p.map_block(lba, zero_unreadable))?;
        tracing::info!(lba, spare, "block remapped by request");
        Ok(spare)
    }

    /// Move block `lba` back to main: copy its data there, flush, read it back and compare,
    /// then free the spare. Refused, with nothing changed, if main still fails there.
    pub fn unmap_block(&self, lba: u64) -> Result<(), DeviceError> {
        self.slow(|p| p.unmap_block(lba))?;
        tracing::info!(lba, "block moved back to main");
        Ok(())
    }

    /// Write a checkpoint of the whole state through the store.
    pub fn checkpoint(&self) -> Result<(), DeviceError> {
        self.slow(|p| p.checkpoint())
    }

    /// Flush both devices and checkpoint: what a clean shutdown does.
    pub fn shutdown(&self) -> Result<(), DeviceError> {
        self.flush()?;
        self.checkpoint()
    }

    // ----- allocation policy, scrub, settings -----

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

    /// The verdict ([`crate::policy::verdict`]): critical once writes have stopped.
    pub fn health(&self) -> HealthReport {
        crate::policy::verdict(&self.stats(), &self.thresholds(), self.is_poisoned())
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

    fn takes_write_transfers(&self) -> bool {
        self.main.splice_write_fd().is_some()
    }

    fn write_through(
        &self,
        offset: u64,
        buf: &mut [u8],
        transfer: &mut Transfer<'_>,
        load: &mut Load<'_>,
    ) -> Result<Through, IoError> {
        RemapDevice::write_through(self, offset, buf, transfer, load).map_err(Into::into)
    }
}
