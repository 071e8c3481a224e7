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
//!   take no global write lock; a remap is serialized and re-checks the table" (`docs/design.md`, "Concurrency")
//!   is done in the kernel.
//!
//! What a request or a failure does is not decided here: the slow path hands every request
//! to `remap_core::policy::Policy`, the same code `remap_core::RemapDevice` runs
//! (`docs/design.md`, "I/O semantics"), over two seams implemented below on the C glue's
//! synchronous bio I/O: [`KernelIo`] ("data durable before record" is a `REQ_PREFLUSH` on the
//! next journal write) and [`KernelJournal`] (remap-meta's journal on the spare, so the host
//! tools read what the kernel wrote). This file keeps what is the kernel's own: the fast-path
//! [`State::route`], the state split, request checks, and opening a spare. The kernel exports
//! a logical block size equal to the remap block size, so every request here covers whole
//! blocks.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use remap_core::health::HealthReport;
use remap_core::policy::{self, Geometry, Policy, PolicyError, Tunables, runs};
use remap_core::record::Record;
use remap_core::{HealthThresholds, RemapTable, Segment, SpareAllocator, Stats};
use remap_meta::counters;
use remap_meta::error::FormatError;
use remap_meta::journal::{CommitError, Journal, StateView};
use remap_meta::recovery::{RecoverError, recover};
use remap_meta::superblock::IdentityKind;
use remap_meta::{DeviceIdentity, META_BLOCK};

use crate::io::{BlockIo, Dev, IoFailure, SpareMeta, WriteFlags};
use remap_meta::table_options::{Lossy, Options};

/// The largest request the slow path takes at once, in bytes: the size of the C glue's
/// bounce buffer, into which it cuts bios.
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
    /// The request kind the policy's rules are written for.
    pub fn request(self) -> policy::Request {
        match self {
            Op::Read => policy::Request::Read,
            Op::Write => policy::Request::Write,
            Op::Discard => policy::Request::Discard,
            Op::WriteZeroes => policy::Request::WriteZeroes,
            Op::Flush => policy::Request::Flush,
        }
    }

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

/// Why a slow-path request or a message failed: the policy's error over the kernel's seams,
/// with its one `errno()` mapping.
pub type SlowError = PolicyError<IoFailure, CommitError<IoFailure>>;

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
    geometry: Geometry,
    blocks: u64,
    block_shift: u32,
    journal_range: (u64, u64),
    /// Data was written to the spare since its last flush (see [`SpareMeta`]).
    spare_dirty: bool,
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
        geometry: Geometry::new(g.block_size, g.main_size, g.pool_offset),
        blocks: g.main_blocks(),
        block_shift: g.block_size.shift(),
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

    /// The engine's verdict ([`remap_core::policy::verdict`]): critical once writes stopped.
    pub fn health(&self) -> HealthReport {
        policy::verdict(&self.stats.snapshot(), &self.thresholds, self.is_poisoned())
    }

    /// Whether an empty flush is refused (the glue asks before passing it down): after a
    /// metadata failure only reads are served ([`remap_core::policy::refused`]).
    pub fn refuses_flush(&self) -> bool {
        policy::refused(policy::Request::Flush, self.is_poisoned())
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
        self.geometry.spare_byte(spare)
    }

    fn update_gauges(&self, sh: &Shared) {
        policy::update_gauges(&sh.stats, &self.table, &self.spares);
    }

    /// The fast path: where the first run of `[lba, lba + blocks)` goes. One search when the
    /// range holds no entry. Never allocates. After a metadata failure every write fails:
    /// the table in memory may be ahead of the one on disk, and a write acknowledged through
    /// it could be lost by the next load.
    #[inline]
    pub fn route(&self, sh: &Shared, lba: u64, blocks: u64, op: Op) -> Route {
        let end = lba.saturating_add(blocks).min(self.blocks);
        if lba >= end || policy::refused(op.request(), sh.is_poisoned()) {
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

    /// A slow-path request must be whole blocks inside the device, at most
    /// [`MAX_SLOW_BYTES`] (the glue's bounce buffer).
    fn check_request(&self, lba: u64, len: u64) -> Result<(), SlowError> {
        let bs = self.block_bytes();
        if len == 0 || !len.is_multiple_of(bs) || len > MAX_SLOW_BYTES {
            return Err(PolicyError::BadRequest { lba, len });
        }
        match lba.checked_add(len >> self.block_shift) {
            Some(end) if end <= self.blocks => Ok(()),
            _ => Err(PolicyError::BlockOutOfRange {
                lba,
                blocks: self.blocks,
            }),
        }
    }

    /// Run `f` with the policy over this target's seams. Called only with exclusive access
    /// (the work queue, gate closed, I/O drained), which is what serializes the slow path.
    fn with_policy<I: BlockIo + ?Sized, R>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        now_s: u32,
        f: impl FnOnce(&mut Policy<'_, KernelIo<'_, I>, KernelJournal<'_>>) -> R,
    ) -> R {
        let mut kio = KernelIo {
            io,
            spare_dirty: &mut self.spare_dirty,
        };
        let mut journal = KernelJournal {
            journal: &mut self.journal,
            range: self.journal_range,
            stats: &sh.stats,
        };
        let mut p = Policy {
            table: &mut self.table,
            spares: &mut self.spares,
            geometry: &self.geometry,
            io: &mut kio,
            journal: &mut journal,
            stats: &sh.stats,
            poisoned: &sh.poisoned,
            tunables: Tunables {
                read_retries: sh.read_retries,
                contiguous_spares: true,
            },
            now_s,
            on_change: &|_, _| {},
        };
        f(&mut p)
    }

    /// The slow read of whole blocks `[lba, lba + buf.len()/block)` (a bio that failed on
    /// the fast path, or spans several runs).
    pub fn serve_read<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        lba: u64,
        buf: &mut [u8],
        now_s: u32,
    ) -> Result<(), SlowError> {
        self.check_request(lba, buf.len() as u64)?;
        let offset = lba << self.block_shift;
        self.with_policy(sh, io, now_s, |p| p.read(offset, buf).map(|_| ()))
    }

    /// The slow write of whole blocks (write-zeroes come here with a zeroed buffer).
    pub fn serve_write<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        lba: u64,
        buf: &[u8],
        fua: bool,
        now_s: u32,
    ) -> Result<(), SlowError> {
        if sh.is_poisoned() {
            return Err(PolicyError::Poisoned);
        }
        self.check_request(lba, buf.len() as u64)?;
        let offset = lba << self.block_shift;
        self.with_policy(sh, io, now_s, |p| p.write(offset, buf, fua).map(|_| ()))
    }

    /// The slow discard of whole blocks.
    pub fn serve_discard<I: BlockIo + ?Sized>(
        &mut self,
        io: &mut I,
        lba: u64,
        blocks: u64,
    ) -> Result<(), SlowError> {
        match lba.checked_add(blocks) {
            Some(end) if end <= self.blocks && blocks > 0 => {}
            _ => {
                return Err(PolicyError::BlockOutOfRange {
                    lba,
                    blocks: self.blocks,
                });
            }
        }
        let mut dirty = self.spare_dirty;
        let mut kio = KernelIo {
            io,
            spare_dirty: &mut dirty,
        };
        let r = runs::discard(
            &self.table,
            &self.geometry,
            &mut kio,
            lba << self.block_shift,
            blocks << self.block_shift,
        );
        self.spare_dirty = dirty;
        r.map(|_| ()).map_err(PolicyError::Io)
    }

    /// The `map` message: move block `lba` to a spare now, copying its data.
    pub fn serve_map<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        lba: u64,
        now_s: u32,
    ) -> Result<u64, SlowError> {
        self.with_policy(sh, io, now_s, |p| p.map_block(lba, false))
    }

    /// The `checkpoint` message and suspend: write the whole state; returns the checkpoint's
    /// sequence number.
    pub fn serve_checkpoint<I: BlockIo + ?Sized>(
        &mut self,
        sh: &Shared,
        io: &mut I,
        now_s: u32,
    ) -> Result<u64, SlowError> {
        self.with_policy(sh, io, now_s, |p| p.checkpoint())?;
        Ok(self.journal.superblock().checkpoint_sequence)
    }

    /// Journal blocks written since the last checkpoint.
    pub fn journal_live_blocks(&self) -> u32 {
        self.journal.live_blocks()
    }
}

/// The policy's I/O seam over the glue's synchronous bios. Spare writes that are not FUA
/// mark the spare dirty; "data durable before record" then costs nothing here: the next
/// journal write carries `REQ_PREFLUSH` ([`SpareMeta`]).
#[derive(Debug)]
pub struct KernelIo<'a, I: ?Sized> {
    io: &'a mut I,
    spare_dirty: &'a mut bool,
}

/// Zeroes for [`KernelIo`]'s write-zeroes, a block at a time at most.
static ZEROES: [u8; 4096] = [0; 4096];

impl<I: BlockIo + ?Sized> policy::BlockIo for KernelIo<'_, I> {
    type Error = IoFailure;

    fn read(&mut self, dev: Dev, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure> {
        self.io.read(dev, offset, buf)
    }

    fn write(&mut self, dev: Dev, offset: u64, buf: &[u8], fua: bool) -> Result<(), IoFailure> {
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::PLAIN
        };
        self.io.write(dev, offset, buf, flags)?;
        if dev == Dev::Spare && !fua {
            *self.spare_dirty = true;
        }
        Ok(())
    }

    fn flush(&mut self, dev: Dev) -> Result<(), IoFailure> {
        self.io.flush(dev)?;
        if dev == Dev::Spare {
            *self.spare_dirty = false;
        }
        Ok(())
    }

    fn order_spare_data(&mut self) -> Result<(), IoFailure> {
        // Deferred to the PREFLUSH of the journal write that follows.
        *self.spare_dirty = true;
        Ok(())
    }

    fn discard(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoFailure> {
        self.io.discard(dev, offset, len)
    }

    fn write_zeroes(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoFailure> {
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(ZEROES.len() as u64);
            self.write(dev, at, &ZEROES[..n as usize], false)?;
            at += n;
        }
        Ok(())
    }
}

/// The policy's journal seam: remap-meta's journal on the spare, written through the same
/// bios, with the lifetime counters carried in checkpoints.
#[derive(Debug)]
pub struct KernelJournal<'a> {
    journal: &'a mut Journal,
    range: (u64, u64),
    stats: &'a Stats,
}

impl KernelJournal<'_> {
    fn run<I: BlockIo + ?Sized, R>(
        &mut self,
        kio: &mut KernelIo<'_, I>,
        table: &RemapTable,
        spares: &SpareAllocator,
        f: impl FnOnce(&mut Journal, &mut SpareMeta<'_, I>, &StateView<'_>) -> R,
    ) -> R {
        let counters = counters::from_snapshot(&self.stats.snapshot());
        let view = StateView {
            table,
            spares,
            counters: &counters,
        };
        let mut meta = SpareMeta {
            io: &mut *kio.io,
            journal: self.range,
            dirty: &mut *kio.spare_dirty,
        };
        f(self.journal, &mut meta, &view)
    }
}

impl<'k, I: BlockIo + ?Sized> policy::Journal<KernelIo<'k, I>> for KernelJournal<'_> {
    type Error = CommitError<IoFailure>;

    fn commit_records(
        &mut self,
        io: &mut KernelIo<'k, I>,
        records: &[Record],
        table: &RemapTable,
        spares: &SpareAllocator,
    ) -> Result<(), Self::Error> {
        self.run(io, table, spares, |j, meta, view| {
            j.commit(meta, records, view).map(|_| ())
        })
    }

    fn write_checkpoint(
        &mut self,
        io: &mut KernelIo<'k, I>,
        table: &RemapTable,
        spares: &SpareAllocator,
    ) -> Result<(), Self::Error> {
        self.run(io, table, spares, |j, meta, view| j.checkpoint(meta, view))
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
