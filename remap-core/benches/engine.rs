//! What the engine costs on the hot path.
//!
//! - `table/get/{0,1000,1000000}`: one lookup in a remap table of that many entries (random
//!   addresses, half of the probes hit an entry);
//! - `io/{read,write}/{4KiB,1MiB}/{raw,remap,remap-1k-elsewhere}`: a request to a bare
//!   `MemBackend`, to a `RemapDevice` over `MemBackend`s with an empty table (the lock-free
//!   fast path), and with 1,000 remapped blocks none of which the request touches (the
//!   locked path: one table search per request).
//!
//! After criterion's figures a summary table is printed: medians of interleaved rounds of
//! the raw backend and the device (so drift hits both alike) and the device's overhead in
//! percent. Targets (issue 2): overhead under 2 %; lookup under 100 ns at 1M entries. The
//! last row is the machine's memory latency (a pointer chase over 24 MiB), the floor for a
//! lookup that misses the caches.
//!
//! `cargo bench -p remap-core --bench engine -- --warm-up-time 1 --measurement-time 2`
//! (`REMAP_BENCH_SUMMARY_ONLY=1` skips criterion and prints only the summary).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput};
use remap_core::clock::SystemClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::table::{Entry, RemapTable};
use remap_core::testing::MemStore;
use remap_core::{BlockBackend, BlockSize, MemBackend, RemapDevice, SpareAllocator, StatsSnapshot};

const BS: u64 = 4096;
const DEVICE_BYTES: u64 = 64 << 20;
const POOL: u64 = 2048;
const PROBES: usize = 1 << 16;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A table of `n` entries at random addresses in `[0, 4n)`, and probes of which about half
/// hit an entry.
fn table_and_probes(n: u64) -> (RemapTable, Vec<u64>) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let space = (4 * n).max(1);
    let mut t = RemapTable::new(n as usize);
    let mut keys = Vec::with_capacity(n as usize);
    while (t.len() as u64) < n {
        let lba = rng.next() % space;
        if t.get(lba).is_none() {
            t.insert(lba, Entry::remapped(t.len() as u64, 1, 0))
                .unwrap();
            keys.push(lba);
        }
    }
    let probes = (0..PROBES)
        .map(|i| {
            if i % 2 == 0 && !keys.is_empty() {
                keys[(rng.next() % n) as usize]
            } else {
                rng.next() % space
            }
        })
        .collect();
    (t, probes)
}

type Dev = RemapDevice<MemBackend, MemBackend>;

/// A device over memory with `remapped` blocks already moved, all in the last quarter of the
/// device (where the benchmarks never go).
fn device(remapped: u64) -> Dev {
    let bs = BlockSize::new(BS).unwrap();
    let blocks = DEVICE_BYTES / BS;
    let mut table = RemapTable::new(2 * POOL as usize);
    let mut spares = SpareAllocator::new(POOL).unwrap();
    for i in 0..remapped {
        let lba = blocks - 1 - 2 * i;
        let spare = spares.allocate().unwrap();
        table.insert(lba, Entry::remapped(spare, 1, 0)).unwrap();
    }
    let (store, _) = MemStore::new();
    RemapDevice::new(
        MemBackend::new(DEVICE_BYTES as usize),
        MemBackend::new((POOL * BS) as usize),
        Layout {
            block_size: bs,
            spare_offset: 0,
            spare_blocks: POOL,
        },
        InitialState {
            table,
            spares,
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        // The production clock: its cost is part of the overhead.
        Arc::new(SystemClock),
        DeviceConfig::default(),
    )
    .unwrap()
}

/// Offsets of `len`-byte requests cycling through the first half of the device.
fn offsets(len: u64) -> Vec<u64> {
    let slots = (DEVICE_BYTES / 2) / len;
    let mut rng = Rng(42);
    (0..1024).map(|_| (rng.next() % slots) * len).collect()
}

fn bench_table(c: &mut Criterion) {
    let mut g = c.benchmark_group("table");
    for n in [0u64, 1_000, 1_000_000] {
        let (t, probes) = table_and_probes(n);
        g.bench_with_input(BenchmarkId::new("get", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & (PROBES - 1);
                black_box(t.get(black_box(probes[i])))
            })
        });
    }
    g.finish();
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Read,
    Write,
}

fn run_op(b: &dyn BlockBackend, op: Op, at: u64, buf: &mut [u8]) {
    let r = match op {
        Op::Read => b.read_at(at, buf),
        Op::Write => b.write_at(at, buf),
    };
    if let Err(e) = r {
        panic!("benchmark I/O failed: {e}");
    }
}

fn bench_io(c: &mut Criterion) {
    let raw = MemBackend::new(DEVICE_BYTES as usize);
    let dev = device(0);
    let dev_1k = device(1_000);
    for (op, name) in [(Op::Read, "read"), (Op::Write, "write")] {
        let mut g = c.benchmark_group(format!("io/{name}"));
        for (len, label) in [(4096u64, "4KiB"), (1 << 20, "1MiB")] {
            g.throughput(Throughput::Bytes(len));
            let offs = offsets(len);
            let targets: [(&str, &dyn BlockBackend); 3] = [
                ("raw", &raw),
                ("remap", &dev),
                ("remap-1k-elsewhere", &dev_1k),
            ];
            for (who, backend) in targets {
                let mut buf = vec![0x5Au8; len as usize];
                g.bench_function(BenchmarkId::new(label, who), |b| {
                    let mut i = 0;
                    b.iter(|| {
                        i = (i + 1) & 1023;
                        run_op(backend, op, offs[i], &mut buf);
                    })
                });
            }
        }
        g.finish();
    }
}

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// ns per request: `rounds` alternating rounds of `per_round` requests on each backend.
fn interleaved(
    backends: &[&dyn BlockBackend],
    op: Op,
    len: u64,
    rounds: usize,
    per_round: usize,
) -> Vec<f64> {
    let offs = offsets(len);
    let mut buf = vec![0x5Au8; len as usize];
    let mut samples = vec![Vec::with_capacity(rounds); backends.len()];
    // Warm up every path (page faults on first touch, caches).
    for b in backends {
        for &at in &offs {
            run_op(*b, op, at, &mut buf);
        }
    }
    for r in 0..rounds {
        for (k, b) in backends.iter().enumerate() {
            let t0 = Instant::now();
            for i in 0..per_round {
                run_op(*b, op, offs[(r * per_round + i) & 1023], &mut buf);
            }
            samples[k].push(t0.elapsed().as_nanos() as f64 / per_round as f64);
        }
    }
    samples.iter_mut().map(|s| median(s)).collect()
}

fn summary() {
    println!();
    println!("summary (medians of interleaved rounds; overhead = device / raw - 1)");
    println!(
        "{:<6} {:>6} {:>12} {:>12} {:>9} {:>16} {:>9}",
        "op", "size", "raw ns", "remap ns", "overhead", "remap-1k-else ns", "overhead"
    );
    let raw = MemBackend::new(DEVICE_BYTES as usize);
    let dev = device(0);
    let dev_1k = device(1_000);
    for (op, name) in [(Op::Read, "read"), (Op::Write, "write")] {
        for (len, label, per_round) in [(4096u64, "4KiB", 2_000), (1 << 20, "1MiB", 8)] {
            let m = interleaved(&[&raw, &dev, &dev_1k], op, len, 101, per_round);
            println!(
                "{:<6} {:>6} {:>12.0} {:>12.0} {:>8.2}% {:>16.0} {:>8.2}%",
                name,
                label,
                m[0],
                m[1],
                (m[1] / m[0] - 1.0) * 100.0,
                m[2],
                (m[2] / m[0] - 1.0) * 100.0
            );
        }
    }
    println!();
    println!("{:<22} {:>10}", "table lookup", "median ns");
    for n in [0u64, 1_000, 1_000_000] {
        let (t, probes) = table_and_probes(n);
        let mut rounds = Vec::with_capacity(101);
        for r in 0..101 {
            let t0 = Instant::now();
            for i in 0..PROBES {
                black_box(t.get(black_box(probes[(i + r) & (PROBES - 1)])));
            }
            rounds.push(t0.elapsed().as_nanos() as f64 / PROBES as f64);
        }
        println!(
            "{:<22} {:>10.1}",
            format!("get, {n} entries"),
            median(&mut rounds)
        );
    }
    println!(
        "{:<22} {:>10.1}  (reference: one miss to memory, a pointer chase over 24 MiB)",
        "memory latency",
        memory_latency()
    );
}

/// What one miss to memory costs on this machine: a pointer chase through a random cycle
/// over 24 MiB (about the size of the 1M-entry table), each load waiting for the one
/// before. A lookup in a table that does not fit in the caches needs at least one such
/// miss unless the CPU overlaps it with the next lookup's. Median of rounds, in ns.
fn memory_latency() -> f64 {
    const WORDS: usize = 3 << 20;
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut order: Vec<usize> = (0..WORDS).collect();
    for i in (1..WORDS).rev() {
        order.swap(i, rng.next() as usize % (i + 1));
    }
    let mut next = vec![0usize; WORDS];
    for w in 0..WORDS {
        next[order[w]] = order[(w + 1) % WORDS];
    }
    let mut at = order[0];
    let mut rounds = Vec::with_capacity(101);
    for _ in 0..101 {
        let t0 = Instant::now();
        for _ in 0..PROBES / 8 {
            at = next[at];
        }
        black_box(at);
        rounds.push(t0.elapsed().as_nanos() as f64 / (PROBES / 8) as f64);
    }
    median(&mut rounds)
}

fn main() {
    if std::env::var_os("REMAP_BENCH_SUMMARY_ONLY").is_none() {
        let mut c = Criterion::default().configure_from_args();
        bench_table(&mut c);
        bench_io(&mut c);
        c.final_summary();
    }
    // `cargo bench` passes --bench; `cargo test --benches` does not, and then criterion only
    // checks that each benchmark runs, so the (slower) summary is skipped too.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
