//! [`Geometry`]: where a block lives in bytes, on main and on the spare pool.

use core::ops::Range;

use crate::geometry::BlockSize;

/// The shape of a device: the logical size, the remap block and where the spare pool lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub block_size: BlockSize,
    /// The logical (and main) device's size; the last block may be short.
    pub size_bytes: u64,
    /// Logical blocks, the last possibly partial.
    pub blocks: u64,
    /// Byte offset of spare block 0 on the spare device.
    pub spare_offset: u64,
}

impl Geometry {
    pub fn new(block_size: BlockSize, size_bytes: u64, spare_offset: u64) -> Self {
        Geometry {
            block_size,
            size_bytes,
            blocks: block_size.blocks_for(size_bytes),
            spare_offset,
        }
    }

    /// Byte offset of spare block `spare` on the spare device.
    #[inline]
    pub fn spare_byte(&self, spare: u64) -> u64 {
        self.spare_offset + (spare << self.block_size.shift())
    }

    /// Byte range of block `lba` on main: (start, length; the last block may be short).
    pub fn block_span(&self, lba: u64) -> (u64, u64) {
        let start = lba << self.block_size.shift();
        (
            start,
            self.block_size
                .bytes_u64()
                .min(self.size_bytes.saturating_sub(start)),
        )
    }

    /// Blocks touched by `[offset, offset + len)`, `len > 0`: (first, count).
    #[inline]
    pub fn blocks_of(&self, offset: u64, len: u64) -> (u64, u64) {
        let first = self.block_size.block_of(offset);
        let last = self.block_size.block_of(offset + len - 1);
        (first, last - first + 1)
    }

    /// The part of block `lba` inside the request at `offset` of `len` bytes: its byte
    /// offset on main, its range in the request buffer, and its offset inside the block.
    pub fn part(&self, lba: u64, offset: u64, len: u64) -> (u64, Range<usize>, usize) {
        let (start, blen) = self.block_span(lba);
        let lo = start.max(offset);
        let hi = (start + blen).min(offset + len);
        (
            lo,
            (lo - offset) as usize..(hi - offset) as usize,
            (lo - start) as usize,
        )
    }

    /// A run of blocks clipped to the request: (main byte offset, buffer range).
    pub fn clip(&self, lba: u64, blocks: u64, offset: u64, len: u64) -> (u64, Range<usize>) {
        let shift = self.block_size.shift();
        let seg_start = lba << shift;
        let seg_end = ((lba + blocks) << shift).min(self.size_bytes);
        let lo = seg_start.max(offset);
        let hi = seg_end.min(offset + len);
        (lo, (lo - offset) as usize..(hi - offset) as usize)
    }
}
