//! The spare pool: which spare blocks are free, used by a remapped block, or retired after
//! failing. Two bitmaps (used, retired); a block in neither is free. Allocation is
//! deterministic: the lowest free block, or the block right after a hint when that one is
//! free, so that runs of bad blocks land on runs of spare blocks.

use alloc::vec;
use alloc::vec::Vec;

use crate::table::MAX_SPARE_INDEX;

/// Where a spare block stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpareState {
    Free,
    Used,
    Retired,
}

/// Why an allocator operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpareError {
    #[error("spare pool exhausted: all {pool} spare blocks are used or retired")]
    Exhausted { pool: u64 },
    #[error("spare block {spare} is outside the pool of {pool} blocks")]
    OutOfPool { spare: u64, pool: u64 },
    #[error("spare block {spare} is {state:?}, expected {expected:?}")]
    WrongState {
        spare: u64,
        state: SpareState,
        expected: SpareState,
    },
    #[error("a spare pool of {blocks} blocks is larger than the {max} a table can address")]
    PoolTooLarge { blocks: u64, max: u64 },
}

/// The spare pool of `pool_blocks` blocks, indexed from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpareAllocator {
    pool_blocks: u64,
    used: Vec<u64>,
    retired: Vec<u64>,
    used_count: u64,
    retired_count: u64,
    /// No free block has an index below this.
    low_free: u64,
}

fn bit(map: &[u64], i: u64) -> bool {
    map[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set(map: &mut [u64], i: u64, on: bool) {
    let w = &mut map[(i / 64) as usize];
    if on {
        *w |= 1 << (i % 64);
    } else {
        *w &= !(1 << (i % 64));
    }
}

impl SpareAllocator {
    /// A pool of `pool_blocks` free blocks.
    pub fn new(pool_blocks: u64) -> Result<Self, SpareError> {
        if pool_blocks > MAX_SPARE_INDEX + 1 {
            return Err(SpareError::PoolTooLarge {
                blocks: pool_blocks,
                max: MAX_SPARE_INDEX + 1,
            });
        }
        let words = pool_blocks.div_ceil(64) as usize;
        Ok(SpareAllocator {
            pool_blocks,
            used: vec![0; words],
            retired: vec![0; words],
            used_count: 0,
            retired_count: 0,
            low_free: 0,
        })
    }

    pub fn pool_blocks(&self) -> u64 {
        self.pool_blocks
    }

    pub fn used_count(&self) -> u64 {
        self.used_count
    }

    pub fn retired_count(&self) -> u64 {
        self.retired_count
    }

    pub fn free_count(&self) -> u64 {
        self.pool_blocks - self.used_count - self.retired_count
    }

    fn check(&self, spare: u64) -> Result<(), SpareError> {
        if spare >= self.pool_blocks {
            return Err(SpareError::OutOfPool {
                spare,
                pool: self.pool_blocks,
            });
        }
        Ok(())
    }

    pub fn state(&self, spare: u64) -> Result<SpareState, SpareError> {
        self.check(spare)?;
        Ok(if bit(&self.used, spare) {
            SpareState::Used
        } else if bit(&self.retired, spare) {
            SpareState::Retired
        } else {
            SpareState::Free
        })
    }

    fn expect(&self, spare: u64, expected: SpareState) -> Result<(), SpareError> {
        let state = self.state(spare)?;
        if state != expected {
            return Err(SpareError::WrongState {
                spare,
                state,
                expected,
            });
        }
        Ok(())
    }

    /// The block [`allocate_after`](Self::allocate_after) would take, without taking it.
    pub fn next_free(&self, after: Option<u64>) -> Result<u64, SpareError> {
        if let Some(next) = after.and_then(|p| p.checked_add(1))
            && self.state(next) == Ok(SpareState::Free)
        {
            return Ok(next);
        }
        let mut w = (self.low_free / 64) as usize;
        while w < self.used.len() {
            let taken = self.used[w] | self.retired[w];
            if taken != u64::MAX {
                let i = w as u64 * 64 + u64::from((!taken).trailing_zeros());
                if i < self.pool_blocks {
                    return Ok(i);
                }
                break;
            }
            w += 1;
        }
        Err(SpareError::Exhausted {
            pool: self.pool_blocks,
        })
    }

    /// Where a new run of remapped blocks should start: the lowest free block with `gap`
    /// free blocks after it and (unless it is block 0) `gap` free blocks before it, so the run
    /// can grow without meeting another. Without such room, the lowest free block.
    pub fn next_free_for_run(&self, gap: u64) -> Result<u64, SpareError> {
        let lowest = self.next_free(None)?;
        let taken = |i: u64| bit(&self.used, i) || bit(&self.retired, i);
        // Walk maximal free extents [start, end) from the lowest free block.
        let mut i = lowest;
        while i < self.pool_blocks {
            if taken(i) {
                // Skip whole words that are fully taken.
                let w = (i / 64) as usize;
                if i % 64 == 0 && (self.used[w] | self.retired[w]) == u64::MAX {
                    i += 64;
                } else {
                    i += 1;
                }
                continue;
            }
            let start = i;
            while i < self.pool_blocks && !taken(i) {
                i += 1;
            }
            let end = i;
            let candidate = if start == 0 { 0 } else { start + gap };
            if candidate < end && end - candidate >= gap {
                return Ok(candidate);
            }
        }
        Ok(lowest)
    }

    /// Take the lowest free block.
    pub fn allocate(&mut self) -> Result<u64, SpareError> {
        let i = self.next_free(None)?;
        self.take(i);
        // Every block below `i` is taken.
        self.low_free = i + 1;
        Ok(i)
    }

    /// Take the block right after `previous` if it is free (keeping a run of remapped blocks
    /// on a run of spare blocks), else the lowest free block.
    pub fn allocate_after(&mut self, previous: u64) -> Result<u64, SpareError> {
        let i = self.next_free(Some(previous))?;
        self.take(i);
        Ok(i)
    }

    fn take(&mut self, spare: u64) {
        set(&mut self.used, spare, true);
        self.used_count += 1;
        if spare == self.low_free {
            self.low_free += 1;
        }
    }

    /// Mark a free block used (replaying a persisted remap).
    pub fn mark_used(&mut self, spare: u64) -> Result<(), SpareError> {
        self.expect(spare, SpareState::Free)?;
        self.take(spare);
        Ok(())
    }

    /// Return a used block to the pool.
    pub fn free(&mut self, spare: u64) -> Result<(), SpareError> {
        self.expect(spare, SpareState::Used)?;
        set(&mut self.used, spare, false);
        self.used_count -= 1;
        self.low_free = self.low_free.min(spare);
        Ok(())
    }

    /// Take a used or free block out of service for good. Retiring a retired block is a
    /// no-op, so replaying a record twice is harmless.
    pub fn retire(&mut self, spare: u64) -> Result<(), SpareError> {
        match self.state(spare)? {
            SpareState::Retired => return Ok(()),
            SpareState::Used => {
                set(&mut self.used, spare, false);
                self.used_count -= 1;
            }
            SpareState::Free => {}
        }
        set(&mut self.retired, spare, true);
        self.retired_count += 1;
        Ok(())
    }

    /// Retired blocks, ascending.
    pub fn retired(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.pool_blocks).filter(|&i| bit(&self.retired, i))
    }

    /// free ∪ used ∪ retired = pool, pairwise disjoint, counts right, hint right.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        let (mut used, mut retired) = (0u64, 0u64);
        for (w, (&u, &r)) in self.used.iter().zip(&self.retired).enumerate() {
            if u & r != 0 {
                return Err("a block is both used and retired");
            }
            let base = w as u64 * 64;
            let valid = if self.pool_blocks - base >= 64 {
                u64::MAX
            } else {
                (1u64 << (self.pool_blocks - base)) - 1
            };
            if (u | r) & !valid != 0 {
                return Err("a block beyond the pool is marked");
            }
            used += u64::from(u.count_ones());
            retired += u64::from(r.count_ones());
        }
        if used != self.used_count || retired != self.retired_count {
            return Err("counts out of sync with bitmaps");
        }
        if (0..self.low_free.min(self.pool_blocks))
            .any(|i| !bit(&self.used, i) && !bit(&self.retired, i))
        {
            return Err("a free block lies below the low-free hint");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_first_and_reuses_freed() {
        let mut a = SpareAllocator::new(130).unwrap();
        for want in 0..70 {
            assert_eq!(a.allocate().unwrap(), want);
        }
        a.free(3).unwrap();
        a.retire(5).unwrap();
        assert_eq!(a.allocate().unwrap(), 3);
        assert_eq!(a.allocate().unwrap(), 70);
        assert_eq!(a.state(5).unwrap(), SpareState::Retired);
        a.check_invariants().unwrap();
        assert_eq!(a.used_count() + a.retired_count() + a.free_count(), 130);
    }

    #[test]
    fn exhaustion_is_typed_and_changes_nothing() {
        let mut a = SpareAllocator::new(3).unwrap();
        a.allocate().unwrap();
        a.allocate().unwrap();
        a.retire(2).unwrap();
        let before = a.clone();
        assert_eq!(a.allocate(), Err(SpareError::Exhausted { pool: 3 }));
        assert_eq!(a, before);
        let mut empty = SpareAllocator::new(0).unwrap();
        assert_eq!(empty.allocate(), Err(SpareError::Exhausted { pool: 0 }));
    }

    #[test]
    fn allocate_after_keeps_runs_contiguous() {
        let mut a = SpareAllocator::new(10).unwrap();
        a.mark_used(4).unwrap();
        assert_eq!(a.allocate_after(4).unwrap(), 5);
        assert_eq!(a.allocate_after(5).unwrap(), 6);
        // 7 taken: falls back to the lowest free block.
        a.mark_used(8).unwrap();
        assert_eq!(a.allocate_after(7).unwrap(), 0);
        assert_eq!(a.allocate_after(9).unwrap(), 1);
        a.check_invariants().unwrap();
    }

    #[test]
    fn new_runs_start_with_room_to_grow() {
        let mut a = SpareAllocator::new(1000).unwrap();
        // Empty pool: a run starts at 0.
        assert_eq!(a.next_free_for_run(64).unwrap(), 0);
        a.mark_used(0).unwrap();
        // The next run keeps 64 blocks clear after the first one's block.
        assert_eq!(a.next_free_for_run(64).unwrap(), 65);
        a.mark_used(65).unwrap();
        assert_eq!(a.next_free_for_run(64).unwrap(), 130);
        // No room anywhere: the lowest free block.
        let mut small = SpareAllocator::new(10).unwrap();
        small.mark_used(0).unwrap();
        assert_eq!(small.next_free_for_run(64).unwrap(), 1);
        small.check_invariants().unwrap();
    }

    #[test]
    fn wrong_state_transitions_are_refused() {
        let mut a = SpareAllocator::new(4).unwrap();
        assert!(matches!(a.free(1), Err(SpareError::WrongState { .. })));
        a.mark_used(1).unwrap();
        assert!(matches!(a.mark_used(1), Err(SpareError::WrongState { .. })));
        a.retire(1).unwrap();
        a.retire(1).unwrap();
        assert!(matches!(a.mark_used(1), Err(SpareError::WrongState { .. })));
        assert!(matches!(a.state(4), Err(SpareError::OutOfPool { .. })));
        a.check_invariants().unwrap();
    }
}
