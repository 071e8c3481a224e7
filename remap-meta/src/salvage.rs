//! Salvage: when recovery refuses a spare because its active checkpoint is unreadable, or a
//! live journal block is corrupt in both copies, rebuild what the remaining metadata proves,
//! name what it does not, and only then write a fresh checkpoint (docs/format.md,
//! "Salvage").
//!
//! The base is the active checkpoint if it loads, else the other area's (older) checkpoint.
//! On top of it every commit still readable anywhere in the journal ring is applied in
//! sequence order. A sequence number between the base and the newest readable commit with no
//! complete commit is *lost*: its records exist nowhere else (or only in the unreadable
//! checkpoint). A lost commit whose blocks survive in part names its blocks; one that left
//! nothing names none, and the report says how many such commits there are. A readable
//! record that contradicts the rebuilt state is skipped and its block named. Spare blocks
//! named by any record that could not be applied are retired, so whatever data they hold
//! is never overwritten.

use std::collections::{BTreeMap, BTreeSet};

use remap_core::BlockBackend;
use remap_core::record::{self, Record};
use remap_core::spare::SpareState;

use crate::checkpoint::{self, Loaded};
use crate::counters::Counters;
use crate::error::Region;
use crate::io::BackendIo;
use crate::journal::{Journal, JournalBlock, StateView};
use crate::open::MetaError;
use crate::recovery::{choose_superblock, read_superblock_copies, recover};
use crate::superblock::Superblock;
use crate::{META_BLOCK, MetaIo};

/// A run of consecutive lost commits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LostCommits {
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Blocks named by the surviving blocks of these commits (empty: none survives, and
    /// the blocks they changed cannot be named).
    pub blocks: Vec<u64>,
}

/// What [`salvage`] found and did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SalvageReport {
    /// Why a normal open refuses the spare.
    pub reason: String,
    /// The checkpoint the rebuilt state starts from, and its sequence.
    pub base: Region,
    pub base_sequence: u64,
    /// Whether the base is the active checkpoint (else the older one).
    pub base_is_active: bool,
    pub commits_applied: u64,
    pub lost: Vec<LostCommits>,
    /// Lost journal sequence numbers with no readable block at all (a whole commit, or a
    /// block of one): what they changed is unknown.
    pub unidentified_lost_commits: u64,
    /// Every block whose state could not be proven: named by a lost commit's surviving
    /// block or by a record that contradicted the rebuilt state.
    pub unproven_blocks: Vec<u64>,
    /// Spare blocks retired because a record that could not be applied names them.
    pub quarantined_spares: Vec<u64>,
    /// Entries in the rebuilt table.
    pub entries: u64,
    /// Whether the fresh checkpoint was written...
    pub written: bool,
    /// ...and into which area.
    pub written_to: Option<Region>,
}

impl SalvageReport {
    /// Whether everything was proven.
    pub fn is_complete(&self) -> bool {
        self.unproven_blocks.is_empty() && self.unidentified_lost_commits == 0
    }
}

/// Rebuild the state of a spare that recovery refuses; write it as a fresh checkpoint if
/// `write`. Refuses (writing nothing) a spare that recovers normally, one with no valid
/// superblock copy, and one where neither checkpoint area loads.
pub fn salvage<S: BlockBackend + ?Sized>(
    spare: &S,
    write: bool,
) -> Result<SalvageReport, MetaError> {
    let mut io = BackendIo(spare);
    let size = spare.size_bytes();
    let reason = match recover(&mut io, size) {
        Ok(_) => {
            return Err(MetaError::Unrepairable(
                "the spare recovers normally; there is nothing to salvage".into(),
            ));
        }
        Err(e) => e.to_string(),
    };
    let copies = read_superblock_copies(&mut io, size)?;
    let (trusted, sb) = choose_superblock(&copies).map_err(|_| {
        MetaError::Unrepairable(format!("{reason}; salvage needs one valid superblock copy"))
    })?;
    let (base, base_is_active) = load_base(&mut io, &sb, &reason)?;
    let index = index_ring(&mut io, &sb)?;
    let mut rebuilt = rebuild(&sb, base, base_is_active, &index);
    rebuilt.report.reason = reason;
    if write {
        let area = write_fresh(&mut io, &sb, trusted, &rebuilt, &index)?;
        rebuilt.report.written = true;
        rebuilt.report.written_to = Some(Region::Checkpoint(area));
        // Pair assertion: the spare now recovers to exactly the rebuilt table.
        let back = recover(&mut io, size)?;
        if back.table.iter().ne(rebuilt.table.iter()) {
            return Err(MetaError::Unrepairable(
                "the salvaged spare does not read back as written".into(),
            ));
        }
    }
    Ok(rebuilt.report)
}

/// The active checkpoint if it loads, else the older one.
fn load_base<S: BlockBackend + ?Sized>(
    io: &mut BackendIo<'_, S>,
    sb: &Superblock,
    reason: &str,
) -> Result<(Loaded, bool), MetaError> {
    if let Ok(l) = checkpoint::load(io, sb) {
        return Ok((l, true));
    }
    let other = 1 - sb.active_checkpoint;
    match checkpoint::load_area(io, sb, other, None) {
        Ok(l) if l.header.sequence < sb.checkpoint_sequence => Ok((l, false)),
        Ok(_) => Err(MetaError::Unrepairable(format!(
            "{reason}; checkpoint area {other} is not older than the active one"
        ))),
        Err(e) => Err(MetaError::Unrepairable(format!(
            "{reason}; the other checkpoint area is unreadable too ({e}): nothing to rebuild from"
        ))),
    }
}

/// Every valid journal block of this format in the ring (either copy), by sequence.
fn index_ring<S: BlockBackend + ?Sized>(
    io: &mut BackendIo<'_, S>,
    sb: &Superblock,
) -> Result<BTreeMap<u64, (u32, JournalBlock)>, MetaError> {
    let g = sb.geometry;
    let mut index = BTreeMap::new();
    let mut block = vec![0u8; META_BLOCK];
    for position in 0..g.journal_blocks {
        for copy in 0..2u8 {
            io.read(g.journal_block_offset(copy, position), &mut block)?;
            if let Ok(jb) = JournalBlock::decode(&block, Region::Journal(position))
                && jb.uuid == sb.uuid
            {
                index.entry(jb.sequence).or_insert((position, jb));
                break;
            }
        }
    }
    Ok(index)
}

struct Rebuilt {
    table: remap_core::RemapTable,
    spares: remap_core::SpareAllocator,
    counters: Counters,
    report: SalvageReport,
}

/// Apply every readable commit after the base, in sequence order; collect what is lost.
fn rebuild(
    sb: &Superblock,
    base: Loaded,
    base_is_active: bool,
    index: &BTreeMap<u64, (u32, JournalBlock)>,
) -> Rebuilt {
    let g = sb.geometry;
    let blocks = g.main_blocks();
    let ring = g.journal_blocks;
    let (mut table, mut spares) = (base.table, base.spares);
    let mut counters = base.header.counters;
    let start = base.header.journal_next_sequence;
    // Between the base and the newest commit lie at most the base's journal window, the
    // commit a checkpoint was written instead of, and the next window: a bound on the walk
    // that no forged sequence number can stretch.
    let span = 2 * u64::from(ring) + 2;
    let newest = index
        .range(start..=start.saturating_add(span))
        .next_back()
        .map_or(0, |(s, _)| *s);
    let mut ev = Evidence::default();
    let mut unidentified = 0u64;
    let mut applied = 0u64;
    // A commit being gathered: its first sequence, last position, last crc, records.
    let mut commit: Option<(u64, u32, u32, Vec<Record>)> = None;
    let continues = |c: &Option<(u64, u32, u32, Vec<Record>)>, pos: u32, jb: &JournalBlock| match c
    {
        Some((_, last_pos, crc, _)) => (last_pos + 1) % ring == pos && jb.prev_crc == *crc,
        None => jb.prev_crc == 0,
    };
    for sequence in start..=newest {
        let Some((pos, jb)) = index.get(&sequence) else {
            // Nothing readable carries this sequence: lost, with the commit in hand.
            let (first, records) = commit
                .take()
                .map_or((sequence, Vec::new()), |(f, _, _, r)| (f, r));
            unidentified += 1;
            ev.lost(first, sequence, &records);
            continue;
        };
        if commit.is_some() && !continues(&commit, *pos, jb) {
            // The commit in hand never got its end block.
            if let Some((first, _, _, records)) = commit.take() {
                ev.lost(first, sequence - 1, &records);
            }
        }
        if !continues(&commit, *pos, jb) {
            // A block whose commit began in a lost block: evidence only.
            ev.lost(sequence, sequence, &jb.records);
            continue;
        }
        let (first, mut records) = commit
            .take()
            .map_or((sequence, Vec::new()), |(f, _, _, r)| (f, r));
        records.extend_from_slice(&jb.records);
        if !jb.commit_end {
            commit = Some((first, *pos, jb.crc, records));
            continue;
        }
        for r in &records {
            if record::apply(&mut table, &mut spares, blocks, r).is_err() {
                ev.unproven.extend(r.lba());
                ev.spares.extend(record_spare(r));
            }
        }
        if let Some(c) = jb.counters {
            counters = c;
        }
        applied += 1;
    }
    // A commit still open at the newest sequence never completed: never acknowledged.
    // Quarantine the spares that may hold the only copy of a block whose mapping was lost:
    // every spare a skipped or lost record names, and, when some lost commit left nothing
    // (its spares are unknown), every spare up to the highest one any evidence names (the
    // allocator hands out the lowest free spare first). The rebuilt pool thinks them free;
    // retired, their data is never overwritten.
    let mut suspects = ev.spares.clone();
    if unidentified > 0 {
        let highest = table
            .iter()
            .filter_map(|(_, e)| e.spare)
            .chain(spares.retired())
            .chain(
                index
                    .values()
                    .flat_map(|(_, jb)| jb.records.iter().filter_map(record_spare)),
            )
            .max();
        if let Some(h) = highest {
            suspects.extend(0..=h.min(g.pool_blocks.saturating_sub(1)));
        }
    }
    let mut quarantined = Vec::new();
    for s in suspects {
        if spares.state(s) == Ok(SpareState::Free) && spares.retire(s).is_ok() {
            quarantined.push(s);
        }
    }
    let entries = table.len() as u64;
    let report = SalvageReport {
        reason: String::new(),
        base: Region::Checkpoint(if base_is_active {
            sb.active_checkpoint
        } else {
            1 - sb.active_checkpoint
        }),
        base_sequence: base.header.sequence,
        base_is_active,
        commits_applied: applied,
        lost: ev.runs,
        unidentified_lost_commits: unidentified,
        unproven_blocks: ev.unproven.into_iter().collect(),
        quarantined_spares: quarantined,
        entries,
        written: false,
        written_to: None,
    };
    Rebuilt {
        table,
        spares,
        counters,
        report,
    }
}

/// What salvage could not prove, gathered as it goes.
#[derive(Default)]
struct Evidence {
    runs: Vec<LostCommits>,
    unproven: BTreeSet<u64>,
    /// Spares named by records that were not applied.
    spares: BTreeSet<u64>,
}

impl Evidence {
    /// Sequences `first..=last` are lost; `records` is what survives of them.
    fn lost(&mut self, first: u64, last: u64, records: &[Record]) {
        let named: BTreeSet<u64> = records.iter().filter_map(Record::lba).collect();
        self.spares.extend(records.iter().filter_map(record_spare));
        self.unproven.extend(named.iter().copied());
        match self.runs.last_mut() {
            Some(l) if l.last_sequence + 1 == first => {
                l.last_sequence = last;
                l.blocks.extend(named);
                l.blocks.sort_unstable();
                l.blocks.dedup();
            }
            _ => self.runs.push(LostCommits {
                first_sequence: first,
                last_sequence: last,
                blocks: named.into_iter().collect(),
            }),
        }
    }
}

fn record_spare(r: &Record) -> Option<u64> {
    match *r {
        Record::Remap { spare, .. } | Record::SpareRetired { spare, .. } => Some(spare),
        _ => None,
    }
}

/// Write the rebuilt state as a fresh checkpoint into the area the base is *not* in (the
/// unreadable one, when the base is the older checkpoint), then point every superblock copy
/// at it, the trusted copy last. The journal restarts after every sequence the ring holds,
/// so no old block can be mistaken for a new one. A crash before the superblocks are
/// written leaves the spare as it was: salvage can run again from the same base.
fn write_fresh<S: BlockBackend + ?Sized>(
    io: &mut BackendIo<'_, S>,
    sb: &Superblock,
    trusted: Region,
    rebuilt: &Rebuilt,
    index: &BTreeMap<u64, (u32, JournalBlock)>,
) -> Result<u8, MetaError> {
    let base_area = match rebuilt.report.base {
        Region::Checkpoint(a) => a,
        _ => sb.active_checkpoint,
    };
    let newest = index.keys().next_back().copied().unwrap_or(0);
    let next_sequence = newest.max(sb.journal_start_sequence).saturating_add(1);
    let mut start = *sb;
    // The journal writes its checkpoint into the area opposite the "active" one.
    start.active_checkpoint = base_area;
    let mut journal = Journal::new(start, trusted, next_sequence, 0, 0);
    let view = StateView {
        table: &rebuilt.table,
        spares: &rebuilt.spares,
        counters: &rebuilt.counters,
    };
    journal
        .checkpoint(io, &view)
        .map_err(MetaError::from_commit)?;
    Ok(journal.superblock().active_checkpoint)
}
