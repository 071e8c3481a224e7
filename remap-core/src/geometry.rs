//! Units: the remap block size and conversions between bytes and blocks.

/// The remap unit: a power of two from 512 B to 64 KiB, chosen when the device is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct BlockSize(u32);

/// A geometry that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GeometryError {
    #[error("block size {0} is not a power of two between 512 and 65536 bytes")]
    BadBlockSize(u64),
}

impl BlockSize {
    pub const MIN: u32 = 512;
    pub const MAX: u32 = 65536;
    pub const DEFAULT: BlockSize = BlockSize(4096);

    pub fn new(bytes: u64) -> Result<Self, GeometryError> {
        if bytes.is_power_of_two() && (u64::from(Self::MIN)..=u64::from(Self::MAX)).contains(&bytes)
        {
            Ok(BlockSize(bytes as u32))
        } else {
            Err(GeometryError::BadBlockSize(bytes))
        }
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    pub fn bytes_u64(self) -> u64 {
        u64::from(self.0)
    }

    pub fn shift(self) -> u32 {
        self.0.trailing_zeros()
    }

    /// The block holding byte `offset`.
    pub fn block_of(self, offset: u64) -> u64 {
        offset >> self.shift()
    }

    /// Byte offset of block `lba`, or `None` on overflow.
    pub fn offset_of(self, lba: u64) -> Option<u64> {
        lba.checked_mul(self.bytes_u64())
    }

    /// Number of blocks needed to hold `bytes` (the last one possibly partial).
    pub fn blocks_for(self, bytes: u64) -> u64 {
        bytes.div_ceil(self.bytes_u64())
    }
}

impl Default for BlockSize {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl core::fmt::Display for BlockSize {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_powers_of_two_in_range() {
        for ok in [512u64, 1024, 4096, 65536] {
            assert_eq!(BlockSize::new(ok).unwrap().bytes_u64(), ok);
        }
        for bad in [0u64, 256, 513, 3000, 131072, u64::MAX] {
            assert!(BlockSize::new(bad).is_err());
        }
        let b = BlockSize::new(4096).unwrap();
        assert_eq!(b.block_of(8191), 1);
        assert_eq!(b.blocks_for(8193), 3);
        assert_eq!(b.offset_of(u64::MAX), None);
    }
}
