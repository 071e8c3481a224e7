//! The remap table: which logical blocks no longer live on the main device.
//!
//! An entry exists only for a block that is remapped to a spare block, or pending (its current
//! location could not be read and no good copy exists). Every other block lives on main. The
//! table is a sorted map from logical block address to a 12-byte value, stored as a short
//! sorted array of sorted chunks: lookups are two binary searches over contiguous memory, a
//! range with no entry is answered by one search, and 1,000,000 entries take about 30 MB.

use alloc::vec::Vec;
use core::fmt;

/// Entries per chunk. A chunk's keys span 4 KiB, one page, so the inner search stays within it.
const CHUNK_CAPACITY: usize = 512;

/// Marks a value without a spare block.
const NO_SPARE: u32 = u32::MAX;

/// The largest spare block index a table can hold.
pub const MAX_SPARE_INDEX: u64 = (NO_SPARE - 1) as u64;

/// State bits of an entry.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct EntryFlags(u16);

impl EntryFlags {
    /// The block lives on its spare block.
    pub const REMAPPED: EntryFlags = EntryFlags(1);
    /// The block's current location failed a read; reads fail until a write moves it.
    pub const PENDING: EntryFlags = EntryFlags(1 << 1);
    /// The block had a spare that failed and was retired; main holds stale data, so the
    /// block can only be restored by a write that covers it whole.
    pub const SPARE_RETIRED: EntryFlags = EntryFlags(1 << 2);

    const ALL: u16 = 0b111;

    pub const fn empty() -> Self {
        EntryFlags(0)
    }

    pub const fn bits(self) -> u16 {
        self.0
    }

    /// Flags from stored bits; unknown bits are refused.
    pub const fn from_bits(bits: u16) -> Option<Self> {
        if bits & !Self::ALL == 0 {
            Some(EntryFlags(bits))
        } else {
            None
        }
    }

    pub const fn contains(self, other: EntryFlags) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn union(self, other: EntryFlags) -> Self {
        EntryFlags(self.0 | other.0)
    }

    pub const fn difference(self, other: EntryFlags) -> Self {
        EntryFlags(self.0 & !other.0)
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for EntryFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (flag, name) in [
            (Self::REMAPPED, "REMAPPED"),
            (Self::PENDING, "PENDING"),
            (Self::SPARE_RETIRED, "SPARE_RETIRED"),
        ] {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if first {
            f.write_str("(empty)")?;
        }
        Ok(())
    }
}

/// One table entry as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct Entry {
    /// Index of the spare block in the spare pool, if the block is remapped.
    pub spare: Option<u64>,
    pub flags: EntryFlags,
    /// Errors seen on this block (read failures, write failures, spare failures).
    pub error_count: u16,
    /// When the entry last changed, in seconds of the device's clock.
    pub time_s: u32,
}

impl Entry {
    /// A block moved to `spare`.
    pub fn remapped(spare: u64, error_count: u16, time_s: u32) -> Self {
        Entry {
            spare: Some(spare),
            flags: EntryFlags::REMAPPED,
            error_count,
            time_s,
        }
    }

    /// A block that failed a read and has no good copy anywhere.
    pub fn pending(error_count: u16, time_s: u32) -> Self {
        Entry {
            spare: None,
            flags: EntryFlags::PENDING,
            error_count,
            time_s,
        }
    }

    pub fn is_remapped(&self) -> bool {
        self.flags.contains(EntryFlags::REMAPPED)
    }

    pub fn is_pending(&self) -> bool {
        self.flags.contains(EntryFlags::PENDING)
    }

    /// Whether the main device still holds this block's latest data (so a partial write can
    /// merge with it). False once a spare held newer data and was lost.
    pub fn main_is_current(&self) -> bool {
        !self.flags.contains(EntryFlags::SPARE_RETIRED) && !self.is_remapped()
    }
}

/// Why a table change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    #[error("remap table is full ({capacity} entries); cannot add block {lba}")]
    Full { lba: u64, capacity: usize },
    #[error("block {lba}: spare index {spare} is beyond the largest a table can hold")]
    SpareOutOfRange { lba: u64, spare: u64 },
    #[error("block {lba}: inconsistent entry (flags {flags:?}, spare {spare:?})")]
    Inconsistent {
        lba: u64,
        flags: EntryFlags,
        spare: Option<u64>,
    },
}

/// Packed value: 12 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Value {
    spare: u32,
    time_s: u32,
    error_count: u16,
    flags: u16,
}

impl Value {
    fn pack(lba: u64, e: &Entry) -> Result<Self, TableError> {
        let spare = match e.spare {
            Some(s) if s > MAX_SPARE_INDEX => {
                return Err(TableError::SpareOutOfRange { lba, spare: s });
            }
            Some(s) => s as u32,
            None => NO_SPARE,
        };
        // A remapped block has a spare and nothing else does; pending and remapped exclude
        // each other (a failed spare is retired and the block becomes pending without one).
        let consistent = e.is_remapped() == e.spare.is_some()
            && !(e.is_remapped() && e.is_pending())
            && !e.flags.is_empty();
        if !consistent {
            return Err(TableError::Inconsistent {
                lba,
                flags: e.flags,
                spare: e.spare,
            });
        }
        Ok(Value {
            spare,
            time_s: e.time_s,
            error_count: e.error_count,
            flags: e.flags.bits(),
        })
    }

    fn unpack(self) -> Entry {
        Entry {
            spare: (self.spare != NO_SPARE).then_some(u64::from(self.spare)),
            flags: EntryFlags(self.flags),
            error_count: self.error_count,
            time_s: self.time_s,
        }
    }
}

/// Every `SUMMARY_STRIDE`th key of a chunk is copied into its summary: a lookup searches the
/// summary (two cache lines, next to the chunk's header) and then 32 keys (four lines),
/// instead of binary-searching 4 KiB of keys with a cache miss at most steps.
const SUMMARY_STRIDE: usize = 32;
const SUMMARY: usize = CHUNK_CAPACITY / SUMMARY_STRIDE;

#[derive(Clone, Debug)]
struct Chunk {
    keys: Vec<u64>,
    values: Vec<Value>,
    summary: [u64; SUMMARY],
}

impl Chunk {
    fn new() -> Self {
        Chunk {
            keys: Vec::with_capacity(CHUNK_CAPACITY),
            values: Vec::with_capacity(CHUNK_CAPACITY),
            summary: [u64::MAX; SUMMARY],
        }
    }

    /// Recompute the summary after the keys changed.
    fn refresh(&mut self) {
        for (i, s) in self.summary.iter_mut().enumerate() {
            *s = self
                .keys
                .get(i * SUMMARY_STRIDE)
                .copied()
                .unwrap_or(u64::MAX);
        }
    }

    /// `self.keys.binary_search(&lba)`, through the summary.
    #[inline]
    fn search(&self, lba: u64) -> Result<usize, usize> {
        let len = self.keys.len();
        let sampled = len.div_ceil(SUMMARY_STRIDE);
        let j = self.summary[..sampled].partition_point(|&k| k <= lba);
        if j == 0 {
            return Err(0);
        }
        let lo = (j - 1) * SUMMARY_STRIDE;
        let hi = (j * SUMMARY_STRIDE).min(len);
        match self.keys[lo..hi].binary_search(&lba) {
            Ok(i) => Ok(lo + i),
            Err(i) => Err(lo + i),
        }
    }
}

/// The remap table. Not synchronised: the device guards it with a lock.
#[derive(Clone)]
pub struct RemapTable {
    /// First key of each chunk, for the outer search.
    first_keys: Vec<u64>,
    chunks: Vec<Chunk>,
    len: usize,
    capacity: usize,
    remapped: usize,
    pending: usize,
}

impl fmt::Debug for RemapTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemapTable")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("remapped", &self.remapped)
            .field("pending", &self.pending)
            .finish()
    }
}

impl RemapTable {
    /// An empty table that refuses to grow past `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        RemapTable {
            first_keys: Vec::new(),
            chunks: Vec::new(),
            len: 0,
            capacity,
            remapped: 0,
            pending: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries whose block lives on a spare.
    pub fn remapped_count(&self) -> usize {
        self.remapped
    }

    /// Entries whose block is pending.
    pub fn pending_count(&self) -> usize {
        self.pending
    }

    /// Index of the chunk that holds, or would hold, `lba`.
    #[inline]
    fn chunk_for(&self, lba: u64) -> usize {
        self.first_keys
            .partition_point(|&k| k <= lba)
            .saturating_sub(1)
    }

    /// The entry for `lba`, if any.
    #[inline]
    pub fn get(&self, lba: u64) -> Option<Entry> {
        if self.len == 0 {
            return None;
        }
        let chunk = &self.chunks[self.chunk_for(lba)];
        chunk.search(lba).ok().map(|i| chunk.values[i].unpack())
    }

    /// Whether any block in `[lba, lba + blocks)` has an entry. The fast path of every I/O.
    #[inline]
    pub fn any_in(&self, lba: u64, blocks: u64) -> bool {
        if self.len == 0 || blocks == 0 {
            return false;
        }
        match self.first_at_or_after(lba) {
            Some((key, _)) => key - lba < blocks,
            None => false,
        }
    }

    /// Position (chunk, index) of the first entry with key `>= lba`.
    fn position_at_or_after(&self, lba: u64) -> Option<(usize, usize)> {
        if self.len == 0 {
            return None;
        }
        let mut c = self.chunk_for(lba);
        let mut i = match self.chunks[c].search(lba) {
            Ok(i) | Err(i) => i,
        };
        if i == self.chunks[c].keys.len() {
            c += 1;
            i = 0;
            if c == self.chunks.len() {
                return None;
            }
        }
        Some((c, i))
    }

    fn first_at_or_after(&self, lba: u64) -> Option<(u64, Entry)> {
        let (c, i) = self.position_at_or_after(lba)?;
        Some((self.chunks[c].keys[i], self.chunks[c].values[i].unpack()))
    }

    fn count(&mut self, e: &Entry, add: bool) {
        let delta = |n: &mut usize| {
            if add { *n += 1 } else { *n -= 1 }
        };
        if e.is_remapped() {
            delta(&mut self.remapped);
        }
        if e.is_pending() {
            delta(&mut self.pending);
        }
    }

    /// Insert or replace the entry for `lba`; returns the previous entry.
    pub fn insert(&mut self, lba: u64, entry: Entry) -> Result<Option<Entry>, TableError> {
        let value = Value::pack(lba, &entry)?;
        if self.chunks.is_empty() {
            if self.capacity == 0 {
                return Err(TableError::Full {
                    lba,
                    capacity: self.capacity,
                });
            }
            let mut chunk = Chunk::new();
            chunk.keys.push(lba);
            chunk.values.push(value);
            chunk.refresh();
            self.chunks.push(chunk);
            self.first_keys.push(lba);
            self.len = 1;
            self.count(&entry, true);
            return Ok(None);
        }
        let c = self.chunk_for(lba);
        let pos = match self.chunks[c].search(lba) {
            Ok(i) => {
                let old = core::mem::replace(&mut self.chunks[c].values[i], value).unpack();
                self.count(&old, false);
                self.count(&entry, true);
                return Ok(Some(old));
            }
            Err(i) => i,
        };
        if self.len >= self.capacity {
            return Err(TableError::Full {
                lba,
                capacity: self.capacity,
            });
        }
        let (c, pos) = if self.chunks[c].keys.len() < CHUNK_CAPACITY {
            (c, pos)
        } else if c + 1 == self.chunks.len() && pos == CHUNK_CAPACITY {
            // Appending past the end: start a fresh chunk so ascending inserts pack chunks full.
            self.chunks.insert(c + 1, Chunk::new());
            self.first_keys.insert(c + 1, lba);
            (c + 1, 0)
        } else {
            let half = CHUNK_CAPACITY / 2;
            let mut right = Chunk::new();
            right.keys.extend(self.chunks[c].keys.drain(half..));
            right.values.extend(self.chunks[c].values.drain(half..));
            right.refresh();
            self.chunks[c].refresh();
            self.first_keys.insert(c + 1, right.keys[0]);
            self.chunks.insert(c + 1, right);
            if pos <= half {
                (c, pos)
            } else {
                (c + 1, pos - half)
            }
        };
        self.chunks[c].keys.insert(pos, lba);
        self.chunks[c].values.insert(pos, value);
        self.chunks[c].refresh();
        if pos == 0 {
            self.first_keys[c] = lba;
        }
        self.len += 1;
        self.count(&entry, true);
        Ok(None)
    }

    /// Remove the entry for `lba`; returns it.
    pub fn remove(&mut self, lba: u64) -> Option<Entry> {
        if self.len == 0 {
            return None;
        }
        let c = self.chunk_for(lba);
        let i = self.chunks[c].search(lba).ok()?;
        self.chunks[c].keys.remove(i);
        let old = self.chunks[c].values.remove(i).unpack();
        self.chunks[c].refresh();
        if self.chunks[c].keys.is_empty() {
            self.chunks.remove(c);
            self.first_keys.remove(c);
        } else if i == 0 {
            self.first_keys[c] = self.chunks[c].keys[0];
        }
        self.len -= 1;
        self.count(&old, false);
        Some(old)
    }

    /// Every entry in ascending block order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Entry)> + '_ {
        self.chunks.iter().flat_map(|c| {
            c.keys
                .iter()
                .zip(c.values.iter())
                .map(|(&k, v)| (k, v.unpack()))
        })
    }

    /// Entries with `lba` in `[start, end)`, ascending.
    pub fn range(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, Entry)> + '_ {
        let (c, i) = self
            .position_at_or_after(start)
            .unwrap_or((self.chunks.len(), 0));
        self.chunks[c.min(self.chunks.len())..]
            .iter()
            .enumerate()
            .flat_map(move |(n, chunk)| {
                let skip = if n == 0 { i } else { 0 };
                chunk.keys[skip..]
                    .iter()
                    .zip(chunk.values[skip..].iter())
                    .map(|(&k, v)| (k, v.unpack()))
            })
            .take_while(move |&(k, _)| k < end)
    }

    /// Split `[lba, lba + blocks)` into runs by where the data lives. Allocation-free; on a
    /// range without entries it yields one [`Segment::Main`] after a single search.
    pub fn segments(&self, lba: u64, blocks: u64) -> Segments<'_> {
        let end = lba.saturating_add(blocks);
        Segments {
            table: self,
            next: lba,
            end,
            cursor: if self.any_in(lba, blocks) {
                self.position_at_or_after(lba)
            } else {
                None
            },
        }
    }

    /// Bytes of heap this table holds (its allocations' capacities).
    pub fn heap_bytes(&self) -> usize {
        self.first_keys.capacity() * core::mem::size_of::<u64>()
            + self.chunks.capacity() * core::mem::size_of::<Chunk>()
            + self
                .chunks
                .iter()
                .map(|c| {
                    c.keys.capacity() * core::mem::size_of::<u64>()
                        + c.values.capacity() * core::mem::size_of::<Value>()
                })
                .sum::<usize>()
    }

    /// Check the structure: chunks sorted and non-empty, first keys in sync, counts right.
    /// For tests and for validating a table decoded from disk.
    pub fn check_invariants(&self) -> Result<(), &'static str> {
        if self.first_keys.len() != self.chunks.len() {
            return Err("first key index out of sync");
        }
        let mut prev: Option<u64> = None;
        let (mut n, mut remapped, mut pending) = (0, 0, 0);
        for (c, chunk) in self.chunks.iter().enumerate() {
            if chunk.keys.is_empty() || chunk.keys.len() != chunk.values.len() {
                return Err("empty or ragged chunk");
            }
            if self.first_keys[c] != chunk.keys[0] {
                return Err("first key does not match chunk");
            }
            let mut fresh = chunk.clone();
            fresh.refresh();
            if fresh.summary != chunk.summary {
                return Err("chunk summary out of date");
            }
            for (&k, v) in chunk.keys.iter().zip(&chunk.values) {
                if prev.is_some_and(|p| p >= k) {
                    return Err("keys not strictly ascending");
                }
                prev = Some(k);
                let e = v.unpack();
                remapped += usize::from(e.is_remapped());
                pending += usize::from(e.is_pending());
                n += 1;
            }
        }
        if n != self.len || remapped != self.remapped || pending != self.pending {
            return Err("counts out of sync");
        }
        if n > self.capacity {
            return Err("more entries than capacity");
        }
        Ok(())
    }
}

/// A run of consecutive blocks that live in the same kind of place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Segment {
    /// Blocks on the main device at their own address.
    Main { lba: u64, blocks: u64 },
    /// Blocks on consecutive spare blocks starting at `spare`.
    Spare { lba: u64, spare: u64, blocks: u64 },
    /// Blocks with no readable location: reads fail, writes move them.
    Pending { lba: u64, blocks: u64 },
}

impl Segment {
    pub fn lba(&self) -> u64 {
        match *self {
            Segment::Main { lba, .. }
            | Segment::Spare { lba, .. }
            | Segment::Pending { lba, .. } => lba,
        }
    }

    pub fn blocks(&self) -> u64 {
        match *self {
            Segment::Main { blocks, .. }
            | Segment::Spare { blocks, .. }
            | Segment::Pending { blocks, .. } => blocks,
        }
    }
}

/// Iterator returned by [`RemapTable::segments`].
#[derive(Debug)]
pub struct Segments<'a> {
    table: &'a RemapTable,
    next: u64,
    end: u64,
    cursor: Option<(usize, usize)>,
}

impl Segments<'_> {
    fn peek(&self) -> Option<(u64, Value)> {
        let (c, i) = self.cursor?;
        let chunk = &self.table.chunks[c];
        Some((chunk.keys[i], chunk.values[i]))
    }

    fn advance(&mut self) {
        if let Some((c, i)) = self.cursor {
            self.cursor = if i + 1 < self.table.chunks[c].keys.len() {
                Some((c, i + 1))
            } else if c + 1 < self.table.chunks.len() {
                Some((c + 1, 0))
            } else {
                None
            };
        }
    }
}

impl Iterator for Segments<'_> {
    type Item = Segment;

    fn next(&mut self) -> Option<Segment> {
        if self.next >= self.end {
            return None;
        }
        let start = self.next;
        let Some((key, value)) = self.peek().filter(|&(k, _)| k < self.end) else {
            self.next = self.end;
            return Some(Segment::Main {
                lba: start,
                blocks: self.end - start,
            });
        };
        if key > start {
            self.next = key;
            return Some(Segment::Main {
                lba: start,
                blocks: key - start,
            });
        }
        // An entry at `start`: extend over following entries of the same kind that continue it.
        let first = value.unpack();
        self.advance();
        let mut blocks = 1u64;
        while let Some((k, v)) = self.peek() {
            if k != start + blocks || k >= self.end {
                break;
            }
            let e = v.unpack();
            let continues = match (first.spare, e.spare) {
                (Some(s0), Some(s)) => s == s0 + blocks,
                (None, None) => true,
                _ => false,
            };
            if !continues {
                break;
            }
            blocks += 1;
            self.advance();
        }
        self.next = start + blocks;
        Some(match first.spare {
            Some(spare) => Segment::Spare {
                lba: start,
                spare,
                blocks,
            },
            None => Segment::Pending { lba: start, blocks },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;
    use alloc::vec;

    fn remapped(spare: u64) -> Entry {
        Entry::remapped(spare, 1, 0)
    }

    #[test]
    fn empty_table_is_one_main_segment() {
        let t = RemapTable::new(10);
        let s: Vec<_> = t.segments(5, 100).collect();
        assert_eq!(
            s,
            vec![Segment::Main {
                lba: 5,
                blocks: 100
            }]
        );
        assert!(!t.any_in(0, u64::MAX));
    }

    #[test]
    fn segments_split_and_merge_runs() {
        let mut t = RemapTable::new(100);
        for (lba, spare) in [(10, 0), (11, 1), (12, 2), (13, 7), (20, 3)] {
            t.insert(lba, remapped(spare)).unwrap();
        }
        t.insert(14, Entry::pending(1, 0)).unwrap();
        t.insert(15, Entry::pending(1, 0)).unwrap();
        let s: Vec<_> = t.segments(8, 14).collect();
        assert_eq!(
            s,
            vec![
                Segment::Main { lba: 8, blocks: 2 },
                Segment::Spare {
                    lba: 10,
                    spare: 0,
                    blocks: 3
                },
                Segment::Spare {
                    lba: 13,
                    spare: 7,
                    blocks: 1
                },
                Segment::Pending { lba: 14, blocks: 2 },
                Segment::Main { lba: 16, blocks: 4 },
                Segment::Spare {
                    lba: 20,
                    spare: 3,
                    blocks: 1
                },
                Segment::Main { lba: 21, blocks: 1 },
            ]
        );
        // A range starting inside a run, and ending inside one.
        let s: Vec<_> = t.segments(11, 2).collect();
        assert_eq!(
            s,
            vec![Segment::Spare {
                lba: 11,
                spare: 1,
                blocks: 2
            }]
        );
    }

    #[test]
    fn capacity_is_enforced_but_replacing_is_allowed() {
        let mut t = RemapTable::new(2);
        t.insert(1, remapped(0)).unwrap();
        t.insert(2, remapped(1)).unwrap();
        assert_eq!(
            t.insert(3, remapped(2)),
            Err(TableError::Full {
                lba: 3,
                capacity: 2
            })
        );
        assert!(t.insert(2, Entry::pending(2, 5)).unwrap().is_some());
        assert_eq!(t.pending_count(), 1);
        assert_eq!(t.remapped_count(), 1);
    }

    #[test]
    fn inconsistent_entries_are_refused() {
        let mut t = RemapTable::new(2);
        let bad = Entry {
            spare: None,
            flags: EntryFlags::REMAPPED,
            error_count: 0,
            time_s: 0,
        };
        assert!(matches!(
            t.insert(1, bad),
            Err(TableError::Inconsistent { .. })
        ));
        assert!(matches!(
            t.insert(1, remapped(u64::from(u32::MAX))),
            Err(TableError::SpareOutOfRange { .. })
        ));
        assert!(t.is_empty());
    }

    #[test]
    fn matches_a_btreemap_under_random_inserts_and_removes() {
        // Deterministic xorshift so the test needs no RNG crate in no_std builds.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = RemapTable::new(100_000);
        let mut m = BTreeMap::new();
        for step in 0..60_000u64 {
            let lba = rnd() % 20_000;
            if rnd() % 3 == 0 {
                assert_eq!(t.remove(lba).map(|e| e.spare), m.remove(&lba));
            } else {
                let e = remapped(step);
                assert_eq!(
                    t.insert(lba, e).unwrap().map(|e| e.spare),
                    m.insert(lba, Some(step))
                );
            }
        }
        t.check_invariants().unwrap();
        assert_eq!(t.len(), m.len());
        assert!(
            t.iter()
                .map(|(k, e)| (k, e.spare))
                .eq(m.iter().map(|(&k, &v)| (k, v)))
        );
        let (lo, hi) = (5_000, 7_500);
        assert!(
            t.range(lo, hi)
                .map(|(k, _)| k)
                .eq(m.range(lo..hi).map(|(&k, _)| k))
        );
        for probe in 0..20_000 {
            assert_eq!(t.get(probe).map(|e| e.spare), m.get(&probe).copied());
            let want = m.range(probe..probe + 7).next().is_some();
            assert_eq!(t.any_in(probe, 7), want, "any_in({probe}, 7)");
        }
        // Segments cover the range exactly, in order.
        let mut at = 1_000;
        for seg in t.segments(1_000, 3_000) {
            assert_eq!(seg.lba(), at);
            at += seg.blocks();
        }
        assert_eq!(at, 4_000);
    }

    #[test]
    fn ascending_inserts_pack_chunks_full() {
        let mut t = RemapTable::new(10_000);
        for lba in 0..(CHUNK_CAPACITY as u64 * 4) {
            t.insert(lba * 2, remapped(lba)).unwrap();
        }
        assert_eq!(t.chunks.len(), 4);
        t.check_invariants().unwrap();
    }
}
