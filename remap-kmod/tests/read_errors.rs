//! A block that fails reads is retried, then marked pending (durably) and the read fails
//! with no data; a transient failure is recovered by the retries; the next write to a
//! pending block moves it.

mod common;

use common::{BS, Setup, pattern, setup};
use remap_core::record::{Record, RemapCause};
use remap_kmod::target::{Op, Route};

#[test]
fn a_failing_read_marks_the_block_pending_and_returns_no_data() {
    let mut t = setup(&Setup::default());
    t.kwrite(40, &pattern(40, 4, 1)).unwrap();
    t.sim.main.fail_reads([42]);
    let mut buf = vec![0xAAu8; (4 * BS) as usize];
    assert_eq!(t.kread(40, &mut buf), Err(5), "EIO");
    assert!(
        buf.iter().all(|&b| b == 0),
        "the failed read hands out nothing"
    );
    let e = t.state.table().get(42).expect("an entry");
    assert!(
        e.is_pending() && e.spare.is_none(),
        "pending, and no spare used"
    );
    assert_eq!(t.state.spares().used_count(), 0);
    // Only the failing block: its neighbours still read.
    assert_eq!(t.read_vec(40, 2), pattern(40, 2, 1));
    assert_eq!(t.read_vec(43, 1), pattern(43, 1, 1));
    // Durable before the read returned.
    assert!(
        t.recover_after_crash()
            .table
            .get(42)
            .is_some_and(|e| e.is_pending())
    );
    // Retries: the first failure and every retry are counted.
    let s = t.shared.stats.snapshot();
    assert_eq!(s.main_read_errors, 1 + u64::from(t.shared.read_retries));
    assert_eq!((s.pending_blocks, s.pending_marked), (1, 1));
}

#[test]
fn reads_of_a_pending_block_fail_at_once_and_a_write_moves_it() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_reads([7]);
    let mut b = vec![0u8; BS as usize];
    assert_eq!(t.kread(7, &mut b), Err(5));
    // The fast path knows: no device I/O for a pending block.
    assert_eq!(
        t.state.route(&t.shared, 7, 1, Op::Read),
        Route::Fail { blocks: 1 }
    );
    let before = t.sim.log.len();
    assert_eq!(t.kread(7, &mut b), Err(5));
    assert_eq!(t.sim.log.len(), before);
    // The main device could be written there, but the block has no good copy left on it as
    // far as the table knows: the write moves it to a spare.
    assert_eq!(
        t.state.route(&t.shared, 7, 1, Op::Write),
        Route::Slow { blocks: 1 }
    );
    let data = pattern(7, 1, 9);
    t.kwrite(7, &data).unwrap();
    let e = t.state.table().get(7).unwrap();
    assert!(e.is_remapped() && !e.is_pending());
    assert_eq!(t.read_vec(7, 1), data);
    assert_eq!(
        common::journal_records(&t).last(),
        Some(&Record::Remap {
            lba: 7,
            spare: 0,
            cause: RemapCause::Rewrite,
            time_s: t.now_s
        })
    );
    assert_eq!(t.shared.stats.snapshot().pending_blocks, 0);
}

#[test]
fn a_transient_read_failure_is_recovered_by_retries() {
    let mut t = setup(&Setup::default());
    let data = pattern(60, 2, 3);
    t.kwrite(60, &data).unwrap();
    // Three failures: the fast path's read, the slow path's read of the whole run, and
    // the first block-by-block attempt; the first retry reads.
    t.sim.flaky_reads.insert(61, 3);
    assert_eq!(t.read_vec(60, 2), data);
    assert!(t.state.table().is_empty(), "nothing pending, nothing moved");
    assert_eq!(t.shared.stats.snapshot().transient_recoveries, 1);
    // Failing every attempt the retries allow: pending.
    t.sim.flaky_reads.insert(61, 2 + 1 + t.shared.read_retries);
    let mut b = vec![0u8; (2 * BS) as usize];
    assert_eq!(t.kread(60, &mut b), Err(5));
    assert!(t.state.table().get(61).unwrap().is_pending());
}

#[test]
fn a_read_of_several_runs_fails_only_the_bad_blocks() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([81]);
    t.kwrite(80, &pattern(80, 6, 4)).unwrap(); // 81 moves to a spare
    t.sim.main.fail_reads([83, 84]);
    let mut b = vec![0u8; (6 * BS) as usize];
    assert_eq!(t.kread(80, &mut b), Err(5));
    let pending: Vec<u64> = t
        .state
        .table()
        .iter()
        .filter(|(_, e)| e.is_pending())
        .map(|(l, _)| l)
        .collect();
    assert_eq!(pending, vec![83, 84]);
    assert!(t.state.table().get(81).unwrap().is_remapped());
    assert_eq!(t.read_vec(80, 3), pattern(80, 3, 4));
}
