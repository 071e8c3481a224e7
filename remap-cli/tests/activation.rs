//! `remap table`, `activate`, `deactivate` through the binary, as far as the host can run
//! them (no device-mapper here): the line and its JSON, bad names exiting 2 with nothing
//! changed. Activation itself and the kernel's refusals run in the guest test
//! (`remap-kmod/scripts/guest/test.sh`).

mod common;

use common::{Files, remap, remap_json, s, text};
use sha2::{Digest, Sha256};

fn sha256(p: &std::path::Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(p).expect("read")).into()
}

#[test]
fn table_prints_the_line_and_its_json() {
    let f = Files::new(16 << 20, 4 << 20);
    f.create(&[]);
    let o = remap(&["table", s(&f.main), s(&f.spare)]);
    assert!(o.status.success(), "{}", text(&o));
    let line = format!("0 32768 dm-remap-v4 {} {}\n", s(&f.main), s(&f.spare));
    assert_eq!(String::from_utf8_lossy(&o.stdout), line);

    let j = remap_json(&[
        "table",
        s(&f.main),
        s(&f.spare),
        "--read-retries",
        "2",
        "--json",
    ]);
    assert_eq!(
        j["table"],
        format!("{} 1 read_retries:2", line.trim_end()).as_str()
    );
    assert_eq!(j["start"], 0);
    assert_eq!(j["sectors"], 32768);
    assert_eq!(j["target"], "dm-remap-v4");
    assert_eq!(j["main"], s(&f.main));
    assert_eq!(j["spare"], s(&f.spare));
    assert_eq!(j["options"], serde_json::json!(["read_retries:2"]));
    assert_eq!(j["spare_uuid"].as_str().map(str::len), Some(36));
}

#[test]
fn bad_names_exit_2_and_change_nothing() {
    let f = Files::new(8 << 20, 4 << 20);
    f.create(&[]);
    let before = (sha256(&f.main), sha256(&f.spare));
    for name in ["a/b", "..", "with space", &"n".repeat(128)] {
        let o = remap(&["activate", name, s(&f.main), s(&f.spare)]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.starts_with("remap: device name "), "{}", text(&o));
        let o = remap(&["deactivate", name]);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    }
    assert_eq!(before, (sha256(&f.main), sha256(&f.spare)));
}

#[test]
fn table_of_an_unformatted_spare_says_so() {
    let f = Files::new(8 << 20, 4 << 20);
    let o = remap(&["table", s(&f.main), s(&f.spare)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("{}: holds no remap metadata", s(&f.spare)))
            && err.contains("remap create"),
        "{}",
        text(&o)
    );
}
