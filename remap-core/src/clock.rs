//! Time comes in through a [`Clock`] the caller passes, so that a simulation is deterministic
//! and entry timestamps, latencies and rates can be driven by a test.

use core::sync::atomic::{AtomicU64, Ordering};

/// A source of time in nanoseconds. Only differences and the seconds part are used, so any
/// epoch works; [`SystemClock`] uses the Unix epoch.
pub trait Clock: Send + Sync {
    fn now_ns(&self) -> u64;

    /// Whole seconds, as stored in table entries.
    fn now_s(&self) -> u64 {
        self.now_ns() / 1_000_000_000
    }

    /// Time for measuring durations (request latencies), in nanoseconds from any start:
    /// it never goes back and does not jump when the wall clock is set. The default is
    /// [`now_ns`](Self::now_ns), right for a clock that is not the wall clock.
    fn elapsed_ns(&self) -> u64 {
        self.now_ns()
    }
}

/// Wall-clock time since the Unix epoch.
#[cfg(feature = "std")]
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[cfg(feature = "std")]
impl Clock for SystemClock {
    fn now_ns(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    }

    /// The monotonic clock, from the first time this process asked.
    fn elapsed_ns(&self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = *START.get_or_init(std::time::Instant::now);
        u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that only moves when told to. For simulations and tests.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ns: AtomicU64,
}

impl ManualClock {
    pub fn new(start_ns: u64) -> Self {
        ManualClock {
            now_ns: AtomicU64::new(start_ns),
        }
    }

    pub fn set_ns(&self, ns: u64) {
        self.now_ns.store(ns, Ordering::SeqCst);
    }

    pub fn advance_ns(&self, ns: u64) {
        self.now_ns.fetch_add(ns, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ns(&self) -> u64 {
        self.now_ns.load(Ordering::SeqCst)
    }
}

#[cfg(feature = "std")]
impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }

    fn elapsed_ns(&self) -> u64 {
        (**self).elapsed_ns()
    }
}
