//! A token bucket that limits a scrub to a number of bytes per second.
//!
//! The bucket starts empty and may go into debt by one request: `take(n)` charges `n` bytes
//! and then waits until the balance is back to zero. So after every `take` returns, the
//! bytes let through since the bucket was made are at most `rate × elapsed`: the measured
//! rate never exceeds the limit, not even in the first second. The balance is capped at
//! `burst` bytes, so a pause (the scrub was idle, or the device slow) does not let a flood
//! through afterwards.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The longest single sleep, so a stop request is seen within this time.
const SLICE: Duration = Duration::from_millis(50);

/// A byte-rate limiter.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_s: f64,
    burst: f64,
    /// Balance in bytes; negative while in debt.
    balance: f64,
    last: Instant,
}

impl Throttle {
    /// A limiter at `bytes_per_s` (at least 1) whose idle credit is capped at `burst` bytes.
    pub fn new(bytes_per_s: u64, burst: u64) -> Self {
        Throttle {
            bytes_per_s: bytes_per_s.max(1) as f64,
            burst: burst as f64,
            balance: 0.0,
            last: Instant::now(),
        }
    }

    /// The limit in bytes per second.
    pub fn bytes_per_s(&self) -> u64 {
        self.bytes_per_s as u64
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.bytes_per_s;
        self.balance = (self.balance + earned).min(self.burst);
        self.last = now;
    }

    /// Charge `n` bytes and wait until they are paid for. Returns `false`, without waiting
    /// further, as soon as `stop` is set.
    pub fn take(&mut self, n: u64, stop: &AtomicBool) -> bool {
        self.refill();
        self.balance -= n as f64;
        while self.balance < 0.0 {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let wait = Duration::from_secs_f64(-self.balance / self.bytes_per_s);
            std::thread::sleep(wait.min(SLICE));
            self.refill();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_lets_more_through_than_the_rate_allows() {
        // 1 MiB/s in 64 KiB pieces for 0.3 s of budget.
        let mut t = Throttle::new(1 << 20, 64 << 10);
        let stop = AtomicBool::new(false);
        let start = Instant::now();
        let mut passed = 0u64;
        for _ in 0..5 {
            assert!(t.take(64 << 10, &stop));
            passed += 64 << 10;
            let allowed = start.elapsed().as_secs_f64() * f64::from(1 << 20);
            assert!(
                passed as f64 <= allowed,
                "{passed} bytes after {allowed} allowed"
            );
        }
    }

    #[test]
    fn a_stop_request_ends_the_wait() {
        let mut t = Throttle::new(1, 1);
        let stop = AtomicBool::new(true);
        let start = Instant::now();
        assert!(!t.take(1 << 30, &stop));
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
