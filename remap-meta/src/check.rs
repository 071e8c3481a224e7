//! `check` verifies every superblock copy, both checkpoint areas and every journal block;
//! `repair` rewrites a bad or outdated superblock copy from the good one. Nothing else is
//! ever rewritten: a table that cannot be read back exactly is reported, never invented.

use remap_core::BlockBackend;

use crate::checkpoint::Header;
use crate::error::{FormatError, Region};
use crate::io::BackendIo;
use crate::journal::{JournalBlock, write_superblocks};
use crate::open::MetaError;
use crate::recovery::{RecoveryReport, choose_superblock, read_superblocks, recover};
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

/// Census of the journal ring.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalCensus {
    /// Blocks recovery replays (the live tail).
    pub live: u32,
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
    pub superblocks: [CopyState; 2],
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
    let copies = read_superblocks(&mut io)?;
    let chosen = choose_superblock(&copies).ok().map(|(_, sb)| sb);
    let mut repairable = Vec::new();
    let mut fatal = Vec::new();
    let superblocks = [0usize, 1].map(|i| {
        let region = if i == 0 {
            Region::SuperblockA
        } else {
            Region::SuperblockB
        };
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
    });
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
        ..Default::default()
    };
    let mut block = [0u8; META_BLOCK];
    for position in 0..sb.geometry.journal_blocks {
        io.read(sb.geometry.journal_block_offset(position), &mut block)?;
        match JournalBlock::decode(&block, Region::Journal(position)) {
            Ok(jb) if jb.uuid != sb.uuid => c.foreign += 1,
            Ok(jb) if jb.sequence < sb.journal_start_sequence => c.stale += 1,
            Ok(_) => {}
            Err(_) => c.invalid += 1,
        }
    }
    Ok(c)
}

/// What `repair` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepairReport {
    pub rewritten: Vec<Region>,
    pub before: CheckReport,
    pub after: CheckReport,
}

/// Rewrite bad or outdated superblock copies from the copy recovery uses, then check again.
/// Refuses (changing nothing) when the state itself cannot be recovered.
pub fn repair<S: BlockBackend + ?Sized>(spare: &S) -> Result<RepairReport, MetaError> {
    let before = check(spare)?;
    if let Err(why) = &before.recovery {
        return Err(MetaError::Unrepairable(format!(
            "{why}; repair only rewrites a superblock copy from a good one and never invents a table"
        )));
    }
    let mut io = BackendIo(spare);
    let copies = read_superblocks(&mut io)?;
    let Ok((_, good)) = choose_superblock(&copies) else {
        return Err(MetaError::Unrepairable("no valid superblock".into()));
    };
    let mut rewritten = Vec::new();
    if copies.iter().any(|c| c.as_ref().ok() != Some(&good)) {
        write_superblocks(&mut io, &good).map_err(MetaError::from_commit)?;
        for (c, region) in copies
            .iter()
            .zip([Region::SuperblockA, Region::SuperblockB])
        {
            if c.as_ref().ok() != Some(&good) {
                rewritten.push(region);
            }
        }
    }
    let after = check(spare)?;
    Ok(RepairReport {
        rewritten,
        before,
        after,
    })
}
