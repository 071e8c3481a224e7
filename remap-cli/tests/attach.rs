//! `remap attach` and `remap detach` on a kernel without ublk (this host's: the guest test
//! remap-ublk/scripts/guest-test.sh covers a kernel with it): one clear line naming what to
//! use instead, exit 1, nothing on stdout, both devices unchanged by SHA-256. The refusal
//! comes before the pair is even opened, so a missing device is not what is reported.

mod common;

use std::path::Path;

use common::{Files, remap, s, text};
use sha2::{Digest, Sha256};

fn sha256(p: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(p).unwrap()).into()
}

/// This suite is about a kernel without ublk; a host with it runs the guest test instead.
fn host_has_no_ublk() {
    assert!(
        !Path::new("/dev/ublk-control").exists(),
        "this host has ublk (/dev/ublk-control): these tests check the refusal on a kernel without it"
    );
}

fn assert_refusal(o: &std::process::Output) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{}", text(o));
    assert!(o.stdout.is_empty(), "{}", text(o));
    assert_eq!(err.lines().count(), 1, "one line: {}", text(o));
    assert!(
        err.starts_with("remap: this kernel (")
            && err.contains(") has no ublk: /dev/ublk-control is missing"),
        "{}",
        text(o)
    );
    assert!(err.contains("dm-remap-v4"), "{}", text(o));
    assert!(err.contains("remap serve MAIN SPARE"), "{}", text(o));
}

#[test]
fn attach_refuses_without_ublk_and_changes_nothing() {
    host_has_no_ublk();
    let f = Files::new(16 << 20, 4 << 20);
    f.create(&[]);
    // Data on main too, so that the hashes cover more than zeroes.
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&f.main, [data.as_slice(), &vec![0; 15 << 20]].concat()).unwrap();
    let before = (sha256(&f.main), sha256(&f.spare));
    for extra in [
        &[][..],
        &["--recover"][..],
        &["--queues", "2", "--json"][..],
    ] {
        let mut args = vec!["attach", s(&f.main), s(&f.spare)];
        args.extend_from_slice(extra);
        let o = remap(&args);
        assert_refusal(&o);
    }
    assert_eq!(before, (sha256(&f.main), sha256(&f.spare)));
    assert!(!f.path("control").exists());
}

#[test]
fn the_refusal_comes_before_the_devices_are_opened() {
    host_has_no_ublk();
    let f = Files::new(16 << 20, 4 << 20);
    let o = remap(&[
        "attach",
        s(&f.path("missing-main")),
        s(&f.path("missing-spare")),
    ]);
    assert_refusal(&o);
}

#[test]
fn detach_refuses_without_ublk() {
    host_has_no_ublk();
    let o = remap(&["detach", "/dev/ublkb0"]);
    assert_refusal(&o);
}

#[test]
fn attach_usage_errors_exit_2() {
    let f = Files::new(16 << 20, 4 << 20);
    for bad in [
        &["--queues", "0"][..],
        &["--queues", "17"][..],
        &["--depth", "0"][..],
        &["--recover", "--queues", "2"][..],
    ] {
        let mut args = vec!["attach", s(&f.main), s(&f.spare)];
        args.extend_from_slice(bad);
        let o = remap(&args);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", text(&o));
    }
}
