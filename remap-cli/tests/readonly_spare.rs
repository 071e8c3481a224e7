//! Issue 11, "`remap serve` on a read-only SPARE starts, serves, and fails only at exit":
//! serve (and every command that writes the spare) refuses a read-only SPARE at start,
//! naming it, with both devices' SHA-256 unchanged. The read-only device is a real loop
//! device attached with `losetup --read-only` (needs root and the loop driver).

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn serve_and_map_refuse_a_read_only_spare_at_start() {
    let f = Files::new(8 << 20, 1 << 20);
    f.create(&[]);
    let ro = Loop::attach(&f.spare, &["--read-only"]);
    let before = Hashes::of(&f.main, ro.path());
    let sock = f.path("nbd.sock");

    let mut child = Command::new(env!("CARGO_BIN_EXE_remap"))
        .args(["serve", s(&f.main), s(ro.path()), "--socket", s(&sock)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn remap serve");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("remap serve started on a read-only spare instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let o = child.wait_with_output().expect("output");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(status.code(), Some(1), "{err}");
    for want in [s(ro.path()), "spare device is read-only"] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    assert!(!sock.exists(), "it never listened");
    before.assert_unchanged(&f.main, ro.path(), "serve on a read-only spare");

    // map names the spare, not MAIN, and changes nothing.
    let o = remap(&["map", s(&f.main), s(ro.path()), "12"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with(&format!("remap: {}:", s(ro.path()))),
        "{err}"
    );
    before.assert_unchanged(&f.main, ro.path(), "map on a read-only spare");
}
