//! [`FaultyBackend`]: a backend that fails on purpose, reproducibly. Wrap any backend and
//! make chosen blocks fail reads and/or writes (changeable while running), make any request
//! fail at a seeded rate, fail everything after N operations, or add latency.
//!
//! A failing read returns an error and leaves the buffer alone; it never returns zeroes.
//! A failing write changes nothing.

use std::collections::BTreeSet;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use rand::{Rng, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::{BlockBackend, IoError, IoOp, check_range, errno};

/// Transient faults: each read or write fails with probability `rate_ppm` / 1,000,000.
#[derive(Debug)]
struct Transient {
    rate_ppm: u32,
    rng: Pcg64Mcg,
}

/// Counts of what was injected.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct InjectedFaults {
    pub sticky_reads: u64,
    pub sticky_writes: u64,
    pub transient: u64,
    pub after_limit: u64,
}

/// A backend that fails where and when it is told to.
#[derive(Debug)]
pub struct FaultyBackend<B> {
    inner: B,
    fault_block: u64,
    read_fail: RwLock<BTreeSet<u64>>,
    write_fail: RwLock<BTreeSet<u64>>,
    /// Set whenever either set is non-empty, so a healthy device pays one load per request.
    any_sticky: AtomicBool,
    transient: Mutex<Option<Transient>>,
    any_transient: AtomicBool,
    /// Operations left before every operation fails (`u64::MAX`: never).
    ops_left: AtomicU64,
    latency_ns: AtomicU64,
    injected: Mutex<InjectedFaults>,
}

fn eio(op: IoOp, offset: u64, len: u64) -> IoError {
    IoError::media(op, offset, len, io::Error::from_raw_os_error(errno::EIO))
}

impl<B: BlockBackend> FaultyBackend<B> {
    /// Wrap `inner`; fault sets are in units of `fault_block` bytes (a power of two).
    pub fn new(inner: B, fault_block: u64) -> Self {
        assert!(
            fault_block.is_power_of_two(),
            "fault block must be a power of two"
        );
        FaultyBackend {
            inner,
            fault_block,
            read_fail: RwLock::new(BTreeSet::new()),
            write_fail: RwLock::new(BTreeSet::new()),
            any_sticky: AtomicBool::new(false),
            transient: Mutex::new(None),
            any_transient: AtomicBool::new(false),
            ops_left: AtomicU64::new(u64::MAX),
            latency_ns: AtomicU64::new(0),
            injected: Mutex::new(InjectedFaults::default()),
        }
    }

    pub fn inner(&self) -> &B {
        &self.inner
    }

    pub fn fault_block(&self) -> u64 {
        self.fault_block
    }

    fn refresh_sticky(&self) {
        let any = !self.read_fail.read().is_empty() || !self.write_fail.read().is_empty();
        self.any_sticky.store(any, Ordering::SeqCst);
    }

    /// Make these blocks fail every read.
    pub fn fail_reads(&self, blocks: impl IntoIterator<Item = u64>) {
        self.read_fail.write().extend(blocks);
        self.refresh_sticky();
    }

    /// Make these blocks fail every write.
    pub fn fail_writes(&self, blocks: impl IntoIterator<Item = u64>) {
        self.write_fail.write().extend(blocks);
        self.refresh_sticky();
    }

    /// Make these blocks healthy again (for reads and writes).
    pub fn heal(&self, blocks: impl IntoIterator<Item = u64>) {
        let blocks: Vec<u64> = blocks.into_iter().collect();
        {
            let mut r = self.read_fail.write();
            let mut w = self.write_fail.write();
            for b in &blocks {
                r.remove(b);
                w.remove(b);
            }
        }
        self.refresh_sticky();
    }

    /// Make every block healthy and stop transient and after-N faults.
    pub fn heal_all(&self) {
        self.read_fail.write().clear();
        self.write_fail.write().clear();
        self.refresh_sticky();
        self.set_transient(0, 0);
        self.ops_left.store(u64::MAX, Ordering::SeqCst);
    }

    pub fn read_failing(&self) -> Vec<u64> {
        self.read_fail.read().iter().copied().collect()
    }

    pub fn write_failing(&self) -> Vec<u64> {
        self.write_fail.read().iter().copied().collect()
    }

    /// Fail each read and write with probability `rate_ppm` per million, drawn from a
    /// generator seeded with `seed`. A rate of 0 turns transient faults off.
    pub fn set_transient(&self, rate_ppm: u32, seed: u64) {
        *self.transient.lock() = (rate_ppm > 0).then(|| Transient {
            rate_ppm: rate_ppm.min(1_000_000),
            rng: Pcg64Mcg::seed_from_u64(seed),
        });
        self.any_transient.store(rate_ppm > 0, Ordering::SeqCst);
    }

    /// Let `n` more operations succeed (faults permitting), then fail every operation.
    pub fn fail_after(&self, n: u64) {
        self.ops_left.store(n, Ordering::SeqCst);
    }

    /// Delay every operation by this much.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ns.store(
            u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    pub fn injected(&self) -> InjectedFaults {
        *self.injected.lock()
    }

    fn overlaps(set: &RwLock<BTreeSet<u64>>, first: u64, last: u64) -> bool {
        set.read().range(first..=last).next().is_some()
    }

    /// Decide whether this operation fails; `sticky` is the set to consult for its range.
    fn gate(
        &self,
        op: IoOp,
        offset: u64,
        len: u64,
        sticky: Option<&RwLock<BTreeSet<u64>>>,
    ) -> Result<(), IoError> {
        let ns = self.latency_ns.load(Ordering::Relaxed);
        if ns > 0 {
            std::thread::sleep(Duration::from_nanos(ns));
        }
        let left = self.ops_left.load(Ordering::SeqCst);
        if left != u64::MAX {
            if left == 0 {
                self.injected.lock().after_limit += 1;
                return Err(eio(op, offset, len));
            }
            self.ops_left.fetch_sub(1, Ordering::SeqCst);
        }
        if let Some(set) = sticky
            && len > 0
            && self.any_sticky.load(Ordering::SeqCst)
        {
            let first = offset / self.fault_block;
            let last = (offset + len - 1) / self.fault_block;
            if Self::overlaps(set, first, last) {
                let mut inj = self.injected.lock();
                if op == IoOp::Read {
                    inj.sticky_reads += 1;
                } else {
                    inj.sticky_writes += 1;
                }
                return Err(eio(op, offset, len));
            }
        }
        if matches!(op, IoOp::Read | IoOp::Write)
            && self.any_transient.load(Ordering::Relaxed)
            && let Some(t) = self.transient.lock().as_mut()
            && t.rng.random_range(0..1_000_000u32) < t.rate_ppm
        {
            self.injected.lock().transient += 1;
            return Err(eio(op, offset, len));
        }
        Ok(())
    }
}

impl<B: BlockBackend> BlockBackend for FaultyBackend<B> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        check_range(IoOp::Read, offset, buf.len() as u64, self.size_bytes())?;
        self.gate(IoOp::Read, offset, buf.len() as u64, Some(&self.read_fail))?;
        self.inner.read_at(offset, buf)
    }

    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        check_range(IoOp::Write, offset, buf.len() as u64, self.size_bytes())?;
        self.gate(
            IoOp::Write,
            offset,
            buf.len() as u64,
            Some(&self.write_fail),
        )?;
        self.inner.write_at(offset, buf)
    }

    fn write_at_fua(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        check_range(IoOp::Write, offset, buf.len() as u64, self.size_bytes())?;
        self.gate(
            IoOp::Write,
            offset,
            buf.len() as u64,
            Some(&self.write_fail),
        )?;
        self.inner.write_at_fua(offset, buf)
    }

    fn flush(&self) -> Result<(), IoError> {
        self.gate(IoOp::Flush, 0, 0, None)?;
        self.inner.flush()
    }

    fn supports_fua(&self) -> bool {
        self.inner.supports_fua()
    }

    fn supports_trim(&self) -> bool {
        self.inner.supports_trim()
    }

    fn trim(&self, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(IoOp::Trim, offset, len, self.size_bytes())?;
        self.gate(IoOp::Trim, offset, len, Some(&self.write_fail))?;
        self.inner.trim(offset, len)
    }

    fn supports_write_zeroes(&self) -> bool {
        self.inner.supports_write_zeroes()
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), IoError> {
        check_range(IoOp::WriteZeroes, offset, len, self.size_bytes())?;
        self.gate(IoOp::WriteZeroes, offset, len, Some(&self.write_fail))?;
        self.inner.write_zeroes(offset, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::MemBackend;

    #[test]
    fn sticky_faults_fail_without_touching_data() {
        let f = FaultyBackend::new(MemBackend::new(8192), 512);
        f.write_at(0, &[7u8; 8192]).unwrap();
        f.fail_reads([3]);
        f.fail_writes([5]);
        let mut buf = [0xAAu8; 512];
        assert!(f.read_at(3 * 512 + 10, &mut buf[..4]).is_err());
        assert_eq!(buf[0], 0xAA, "a failed read leaves the buffer alone");
        assert!(f.read_at(0, &mut [0u8; 8192]).is_err());
        f.read_at(5 * 512, &mut buf).unwrap();
        assert!(f.write_at(5 * 512 + 511, &[1, 2]).is_err());
        assert!(f.write_zeroes(0, 8192).is_err());
        assert_eq!(f.inner().to_vec(), vec![7u8; 8192]);
        f.heal([3, 5]);
        f.read_at(0, &mut [0u8; 8192]).unwrap();
        let inj = f.injected();
        assert_eq!((inj.sticky_reads, inj.sticky_writes), (2, 2));
    }

    #[test]
    fn transient_faults_are_reproducible_by_seed() {
        let run = |seed| {
            let f = FaultyBackend::new(MemBackend::new(4096), 512);
            f.set_transient(300_000, seed);
            (0..200)
                .map(|_| f.read_at(0, &mut [0u8; 16]).is_err())
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        let failures = a.iter().filter(|&&x| x).count();
        assert!((30..=90).contains(&failures), "{failures} of 200 at 30 %");
    }

    #[test]
    fn fail_after_n_operations() {
        let f = FaultyBackend::new(MemBackend::new(4096), 512);
        f.fail_after(2);
        f.write_at(0, b"a").unwrap();
        f.flush().unwrap();
        assert!(f.write_at(0, b"b").is_err());
        assert!(f.flush().is_err());
        assert_eq!(f.injected().after_limit, 2);
    }
}
