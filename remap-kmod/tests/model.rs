//! The reference model of `remap_core::testing::model`, run against the kernel target's host
//! build: its `State` and `Shared` over an in-memory implementation of its I/O seam, on a spare
//! formatted by `remap-meta` with a 4-block journal (so the ring wraps and checkpoints happen
//! within short histories), reopened after every simulated crash from the crash image alone,
//! through the same `open` the table load runs. Requests are routed as `kernel/dm-remap.c`
//! routes bios: run by run on the fast path, the work queue's slow path for a run that fails
//! with a media error or must move.
//!
//! The generator is the one `RemapDevice` is tested with, kept to what device-mapper can send
//! the target (whole blocks of at most 4 KiB, as its logical block size is the remap block
//! size), without unmap and zero-filled maps (the kernel has no such messages).
//!
//! `REMAP_MODEL_CASES` sets the case count (default 1,000); `REMAP_MODEL_SEED` repeats a run.

use std::sync::Arc;

use remap_core::clock::{Clock, ManualClock};
use remap_core::testing::model::{
    self, Failure, HarnessError, ModelGeometry, ModelMain, ModelSpare, Subject,
};
use remap_core::{
    BlockBackend, HealthState, HealthThresholds, IoError, RemapTable, SpareAllocator, StatsSnapshot,
};
use remap_kmod::io::{BlockIo, Dev, IoFailure, WriteFlags};
use remap_kmod::target::{MAX_SLOW_BYTES, Op, OpenParams, Route, Shared, SlowError, State};
use remap_kmod::{Options, open};
use remap_meta::{CreateOptions, DeviceIdentity, Geometry, create};

const JOURNAL_BLOCKS: u32 = 4;
const EIO: i32 = 5;

/// The two simulated disks behind the target's I/O seam.
struct Disks {
    main: ModelMain,
    spare: ModelSpare,
}

fn failure(dev: Dev, offset: u64, e: IoError) -> IoFailure {
    IoFailure {
        dev,
        offset,
        errno: e.errno(),
        media: e.is_media(),
    }
}

impl Disks {
    fn dev(&self, dev: Dev) -> &dyn BlockBackend {
        match dev {
            Dev::Main => &*self.main,
            Dev::Spare => &*self.spare,
        }
    }
}

impl BlockIo for Disks {
    fn read(&mut self, dev: Dev, offset: u64, buf: &mut [u8]) -> Result<(), IoFailure> {
        self.dev(dev)
            .read_at(offset, buf)
            .map_err(|e| failure(dev, offset, e))
    }

    fn write(
        &mut self,
        dev: Dev,
        offset: u64,
        buf: &[u8],
        flags: WriteFlags,
    ) -> Result<(), IoFailure> {
        let d = self.dev(dev);
        if flags.preflush {
            d.flush().map_err(|e| failure(dev, offset, e))?;
        }
        let r = if flags.fua {
            d.write_at_fua(offset, buf)
        } else {
            d.write_at(offset, buf)
        };
        r.map_err(|e| failure(dev, offset, e))
    }

    fn flush(&mut self, dev: Dev) -> Result<(), IoFailure> {
        self.dev(dev).flush().map_err(|e| failure(dev, 0, e))
    }

    fn discard(&mut self, dev: Dev, offset: u64, len: u64) -> Result<(), IoFailure> {
        let d = self.dev(dev);
        if !d.supports_trim() {
            return Ok(());
        }
        d.trim(offset, len).map_err(|e| failure(dev, offset, e))
    }
}

/// The kernel target under the model.
#[derive(Default)]
struct KernelSubject {
    disks: Option<Disks>,
    target: Option<(State, Shared)>,
    clock: Option<Arc<ManualClock>>,
    block: u64,
    /// Where the spare pool starts: everything before it is metadata.
    metadata_bytes: u64,
}

fn plan(geometry: &ModelGeometry) -> Geometry {
    Geometry::smallest_for_pool(
        geometry.main_bytes,
        geometry.block_size,
        JOURNAL_BLOCKS,
        geometry.spare_blocks,
    )
    .expect("the model's geometry can be laid out")
}

fn failed(e: SlowError) -> Failure {
    Failure {
        errno: e.errno(),
        message: e.to_string(),
    }
}

fn io_failed(e: IoFailure) -> Failure {
    Failure {
        errno: e.errno,
        message: e.to_string(),
    }
}

/// What the fast path did with one run.
enum Fast {
    Done,
    /// A media error, or a run that must move: the work queue redoes it.
    Slow,
    Failed(Failure),
}

impl KernelSubject {
    fn parts(&mut self) -> (&mut State, &Shared, &mut Disks, u32) {
        let now_s = self.clock.as_ref().map_or(0, |c| c.now_s() as u32);
        match (&mut self.target, &mut self.disks) {
            (Some((state, shared)), Some(disks)) => (state, &*shared, disks, now_s),
            _ => panic!("no target (a reopen failed)"),
        }
    }

    fn shared(&self) -> &Shared {
        match &self.target {
            Some((_, shared)) => shared,
            None => panic!("no target (a reopen failed)"),
        }
    }

    fn state(&self) -> &State {
        match &self.target {
            Some((state, _)) => state,
            None => panic!("no target (a reopen failed)"),
        }
    }

    fn open(&mut self, main_bytes: u64) -> Result<(), HarnessError> {
        let disks = self.disks.as_mut().ok_or("no disks")?;
        let now_ns = self.clock.as_ref().map_or(0, |c| c.now_ns());
        let params = OpenParams {
            target_bytes: main_bytes,
            main_dev_bytes: disks.main.size_bytes(),
            spare_dev_bytes: disks.spare.size_bytes(),
            main_dm_uuid: None,
            page_size: 4096,
            main_logical_block: 512,
            spare_logical_block: 512,
            now_ns,
        };
        let target = open(disks, &params, Options::default()).map_err(|e| e.to_string())?;
        self.target = Some(target);
        Ok(())
    }

    /// One request as the glue handles a bio: each run is routed and done on the fast path;
    /// from the first run that fails with a media error or must move, the rest of the
    /// request goes to the work queue as one piece, cut into bounce-buffer pieces, stopping
    /// at the first that fails. That is the glue's path for a bio that spans several runs
    /// when it reaches the work queue (`rk_resubmit`, `rk_slow_bio`). A bio mapped while the
    /// gate is open is instead split into one clone per run, each on its own; the two differ
    /// only after a failed commit, when later clones are refused at once rather than moved in
    /// memory and then refused (`docs/design.md`, "Concurrency").
    fn request(
        &mut self,
        op: Op,
        offset: u64,
        len: u64,
        mut fast: impl FnMut(&mut Disks, Dev, u64, std::ops::Range<usize>) -> Fast,
        mut slow: impl FnMut(
            &mut State,
            &Shared,
            &mut Disks,
            u64,
            std::ops::Range<usize>,
            u32,
        ) -> Result<(), SlowError>,
    ) -> Result<(), Failure> {
        let bs = self.block;
        assert!(
            offset.is_multiple_of(bs) && len.is_multiple_of(bs) && len > 0,
            "the generator sends whole blocks only"
        );
        let (state, shared, disks, now_s) = self.parts();
        let mut first_error: Option<Failure> = None;
        let mut lba = offset / bs;
        let end = (offset + len) / bs;
        let mut slow_from = None;
        while lba < end {
            let route = state.route(shared, lba, end - lba, op);
            let (n, target) = match route {
                Route::Main { blocks } => (blocks, Some((Dev::Main, lba * bs))),
                Route::Spare { blocks, offset } => (blocks, Some((Dev::Spare, offset))),
                Route::Slow { .. } => {
                    slow_from = Some(lba);
                    break;
                }
                Route::Skip { blocks } => {
                    lba += blocks;
                    continue;
                }
                Route::Fail { blocks } => {
                    first_error.get_or_insert(Failure {
                        errno: EIO,
                        message: format!("{op:?} of block {lba} failed at once"),
                    });
                    lba += blocks;
                    continue;
                }
            };
            let at = ((lba * bs - offset) as usize)..(((lba + n) * bs - offset) as usize);
            let (dev, dev_offset) = target.unwrap_or((Dev::Main, 0));
            match fast(disks, dev, dev_offset, at) {
                Fast::Done => {}
                Fast::Failed(f) => {
                    first_error.get_or_insert(f);
                }
                Fast::Slow => {
                    slow_from = Some(lba);
                    break;
                }
            }
            lba += n;
        }
        if let Some(from) = slow_from {
            let mut piece = (from * bs - offset) as usize;
            let stop = len as usize;
            while piece < stop {
                let piece_end = (piece + MAX_SLOW_BYTES as usize).min(stop);
                let piece_lba = (offset + piece as u64) / bs;
                if let Err(e) = slow(state, shared, disks, piece_lba, piece..piece_end, now_s) {
                    first_error.get_or_insert(failed(e));
                    break;
                }
                piece = piece_end;
            }
        }
        let ok = first_error.is_none();
        shared.account(op, len, 0, false, ok);
        first_error.map_or(Ok(()), Err)
    }
}

fn fast_outcome(r: Result<(), IoFailure>) -> Fast {
    match r {
        Ok(()) => Fast::Done,
        Err(e) if e.is_media() => Fast::Slow,
        Err(e) => Fast::Failed(io_failed(e)),
    }
}

impl Subject for KernelSubject {
    const CAN_FAIL_COMMITS: bool = true;
    const WHOLE_BLOCKS: bool = true;
    const CAN_UNMAP: bool = false;
    const CAN_MAP_ZEROES: bool = false;

    fn new() -> Self {
        KernelSubject::default()
    }

    fn spare_bytes(&self, geometry: &ModelGeometry) -> u64 {
        plan(geometry).spare_size
    }

    fn create(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<ManualClock>,
    ) -> Result<(), HarnessError> {
        let opts = CreateOptions {
            block_size: geometry.block_size,
            journal_blocks: Some(JOURNAL_BLOCKS),
            pool_blocks: Some(geometry.spare_blocks),
            thresholds: HealthThresholds::default(),
            read_retries: 3,
            ..Default::default()
        };
        let sb = create(&*spare, main.size_bytes(), DeviceIdentity::NONE, &opts)?;
        self.metadata_bytes = sb.geometry.pool_offset;
        // Formatting is not part of the history under test: make it durable.
        spare.flush()?;
        self.block = geometry.block_size.bytes_u64();
        self.clock = Some(clock);
        self.disks = Some(Disks { main, spare });
        self.open(geometry.main_bytes)
    }

    fn close(&mut self) {
        self.target = None;
        self.disks = None;
    }

    fn reopen(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<ManualClock>,
    ) -> Result<(), HarnessError> {
        self.clock = Some(clock);
        self.disks = Some(Disks { main, spare });
        self.open(geometry.main_bytes)
    }

    /// A dying metadata region: every write to it fails.
    fn fail_commits(&mut self, spare: &ModelSpare) {
        spare.fail_writes(0..self.metadata_bytes.div_ceil(512));
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Failure> {
        let len = buf.len() as u64;
        // The closures share `buf` one after the other, never at once.
        let buf = std::cell::RefCell::new(buf);
        self.request(
            Op::Read,
            offset,
            len,
            |disks, dev, at, range| fast_outcome(disks.read(dev, at, &mut buf.borrow_mut()[range])),
            |state, shared, disks, lba, range, now_s| {
                state.serve_read(shared, disks, lba, &mut buf.borrow_mut()[range], now_s)
            },
        )
    }

    fn write(&mut self, offset: u64, buf: &[u8], fua: bool) -> Result<(), Failure> {
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::PLAIN
        };
        self.request(
            Op::Write,
            offset,
            buf.len() as u64,
            |disks, dev, at, range| fast_outcome(disks.write(dev, at, &buf[range], flags)),
            |state, shared, disks, lba, range, now_s| {
                state.serve_write(shared, disks, lba, &buf[range], fua, now_s)
            },
        )
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, fua: bool) -> Result<(), Failure> {
        // The glue's REQ_OP_WRITE_ZEROES on the fast path; the slow path gets a zeroed
        // buffer and the write path.
        let zeroes = vec![0u8; len as usize];
        let flags = if fua {
            WriteFlags::FUA
        } else {
            WriteFlags::PLAIN
        };
        self.request(
            Op::WriteZeroes,
            offset,
            len,
            |disks, dev, at, range| fast_outcome(disks.write(dev, at, &zeroes[range], flags)),
            |state, shared, disks, lba, range, now_s| {
                state.serve_write(shared, disks, lba, &zeroes[range], fua, now_s)
            },
        )
    }

    fn trim(&mut self, offset: u64, len: u64) -> Result<(), Failure> {
        self.request(
            Op::Discard,
            offset,
            len,
            |disks, dev, at, range| match disks.discard(dev, at, range.len() as u64) {
                Ok(()) => Fast::Done,
                Err(e) => Fast::Failed(io_failed(e)),
            },
            |_, _, _, lba, _, _| panic!("a discard of block {lba} went to the slow path"),
        )
    }

    fn flush(&mut self) -> Result<(), Failure> {
        let (_, shared, disks, _) = self.parts();
        if shared.refuses_flush() {
            shared.account(Op::Flush, 0, 0, false, false);
            return Err(Failure {
                errno: EIO,
                message: "flush refused after a metadata failure".into(),
            });
        }
        let r = disks
            .flush(Dev::Main)
            .and_then(|()| disks.flush(Dev::Spare))
            .map_err(io_failed);
        shared.account(Op::Flush, 0, 0, false, r.is_ok());
        r
    }

    fn map_block(&mut self, lba: u64, zero_unreadable: bool) -> Result<(), Failure> {
        assert!(!zero_unreadable, "the kernel has no zero-filled map");
        let (state, shared, disks, now_s) = self.parts();
        state
            .serve_map(shared, disks, lba, now_s)
            .map(|_| ())
            .map_err(failed)
    }

    fn unmap_block(&mut self, lba: u64) -> Result<(), Failure> {
        panic!("the kernel has no unmap message (block {lba})")
    }

    fn spare_byte(&self, spare: u64) -> u64 {
        self.shared().pool_offset + spare * self.block
    }

    fn with_state<R>(&self, f: impl FnOnce(&RemapTable, &SpareAllocator) -> R) -> R {
        let state = self.state();
        f(state.table(), state.spares())
    }

    fn is_poisoned(&self) -> bool {
        self.shared().is_poisoned()
    }

    fn stats(&self) -> StatsSnapshot {
        self.shared().stats.snapshot()
    }

    fn thresholds(&self) -> HealthThresholds {
        self.shared().thresholds
    }

    fn health(&self) -> HealthState {
        self.shared().health().state
    }
}

#[test]
fn kernel_target_matches_the_reference_model() {
    model::run_subject::<KernelSubject>();
}
