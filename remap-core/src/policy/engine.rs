//! [`Policy`]: the serialized slow path, where every decision about a failure is made.

use alloc::string::ToString;
use alloc::vec;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::error::PolicyError;
use super::geometry::Geometry;
use super::runs::{self, Runs};
use super::seam::{BlockIo, Dev, IoFault, Journal};
use super::{MAX_SPARE_ATTEMPTS, RUN_GAP, ZERO_PIECE};
use crate::record::{self, ApplyError, Record, RemapCause};
use crate::spare::{SpareAllocator, SpareError, SpareState};
use crate::stats::Stats;
use crate::table::{Entry, RemapTable, TableError};

/// Settings that may change while a device runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    /// Extra attempts for a read that fails with a media error (at most
    /// [`MAX_READ_RETRIES`](super::MAX_READ_RETRIES)).
    pub read_retries: u32,
    /// Keep runs of bad blocks on runs of spare blocks (the default); off: lowest free block.
    pub contiguous_spares: bool,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            read_retries: 3,
            contiguous_spares: true,
        }
    }
}

type Fail<I, J> = PolicyError<<I as BlockIo>::Error, <J as Journal<I>>::Error>;

/// A failure seen while isolating a read, settled after the scan.
enum ReadFailure<E> {
    Main(E),
    Spare(u64, E),
    Pending,
}

/// The slow path of one device, for the length of one request: exclusive access to the
/// table and the pool, the seams, the shared counters and the poisoned flag.
pub struct Policy<'a, I: BlockIo + ?Sized, J: Journal<I>> {
    pub table: &'a mut RemapTable,
    pub spares: &'a mut SpareAllocator,
    pub geometry: &'a Geometry,
    pub io: &'a mut I,
    pub journal: &'a mut J,
    pub stats: &'a Stats,
    /// Set when a commit failed or the state contradicts itself: every later write, map,
    /// unmap and checkpoint is refused until the device is reopened, because the table in
    /// memory could run ahead of the one on disk.
    pub poisoned: &'a AtomicBool,
    pub tunables: Tunables,
    /// Seconds, for the records' timestamps.
    pub now_s: u32,
    /// Told the block of every entry that changed (userspace keeps a region map for its
    /// lock-free fast path).
    pub on_change: &'a dyn Fn(&RemapTable, u64),
}

impl<I: BlockIo + ?Sized, J: Journal<I>> core::fmt::Debug for Policy<'_, I, J> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Policy")
            .field("geometry", self.geometry)
            .field("tunables", &self.tunables)
            .finish_non_exhaustive()
    }
}

/// Store the gauges that describe the table and the pool.
pub fn update_gauges(stats: &Stats, table: &RemapTable, spares: &SpareAllocator) {
    stats
        .pending_blocks
        .store(table.pending_count() as u64, Ordering::Relaxed);
    stats
        .remapped_blocks
        .store(table.remapped_count() as u64, Ordering::Relaxed);
    stats
        .spares_total
        .store(spares.pool_blocks(), Ordering::Relaxed);
    stats
        .spares_used
        .store(spares.used_count(), Ordering::Relaxed);
    stats
        .spares_retired
        .store(spares.retired_count(), Ordering::Relaxed);
}

impl<I: BlockIo + ?Sized, J: Journal<I>> Policy<'_, I, J> {
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    fn refuse_if_poisoned(&self) -> Result<(), Fail<I, J>> {
        if self.is_poisoned() {
            return Err(PolicyError::Poisoned);
        }
        Ok(())
    }

    fn check_block(&self, lba: u64) -> Result<(), Fail<I, J>> {
        if lba >= self.geometry.blocks {
            return Err(PolicyError::BlockOutOfRange {
                lba,
                blocks: self.geometry.blocks,
            });
        }
        Ok(())
    }

    fn errors(&self, dev: Dev, write: bool) -> &AtomicU64 {
        let s = self.stats;
        match (dev, write) {
            (Dev::Main, false) => &s.main_read_errors,
            (Dev::Main, true) => &s.main_write_errors,
            (Dev::Spare, false) => &s.spare_read_errors,
            (Dev::Spare, true) => &s.spare_write_errors,
        }
    }

    /// Read `buf` from `dev` at `at`, retrying media errors `read_retries` times. Every
    /// failed attempt is counted; a read that succeeds after failing is a transient recovery.
    fn read_retrying(&mut self, dev: Dev, at: u64, buf: &mut [u8]) -> Result<(), I::Error> {
        let mut attempt = 0;
        loop {
            match self.io.read(dev, at, buf) {
                Ok(()) => {
                    if attempt > 0 {
                        Stats::bump(&self.stats.transient_recoveries);
                    }
                    return Ok(());
                }
                Err(e) if !e.is_media() => return Err(e),
                Err(e) => {
                    Stats::bump(self.errors(dev, false));
                    if attempt >= self.tunables.read_retries {
                        return Err(e);
                    }
                    attempt += 1;
                }
            }
        }
    }

    /// Apply one record. A full table is an ordinary refusal (nothing changed); any other
    /// refusal means the state contradicts itself, and writes stop.
    fn apply(&mut self, rec: &Record) -> Result<(), Fail<I, J>> {
        match record::apply(self.table, self.spares, self.geometry.blocks, rec) {
            Ok(()) => {
                if let Some(lba) = rec.lba() {
                    (self.on_change)(self.table, lba);
                }
                Ok(())
            }
            Err(ApplyError::Table(TableError::Full { lba, capacity })) => {
                Err(PolicyError::TableFull { lba, capacity })
            }
            Err(e) => {
                self.poison();
                Err(PolicyError::Inconsistent(e))
            }
        }
    }

    /// Make `records` (already applied) durable. On failure every later write is refused.
    fn commit(&mut self, records: &[Record]) -> Result<(), Fail<I, J>> {
        if records.is_empty() {
            return Ok(());
        }
        update_gauges(self.stats, self.table, self.spares);
        match self
            .journal
            .commit_records(self.io, records, self.table, self.spares)
        {
            Ok(()) => {
                Stats::bump(&self.stats.commits);
                Ok(())
            }
            Err(source) => {
                self.poison();
                Err(PolicyError::MetadataFailed { source })
            }
        }
    }

    // ----- reads -----

    /// Read `buf` at byte `offset`: run by run, and if a run fails, block by block.
    pub fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<Runs, Fail<I, J>> {
        if buf.is_empty() {
            return Ok(Runs::Done { remapped: false });
        }
        match runs::read(self.table, self.geometry, self.io, offset, buf)
            .map_err(PolicyError::Io)?
        {
            done @ Runs::Done { .. } => Ok(done),
            Runs::Slow => self
                .read_isolating(offset, buf)
                .map(|()| Runs::Done { remapped: true }),
        }
    }

    /// The careful read: block by block with retries. Blocks that still fail become pending
    /// (a failing spare is retired and its block is pending), that is committed, `buf` is
    /// zeroed and the read fails with the first failure: no data is handed out for a request
    /// that failed.
    pub fn read_isolating(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Fail<I, J>> {
        let len = buf.len() as u64;
        let (first, count) = self.geometry.blocks_of(offset, len);
        let mut failures: Vec<(u64, ReadFailure<I::Error>)> = Vec::new();
        for lba in first..first + count {
            let (at, range, inner) = self.geometry.part(lba, offset, len);
            match self.table.get(lba) {
                None => match self.read_retrying(Dev::Main, at, &mut buf[range]) {
                    Ok(()) => {}
                    Err(e) if !e.is_media() => return Err(PolicyError::Io(e)),
                    Err(e) => failures.push((lba, ReadFailure::Main(e))),
                },
                Some(Entry {
                    spare: Some(spare), ..
                }) => {
                    let at = self.geometry.spare_byte(spare) + inner as u64;
                    match self.read_retrying(Dev::Spare, at, &mut buf[range]) {
                        Ok(()) => {}
                        Err(e) if !e.is_media() => return Err(PolicyError::Io(e)),
                        Err(e) => failures.push((lba, ReadFailure::Spare(spare, e))),
                    }
                }
                Some(_) => failures.push((lba, ReadFailure::Pending)),
            }
        }
        if failures.is_empty() {
            // Every block read on retry: a transient failure, already counted.
            return Ok(());
        }
        buf.fill(0);
        let mut records = Vec::new();
        for (lba, f) in &failures {
            let rec = match f {
                ReadFailure::Main(_) => Record::Pending {
                    lba: *lba,
                    time_s: self.now_s,
                },
                ReadFailure::Spare(spare, _) => {
                    Stats::bump(&self.stats.spares_retired_events);
                    Record::SpareRetired {
                        spare: *spare,
                        lba: Some(*lba),
                        time_s: self.now_s,
                    }
                }
                ReadFailure::Pending => continue,
            };
            self.apply(&rec)?;
            Stats::bump(&self.stats.pending_marked);
            records.push(rec);
        }
        self.commit(&records)?;
        let Some((lba, f)) = failures.into_iter().next() else {
            return Ok(());
        };
        Err(match f {
            ReadFailure::Main(source) => PolicyError::ReadFailed { lba, source },
            ReadFailure::Spare(spare, source) => {
                PolicyError::SpareReadFailed { lba, spare, source }
            }
            ReadFailure::Pending => PolicyError::Pending { lba },
        })
    }

    // ----- writes -----

    /// Write `buf` at byte `offset`: run by run, and if a run fails or must move, block by
    /// block. Returns only once every moved block's data and record are durable.
    pub fn write(&mut self, offset: u64, buf: &[u8], fua: bool) -> Result<Runs, Fail<I, J>> {
        self.refuse_if_poisoned()?;
        if buf.is_empty() {
            return Ok(Runs::Done { remapped: false });
        }
        match runs::write(self.table, self.geometry, self.io, offset, buf, fua)
            .map_err(PolicyError::Io)?
        {
            done @ Runs::Done { .. } => Ok(done),
            Runs::Slow => self
                .write_isolating(offset, buf, fua)
                .map(|()| Runs::Done { remapped: true }),
        }
    }

    /// The careful write: block by block where each block lives; every block that fails
    /// (or is pending) moves to a spare.
    pub fn write_isolating(
        &mut self,
        offset: u64,
        buf: &[u8],
        fua: bool,
    ) -> Result<(), Fail<I, J>> {
        self.refuse_if_poisoned()?;
        let len = buf.len() as u64;
        let (first, count) = self.geometry.blocks_of(offset, len);
        let mut to_move = Vec::new();
        for lba in first..first + count {
            let (at, range, inner) = self.geometry.part(lba, offset, len);
            let (dev, at) = match self.table.get(lba) {
                None => (Dev::Main, at),
                Some(Entry {
                    spare: Some(spare), ..
                }) => (Dev::Spare, self.geometry.spare_byte(spare) + inner as u64),
                Some(_) => {
                    to_move.push(lba);
                    continue;
                }
            };
            match self.io.write(dev, at, &buf[range], fua) {
                Ok(()) => {}
                Err(e) if !e.is_media() => return Err(PolicyError::Io(e)),
                Err(_) => {
                    Stats::bump(self.errors(dev, true));
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
    /// with the rest of the block, order the data before the records, and commit. Returns
    /// the first failure after doing what can be done for the other blocks.
    fn move_blocks(&mut self, offset: u64, buf: &[u8], lbas: &[u64]) -> Result<(), Fail<I, J>> {
        let len = buf.len() as u64;
        let mut records: Vec<Record> = Vec::new();
        let mut first_error: Option<Fail<I, J>> = None;
        let mut block = vec![0u8; self.geometry.block_size.bytes() as usize];
        for &lba in lbas {
            let (_, range, inner) = self.geometry.part(lba, offset, len);
            let blen = self.geometry.block_span(lba).1 as usize;
            let current = self.table.get(lba);
            let cause = match current {
                None => RemapCause::WriteError,
                Some(e) if e.is_remapped() => RemapCause::SpareFailure,
                Some(_) => RemapCause::Rewrite,
            };
            if range.len() != blen
                && let Err(e) = self.read_rest(lba, current, &mut block[..blen], &mut records)
            {
                first_error.get_or_insert(e);
                continue;
            }
            block[inner..inner + range.len()].copy_from_slice(&buf[range]);
            let old = current.and_then(|e| e.spare);
            if let Err(e) = self.place(lba, &block[..blen], cause, old, &mut records)? {
                first_error.get_or_insert(e);
            }
        }
        self.finish(&records)?;
        first_error.map_or(Ok(()), Err)
    }

    /// A partial write to a block that must move: read the rest of the block from where its
    /// latest data lives. If that fails too, the block becomes (or stays) pending and the
    /// write fails; the client can rewrite the block whole.
    fn read_rest(
        &mut self,
        lba: u64,
        current: Option<Entry>,
        block: &mut [u8],
        records: &mut Vec<Record>,
    ) -> Result<(), Fail<I, J>> {
        let main_at = lba << self.geometry.block_size.shift();
        let source = match current {
            None => Some((Dev::Main, main_at)),
            Some(Entry { spare: Some(s), .. }) => Some((Dev::Spare, self.geometry.spare_byte(s))),
            Some(e) if e.main_is_current() => Some((Dev::Main, main_at)),
            Some(_) => None,
        };
        let Some((dev, at)) = source else {
            return Err(PolicyError::PartialWriteUnreadable { lba });
        };
        match self.read_retrying(dev, at, block) {
            Ok(()) => Ok(()),
            Err(e) if !e.is_media() => Err(PolicyError::Io(e)),
            Err(_) => {
                let rec = match current {
                    None => Some(Record::Pending {
                        lba,
                        time_s: self.now_s,
                    }),
                    Some(Entry { spare: Some(s), .. }) => {
                        Stats::bump(&self.stats.spares_retired_events);
                        Some(Record::SpareRetired {
                            spare: s,
                            lba: Some(lba),
                            time_s: self.now_s,
                        })
                    }
                    Some(_) => None,
                };
                if let Some(rec) = rec {
                    self.apply(&rec)?;
                    Stats::bump(&self.stats.pending_marked);
                    records.push(rec);
                }
                Err(PolicyError::PartialWriteUnreadable { lba })
            }
        }
    }

    /// Write `data` (a whole block) to a fresh spare block for block `lba` and apply the
    /// remap (not yet committed). A spare block that fails the write is retired and the next
    /// is tried, at most [`MAX_SPARE_ATTEMPTS`] times. `old`, the block's previous spare
    /// (which failed), is retired only once the data has its new home: retiring it earlier
    /// would leave the block pending if no new spare can be had, though the old spare may
    /// still read back the data it held. The outer error stops everything (the state is
    /// inconsistent); the inner one is this block's failure.
    fn place(
        &mut self,
        lba: u64,
        data: &[u8],
        cause: RemapCause,
        old: Option<u64>,
        records: &mut Vec<Record>,
    ) -> Result<Result<u64, Fail<I, J>>, Fail<I, J>> {
        let now = self.now_s;
        for _ in 0..MAX_SPARE_ATTEMPTS {
            let spare = match self.choose_spare(lba) {
                Ok(s) => s,
                Err(SpareError::Exhausted { pool }) => {
                    return Ok(Err(PolicyError::SpareExhausted { lba, pool }));
                }
                Err(e) => {
                    self.poison();
                    return Err(PolicyError::Inconsistent(e.into()));
                }
            };
            match self
                .io
                .write(Dev::Spare, self.geometry.spare_byte(spare), data, false)
            {
                Ok(()) => {
                    if let Some(old) = old {
                        let rec = Record::SpareRetired {
                            spare: old,
                            lba: Some(lba),
                            time_s: now,
                        };
                        self.apply(&rec)?;
                        Stats::bump(&self.stats.spares_retired_events);
                        records.push(rec);
                    }
                    let rec = Record::Remap {
                        lba,
                        spare,
                        cause,
                        time_s: now,
                    };
                    match self.apply(&rec) {
                        Ok(()) => {}
                        Err(e @ PolicyError::TableFull { .. }) => return Ok(Err(e)),
                        Err(e) => return Err(e),
                    }
                    Stats::bump(&self.stats.remaps);
                    records.push(rec);
                    return Ok(Ok(spare));
                }
                Err(e) if !e.is_media() => return Ok(Err(PolicyError::Io(e))),
                Err(_) => {
                    Stats::bump(&self.stats.spare_write_errors);
                    let rec = Record::SpareRetired {
                        spare,
                        lba: None,
                        time_s: now,
                    };
                    self.apply(&rec)?;
                    Stats::bump(&self.stats.spares_retired_events);
                    records.push(rec);
                }
            }
        }
        Ok(Err(PolicyError::SpareWritesFailed {
            lba,
            attempts: MAX_SPARE_ATTEMPTS,
        }))
    }

    /// Order the moved data before the records that name it, then commit them. A failure of
    /// either stops writes: the records are applied in memory and cannot be made durable.
    fn finish(&mut self, records: &[Record]) -> Result<(), Fail<I, J>> {
        if records.is_empty() {
            return Ok(());
        }
        if records.iter().any(|r| matches!(r, Record::Remap { .. }))
            && let Err(source) = self.io.order_spare_data()
        {
            self.poison();
            Stats::bump(&self.stats.flush_errors);
            return Err(PolicyError::SpareFlush { source });
        }
        self.commit(records)
    }

    /// The spare block for block `lba`. With contiguity on (the default): right after the
    /// spare of the block before, or right before the spare of the block after, so a run of
    /// bad blocks lands on a run of spare blocks and reads of it stay one spare I/O; a block
    /// with no remapped neighbour starts a new run where it has room to grow. Off: the lowest
    /// free block.
    fn choose_spare(&self, lba: u64) -> Result<u64, SpareError> {
        let spares = &*self.spares;
        if !self.tunables.contiguous_spares {
            return spares.next_free(None);
        }
        let free = |s: u64| spares.state(s) == Ok(SpareState::Free);
        let neighbour = |l: Option<u64>| l.and_then(|l| self.table.get(l)).and_then(|e| e.spare);
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

    // ----- write-zeroes -----

    /// Zero `[offset, offset + len)` through the write path (which moves blocks that fail),
    /// in pieces of at most [`ZERO_PIECE`] bytes cut at block borders. Every piece is tried;
    /// the first failure is returned, unless writes stop altogether.
    pub fn zero_through_writes(
        &mut self,
        offset: u64,
        len: u64,
        fua: bool,
    ) -> Result<(), Fail<I, J>> {
        let zeroes = vec![0u8; ZERO_PIECE.min(len) as usize];
        let end = offset + len;
        let mut at = offset;
        let mut first_error = None;
        let block = self.geometry.block_size.bytes_u64();
        while at < end {
            let mut piece_end = (at + ZERO_PIECE).min(end);
            if piece_end < end {
                // ZERO_PIECE is at least one block, so the cut still makes progress.
                let cut = piece_end & !(block - 1);
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

    // ----- manual moves -----

    /// Move block `lba` to a spare now, copying its data (`remap map`, the kernel's `map`
    /// message). If its data cannot be read the move is refused, unless `zero_unreadable`
    /// accepts zeroes in its place.
    pub fn map_block(&mut self, lba: u64, zero_unreadable: bool) -> Result<u64, Fail<I, J>> {
        self.check_block(lba)?;
        self.refuse_if_poisoned()?;
        let current = self.table.get(lba);
        if let Some(spare) = current.and_then(|e| e.spare) {
            return Err(PolicyError::AlreadyRemapped { lba, spare });
        }
        let (start, blen) = self.geometry.block_span(lba);
        let mut block = vec![0u8; blen as usize];
        let readable = match current {
            Some(e) if !e.main_is_current() => {
                Err("its spare failed and no other copy exists".to_string())
            }
            _ => match self.read_retrying(Dev::Main, start, &mut block) {
                Ok(()) => Ok(()),
                Err(e) if !e.is_media() => return Err(PolicyError::Io(e)),
                Err(e) => Err(e.to_string()),
            },
        };
        if let Err(reason) = readable {
            if !zero_unreadable {
                return Err(PolicyError::Unreadable { lba, reason });
            }
            block.fill(0);
        }
        let mut records = Vec::new();
        let placed = self.place(lba, &block, RemapCause::Manual, None, &mut records)?;
        self.finish(&records)?;
        placed
    }

    /// Move block `lba` back to main: copy its data there, flush, read it back and compare,
    /// then free the spare. Refused, with nothing changed, if main still fails there.
    pub fn unmap_block(&mut self, lba: u64) -> Result<(), Fail<I, J>> {
        self.check_block(lba)?;
        self.refuse_if_poisoned()?;
        let Some(spare) = self.table.get(lba).and_then(|e| e.spare) else {
            return Err(PolicyError::NotRemapped { lba });
        };
        let (start, blen) = self.geometry.block_span(lba);
        let mut block = vec![0u8; blen as usize];
        self.read_retrying(Dev::Spare, self.geometry.spare_byte(spare), &mut block)
            .map_err(|source| PolicyError::SpareReadFailed { lba, spare, source })?;
        let still_failing =
            |reason: alloc::string::String| PolicyError::MainStillFailing { lba, reason };
        self.io
            .write(Dev::Main, start, &block, false)
            .and_then(|()| self.io.flush(Dev::Main))
            .map_err(|e| still_failing(e.to_string()))?;
        let mut check = vec![0u8; blen as usize];
        self.io
            .read(Dev::Main, start, &mut check)
            .map_err(|e| still_failing(e.to_string()))?;
        if check != block {
            return Err(still_failing(
                "data read back differs from data written".to_string(),
            ));
        }
        let rec = Record::Unmap {
            lba,
            time_s: self.now_s,
        };
        self.apply(&rec)?;
        Stats::bump(&self.stats.unmaps);
        self.commit(&[rec])
    }

    // ----- checkpoints -----

    /// Write the whole state through the journal. Refused once writes have stopped: the
    /// table in memory may be ahead of what was made durable.
    pub fn checkpoint(&mut self) -> Result<(), Fail<I, J>> {
        self.refuse_if_poisoned()?;
        update_gauges(self.stats, self.table, self.spares);
        match self
            .journal
            .write_checkpoint(self.io, self.table, self.spares)
        {
            Ok(()) => Ok(()),
            Err(source) => {
                self.poison();
                Err(PolicyError::MetadataFailed { source })
            }
        }
    }
}
