//! Golden images of format version 1, checked in. Two promises:
//!
//! 1. This build decodes the checked-in image to exactly the state it was made with (so a
//!    spare written by an older build keeps working);
//! 2. this build, doing the same thing, writes exactly the same bytes (so any change to the
//!    format shows up here and is a deliberate act: bump the version, keep a decoder for the
//!    old one, and regenerate with `REMAP_BLESS=1 cargo test -p remap-meta --test golden`).

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
}

#[test]
fn this_build_writes_golden_v1_byte_for_byte() {
    let built = build();
    if std::env::var_os("REMAP_BLESS").is_some() {
        std::fs::create_dir_all(golden_path().parent().unwrap()).unwrap();
        std::fs::write(golden_path(), &built).unwrap();
        return;
    }
    let golden = std::fs::read(golden_path()).expect("golden image is checked in");
    assert_eq!(built.len(), golden.len());
    if let Some(at) = built.iter().zip(&golden).position(|(a, b)| a != b) {
        panic!(
            "this build writes a different image (first difference at byte {at}): the on-disk \
             format changed. Bump the format version and keep reading version 1, then \
             regenerate with REMAP_BLESS=1."
        );
    }
}
