//! Request latencies are measured on the clock's steady time (`Clock::elapsed_ns`), so a
//! wall clock set back or forward does not put a bogus sample into the histogram that
//! `remap health` and the metrics report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};

use remap_core::backend::MemBackend;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::stats::StatsSnapshot;
use remap_core::testing::{MemStore, table_capacity_for};
use remap_core::{BlockSize, Clock, RemapDevice, RemapTable, SpareAllocator};

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
    let main = MemBackend::new((16 * BS) as usize);
    let spare = MemBackend::new((4 * BS) as usize);
    let (store, _handle) = MemStore::new();
    let clock = Arc::new(SteppingClock {
        wall: AtomicU64::new(1_700_000_000_000_000_000),
        steady: AtomicU64::new(0),
    });
    let dev = RemapDevice::new(
        main,
        spare,
        Layout {
            block_size: BlockSize::new(BS).unwrap(),
            spare_offset: 0,
            spare_blocks: 4,
        },
        InitialState {
            table: RemapTable::new(table_capacity_for(4)),
            spares: SpareAllocator::new(4).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        clock,
        DeviceConfig::default(),
    )
    .unwrap();
    // The first request of a thread is timed: 1 µs passes on the steady clock while the
    // wall clock goes back an hour.
    dev.read(0, &mut [0u8; 4096]).unwrap();
    let latency = dev.stats().latency;
    assert_eq!((latency.count, latency.total_ns), (1, 1_000), "{latency:?}");
}
