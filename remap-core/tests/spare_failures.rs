//! When spares fail or run out: a spare block that fails a write is retired and the block
//! lands on another; a spare that fails a read is retired, its block becomes pending and the
//! read fails, and the next whole write moves it; an exhausted pool fails the write with
//! ENOSPC, turns health critical and disturbs nothing already mapped; a failed commit fails
//! the write and stops later writes, while reads keep working.

mod common;

use common::{Rig, pattern};
use remap_core::backend::errno;
use remap_core::device::MAX_SPARE_ATTEMPTS;
use remap_core::health::HealthReasons;
use remap_core::record::{Record, RemapCause};
use remap_core::spare::SpareState;
use remap_core::{BlockBackend, DeviceError, HealthState};

const BS: u64 = 4096;

#[test]
fn a_failing_spare_block_is_retired_and_the_block_lands_on_another() {
    let rig = Rig::new(BS, 8 * BS, 8);
    rig.main.fail_writes(rig.main_sectors(3));
    for s in 0..3 {
        rig.spare.fail_writes(rig.spare_sectors(s));
    }
    let data = pattern(1, BS as usize);
    rig.dev.write(3 * BS, &data).unwrap();
    assert_eq!(rig.dev.entry(3).and_then(|e| e.spare), Some(3));
    assert_eq!(rig.read_vec(3 * BS, BS as usize), data);
    let records = rig.store.records();
    let retired: Vec<u64> = records
        .iter()
        .filter_map(|r| match r {
            Record::SpareRetired {
                spare, lba: None, ..
            } => Some(*spare),
            _ => None,
        })
        .collect();
    assert_eq!(retired, vec![0, 1, 2]);
    assert!(matches!(
        records.last(),
        Some(Record::Remap {
            lba: 3,
            spare: 3,
            cause: RemapCause::WriteError,
            ..
        })
    ));
    rig.dev.with_state(|_, s| {
        assert_eq!(s.retired().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(s.state(3).unwrap(), SpareState::Used);
        s.check_invariants().unwrap();
    });
    let st = rig.dev.stats();
    assert_eq!(
        (st.spares_retired, st.spares_used, st.spare_write_errors),
        (3, 1, 3)
    );
}

#[test]
fn when_every_spare_tried_fails_the_write_fails_and_the_block_stays_on_main() {
    let rig = Rig::new(BS, 4 * BS, 16);
    let old = pattern(1, 4 * BS as usize);
    rig.dev.write(0, &old).unwrap();
    rig.main.fail_writes(rig.main_sectors(1));
    for s in 0..u64::from(MAX_SPARE_ATTEMPTS) {
        rig.spare.fail_writes(rig.spare_sectors(s));
    }
    let err = rig.dev.write(BS, &pattern(2, BS as usize)).unwrap_err();
    assert!(
        matches!(err, DeviceError::SpareWritesFailed { lba: 1, .. }),
        "{err}"
    );
    assert!(
        rig.dev.entry(1).is_none(),
        "not pending: main still holds its data"
    );
    assert_eq!(
        rig.read_vec(BS, BS as usize),
        old[BS as usize..2 * BS as usize]
    );
    assert_eq!(
        rig.dev.stats().spares_retired,
        u64::from(MAX_SPARE_ATTEMPTS)
    );
    // The next attempt finds a healthy spare.
    let new = pattern(3, BS as usize);
    rig.dev.write(BS, &new).unwrap();
    assert_eq!(
        rig.dev.entry(1).and_then(|e| e.spare),
        Some(u64::from(MAX_SPARE_ATTEMPTS))
    );
    assert_eq!(rig.read_vec(BS, BS as usize), new);
}

#[test]
fn a_spare_read_failure_retires_the_spare_and_the_block_becomes_pending() {
    let rig = Rig::new(BS, 4 * BS, 4);
    let old = pattern(1, 4 * BS as usize);
    rig.dev.write(0, &old).unwrap();
    rig.main.fail_writes(rig.main_sectors(2));
    let moved = pattern(2, BS as usize);
    rig.dev.write(2 * BS, &moved).unwrap();
    assert_eq!(rig.dev.entry(2).and_then(|e| e.spare), Some(0));
    // Main still holds the stale `old` bytes for block 2; they must never come back.
    assert_eq!(rig.main_block(2), old[2 * BS as usize..3 * BS as usize]);

    rig.spare.fail_reads(rig.spare_sectors(0));
    let mut buf = vec![0u8; 3 * BS as usize];
    let err = rig.dev.read(BS, &mut buf).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceError::SpareReadFailed {
                lba: 2,
                spare: 0,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.errno(), errno::EIO);
    assert!(buf.iter().all(|&b| b == 0));
    let e = rig.dev.entry(2).unwrap();
    assert!(e.is_pending() && !e.is_remapped() && !e.main_is_current());
    assert!(matches!(
        rig.store.records().last(),
        Some(Record::SpareRetired {
            spare: 0,
            lba: Some(2),
            ..
        })
    ));
    rig.dev
        .with_state(|_, s| assert_eq!(s.state(0).unwrap(), SpareState::Retired));
    // Still failing, and never the stale main copy.
    assert!(matches!(
        rig.dev.read(2 * BS, &mut buf[..BS as usize]),
        Err(DeviceError::Pending { lba: 2 })
    ));
    // A partial write cannot merge: no good copy of the rest exists.
    assert!(matches!(
        rig.dev.write(2 * BS + 512, &[9u8; 512]),
        Err(DeviceError::PartialWriteUnreadable { lba: 2 })
    ));
    // The next whole write moves it to a fresh spare.
    let new = pattern(3, BS as usize);
    rig.dev.write(2 * BS, &new).unwrap();
    let e = rig.dev.entry(2).unwrap();
    assert_eq!((e.spare, e.is_pending()), (Some(1), false));
    assert_eq!(rig.read_vec(2 * BS, BS as usize), new);
    assert!(matches!(
        rig.store.records().last(),
        Some(Record::Remap {
            lba: 2,
            spare: 1,
            cause: RemapCause::Rewrite,
            ..
        })
    ));
}

#[test]
fn a_spare_write_failure_moves_the_block_and_a_partial_write_merges_from_the_old_spare() {
    let rig = Rig::new(BS, 4 * BS, 4);
    rig.main.fail_writes(rig.main_sectors(1));
    let first = pattern(1, BS as usize);
    rig.dev.write(BS, &first).unwrap();
    assert_eq!(rig.dev.entry(1).and_then(|e| e.spare), Some(0));
    rig.spare.fail_writes(rig.spare_sectors(0));
    // 100 bytes in the middle: the rest of the block comes from spare 0 (still readable).
    let patch = [0x5Au8; 100];
    rig.dev.write(BS + 1000, &patch).unwrap();
    let mut want = first.clone();
    want[1000..1100].copy_from_slice(&patch);
    assert_eq!(rig.dev.entry(1).and_then(|e| e.spare), Some(1));
    assert_eq!(rig.read_vec(BS, BS as usize), want);
    rig.dev.with_state(|_, s| {
        assert_eq!(s.state(0).unwrap(), SpareState::Retired);
        assert_eq!(s.state(1).unwrap(), SpareState::Used);
    });
    let e = rig.dev.entry(1).unwrap();
    assert_eq!(
        e.error_count, 2,
        "the main write error and the spare write error"
    );
}

#[test]
fn exhaustion_fails_with_enospc_turns_critical_and_disturbs_nothing_mapped() {
    let rig = Rig::new(BS, 16 * BS, 4);
    let old = pattern(1, 16 * BS as usize);
    rig.dev.write(0, &old).unwrap();
    for lba in [1, 3, 5, 7, 9, 11] {
        rig.main.fail_writes(rig.main_sectors(lba));
    }
    let mut written = Vec::new();
    for lba in [1u64, 3, 5, 7] {
        let d = pattern(100 + lba, BS as usize);
        rig.dev.write(lba * BS, &d).unwrap();
        written.push((lba, d));
    }
    let table_before = rig.dev.entries(0, 16);
    let records_before = rig.store.records();
    assert_eq!(rig.dev.health().state, HealthState::Critical);

    let err = rig.dev.write(9 * BS, &pattern(9, BS as usize)).unwrap_err();
    assert!(
        matches!(err, DeviceError::SpareExhausted { lba: 9, pool: 4 }),
        "{err}"
    );
    assert_eq!(err.errno(), errno::ENOSPC);
    // Frontends see the same errno through the trait.
    let io = BlockBackend::write_at(&rig.dev, 11 * BS, &[1u8; 4096]).unwrap_err();
    assert_eq!(io.errno(), errno::ENOSPC);

    let h = rig.dev.health();
    assert_eq!(h.state, HealthState::Critical);
    assert!(h.reasons.contains(HealthReasons::SPARE_EXHAUSTED));
    // Nothing already mapped moved or changed; nothing new was committed.
    assert_eq!(rig.dev.entries(0, 16), table_before);
    assert_eq!(rig.store.records(), records_before);
    for (lba, d) in &written {
        assert_eq!(&rig.read_vec(lba * BS, BS as usize), d, "block {lba}");
    }
    // The blocks that could not move keep their old data (the write failed, main refused it).
    assert_eq!(
        rig.read_vec(9 * BS, BS as usize),
        old[9 * BS as usize..10 * BS as usize]
    );
    // Healthy blocks still take writes.
    let fresh = pattern(50, BS as usize);
    rig.dev.write(0, &fresh).unwrap();
    assert_eq!(rig.read_vec(0, BS as usize), fresh);
}

#[test]
fn exhaustion_leaves_a_remapped_block_with_a_failing_spare_readable() {
    // Regression: the old spare used to be retired before a new one was found, so on
    // exhaustion the block became pending and its readable data was lost.
    let rig = Rig::new(BS, 4 * BS, 2);
    rig.main.fail_writes(rig.main_sectors(0));
    rig.main.fail_writes(rig.main_sectors(1));
    let d0 = pattern(1, BS as usize);
    let d1 = pattern(2, BS as usize);
    rig.dev.write(0, &d0).unwrap();
    rig.dev.write(BS, &d1).unwrap();
    rig.spare.fail_writes(rig.spare_sectors(1)); // block 1's spare stops taking writes
    let err = rig.dev.write(BS, &pattern(3, BS as usize)).unwrap_err();
    assert_eq!(err.errno(), errno::ENOSPC, "{err}");
    let e = rig.dev.entry(1).unwrap();
    assert_eq!((e.spare, e.is_pending()), (Some(1), false));
    assert_eq!(rig.read_vec(BS, BS as usize), d1);
    assert_eq!(rig.read_vec(0, BS as usize), d0);
    assert_eq!(rig.dev.stats().spares_retired, 0);
}

#[test]
fn a_failed_commit_fails_the_write_and_stops_later_writes_but_reads_work() {
    let rig = Rig::new(BS, 8 * BS, 4);
    let old = pattern(1, 8 * BS as usize);
    rig.dev.write(0, &old).unwrap();
    rig.main.fail_writes(rig.main_sectors(2));
    rig.store.fail_commits(true);

    let err = rig.dev.write(2 * BS, &pattern(2, BS as usize)).unwrap_err();
    assert!(matches!(err, DeviceError::MetadataFailed { .. }), "{err}");
    assert_eq!(err.errno(), errno::EIO);
    assert!(rig.dev.is_poisoned());
    assert!(rig.store.records().is_empty());

    // Every later change is refused, even where nothing would need a commit.
    let healthy = pattern(3, BS as usize);
    assert!(matches!(
        rig.dev.write(0, &healthy),
        Err(DeviceError::Poisoned)
    ));
    assert!(matches!(
        rig.dev.write_fua(0, &healthy),
        Err(DeviceError::Poisoned)
    ));
    assert!(matches!(
        rig.dev.write_zeroes(0, BS, false),
        Err(DeviceError::Poisoned)
    ));
    assert!(matches!(rig.dev.trim(0, BS), Err(DeviceError::Poisoned)));
    assert!(matches!(rig.dev.flush(), Err(DeviceError::Poisoned)));
    assert!(rig.dev.map_block(4, false).is_err());
    // Reads keep working and return the data that was acknowledged.
    assert_eq!(rig.read_vec(0, 2 * BS as usize), &old[..2 * BS as usize]);
    assert_eq!(
        rig.read_vec(3 * BS, 5 * BS as usize),
        &old[3 * BS as usize..]
    );

    // After a reopen (the store works again) the uncommitted remap is gone, block 2 holds
    // its old data on main, and writes move it properly.
    let rig = rig.reopen();
    assert!(!rig.dev.is_poisoned());
    assert!(rig.dev.entry(2).is_none());
    assert_eq!(
        rig.read_vec(2 * BS, BS as usize),
        &old[2 * BS as usize..3 * BS as usize]
    );
    let new = pattern(4, BS as usize);
    rig.dev.write(2 * BS, &new).unwrap();
    assert_eq!(rig.read_vec(2 * BS, BS as usize), new);
    assert_eq!(rig.store.records().len(), 1);
}

#[test]
fn a_failed_commit_of_a_pending_mark_fails_the_read_and_poisons() {
    let rig = Rig::new(BS, 4 * BS, 4);
    rig.dev.write(0, &pattern(1, 4 * BS as usize)).unwrap();
    rig.main.fail_reads(rig.main_sectors(3));
    rig.store.fail_commits(true);
    assert!(rig.dev.read(3 * BS, &mut [0u8; 4096]).is_err());
    assert!(rig.dev.is_poisoned());
    assert_eq!(
        rig.read_vec(0, 3 * BS as usize),
        pattern(1, 4 * BS as usize)[..3 * BS as usize]
    );
}
