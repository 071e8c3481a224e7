//! Create, open, remap, reopen: the table survives, checkpoints rotate, the journal wraps,
//! and a spare is refused for the wrong main device.

use std::sync::Arc;

use remap_core::MemBackend;
use remap_core::clock::ManualClock;
use remap_core::testing::FaultyBackend;
use remap_meta::open::MetaError;
use remap_meta::{CreateOptions, DeviceIdentity, IdentityKind, create, inspect, open};

const MAIN: usize = 4 << 20;
const SPARE: usize = 2 << 20;

fn opts() -> CreateOptions {
    CreateOptions {
        journal_blocks: Some(8),
        pool_blocks: Some(64),
        ..Default::default()
    }
}

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_000_000_000_000))
}

#[test]
fn remaps_survive_reopen_through_journal_wraps_and_checkpoints() {
    let spare = Arc::new(MemBackend::new(SPARE));
    let sb = create(&*spare, MAIN as u64, DeviceIdentity::NONE, &opts()).unwrap();
    assert_eq!(sb.geometry.pool_blocks, 64);
    let main = FaultyBackend::new(MemBackend::new(MAIN), 4096);
    // 40 failing blocks, each remapped by its own write: 40 commits through an 8-block
    // journal, so the ring wraps and several checkpoints are written.
    let bad: Vec<u64> = (0..40).map(|i| i * 3 + 1).collect();
    main.fail_writes(bad.iter().copied());
    let opened = open(main, spare.clone(), &DeviceIdentity::NONE, clock()).unwrap();
    let dev = opened.device;
    for (i, &lba) in bad.iter().enumerate() {
        dev.write(lba * 4096, &[i as u8 + 1; 4096]).unwrap();
    }
    assert_eq!(dev.stats().remaps, 40);
    let seq_before = dev.sequence();
    drop(dev);

    let rec = inspect(&*spare).unwrap();
    assert_eq!(rec.table.remapped_count(), 40);
    assert!(
        rec.superblock.checkpoint_sequence > 1,
        "journal wrapped into checkpoints"
    );
    assert!(rec.superblock.sequence > 1);
    // The main device still fails writes; reopen over the raw memory of the old main.
    let main2 = FaultyBackend::new(MemBackend::new(MAIN), 4096);
    let reopened = open(main2, spare.clone(), &DeviceIdentity::NONE, clock()).unwrap();
    let dev = reopened.device;
    assert!(dev.sequence() >= seq_before);
    for (i, &lba) in bad.iter().enumerate() {
        let mut buf = [0u8; 4096];
        dev.read(lba * 4096, &mut buf).unwrap();
        assert_eq!(buf, [i as u8 + 1; 4096], "block {lba}");
    }
    dev.with_state(|t, s| {
        t.check_invariants().unwrap();
        s.check_invariants().unwrap();
        assert_eq!(s.used_count(), 40);
    });
}

#[test]
fn refuses_to_format_over_metadata_without_force() {
    let spare = MemBackend::new(SPARE);
    create(&spare, MAIN as u64, DeviceIdentity::NONE, &opts()).unwrap();
    let before = spare.to_vec();
    assert!(matches!(
        create(&spare, MAIN as u64, DeviceIdentity::NONE, &opts()),
        Err(MetaError::AlreadyFormatted)
    ));
    assert_eq!(spare.to_vec(), before, "a refused create changes nothing");
    let forced = CreateOptions {
        force: true,
        ..opts()
    };
    let sb = create(&spare, MAIN as u64, DeviceIdentity::NONE, &forced).unwrap();
    assert_eq!(inspect(&spare).unwrap().superblock.uuid, sb.uuid);
}

#[test]
fn refuses_the_wrong_main_device() {
    let spare = Arc::new(MemBackend::new(SPARE));
    let id = DeviceIdentity::new(IdentityKind::Serial, b"DISK-A");
    create(&*spare, MAIN as u64, id, &opts()).unwrap();
    let before = spare.to_vec();
    let other_size = MemBackend::new(MAIN + 4096);
    assert!(matches!(
        open(other_size, spare.clone(), &id, clock()),
        Err(MetaError::WrongMainSize { .. })
    ));
    let other_disk = DeviceIdentity::new(IdentityKind::Serial, b"DISK-B");
    let err = open(MemBackend::new(MAIN), spare.clone(), &other_disk, clock()).unwrap_err();
    assert!(matches!(err, MetaError::WrongMainIdentity { .. }));
    assert!(err.to_string().contains("DISK-A") && err.to_string().contains("DISK-B"));
    assert_eq!(spare.to_vec(), before, "a refused open changes nothing");
    open(MemBackend::new(MAIN), spare, &id, clock()).unwrap();
}

#[test]
fn pending_and_retired_state_survive_reopen() {
    let spare = Arc::new(FaultyBackend::new(MemBackend::new(SPARE), 4096));
    let sb = create(&*spare, MAIN as u64, DeviceIdentity::NONE, &opts()).unwrap();
    let pool_block0 = sb.geometry.pool_offset / 4096;
    let main = FaultyBackend::new(MemBackend::new(MAIN), 4096);
    main.fail_reads([7]);
    main.fail_writes([9]);
    // The first spare block fails writes: it gets retired, block 9 lands on spare 1.
    spare.fail_writes([pool_block0]);
    let dev = open(main, spare.clone(), &DeviceIdentity::NONE, clock())
        .unwrap()
        .device;
    assert!(dev.read(7 * 4096, &mut [0u8; 4096]).is_err());
    dev.write(9 * 4096, &[9u8; 4096]).unwrap();
    dev.checkpoint().unwrap();
    dev.write(20 * 4096, &[1u8; 4096]).unwrap();
    drop(dev);
    let rec = inspect(&*spare).unwrap();
    assert!(rec.table.get(7).unwrap().is_pending());
    assert_eq!(rec.table.get(9).unwrap().spare, Some(1));
    assert_eq!(rec.spares.retired().collect::<Vec<_>>(), vec![0]);
    let records: u64 = rec.report.records_replayed;
    assert_eq!(
        records, 0,
        "the checkpoint holds everything; no journal since"
    );
}

#[test]
fn settings_are_persisted_in_both_superblocks() {
    let spare = Arc::new(MemBackend::new(SPARE));
    create(&*spare, MAIN as u64, DeviceIdentity::NONE, &opts()).unwrap();
    let dev = open(
        MemBackend::new(MAIN),
        spare.clone(),
        &DeviceIdentity::NONE,
        clock(),
    )
    .unwrap()
    .device;
    let before = inspect(&*spare).unwrap().superblock.sequence;
    let s = dev
        .update_settings(|s| {
            s.thresholds.pending_critical = 7;
            s.read_retries = 5;
            s.scrub_cursor = 99;
            s.scrub_passes = 2;
        })
        .unwrap();
    assert_eq!(dev.thresholds().pending_critical, 7);
    // Bad settings are refused and change nothing.
    let err = dev
        .update_settings(|s| s.thresholds.pending_degraded = 100)
        .unwrap_err();
    assert!(err.to_string().contains("pending"), "{err}");
    assert!(dev.update_settings(|s| s.scrub_cursor = u64::MAX).is_err());
    drop(dev);
    let rec = inspect(&*spare).unwrap();
    assert_eq!(rec.superblock.sequence, before + 1);
    assert!(rec.report.superblocks_agree);
    let dev = open(MemBackend::new(MAIN), spare, &DeviceIdentity::NONE, clock())
        .unwrap()
        .device;
    assert_eq!(dev.settings(), s);
    assert_eq!(dev.thresholds().pending_critical, 7);
}
