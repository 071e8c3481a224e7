//! A spare block that fails is retired and the block moves to another; an exhausted pool
//! fails the write with ENOSPC and disturbs nothing already mapped.
//!
//! Spare choice is the engine's (remap-core's policy): a block with no remapped neighbour
//! starts a new run `RUN_GAP` blocks past the lowest free spare block when the pool has room,
//! so the block that moves on from spare block 0 lands on block `1 + RUN_GAP`.

mod common;

use common::{BS, Setup, pattern, setup};
use remap_core::HealthState;
use remap_core::policy::RUN_GAP;
use remap_core::record::{Record, RemapCause};
use remap_core::spare::SpareState;

#[test]
fn a_spare_block_that_fails_the_move_is_retired_and_the_next_one_used() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([3]);
    t.sim.spare.fail_writes([t.spare_fault_block(0)]);
    let data = pattern(3, 1, 1);
    t.kwrite(3, &data).unwrap();
    let next = 1 + RUN_GAP;
    assert_eq!(t.state.table().get(3).unwrap().spare, Some(next));
    assert_eq!(t.state.spares().state(0).unwrap(), SpareState::Retired);
    assert_eq!(t.read_vec(3, 1), data);
    let recs = common::journal_records(&t);
    assert_eq!(
        recs,
        vec![
            Record::SpareRetired {
                spare: 0,
                lba: None,
                time_s: t.now_s
            },
            Record::Remap {
                lba: 3,
                spare: next,
                cause: RemapCause::WriteError,
                time_s: t.now_s
            },
        ]
    );
}

#[test]
fn a_remapped_block_whose_spare_fails_a_write_moves_on() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([9]);
    t.kwrite(9, &pattern(9, 1, 1)).unwrap();
    assert_eq!(t.state.table().get(9).unwrap().spare, Some(0));
    t.sim.spare.fail_writes([t.spare_fault_block(0)]);
    let data = pattern(9, 1, 2);
    t.kwrite(9, &data).unwrap();
    let e = t.state.table().get(9).unwrap();
    assert_eq!(e.spare, Some(1 + RUN_GAP));
    assert_eq!(t.state.spares().state(0).unwrap(), SpareState::Retired);
    assert_eq!(t.read_vec(9, 1), data);
    assert!(matches!(
        common::journal_records(&t).last(),
        Some(Record::Remap {
            lba: 9,
            spare,
            cause: RemapCause::SpareFailure,
            ..
        }) if *spare == 1 + RUN_GAP
    ));
}

#[test]
fn a_spare_block_that_fails_a_read_is_retired_and_the_block_waits_for_a_write() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([12]);
    t.kwrite(12, &pattern(12, 1, 1)).unwrap();
    t.sim.spare.fail_reads([t.spare_fault_block(0)]);
    let mut b = vec![0u8; BS as usize];
    assert_eq!(t.kread(12, &mut b), Err(5));
    let e = t.state.table().get(12).unwrap();
    assert!(e.is_pending() && e.spare.is_none() && !e.main_is_current());
    assert_eq!(t.state.spares().state(0).unwrap(), SpareState::Retired);
    let data = pattern(12, 1, 3);
    t.kwrite(12, &data).unwrap();
    assert_eq!(t.read_vec(12, 1), data);
    assert_eq!(t.state.table().get(12).unwrap().spare, Some(1 + RUN_GAP));
}

#[test]
fn an_exhausted_pool_fails_the_write_with_enospc_and_disturbs_nothing() {
    let mut t = setup(&Setup {
        pool_blocks: Some(4),
        ..Setup::default()
    });
    t.sim.main.fail_writes(100..106);
    let data = pattern(100, 6, 5);
    assert_eq!(t.kwrite(100, &data), Err(28), "ENOSPC");
    // The four that fit moved and hold their data; the two others did not move.
    let moved: Vec<u64> = t.state.table().iter().map(|(l, _)| l).collect();
    assert_eq!(moved, vec![100, 101, 102, 103]);
    assert_eq!(t.read_vec(100, 4), data[..(4 * BS) as usize]);
    assert_eq!(t.recover_after_crash().table.len(), 4);
    let h = t.shared.health();
    assert_eq!(h.state, HealthState::Critical);
    // A later write elsewhere on a healthy block still works.
    t.kwrite(200, &pattern(200, 1, 6)).unwrap();
}

/// A remapped block whose spare fails a write, with no other spare to move to: the write
/// fails with ENOSPC, and the block keeps its old spare, which still reads back the data it
/// held. Retiring the old spare before the block has a new home would leave the block
/// pending, its readable data lost (issue 9: the kernel did exactly that).
#[test]
fn a_spare_that_fails_a_write_is_retired_only_after_the_block_has_a_new_home() {
    let mut t = setup(&Setup {
        pool_blocks: Some(1),
        ..Setup::default()
    });
    t.sim.main.fail_writes([9]);
    let old = pattern(9, 1, 1);
    t.kwrite(9, &old).unwrap();
    assert_eq!(t.state.table().get(9).unwrap().spare, Some(0));
    t.sim.spare.fail_writes([t.spare_fault_block(0)]);
    assert_eq!(t.kwrite(9, &pattern(9, 1, 2)), Err(28), "ENOSPC");
    let e = t.state.table().get(9).unwrap();
    assert_eq!(e.spare, Some(0), "the block keeps its old spare: {e:?}");
    assert_eq!(t.state.spares().state(0).unwrap(), SpareState::Used);
    assert_eq!(t.read_vec(9, 1), old, "the old spare still holds the data");
    // After a crash the block is still on its spare: nothing retired it durably.
    assert_eq!(
        t.recover_after_crash().table.get(9).and_then(|e| e.spare),
        Some(0)
    );
}
