//! The journal: a ring of 4 KiB blocks of records, and [`Journal`], which sequences every
//! metadata write (journal appends, checkpoints, superblock updates) over [`MetaIo`].
//!
//! A commit writes its records into one block (or, past 126 records, a few consecutive
//! blocks, the last flagged `COMMIT_END`), twice (the ring has two copies), and flushes. Replay applies a commit only when its
//! end block is read, so a torn multi-block commit is dropped whole. When the ring has no room
//! for a commit, the state (which already includes the commit's records) is checkpointed
//! instead, and the ring restarts after it.

use alloc::vec::Vec;

use remap_core::record::{Record, RemapCause};

use crate::checkpoint;
use crate::checksum::crc32c;
use crate::commit::heap_block;
pub use crate::commit::{CommitError, StateView};
use crate::counters::{Counters, SLOTS};
use crate::error::{EntryProblem, FormatError, Region};
use crate::superblock::Superblock;
use crate::wire::{Reader, Writer};
use crate::{META_BLOCK, MetaIo};

pub const MAGIC: [u8; 8] = *b"REMAP\0JB";
/// Records in one journal block without counters (format version 1).
pub const RECORDS_PER_BLOCK: usize = 126;
/// Records in one journal block that carries the lifetime counters (format version 2).
pub const RECORDS_PER_COUNTED_BLOCK: usize = 118;
/// The most blocks one commit may span; a bigger commit is written as a checkpoint.
pub const MAX_COMMIT_BLOCKS: u32 = 64;
pub const FLAG_COMMIT_END: u16 = 1;
/// The block carries the lifetime counters as they were when its commit was made
/// (format version 2), so a crash does not take the health verdict's inputs back to the
/// last checkpoint.
pub const FLAG_COUNTERS: u16 = 2;

const HEADER: usize = 40;
/// With [`FLAG_COUNTERS`]: slot count (u32), reserved (u32), the slots, then the records.
const O_COUNTER_SLOTS: usize = HEADER;
const O_COUNTERS: usize = HEADER + 8;
const COUNTED_HEADER: usize = O_COUNTERS + SLOTS * 8;
const RECORD_BYTES: usize = 32;
const CRC_AT: usize = META_BLOCK - 4;
const _: () = assert!(HEADER + RECORDS_PER_BLOCK * RECORD_BYTES <= CRC_AT);
const _: () = assert!(COUNTED_HEADER + RECORDS_PER_COUNTED_BLOCK * RECORD_BYTES <= CRC_AT);
const _: () = assert!(COUNTED_HEADER + (RECORDS_PER_COUNTED_BLOCK + 1) * RECORD_BYTES > CRC_AT);

/// Records one block holds, with or without the counters.
pub const fn records_per_block(counted: bool) -> usize {
    if counted {
        RECORDS_PER_COUNTED_BLOCK
    } else {
        RECORDS_PER_BLOCK
    }
}

const KIND_REMAP: u8 = 1;
const KIND_UNMAP: u8 = 2;
const KIND_PENDING: u8 = 3;
const KIND_CLEAR: u8 = 4;
const KIND_SPARE_RETIRED: u8 = 5;

/// A decoded journal block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalBlock {
    pub uuid: [u8; 16],
    pub sequence: u64,
    pub commit_end: bool,
    /// Checksum of the previous block of the same commit (0 for a commit's first block), so
    /// replay never stitches blocks of two different commits together.
    pub prev_crc: u32,
    pub records: Vec<Record>,
    /// The lifetime counters when the commit was made (format version 2 blocks).
    pub counters: Option<Counters>,
    /// This block's own checksum (its last four bytes).
    pub crc: u32,
}

fn encode_record(rec: &Record, out: &mut [u8]) {
    let mut w = Writer(out);
    match *rec {
        Record::Remap {
            lba,
            spare,
            cause,
            time_s,
        } => {
            w.u8(0, KIND_REMAP);
            w.u8(1, cause as u8);
            w.u32(4, time_s);
            w.u64(8, lba);
            w.u64(16, spare);
        }
        Record::Unmap { lba, time_s } => {
            w.u8(0, KIND_UNMAP);
            w.u32(4, time_s);
            w.u64(8, lba);
        }
        Record::Pending { lba, time_s } => {
            w.u8(0, KIND_PENDING);
            w.u32(4, time_s);
            w.u64(8, lba);
        }
        Record::Clear { lba, time_s } => {
            w.u8(0, KIND_CLEAR);
            w.u32(4, time_s);
            w.u64(8, lba);
        }
        Record::SpareRetired { spare, lba, time_s } => {
            w.u8(0, KIND_SPARE_RETIRED);
            w.u8(1, u8::from(lba.is_some()));
            w.u32(4, time_s);
            w.u64(8, lba.unwrap_or(0));
            w.u64(16, spare);
        }
    }
}

fn decode_record(bytes: &[u8], region: Region, index: u64) -> Result<Record, FormatError> {
    let r = Reader(bytes);
    let (kind, sub) = (r.u8(0), r.u8(1));
    let bad = || FormatError::BadEntry {
        region,
        index,
        why: EntryProblem::UnknownKind(u16::from(kind) << 8 | u16::from(sub)),
    };
    if r.u16(2) != 0 || r.u64(24) != 0 {
        return Err(FormatError::ReservedNotZero { region });
    }
    let (time_s, lba, spare) = (r.u32(4), r.u64(8), r.u64(16));
    let no_spare = |rec: Record| {
        if spare == 0 && sub == 0 {
            Ok(rec)
        } else {
            Err(bad())
        }
    };
    match kind {
        KIND_REMAP => Ok(Record::Remap {
            lba,
            spare,
            cause: RemapCause::from_u8(sub).ok_or_else(bad)?,
            time_s,
        }),
        KIND_UNMAP => no_spare(Record::Unmap { lba, time_s }),
        KIND_PENDING => no_spare(Record::Pending { lba, time_s }),
        KIND_CLEAR => no_spare(Record::Clear { lba, time_s }),
        KIND_SPARE_RETIRED => match sub {
            0 if lba == 0 => Ok(Record::SpareRetired {
                spare,
                lba: None,
                time_s,
            }),
            1 => Ok(Record::SpareRetired {
                spare,
                lba: Some(lba),
                time_s,
            }),
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

impl JournalBlock {
    /// The 4 KiB image of a block holding `records` (at most [`RECORDS_PER_BLOCK`]).
    pub fn encode(
        uuid: &[u8; 16],
        sequence: u64,
        commit_end: bool,
        prev_crc: u32,
        records: &[Record],
        region: Region,
    ) -> Result<[u8; META_BLOCK], FormatError> {
        let mut b = [0u8; META_BLOCK];
        let head = BlockHead {
            uuid,
            sequence,
            commit_end,
            prev_crc,
            counters: None,
        };
        Self::encode_into(&head, records, region, &mut b)?;
        Ok(b)
    }

    /// The 4 KiB image of this (decoded) block, counters included.
    pub fn encode_again(&self, region: Region) -> Result<[u8; META_BLOCK], FormatError> {
        let mut b = [0u8; META_BLOCK];
        let head = BlockHead {
            uuid: &self.uuid,
            sequence: self.sequence,
            commit_end: self.commit_end,
            prev_crc: self.prev_crc,
            counters: self.counters.as_ref(),
        };
        Self::encode_into(&head, &self.records, region, &mut b)?;
        Ok(b)
    }

    /// Encode a block into a caller's 4 KiB buffer (kept off the kernel stack).
    pub fn encode_into(
        head: &BlockHead<'_>,
        records: &[Record],
        region: Region,
        b: &mut [u8; META_BLOCK],
    ) -> Result<(), FormatError> {
        let BlockHead {
            uuid,
            sequence,
            commit_end,
            prev_crc,
            counters,
        } = *head;
        let first = if counters.is_some() {
            COUNTED_HEADER
        } else {
            HEADER
        };
        if records.len() > records_per_block(counters.is_some()) {
            return Err(FormatError::BadField {
                region,
                field: "record_count",
                value: records.len() as u64,
            });
        }
        b.fill(0);
        {
            let mut w = Writer(b);
            w.bytes(0, &MAGIC);
            w.bytes(8, uuid);
            w.u64(24, sequence);
            w.u16(32, records.len() as u16);
            let mut flags = if commit_end { FLAG_COMMIT_END } else { 0 };
            if let Some(c) = counters {
                flags |= FLAG_COUNTERS;
                w.u32(O_COUNTER_SLOTS, SLOTS as u32);
                for (i, v) in c.iter().enumerate() {
                    w.u64(O_COUNTERS + i * 8, *v);
                }
            }
            w.u16(34, flags);
            w.u32(36, prev_crc);
        }
        for (i, rec) in records.iter().enumerate() {
            let at = first + i * RECORD_BYTES;
            encode_record(rec, &mut b[at..at + RECORD_BYTES]);
        }
        let crc = crc32c(&b[..CRC_AT]);
        Writer(b).u32(CRC_AT, crc);
        // Pair assertion: what we write must read back as what we meant.
        debug_assert_eq!(
            JournalBlock::decode(&b[..], region).map(|j| j.records.len()),
            Ok(records.len())
        );
        Ok(())
    }

    /// Decode a journal block. Total: any bytes give a block or a typed error.
    pub fn decode(bytes: &[u8], region: Region) -> Result<JournalBlock, FormatError> {
        let r = crate::wire::checked_block(bytes, &MAGIC, region)?;
        let count = usize::from(r.u16(32));
        let flags = r.u16(34);
        let counted = flags & FLAG_COUNTERS != 0;
        let first = if counted { COUNTED_HEADER } else { HEADER };
        if count > records_per_block(counted) {
            return Err(FormatError::BadField {
                region,
                field: "record_count",
                value: count as u64,
            });
        }
        if flags & !(FLAG_COMMIT_END | FLAG_COUNTERS) != 0 {
            return Err(FormatError::BadField {
                region,
                field: "flags",
                value: u64::from(flags),
            });
        }
        let counters = if counted {
            if r.u32(O_COUNTER_SLOTS) != SLOTS as u32 {
                return Err(FormatError::BadField {
                    region,
                    field: "counter_slots",
                    value: u64::from(r.u32(O_COUNTER_SLOTS)),
                });
            }
            if r.u32(O_COUNTER_SLOTS + 4) != 0 {
                return Err(FormatError::ReservedNotZero { region });
            }
            let mut c = [0u64; SLOTS];
            for (i, v) in c.iter_mut().enumerate() {
                *v = r.u64(O_COUNTERS + i * 8);
            }
            Some(c)
        } else {
            None
        };
        if !r.zero(first + count * RECORD_BYTES, CRC_AT) {
            return Err(FormatError::ReservedNotZero { region });
        }
        let mut records = Vec::with_capacity(count);
        for i in 0..count {
            let at = first + i * RECORD_BYTES;
            records.push(decode_record(
                &bytes[at..at + RECORD_BYTES],
                region,
                i as u64,
            )?);
        }
        Ok(JournalBlock {
            uuid: r.bytes(8),
            sequence: r.u64(24),
            commit_end: flags & FLAG_COMMIT_END != 0,
            prev_crc: r.u32(36),
            records,
            counters,
            crc: r.u32(CRC_AT),
        })
    }
}

/// The header fields of a journal block being written.
#[derive(Debug, Clone, Copy)]
pub struct BlockHead<'a> {
    pub uuid: &'a [u8; 16],
    pub sequence: u64,
    /// Last block of its commit.
    pub commit_end: bool,
    /// Checksum of the previous block of the same commit (0 for a commit's first block).
    pub prev_crc: u32,
    /// The lifetime counters to carry (format version 2), or none (version 1).
    pub counters: Option<&'a Counters>,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    /// Appended this many journal blocks.
    Journaled(u32),
    /// The ring had no room: wrote a checkpoint instead.
    Checkpointed,
    /// Nothing to do.
    Empty,
}

/// The live journal: where the next block goes and what the superblocks say.
#[derive(Debug, Clone)]
pub struct Journal {
    sb: Superblock,
    /// The superblock copy known to be durable, valid and to describe the current state:
    /// the one recovery chose. Every update writes it last (docs/format.md, "Superblock").
    trusted: Region,
    next_sequence: u64,
    head: u32,
    live: u32,
    failed: bool,
}

impl Journal {
    /// A journal continuing after recovery: `next_sequence` and `head` follow the last
    /// complete commit, `live` blocks have been written since the checkpoint, and `trusted`
    /// is the superblock copy recovery read `sb` from.
    pub fn new(sb: Superblock, trusted: Region, next_sequence: u64, head: u32, live: u32) -> Self {
        Journal {
            sb,
            trusted,
            next_sequence,
            head,
            live,
            failed: false,
        }
    }

    /// The superblock copy every update writes last.
    pub fn trusted_copy(&self) -> Region {
        self.trusted
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Journal blocks written since the last checkpoint.
    pub fn live_blocks(&self) -> u32 {
        self.live
    }

    pub fn is_failed(&self) -> bool {
        self.failed
    }

    fn guard<T, E: core::fmt::Debug + core::fmt::Display>(
        &mut self,
        r: Result<T, CommitError<E>>,
    ) -> Result<T, CommitError<E>> {
        if r.is_err() {
            self.failed = true;
        }
        r
    }

    /// Make `records` durable. `view` is the state with the records applied, written as a
    /// checkpoint if the ring has no room for them.
    pub fn commit<I: MetaIo>(
        &mut self,
        io: &mut I,
        records: &[Record],
        view: &StateView<'_>,
    ) -> Result<CommitOutcome, CommitError<I::Error>>
    where
        I::Error: core::fmt::Debug + core::fmt::Display,
    {
        if self.failed {
            return Err(CommitError::Failed);
        }
        if records.is_empty() {
            return Ok(CommitOutcome::Empty);
        }
        let blocks = records
            .len()
            .div_ceil(records_per_block(self.sb.version >= 2));
        let ring = self.sb.geometry.journal_blocks;
        let fits = u32::try_from(blocks)
            .ok()
            .filter(|&n| n <= MAX_COMMIT_BLOCKS && self.live.saturating_add(n) <= ring);
        let Some(n) = fits else {
            // The commit still takes a sequence number, so the sequence counts commits
            // whichever way they are written.
            self.next_sequence += 1;
            self.checkpoint(io, view)?;
            return Ok(CommitOutcome::Checkpointed);
        };
        let r = self.append(io, records, n, view.counters);
        self.guard(r)?;
        Ok(CommitOutcome::Journaled(n))
    }

    fn append<I: MetaIo>(
        &mut self,
        io: &mut I,
        records: &[Record],
        n: u32,
        counters: &Counters,
    ) -> Result<(), CommitError<I::Error>>
    where
        I::Error: core::fmt::Debug + core::fmt::Display,
    {
        let ring = self.sb.geometry.journal_blocks;
        let mut prev_crc = 0u32;
        // On the heap: the kernel target runs this on a 16 KiB stack.
        let mut buf = alloc::vec![0u8; META_BLOCK];
        let block = heap_block(&mut buf, Region::Journal(self.head))?;
        // Version 2 carries the counters in every block, so the commit's last block (the
        // one replay applies it at) has them. Version 1 stays version 1 until upgraded.
        let counters = (self.sb.version >= 2).then_some(counters);
        for (i, chunk) in records
            .chunks(records_per_block(counters.is_some()))
            .enumerate()
        {
            let i = i as u32;
            let position = (self.head + i) % ring;
            let head = BlockHead {
                uuid: &self.sb.uuid,
                sequence: self.next_sequence + u64::from(i),
                commit_end: i + 1 == n,
                prev_crc,
                counters,
            };
            JournalBlock::encode_into(&head, chunk, Region::Journal(position), block)?;
            prev_crc = Reader(&block[..]).u32(CRC_AT);
            for copy in 0..2 {
                let offset = self.sb.geometry.journal_block_offset(copy, position);
                io.write(offset, &block[..])
                    .map_err(|source| CommitError::Write { offset, source })?;
            }
        }
        io.flush().map_err(CommitError::Flush)?;
        self.head = (self.head + n) % ring;
        self.live += n;
        self.next_sequence += u64::from(n);
        Ok(())
    }

    /// Write the whole state into the inactive checkpoint area, then point both superblocks
    /// at it. The journal restarts at the current head.
    pub fn checkpoint<I: MetaIo>(
        &mut self,
        io: &mut I,
        view: &StateView<'_>,
    ) -> Result<(), CommitError<I::Error>>
    where
        I::Error: core::fmt::Debug + core::fmt::Display,
    {
        if self.failed {
            return Err(CommitError::Failed);
        }
        let area = 1 - self.sb.active_checkpoint;
        let checkpoint_sequence = self.sb.checkpoint_sequence + 1;
        let r = checkpoint::write(
            io,
            &self.sb,
            area,
            checkpoint_sequence,
            self.next_sequence,
            view,
        )
        .and_then(|()| io.flush().map_err(CommitError::Flush));
        self.guard(r)?;
        let (next_sequence, head) = (self.next_sequence, self.head);
        self.update_superblock(io, |sb| {
            sb.active_checkpoint = area;
            sb.checkpoint_sequence = checkpoint_sequence;
            sb.journal_start_sequence = next_sequence;
            sb.journal_start_position = head;
        })?;
        self.live = 0;
        Ok(())
    }

    /// Change superblock fields (thresholds, scrub cursor, ...) and write both copies.
    pub fn update_superblock<I: MetaIo>(
        &mut self,
        io: &mut I,
        change: impl FnOnce(&mut Superblock),
    ) -> Result<(), CommitError<I::Error>>
    where
        I::Error: core::fmt::Debug + core::fmt::Display,
    {
        if self.failed {
            return Err(CommitError::Failed);
        }
        let mut sb = self.sb;
        change(&mut sb);
        sb.sequence = self.sb.sequence + 1;
        let r = write_superblocks(io, &sb, self.trusted);
        self.guard(r)?;
        self.sb = sb;
        Ok(())
    }
}

/// Write every superblock copy: first every copy but `last`, then a flush, then `last`,
/// then a flush. `last` must be the copy that is durable and describes the current state
/// (the one recovery chose), so that at every instant one valid copy describes a complete
/// state, even when the copies disagreed after an earlier crash: a copy that is stale (its
/// checkpoint area may be the very one just overwritten) is never the only valid copy left.
/// The copies written first need no flush between them: while they are in flight, `last`
/// still holds the old, complete state.
pub fn write_superblocks<I: MetaIo>(
    io: &mut I,
    sb: &Superblock,
    last: Region,
) -> Result<(), CommitError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    // On the heap: the kernel target runs this on a 16 KiB stack.
    let mut buf = alloc::vec![0u8; META_BLOCK];
    let bytes = heap_block(&mut buf, Region::SuperblockA)?;
    let copies = crate::layout::superblock_copies(sb.version, &sb.geometry);
    for (offset, region) in copies.iter().copied().filter(|&(_, r)| r != last) {
        sb.encode_into(region, bytes)?;
        io.write(offset, &bytes[..])
            .map_err(|source| CommitError::Write { offset, source })?;
    }
    io.flush().map_err(CommitError::Flush)?;
    for (offset, region) in copies.iter().copied().filter(|&(_, r)| r == last) {
        sb.encode_into(region, bytes)?;
        io.write(offset, &bytes[..])
            .map_err(|source| CommitError::Write { offset, source })?;
        io.flush().map_err(CommitError::Flush)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        alloc::vec![
            Record::Remap {
                lba: 5,
                spare: 9,
                cause: RemapCause::WriteError,
                time_s: 100,
            },
            Record::Unmap {
                lba: 5,
                time_s: 101
            },
            Record::Pending {
                lba: 6,
                time_s: 102
            },
            Record::Clear {
                lba: 6,
                time_s: 103
            },
            Record::SpareRetired {
                spare: 9,
                lba: None,
                time_s: 104,
            },
            Record::SpareRetired {
                spare: 10,
                lba: Some(0),
                time_s: 105,
            },
        ]
    }

    #[test]
    fn blocks_round_trip() {
        let recs = records();
        let b = JournalBlock::encode(&[3; 16], 77, true, 0, &recs, Region::Journal(0)).unwrap();
        let d = JournalBlock::decode(&b, Region::Journal(0)).unwrap();
        assert_eq!(d.records, recs);
        assert_eq!((d.sequence, d.commit_end, d.uuid), (77, true, [3; 16]));
    }

    #[test]
    fn counted_blocks_round_trip_and_hold_fewer_records() {
        let recs: Vec<Record> = (0..RECORDS_PER_COUNTED_BLOCK as u64)
            .map(|lba| Record::Pending { lba, time_s: 1 })
            .collect();
        let mut counters = [0u64; SLOTS];
        counters[10] = 78;
        counters[7] = 1000;
        let head = BlockHead {
            uuid: &[4; 16],
            sequence: 9,
            commit_end: true,
            prev_crc: 0,
            counters: Some(&counters),
        };
        let mut b = [0u8; META_BLOCK];
        JournalBlock::encode_into(&head, &recs, Region::Journal(0), &mut b).unwrap();
        let d = JournalBlock::decode(&b, Region::Journal(0)).unwrap();
        assert_eq!(d.counters, Some(counters));
        assert_eq!(d.records, recs);
        assert_eq!(d.encode_again(Region::Journal(0)).unwrap(), b);
        let mut more = recs.clone();
        more.push(Record::Pending { lba: 0, time_s: 0 });
        assert!(JournalBlock::encode_into(&head, &more, Region::Journal(0), &mut b).is_err());
    }

    #[test]
    fn full_blocks_and_overfull_refusal() {
        let recs: Vec<Record> = (0..RECORDS_PER_BLOCK as u64)
            .map(|lba| Record::Pending { lba, time_s: 1 })
            .collect();
        let b = JournalBlock::encode(&[0; 16], 1, false, 0, &recs, Region::Journal(1)).unwrap();
        assert_eq!(
            JournalBlock::decode(&b, Region::Journal(1))
                .unwrap()
                .records
                .len(),
            126
        );
        let mut more = recs.clone();
        more.push(Record::Pending { lba: 0, time_s: 0 });
        assert!(JournalBlock::encode(&[0; 16], 1, false, 0, &more, Region::Journal(1)).is_err());
    }

    #[test]
    fn corruption_is_a_typed_error() {
        let b =
            JournalBlock::encode(&[3; 16], 77, true, 0, &records(), Region::Journal(2)).unwrap();
        for at in [0usize, 30, 40, 100, 4000, 4095] {
            let mut c = b;
            c[at] ^= 0x40;
            assert!(
                JournalBlock::decode(&c, Region::Journal(2)).is_err(),
                "byte {at}"
            );
        }
        // A valid checksum over nonsense: unknown kind.
        let mut c = b;
        c[HEADER] = 99;
        let crc = crc32c(&c[..CRC_AT]);
        Writer(&mut c).u32(CRC_AT, crc);
        assert!(matches!(
            JournalBlock::decode(&c, Region::Journal(2)),
            Err(FormatError::BadEntry { .. })
        ));
    }
}
