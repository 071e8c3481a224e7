//! Request latencies are measured on the clock's steady time (`Clock::elapsed_ns`), so a
//! wall clock set back or forward does not put a bogus sample into the histogram that
//! `remap health` and the metrics report.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use common::fresh_device;
use remap_core::Clock;
use remap_core::backend::MemBackend;

const BS: u64 = 4096;

/// A wall clock set back an hour at every reading, over a steady monotonic clock.
struct SteppingClock {
    wall: AtomicU64,
    steady: AtomicU64,
}

impl Clock for SteppingClock {
    fn now_ns(&self) -> u64 {
        self.wall.fetch_sub(3_600_000_000_000, SeqCst)
    }
    fn elapsed_ns(&self) -> u64 {
        self.steady.fetch_add(1_000, SeqCst)
    }
}

#[test]
fn latencies_come_from_the_steady_clock_not_the_wall_clock() {
    let clock = Arc::new(SteppingClock {
        wall: AtomicU64::new(1_700_000_000_000_000_000),
        steady: AtomicU64::new(0),
    });
    let dev = fresh_device(
        MemBackend::new((16 * BS) as usize),
        MemBackend::new((4 * BS) as usize),
        BS,
        4,
        clock,
    );
    // The first request of a thread is timed: 1 µs passes on the steady clock while the
    // wall clock goes back an hour.
    dev.read(0, &mut [0u8; 4096]).unwrap();
    let latency = dev.stats().latency;
    assert_eq!((latency.count, latency.total_ns), (1, 1_000), "{latency:?}");
}
