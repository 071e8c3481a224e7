//! What contiguous spare allocation buys: a 256-block bad run (and a second run failing at
//! the same time elsewhere, so the two are discovered interleaved), then sequential 1 MiB
//! reads over the run. With contiguous allocation (the default) the run lands on a few runs
//! of spare blocks and each read is a few spare I/Os; with the lowest-free policy the two runs
//! interleave on the spare and every block is its own I/O. Spare I/Os are counted; throughput
//! is measured twice: on memory, and with 50 µs per spare I/O (an SSD-like cost per request).
//!
//! `cargo bench -p remap-core --bench allocation` prints a table (`-- --quick` for fewer runs).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use remap_core::backend::{BlockBackend, IoError};
use remap_core::clock::ManualClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::testing::{FaultyBackend, MemStore};
use remap_core::{BlockSize, MemBackend, RemapDevice, RemapTable, SpareAllocator, StatsSnapshot};

const BS: u64 = 4096;
const MAIN_BLOCKS: u64 = 16384;
const POOL: u64 = 2048;
const RUN: u64 = 256;
const RUN_A: u64 = 4096;
const RUN_B: u64 = 10_000;

/// Counts read requests to the backend it wraps.
struct Counting<B> {
    inner: B,
    reads: AtomicU64,
}

impl<B: BlockBackend> BlockBackend for Counting<B> {
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), IoError> {
        self.inner.write_at(offset, buf)
    }
    fn flush(&self) -> Result<(), IoError> {
        self.inner.flush()
    }
}

type Dev = RemapDevice<FaultyBackend<MemBackend>, Arc<Counting<FaultyBackend<MemBackend>>>>;

fn build(contiguous: bool) -> (Dev, Arc<Counting<FaultyBackend<MemBackend>>>) {
    let spare = Arc::new(Counting {
        inner: FaultyBackend::new(MemBackend::new((POOL * BS) as usize), BS),
        reads: AtomicU64::new(0),
    });
    let (store, _) = MemStore::new();
    let dev = RemapDevice::new(
        FaultyBackend::new(MemBackend::new((MAIN_BLOCKS * BS) as usize), BS),
        spare.clone(),
        Layout {
            block_size: BlockSize::new(BS).unwrap(),
            spare_offset: 0,
            spare_blocks: POOL,
        },
        InitialState {
            table: RemapTable::new(2 * POOL as usize),
            spares: SpareAllocator::new(POOL).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        Arc::new(ManualClock::new(0)),
        DeviceConfig::default(),
    )
    .unwrap();
    dev.set_contiguous_spares(contiguous);
    dev.main()
        .fail_writes((RUN_A..RUN_A + RUN).chain(RUN_B..RUN_B + RUN));
    // The two runs are discovered interleaved, a block at a time.
    let block = vec![0xC3u8; BS as usize];
    for i in 0..RUN {
        dev.write((RUN_A + i) * BS, &block).unwrap();
        dev.write((RUN_B + i) * BS, &block).unwrap();
    }
    assert_eq!(dev.stats().remaps, 2 * RUN);
    (dev, spare)
}

/// Sequential 1 MiB reads over run A: (spare I/Os per read, spare runs, MiB/s).
fn measure(
    dev: &Dev,
    spare: &Counting<FaultyBackend<MemBackend>>,
    reads: u32,
) -> (f64, usize, f64) {
    let runs = dev.segments(RUN_A, RUN).len();
    let mut buf = vec![0u8; (RUN * BS) as usize];
    let before = spare.reads.load(Ordering::Relaxed);
    let t = Instant::now();
    for _ in 0..reads {
        dev.read(RUN_A * BS, &mut buf).unwrap();
    }
    let elapsed = t.elapsed().max(Duration::from_nanos(1));
    let ios = spare.reads.load(Ordering::Relaxed) - before;
    let mib = f64::from(reads) * (RUN * BS) as f64 / (1 << 20) as f64;
    (
        ios as f64 / f64::from(reads),
        runs,
        mib / elapsed.as_secs_f64(),
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (mem_reads, slow_reads) = if quick { (200, 4) } else { (2000, 20) };
    println!("256-block bad run, 1 MiB sequential reads over it (spare I/Os counted)");
    println!(
        "| allocation | spare runs | spare I/Os per 1 MiB read | MiB/s (memory) | MiB/s (50 us per spare I/O) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    let mut rows = Vec::new();
    for (name, contiguous) in [
        ("contiguous (default)", true),
        ("lowest free (scattered)", false),
    ] {
        let (dev, spare) = build(contiguous);
        let (ios, runs, mem_rate) = measure(&dev, &spare, mem_reads);
        spare.inner.set_latency(Duration::from_micros(50));
        let (_, _, slow_rate) = measure(&dev, &spare, slow_reads);
        println!("| {name} | {runs} | {ios:.0} | {mem_rate:.0} | {slow_rate:.1} |");
        rows.push((ios, mem_rate, slow_rate));
    }
    let (c, s) = (rows[0], rows[1]);
    println!(
        "| ratio contiguous / scattered | | {:.3}x | {:.2}x | {:.2}x |",
        c.0 / s.0,
        c.1 / s.1,
        c.2 / s.2
    );
}
