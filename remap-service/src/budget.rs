//! Whether a `map` request fits the free spare blocks, decided before anything moves: a
//! request that would empty the pool half way leaves the device critical with blocks moved
//! that nobody asked to move alone.

use std::path::{Path, PathBuf};

use remap_core::{BlockBackend, RemapDevice};

use crate::blocks::BlockList;

/// A `map` request needs more spare blocks than are free. Nothing was moved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BudgetError {
    #[error("{}: {needed} blocks to move{} but only {free} spare blocks are free; nothing was moved", path.display(), in_place_note(*.in_place, *.requested))]
    NotEnoughSpares {
        /// The spare device, whose pool is short.
        path: PathBuf,
        requested: u64,
        in_place: u64,
        needed: u64,
        free: u64,
    },
}

fn in_place_note(in_place: u64, requested: u64) -> String {
    if in_place == 0 {
        String::new()
    } else {
        format!(" ({in_place} of the {requested} requested are on the spare already)")
    }
}

/// How many of `blocks` are on a spare block already (pending blocks are not: moving one
/// takes a spare block).
pub fn in_place<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    blocks: &BlockList,
) -> u64 {
    blocks
        .runs()
        .iter()
        .map(|r| {
            device
                .entries(r.first, r.last.saturating_add(1))
                .iter()
                .filter(|(_, e)| e.spare.is_some())
                .count() as u64
        })
        .sum()
}

/// Refuse a `map` of `blocks` that needs more spare blocks than are free.
pub fn check_spares<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    blocks: &BlockList,
    spare_path: &Path,
) -> Result<(), BudgetError> {
    let requested = blocks.len();
    let free = device.stats().spares_free();
    if requested <= free {
        return Ok(());
    }
    let in_place = in_place(device, blocks);
    let needed = requested.saturating_sub(in_place);
    if needed <= free {
        return Ok(());
    }
    Err(BudgetError::NotEnoughSpares {
        path: spare_path.to_path_buf(),
        requested,
        in_place,
        needed,
        free,
    })
}
