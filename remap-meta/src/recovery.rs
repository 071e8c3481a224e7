//! Recovery: pick the newest valid superblock copy, load the checkpoint it points at, replay
//! the journal's valid, contiguous tail after it. The first block that fails its checksum,
//! belongs to another format (uuid), or breaks the sequence ends the replay; records of a
//! commit whose end block was never written are dropped whole.
//!
//! Recovery only reads. It never writes, so a refused open leaves the device untouched.

use alloc::vec::Vec;

use remap_core::record::{self, ApplyError, Record};
use remap_core::{RemapTable, SpareAllocator};

use crate::checkpoint::{self, LoadError};
use crate::counters::Counters;
use crate::error::{FormatError, Region};
use crate::journal::{Journal, JournalBlock, MAX_COMMIT_BLOCKS, RECORDS_PER_BLOCK};
use crate::layout::{SUPERBLOCK_A, SUPERBLOCK_B, tail_superblock_offset};
use crate::superblock::Superblock;
use crate::{META_BLOCK, MetaIo};

/// Why the journal replay stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub enum JournalStop {
    /// Every block of the ring was replayed (the ring was full).
    EndOfRing,
    /// The next block is not a valid journal block (never written, torn, corrupt).
    Invalid { position: u32, reason: String },
    /// The next block belongs to an earlier format of this device.
    ForeignUuid { position: u32 },
    /// The next block continues a commit but was written by another one.
    BrokenChain { position: u32 },
    /// The next block is from an earlier lap of the ring.
    SequenceGap {
        position: u32,
        expected: u64,
        found: u64,
    },
}

#[cfg(not(feature = "std"))]
type String = alloc::string::String;

/// What recovery saw, for `remap check` and `remap status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct RecoveryReport {
    /// The copy recovery used.
    pub superblock_used: Region,
    /// Each copy's sequence, or why it was refused.
    pub superblock_a: Result<u64, FormatError>,
    pub superblock_b: Result<u64, FormatError>,
    /// The tail copy's sequence, or why it was refused (format version 2; a version 1
    /// spare has none).
    pub superblock_tail: Result<u64, FormatError>,
    /// Whether every copy the format has decodes to the same contents.
    pub superblocks_agree: bool,
    /// Journal sequence of the commit whose lifetime counters recovery restored (format
    /// version 2), or `None` when they come from the checkpoint.
    pub counters_from_journal: Option<u64>,
    pub checkpoint_sequence: u64,
    pub checkpoint_entries: u64,
    pub journal_blocks_replayed: u32,
    pub records_replayed: u64,
    /// Blocks of a commit whose end block is missing, dropped.
    pub incomplete_commit_blocks: u32,
    /// Journal blocks read from their second copy because the first was bad.
    pub journal_mirror_used: u32,
    pub journal_stop: JournalStop,
}

/// The state of a spare device.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub superblock: Superblock,
    pub table: RemapTable,
    pub spares: SpareAllocator,
    pub counters: Counters,
    pub journal: Journal,
    pub report: RecoveryReport,
}

/// Why a spare device could not be recovered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError<E: core::fmt::Debug + core::fmt::Display> {
    #[error("reading {region} failed: {source}")]
    Read { region: Region, source: E },
    #[error(
        "no valid superblock (nor a tail copy at the end of the device): copy A: {a}; copy B: {b}"
    )]
    NoSuperblock { a: FormatError, b: FormatError },
    #[error("the spare device is {actual} bytes but was formatted with {formatted} bytes")]
    SpareShrank { formatted: u64, actual: u64 },
    #[error("checkpoint: {0}")]
    Checkpoint(FormatError),
    #[error(
        "journal block {sequence} (ring position {position}) is corrupt in both copies while later commits follow it; refusing to open rather than drop them"
    )]
    JournalCorrupt { position: u32, sequence: u64 },
    #[error("journal block {sequence} (ring position {position}) contradicts the table: {source}")]
    Replay {
        sequence: u64,
        position: u32,
        source: ApplyError,
    },
}

impl<E: core::fmt::Debug + core::fmt::Display> From<LoadError<E>> for RecoverError<E> {
    fn from(e: LoadError<E>) -> Self {
        match e {
            LoadError::Read { area, source, .. } => RecoverError::Read {
                region: Region::Checkpoint(area),
                source,
            },
            LoadError::Format(f) => RecoverError::Checkpoint(f),
        }
    }
}

/// Read both superblock copies: each decoded, or why not.
pub fn read_superblocks<I: MetaIo>(
    io: &mut I,
) -> Result<[Result<Superblock, FormatError>; 2], RecoverError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    let mut out = [
        Err(FormatError::BadMagic {
            region: Region::SuperblockA,
        }),
        Err(FormatError::BadMagic {
            region: Region::SuperblockB,
        }),
    ];
    for (i, (offset, region)) in [
        (SUPERBLOCK_A, Region::SuperblockA),
        (SUPERBLOCK_B, Region::SuperblockB),
    ]
    .into_iter()
    .enumerate()
    {
        // On the heap: the kernel target runs this on a 16 KiB stack.
        let mut block = alloc::vec![0u8; META_BLOCK];
        io.read(offset, &mut block)
            .map_err(|source| RecoverError::Read { region, source })?;
        out[i] = Superblock::decode(&block, region);
    }
    Ok(out)
}

/// Read every superblock copy: both head copies, then the tail copy (format version 2).
/// The tail is looked for where the newest valid head copy puts it (the last 4 KiB of the
/// spare as formatted) and, when no head copy is valid, in the last 4 KiB of the device
/// (`device_size` bytes), so a spare whose head was overwritten still opens. A tail copy
/// counts only if its own geometry puts it where it was read, and, beside a valid head
/// copy, only if it has the same uuid.
pub fn read_superblock_copies<I: MetaIo>(
    io: &mut I,
    device_size: u64,
) -> Result<[Result<Superblock, FormatError>; 3], RecoverError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    let head_copies = read_superblocks(io)?;
    let region = Region::SuperblockTail;
    // Only what the tail read needs, not another copy of the superblock: the kernel target
    // runs this on a bounded stack (remap-kmod/README.md: no frame above 6 KiB).
    let head = choose_superblock(&head_copies)
        .ok()
        .map(|(_, sb)| (sb.version, sb.geometry.spare_size, sb.uuid));
    let tail = match head {
        Some((version, _, _)) if version < 2 => Err(FormatError::BadMagic { region }),
        Some((_, spare_size, uuid)) => read_tail(io, spare_size, device_size)?.and_then(|t| {
            if t.uuid == uuid {
                Ok(t)
            } else {
                Err(FormatError::ForeignUuid { region })
            }
        }),
        None => read_tail(io, device_size, device_size)?,
    };
    let [a, b] = head_copies;
    Ok([a, b, tail])
}

/// The tail copy in the last 4 KiB of a device of `device_size` bytes, whatever the head
/// copies say.
pub fn read_tail_at_end<I: MetaIo>(
    io: &mut I,
    device_size: u64,
) -> Result<Result<Superblock, FormatError>, RecoverError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    read_tail(io, device_size, device_size)
}

/// The tail copy of a spare of `spare_size` bytes on a device of `device_size` bytes.
fn read_tail<I: MetaIo>(
    io: &mut I,
    spare_size: u64,
    device_size: u64,
) -> Result<Result<Superblock, FormatError>, RecoverError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    let region = Region::SuperblockTail;
    let Some(offset) = tail_superblock_offset(spare_size).filter(|&t| {
        t.checked_add(META_BLOCK as u64)
            .is_some_and(|e| e <= device_size)
    }) else {
        return Ok(Err(FormatError::Geometry {
            region,
            why: "the tail copy would lie past the end of the device",
        }));
    };
    let mut block = alloc::vec![0u8; META_BLOCK];
    io.read(offset, &mut block)
        .map_err(|source| RecoverError::Read { region, source })?;
    Ok(Superblock::decode(&block, region).and_then(|t| {
        if t.version < 2 || tail_superblock_offset(t.geometry.spare_size) != Some(offset) {
            Err(FormatError::Geometry {
                region,
                why: "a superblock copy found where its own geometry puts no tail copy",
            })
        } else {
            Ok(t)
        }
    }))
}

/// Pick the copy to trust: the valid one with the highest sequence (A, then B, then the
/// tail on a tie). `copies` are A, B and optionally the tail, in that order.
pub fn choose_superblock(
    copies: &[Result<Superblock, FormatError>],
) -> Result<(Region, Superblock), (FormatError, FormatError)> {
    let mut best: Option<Superblock> = None;
    for sb in copies.iter().flatten() {
        if best.is_none_or(|b| sb.sequence > b.sequence) {
            best = Some(*sb);
        }
    }
    let region = |i: usize| match i {
        0 => Region::SuperblockA,
        1 => Region::SuperblockB,
        _ => Region::SuperblockTail,
    };
    if let Some(b) = best {
        // The first copy holding it (A on a tie).
        let i = copies
            .iter()
            .position(|c| c.as_ref().ok() == Some(&b))
            .unwrap_or(0);
        return Ok((region(i), b));
    }
    let err = |i: usize| match copies.get(i) {
        Some(Err(e)) => e.clone(),
        _ => FormatError::BadMagic { region: region(i) },
    };
    Err((err(0), err(1)))
}

/// Recover the state of the spare device behind `io`, whose current size is `device_size`.
pub fn recover<I: MetaIo>(io: &mut I, device_size: u64) -> Result<Recovered, RecoverError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    // The copies live only in this block, so their stack space is free again for the rest
    // (the kernel target runs this on a bounded stack).
    let (used, sb, superblock_a, superblock_b, superblock_tail, superblocks_agree) = {
        let copies = read_superblock_copies(io, device_size)?;
        let (used, sb) =
            choose_superblock(&copies).map_err(|(a, b)| RecoverError::NoSuperblock { a, b })?;
        let sequence = |i: usize| copies[i].as_ref().map(|s| s.sequence).map_err(Clone::clone);
        let agree = match &copies {
            [Ok(a), Ok(b), Ok(t)] => a == b && a == t,
            [Ok(a), Ok(b), Err(_)] => a == b && sb.version < 2,
            _ => false,
        };
        (used, sb, sequence(0), sequence(1), sequence(2), agree)
    };
    // Before anything is sized from the superblock: the device must hold what it describes.
    if device_size < sb.geometry.spare_size {
        return Err(RecoverError::SpareShrank {
            formatted: sb.geometry.spare_size,
            actual: device_size,
        });
    }
    let loaded = checkpoint::load(io, &sb)?;
    let mut table = loaded.table;
    let mut spares = loaded.spares;
    let mut counters = loaded.header.counters;
    let mut counters_from_journal = None;
    let g = sb.geometry;
    let blocks = g.main_blocks();
    let ring = g.journal_blocks;

    let mut position = sb.journal_start_position;
    let mut sequence = sb.journal_start_sequence;
    // Where the next commit goes: after the last complete commit.
    let (mut head, mut next_sequence, mut live) = (position, sequence, 0u32);
    let mut commit: Vec<Record> = Vec::new();
    let mut commit_blocks = 0u32;
    let mut prev_crc = 0u32;
    let mut mirror_used = 0u32;
    let mut records_replayed = 0u64;
    let mut stop = JournalStop::EndOfRing;
    let mut block = alloc::vec![0u8; META_BLOCK];
    for _ in 0..ring {
        // Copy 0 if it is the block we expect, else copy 1, else the log ends here.
        let mut first_problem = None;
        let mut found = None;
        for copy in 0..2u8 {
            let region = Region::Journal(position);
            io.read(g.journal_block_offset(copy, position), &mut block)
                .map_err(|source| RecoverError::Read { region, source })?;
            match examine(&block, &sb, position, sequence, prev_crc) {
                Ok(jb) => {
                    found = Some(jb);
                    if copy == 1 {
                        mirror_used += 1;
                    }
                    break;
                }
                Err(problem) => {
                    first_problem.get_or_insert(problem);
                }
            }
        }
        let Some(jb) = found else {
            stop = first_problem.unwrap_or(JournalStop::EndOfRing);
            // A torn write can only be the last thing written. If the next position holds
            // the next commit, this block was durable and has rotted since (both copies):
            // stopping here would silently drop every later commit, so refuse instead.
            if commit_blocks == 0 && follows(io, &sb, (position + 1) % ring, sequence + 1)? {
                return Err(RecoverError::JournalCorrupt { position, sequence });
            }
            break;
        };
        let region = Region::Journal(position);
        prev_crc = jb.crc;
        commit_blocks += 1;
        if commit_blocks > MAX_COMMIT_BLOCKS {
            // No writer makes commits this long: the tail is not ours to trust.
            stop = JournalStop::Invalid {
                position,
                reason: alloc::format!("commit longer than {MAX_COMMIT_BLOCKS} blocks"),
            };
            break;
        }
        commit.extend_from_slice(&jb.records);
        let block_counters = jb.counters;
        position = (position + 1) % ring;
        sequence += 1;
        if jb.commit_end {
            for rec in &commit {
                record::apply(&mut table, &mut spares, blocks, rec).map_err(|source| {
                    RecoverError::Replay {
                        sequence: jb.sequence,
                        position: region_position(region),
                        source,
                    }
                })?;
            }
            records_replayed += commit.len() as u64;
            if let Some(c) = block_counters {
                counters = c;
                counters_from_journal = Some(jb.sequence);
            }
            commit.clear();
            live += commit_blocks;
            commit_blocks = 0;
            prev_crc = 0;
            head = position;
            next_sequence = sequence;
        }
    }
    debug_assert!(commit.len() <= MAX_COMMIT_BLOCKS as usize * RECORDS_PER_BLOCK);
    let report = RecoveryReport {
        superblock_used: used,
        superblock_a,
        superblock_b,
        superblock_tail,
        superblocks_agree,
        counters_from_journal,
        checkpoint_sequence: loaded.header.sequence,
        checkpoint_entries: loaded.header.entry_count,
        journal_blocks_replayed: live,
        records_replayed,
        incomplete_commit_blocks: commit_blocks,
        journal_mirror_used: mirror_used,
        journal_stop: stop,
    };
    Ok(Recovered {
        superblock: sb,
        table,
        spares,
        counters,
        journal: Journal::new(sb, used, next_sequence, head, live),
        report,
    })
}

/// Whether either copy at `position` is the first block of the commit with `sequence`.
fn follows<I: MetaIo>(
    io: &mut I,
    sb: &Superblock,
    position: u32,
    sequence: u64,
) -> Result<bool, RecoverError<I::Error>>
where
    I::Error: core::fmt::Debug + core::fmt::Display,
{
    let mut block = alloc::vec![0u8; META_BLOCK];
    for copy in 0..2u8 {
        let region = Region::Journal(position);
        io.read(sb.geometry.journal_block_offset(copy, position), &mut block)
            .map_err(|source| RecoverError::Read { region, source })?;
        if examine(&block, sb, position, sequence, 0).is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The journal block in `bytes` if it is the one replay expects at `position`.
fn examine(
    bytes: &[u8],
    sb: &Superblock,
    position: u32,
    sequence: u64,
    prev_crc: u32,
) -> Result<JournalBlock, JournalStop> {
    let jb = JournalBlock::decode(bytes, Region::Journal(position)).map_err(|e| {
        JournalStop::Invalid {
            position,
            reason: alloc::format!("{e}"),
        }
    })?;
    if jb.uuid != sb.uuid {
        return Err(JournalStop::ForeignUuid { position });
    }
    if jb.sequence != sequence {
        return Err(JournalStop::SequenceGap {
            position,
            expected: sequence,
            found: jb.sequence,
        });
    }
    if jb.prev_crc != prev_crc {
        return Err(JournalStop::BrokenChain { position });
    }
    Ok(jb)
}

fn region_position(r: Region) -> u32 {
    match r {
        Region::Journal(p) => p,
        _ => 0,
    }
}
