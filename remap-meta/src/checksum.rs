//! CRC32C (Castagnoli), the checksum of every metadata block.
//!
//! The `crc` crate rather than `crc32c`: the format code must build `no_std` for the kernel
//! target, and `crc32c` needs `std` (runtime CPU feature detection). Metadata checksums cover
//! 4 KiB blocks and a checkpoint of a few MiB, so a table-driven implementation is plenty.

use crc::{CRC_32_ISCSI, Crc, Digest, Table};

const CASTAGNOLI: Crc<u32, Table<16>> = Crc::<u32, Table<16>>::new(&CRC_32_ISCSI);

/// CRC32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    CASTAGNOLI.checksum(bytes)
}

/// An incremental CRC32C, for checkpoints written and read in pieces.
pub struct Crc32c(Digest<'static, u32, Table<16>>);

impl core::fmt::Debug for Crc32c {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Crc32c")
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c(CASTAGNOLI.digest())
    }
}

impl Crc32c {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> u32 {
        self.0.finalize()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 3720 B.4 test vectors and the catalogue check value.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let mut c = Crc32c::default();
        c.update(b"1234");
        c.update(b"56789");
        assert_eq!(c.finish(), 0xE306_9283);
    }
}
