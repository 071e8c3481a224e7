//! Little-endian field access on fixed-size byte blocks. Every accessor takes a constant
//! offset inside a block whose size the caller has already checked, so none can fail.

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
