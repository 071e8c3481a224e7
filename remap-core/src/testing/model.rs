//! The reference model of a remapping device, and the model-based test that drives a real
//! [`RemapDevice`] against it.
//!
//! # The model
//!
//! [`Model`] is a plain, deterministic description of what a correct remapping device may do.
//! It works per 512-byte sector. Every write gets a unique id, and the device is written with
//! sectors that carry `(id, sector)` ([`sector_content`]), so any sector read back can be
//! decoded to the write it came from ([`decode_sector`]); zeroes decode to value 0.
//!
//! For each sector the model keeps two sets of values:
//!
//! - `now`: what a read may return now. One value after an acknowledged write; the old and
//!   the new value after a failed write; the old value or zeroes after a trim.
//! - `after_crash`: what a read may return after a crash: the value at the last durable point
//!   and every value written since. Durable points are a flush (every sector), a FUA write
//!   (its sectors) and a write that moved a block to a spare (the whole moved block: the
//!   remap path flushes the spare and commits the mapping before acknowledging).
//!
//! For each logical block it keeps where the block lives (main, a spare, or pending), whether
//! its spare block fails reads or writes, and which main sectors fail reads or writes. From
//! that it predicts each operation's outcome exactly:
//!
//! - a read touching a pending block, a main block whose touched sectors fail reads, or a
//!   remapped block whose spare fails reads must fail (and marks those blocks pending); any
//!   other read must succeed and return values from `now`;
//! - a write moves every touched block that is pending, whose touched main sectors fail
//!   writes, or whose spare fails writes; a partial write to such a block merges with the
//!   rest of the block and fails (marking it pending) if the rest cannot be read; a move with
//!   no spare left fails with `ENOSPC` and leaves the block where it was;
//! - the remap table's shape (which blocks are remapped or pending), the number of retired
//!   spares, the gauges, the health verdict and the poisoned flag must match after every
//!   operation;
//! - a crash keeps what was committed; every sector then reads a value from `after_crash`.
//!
//! No read may return bytes that were never written: a sector that decodes to nothing, or to a
//! value outside its set, fails the test. On top of the sets, the driver pins the first value
//! it reads from an uncertain sector and requires the same value until the sector changes.
//!
//! # The driver
//!
//! [`ModelTest`] implements proptest-state-machine's [`ReferenceStateMachine`] (the model
//! generates operations and predicts outcomes) and [`StateMachineTest`] (the device runs them
//! and is checked). It is generic over a [`Harness`] that creates a device over blank main and
//! spare backends and reopens one over the images a crash left, so a store that keeps its
//! metadata on the spare device itself (as `remap-meta` does) runs the very same test as the
//! in-memory [`MemStoreHarness`]. [`run`] runs it with the case count from
//! `REMAP_MODEL_CASES` (default 1,000) and the seed from `REMAP_MODEL_SEED` (random, and
//! printed, when unset); a failure shrinks to a minimal history and prints it.
//!
//! Spare-block faults are healed by a crash (the driver rebuilds the spare from its image and
//! re-injects only the main device's faults): a fault on a spare block the crash returned to
//! the free pool would otherwise hit a block the model cannot name.

use std::collections::BTreeSet;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::sync::Arc;

use parking_lot::Mutex;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest};

use crate::backend::crash::CrashBackend;
use crate::backend::errno;
use crate::backend::faulty::FaultyBackend;
use crate::clock::{Clock, ManualClock};
use crate::device::{DeviceConfig, DeviceError, InitialState, Layout, RemapDevice};
use crate::geometry::BlockSize;
use crate::health::{HealthInputs, HealthState, HealthThresholds, evaluate};
use crate::spare::SpareAllocator;
use crate::stats::StatsSnapshot;
use crate::table::RemapTable;

use super::{MemStore, MemStoreHandle, device_from_mem_store, table_capacity_for};

/// The unit of the model: values are tracked per 512-byte sector.
pub const SECTOR: u64 = 512;

/// The main device of a model run: a crashable memory device behind fault injection.
pub type ModelMain = Arc<FaultyBackend<CrashBackend>>;
/// The spare device of a model run (metadata, if the store keeps any there, and the pool).
pub type ModelSpare = Arc<FaultyBackend<CrashBackend>>;
/// The device under test.
pub type ModelDevice = RemapDevice<ModelMain, ModelSpare>;
/// Whatever a harness could not do.
pub type HarnessError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The shape of one model run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelGeometry {
    pub block_size: BlockSize,
    /// Size of the main (and logical) device: a multiple of 512, possibly ending in a
    /// partial block.
    pub main_bytes: u64,
    /// Blocks in the spare pool.
    pub spare_blocks: u64,
}

impl ModelGeometry {
    /// Sectors of the logical device.
    pub fn sectors(&self) -> u64 {
        self.main_bytes / SECTOR
    }

    pub fn sectors_per_block(&self) -> u64 {
        self.block_size.bytes_u64() / SECTOR
    }

    /// Logical blocks (the last may be partial).
    pub fn blocks(&self) -> u64 {
        self.block_size.blocks_for(self.main_bytes)
    }

    /// Sectors of block `b`.
    fn block_sectors(&self, b: u64) -> Range<u64> {
        let spb = self.sectors_per_block();
        b * spb..((b + 1) * spb).min(self.sectors())
    }

    /// Blocks touched by sectors `[start, start + count)`, `count > 0`.
    fn blocks_touched(&self, start: u64, count: u64) -> Range<u64> {
        let spb = self.sectors_per_block();
        start / spb..(start + count - 1) / spb + 1
    }

    /// Sectors of block `b` inside `[start, start + count)`.
    fn touched(&self, b: u64, start: u64, count: u64) -> Range<u64> {
        let r = self.block_sectors(b);
        r.start.max(start)..r.end.min(start + count)
    }

    fn fits(&self, start: u64, count: u64) -> bool {
        count > 0
            && start
                .checked_add(count)
                .is_some_and(|end| end <= self.sectors())
    }
}

/// The 512 bytes of sector `sector` holding value `value`: zeroes for 0, else 32 copies of
/// `(value, sector)` as little-endian `u64`s, so a misplaced sector is caught too.
pub fn sector_content(value: u64, sector: u64) -> [u8; SECTOR as usize] {
    let mut out = [0u8; SECTOR as usize];
    if value != 0 {
        for chunk in out.chunks_exact_mut(16) {
            chunk[..8].copy_from_slice(&value.to_le_bytes());
            chunk[8..].copy_from_slice(&sector.to_le_bytes());
        }
    }
    out
}

/// The value a sector read back from `sector` holds, or `None` if it holds bytes that no
/// write put there (garbage, another sector's data, a torn sector).
pub fn decode_sector(bytes: &[u8], sector: u64) -> Option<u64> {
    if bytes.len() != SECTOR as usize {
        return None;
    }
    if bytes.iter().all(|&b| b == 0) {
        return Some(0);
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[..8]);
    let value = u64::from_le_bytes(word);
    (value != 0 && bytes == sector_content(value, sector)).then_some(value)
}

/// A small sorted set of sector values.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct ValueSet(Vec<u64>);

impl ValueSet {
    fn single(v: u64) -> Self {
        ValueSet(vec![v])
    }

    fn insert(&mut self, v: u64) {
        if let Err(i) = self.0.binary_search(&v) {
            self.0.insert(i, v);
        }
    }

    pub fn contains(&self, v: u64) -> bool {
        self.0.binary_search(&v).is_ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for ValueSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(&self.0).finish()
    }
}

/// What the model knows about one sector.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SectorState {
    now: ValueSet,
    after_crash: ValueSet,
    /// Bumped whenever `now` changes, so the driver knows when a pinned value expires.
    epoch: u32,
}

/// Where a logical block lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Main,
    Spare,
    /// Reads fail until a write moves it; `main_current` says whether main still holds its
    /// latest data (so a partial write can merge with it).
    Pending {
        main_current: bool,
    },
}

impl Place {
    fn code(self) -> char {
        match self {
            Place::Main => '.',
            Place::Spare => 'S',
            Place::Pending { main_current: true } => 'p',
            Place::Pending {
                main_current: false,
            } => 'P',
        }
    }
}

/// Faults of the spare block a block currently lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct SpareFault {
    reads: bool,
    writes: bool,
}

/// The outcome the model predicts for the last operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing to check (a fault injection, the initial state).
    Nothing,
    /// The operation must succeed; a read must return values from the model.
    Success,
    /// The operation must fail with this errno.
    Failure { errno: i32 },
    /// Either outcome is allowed (a trim over a failing block).
    Either,
}

/// One operation of a model run. Ranges are in 512-byte sectors of the logical device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Read {
        sector: u64,
        count: u64,
    },
    Write {
        sector: u64,
        count: u64,
        fua: bool,
    },
    WriteZeroes {
        sector: u64,
        count: u64,
        fua: bool,
    },
    Trim {
        sector: u64,
        count: u64,
    },
    Flush,
    /// Main sectors that fail every read from now on.
    FailMainReads {
        sector: u64,
        count: u64,
    },
    /// Main sectors that fail every write from now on.
    FailMainWrites {
        sector: u64,
        count: u64,
    },
    /// The spare block that block `block` lives on fails reads and/or writes (nothing if the
    /// block is not remapped).
    FailSpare {
        block: u64,
        reads: bool,
        writes: bool,
    },
    /// Every later metadata commit fails (only with a harness that can do it).
    FailCommits,
    /// Move block `block` to a spare now, copying its data (`remap map`); with
    /// `zero_unreadable`, an unreadable block is mapped with zeroes.
    MapBlock {
        block: u64,
        zero_unreadable: bool,
    },
    /// Move block `block` back to main, verified (`remap unmap`). Only generated for blocks
    /// whose spare has no injected fault, so freed spares stay healthy.
    UnmapBlock {
        block: u64,
    },
    /// Power loss: each unflushed write on main and spare survives, vanishes or is torn at
    /// 512 bytes as `seed` decides; then the device is reopened.
    Crash {
        seed: u64,
    },
}

/// The reference model: the state of a correct device as far as it can be known.
#[derive(Clone, PartialEq, Eq)]
pub struct Model {
    geometry: ModelGeometry,
    can_fail_commits: bool,
    sectors: Vec<SectorState>,
    places: Vec<Place>,
    spare_faults: Vec<SpareFault>,
    retired: u64,
    /// The table's shape and the retired count as of the last successful commit: what a
    /// reopen after a crash finds.
    durable_places: Vec<Place>,
    durable_retired: u64,
    main_read_fail: BTreeSet<u64>,
    main_write_fail: BTreeSet<u64>,
    commits_fail: bool,
    poisoned: bool,
    next_write_id: u64,
    /// The id the last write used (the driver writes the same one).
    last_write_id: u64,
    expect: Expect,
}

impl fmt::Debug for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let places: String = self.places.iter().map(|p| p.code()).collect();
        f.debug_struct("Model")
            .field("geometry", &self.geometry)
            .field("places", &places)
            .field("retired", &self.retired)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// A blank device of this geometry: every sector reads as zeroes.
    pub fn new(geometry: ModelGeometry, can_fail_commits: bool) -> Self {
        let blocks = geometry.blocks() as usize;
        let zero = SectorState {
            now: ValueSet::single(0),
            after_crash: ValueSet::single(0),
            epoch: 0,
        };
        Model {
            geometry,
            can_fail_commits,
            sectors: vec![zero; geometry.sectors() as usize],
            places: vec![Place::Main; blocks],
            spare_faults: vec![SpareFault::default(); blocks],
            retired: 0,
            durable_places: vec![Place::Main; blocks],
            durable_retired: 0,
            main_read_fail: BTreeSet::new(),
            main_write_fail: BTreeSet::new(),
            commits_fail: false,
            poisoned: false,
            next_write_id: 1,
            last_write_id: 0,
            expect: Expect::Nothing,
        }
    }

    pub fn geometry(&self) -> &ModelGeometry {
        &self.geometry
    }

    /// The predicted outcome of the last operation.
    pub fn expect(&self) -> Expect {
        self.expect
    }

    pub fn place(&self, block: u64) -> Place {
        self.places[block as usize]
    }

    /// Values a read of `sector` may return now.
    pub fn now(&self, sector: u64) -> &ValueSet {
        &self.sectors[sector as usize].now
    }

    /// Values a read of `sector` may return after a crash now.
    pub fn after_crash(&self, sector: u64) -> &ValueSet {
        &self.sectors[sector as usize].after_crash
    }

    pub fn retired(&self) -> u64 {
        self.retired
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn remapped_count(&self) -> u64 {
        self.places.iter().filter(|p| **p == Place::Spare).count() as u64
    }

    pub fn pending_count(&self) -> u64 {
        self.places
            .iter()
            .filter(|p| matches!(p, Place::Pending { .. }))
            .count() as u64
    }

    pub fn free_spares(&self) -> u64 {
        self.geometry.spare_blocks - self.remapped_count() - self.retired
    }

    fn main_reads_fail(&self, sectors: Range<u64>) -> bool {
        self.main_read_fail.range(sectors).next().is_some()
    }

    fn main_writes_fail(&self, sectors: Range<u64>) -> bool {
        self.main_write_fail.range(sectors).next().is_some()
    }

    fn retire_spare_of(&mut self, b: usize, becomes: Place) {
        self.retired += 1;
        self.spare_faults[b] = SpareFault::default();
        self.places[b] = becomes;
    }

    /// Commit what changed, if anything did; returns whether the commit failed.
    fn commit(&mut self, changed: bool) -> bool {
        if changed && self.commits_fail {
            self.poisoned = true;
            return true;
        }
        if !self.commits_fail {
            self.durable_places.clone_from(&self.places);
            self.durable_retired = self.retired;
        }
        false
    }

    /// Apply one operation; afterwards [`expect`](Self::expect) holds its predicted outcome.
    pub fn apply(&mut self, op: &Op) {
        self.expect = match *op {
            Op::Read { sector, count } => self.read(sector, count),
            Op::Write { sector, count, fua } => {
                let id = self.next_write_id;
                self.next_write_id += 1;
                self.last_write_id = id;
                self.write(sector, count, id, fua)
            }
            Op::WriteZeroes { sector, count, fua } => self.write(sector, count, 0, fua),
            Op::Trim { sector, count } => self.trim(sector, count),
            Op::Flush => self.flush(),
            Op::FailMainReads { sector, count } => {
                self.main_read_fail.extend(sector..sector + count);
                Expect::Nothing
            }
            Op::FailMainWrites { sector, count } => {
                self.main_write_fail.extend(sector..sector + count);
                Expect::Nothing
            }
            Op::FailSpare {
                block,
                reads,
                writes,
            } => {
                let b = block as usize;
                if self.places[b] == Place::Spare {
                    let f = &mut self.spare_faults[b];
                    f.reads |= reads;
                    f.writes |= writes;
                }
                Expect::Nothing
            }
            Op::FailCommits => {
                self.commits_fail = true;
                Expect::Nothing
            }
            Op::MapBlock {
                block,
                zero_unreadable,
            } => self.map_block(block, zero_unreadable),
            Op::UnmapBlock { block } => self.unmap_block(block),
            Op::Crash { .. } => self.crash(),
        };
    }

    fn read(&mut self, start: u64, count: u64) -> Expect {
        let mut failed = false;
        let mut changed = false;
        for b in self.geometry.blocks_touched(start, count) {
            let touched = self.geometry.touched(b, start, count);
            let i = b as usize;
            match self.places[i] {
                Place::Pending { .. } => failed = true,
                Place::Spare if self.spare_faults[i].reads => {
                    self.retire_spare_of(
                        i,
                        Place::Pending {
                            main_current: false,
                        },
                    );
                    failed = true;
                    changed = true;
                }
                Place::Spare => {}
                Place::Main if self.main_reads_fail(touched) => {
                    self.places[i] = Place::Pending { main_current: true };
                    failed = true;
                    changed = true;
                }
                Place::Main => {}
            }
        }
        self.commit(changed);
        if failed {
            Expect::Failure { errno: errno::EIO }
        } else {
            Expect::Success
        }
    }

    fn write(&mut self, start: u64, count: u64, value: u64, fua: bool) -> Expect {
        if self.poisoned {
            return Expect::Failure { errno: errno::EIO };
        }
        let g = self.geometry;
        let to_move: Vec<u64> = g
            .blocks_touched(start, count)
            .filter(|&b| {
                let i = b as usize;
                match self.places[i] {
                    Place::Main => self.main_writes_fail(g.touched(b, start, count)),
                    Place::Spare => self.spare_faults[i].writes,
                    Place::Pending { .. } => true,
                }
            })
            .collect();
        let mut first_errno = None;
        let mut changed = false;
        let mut moved = Vec::new();
        for b in to_move {
            let i = b as usize;
            let whole = g.touched(b, start, count) == g.block_sectors(b);
            let old = self.places[i];
            if !whole {
                let readable = match old {
                    Place::Main | Place::Pending { main_current: true } => {
                        !self.main_reads_fail(g.block_sectors(b))
                    }
                    Place::Spare => !self.spare_faults[i].reads,
                    Place::Pending {
                        main_current: false,
                    } => false,
                };
                if !readable {
                    match old {
                        Place::Main => {
                            self.places[i] = Place::Pending { main_current: true };
                            changed = true;
                        }
                        Place::Spare => {
                            self.retire_spare_of(
                                i,
                                Place::Pending {
                                    main_current: false,
                                },
                            );
                            changed = true;
                        }
                        Place::Pending { .. } => {}
                    }
                    first_errno.get_or_insert(errno::EIO);
                    continue;
                }
            }
            if self.free_spares() == 0 {
                // Nothing already mapped is disturbed: the block stays where it was.
                first_errno.get_or_insert(errno::ENOSPC);
                continue;
            }
            if old == Place::Spare {
                self.retired += 1;
            }
            self.places[i] = Place::Spare;
            self.spare_faults[i] = SpareFault::default();
            changed = true;
            moved.push(b);
        }
        let commit_failed = self.commit(changed);
        let ok = first_errno.is_none() && !commit_failed;
        for s in start..start + count {
            let st = &mut self.sectors[s as usize];
            if ok {
                st.now = ValueSet::single(value);
                if fua {
                    st.after_crash = ValueSet::single(value);
                } else {
                    st.after_crash.insert(value);
                }
            } else {
                // A failed write leaves the old or the new value.
                st.now.insert(value);
                st.after_crash.insert(value);
            }
            st.epoch += 1;
        }
        if !commit_failed {
            // The remap path flushed the spare and committed: the moved blocks are durable.
            for b in moved {
                for s in g.block_sectors(b) {
                    let st = &mut self.sectors[s as usize];
                    st.after_crash = st.now.clone();
                }
            }
        }
        match (ok, commit_failed, first_errno) {
            (true, _, _) => Expect::Success,
            (false, true, _) | (false, false, None) => Expect::Failure { errno: errno::EIO },
            (false, false, Some(e)) => Expect::Failure { errno: e },
        }
    }

    fn map_block(&mut self, b: u64, zero_unreadable: bool) -> Expect {
        if self.poisoned {
            return Expect::Failure { errno: errno::EIO };
        }
        let g = self.geometry;
        let i = b as usize;
        let readable = match self.places[i] {
            Place::Spare => {
                return Expect::Failure {
                    errno: errno::EINVAL,
                };
            }
            Place::Main | Place::Pending { main_current: true } => {
                !self.main_reads_fail(g.block_sectors(b))
            }
            Place::Pending {
                main_current: false,
            } => false,
        };
        if !readable && !zero_unreadable {
            return Expect::Failure { errno: errno::EIO };
        }
        if self.free_spares() == 0 {
            return Expect::Failure {
                errno: errno::ENOSPC,
            };
        }
        self.places[i] = Place::Spare;
        self.spare_faults[i] = SpareFault::default();
        let commit_failed = self.commit(true);
        for s in g.block_sectors(b) {
            let st = &mut self.sectors[s as usize];
            if !readable {
                st.now = ValueSet::single(0);
                st.epoch += 1;
            }
            if commit_failed {
                st.after_crash.insert(0);
            } else {
                // The spare was flushed and the mapping committed before the reply.
                st.after_crash = st.now.clone();
            }
        }
        if commit_failed {
            Expect::Failure { errno: errno::EIO }
        } else {
            Expect::Success
        }
    }

    fn unmap_block(&mut self, b: u64) -> Expect {
        if self.poisoned {
            return Expect::Failure { errno: errno::EIO };
        }
        let g = self.geometry;
        let i = b as usize;
        let sectors = g.block_sectors(b);
        if self.places[i] != Place::Spare
            || self.spare_faults[i].reads
            || self.main_writes_fail(sectors.clone())
            || self.main_reads_fail(sectors.clone())
        {
            // Not remapped, its spare cannot be read, or main still fails there (the data
            // is written to main and read back before anything changes): refused.
            return Expect::Failure { errno: errno::EIO };
        }
        self.places[i] = Place::Main;
        self.spare_faults[i] = SpareFault::default();
        if self.commit(true) {
            return Expect::Failure { errno: errno::EIO };
        }
        // Main was written and flushed before the mapping changed.
        for s in sectors {
            let st = &mut self.sectors[s as usize];
            st.after_crash = st.now.clone();
        }
        Expect::Success
    }

    fn trim(&mut self, start: u64, count: u64) -> Expect {
        if self.poisoned {
            return Expect::Failure { errno: errno::EIO };
        }
        let g = self.geometry;
        let may_fail = g
            .blocks_touched(start, count)
            .any(|b| match self.places[b as usize] {
                Place::Main => self.main_writes_fail(g.touched(b, start, count)),
                Place::Spare => self.spare_faults[b as usize].writes,
                Place::Pending { .. } => false,
            });
        for s in start..start + count {
            let st = &mut self.sectors[s as usize];
            st.now.insert(0);
            st.after_crash.insert(0);
            st.epoch += 1;
        }
        if may_fail {
            Expect::Either
        } else {
            Expect::Success
        }
    }

    fn flush(&mut self) -> Expect {
        if self.poisoned {
            return Expect::Failure { errno: errno::EIO };
        }
        for st in &mut self.sectors {
            st.after_crash = st.now.clone();
        }
        Expect::Success
    }

    fn crash(&mut self) -> Expect {
        for st in &mut self.sectors {
            st.now = st.after_crash.clone();
            st.epoch += 1;
        }
        self.places.clone_from(&self.durable_places);
        self.retired = self.durable_retired;
        self.spare_faults.fill(SpareFault::default());
        self.commits_fail = false;
        self.poisoned = false;
        Expect::Success
    }

    /// Whether `op` can run on this model's geometry (shrinking may shrink the geometry
    /// under a generated history).
    fn admits(&self, op: &Op) -> bool {
        let g = &self.geometry;
        match *op {
            Op::Read { sector, count }
            | Op::Write { sector, count, .. }
            | Op::WriteZeroes { sector, count, .. }
            | Op::Trim { sector, count }
            | Op::FailMainReads { sector, count }
            | Op::FailMainWrites { sector, count } => g.fits(sector, count),
            Op::FailSpare { block, .. } | Op::MapBlock { block, .. } => block < g.blocks(),
            Op::UnmapBlock { block } => {
                block < g.blocks()
                    && (self.places[block as usize] != Place::Spare
                        || self.spare_faults[block as usize] == SpareFault::default())
            }
            Op::FailCommits => self.can_fail_commits,
            Op::Flush | Op::Crash { .. } => true,
        }
    }
}

// ----- coverage -----

/// What the runs of this process exercised, so a green run can show it was not vacuous.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coverage {
    pub cases: u64,
    pub operations: u64,
    pub reads_ok: u64,
    pub reads_failed: u64,
    pub writes_ok: u64,
    pub writes_failed: u64,
    pub writes_enospc: u64,
    pub partial_moves: u64,
    pub crashes: u64,
    pub crash_values_lost: u64,
    pub commit_failures: u64,
    pub uncertain_sectors_read: u64,
    pub maps_done: u64,
    pub unmaps_done: u64,
}

mod counters {
    use std::sync::atomic::AtomicU64;
    pub static CASES: AtomicU64 = AtomicU64::new(0);
    pub static OPERATIONS: AtomicU64 = AtomicU64::new(0);
    pub static READS_OK: AtomicU64 = AtomicU64::new(0);
    pub static READS_FAILED: AtomicU64 = AtomicU64::new(0);
    pub static WRITES_OK: AtomicU64 = AtomicU64::new(0);
    pub static WRITES_FAILED: AtomicU64 = AtomicU64::new(0);
    pub static WRITES_ENOSPC: AtomicU64 = AtomicU64::new(0);
    pub static PARTIAL_MOVES: AtomicU64 = AtomicU64::new(0);
    pub static CRASHES: AtomicU64 = AtomicU64::new(0);
    pub static CRASH_VALUES_LOST: AtomicU64 = AtomicU64::new(0);
    pub static COMMIT_FAILURES: AtomicU64 = AtomicU64::new(0);
    pub static UNCERTAIN_SECTORS_READ: AtomicU64 = AtomicU64::new(0);
    pub static MAPS_DONE: AtomicU64 = AtomicU64::new(0);
    pub static UNMAPS_DONE: AtomicU64 = AtomicU64::new(0);
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Totals over every model case run in this process so far.
pub fn coverage() -> Coverage {
    use counters::*;
    use std::sync::atomic::Ordering::Relaxed;
    Coverage {
        cases: CASES.load(Relaxed),
        operations: OPERATIONS.load(Relaxed),
        reads_ok: READS_OK.load(Relaxed),
        reads_failed: READS_FAILED.load(Relaxed),
        writes_ok: WRITES_OK.load(Relaxed),
        writes_failed: WRITES_FAILED.load(Relaxed),
        writes_enospc: WRITES_ENOSPC.load(Relaxed),
        partial_moves: PARTIAL_MOVES.load(Relaxed),
        crashes: CRASHES.load(Relaxed),
        crash_values_lost: CRASH_VALUES_LOST.load(Relaxed),
        commit_failures: COMMIT_FAILURES.load(Relaxed),
        uncertain_sectors_read: UNCERTAIN_SECTORS_READ.load(Relaxed),
        maps_done: MAPS_DONE.load(Relaxed),
        unmaps_done: UNMAPS_DONE.load(Relaxed),
    }
}

// ----- the harness -----

/// How a model run creates a device and reopens it after a crash. Implement it for a store
/// to run the model test against that store (`remap-meta` does, with its journal on the
/// spare device).
pub trait Harness: Sized + 'static {
    /// Whether [`fail_commits`](Self::fail_commits) works; if not, the model never asks.
    const CAN_FAIL_COMMITS: bool = false;

    fn new() -> Self;

    /// Bytes the spare device needs for a pool of `geometry.spare_blocks` blocks plus any
    /// metadata the store keeps there.
    fn spare_bytes(&self, geometry: &ModelGeometry) -> u64;

    /// A new device over blank `main` and `spare` (format the spare if the store lives
    /// there). Its table must hold at least `geometry.blocks()` entries.
    fn create(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<dyn Clock>,
        config: DeviceConfig,
    ) -> Result<ModelDevice, HarnessError>;

    /// The device after a crash: `main` and `spare` hold the post-crash images, and the
    /// store's state is whatever it had made durable.
    fn reopen(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<dyn Clock>,
        config: DeviceConfig,
    ) -> Result<ModelDevice, HarnessError>;

    /// Make every later commit fail, until the next reopen.
    fn fail_commits(&mut self, spare: &ModelSpare) {
        let _ = spare;
    }
}

/// The harness for [`MemStore`]: the pool starts at byte 0 of the spare, and a reopen replays
/// the records the store committed.
#[derive(Debug, Default)]
pub struct MemStoreHarness {
    handle: Option<MemStoreHandle>,
}

impl Harness for MemStoreHarness {
    const CAN_FAIL_COMMITS: bool = true;

    fn new() -> Self {
        Self::default()
    }

    fn spare_bytes(&self, geometry: &ModelGeometry) -> u64 {
        geometry.spare_blocks * geometry.block_size.bytes_u64()
    }

    fn create(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<dyn Clock>,
        config: DeviceConfig,
    ) -> Result<ModelDevice, HarnessError> {
        let (store, handle) = MemStore::new();
        self.handle = Some(handle);
        let device = RemapDevice::new(
            main,
            spare,
            mem_layout(geometry),
            InitialState {
                table: RemapTable::new(table_capacity_for(geometry.spare_blocks)),
                spares: SpareAllocator::new(geometry.spare_blocks)?,
                lifetime: StatsSnapshot::default(),
            },
            Box::new(store),
            clock,
            config,
        )?;
        Ok(device)
    }

    fn reopen(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<dyn Clock>,
        config: DeviceConfig,
    ) -> Result<ModelDevice, HarnessError> {
        let handle = self.handle.as_ref().ok_or("reopen before create")?;
        let layout = mem_layout(geometry);
        Ok(device_from_mem_store(
            main, spare, layout, handle, clock, config,
        )?)
    }

    fn fail_commits(&mut self, _spare: &ModelSpare) {
        if let Some(h) = &self.handle {
            h.fail_commits(true);
        }
    }
}

fn mem_layout(geometry: &ModelGeometry) -> Layout {
    Layout {
        block_size: geometry.block_size,
        spare_offset: 0,
        spare_blocks: geometry.spare_blocks,
    }
}

// ----- the subject: what the model drives -----

/// A failed operation, as the model checks it: the `errno` a frontend would report and the
/// message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub errno: i32,
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "errno {}: {}", self.errno, self.message)
    }
}

impl From<DeviceError> for Failure {
    fn from(e: DeviceError) -> Self {
        Failure {
            errno: e.errno(),
            message: e.to_string(),
        }
    }
}

/// One implementation of the engine under the model: [`RemapDevice`] through a [`Harness`]
/// ([`DeviceSubject`]), or the kernel target's host build (`remap-kmod/tests/model.rs`).
/// Requests are in bytes of the logical device; every fault is injected into `main` and
/// `spare`, which the subject must use as its two devices.
pub trait Subject: Sized + 'static {
    /// Whether [`fail_commits`](Self::fail_commits) works; if not, the model never asks.
    const CAN_FAIL_COMMITS: bool = false;
    /// Only whole-block requests, on devices of whole blocks of at most 4 KiB (the kernel
    /// target sits behind device-mapper with its logical block size raised to the remap
    /// block size, so it is never sent anything else). The generator keeps to that.
    const WHOLE_BLOCKS: bool = false;
    /// Whether the subject can move a block back to main (the kernel has no such message).
    const CAN_UNMAP: bool = true;
    /// Whether a manual move can take zeroes for an unreadable block.
    const CAN_MAP_ZEROES: bool = true;

    fn new() -> Self;

    /// Bytes the spare device needs for the pool plus any metadata kept there.
    fn spare_bytes(&self, geometry: &ModelGeometry) -> u64;

    /// Start over blank `main` and `spare`. The table must hold `geometry.blocks()` entries.
    fn create(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<ManualClock>,
    ) -> Result<(), HarnessError>;

    /// Let go of the devices (before a crash image is taken).
    fn close(&mut self);

    /// Start again over the post-crash images.
    fn reopen(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<ManualClock>,
    ) -> Result<(), HarnessError>;

    /// Make every later commit fail, until the next reopen.
    fn fail_commits(&mut self, spare: &ModelSpare) {
        let _ = spare;
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Failure>;
    fn write(&mut self, offset: u64, buf: &[u8], fua: bool) -> Result<(), Failure>;
    fn write_zeroes(&mut self, offset: u64, len: u64, fua: bool) -> Result<(), Failure>;
    fn trim(&mut self, offset: u64, len: u64) -> Result<(), Failure>;
    fn flush(&mut self) -> Result<(), Failure>;
    fn map_block(&mut self, lba: u64, zero_unreadable: bool) -> Result<(), Failure>;
    fn unmap_block(&mut self, lba: u64) -> Result<(), Failure>;

    /// Byte offset of spare block `spare` on the spare device.
    fn spare_byte(&self, spare: u64) -> u64;
    fn with_state<R>(&self, f: impl FnOnce(&RemapTable, &SpareAllocator) -> R) -> R;
    fn is_poisoned(&self) -> bool;
    fn stats(&self) -> StatsSnapshot;
    fn thresholds(&self) -> HealthThresholds;
    fn health(&self) -> HealthState;
}

/// [`RemapDevice`] under the model, created and reopened by harness `H`.
#[derive(Debug)]
pub struct DeviceSubject<H> {
    harness: H,
    device: Option<ModelDevice>,
}

impl<H: Harness> DeviceSubject<H> {
    fn device(&self) -> &ModelDevice {
        match &self.device {
            Some(d) => d,
            None => panic!("no device (a reopen failed)"),
        }
    }
}

impl<H: Harness> Subject for DeviceSubject<H> {
    const CAN_FAIL_COMMITS: bool = H::CAN_FAIL_COMMITS;

    fn new() -> Self {
        DeviceSubject {
            harness: H::new(),
            device: None,
        }
    }

    fn spare_bytes(&self, geometry: &ModelGeometry) -> u64 {
        self.harness.spare_bytes(geometry)
    }

    fn create(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<ManualClock>,
    ) -> Result<(), HarnessError> {
        let d = self
            .harness
            .create(main, spare, geometry, clock, DeviceConfig::default())?;
        self.device = Some(d);
        Ok(())
    }

    fn close(&mut self) {
        self.device = None;
    }

    fn reopen(
        &mut self,
        main: ModelMain,
        spare: ModelSpare,
        geometry: &ModelGeometry,
        clock: Arc<ManualClock>,
    ) -> Result<(), HarnessError> {
        let d = self
            .harness
            .reopen(main, spare, geometry, clock, DeviceConfig::default())?;
        self.device = Some(d);
        Ok(())
    }

    fn fail_commits(&mut self, spare: &ModelSpare) {
        self.harness.fail_commits(spare);
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Failure> {
        Ok(self.device().read(offset, buf)?)
    }

    fn write(&mut self, offset: u64, buf: &[u8], fua: bool) -> Result<(), Failure> {
        let d = self.device();
        Ok(if fua {
            d.write_fua(offset, buf)
        } else {
            d.write(offset, buf)
        }?)
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, fua: bool) -> Result<(), Failure> {
        Ok(self.device().write_zeroes(offset, len, fua)?)
    }

    fn trim(&mut self, offset: u64, len: u64) -> Result<(), Failure> {
        Ok(self.device().trim(offset, len)?)
    }

    fn flush(&mut self) -> Result<(), Failure> {
        Ok(self.device().flush()?)
    }

    fn map_block(&mut self, lba: u64, zero_unreadable: bool) -> Result<(), Failure> {
        self.device().map_block(lba, zero_unreadable)?;
        Ok(())
    }

    fn unmap_block(&mut self, lba: u64) -> Result<(), Failure> {
        Ok(self.device().unmap_block(lba)?)
    }

    fn spare_byte(&self, spare: u64) -> u64 {
        let l = self.device().layout();
        l.spare_offset + spare * l.block_size.bytes_u64()
    }

    fn with_state<R>(&self, f: impl FnOnce(&RemapTable, &SpareAllocator) -> R) -> R {
        self.device().with_state(f)
    }

    fn is_poisoned(&self) -> bool {
        self.device().is_poisoned()
    }

    fn stats(&self) -> StatsSnapshot {
        self.device().stats()
    }

    fn thresholds(&self) -> HealthThresholds {
        self.device().thresholds()
    }

    fn health(&self) -> HealthState {
        self.device().health().state
    }
}

// ----- the state machine -----

/// The model-based test over subject `S`: the reference state machine (generation and
/// prediction) and the test of the real implementation.
#[derive(Debug)]
pub struct ModelTest<S>(PhantomData<fn() -> S>);

/// Geometries; with `whole_blocks`, only block sizes up to 4 KiB and no partial last block.
fn geometry_strategy(whole_blocks: bool) -> impl Strategy<Value = ModelGeometry> {
    (
        prop_oneof![
            2 => Just(512u64),
            2 => Just(1024u64),
            3 => Just(4096u64),
            1 => Just(if whole_blocks { 2048u64 } else { 8192 }),
        ],
        2u64..=12,
        0u64..16,
        1u64..=6,
    )
        .prop_map(move |(bs, blocks, cut, spare_blocks)| {
            let spb = bs / SECTOR;
            let cut = if whole_blocks { 0 } else { cut % spb };
            ModelGeometry {
                // Every size here is a power of two from 512 to 8192.
                block_size: BlockSize::new(bs).unwrap_or_default(),
                main_bytes: blocks * bs - cut * SECTOR,
                spare_blocks,
            }
        })
}

/// A range of sectors on `g`: half of the time whole blocks, else anywhere (with
/// `whole_blocks`, always whole blocks).
fn range_strategy(g: ModelGeometry, whole_blocks: bool) -> BoxedStrategy<(u64, u64)> {
    let total = g.sectors();
    let spb = g.sectors_per_block();
    let blocks = g.blocks();
    let aligned = (0..blocks, 1u64..=3).prop_map(move |(b, n)| {
        let s = b * spb;
        (s, (n * spb).min(total - s))
    });
    if whole_blocks {
        return aligned.boxed();
    }
    prop_oneof![
        aligned,
        (0..total, 1..=3 * spb).prop_map(move |(s, n)| (s, n.min(total - s))),
    ]
    .boxed()
}

impl<S: Subject> ReferenceStateMachine for ModelTest<S> {
    type State = Model;
    type Transition = Op;

    fn init_state() -> BoxedStrategy<Model> {
        geometry_strategy(S::WHOLE_BLOCKS)
            .prop_map(|g| Model::new(g, S::CAN_FAIL_COMMITS))
            .boxed()
    }

    fn transitions(state: &Model) -> BoxedStrategy<Op> {
        let g = state.geometry;
        let range = range_strategy(g, S::WHOLE_BLOCKS);
        let remapped: Vec<u64> = (0..g.blocks())
            .filter(|&b| state.places[b as usize] == Place::Spare)
            .collect();
        let unmappable: Vec<u64> = remapped
            .iter()
            .copied()
            .filter(|&b| state.spare_faults[b as usize] == SpareFault::default())
            .collect();
        let spare_fault = if remapped.is_empty() {
            (0..g.blocks()).boxed()
        } else {
            proptest::sample::select(remapped).boxed()
        };
        let unmap = if unmappable.is_empty() {
            (0..g.blocks()).boxed()
        } else {
            proptest::sample::select(unmappable).boxed()
        };
        // Weights must not be 0: when commits cannot be failed, the arm yields a flush.
        let commit_op = if S::CAN_FAIL_COMMITS && !state.commits_fail {
            Op::FailCommits
        } else {
            Op::Flush
        };
        prop_oneof![
            24 => range.clone().prop_map(|(sector, count)| Op::Read { sector, count }),
            24 => (range.clone(), proptest::bool::weighted(0.25))
                .prop_map(|((sector, count), fua)| Op::Write { sector, count, fua }),
            4 => (range.clone(), proptest::bool::weighted(0.25))
                .prop_map(|((sector, count), fua)| Op::WriteZeroes { sector, count, fua }),
            4 => range.clone().prop_map(|(sector, count)| Op::Trim { sector, count }),
            5 => Just(Op::Flush),
            4 => (0..g.blocks(), 0..g.sectors_per_block(), any::<bool>()).prop_map(
                move |(b, inner, whole)| {
                    let r = g.block_sectors(b);
                    if whole {
                        Op::FailMainReads { sector: r.start, count: r.end - r.start }
                    } else {
                        Op::FailMainReads { sector: (r.start + inner).min(r.end - 1), count: 1 }
                    }
                }
            ),
            4 => (0..g.blocks(), 0..g.sectors_per_block(), any::<bool>()).prop_map(
                move |(b, inner, whole)| {
                    let r = g.block_sectors(b);
                    if whole {
                        Op::FailMainWrites { sector: r.start, count: r.end - r.start }
                    } else {
                        Op::FailMainWrites { sector: (r.start + inner).min(r.end - 1), count: 1 }
                    }
                }
            ),
            3 => (spare_fault, 0u8..3).prop_map(|(block, kind)| Op::FailSpare {
                block,
                reads: kind != 1,
                writes: kind != 0,
            }),
            1 => Just(commit_op),
            2 => (0..g.blocks(), proptest::bool::weighted(0.3)).prop_map(
                |(block, zero_unreadable)| Op::MapBlock {
                    block,
                    zero_unreadable: zero_unreadable && S::CAN_MAP_ZEROES,
                }
            ),
            // Without unmap, the arm yields a flush (weights must not change with the subject).
            2 => unmap.prop_map(|block| if S::CAN_UNMAP {
                Op::UnmapBlock { block }
            } else {
                Op::Flush
            }),
            4 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        ]
        .boxed()
    }

    fn apply(mut state: Model, op: &Op) -> Model {
        Model::apply(&mut state, op);
        state
    }

    fn preconditions(state: &Model, op: &Op) -> bool {
        state.admits(op)
    }
}

/// The implementation under test and what the driver keeps beside it.
pub struct ModelSut<S> {
    subject: S,
    main: ModelMain,
    spare: ModelSpare,
    clock: Arc<ManualClock>,
    /// First value read from each sector since it last changed: (model epoch, value).
    pinned: Vec<Option<(u32, u64)>>,
    /// Operations applied so far, for failure messages.
    step: usize,
}

impl<S> fmt::Debug for ModelSut<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSut")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

fn crash_backend(bytes: u64) -> ModelMain {
    Arc::new(FaultyBackend::new(
        CrashBackend::new(bytes as usize),
        SECTOR,
    ))
}

/// The 512-byte sectors of the spare block at byte `start`, in the spare device's fault units.
fn spare_sectors(start: u64, block_size: BlockSize) -> Range<u64> {
    start / SECTOR..(start + block_size.bytes_u64()).div_ceil(SECTOR)
}

fn count_write(r: &Result<(), Failure>) {
    match r {
        Ok(()) => bump(&counters::WRITES_OK),
        Err(e) => {
            bump(&counters::WRITES_FAILED);
            if e.errno == errno::ENOSPC {
                bump(&counters::WRITES_ENOSPC);
            }
        }
    }
}

fn check_outcome(step: usize, op: &Op, expect: Expect, r: Result<(), Failure>) {
    match (expect, r) {
        (Expect::Success, Err(e)) => {
            panic!("step {step}: {op:?} must succeed, but failed: {e}")
        }
        (Expect::Failure { errno }, Ok(())) => {
            panic!("step {step}: {op:?} must fail (errno {errno}), but succeeded")
        }
        (Expect::Failure { errno }, Err(e)) if e.errno != errno => {
            panic!("step {step}: {op:?} must fail with errno {errno}, failed with {e}")
        }
        _ => {}
    }
}

impl<S: Subject> ModelSut<S> {
    fn read(&mut self, model: &Model, op: &Op, start: u64, count: u64) {
        let mut buf = vec![0u8; (count * SECTOR) as usize];
        let r = self.subject.read(start * SECTOR, &mut buf);
        let step = self.step;
        bump(if r.is_ok() {
            &counters::READS_OK
        } else {
            &counters::READS_FAILED
        });
        check_outcome(step, op, model.expect, r.map(|_| ()));
        if model.expect != Expect::Success {
            return;
        }
        for (i, bytes) in buf.chunks_exact(SECTOR as usize).enumerate() {
            let s = start + i as u64;
            let Some(v) = decode_sector(bytes, s) else {
                panic!(
                    "step {step}: {op:?}: sector {s} holds bytes no write put there \
                     (may hold {:?}); first bytes {:02x?}",
                    model.now(s),
                    &bytes[..16]
                );
            };
            assert!(
                model.now(s).contains(v),
                "step {step}: {op:?}: sector {s} reads value {v}, but may only hold {:?} \
                 (0 = zeroes; after a crash it may hold {:?})",
                model.now(s),
                model.after_crash(s)
            );
            if model.now(s).len() > 1 {
                bump(&counters::UNCERTAIN_SECTORS_READ);
            }
            let epoch = model.sectors[s as usize].epoch;
            match self.pinned[s as usize] {
                Some((e, pinned)) if e == epoch => assert_eq!(
                    v, pinned,
                    "step {step}: {op:?}: sector {s} read {pinned} before and {v} now, \
                     with no change in between"
                ),
                _ => self.pinned[s as usize] = Some((epoch, v)),
            }
        }
    }

    fn crash(&mut self, model: &Model, seed: u64) {
        let image = |dev: &ModelMain, seed: u64| {
            let inner = dev.inner();
            inner.crash_image_seeded(inner.history_len(), seed)
        };
        let main_image = image(&self.main, seed);
        let spare_image = image(&self.spare, seed ^ 0x5eed_5eed_5eed_5eed);
        bump(&counters::CRASHES);
        let lost = |dev: &ModelMain, img: &[u8]| {
            dev.inner()
                .current_image()
                .chunks(SECTOR as usize)
                .zip(img.chunks(SECTOR as usize))
                .filter(|(a, b)| a != b)
                .count() as u64
        };
        counters::CRASH_VALUES_LOST.fetch_add(
            lost(&self.main, &main_image) + lost(&self.spare, &spare_image),
            std::sync::atomic::Ordering::Relaxed,
        );
        let main: ModelMain = Arc::new(FaultyBackend::new(
            CrashBackend::from_image(main_image),
            SECTOR,
        ));
        // The medium's bad sectors survive the power cycle; spare faults do not (see above).
        main.fail_reads(model.main_read_fail.iter().copied());
        main.fail_writes(model.main_write_fail.iter().copied());
        let spare: ModelSpare = Arc::new(FaultyBackend::new(
            CrashBackend::from_image(spare_image),
            SECTOR,
        ));
        // One live device per store: let go of the old one before reopening.
        self.subject.close();
        self.main = main.clone();
        self.spare = spare.clone();
        let g = model.geometry;
        if let Err(e) = self.subject.reopen(main, spare, &g, self.clock.clone()) {
            panic!("step {}: reopen after a crash failed: {e}", self.step);
        }
        self.pinned.fill(None);
    }

    fn check_state(&self, model: &Model) {
        let step = self.step;
        let g = model.geometry;
        let entries: Vec<(u64, crate::table::Entry)> = self
            .subject
            .with_state(|t, _| t.range(0, g.blocks()).collect());
        let mut places = vec![Place::Main; g.blocks() as usize];
        for (lba, e) in &entries {
            let Some(slot) = places.get_mut(*lba as usize) else {
                panic!("step {step}: table entry for block {lba} beyond the device");
            };
            *slot = if e.is_remapped() {
                Place::Spare
            } else if e.is_pending() {
                Place::Pending {
                    main_current: e.main_is_current(),
                }
            } else {
                panic!(
                    "step {step}: block {lba} has an entry that is neither remapped nor pending: {e:?}"
                );
            };
        }
        let code = |p: &[Place]| p.iter().map(|p| p.code()).collect::<String>();
        assert_eq!(
            code(&places),
            code(&model.places),
            "step {step}: table shape (device left, model right; . main, S spare, \
             p pending, P pending without a good main copy)"
        );
        let (retired, used, table_ok, spares_ok, distinct) = self.subject.with_state(|t, s| {
            let mut seen = BTreeSet::new();
            let distinct = t
                .iter()
                .filter_map(|(_, e)| e.spare)
                .all(|sp| sp < s.pool_blocks() && seen.insert(sp));
            (
                s.retired_count(),
                s.used_count(),
                t.check_invariants(),
                s.check_invariants(),
                distinct,
            )
        });
        assert_eq!(table_ok, Ok(()), "step {step}: table invariants");
        assert_eq!(spares_ok, Ok(()), "step {step}: allocator invariants");
        assert!(
            distinct,
            "step {step}: a spare block is owned twice or lies outside the pool"
        );
        assert_eq!(used, model.remapped_count(), "step {step}: spares in use");
        assert_eq!(retired, model.retired, "step {step}: retired spares");
        assert_eq!(
            self.subject.is_poisoned(),
            model.poisoned,
            "step {step}: poisoned flag"
        );
        let stats = self.subject.stats();
        assert_eq!(
            (
                stats.pending_blocks,
                stats.remapped_blocks,
                stats.spares_used,
                stats.spares_retired,
                stats.spares_total
            ),
            (
                model.pending_count(),
                model.remapped_count(),
                model.remapped_count(),
                model.retired,
                g.spare_blocks
            ),
            "step {step}: gauges (pending, remapped, used, retired, total)"
        );
        let thresholds = self.subject.thresholds();
        let want = evaluate(
            &HealthInputs {
                errors: 0,
                ios: 0,
                spares_total: g.spare_blocks,
                spares_consumed: model.remapped_count() + model.retired,
                pending: model.pending_count(),
            },
            &thresholds,
        )
        .state;
        // Once writes have stopped the verdict is critical, whatever the figures.
        let want = if model.poisoned {
            HealthState::Critical
        } else {
            want
        };
        let got = self.subject.health();
        if stats.total_ios() < thresholds.min_ios_for_rate {
            assert_eq!(got, want, "step {step}: health");
        } else {
            assert!(got >= want, "step {step}: health {got} is below {want}");
        }
    }
}

impl<S: Subject> StateMachineTest for ModelTest<S> {
    type SystemUnderTest = ModelSut<S>;
    type Reference = Self;

    fn init_test(model: &Model) -> ModelSut<S> {
        let g = model.geometry;
        let mut subject = S::new();
        let main = crash_backend(g.main_bytes);
        let spare = crash_backend(subject.spare_bytes(&g));
        let clock = Arc::new(ManualClock::new(1_000_000_000));
        if let Err(e) = subject.create(main.clone(), spare.clone(), &g, clock.clone()) {
            panic!("creating the device failed: {e}");
        }
        let capacity = subject.with_state(|t, _| t.capacity());
        assert!(
            capacity as u64 >= g.blocks(),
            "the harness's table holds {capacity} entries, the model needs {}",
            g.blocks()
        );
        bump(&counters::CASES);
        ModelSut {
            subject,
            main,
            spare,
            clock,
            pinned: vec![None; g.sectors() as usize],
            step: 0,
        }
    }

    fn apply(mut sut: ModelSut<S>, model: &Model, op: Op) -> ModelSut<S> {
        sut.step += 1;
        bump(&counters::OPERATIONS);
        sut.clock.advance_ns(1_000_000);
        let step = sut.step;
        let bytes = |sector: u64| sector * SECTOR;
        match op {
            Op::Read { sector, count } => sut.read(model, &op, sector, count),
            Op::Write { sector, count, fua } => {
                let id = model.last_write_id;
                let mut buf = Vec::with_capacity((count * SECTOR) as usize);
                for s in sector..sector + count {
                    buf.extend_from_slice(&sector_content(id, s));
                }
                let remaps = sut.subject.stats().remaps;
                let r = sut.subject.write(bytes(sector), &buf, fua);
                let spb = model.geometry.sectors_per_block();
                if sut.subject.stats().remaps > remaps
                    && (sector % spb != 0 || (sector + count) % spb != 0)
                {
                    bump(&counters::PARTIAL_MOVES);
                }
                count_write(&r);
                check_outcome(step, &op, model.expect, r);
            }
            Op::WriteZeroes { sector, count, fua } => {
                let r = sut.subject.write_zeroes(bytes(sector), bytes(count), fua);
                count_write(&r);
                check_outcome(step, &op, model.expect, r);
            }
            Op::Trim { sector, count } => {
                let r = sut.subject.trim(bytes(sector), bytes(count));
                check_outcome(step, &op, model.expect, r);
            }
            Op::Flush => {
                let r = sut.subject.flush();
                check_outcome(step, &op, model.expect, r);
            }
            Op::FailMainReads { sector, count } => sut.main.fail_reads(sector..sector + count),
            Op::FailMainWrites { sector, count } => sut.main.fail_writes(sector..sector + count),
            Op::FailSpare {
                block,
                reads,
                writes,
            } => {
                if model.place(block) == Place::Spare {
                    let Some(spare) = sut
                        .subject
                        .with_state(|t, _| t.get(block))
                        .and_then(|e| e.spare)
                    else {
                        panic!("step {step}: the model has block {block} remapped, the device not");
                    };
                    let sectors =
                        spare_sectors(sut.subject.spare_byte(spare), model.geometry.block_size);
                    if reads {
                        sut.spare.fail_reads(sectors.clone());
                    }
                    if writes {
                        sut.spare.fail_writes(sectors);
                    }
                }
            }
            Op::FailCommits => {
                bump(&counters::COMMIT_FAILURES);
                let spare = sut.spare.clone();
                sut.subject.fail_commits(&spare);
            }
            Op::MapBlock {
                block,
                zero_unreadable,
            } => {
                let r = sut.subject.map_block(block, zero_unreadable);
                if r.is_ok() {
                    bump(&counters::MAPS_DONE);
                }
                check_outcome(step, &op, model.expect, r);
            }
            Op::UnmapBlock { block } => {
                let r = sut.subject.unmap_block(block);
                if r.is_ok() {
                    bump(&counters::UNMAPS_DONE);
                }
                check_outcome(step, &op, model.expect, r);
            }
            Op::Crash { seed } => sut.crash(model, seed),
        }
        sut
    }

    fn check_invariants(sut: &ModelSut<S>, model: &Model) {
        sut.check_state(model);
    }
}

// ----- running it -----

/// Cases to run: `REMAP_MODEL_CASES`, default 1,000.
pub fn cases_from_env() -> u32 {
    std::env::var("REMAP_MODEL_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000)
}

/// Seed: `REMAP_MODEL_SEED`, else a fresh random one (printed by [`run`]).
pub fn seed_from_env() -> u64 {
    std::env::var("REMAP_MODEL_SEED")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            // A per-process random key (std seeds it from the OS): each run explores new
            // histories, and the seed is printed so a failure can be repeated.
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        })
}

/// The longest history a case generates.
pub const MAX_OPS: usize = 64;

type PanicHook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send + 'static>;

/// Silences the panic hook while proptest shrinks, remembering the last message.
struct QuietPanics {
    hook: Option<PanicHook>,
    last: Arc<Mutex<String>>,
}

impl QuietPanics {
    fn install(last: Arc<Mutex<String>>) -> Self {
        let hook = std::panic::take_hook();
        let sink = last.clone();
        std::panic::set_hook(Box::new(move |info| {
            *sink.lock() = info.to_string();
        }));
        QuietPanics {
            hook: Some(hook),
            last,
        }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        if let Some(hook) = self.hook.take() {
            std::panic::set_hook(hook);
        }
        if std::thread::panicking() {
            eprintln!(
                "model test panicked outside a test case: {}",
                self.last.lock()
            );
        }
    }
}

/// Run the model test over [`RemapDevice`] and harness `H` with the case count and seed from
/// the environment. Panics with the minimal failing history if the device breaks a rule.
pub fn run<H: Harness>() {
    run_subject::<DeviceSubject<H>>();
}

/// Run the model test over subject `S` with the case count and seed from the environment.
pub fn run_subject<S: Subject>() {
    run_with::<S>(cases_from_env(), seed_from_env());
}

/// Run `cases` cases of the model test over subject `S` from `seed`.
pub fn run_with<S: Subject>(cases: u32, seed: u64) {
    eprintln!("model test: {cases} cases, seed {seed} (REMAP_MODEL_SEED={seed} to repeat)");
    let config = Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..Config::default()
    };
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(config.clone(), rng);
    // Each shrinking step panics on purpose; keep those messages off the terminal and report
    // the last one (the minimal failure's) below. The guard puts the usual hook back however
    // this function ends, and prints the captured message if it ends in a panic of its own.
    let last_panic: Arc<Mutex<String>> = Arc::default();
    // REMAP_MODEL_VERBOSE=1 keeps every step's message on the terminal instead.
    let _quiet = std::env::var_os("REMAP_MODEL_VERBOSE")
        .is_none()
        .then(|| QuietPanics::install(last_panic.clone()));
    let result = runner.run(
        &ModelTest::<S>::sequential_strategy(1..MAX_OPS),
        |(state, ops, seen)| {
            ModelTest::<S>::test_sequential(config.clone(), state, ops, seen);
            Ok(())
        },
    );
    drop(_quiet);
    match result {
        Ok(()) => {
            eprintln!("model test passed: {:?}", coverage());
        }
        Err(TestError::Fail(reason, (state, ops, _))) => {
            let mut history = String::new();
            for (i, op) in ops.iter().enumerate() {
                history.push_str(&format!("  {:>3}. {op:?}\n", i + 1));
            }
            panic!(
                "model test failed (REMAP_MODEL_SEED={seed} to repeat)\n\
                 reason: {reason}\n\
                 panic: {}\n\
                 geometry: {:?}\n\
                 minimal history ({} operations):\n{history}",
                last_panic.lock(),
                state.geometry,
                ops.len()
            );
        }
        Err(e) => panic!("model test aborted (REMAP_MODEL_SEED={seed}): {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry() -> ModelGeometry {
        ModelGeometry {
            block_size: BlockSize::new(2048).unwrap(),
            main_bytes: 4 * 2048 - 512,
            spare_blocks: 1,
        }
    }

    #[test]
    fn sectors_round_trip_and_garbage_is_caught() {
        let s = sector_content(7, 3);
        assert_eq!(decode_sector(&s, 3), Some(7));
        assert_eq!(decode_sector(&s, 4), None, "misplaced sector");
        assert_eq!(decode_sector(&[0u8; 512], 9), Some(0));
        let mut torn = s;
        torn[100] ^= 1;
        assert_eq!(decode_sector(&torn, 3), None);
    }

    #[test]
    fn geometry_handles_a_short_last_block() {
        let g = geometry();
        assert_eq!((g.sectors(), g.blocks()), (15, 4));
        assert_eq!(g.block_sectors(3), 12..15);
        assert_eq!(g.blocks_touched(3, 6), 0..3);
        assert_eq!(g.touched(1, 3, 6), 4..8);
    }

    #[test]
    fn model_predicts_pending_remap_and_exhaustion() {
        let mut m = Model::new(geometry(), false);
        m.apply(&Op::Write {
            sector: 0,
            count: 8,
            fua: false,
        });
        assert_eq!(m.expect(), Expect::Success);
        assert!(m.after_crash(0).contains(0) && m.after_crash(0).contains(1));
        m.apply(&Op::FailMainReads {
            sector: 1,
            count: 1,
        });
        // A read not touching the bad sector succeeds; one touching it fails and marks pending.
        m.apply(&Op::Read {
            sector: 2,
            count: 2,
        });
        assert_eq!(m.expect(), Expect::Success);
        m.apply(&Op::Read {
            sector: 0,
            count: 2,
        });
        assert_eq!(m.expect(), Expect::Failure { errno: errno::EIO });
        assert_eq!(m.place(0), Place::Pending { main_current: true });
        // A partial write cannot merge (main unreadable); a whole one moves and is durable.
        m.apply(&Op::Write {
            sector: 0,
            count: 2,
            fua: false,
        });
        assert_eq!(m.expect(), Expect::Failure { errno: errno::EIO });
        m.apply(&Op::Write {
            sector: 0,
            count: 4,
            fua: false,
        });
        assert_eq!(m.expect(), Expect::Success);
        assert_eq!(m.place(0), Place::Spare);
        assert_eq!(m.after_crash(0), &ValueSet::single(3));
        // The pool (one block) is used up: the next move fails with ENOSPC, block stays.
        m.apply(&Op::FailMainWrites {
            sector: 4,
            count: 4,
        });
        m.apply(&Op::Write {
            sector: 4,
            count: 4,
            fua: false,
        });
        assert_eq!(
            m.expect(),
            Expect::Failure {
                errno: errno::ENOSPC
            }
        );
        assert_eq!(m.place(1), Place::Main);
        assert!(m.now(4).contains(4) && m.now(4).contains(1));
        // A crash keeps the remap and forgets unflushed data.
        m.apply(&Op::Crash { seed: 1 });
        assert_eq!(m.place(0), Place::Spare);
        assert!([0, 1, 4].iter().all(|&v| m.now(5).contains(v)));
        assert_eq!(m.now(9), &ValueSet::single(0), "never written");
    }
}
