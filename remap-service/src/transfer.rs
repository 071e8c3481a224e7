//! Moving blocks between main and spare on an operator's request: the loop that map and
//! unmap share, offline and on a served device.
//!
//! Each block is moved by the engine ([`RemapDevice::map_block`] / `unmap_block`), which
//! makes the change durable (journal write + flush) before returning, so a crash between two
//! blocks loses neither. A block the engine refuses for reasons of its own (unreadable,
//! main still failing, pending) is reported and the loop goes on to the next; anything that
//! says the device pair itself is in trouble (spare exhausted, metadata write failed) stops
//! the loop. Nothing is written for a block that is already where it was asked to go.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use remap_core::{BlockBackend, DeviceError, RemapDevice};

use crate::blocks::BlockList;

/// Moving one block failed or was refused; the message names the device and the block.
#[derive(Debug, thiserror::Error)]
#[error("{}: block {lba}: {}", path.display(), describe_block(.source, .lba))]
pub struct BlockError {
    pub path: PathBuf,
    pub lba: u64,
    #[source]
    pub source: DeviceError,
}

/// Why a map or unmap run ended in failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// A block failed in a way that says the pair is in trouble; the run stopped there.
    #[error(transparent)]
    Stopped(BlockError),

    /// Some blocks failed; each was reported on its own before.
    #[error("{}: {failed} of {requested} blocks failed", path.display())]
    BlocksFailed {
        path: PathBuf,
        failed: u64,
        requested: u64,
    },

    /// The final flush and checkpoint failed. What was moved is in the journal, which
    /// recovery replays; the checkpoint only shortens that replay.
    #[error("{}: flush and checkpoint at the end failed: {source}", path.display())]
    Shutdown {
        path: PathBuf,
        #[source]
        source: DeviceError,
    },
}

/// The cause of a block operation failure, without the `block N:` prefix the engine's
/// messages carry (the message already starts with it).
fn describe_block(e: &DeviceError, lba: &u64) -> String {
    match e {
        DeviceError::Unreadable { reason, .. } => format!(
            "cannot be read on the main device, so it was not moved \
             (unless zeroes may take the place of its data): {reason}"
        ),
        DeviceError::MainStillFailing { reason, .. } => {
            format!("the main device still fails there, so the block stays on its spare: {reason}")
        }
        DeviceError::NotRemapped { .. } => "is not remapped".to_string(),
        DeviceError::AlreadyRemapped { spare, .. } => {
            format!("is already remapped to spare block {spare}")
        }
        DeviceError::SpareExhausted { pool, .. } => {
            format!("the spare pool is exhausted (all {pool} spare blocks are used or retired)")
        }
        DeviceError::SpareReadFailed { spare, source, .. } => format!(
            "spare block {spare} failed a read and was retired; the block is now pending: {source}"
        ),
        DeviceError::SpareWritesFailed { attempts, .. } => {
            format!("no spare block accepted the data after {attempts} attempts")
        }
        other => {
            let text = other.to_string();
            // Engine messages about a block start with "block N: " or "block N is ...";
            // ours already says "block N: ".
            let colon = format!("block {lba}: ");
            let space = format!("block {lba} ");
            if let Some(rest) = text.strip_prefix(&colon) {
                rest.to_string()
            } else if let Some(rest) = text.strip_prefix(&space) {
                rest.to_string()
            } else {
                text
            }
        }
    }
}

/// What happened to one block.
#[derive(Debug)]
pub enum Outcome {
    /// Moved to a spare block; `zeroed` when its data could not be read and zeroes were
    /// allowed in its place.
    Mapped {
        lba: u64,
        spare: u64,
        zeroed: bool,
    },
    /// Copied back to main, verified, spare block freed.
    Unmapped {
        lba: u64,
        spare: u64,
    },
    /// Already where it was asked to go; nothing written.
    AlreadyMapped {
        lba: u64,
        spare: u64,
    },
    AlreadyOnMain {
        lba: u64,
    },
    /// Refused or failed for this block alone; the others were still tried.
    Failed(BlockError),
}

/// Totals of a `map` or `unmap` run.
#[derive(Debug, Default)]
pub struct Summary {
    pub requested: u64,
    /// Blocks whose place changed (the table changed).
    pub changed: u64,
    pub unchanged: u64,
    pub failed: u64,
    /// Blocks never tried because an error stopped the loop first.
    pub not_tried: u64,
    /// The device the first failed block's error was about, for the closing count.
    pub failed_on: Option<PathBuf>,
    /// The error that stopped the loop early, if any.
    pub stopped_by: Option<BlockError>,
    /// The caller's report asked to stop (a signal, a closed output) after the block in
    /// hand; the rest were not tried.
    pub halted: bool,
}

impl Summary {
    /// The requested blocks not counted yet: those a stop left untried.
    fn untried(&self) -> u64 {
        self.requested
            .saturating_sub(self.changed + self.unchanged + self.failed)
    }
}

/// Whether an engine error is about this block only, so the next block may still succeed.
fn is_about_the_block(e: &DeviceError) -> bool {
    matches!(
        e,
        DeviceError::Unreadable { .. }
            | DeviceError::MainStillFailing { .. }
            | DeviceError::NotRemapped { .. }
            | DeviceError::AlreadyRemapped { .. }
            | DeviceError::Pending { .. }
            | DeviceError::SpareReadFailed { .. }
            | DeviceError::ReadFailed { .. }
    )
}

/// Which device an engine error is about, for the message's leading path.
fn device_of<'a>(e: &DeviceError, main: &'a Path, spare: &'a Path) -> &'a Path {
    match e {
        DeviceError::SpareReadFailed { .. }
        | DeviceError::SpareExhausted { .. }
        | DeviceError::SpareWritesFailed { .. }
        | DeviceError::SpareFlush { .. }
        | DeviceError::MetadataFailed { .. }
        | DeviceError::Poisoned
        | DeviceError::TableFull { .. } => spare,
        _ => main,
    }
}

/// The paths of the pair, for messages.
#[derive(Debug, Clone, Copy)]
pub struct Paths<'a> {
    pub main: &'a Path,
    pub spare: &'a Path,
}

impl Paths<'_> {
    fn block_error(&self, lba: u64, source: DeviceError) -> BlockError {
        BlockError {
            path: device_of(&source, self.main, self.spare).to_path_buf(),
            lba,
            source,
        }
    }
}

/// Route one engine result into the summary and the caller's report. Returns whether the
/// loop goes on.
fn settle(
    summary: &mut Summary,
    paths: Paths<'_>,
    lba: u64,
    result: Result<Outcome, DeviceError>,
    report: &mut dyn FnMut(&Outcome) -> ControlFlow<()>,
) -> bool {
    let outcome = match result {
        Ok(o) => o,
        Err(e) if is_about_the_block(&e) => Outcome::Failed(paths.block_error(lba, e)),
        Err(e) => {
            summary.failed += 1;
            summary.not_tried = summary.untried();
            summary.stopped_by = Some(paths.block_error(lba, e));
            return false;
        }
    };
    match &outcome {
        Outcome::Mapped { .. } | Outcome::Unmapped { .. } => summary.changed += 1,
        Outcome::AlreadyMapped { .. } | Outcome::AlreadyOnMain { .. } => summary.unchanged += 1,
        Outcome::Failed(e) => {
            summary.failed += 1;
            summary.failed_on.get_or_insert_with(|| e.path.clone());
        }
    }
    // The caller asking to stop ends the loop like a device error: what moved is durable,
    // the rest is not tried.
    if report(&outcome).is_break() {
        summary.not_tried = summary.untried();
        summary.halted = true;
        return false;
    }
    true
}

/// Move every block of `blocks` to a spare block, copying its data. An unreadable block is
/// refused unless `zero_unreadable`. `blocks` must already be checked against the device.
/// `report` sees each block's outcome as it happens; `ControlFlow::Break` stops the loop
/// after that block.
pub fn map_blocks<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    blocks: &BlockList,
    zero_unreadable: bool,
    paths: Paths<'_>,
    report: &mut dyn FnMut(&Outcome) -> ControlFlow<()>,
) -> Summary {
    let mut summary = Summary {
        requested: blocks.len(),
        ..Summary::default()
    };
    for lba in blocks.iter() {
        let result = match device.entry(lba).and_then(|e| e.spare) {
            Some(spare) => Ok(Outcome::AlreadyMapped { lba, spare }),
            None => match device.map_block(lba, false) {
                Ok(spare) => Ok(Outcome::Mapped {
                    lba,
                    spare,
                    zeroed: false,
                }),
                Err(DeviceError::Unreadable { .. }) if zero_unreadable => {
                    device.map_block(lba, true).map(|spare| Outcome::Mapped {
                        lba,
                        spare,
                        zeroed: true,
                    })
                }
                Err(DeviceError::AlreadyRemapped { spare, .. }) => {
                    Ok(Outcome::AlreadyMapped { lba, spare })
                }
                Err(e) => Err(e),
            },
        };
        if !settle(&mut summary, paths, lba, result, report) {
            break;
        }
    }
    summary
}

/// Move every block of `blocks` back to main: copy, flush, read back and compare, then free
/// its spare block. A block whose main location still fails stays on its spare.
/// `report` as for [`map_blocks`].
pub fn unmap_blocks<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    blocks: &BlockList,
    paths: Paths<'_>,
    report: &mut dyn FnMut(&Outcome) -> ControlFlow<()>,
) -> Summary {
    let mut summary = Summary {
        requested: blocks.len(),
        ..Summary::default()
    };
    for lba in blocks.iter() {
        let result = match device.entry(lba) {
            None => Ok(Outcome::AlreadyOnMain { lba }),
            Some(entry) => match entry.spare {
                // Pending: no copy of its data exists to move back.
                None => Err(DeviceError::Pending { lba }),
                Some(spare) => device
                    .unmap_block(lba)
                    .map(|()| Outcome::Unmapped { lba, spare }),
            },
        };
        if !settle(&mut summary, paths, lba, result, report) {
            break;
        }
    }
    summary
}

/// End a map or unmap run: if anything moved, flush both devices and checkpoint (a clean
/// shutdown); if nothing moved, write nothing, so a refused command leaves both devices as
/// they were. Then turn the summary into the command's result.
pub fn finish<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    summary: Summary,
    paths: Paths<'_>,
) -> Result<(), TransferError> {
    if summary.changed > 0
        && let Err(source) = device.shutdown()
    {
        let shutdown = TransferError::Shutdown {
            path: paths.spare.to_path_buf(),
            source,
        };
        // The error that stopped the loop explains more than the failed shutdown.
        if let Some(first) = summary.stopped_by {
            tracing::error!(error = %shutdown, "clean shutdown failed too");
            return Err(TransferError::Stopped(first));
        }
        return Err(shutdown);
    }
    if let Some(e) = summary.stopped_by {
        return Err(TransferError::Stopped(e));
    }
    if summary.failed > 0 {
        return Err(TransferError::BlocksFailed {
            path: summary
                .failed_on
                .unwrap_or_else(|| paths.main.to_path_buf()),
            failed: summary.failed,
            requested: summary.requested,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_block_prefix_is_not_repeated() {
        let e = BlockError {
            path: "/m".into(),
            lba: 7,
            source: DeviceError::Pending { lba: 7 },
        };
        let text = e.to_string();
        assert_eq!(text.matches("block 7").count(), 1, "{text}");
    }
}
