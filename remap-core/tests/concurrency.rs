//! Many threads writing and verifying while faults are injected: no corruption, and every
//! acknowledged write reads back.
//!
//! The device (64 blocks of 4 KiB) has two regions:
//!
//! - blocks 0..32: each writer owns 8 whole blocks (disjoint regions) and writes runs of
//!   sectors in them, some FUA, some write-zeroes;
//! - blocks 32..64: shared; writer `t` owns the sectors `s` with `s % WRITERS == t`, so every
//!   block is written by all writers at once, one sector at a time. When such a block must
//!   move, the move's read-modify-write races the other writers' sector writes.
//!
//! Every sector written carries `(writer, sequence, sector)`. Writers check their own
//! sectors exactly after each acknowledged write; a reader thread checks that whatever it
//! reads anywhere was written by that sector's owner, for that sector, and not from the
//! future. Meanwhile a fault thread adds sticky write failures on random main sectors and
//! turns on transient main errors (reads and writes) well within the read retry budget.
//! The spare fails writes now and then too, so remapped blocks move again (merging the rest
//! of the block from their old spare while others write it). At the end every sector must
//! hold its owner's last acknowledged value, and the records committed to the store must
//! rebuild exactly the device's table.
//!
//! A second test aims at the windows where a table change races a request: a mover thread
//! keeps moving blocks to spares and back (by hand and through write faults) while writers
//! hammer the same blocks one sector each, with latency on main to widen the windows; once
//! with the table often empty (the lock-free fast path), once with a block kept remapped
//! (the locked path).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use remap_core::backend::MemBackend;
use remap_core::clock::SystemClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::stats::StatsSnapshot;
use remap_core::testing::model::{decode_sector, sector_content};
use remap_core::testing::{FaultyBackend, MemStore};
use remap_core::{BlockSize, RemapDevice, RemapTable, SpareAllocator};

const BS: u64 = 4096;
const SECTOR: u64 = 512;
const BLOCKS: u64 = 64;
const SHARED_FROM: u64 = 32;
const WRITERS: u64 = 4;
const SPB: u64 = BS / SECTOR;
const SECTORS: u64 = BLOCKS * SPB;
const ITERATIONS: u64 = 30_000;
/// Spare write faults make blocks move again; each move retires a spare.
const POOL: u64 = 4_096;

type Faulty = FaultyBackend<MemBackend>;
type Dev = RemapDevice<Arc<Faulty>, Arc<Faulty>>;

fn device(
    blocks: u64,
    pool: u64,
    read_retries: u32,
) -> (
    Dev,
    Arc<Faulty>,
    Arc<Faulty>,
    remap_core::testing::MemStoreHandle,
) {
    let main = Arc::new(FaultyBackend::new(
        MemBackend::new((blocks * BS) as usize),
        SECTOR,
    ));
    let spare = Arc::new(FaultyBackend::new(
        MemBackend::new((pool * BS) as usize),
        SECTOR,
    ));
    let (store, records) = MemStore::new();
    let dev = RemapDevice::new(
        main.clone(),
        spare.clone(),
        Layout {
            block_size: BlockSize::new(BS).unwrap(),
            spare_offset: 0,
            spare_blocks: pool,
        },
        InitialState {
            table: RemapTable::new(2 * pool as usize),
            spares: SpareAllocator::new(pool).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        Arc::new(SystemClock),
        DeviceConfig {
            read_retries,
            ..DeviceConfig::default()
        },
    )
    .unwrap();
    (dev, main, spare, records)
}

fn owner(sector: u64) -> u64 {
    let block = sector / SPB;
    if block < SHARED_FROM {
        block / (SHARED_FROM / WRITERS)
    } else {
        sector % WRITERS
    }
}

fn tag(writer: u64, seq: u64) -> u64 {
    ((writer + 1) << 40) | seq
}

fn tag_writer(tag: u64) -> u64 {
    (tag >> 40).wrapping_sub(1)
}

fn tag_seq(tag: u64) -> u64 {
    tag & ((1 << 40) - 1)
}

/// Stops the other threads if this one panics, so a failure ends the test instead of
/// leaving threads that wait for each other.
struct StopOnPanic<'a>(&'a AtomicBool);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.store(true, Ordering::SeqCst);
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn buffer(value: u64, first_sector: u64, sectors: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity((sectors * SECTOR) as usize);
    for s in first_sector..first_sector + sectors {
        buf.extend_from_slice(&sector_content(value, s));
    }
    buf
}

/// Check a buffer read from `first_sector`: each sector is zero or its owner's tag, issued
/// already. Returns the decoded values.
fn check_read(buf: &[u8], first_sector: u64, issued: &[AtomicU64], who: &str) -> Vec<u64> {
    buf.chunks_exact(SECTOR as usize)
        .enumerate()
        .map(|(i, bytes)| {
            let s = first_sector + i as u64;
            let Some(v) = decode_sector(bytes, s) else {
                panic!("{who}: sector {s} holds bytes no write put there: {:02x?}", &bytes[..16]);
            };
            if v != 0 {
                let w = tag_writer(v);
                assert_eq!(w, owner(s), "{who}: sector {s} holds writer {w}'s data");
                let latest = issued[w as usize].load(Ordering::SeqCst);
                assert!(
                    tag_seq(v) <= latest,
                    "{who}: sector {s} holds writer {w}'s write {} before it was issued (latest {latest})",
                    tag_seq(v)
                );
            }
            v
        })
        .collect()
}

fn writer(dev: &Dev, t: u64, issued: &[AtomicU64], seed: u64) -> Vec<u64> {
    let mut rng = Rng(seed | 1);
    let mut expected = vec![0u64; SECTORS as usize];
    let mut seq = 0u64;
    let own_first = t * (SHARED_FROM / WRITERS) * SPB;
    let own_sectors = (SHARED_FROM / WRITERS) * SPB;
    let who = format!("writer {t}");
    for _ in 0..ITERATIONS {
        seq += 1;
        issued[t as usize].store(seq, Ordering::SeqCst);
        let value = tag(t, seq);
        let roll = rng.below(100);
        let (first, count, written) = if roll < 45 {
            // A run of sectors in the private region: unaligned, multi-block.
            let first = own_first + rng.below(own_sectors);
            let count = (1 + rng.below(3 * SPB)).min(own_first + own_sectors - first);
            let buf = buffer(value, first, count);
            let r = if rng.below(8) == 0 {
                dev.write_fua(first * SECTOR, &buf)
            } else {
                dev.write(first * SECTOR, &buf)
            };
            if let Err(e) = r {
                panic!("{who}: write of sectors {first}+{count} failed: {e}");
            }
            (first, count, value)
        } else if roll < 50 {
            let first = own_first + rng.below(own_sectors);
            let count = (1 + rng.below(2 * SPB)).min(own_first + own_sectors - first);
            if let Err(e) = dev.write_zeroes(first * SECTOR, count * SECTOR, false) {
                panic!("{who}: write-zeroes of sectors {first}+{count} failed: {e}");
            }
            (first, count, 0)
        } else if roll < 95 {
            // One owned sector inside a shared block: a partial-block write.
            let block = SHARED_FROM + rng.below(BLOCKS - SHARED_FROM);
            let s = block * SPB + (t + WRITERS * rng.below(SPB / WRITERS));
            if let Err(e) = dev.write(s * SECTOR, &buffer(value, s, 1)) {
                panic!("{who}: write of shared sector {s} failed: {e}");
            }
            (s, 1, value)
        } else if roll < 97 {
            if let Err(e) = dev.flush() {
                panic!("{who}: flush failed: {e}");
            }
            continue;
        } else {
            // Re-read a stretch of the private region.
            let first = own_first + rng.below(own_sectors - SPB);
            let mut buf = vec![0u8; (SPB * SECTOR) as usize];
            if let Err(e) = dev.read(first * SECTOR, &mut buf) {
                panic!("{who}: read of sectors {first}+{SPB} failed: {e}");
            }
            let got = check_read(&buf, first, issued, &who);
            assert_eq!(
                got,
                expected[first as usize..(first + SPB) as usize],
                "{who}"
            );
            continue;
        };
        for s in first..first + count {
            expected[s as usize] = written;
        }
        // The acknowledged write reads back right away.
        let mut buf = vec![0u8; (count * SECTOR) as usize];
        if let Err(e) = dev.read(first * SECTOR, &mut buf) {
            panic!("{who}: read-back of sectors {first}+{count} failed: {e}");
        }
        let got = check_read(&buf, first, issued, &who);
        assert_eq!(
            got,
            expected[first as usize..(first + count) as usize],
            "{who}: acknowledged write of sectors {first}+{count} does not read back"
        );
    }
    expected
}

#[test]
fn threads_writing_and_verifying_under_injected_faults() {
    // 2 % transient faults: nine attempts make a surfaced read error ~5e-16.
    let (dev, main, spare, records) = device(BLOCKS, POOL, 8);
    let issued: Vec<AtomicU64> = (0..WRITERS).map(|_| AtomicU64::new(0)).collect();
    let done = AtomicBool::new(false);
    let reads_checked = AtomicU64::new(0);
    let faults_added = AtomicU64::new(0);

    let expected: Vec<Vec<u64>> = std::thread::scope(|scope| {
        // Faults arrive while the writers run.
        scope.spawn(|| {
            let mut rng = Rng(0xFA17);
            main.set_transient(20_000, 99);
            // The spare fails now and then too: its read errors stay within the retry
            // budget, its write errors move remapped blocks again.
            spare.set_transient(50_000, 98);
            while !done.load(Ordering::SeqCst) {
                if faults_added.load(Ordering::SeqCst) < 64 {
                    main.fail_writes([rng.below(SECTORS)]);
                    faults_added.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(std::time::Duration::from_micros(100));
            }
        });
        // A reader checking everything it sees.
        scope.spawn(|| {
            let mut rng = Rng(0x5EAD);
            while !done.load(Ordering::SeqCst) {
                let first = rng.below(SECTORS);
                let count = (1 + rng.below(4 * SPB)).min(SECTORS - first);
                let mut buf = vec![0u8; (count * SECTOR) as usize];
                if let Err(e) = dev.read(first * SECTOR, &mut buf) {
                    panic!("reader: read of sectors {first}+{count} failed: {e}");
                }
                check_read(&buf, first, &issued, "reader");
                reads_checked.fetch_add(1, Ordering::Relaxed);
            }
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|t| {
                let (dev, issued, done) = (&dev, &issued, &done);
                scope.spawn(move || {
                    let _stop = StopOnPanic(done);
                    writer(dev, t, issued, 0x1234_5678 + t * 7919)
                })
            })
            .collect();
        let joined: Vec<_> = writers.into_iter().map(|h| h.join()).collect();
        done.store(true, Ordering::SeqCst);
        joined
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });

    // Every sector holds its owner's last acknowledged value.
    main.heal_all();
    spare.heal_all();
    let mut all = vec![0u8; (SECTORS * SECTOR) as usize];
    dev.read(0, &mut all).unwrap();
    let got = check_read(&all, 0, &issued, "final check");
    for s in 0..SECTORS {
        let want = expected[owner(s) as usize][s as usize];
        assert_eq!(got[s as usize], want, "sector {s} (owner {})", owner(s));
    }

    // The committed records rebuild exactly the device's state.
    let (table, spares) = records.replay(BLOCKS, POOL, 2 * POOL as usize).unwrap();
    assert_eq!(table.iter().collect::<Vec<_>>(), dev.entries(0, BLOCKS));
    dev.with_state(|t, s| {
        t.check_invariants().unwrap();
        s.check_invariants().unwrap();
        assert_eq!(s, &spares);
        assert_eq!(s.used_count(), t.remapped_count() as u64);
    });

    let stats = dev.stats();
    let injected = main.injected();
    let spare_injected = spare.injected().transient;
    eprintln!(
        "{} writer operations, {} reader checks; {} sticky write faults and {} transient \
         faults on main, {} transient faults on the spare; {} remaps, {} spares retired, {} \
         transient recoveries, {} failed I/Os",
        WRITERS * ITERATIONS,
        reads_checked.load(Ordering::Relaxed),
        injected.sticky_writes,
        injected.transient,
        spare_injected,
        stats.remaps,
        stats.spares_retired,
        stats.transient_recoveries,
        stats.failed_ios
    );
    // The run exercised what it claims to.
    assert!(stats.remaps >= 10, "only {} remaps", stats.remaps);
    assert!(
        stats.spares_retired > 0,
        "no block moved off a failing spare"
    );
    assert!(injected.transient > 100 && stats.transient_recoveries > 0);
    assert!(injected.sticky_writes > 0);
    assert!(reads_checked.load(Ordering::Relaxed) > 100);
    assert_eq!(stats.failed_ios, 0);
    assert_eq!(stats.pending_blocks, 0);
}

/// Writers each own one sector of every block and check every acknowledged write at once;
/// a mover keeps changing the table under them.
fn race(keep_one_mapped: bool) {
    const BLOCKS: u64 = 8;
    const WRITERS: u64 = 3;
    const ROUNDS: u64 = 400;
    let (dev, main, spare, records) = device(BLOCKS, 64, 3);
    // Widen the windows: every I/O takes a while.
    main.set_latency(std::time::Duration::from_micros(20));
    spare.set_latency(std::time::Duration::from_micros(20));
    if keep_one_mapped {
        dev.map_block(BLOCKS - 1, false).unwrap();
    }
    let done = AtomicBool::new(false);
    let acked: Vec<AtomicU64> = (0..BLOCKS * SPB).map(|_| AtomicU64::new(0)).collect();
    let moved = AtomicU64::new(0);
    let sector_of = |block: u64, t: u64| block * SPB + t;
    std::thread::scope(|scope| {
        for t in 0..WRITERS {
            let (dev, done, acked) = (&dev, &done, &acked);
            scope.spawn(move || {
                let _stop = StopOnPanic(done);
                let mut rng = Rng(0xACE + t);
                let mut seq = 0;
                while !done.load(Ordering::SeqCst) {
                    seq += 1;
                    let block = rng.below(if keep_one_mapped { BLOCKS - 1 } else { BLOCKS });
                    let s = sector_of(block, t);
                    let value = ((t + 1) << 40) | seq;
                    if let Err(e) = dev.write(s * SECTOR, &sector_content(value, s)) {
                        panic!("writer {t}: write of sector {s} failed: {e}");
                    }
                    acked[s as usize].store(value, Ordering::SeqCst);
                    let mut buf = vec![0u8; SECTOR as usize];
                    if let Err(e) = dev.read(s * SECTOR, &mut buf) {
                        panic!("writer {t}: read of sector {s} failed: {e}");
                    }
                    assert_eq!(
                        decode_sector(&buf, s),
                        Some(value),
                        "writer {t}: acknowledged write to sector {s} (block {block}) was lost"
                    );
                }
            });
        }
        // The mover: by hand, or by a write fault on a sector some writer will hit.
        let _stop = StopOnPanic(&done);
        let mut rng = Rng(0xB0B);
        let movable = if keep_one_mapped { BLOCKS - 1 } else { BLOCKS };
        for round in 0..ROUNDS {
            if done.load(Ordering::SeqCst) {
                break; // a writer failed
            }
            let block = rng.below(movable);
            if round % 2 == 0 {
                dev.map_block(block, false).unwrap();
            } else {
                let s = sector_of(block, rng.below(WRITERS));
                main.fail_writes([s]);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while dev.entry(block).is_none() {
                    assert!(
                        std::time::Instant::now() < deadline && !done.load(Ordering::SeqCst),
                        "no write hit sector {s}"
                    );
                    std::thread::yield_now();
                }
                main.heal([s]);
            }
            moved.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_micros(50 + rng.below(200)));
            dev.unmap_block(block).unwrap();
        }
        done.store(true, Ordering::SeqCst);
    });
    for s in 0..BLOCKS * SPB {
        let mut buf = vec![0u8; SECTOR as usize];
        dev.read(s * SECTOR, &mut buf).unwrap();
        assert_eq!(
            decode_sector(&buf, s),
            Some(acked[s as usize].load(Ordering::SeqCst)),
            "sector {s} lost its last acknowledged write"
        );
    }
    let (table, _) = records.replay(BLOCKS, 64, 2 * 64).unwrap();
    assert_eq!(table.iter().collect::<Vec<_>>(), dev.entries(0, BLOCKS));
    assert_eq!(moved.load(Ordering::SeqCst), ROUNDS);
}

#[test]
fn table_changes_racing_requests_on_the_lock_free_path_lose_nothing() {
    race(false);
}

#[test]
fn table_changes_racing_requests_on_the_locked_path_lose_nothing() {
    race(true);
}
