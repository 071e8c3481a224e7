//! A write error moves the block to a spare and the write succeeds and reads back; a write
//! over a pending block moves it; and the new mapping is durable before the write returns:
//! spare data write, then spare flush, then the commit of the remap, then the reply.

mod common;

use std::sync::Arc;

use common::{Rig, SECTOR, pattern};
use remap_core::backend::MemBackend;
use remap_core::clock::ManualClock;
use remap_core::device::{DeviceConfig, InitialState, Layout};
use remap_core::record::{Record, RemapCause};
use remap_core::stats::StatsSnapshot;
use remap_core::testing::{
    CrashBackend, Event, EventLog, FaultyBackend, MemStore, RecordingBackend, Survival,
    device_from_mem_store,
};
use remap_core::{BlockBackend, BlockSize, DeviceError, RemapDevice, RemapTable, SpareAllocator};

const BS: u64 = 4096;

#[test]
fn a_write_error_remaps_the_block_and_the_write_succeeds() {
    let rig = Rig::new(BS, 8 * BS, 4);
    let old = pattern(1, 8 * BS as usize);
    rig.dev.write(0, &old).unwrap();
    rig.main.fail_writes(rig.main_sectors(5));

    let new = pattern(2, 3 * BS as usize);
    rig.dev.write(4 * BS, &new).unwrap();

    let e = rig.dev.entry(5).expect("block 5 moved");
    assert_eq!(e.spare, Some(0));
    assert!(e.is_remapped() && !e.is_pending());
    assert_eq!(
        rig.store.records(),
        vec![Record::Remap {
            lba: 5,
            spare: 0,
            cause: RemapCause::WriteError,
            time_s: e.time_s
        }]
    );
    // The request reads back whole; block 5's data is on spare 0, main keeps the old bytes.
    assert_eq!(rig.read_vec(4 * BS, new.len()), new);
    assert_eq!(rig.spare_block(0), new[BS as usize..2 * BS as usize]);
    assert_eq!(rig.main_block(5), old[5 * BS as usize..6 * BS as usize]);
    assert_eq!(rig.main_block(4), new[..BS as usize]);
    let s = rig.dev.stats();
    assert_eq!((s.remaps, s.spares_used, s.remapped_blocks), (1, 1, 1));
    assert!(s.main_write_errors >= 1);

    // Later writes to block 5 go to the spare: no new main error, no new remap.
    let injected = rig.main.injected().sticky_writes;
    let newer = pattern(3, BS as usize);
    rig.dev.write(5 * BS, &newer).unwrap();
    assert_eq!(rig.main.injected().sticky_writes, injected);
    assert_eq!(rig.dev.stats().remaps, 1);
    assert_eq!(rig.read_vec(5 * BS, BS as usize), newer);
    // And it all survives a reopen from the committed records.
    let rig = rig.reopen();
    assert_eq!(rig.read_vec(5 * BS, BS as usize), newer);
    assert_eq!(rig.dev.entry(5).and_then(|e| e.spare), Some(0));
}

#[test]
fn only_the_failing_blocks_of_a_request_move_and_runs_stay_contiguous() {
    let rig = Rig::new(BS, 8 * BS, 8);
    rig.main.fail_writes(rig.main_sectors(2));
    rig.main.fail_writes(rig.main_sectors(3));
    rig.main.fail_writes([rig.main_sectors(6).start + 7]); // one bad sector is enough
    let data = pattern(4, 8 * BS as usize);
    rig.dev.write(0, &data).unwrap();
    let moved: Vec<(u64, Option<u64>)> = rig
        .dev
        .entries(0, 8)
        .into_iter()
        .map(|(lba, e)| (lba, e.spare))
        .collect();
    // Blocks 2 and 3 land on consecutive spares, so they read as one spare run.
    assert_eq!(moved, vec![(2, Some(0)), (3, Some(1)), (6, Some(2))]);
    assert_eq!(rig.read_vec(0, data.len()), data);
    assert!(
        rig.dev.segments(0, 8).len() == 5,
        "{:?}",
        rig.dev.segments(0, 8)
    );
}

#[test]
fn a_write_over_a_pending_block_remaps_it_and_reads_back() {
    let rig = Rig::new(BS, 4 * BS, 4);
    rig.dev.write(0, &pattern(1, 4 * BS as usize)).unwrap();
    rig.main.fail_reads(rig.main_sectors(2));
    assert!(rig.dev.read(2 * BS, &mut [0u8; 4096]).is_err());
    assert!(rig.dev.entry(2).unwrap().is_pending());

    let new = pattern(7, BS as usize);
    rig.dev.write(2 * BS, &new).unwrap();
    let e = rig.dev.entry(2).unwrap();
    assert!(e.is_remapped() && !e.is_pending());
    assert_eq!(e.error_count, 1, "the read error is remembered");
    assert!(matches!(
        rig.store.records().as_slice(),
        [
            Record::Pending { lba: 2, .. },
            Record::Remap {
                lba: 2,
                spare: 0,
                cause: RemapCause::Rewrite,
                ..
            }
        ]
    ));
    // Main still fails reads there, but the block now lives on its spare.
    assert_eq!(rig.read_vec(2 * BS, BS as usize), new);
    assert_eq!(rig.dev.stats().pending_blocks, 0);
}

type LoggedDevice = RemapDevice<Arc<FaultyBackend<MemBackend>>, RecordingBackend<MemBackend>>;

/// A device whose spare writes/flushes and whose commits all land in one log.
fn logged_device(log: &EventLog) -> (LoggedDevice, Arc<FaultyBackend<MemBackend>>) {
    let main = Arc::new(FaultyBackend::new(MemBackend::new(8 * BS as usize), SECTOR));
    let spare = RecordingBackend::new(MemBackend::new(4 * BS as usize), "spare", log.clone());
    let (store, _) = MemStore::new();
    let dev = RemapDevice::new(
        main.clone(),
        spare,
        Layout {
            block_size: BlockSize::new(BS).unwrap(),
            spare_offset: 0,
            spare_blocks: 4,
        },
        InitialState {
            table: RemapTable::new(16),
            spares: SpareAllocator::new(4).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store.with_log(log.clone())),
        Arc::new(ManualClock::new(0)),
        DeviceConfig::default(),
    )
    .unwrap();
    (dev, main)
}

/// Positions of the spare data write of `spare`, the spare flush after it, and the commit of
/// the remap of `lba` after that, in `events`.
fn remap_order(events: &[Event], lba: u64, spare: u64) -> (usize, usize, usize) {
    let write = events
        .iter()
        .position(|e| {
            *e == Event::Write {
                device: "spare",
                offset: spare * BS,
                len: BS,
            }
        })
        .unwrap_or_else(|| panic!("no spare data write in {events:?}"));
    let flush = write
        + events[write..]
            .iter()
            .position(|e| *e == Event::Flush { device: "spare" })
            .unwrap_or_else(|| panic!("no spare flush after the data write in {events:?}"));
    let commit = flush
        + events[flush..]
            .iter()
            .position(|e| match e {
                Event::Commit { records } => records
                    .iter()
                    .any(|r| matches!(r, Record::Remap { lba: l, spare: s, .. } if *l == lba && *s == spare)),
                _ => false,
            })
            .unwrap_or_else(|| panic!("no commit of the remap after the flush in {events:?}"));
    (write, flush, commit)
}

#[test]
fn the_mapping_is_committed_before_the_write_returns() {
    type Op = fn(&LoggedDevice, u64) -> Result<(), DeviceError>;
    let ops: [(&str, Op); 3] = [
        ("write", |d, at| d.write(at, &pattern(1, BS as usize))),
        ("write_fua", |d, at| {
            d.write_fua(at, &pattern(2, BS as usize))
        }),
        ("write_zeroes", |d, at| d.write_zeroes(at, BS, false)),
    ];
    for (name, op) in ops {
        let log = EventLog::new();
        let (dev, main) = logged_device(&log);
        main.fail_writes(3 * BS / SECTOR..4 * BS / SECTOR);
        op(&dev, 3 * BS).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Marks the moment the write returned.
        log.push(Event::Checkpoint);
        let events = log.events();
        let (write, flush, commit) = remap_order(&events, 3, 0);
        let returned = events.len() - 1;
        assert!(
            write < flush && flush < commit && commit < returned,
            "{name}: data write {write}, flush {flush}, commit {commit}, return {returned}: {events:?}"
        );
    }
}

#[test]
fn no_commit_when_the_spare_flush_fails() {
    let rig = Rig::new(BS, 4 * BS, 4);
    rig.main.fail_writes(rig.main_sectors(1));
    // The spare takes the data write, then fails the flush.
    rig.spare.fail_after(1);
    let err = rig.dev.write(BS, &pattern(1, BS as usize)).unwrap_err();
    assert!(matches!(err, DeviceError::SpareFlush { .. }), "{err}");
    assert!(
        rig.store.records().is_empty(),
        "a mapping to data that may not be durable was committed"
    );
    assert!(rig.dev.is_poisoned());
}

#[test]
fn an_acknowledged_remap_survives_a_crash_right_after_the_reply() {
    let main = Arc::new(FaultyBackend::new(
        CrashBackend::new(4 * BS as usize),
        SECTOR,
    ));
    let spare = Arc::new(CrashBackend::new(4 * BS as usize));
    let layout = Layout {
        block_size: BlockSize::new(BS).unwrap(),
        spare_offset: 0,
        spare_blocks: 4,
    };
    let (store, handle) = MemStore::new();
    let clock = Arc::new(ManualClock::new(0));
    let dev = RemapDevice::new(
        main.clone(),
        spare.clone(),
        layout,
        InitialState {
            table: RemapTable::new(16),
            spares: SpareAllocator::new(4).unwrap(),
            lifetime: StatsSnapshot::default(),
        },
        Box::new(store),
        clock.clone(),
        DeviceConfig::default(),
    )
    .unwrap();
    main.fail_writes(2 * BS / SECTOR..3 * BS / SECTOR);
    let data = pattern(11, BS as usize);
    dev.write(2 * BS, &data).unwrap();
    // Power fails the instant the reply is sent: every unflushed write is lost.
    let main_image = main.inner().crash_image(|_| Survival::None);
    let spare_image = spare.crash_image(|_| Survival::None);
    drop(dev);
    let dev = device_from_mem_store(
        MemBackend::from_vec(main_image),
        MemBackend::from_vec(spare_image),
        layout,
        &handle,
        clock,
        DeviceConfig::default(),
    )
    .unwrap();
    let mut buf = vec![0u8; BS as usize];
    dev.read(2 * BS, &mut buf).unwrap();
    assert_eq!(buf, data, "the acknowledged write was lost in the crash");
}

#[test]
fn a_write_through_the_block_backend_trait_remaps_too() {
    let rig = Rig::new(BS, 4 * BS, 4);
    rig.main.fail_writes(rig.main_sectors(0));
    let data = pattern(5, 2 * BS as usize);
    BlockBackend::write_at(&rig.dev, 0, &data).unwrap();
    let mut buf = vec![0u8; data.len()];
    BlockBackend::read_at(&rig.dev, 0, &mut buf).unwrap();
    assert_eq!(buf, data);
    assert_eq!(rig.dev.entry(0).and_then(|e| e.spare), Some(0));
}
