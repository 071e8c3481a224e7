//! Little-endian field access on fixed-size byte blocks. Every accessor takes a constant
//! offset inside a block whose size the caller has already checked, so none can fail.

use crate::META_BLOCK;
use crate::checksum::crc32c;
use crate::error::{FormatError, Region};

/// Where every metadata block keeps its CRC32C (of all the bytes before it).
pub const CRC_AT: usize = META_BLOCK - 4;

/// The checks every metadata block starts with: 4 KiB long, the right magic, and a CRC32C
/// that matches. Returns a reader over it.
pub fn checked_block<'a>(
    bytes: &'a [u8],
    magic: &[u8; 8],
    region: Region,
) -> Result<Reader<'a>, FormatError> {
    if bytes.len() != META_BLOCK {
        return Err(FormatError::BadLength {
            region,
            len: bytes.len(),
            expected: META_BLOCK,
        });
    }
    let r = Reader(bytes);
    if r.bytes::<8>(0) != *magic {
        return Err(FormatError::BadMagic { region });
    }
    let stored = r.u32(CRC_AT);
    let computed = crc32c(&bytes[..CRC_AT]);
    if stored != computed {
        return Err(FormatError::BadChecksum {
            region,
            stored,
            computed,
        });
    }
    Ok(r)
}

/// A read-only view of a metadata block.
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        if let Some(src) = self.0.get(at..at + N) {
            a.copy_from_slice(src);
        }
        a
    }
    pub fn u8(&self, at: usize) -> u8 {
        self.0.get(at).copied().unwrap_or(0)
    }
    pub fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.array(at))
    }
    pub fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }
    pub fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }
    pub fn bytes<const N: usize>(&self, at: usize) -> [u8; N] {
        self.array(at)
    }
    /// Whether `[from, to)` is all zero (reserved space).
    pub fn zero(&self, from: usize, to: usize) -> bool {
        self.0
            .get(from..to)
            .is_some_and(|s| s.iter().all(|&b| b == 0))
    }
}

/// A writable view of a metadata block.
#[derive(Debug)]
pub struct Writer<'a>(pub &'a mut [u8]);

impl Writer<'_> {
    fn put(&mut self, at: usize, bytes: &[u8]) {
        if let Some(dst) = self.0.get_mut(at..at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
    }
    pub fn u8(&mut self, at: usize, v: u8) {
        self.put(at, &[v]);
    }
    pub fn u16(&mut self, at: usize, v: u16) {
        self.put(at, &v.to_le_bytes());
    }
    pub fn u32(&mut self, at: usize, v: u32) {
        self.put(at, &v.to_le_bytes());
    }
    pub fn u64(&mut self, at: usize, v: u64) {
        self.put(at, &v.to_le_bytes());
    }
    pub fn bytes(&mut self, at: usize, v: &[u8]) {
        self.put(at, v);
    }
}
