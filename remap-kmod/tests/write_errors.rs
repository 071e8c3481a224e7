//! A write to blocks that fail on the main device succeeds: only the failing blocks move,
//! their data is on the spare and the mapping is durable before the write returns, with the
//! data made durable first.

mod common;

use common::{BS, Event, Setup, pattern, setup};
use remap_core::record::{Record, RemapCause};
use remap_kmod::io::{Dev, WriteFlags};

#[test]
fn a_write_over_failing_blocks_moves_exactly_them_and_reads_back() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes(10..14);
    let data = pattern(8, 8, 1);
    t.kwrite(8, &data).expect("the write succeeds");
    let moved: Vec<u64> = t.state.table().iter().map(|(lba, _)| lba).collect();
    assert_eq!(moved, vec![10, 11, 12, 13]);
    // Runs of bad blocks land on runs of spare blocks.
    let spares: Vec<u64> = t
        .state
        .table()
        .iter()
        .filter_map(|(_, e)| e.spare)
        .collect();
    assert_eq!(spares, vec![0, 1, 2, 3]);
    assert_eq!(t.read_vec(8, 8), data);
    // The blocks that did not fail were written in place.
    let mut on_main = vec![0u8; (2 * BS) as usize];
    remap_core::BlockBackend::read_at(&*t.sim.main, 8 * BS, &mut on_main).unwrap();
    assert_eq!(on_main, data[..(2 * BS) as usize]);
    let s = t.shared.stats.snapshot();
    assert_eq!(
        (s.remaps, s.remapped_blocks, s.main_write_errors),
        (4, 4, 4)
    );
}

#[test]
fn the_remap_is_durable_when_the_write_returns() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([100]);
    let data = pattern(100, 1, 2);
    t.kwrite(100, &data).unwrap();
    // A power loss right now keeps only what was flushed or written FUA.
    let r = t.recover_after_crash();
    let e = r.table.get(100).expect("the remap survived");
    let spare = e.spare.expect("remapped");
    let image = t
        .sim
        .crash
        .crash_image(|_| remap_core::backend::crash::Survival::None);
    let at = t.spare_byte(spare) as usize;
    assert_eq!(
        &image[at..at + BS as usize],
        &data[..],
        "and so did its data"
    );
}

#[test]
fn data_reaches_stable_media_before_the_record_that_points_at_it() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([5]);
    let from = t.sim.log.len();
    t.kwrite(5, &pattern(5, 1, 3)).unwrap();
    let events = t.sim.spare_events(from);
    let data_write = events
        .iter()
        .position(|e| matches!(e, Event::Write { offset, .. } if *offset == t.spare_byte(0)))
        .expect("the data went to spare block 0");
    let (journal_write, flags) = events
        .iter()
        .enumerate()
        .find_map(|(i, e)| match e {
            Event::Write { offset, flags, .. } if *offset < t.shared.pool_offset => {
                Some((i, *flags))
            }
            _ => None,
        })
        .expect("a journal write");
    assert!(data_write < journal_write);
    assert_eq!(
        flags,
        WriteFlags {
            preflush: true,
            fua: true
        },
        "the first journal write flushes the data and is itself durable"
    );
    // Every journal write (both ring copies) is FUA; nothing needs a separate flush.
    for e in &events[journal_write..] {
        if let Event::Write { flags, .. } = e {
            assert!(flags.fua, "{e:?}");
        }
    }
    assert!(!events[journal_write..].contains(&Event::Flush { dev: Dev::Spare }));
}

#[test]
fn a_fua_write_is_fua_on_the_main_device_in_the_slow_path() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([21]);
    let from = t.sim.log.len();
    t.kwrite_flags(20, &pattern(20, 4, 4), true).unwrap();
    let main_writes: Vec<WriteFlags> = t.sim.log[from..]
        .iter()
        .filter_map(|e| match e {
            Event::Write {
                dev: Dev::Main,
                flags,
                ..
            } => Some(*flags),
            _ => None,
        })
        .collect();
    assert!(!main_writes.is_empty());
    assert!(main_writes.iter().all(|f| f.fua), "{main_writes:?}");
}

#[test]
fn records_carry_the_cause_and_replay_to_the_same_table() {
    let mut t = setup(&Setup::default());
    t.sim.main.fail_writes([30, 31]);
    t.kwrite(30, &pattern(30, 2, 5)).unwrap();
    let r = t.recover_after_crash();
    assert!(r.table.iter().eq(t.state.table().iter()));
    assert_eq!(r.spares, *t.state.spares());
    // The journal on the spare holds exactly the two write-error remaps.
    let records = common::journal_records(&t);
    assert_eq!(
        records,
        vec![
            Record::Remap {
                lba: 30,
                spare: 0,
                cause: RemapCause::WriteError,
                time_s: t.now_s
            },
            Record::Remap {
                lba: 31,
                spare: 1,
                cause: RemapCause::WriteError,
                time_s: t.now_s
            },
        ]
    );
}
