//! Where everything lies on the spare device.
//!
//! ```text
//! 0        superblock A            4 KiB
//! 4096     superblock B            4 KiB
//! 8192     journal ring, copy 0    journal_blocks × 4 KiB
//!          journal ring, copy 1    journal_blocks × 4 KiB (the same blocks again)
//!          checkpoint area 0       4 KiB header + entries + retired list, 4 KiB aligned
//!          checkpoint area 1       same size
//!          (padding to the pool alignment: max(block size, 4 KiB))
//! pool     spare block pool        pool_blocks × block size
//! ```

use remap_core::BlockSize;

use crate::META_BLOCK;
use crate::error::{FormatError, Region};

pub const SUPERBLOCK_A: u64 = 0;
pub const SUPERBLOCK_B: u64 = META_BLOCK as u64;
pub const JOURNAL_OFFSET: u64 = 2 * META_BLOCK as u64;
/// Bytes of one table entry in a checkpoint.
pub const ENTRY_BYTES: u64 = 24;
/// Bytes of one retired spare index in a checkpoint.
pub const RETIRED_BYTES: u64 = 4;
pub const MIN_JOURNAL_BLOCKS: u32 = 4;
pub const MAX_JOURNAL_BLOCKS: u32 = 1 << 20;
/// The largest table a checkpoint may describe, and the largest spare pool (spare indices
/// are 32-bit on disk, one value reserved for "none").
pub const MAX_TABLE_CAPACITY: u64 = u32::MAX as u64 - 1;
pub const MAX_POOL_BLOCKS: u64 = u32::MAX as u64 - 1;

const META: u64 = META_BLOCK as u64;

/// Where the tail superblock copy of a spare device of `spare_size` bytes lies: its last
/// whole 4 KiB block (as GPT's backup header and md's 1.0 superblock sit at the end).
pub fn tail_superblock_offset(spare_size: u64) -> Option<u64> {
    (spare_size / META).checked_sub(1).map(|b| b * META)
}

/// Where each superblock copy of a spare of format `version` lies, in the order an update
/// writes them (the trusted copy is then moved last; see
/// [`crate::journal::write_superblocks`]).
pub fn superblock_copies(version: u32, geometry: &Geometry) -> alloc::vec::Vec<(u64, Region)> {
    let mut v = alloc::vec![
        (SUPERBLOCK_A, Region::SuperblockA),
        (SUPERBLOCK_B, Region::SuperblockB),
    ];
    if version >= 2
        && let Some(tail) = tail_superblock_offset(geometry.spare_size)
    {
        v.push((tail, Region::SuperblockTail));
    }
    v
}

fn align_up(x: u64, to: u64) -> Option<u64> {
    x.checked_add(to - 1).map(|v| v / to * to)
}

/// The regions of a formatted spare device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Geometry {
    pub block_size: BlockSize,
    /// Size of the main device the spare was formatted for.
    pub main_size: u64,
    /// Size of the spare device when formatted; the device must not be smaller.
    pub spare_size: u64,
    pub journal_blocks: u32,
    pub checkpoint_offsets: [u64; 2],
    pub checkpoint_area_bytes: u64,
    pub pool_offset: u64,
    pub pool_blocks: u64,
    pub table_capacity: u64,
}

/// Why a spare device cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    #[error(
        "spare device of {spare_size} bytes is too small: it needs at least {needed} bytes for metadata and one spare block"
    )]
    SpareTooSmall { spare_size: u64, needed: u64 },
    #[error(
        "{pool_blocks} spare blocks do not fit on a spare device of {spare_size} bytes (at most {fits})"
    )]
    PoolTooLarge {
        pool_blocks: u64,
        spare_size: u64,
        fits: u64,
    },
    #[error("journal of {0} blocks is outside 4..=1048576")]
    JournalSize(u32),
    #[error("main device is empty")]
    EmptyMain,
}

impl Geometry {
    /// Table capacity for a pool: every spare block, plus as many pending blocks (at least
    /// 1024), so a disk with many unreadable blocks still fits.
    pub fn capacity_for(pool_blocks: u64) -> u64 {
        pool_blocks
            .saturating_add(pool_blocks.max(1024))
            .min(MAX_TABLE_CAPACITY)
    }

    /// Size of one checkpoint area for a table of `capacity` entries and a pool of
    /// `pool_blocks` (all of which could be retired).
    pub fn area_bytes_for(capacity: u64, pool_blocks: u64) -> Option<u64> {
        let payload = capacity
            .checked_mul(ENTRY_BYTES)?
            .checked_add(pool_blocks.checked_mul(RETIRED_BYTES)?)?;
        align_up(payload, META)?.checked_add(META)
    }

    /// The smallest spare device that holds the metadata, one spare block and the tail
    /// superblock copy, for this main device, block size and journal.
    pub fn min_spare_size(
        main_size: u64,
        block_size: BlockSize,
        journal_blocks: u32,
    ) -> Option<u64> {
        Self::smallest_for_pool(main_size, block_size, journal_blocks, 1).map(|g| g.spare_size)
    }

    /// The layout of the smallest spare device whose pool is exactly `pool_blocks` blocks:
    /// the metadata, the pool, and the tail superblock copy after it.
    pub fn smallest_for_pool(
        main_size: u64,
        block_size: BlockSize,
        journal_blocks: u32,
        pool_blocks: u64,
    ) -> Option<Geometry> {
        let g = Self::plan(
            u64::MAX / 4,
            main_size,
            block_size,
            journal_blocks,
            Some(pool_blocks),
        )
        .ok()?;
        let end = pool_blocks
            .checked_mul(block_size.bytes_u64())?
            .checked_add(g.pool_offset)?;
        let spare_size = align_up(end, META)?.checked_add(META)?;
        Some(Geometry { spare_size, ..g })
    }

    /// Default journal size for a spare device: 1/64 of it, between 64 and 1024 blocks.
    pub fn default_journal_blocks(spare_size: u64) -> u32 {
        (spare_size / 64 / META).clamp(64, 1024) as u32
    }

    /// Lay out a spare device of `spare_size` bytes for a main device of `main_size` bytes.
    /// With `pool_blocks` `None`, the pool takes all the room there is.
    pub fn plan(
        spare_size: u64,
        main_size: u64,
        block_size: BlockSize,
        journal_blocks: u32,
        pool_blocks: Option<u64>,
    ) -> Result<Geometry, PlanError> {
        if !(MIN_JOURNAL_BLOCKS..=MAX_JOURNAL_BLOCKS).contains(&journal_blocks) {
            return Err(PlanError::JournalSize(journal_blocks));
        }
        if main_size == 0 {
            return Err(PlanError::EmptyMain);
        }
        // The layout for a pool of `pool` blocks, whether or not it fits.
        let layout = |pool: u64| -> Option<Geometry> {
            let capacity = Self::capacity_for(pool);
            let area = Self::area_bytes_for(capacity, pool)?;
            let ck0 = JOURNAL_OFFSET.checked_add(2 * u64::from(journal_blocks) * META)?;
            let ck1 = ck0.checked_add(area)?;
            let meta_end = ck1.checked_add(area)?;
            let pool_offset = align_up(meta_end, block_size.bytes_u64().max(META))?;
            Some(Geometry {
                block_size,
                main_size,
                spare_size,
                journal_blocks,
                checkpoint_offsets: [ck0, ck1],
                checkpoint_area_bytes: area,
                pool_offset,
                pool_blocks: pool,
                table_capacity: capacity,
            })
        };
        let end = |g: &Geometry| {
            g.pool_blocks
                .checked_mul(block_size.bytes_u64())
                .and_then(|b| b.checked_add(g.pool_offset))
        };
        // The pool ends before the tail superblock copy.
        let limit = tail_superblock_offset(spare_size).unwrap_or(0);
        let build = |pool: u64| layout(pool).filter(|g| end(g).is_some_and(|e| e <= limit));
        // The largest pool that fits: monotone, so a binary search.
        let (mut lo, mut hi) = (
            0u64,
            (spare_size / block_size.bytes_u64()).min(MAX_POOL_BLOCKS),
        );
        if build(1).is_none() {
            let needed =
                Self::min_spare_size(main_size, block_size, journal_blocks).unwrap_or(u64::MAX);
            return Err(PlanError::SpareTooSmall { spare_size, needed });
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if build(mid).is_some() {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        let fits = lo;
        match pool_blocks {
            None => build(fits).ok_or(PlanError::SpareTooSmall {
                spare_size,
                needed: 0,
            }),
            Some(p) if p == 0 || p > fits => Err(PlanError::PoolTooLarge {
                pool_blocks: p,
                spare_size,
                fits,
            }),
            Some(p) => build(p).ok_or(PlanError::PoolTooLarge {
                pool_blocks: p,
                spare_size,
                fits,
            }),
        }
    }

    /// Whether the spare pool ends before the tail superblock copy (format version 2).
    pub fn leaves_room_for_tail(&self) -> bool {
        let pool_end = self
            .pool_blocks
            .checked_mul(self.block_size.bytes_u64())
            .and_then(|b| b.checked_add(self.pool_offset));
        matches!(
            (pool_end, tail_superblock_offset(self.spare_size)),
            (Some(end), Some(tail)) if end <= tail
        )
    }

    /// Byte offset of copy `copy` (0 or 1) of journal block `position`. Every journal
    /// block is written twice, so one corrupt copy never truncates the log.
    pub fn journal_block_offset(&self, copy: u8, position: u32) -> u64 {
        JOURNAL_OFFSET
            + u64::from(copy & 1) * u64::from(self.journal_blocks) * META
            + u64::from(position) * META
    }

    /// Logical blocks of the main device (the last may be partial).
    pub fn main_blocks(&self) -> u64 {
        self.block_size.blocks_for(self.main_size)
    }

    /// Check a geometry read from disk: every region in order, aligned, inside the spare
    /// device, and big enough for what it must hold. `region` names the superblock copy.
    pub fn validate(&self, region: Region) -> Result<(), FormatError> {
        let bad = |why| Err(FormatError::Geometry { region, why });
        if !(MIN_JOURNAL_BLOCKS..=MAX_JOURNAL_BLOCKS).contains(&self.journal_blocks) {
            return bad("journal size out of range");
        }
        if self.main_size == 0 {
            return bad("main device size is zero");
        }
        if self.pool_blocks == 0 || self.pool_blocks > MAX_POOL_BLOCKS {
            return bad("spare pool size out of range");
        }
        if self.table_capacity < self.pool_blocks || self.table_capacity > MAX_TABLE_CAPACITY {
            return bad("table capacity out of range");
        }
        let journal_end = JOURNAL_OFFSET + 2 * u64::from(self.journal_blocks) * META;
        let [ck0, ck1] = self.checkpoint_offsets;
        if ck0 != journal_end {
            return bad("checkpoint area 0 does not follow the journal");
        }
        match Self::area_bytes_for(self.table_capacity, self.pool_blocks) {
            Some(need) if self.checkpoint_area_bytes >= need => {}
            _ => return bad("checkpoint areas too small for the table capacity"),
        }
        if !self.checkpoint_area_bytes.is_multiple_of(META) {
            return bad("checkpoint area size not a multiple of 4096");
        }
        if ck0.checked_add(self.checkpoint_area_bytes) != Some(ck1) {
            return bad("checkpoint area 1 does not follow area 0");
        }
        let align = self.block_size.bytes_u64().max(META);
        let meta_end = ck1.checked_add(self.checkpoint_area_bytes);
        if meta_end.is_none_or(|e| self.pool_offset < e) || !self.pool_offset.is_multiple_of(align)
        {
            return bad("spare pool overlaps metadata or is misaligned");
        }
        let pool_end = self
            .pool_blocks
            .checked_mul(self.block_size.bytes_u64())
            .and_then(|b| b.checked_add(self.pool_offset));
        if pool_end.is_none_or(|e| e > self.spare_size) {
            return bad("spare pool extends past the spare device");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bs(n: u64) -> BlockSize {
        BlockSize::new(n).unwrap()
    }

    #[test]
    fn plan_fills_the_spare_and_validates() {
        for (spare, block) in [(64u64 << 20, 4096u64), (16 << 20, 512), (256 << 20, 65536)] {
            let g = Geometry::plan(spare, 1 << 30, bs(block), 64, None).unwrap();
            g.validate(Region::SuperblockA).unwrap();
            let end = g.pool_offset + g.pool_blocks * block;
            assert!(end + 4096 <= spare, "the tail copy has its 4 KiB");
            assert!(g.leaves_room_for_tail());
            // One more block would not fit.
            assert!(
                Geometry::plan(spare, 1 << 30, bs(block), 64, Some(g.pool_blocks + 1)).is_err()
            );
            assert_eq!(g.table_capacity, Geometry::capacity_for(g.pool_blocks));
        }
    }

    #[test]
    fn too_small_names_the_size_needed() {
        let err = Geometry::plan(8192, 1 << 20, bs(4096), 4, None).unwrap_err();
        let PlanError::SpareTooSmall { needed, .. } = err else {
            panic!("{err}");
        };
        assert!(needed > 8192 && needed < 1 << 20, "{needed}");
        // Exactly that much is enough, one byte less is not.
        assert_eq!(
            Geometry::plan(needed, 1 << 20, bs(4096), 4, None)
                .unwrap()
                .pool_blocks,
            1
        );
        assert!(Geometry::plan(needed - 1, 1 << 20, bs(4096), 4, None).is_err());
    }

    #[test]
    fn too_small_and_too_many_are_refused() {
        assert!(matches!(
            Geometry::plan(8192, 1 << 20, bs(4096), 4, None),
            Err(PlanError::SpareTooSmall { .. })
        ));
        assert!(matches!(
            Geometry::plan(1 << 20, 1 << 20, bs(4096), 4, Some(1 << 30)),
            Err(PlanError::PoolTooLarge { .. })
        ));
        assert!(Geometry::plan(1 << 20, 0, bs(4096), 4, None).is_err());
        assert!(Geometry::plan(1 << 20, 1, bs(4096), 3, None).is_err());
    }

    #[test]
    fn validate_catches_overlaps() {
        let g = Geometry::plan(32 << 20, 1 << 30, bs(4096), 64, None).unwrap();
        let mut bad = g;
        bad.pool_offset -= 4096;
        assert!(bad.validate(Region::SuperblockA).is_err());
        let mut bad = g;
        bad.pool_blocks += 1_000_000;
        assert!(bad.validate(Region::SuperblockA).is_err());
        let mut bad = g;
        bad.table_capacity = u64::MAX;
        assert!(bad.validate(Region::SuperblockA).is_err());
    }
}
