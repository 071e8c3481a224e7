//! Metadata costs, measured on files in a temporary directory (set `TMPDIR` to choose the
//! file system):
//!
//! - remap commit latency: a write to a failing main block, which writes the data to a spare
//!   block, flushes, appends a journal block (twice) and flushes again before returning;
//!   against the baseline of one 4 KiB write + fdatasync on the same file system, same run;
//! - open time of a spare holding 1,000,000 remaps (a checkpoint of 24 MB).
//!
//! `cargo bench -p remap-meta --bench meta` prints a table. Run with `-- --quick` for fewer
//! samples.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use remap_core::clock::SystemClock;
use remap_core::record::{Record, RemapCause};
use remap_core::testing::FaultyBackend;
use remap_core::{BlockSize, FileBackend, RemapTable, SpareAllocator};
use remap_meta::io::BackendIo;
use remap_meta::journal::StateView;
use remap_meta::{CreateOptions, DeviceIdentity, create, inspect, open};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

/// Write the whole file once, so the measurements are overwrites (as on a disk), not file
/// system block allocations.
fn preallocate(f: &std::fs::File, len: u64) {
    let zeros = vec![0u8; 1 << 20];
    for off in (0..len).step_by(zeros.len()) {
        f.write_all_at(&zeros, off).unwrap();
    }
    f.sync_all().unwrap();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir().unwrap();
    let n = if quick { 100 } else { 500 };

    // Baseline: 4 KiB write + fdatasync.
    let base_path = dir.path().join("baseline.img");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&base_path)
        .unwrap();
    preallocate(&f, 64 << 20);
    let block = vec![0xA5u8; 4096];
    let mut base = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let t = Instant::now();
        f.write_all_at(&block, (i * 7919 % 16384) * 4096).unwrap();
        f.sync_data().unwrap();
        base.push(t.elapsed());
    }

    // Remap commits through the engine on files.
    let main_path = dir.path().join("main.img");
    let spare_path = dir.path().join("spare.img");
    for (p, len) in [(&main_path, 64u64 << 20), (&spare_path, 32 << 20)] {
        let f = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(p)
            .unwrap();
        preallocate(&f, len);
    }
    let spare = Arc::new(FileBackend::open(&spare_path).unwrap());
    create(
        &*spare,
        64 << 20,
        DeviceIdentity::NONE,
        &CreateOptions::default(),
    )
    .unwrap();
    let main = FaultyBackend::new(FileBackend::open(&main_path).unwrap(), 4096);
    main.fail_writes(0..n as u64);
    let dev = open(main, spare, &DeviceIdentity::NONE, Arc::new(SystemClock))
        .unwrap()
        .device;
    let mut remap = Vec::with_capacity(n);
    for lba in 0..n as u64 {
        let t = Instant::now();
        dev.write(lba * 4096, &block).unwrap();
        remap.push(t.elapsed());
    }
    assert_eq!(dev.stats().remaps, n as u64);
    drop(dev);

    // Open with 1,000,000 remaps: a 512-byte-block spare with room for them.
    let big_path = dir.path().join("big-spare.img");
    let entries = 1_000_000u64;
    let bs = BlockSize::new(512).unwrap();
    let geometry =
        remap_meta::Geometry::plan(u64::MAX / 4, 1 << 40, bs, 1024, Some(entries)).unwrap();
    let big_len = geometry.pool_offset + entries * 512;
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&big_path)
        .unwrap()
        .set_len(big_len)
        .unwrap();
    let big = FileBackend::open(&big_path).unwrap();
    let opts = CreateOptions {
        block_size: bs,
        journal_blocks: Some(1024),
        pool_blocks: Some(entries),
        ..Default::default()
    };
    create(&big, 1 << 40, DeviceIdentity::NONE, &opts).unwrap();
    let mut rec = inspect(&big).unwrap();
    let mut table = RemapTable::new(rec.superblock.geometry.table_capacity as usize);
    let mut spares = SpareAllocator::new(entries).unwrap();
    for i in 0..entries {
        let r = Record::Remap {
            lba: i * 3,
            spare: i,
            cause: RemapCause::WriteError,
            time_s: 1,
        };
        remap_core::record::apply(&mut table, &mut spares, 1 << 31, &r).unwrap();
    }
    let counters = [0u64; remap_meta::counters::SLOTS];
    let t = Instant::now();
    rec.journal
        .checkpoint(
            &mut BackendIo(&big),
            &StateView {
                table: &table,
                spares: &spares,
                counters: &counters,
            },
        )
        .unwrap();
    let checkpoint_time = t.elapsed();
    drop(table);
    let runs = if quick { 2 } else { 5 };
    let mut opens = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let r = inspect(&big).unwrap();
        opens.push(t.elapsed());
        assert_eq!(r.table.len() as u64, entries);
    }

    let (b50, b99) = summary(base);
    let (r50, r99) = summary(remap);
    let (o50, _) = summary(opens);
    println!(
        "remap-meta metadata costs ({} samples, files in {})",
        n,
        dir.path().display()
    );
    println!("| measurement | median | p99 |");
    println!("| --- | --- | --- |");
    println!("| baseline: 4 KiB write + fdatasync | {b50:.2?} | {b99:.2?} |");
    println!("| remap commit (write error -> spare, durable) | {r50:.2?} | {r99:.2?} |");
    println!(
        "| ratio remap commit / baseline | {:.2}x | {:.2}x |",
        r50.as_secs_f64() / b50.as_secs_f64(),
        r99.as_secs_f64() / b99.as_secs_f64()
    );
    println!("| checkpoint of 1,000,000 entries (24 MB) | {checkpoint_time:.2?} | |");
    println!("| open with 1,000,000 remaps (median of {runs}) | {o50:.2?} | |");
}
