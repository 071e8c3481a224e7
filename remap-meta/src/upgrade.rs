//! Upgrading a spare from format version 1 to version 2, on request only: an open never
//! changes a spare's version (docs/format.md, "Versions").
//!
//! Version 2 keeps a third superblock copy in the last 4 KiB of the spare and carries the
//! lifetime counters in every journal block. A version 1 spare's pool may reach into those
//! last 4 KiB; the upgrade then gives up the pool blocks there, which must be free.

use remap_core::BlockBackend;
use remap_core::spare::SpareState;

use crate::counters::Counters;
use crate::io::BackendIo;
use crate::journal::StateView;
use crate::layout::tail_superblock_offset;
use crate::open::MetaError;
use crate::recovery::recover;
use crate::superblock::VERSION;

/// What [`upgrade`] did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UpgradeReport {
    pub from_version: u32,
    pub to_version: u32,
    pub pool_blocks_before: u64,
    pub pool_blocks_after: u64,
    /// Where the tail superblock copy now lies.
    pub tail_offset: u64,
    /// Nothing was written: the spare already had this build's version.
    pub unchanged: bool,
}

/// Upgrade the spare to this build's format version. Recovers it first (refusing, with
/// nothing written, whatever a normal open refuses), then checkpoints the state so the
/// journal restarts empty, then writes the new superblock to every copy, the copy recovery
/// used last: a crash at any point leaves either the old version or the new one, complete.
pub fn upgrade<S: BlockBackend + ?Sized>(spare: &S) -> Result<UpgradeReport, MetaError> {
    let mut io = BackendIo(spare);
    let rec = recover(&mut io, spare.size_bytes())?;
    let sb = rec.superblock;
    let g = sb.geometry;
    let refuse = |why: String| Err(MetaError::CannotUpgrade(why));
    let Some(tail) = tail_superblock_offset(g.spare_size) else {
        return refuse("the spare has no room for a tail superblock copy".into());
    };
    if sb.version >= VERSION {
        return Ok(UpgradeReport {
            from_version: sb.version,
            to_version: sb.version,
            pool_blocks_before: g.pool_blocks,
            pool_blocks_after: g.pool_blocks,
            tail_offset: tail,
            unchanged: true,
        });
    }
    // The pool ends before the tail copy: give up the blocks in the way, if they are free.
    let block = g.block_size.bytes_u64();
    let room = tail.saturating_sub(g.pool_offset) / block;
    let pool_blocks = g.pool_blocks.min(room);
    if pool_blocks == 0 {
        return refuse("the spare pool would be empty".into());
    }
    for spare_index in pool_blocks..g.pool_blocks {
        match rec.spares.state(spare_index) {
            Ok(SpareState::Free) => {}
            Ok(state) => {
                return refuse(format!(
                    "spare block {spare_index} lies where the tail superblock copy goes and is {state:?}; move its block elsewhere first (`remap unmap`)"
                ));
            }
            Err(e) => return refuse(e.to_string()),
        }
    }
    let mut journal = rec.journal;
    let counters: Counters = rec.counters;
    let view = StateView {
        table: &rec.table,
        spares: &rec.spares,
        counters: &counters,
    };
    journal
        .checkpoint(&mut io, &view)
        .map_err(MetaError::from_commit)?;
    journal
        .update_superblock(&mut io, |s| {
            s.version = VERSION;
            s.geometry.pool_blocks = pool_blocks;
        })
        .map_err(MetaError::from_commit)?;
    // Pair assertion: it must now recover as the new version with the same table.
    let back = recover(&mut io, spare.size_bytes())?;
    if back.superblock.version != VERSION
        || back.table.iter().ne(rec.table.iter())
        || back.report.superblock_tail.is_err()
    {
        return refuse("the upgraded spare does not read back as written".into());
    }
    Ok(UpgradeReport {
        from_version: sb.version,
        to_version: VERSION,
        pool_blocks_before: g.pool_blocks,
        pool_blocks_after: pool_blocks,
        tail_offset: tail,
        unchanged: false,
    })
}
