//! Moving blocks (map and unmap) against a main device that really fails, which files on a
//! healthy disk cannot do: the service's loop (`transfer`), over `remap-core`'s
//! `FaultyBackend` and the real on-disk format in memory.

use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use remap_core::backend::FaultyBackend;
use remap_core::clock::ManualClock;
use remap_core::{BlockBackend, DeviceError, MemBackend, RemapDevice};
use remap_meta::{CreateOptions, DeviceIdentity};
use remap_service::blocks::{BlockList, BlockRange};
use remap_service::transfer::{self, BlockError, Outcome, Paths, Summary, TransferError};

const BS: usize = 4096;
const MAIN: usize = 1 << 20;
const SPARE: usize = 2 << 20;

type Main = Arc<FaultyBackend<MemBackend>>;
type Device = RemapDevice<Main, Arc<MemBackend>>;

struct Rig {
    main: Main,
    spare: Arc<MemBackend>,
    device: Device,
}

fn pattern(lba: u64) -> Vec<u8> {
    (0..BS).map(|i| (i as u8) ^ (lba as u8) ^ 0x5A).collect()
}

fn rig(pool_blocks: u64) -> Rig {
    let spare = Arc::new(MemBackend::new(SPARE));
    let opts = CreateOptions {
        journal_blocks: Some(8),
        pool_blocks: Some(pool_blocks),
        ..CreateOptions::default()
    };
    remap_meta::create(&*spare, MAIN as u64, DeviceIdentity::NONE, &opts).unwrap();
    let main = Arc::new(FaultyBackend::new(MemBackend::new(MAIN), BS as u64));
    for lba in 0..(MAIN / BS) as u64 {
        main.inner()
            .write_at(lba * BS as u64, &pattern(lba))
            .unwrap();
    }
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let device = remap_meta::open(main.clone(), spare.clone(), &DeviceIdentity::NONE, clock)
        .unwrap()
        .device;
    Rig {
        main,
        spare,
        device,
    }
}

fn paths() -> Paths<'static> {
    Paths {
        main: Path::new("/dev/main"),
        spare: Path::new("/dev/spare"),
    }
}

fn list(s: &[&str]) -> BlockList {
    let ranges: Vec<BlockRange> = s.iter().map(|x| x.parse().unwrap()).collect();
    BlockList::new(&ranges)
}

/// Run a map the way the frontends do, keeping the per-block outcomes.
fn map(r: &Rig, blocks: &[&str], zero: bool) -> (Summary, Vec<Outcome>) {
    let mut seen = Vec::new();
    let summary = transfer::map_blocks(&r.device, &list(blocks), zero, paths(), &mut |o| {
        seen.push(describe(o));
        std::ops::ControlFlow::Continue(())
    });
    (summary, seen)
}

fn unmap(r: &Rig, blocks: &[&str]) -> (Summary, Vec<Outcome>) {
    let mut seen = Vec::new();
    let summary = transfer::unmap_blocks(&r.device, &list(blocks), paths(), &mut |o| {
        seen.push(describe(o));
        std::ops::ControlFlow::Continue(())
    });
    (summary, seen)
}

/// Outcomes are not `Clone` (they may hold an error); keep what the tests look at.
fn describe(o: &Outcome) -> Outcome {
    match o {
        Outcome::Mapped { lba, spare, zeroed } => Outcome::Mapped {
            lba: *lba,
            spare: *spare,
            zeroed: *zeroed,
        },
        Outcome::Unmapped { lba, spare } => Outcome::Unmapped {
            lba: *lba,
            spare: *spare,
        },
        Outcome::AlreadyMapped { lba, spare } => Outcome::AlreadyMapped {
            lba: *lba,
            spare: *spare,
        },
        Outcome::AlreadyOnMain { lba } => Outcome::AlreadyOnMain { lba: *lba },
        Outcome::Failed(e) => Outcome::Failed(BlockError {
            path: e.path.clone(),
            lba: e.lba,
            source: copy_error(&e.source),
        }),
    }
}

/// The engine errors these tests meet, copied (`DeviceError` is not `Clone`).
fn copy_error(e: &DeviceError) -> DeviceError {
    match e {
        DeviceError::Unreadable { lba, reason } => DeviceError::Unreadable {
            lba: *lba,
            reason: reason.clone(),
        },
        DeviceError::MainStillFailing { lba, reason } => DeviceError::MainStillFailing {
            lba: *lba,
            reason: reason.clone(),
        },
        DeviceError::Pending { lba } => DeviceError::Pending { lba: *lba },
        other => panic!("a failure these tests do not expect: {other}"),
    }
}

fn failure_text(o: &Outcome) -> String {
    match o {
        Outcome::Failed(e) => e.to_string(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn spare_block(r: &Rig, spare: u64) -> Vec<u8> {
    let rec = remap_meta::inspect(&*r.spare).unwrap();
    let at = rec.superblock.geometry.pool_offset + spare * BS as u64;
    let mut buf = vec![0u8; BS];
    r.spare.read_at(at, &mut buf).unwrap();
    buf
}

#[test]
fn an_unreadable_block_is_refused_and_changes_nothing() {
    let r = rig(16);
    r.main.fail_reads([2]);
    let (spare_before, main_before) = (r.spare.to_vec(), r.main.inner().to_vec());
    let (summary, seen) = map(&r, &["2"], false);
    assert_eq!((summary.changed, summary.failed), (0, 1));
    let text = failure_text(&seen[0]);
    assert!(
        text.starts_with("/dev/main: block 2: cannot be read on the main device"),
        "{text}"
    );
    // The library names no command-line option; the `remap` binary adds its own hint.
    assert!(
        text.contains("unless zeroes may take the place of its data"),
        "{text}"
    );
    let err = transfer::finish(&r.device, summary, paths()).unwrap_err();
    assert!(
        matches!(err, TransferError::BlocksFailed { failed: 1, .. }),
        "{err}"
    );
    assert!(r.device.entry(2).is_none());
    assert_eq!(
        r.spare.to_vec(),
        spare_before,
        "a refused map writes nothing"
    );
    assert_eq!(r.main.inner().to_vec(), main_before);
}

#[test]
fn the_other_blocks_still_move_and_zero_unreadable_accepts_zeroes() {
    let r = rig(16);
    r.main.fail_reads([2]);
    let (summary, seen) = map(&r, &["1-3"], false);
    assert_eq!((summary.changed, summary.failed), (2, 1));
    assert!(matches!(
        seen[0],
        Outcome::Mapped {
            lba: 1,
            zeroed: false,
            ..
        }
    ));
    assert!(failure_text(&seen[1]).contains("block 2"));
    let Outcome::Mapped { lba: 3, spare, .. } = seen[2] else {
        panic!("block 3 moved: {:?}", seen[2]);
    };
    assert_eq!(spare_block(&r, spare), pattern(3), "data copied");
    assert!(transfer::finish(&r.device, summary, paths()).is_err());

    let (summary, seen) = map(&r, &["2"], true);
    assert_eq!((summary.changed, summary.failed), (1, 0));
    let Outcome::Mapped {
        lba: 2,
        spare,
        zeroed: true,
    } = seen[0]
    else {
        panic!("block 2 moved with zeroes: {:?}", seen[0]);
    };
    assert_eq!(spare_block(&r, spare), vec![0u8; BS]);
    let mut buf = vec![0xFFu8; BS];
    r.device.read(2 * BS as u64, &mut buf).unwrap();
    assert_eq!(buf, vec![0u8; BS], "reads now come from the spare");
    transfer::finish(&r.device, summary, paths()).unwrap();
    let rec = remap_meta::inspect(&*r.spare).unwrap();
    assert_eq!(rec.table.remapped_count(), 3, "checkpointed at the end");
}

#[test]
fn unmap_refuses_while_main_still_fails_and_changes_nothing() {
    let r = rig(16);
    let (summary, _) = map(&r, &["5"], false);
    transfer::finish(&r.device, summary, paths()).unwrap();
    let spare_of_5 = r.device.entry(5).and_then(|e| e.spare).unwrap();
    // The block's newest data is on the spare; main has something older.
    r.device.write(5 * BS as u64, &pattern(99)).unwrap();

    for fail in ["write", "read-back"] {
        if fail == "write" {
            r.main.fail_writes([5]);
        } else {
            r.main.heal([5]);
            r.main.fail_reads([5]);
        }
        let spare_before = r.spare.to_vec();
        let (summary, seen) = unmap(&r, &["5"]);
        assert_eq!((summary.changed, summary.failed), (0, 1), "{fail}");
        let text = failure_text(&seen[0]);
        assert!(
            text.contains("block 5: the main device still fails there"),
            "{text}"
        );
        let err = transfer::finish(&r.device, summary, paths()).unwrap_err();
        assert!(
            matches!(err, TransferError::BlocksFailed { failed: 1, .. }),
            "{err}"
        );
        assert_eq!(r.device.entry(5).and_then(|e| e.spare), Some(spare_of_5));
        assert_eq!(r.spare.to_vec(), spare_before, "{fail}: spare untouched");
    }

    r.main.heal([5]);
    let (summary, seen) = unmap(&r, &["5"]);
    assert!(matches!(seen[0], Outcome::Unmapped { lba: 5, .. }));
    transfer::finish(&r.device, summary, paths()).unwrap();
    assert!(r.device.entry(5).is_none());
    let mut buf = vec![0u8; BS];
    r.main.inner().read_at(5 * BS as u64, &mut buf).unwrap();
    assert_eq!(buf, pattern(99), "the spare's data is on main now");
    assert_eq!(remap_meta::inspect(&*r.spare).unwrap().table.len(), 0);
}

#[test]
fn a_pending_block_cannot_be_unmapped() {
    let r = rig(16);
    r.main.fail_reads([9]);
    let mut buf = vec![0u8; BS];
    assert!(r.device.read(9 * BS as u64, &mut buf).is_err());
    assert!(r.device.entry(9).is_some_and(|e| e.is_pending()));
    let (summary, seen) = unmap(&r, &["9"]);
    assert_eq!(summary.failed, 1);
    assert!(
        failure_text(&seen[0]).contains("block 9: is pending"),
        "{:?}",
        seen[0]
    );
}

#[test]
fn an_exhausted_pool_stops_the_loop_and_keeps_what_moved() {
    let r = rig(2);
    let mut seen = 0;
    let summary = transfer::map_blocks(&r.device, &list(&["1-5"]), false, paths(), &mut |_| {
        seen += 1;
        std::ops::ControlFlow::Continue(())
    });
    assert_eq!(seen, 2, "blocks 1 and 2 reported, then the loop stopped");
    assert_eq!(summary.changed, 2);
    match &summary.stopped_by {
        Some(BlockError {
            path,
            lba: 3,
            source: DeviceError::SpareExhausted { .. },
        }) => assert_eq!(path, Path::new("/dev/spare")),
        other => panic!("expected exhaustion at block 3, got {other:?}"),
    }
    let err = transfer::finish(&r.device, summary, paths()).unwrap_err();
    assert!(err.to_string().contains("spare pool is exhausted"), "{err}");
    let rec = remap_meta::inspect(&*r.spare).unwrap();
    assert_eq!(rec.table.remapped_count(), 2);
}

/// Issue 11, "every error names the device it happened on": blocks that fail because SPARE
/// refuses reads or writes are blamed on SPARE, in each block's message and in the closing
/// count.
#[test]
fn failed_writes_on_the_spare_name_the_spare() {
    let spare = Arc::new(FaultyBackend::new(MemBackend::new(SPARE), BS as u64));
    let opts = CreateOptions {
        journal_blocks: Some(8),
        pool_blocks: Some(16),
        ..CreateOptions::default()
    };
    let sb: remap_meta::Superblock =
        remap_meta::create(&*spare, MAIN as u64, DeviceIdentity::NONE, &opts).unwrap();
    let main = Arc::new(FaultyBackend::new(MemBackend::new(MAIN), BS as u64));
    let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
    let device = remap_meta::open(main, spare.clone(), &DeviceIdentity::NONE, clock)
        .unwrap()
        .device;
    let first = sb.geometry.pool_offset / BS as u64;
    // A remapped block whose spare block fails reads: unmap fails for it alone, and the
    // closing count names SPARE.
    let summary = transfer::map_blocks(&device, &list(&["3"]), false, paths(), &mut |_| {
        ControlFlow::Continue(())
    });
    transfer::finish(&device, summary, paths()).unwrap();
    let spare_block = device.entry(3).and_then(|e| e.spare).expect("remapped");
    spare.fail_reads([first + spare_block]);
    let summary = transfer::unmap_blocks(&device, &list(&["3"]), paths(), &mut |_| {
        ControlFlow::Continue(())
    });
    assert_eq!(summary.failed, 1);
    let err = transfer::finish(&device, summary, paths()).unwrap_err();
    assert!(err.to_string().starts_with("/dev/spare:"), "{err}");

    // Every block of the spare pool refuses writes.
    spare.fail_writes(first..first + 16);
    let mut failed = Vec::new();
    let summary = transfer::map_blocks(&device, &list(&["7"]), false, paths(), &mut |o| {
        if let Outcome::Failed(e) = o {
            failed.push(e.to_string());
        }
        ControlFlow::Continue(())
    });
    let stopped = summary.stopped_by.as_ref().map(ToString::to_string);
    assert!(!failed.is_empty() || stopped.is_some(), "block 7 moved");
    for text in failed.iter().chain(stopped.iter()) {
        assert!(text.starts_with("/dev/spare:"), "{text}");
    }
    let err = transfer::finish(&device, summary, paths()).unwrap_err();
    assert!(err.to_string().starts_with("/dev/spare:"), "{err}");
}
