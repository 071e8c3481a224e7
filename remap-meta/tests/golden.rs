//! Golden images of format versions 1 and 2, checked in. Three promises:
//!
//! 1. This build decodes both checked-in images to exactly the state they were made with (so
//!    a spare written by an older build keeps working);
//! 2. this build, doing the same thing, writes exactly the version 2 bytes (so any change to
//!    the format shows up here and is a deliberate act: bump the version, keep a decoder for
//!    the old one, and regenerate with `REMAP_BLESS=1 cargo test -p remap-meta --test golden`);
//! 3. a version 1 spare stays version 1 however it is used, and becomes version 2 only through
//!    `remap_meta::upgrade`.

use std::path::PathBuf;
use std::sync::Arc;

use remap_core::clock::ManualClock;
use remap_core::testing::FaultyBackend;
use remap_core::{EntryFlags, MemBackend};
use remap_meta::{CreateOptions, DeviceIdentity, IdentityKind, create, inspect, open};

const BS: u64 = 4096;
const MAIN_BYTES: u64 = 1 << 20;
const SPARE_BYTES: usize = 144 * 1024;
const UUID: [u8; 16] = *b"remap-golden-v1!";

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/v1-spare.bin")
}

fn golden_v2_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden/v2-spare.bin")
}

fn pattern(lba: u64) -> Vec<u8> {
    (0..BS)
        .map(|i| (lba as u8).wrapping_mul(31) ^ (i as u8))
        .collect()
}

/// The image: a checkpoint holding three remapped blocks (a contiguous run), then in the
/// journal a fourth remap, a pending block, and a remap whose first spare failed and was
/// retired.
fn build() -> Vec<u8> {
    let spare = Arc::new(FaultyBackend::new(MemBackend::new(SPARE_BYTES), BS));
    let opts = CreateOptions {
        journal_blocks: Some(4),
        pool_blocks: Some(8),
        uuid: Some(UUID),
        created_ns: Some(1_764_000_000_000_000_000),
        ..Default::default()
    };
    let identity = DeviceIdentity::new(IdentityKind::Serial, b"GOLDEN-DISK-0001");
    let sb = create(&*spare, MAIN_BYTES, identity, &opts).unwrap();
    let main = FaultyBackend::new(MemBackend::new(MAIN_BYTES as usize), BS);
    let clock = Arc::new(ManualClock::new(1_764_000_100_000_000_000));
    let dev = open(main, spare.clone(), &identity, clock.clone())
        .unwrap()
        .device;
    dev.main().fail_writes([1, 2, 3, 10, 30]);
    dev.main().fail_reads([20]);
    for lba in [1u64, 2, 3] {
        dev.write(lba * BS, &pattern(lba)).unwrap();
    }
    dev.checkpoint().unwrap();
    clock.advance_ns(60_000_000_000);
    dev.write(10 * BS, &pattern(10)).unwrap();
    assert!(dev.read(20 * BS, &mut [0u8; BS as usize]).is_err());
    // The next free spare block (4) fails: retired, block 30 lands on spare 5.
    spare.fail_writes([sb.geometry.pool_offset / BS + 4]);
    dev.write(30 * BS, &pattern(30)).unwrap();
    drop(dev);
    spare.inner().to_vec()
}

#[test]
fn golden_v1_decodes_to_the_state_it_was_made_with() {
    let bytes = std::fs::read(golden_path()).expect("golden image is checked in");
    let rec = assert_golden_state(bytes);
    assert_eq!(rec.superblock.version, 1);
    assert!(
        rec.report.superblock_tail.is_err(),
        "version 1 has no tail copy"
    );
    assert_eq!(rec.report.counters_from_journal, None);
}

#[test]
fn golden_v2_decodes_to_the_state_it_was_made_with() {
    let bytes = std::fs::read(golden_v2_path()).expect("golden image is checked in");
    let rec = assert_golden_state(bytes);
    assert_eq!(rec.superblock.version, 2);
    assert_eq!(rec.report.superblock_tail, Ok(rec.superblock.sequence));
    assert!(rec.report.superblocks_agree);
    // The counters come from the last journal commit, not the older checkpoint.
    assert!(rec.report.counters_from_journal.is_some());
    let stats = remap_meta::counters::to_snapshot(&rec.counters);
    assert_eq!(stats.main_write_errors, 5, "five failed main writes");
    assert_eq!(stats.remaps, 5);
}

/// A version 1 spare used by this build keeps its version (two copies, journal blocks
/// without counters); `upgrade` makes it version 2 with the same table and data.
#[test]
fn golden_v1_stays_v1_in_use_and_upgrades_only_on_request() {
    let bytes = std::fs::read(golden_path()).expect("golden image is checked in");
    let spare = Arc::new(FaultyBackend::new(MemBackend::from_vec(bytes), BS));
    let identity = DeviceIdentity::new(IdentityKind::Serial, b"GOLDEN-DISK-0001");
    {
        let main = FaultyBackend::new(MemBackend::new(MAIN_BYTES as usize), BS);
        let dev = open(
            main,
            spare.clone(),
            &identity,
            Arc::new(ManualClock::new(0)),
        )
        .unwrap()
        .device;
        dev.main().fail_writes([40]);
        dev.write(40 * BS, &pattern(40)).unwrap();
        dev.checkpoint().unwrap();
        dev.main().fail_writes([41]);
        dev.write(41 * BS, &pattern(41)).unwrap();
    }
    let rec = inspect(spare.inner()).unwrap();
    assert_eq!(rec.superblock.version, 1, "an open never upgrades");
    assert_eq!(rec.report.counters_from_journal, None);
    let tail_at = spare.inner().to_vec().len() - BS as usize;
    let table: Vec<_> = rec.table.iter().collect();
    let report = remap_meta::upgrade(spare.inner()).unwrap();
    assert_eq!((report.from_version, report.to_version), (1, 2));
    assert!(!report.unchanged);
    assert_eq!(report.tail_offset, tail_at as u64);
    let up = inspect(spare.inner()).unwrap();
    assert_eq!(up.superblock.version, 2);
    assert_eq!(up.report.superblock_tail, Ok(up.superblock.sequence));
    assert_eq!(up.table.iter().collect::<Vec<_>>(), table);
    assert_eq!(up.counters, rec.counters);
    // A second upgrade writes nothing.
    let before = spare.inner().to_vec();
    assert!(remap_meta::upgrade(spare.inner()).unwrap().unchanged);
    assert_eq!(spare.inner().to_vec(), before);
    // The data is where it was; the head copies can go now.
    let main = MemBackend::new(MAIN_BYTES as usize);
    let dev = open(
        main,
        spare.clone(),
        &identity,
        Arc::new(ManualClock::new(0)),
    )
    .unwrap()
    .device;
    for lba in [1u64, 2, 3, 10, 30, 40, 41] {
        let mut buf = vec![0u8; BS as usize];
        dev.read(lba * BS, &mut buf).unwrap();
        assert_eq!(buf, pattern(lba), "block {lba}");
    }
    drop(dev);
    let mut wiped = spare.inner().to_vec();
    wiped[..8192].fill(0);
    let rec = inspect(&MemBackend::from_vec(wiped)).unwrap();
    assert_eq!(
        rec.report.superblock_used,
        remap_meta::Region::SuperblockTail
    );
    assert_eq!(rec.table.iter().collect::<Vec<_>>(), table);
}

/// Decode a golden image and check the state it was built with; returns the recovery.
fn assert_golden_state(bytes: Vec<u8>) -> remap_meta::Recovered {
    let spare = Arc::new(MemBackend::from_vec(bytes));
    let rec = inspect(&*spare).unwrap();
    let sb = rec.superblock;
    assert_eq!(sb.uuid, UUID);
    assert_eq!(sb.created_ns, 1_764_000_000_000_000_000);
    assert_eq!(sb.geometry.block_size.bytes(), 4096);
    assert_eq!(sb.geometry.main_size, MAIN_BYTES);
    assert_eq!(
        (sb.geometry.journal_blocks, sb.geometry.pool_blocks),
        (4, 8)
    );
    assert_eq!(sb.identity.value(), b"GOLDEN-DISK-0001");
    assert_eq!(sb.checkpoint_sequence, 2);
    let entries: Vec<_> = rec
        .table
        .iter()
        .map(|(lba, e)| (lba, e.spare, e.flags, e.error_count))
        .collect();
    assert_eq!(
        entries,
        vec![
            (1, Some(0), EntryFlags::REMAPPED, 1),
            (2, Some(1), EntryFlags::REMAPPED, 1),
            (3, Some(2), EntryFlags::REMAPPED, 1),
            (10, Some(3), EntryFlags::REMAPPED, 1),
            (20, None, EntryFlags::PENDING, 1),
            (30, Some(5), EntryFlags::REMAPPED, 1),
        ]
    );
    assert_eq!(rec.table.get(10).unwrap().time_s, 1_764_000_160);
    assert_eq!(rec.spares.retired().collect::<Vec<_>>(), vec![4]);
    assert_eq!(rec.report.checkpoint_entries, 3);
    assert_eq!(rec.report.journal_blocks_replayed, 3);
    // Data of the remapped blocks, read through an opened device.
    let main = MemBackend::new(MAIN_BYTES as usize);
    let identity = DeviceIdentity::new(IdentityKind::Serial, b"GOLDEN-DISK-0001");
    let dev = open(main, spare, &identity, Arc::new(ManualClock::new(0)))
        .unwrap()
        .device;
    for lba in [1u64, 2, 3, 10, 30] {
        let mut buf = vec![0u8; BS as usize];
        dev.read(lba * BS, &mut buf).unwrap();
        assert_eq!(buf, pattern(lba), "block {lba}");
    }
    assert!(dev.read(20 * BS, &mut [0u8; BS as usize]).is_err());
    rec
}

#[test]
fn this_build_writes_golden_v2_byte_for_byte() {
    let built = build();
    if std::env::var_os("REMAP_BLESS").is_some() {
        std::fs::create_dir_all(golden_v2_path().parent().unwrap()).unwrap();
        std::fs::write(golden_v2_path(), &built).unwrap();
        return;
    }
    let golden = std::fs::read(golden_v2_path()).expect("golden image is checked in");
    assert_eq!(built.len(), golden.len());
    if let Some(at) = built.iter().zip(&golden).position(|(a, b)| a != b) {
        panic!(
            "this build writes a different image (first difference at byte {at}): the on-disk \
             format changed. Bump the format version and keep reading versions 1 and 2, then \
             regenerate with REMAP_BLESS=1."
        );
    }
}
