//! A backend held in memory: the fast, exact baseline for tests and benchmarks.

use parking_lot::RwLock;

use super::{BlockBackend, IoError, IoOp, check_range};

/// A fixed-size device in memory. Flush does nothing (memory is as durable as it gets);
/// trim and write-zeroes zero the range.
#[derive(Debug)]
pub struct MemBackend {
    bytes: RwLock<Vec<u8>>,
}

impl MemBackend {
    /// A zero-filled device of `size_bytes`.
    pub fn new(size_bytes: usize) -> Self {
        Self::from_vec(vec![0; size_bytes])
    }

    /// A device holding exactly these bytes.
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        MemBackend {
            bytes: RwLock::new(bytes),
        }
    }

    /// A copy of the whole device.
    pub fn to_vec(&self) -> Vec<u8> {
        self.bytes.read().clone()
    }

    fn range(&self, op: IoOp, offset: u64, len: u64) -> Result<std::ops::Range<usize>, IoError> {
        check_range(op, offset, len, self.size_bytes())?;
        // In range of a Vec, so both fit in usize.
        Ok(offset as usize..(offset + len) as usize)
    }
}

impl BlockBackend for MemBackend {
    fn size_bytes(&self) -> u64 {
        self.bytes.read().len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        let r = self.range(IoOp::Read, offset, buf.len() as u64)?;
        buf.copy_from_slice(&self.bytes.read()[r]);
        Ok(())
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        let r = self.range(IoOp::Write, offset, buf.len() as u64)?;
        self.bytes.write()[r].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> Result<(), IoError> {
        Ok(())
    }

    fn supports_fua(&self) -> bool {
        true
    }

    fn write_at_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.write_at(offset, buf)
    }

    fn supports_trim(&self) -> bool {
        true
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let r = self.range(IoOp::Trim, offset, len)?;
        self.bytes.write()[r].fill(0);
        Ok(())
    }

    fn supports_write_zeroes(&self) -> bool {
        true
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        let r = self.range(IoOp::WriteZeroes, offset, len)?;
        self.bytes.write()[r].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_and_refuses_past_the_end() {
        let m = MemBackend::new(4096);
        m.write_at(100, b"hello").unwrap();
        let mut b = [0u8; 5];
        m.read_at(100, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert!(matches!(
            m.write_at(4092, b"hello"),
            Err(IoError::OutOfRange { .. })
        ));
        assert!(m.read_at(4096, &mut [0u8; 1]).is_err());
        assert!(m.read_at(4096, &mut []).is_ok());
    }
}
