//! Which regions of the device hold any table entry: one bit per [`REGION_BLOCKS`] blocks,
//! readable without the table lock. A request whose regions are all clear takes the
//! lock-free fast path even when other parts of the disk are remapped. The bits change only
//! under the table's write lock, inside the device's generation bracket, so a request that
//! read them and then saw the generation unchanged after its I/O knows no entry appeared in
//! its range meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::table::RemapTable;

/// Blocks per region: 1 MiB of 4 KiB blocks.
pub const REGION_SHIFT: u32 = 8;
pub const REGION_BLOCKS: u64 = 1 << REGION_SHIFT;

/// One bit per region.
#[derive(Debug)]
pub struct RegionMap {
    words: Box<[AtomicU64]>,
}

impl RegionMap {
    /// A map for `blocks` blocks, bits set from `table`.
    pub fn new(blocks: u64, table: &RemapTable) -> Self {
        let regions = blocks.div_ceil(REGION_BLOCKS);
        let map = RegionMap {
            words: (0..regions.div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        };
        for (lba, _) in table.iter() {
            map.set(lba >> REGION_SHIFT, true);
        }
        map
    }

    fn set(&self, region: u64, on: bool) {
        let Some(w) = self.words.get((region / 64) as usize) else {
            return;
        };
        let bit = 1u64 << (region % 64);
        if on {
            w.fetch_or(bit, Ordering::SeqCst);
        } else {
            w.fetch_and(!bit, Ordering::SeqCst);
        }
    }

    /// Bring the bit of `lba`'s region in line with the table after a change to `lba`.
    pub fn update(&self, table: &RemapTable, lba: u64) {
        let region = lba >> REGION_SHIFT;
        self.set(region, table.any_in(region << REGION_SHIFT, REGION_BLOCKS));
    }

    /// Whether any region touching blocks `first..=last` may hold an entry.
    #[inline]
    pub fn any(&self, first: u64, last: u64) -> bool {
        let (r0, r1) = (first >> REGION_SHIFT, last >> REGION_SHIFT);
        if r1 - r0 > 128 {
            // A huge request: not worth a long scan, take the careful path.
            return true;
        }
        (r0..=r1).any(|r| {
            self.words
                .get((r / 64) as usize)
                .is_none_or(|w| w.load(Ordering::SeqCst) & (1 << (r % 64)) != 0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::Entry;

    #[test]
    fn bits_follow_the_table() {
        let mut t = RemapTable::new(100);
        t.insert(300, Entry::remapped(0, 1, 0)).unwrap();
        let m = RegionMap::new(10_000, &t);
        assert!(m.any(256, 511));
        assert!(!m.any(0, 255));
        assert!(m.any(0, 256));
        assert!(!m.any(512, 9_999));
        t.insert(5_000, Entry::pending(1, 0)).unwrap();
        m.update(&t, 5_000);
        assert!(m.any(5_000, 5_000));
        t.remove(300);
        m.update(&t, 300);
        assert!(!m.any(0, 511));
    }
}
