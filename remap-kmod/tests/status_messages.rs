//! The status line and the messages report what happened, field by field.

mod common;

use common::{BS, Setup, pattern, setup};
use remap_kmod::message::{self, Message};
use remap_kmod::status::{STATUS_FIELDS, write_status, write_table};
use remap_kmod::target::Op;

fn status(t: &common::Target, now_ns: u64) -> Vec<String> {
    let mut s = String::new();
    write_status(&mut s, &t.shared, "253:0", "253:1", now_ns).unwrap();
    s.split(' ').map(str::to_string).collect()
}

fn field<'a>(f: &'a [String], name: &str) -> &'a str {
    const NAMES: [&str; STATUS_FIELDS] = [
        "version",
        "main",
        "spare",
        "reads",
        "writes",
        "remaps",
        "errors",
        "active",
        "ops",
        "total_ns",
        "avg_ns",
        "throughput",
        "sector",
        "spare_sectors",
        "total_ios",
        "normal_ios",
        "remapped_ios",
        "remapped_sectors",
        "pending",
        "spares_free",
        "health",
    ];
    &f[NAMES.iter().position(|n| *n == name).unwrap()]
}

fn msg(t: &mut common::Target, words: &str) -> Result<String, i32> {
    let args: Vec<&[u8]> = words.split(' ').map(str::as_bytes).collect();
    let m = Message::parse(&args).map_err(|_| 22)?;
    let mut out = String::new();
    if m.is_exclusive() {
        message::run_exclusive(&m, &mut t.state, &t.shared, &mut t.sim, t.now_s, &mut out)
            .map_err(|(errno, _)| errno)?;
    } else {
        message::run_shared(&m, &t.shared, 5_000_000_000, &mut out)?;
    }
    Ok(out)
}

#[test]
fn the_status_line_counts_what_happened() {
    let mut t = setup(&Setup::default());
    let f = status(&t, 1_000);
    assert_eq!(f.len(), STATUS_FIELDS);
    assert_eq!(field(&f, "version"), "4.0.0");
    assert_eq!((field(&f, "main"), field(&f, "spare")), ("253:0", "253:1"));
    assert_eq!(field(&f, "sector"), "4096");
    let pool = t.shared.pool_blocks;
    assert_eq!(field(&f, "spare_sectors"), (pool * 8).to_string());
    assert_eq!(field(&f, "spares_free"), pool.to_string());
    assert_eq!(field(&f, "health"), "healthy");

    // What the glue reports per completed bio, and what the slow path does.
    t.sim.main.fail_writes([5, 6]);
    t.kwrite(4, &pattern(4, 4, 1)).unwrap();
    t.shared.account(Op::Write, 4 * BS, 2_000, true, true);
    t.shared.account(Op::Read, BS, 1_000, false, true);
    t.shared.account(Op::Read, BS, 3_000, false, false);
    let f = status(&t, 1_000 + 1_000_000_000);
    assert_eq!(field(&f, "reads"), "2");
    assert_eq!(field(&f, "writes"), "1");
    assert_eq!(field(&f, "remaps"), "2");
    assert_eq!(field(&f, "errors"), "2", "the two failed block writes");
    assert_eq!(field(&f, "active"), "2");
    assert_eq!(field(&f, "ops"), "3");
    assert_eq!(field(&f, "total_ns"), "6000");
    assert_eq!(field(&f, "avg_ns"), "2000");
    // 4 blocks written + 1 read (the failed read moved no bytes) in one second.
    assert_eq!(field(&f, "throughput"), (5 * BS).to_string());
    assert_eq!(field(&f, "total_ios"), "3");
    assert_eq!(field(&f, "normal_ios"), "2");
    assert_eq!(field(&f, "remapped_ios"), "1");
    assert_eq!(field(&f, "remapped_sectors"), "16");
    assert_eq!(field(&f, "pending"), "0");
    assert_eq!(field(&f, "spares_free"), (pool - 2).to_string());

    t.sim.main.fail_reads([9]);
    let mut b = vec![0u8; BS as usize];
    assert!(t.kread(9, &mut b).is_err());
    let f = status(&t, 2_000_000_000);
    assert_eq!(field(&f, "pending"), "1");
    assert_eq!(field(&f, "health"), "degraded");
}

#[test]
fn the_table_line_recreates_the_target() {
    let t = setup(&Setup::default());
    let mut s = String::new();
    write_table(&mut s, &t.shared, "/dev/a", "/dev/b").unwrap();
    assert_eq!(s, "/dev/a /dev/b");
}

#[test]
fn messages_answer_and_change_what_they_say() {
    let mut t = setup(&Setup::default());
    assert!(msg(&mut t, "help").unwrap().contains("lookup <block>"));
    t.kwrite(3, &pattern(3, 1, 7)).unwrap();
    assert_eq!(msg(&mut t, "lookup 3").unwrap(), "block 3 main");
    let out = msg(&mut t, "map 3").unwrap();
    assert_eq!(out, "block 3 remapped to spare block 0");
    assert!(
        msg(&mut t, "lookup 3")
            .unwrap()
            .starts_with("block 3 spare 0 errors 0 time ")
    );
    assert_eq!(t.read_vec(3, 1), pattern(3, 1, 7), "map copies the data");
    assert_eq!(msg(&mut t, "map 3"), Err(22), "already remapped");
    assert_eq!(msg(&mut t, "lookup 1024"), Err(22), "beyond the device");
    t.sim.main.fail_reads([8]);
    assert_eq!(
        msg(&mut t, "map 8"),
        Err(5),
        "unreadable data is not copied"
    );
    assert!(t.state.table().get(8).is_none());
    let stats = msg(&mut t, "stats").unwrap();
    assert!(
        stats.contains(" remaps=1 ") && stats.contains(" commits=1 "),
        "{stats}"
    );
    assert!(msg(&mut t, "health").unwrap().starts_with("state=healthy "));
    let seq = t.state.journal().superblock().checkpoint_sequence;
    assert_eq!(
        msg(&mut t, "checkpoint").unwrap(),
        format!("checkpoint {} written", seq + 1)
    );
    assert_eq!(t.state.journal_live_blocks(), 0);
    t.shared.account(Op::Read, BS, 10, false, true);
    assert_eq!(msg(&mut t, "clear_stats").unwrap(), "statistics cleared");
    let f = status(&t, 5_000_000_000);
    assert_eq!((field(&f, "reads"), field(&f, "active")), ("0", "1"));
    assert_eq!(msg(&mut t, "frobnicate"), Err(22));
}
