//! The kernel target's lifetime counters survive a power loss: they ride in every journal
//! block it commits (format version 2, the same `remap-meta` code userspace runs), so after
//! a crash with no checkpoint since the errors, recovery restores the error and remap counts
//! the health verdict is judged on, exactly as acknowledged.

mod common;

use common::{BS, Setup, pattern, setup};
use remap_meta::counters;

#[test]
fn error_counters_after_a_crash_equal_those_acknowledged() {
    let mut t = setup(&Setup {
        main_blocks: 256,
        spare_bytes: 1 << 20,
        journal_blocks: Some(64),
        ..Setup::default()
    });
    let checkpoints = t.recover_after_crash().superblock.checkpoint_sequence;
    for lba in 40..52u64 {
        t.sim.main.fail_writes([lba]);
        t.kwrite(lba, &pattern(lba, 1, 9))
            .expect("a failed main write moves the block");
        let live = t.shared.stats.snapshot();
        let rec = t.recover_after_crash();
        assert_eq!(
            rec.superblock.checkpoint_sequence, checkpoints,
            "no checkpoint: the counters must come from the journal"
        );
        let recovered = counters::to_snapshot(&rec.counters);
        assert_eq!(
            recovered.main_write_errors, live.main_write_errors,
            "block {lba}"
        );
        assert_eq!(recovered.remaps, live.remaps, "block {lba}");
        assert_eq!(live.main_write_errors, lba - 39);
        assert!(rec.report.counters_from_journal.is_some());
    }
    let mut b = vec![0u8; BS as usize];
    t.kread(45, &mut b).expect("the moved block reads");
    assert_eq!(b, pattern(45, 1, 9));
}
