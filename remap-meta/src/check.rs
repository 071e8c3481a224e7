//! `check` verifies every superblock copy, both checkpoint areas and every journal block;
//! `repair` rewrites a bad or outdated superblock copy from the good one. Nothing else is
//! ever rewritten: a table that cannot be read back exactly is reported, never invented.

use remap_core::BlockBackend;

use crate::checkpoint::Header;
use crate::error::{FormatError, Region};
use crate::io::BackendIo;
use crate::journal::{JournalBlock, write_superblocks};
use crate::open::MetaError;
use crate::recovery::{RecoveryReport, choose_superblock, read_superblock_copies, recover};
use crate::superblock::Superblock;
use crate::{META_BLOCK, MetaIo};

/// State of one superblock copy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CopyState {
    pub region: Region,
    /// Sequence if valid.
    pub sequence: Option<u64>,
    /// Why it is refused, if it is.
    pub error: Option<String>,
    /// Valid but older than (or different from) the copy recovery uses.
    pub outdated: bool,
}

/// Census of the journal ring (both copies).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalCensus {
    /// Blocks recovery replays (the live tail).
    pub live: u32,
    /// Live blocks whose first copy is bad (the second copy was used).
    pub mirror_used: u32,
    /// Valid blocks of this device from before the last checkpoint.
    pub stale: u32,
    /// Blocks that are not valid journal blocks (never written, torn or corrupt).
    pub invalid: u32,
    /// Valid blocks of an earlier format (another uuid).
    pub foreign: u32,
}

/// What `check` found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    /// Superblock copies A and B, and the tail copy on a format version 2 spare.
    pub superblocks: Vec<CopyState>,
    /// The recovery a normal open would do, or why it fails.
    pub recovery: Result<RecoveryReport, String>,
    /// Each checkpoint area's header: its sequence, or why it does not decode.
    pub checkpoints: [Result<u64, String>; 2],
    pub journal: JournalCensus,
    /// Problems `repair` can fix.
    pub repairable: Vec<String>,
    /// Problems nothing can fix without losing the table.
    pub fatal: Vec<String>,
}

impl CheckReport {
    pub fn is_clean(&self) -> bool {
        self.repairable.is_empty() && self.fatal.is_empty()
    }
}

/// Verify everything on the spare device. Reads only.
pub fn check<S: BlockBackend + ?Sized>(spare: &S) -> Result<CheckReport, MetaError> {
    let mut io = BackendIo(spare);
    let copies = read_superblock_copies(&mut io, spare.size_bytes())?;
    let chosen = choose_superblock(&copies).ok().map(|(_, sb)| sb);
    let mut repairable = Vec::new();
    let mut fatal = Vec::new();
    // A version 1 spare has no tail copy.
    let count = if chosen.is_some_and(|c| c.version < 2) {
        2
    } else {
        3
    };
    let regions = [
        Region::SuperblockA,
        Region::SuperblockB,
        Region::SuperblockTail,
    ];
    let superblocks: Vec<CopyState> = (0..count)
        .map(|i| {
            let region = regions[i];
            match &copies[i] {
                Ok(sb) => {
                    let outdated = chosen.is_some_and(|c| c != *sb);
                    if outdated {
                        repairable.push(format!(
                            "{region} (sequence {}) is older than or differs from the copy in use",
                            sb.sequence
                        ));
                    }
                    CopyState {
                        region,
                        sequence: Some(sb.sequence),
                        error: None,
                        outdated,
                    }
                }
                Err(e) => {
                    if chosen.is_some() {
                        repairable.push(format!("{e}"));
                    }
                    CopyState {
                        region,
                        sequence: None,
                        error: Some(e.to_string()),
                        outdated: false,
                    }
                }
            }
        })
        .collect();
    let recovery = match recover(&mut io, spare.size_bytes()) {
        Ok(r) => Ok(r.report),
        Err(e) => {
            fatal.push(e.to_string());
            Err(e.to_string())
        }
    };
    let mut checkpoints = [Err(String::new()), Err(String::new())];
    let mut journal = JournalCensus::default();
    if let Some(sb) = chosen {
        for area in 0..2u8 {
            let mut block = [0u8; META_BLOCK];
            io.read(
                sb.geometry.checkpoint_offsets[usize::from(area)],
                &mut block,
            )?;
            checkpoints[usize::from(area)] = Header::decode(&block, Region::Checkpoint(area))
                .and_then(|h| {
                    if h.uuid == sb.uuid {
                        Ok(h.sequence)
                    } else {
                        Err(FormatError::ForeignUuid {
                            region: Region::Checkpoint(area),
                        })
                    }
                })
                .map_err(|e| e.to_string());
        }
        journal = census(&mut io, &sb, recovery.as_ref().ok())?;
        if let Ok(rec) = &recovery {
            for (position, bad_copy) in mirror_damage(&mut io, &sb, rec)? {
                repairable.push(format!(
                    "copy {bad_copy} of live journal block {position} is bad (the other copy is good)"
                ));
            }
        }
    }
    Ok(CheckReport {
        superblocks,
        recovery,
        checkpoints,
        journal,
        repairable,
        fatal,
    })
}

fn census<S: BlockBackend + ?Sized>(
    io: &mut BackendIo<'_, S>,
    sb: &Superblock,
    rec: Option<&RecoveryReport>,
) -> Result<JournalCensus, MetaError> {
    let mut c = JournalCensus {
        live: rec.map_or(0, |r| r.journal_blocks_replayed),
        mirror_used: rec.map_or(0, |r| r.journal_mirror_used),
        ..Default::default()
    };
    let mut block = [0u8; META_BLOCK];
    for copy in 0..2 {
        for position in 0..sb.geometry.journal_blocks {
            io.read(sb.geometry.journal_block_offset(copy, position), &mut block)?;
            match JournalBlock::decode(&block, Region::Journal(position)) {
                Ok(jb) if jb.uuid != sb.uuid => c.foreign += 1,
                Ok(jb) if jb.sequence < sb.journal_start_sequence => c.stale += 1,
                Ok(_) => {}
                Err(_) => c.invalid += 1,
            }
        }
    }
    Ok(c)
}

/// Live journal blocks with one bad copy: (ring position, bad copy).
fn mirror_damage<S: BlockBackend + ?Sized>(
    io: &mut BackendIo<'_, S>,
    sb: &Superblock,
    rec: &RecoveryReport,
) -> Result<Vec<(u32, u8)>, MetaError> {
    let ring = sb.geometry.journal_blocks;
    let mut out = Vec::new();
    let (mut a, mut b) = ([0u8; META_BLOCK], [0u8; META_BLOCK]);
    for i in 0..rec.journal_blocks_replayed {
        let position = (sb.journal_start_position + i) % ring;
        io.read(sb.geometry.journal_block_offset(0, position), &mut a)?;
        io.read(sb.geometry.journal_block_offset(1, position), &mut b)?;
        if a == b {
            continue;
        }
        let region = Region::Journal(position);
        let ok = |bytes: &[u8]| {
            JournalBlock::decode(bytes, region).is_ok_and(|j| {
                j.uuid == sb.uuid && j.sequence == sb.journal_start_sequence + u64::from(i)
            })
        };
        match (ok(&a), ok(&b)) {
            (true, false) => out.push((position, 1)),
            (false, true) => out.push((position, 0)),
            _ => {}
        }
    }
    Ok(out)
}

/// What `repair` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepairReport {
    pub rewritten: Vec<Region>,
    /// When recovery refused the spare: what salvage rebuilt, and what it could not prove.
    pub salvage: Option<crate::salvage::SalvageReport>,
    pub before: CheckReport,
    pub after: CheckReport,
}

/// Rewrite bad or outdated superblock copies from the copy recovery uses, and bad copies of
/// live journal blocks from their good twin, then check again. When recovery refuses the
/// spare (an unreadable checkpoint, a journal block corrupt in both copies), salvage it
/// ([`crate::salvage`]): rebuild what the rest of the metadata proves, report what it does
/// not, and write that as a fresh checkpoint. Refuses (changing nothing) when there is
/// nothing to rebuild from.
pub fn repair<S: BlockBackend + ?Sized>(spare: &S) -> Result<RepairReport, MetaError> {
    let before = check(spare)?;
    if let Err(why) = &before.recovery {
        let salvage = crate::salvage::salvage(spare, true).map_err(|e| {
            MetaError::Unrepairable(format!(
                "{why}; salvage refused too ({e}); repair never invents a table"
            ))
        })?;
        let after = check(spare)?;
        return Ok(RepairReport {
            rewritten: salvage.written_to.into_iter().collect(),
            salvage: Some(salvage),
            before,
            after,
        });
    }
    let mut io = BackendIo(spare);
    let copies = read_superblock_copies(&mut io, spare.size_bytes())?;
    let Ok((used, good)) = choose_superblock(&copies) else {
        return Err(MetaError::Unrepairable("no valid superblock".into()));
    };
    let mut rewritten = Vec::new();
    let count = if good.version < 2 { 2 } else { 3 };
    if copies[..count]
        .iter()
        .any(|c| c.as_ref().ok() != Some(&good))
    {
        // The copy in use is written last: the stale ones first, then a flush.
        write_superblocks(&mut io, &good, used).map_err(MetaError::from_commit)?;
        for (c, region) in copies[..count].iter().zip([
            Region::SuperblockA,
            Region::SuperblockB,
            Region::SuperblockTail,
        ]) {
            if c.as_ref().ok() != Some(&good) {
                rewritten.push(region);
            }
        }
    }
    if let Ok(rec) = &before.recovery {
        let sb = good;
        for (position, bad_copy) in mirror_damage(&mut io, &sb, rec)? {
            let mut block = [0u8; META_BLOCK];
            let good_copy = 1 - bad_copy;
            io.read(
                sb.geometry.journal_block_offset(good_copy, position),
                &mut block,
            )?;
            io.write(sb.geometry.journal_block_offset(bad_copy, position), &block)?;
            io.flush()?;
            rewritten.push(Region::Journal(position));
        }
    }
    let after = check(spare)?;
    Ok(RepairReport {
        rewritten,
        salvage: None,
        before,
        after,
    })
}
