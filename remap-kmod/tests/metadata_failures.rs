//! A metadata write that fails stops every write (the table in memory may be ahead of the
//! one on disk), keeps reads working, shows as critical, and a reload starts again from
//! what is durable.

mod common;

use common::{Setup, pattern, setup};
use remap_core::HealthState;
use remap_kmod::message::{self, Message};

#[test]
fn a_failed_commit_stops_writes_until_reload() {
    let mut t = setup(&Setup::default());
    t.kwrite(50, &pattern(50, 2, 1)).unwrap();
    // Every journal block (both ring copies) fails to write from now on.
    let journal = t.state.journal().superblock().geometry;
    let first = journal.journal_block_offset(0, 0) / common::BS;
    let last = journal.journal_block_offset(1, journal.journal_blocks - 1) / common::BS;
    t.sim.spare.fail_writes(first..=last);
    t.sim.main.fail_writes([51]);
    assert_eq!(
        t.kwrite(50, &pattern(50, 2, 2)),
        Err(5),
        "the move cannot be recorded"
    );
    assert!(t.shared.is_poisoned());
    // Writes anywhere are refused now; reads are not.
    assert_eq!(t.kwrite(900, &pattern(900, 1, 3)), Err(5));
    assert_eq!(t.read_vec(50, 1), pattern(50, 1, 2));
    assert_eq!(t.shared.health().state, HealthState::Critical);
    let mut out = String::new();
    message::run_shared(&Message::Health, &t.shared, 0, &mut out).unwrap();
    assert!(out.contains("metadata_writes_failed"), "{out}");
    // What is durable does not have the move; a reload starts from that.
    assert!(t.recover_after_crash().table.get(51).is_none());
    t.sim.spare.heal_all();
    t.reopen();
    assert!(!t.shared.is_poisoned());
    assert!(t.state.table().get(51).is_none());
    t.kwrite(51, &pattern(51, 1, 4))
        .expect("the move is recorded now");
    assert_eq!(t.read_vec(51, 1), pattern(51, 1, 4));
}
