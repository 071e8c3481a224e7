//! Issue 11, "`remap map` with a range larger than the free spares": refused up front with
//! both devices unchanged (SHA-256), unless --partial; every requested block counted in the
//! summary (moved, in place, failed, not tried); `remap unmap --control` puts blocks back
//! on a live device.

mod common;

use std::time::Duration;

use common::*;

const MAIN_SIZE: u64 = 4 << 20;
const SPARE_SIZE: u64 = 1 << 20;

fn out(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn map_of_more_blocks_than_free_spares_is_refused_unless_partial() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&["--spare-blocks", "10"]);
    let (m, sp) = (s(&f.main), s(&f.spare));
    let o = remap(&["map", m, sp, "0-3"]);
    assert!(o.status.success(), "{}", text(&o));

    // 0-3 are on the spare already: 4-14 need 11 spares, 6 are free.
    let before = Hashes::of(&f.main, &f.spare);
    let o = remap(&["map", m, sp, "0-14"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let e = err(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    for want in [sp, "11 blocks", "6 spare blocks", "--partial"] {
        assert!(e.contains(want), "{want:?} not in {e}");
    }
    before.assert_unchanged(&f.main, &f.spare, "map beyond the free spares");

    // Exactly what is free is fine: 0-9 needs 6.
    let o = remap(&["map", m, sp, "0-9"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out(&o).contains("6 moved, 4 already in place, 0 failed, 0 not tried, of 10 requested"),
        "{}",
        text(&o)
    );

    // --partial moves what fits; block 110 finds the pool empty (failed), the rest are not
    // tried.
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&["--spare-blocks", "10"]);
    let o = remap(&["map", s(&f.main), s(&f.spare), "100-114", "--partial"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        out(&o).contains("10 moved, 0 already in place, 1 failed, 4 not tried, of 15 requested"),
        "{}",
        text(&o)
    );
    let st = remap_json(&["status", s(&f.main), s(&f.spare), "--json"]);
    assert_eq!(st["blocks"]["remapped"], 10);
}

#[test]
fn unmap_control_puts_blocks_back_on_a_live_device() {
    let f = Files::new(32 << 20, SPARE_SIZE);
    f.create(&["--spare-blocks", "8"]);
    let ctl = f.path("ctl");
    let sock = f.path("nbd.sock");
    let served = Served::start(&f, &["--socket", s(&sock), "--control", s(&ctl)]);
    let c = s(&ctl);

    let before = wait_for(Duration::from_secs(5), "the live status", || {
        Some(remap_json(&["status", "--control", c, "--json"]))
    });
    let o = remap(&["map", "--control", c, "10-19"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    for want in [
        "10 blocks to move",
        "8 spare blocks are free",
        "nothing was moved",
    ] {
        assert!(err(&o).contains(want), "{want:?} not in {}", text(&o));
    }
    let st = remap_json(&["status", "--control", c, "--json"]);
    assert_eq!(st["blocks"], before["blocks"], "a refused map moved blocks");
    let o = remap(&["map", "--control", c, "10-13"]);
    assert!(o.status.success(), "{}", text(&o));

    let o = remap(&["unmap", "--control", c, "11-12", "30"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        out(&o).contains("2 moved, 1 already in place, 0 failed, 0 not tried, of 3 requested"),
        "{}",
        text(&o)
    );
    let st = wait_for(Duration::from_secs(5), "the live status", || {
        Some(remap_json(&["status", "--control", c, "--json"]))
    });
    assert_eq!(st["blocks"]["remapped"], 2);
    served.stop();
    let dump = remap_json(&["dump", s(&f.main), s(&f.spare), "--json"]);
    let blocks: Vec<u64> = dump["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["block"].as_u64().unwrap())
        .collect();
    assert_eq!(blocks, [10, 13]);
}
