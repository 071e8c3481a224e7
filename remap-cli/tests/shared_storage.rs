//! Issue 11, "Same device is decided by path and inode only": MAIN and SPARE that share
//! storage through loop devices (a second loop device over the same file, one over a byte
//! range inside MAIN, two partitions of one disk) are refused, naming both and the path to
//! the shared storage, with both devices' SHA-256 unchanged. Loop devices over disjoint
//! ranges of one file are accepted. Needs root and the loop driver (real loop devices, not
//! a fake); device-mapper stacks and WWN/serial are tested against a fake sysfs in
//! `remap-service/src/storage.rs` (the host kernel has no device-mapper).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Files, Hashes, Loop, remap, require, s, sha256, text, tool, wait_for};

const MIB: u64 = 1 << 20;

/// `remap create MAIN SPARE`: refused as a usage error naming both, nothing changed.
#[track_caller]
fn refused(main: &Path, spare: &Path, want: &[&str]) {
    let before = Hashes::of(main, spare);
    let o = remap(&["create", s(main), s(spare)]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for w in [s(main), s(spare), "share storage"].iter().chain(want) {
        assert!(err.contains(w), "{w:?} not in {err}");
    }
    before.assert_unchanged(main, spare, "create over shared storage");
}

#[test]
fn loop_devices_over_main_are_refused_as_spare() {
    let f = Files::new(8 * MIB, 4 * MIB);
    std::fs::write(&f.main, vec![0xA5u8; (8 * MIB) as usize]).unwrap();

    // A loop device over a byte range inside MAIN.
    let inside = Loop::attach(&f.main, &["--offset", "4194304", "--sizelimit", "2097152"]);
    refused(
        &f.main,
        inside.path(),
        &[
            "overlapping bytes of the same file",
            "bytes 4194304 to 6291456",
        ],
    );

    // Two loop devices over the same file.
    let a = Loop::attach(&f.main, &[]);
    let b = Loop::attach(&f.main, &[]);
    refused(a.path(), b.path(), &["overlapping bytes of the same file"]);

    // Disjoint ranges of one file are two devices: accepted, and MAIN's half untouched.
    let shared = f.path("shared.img");
    std::fs::write(&shared, vec![0x5Au8; (12 * MIB) as usize]).unwrap();
    let low = Loop::attach(&shared, &["--sizelimit", "8388608"]);
    let high = Loop::attach(&shared, &["--offset", "8388608"]);
    let main_before = sha256(low.path());
    let o = remap(&["create", s(low.path()), s(high.path())]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(sha256(low.path()), main_before, "create wrote into MAIN");
}

#[test]
fn partitions_of_one_disk_are_refused() {
    // An MBR with two partitions of 4 MiB, from sector 2048 and 10240.
    let f = Files::new(12 * MIB, MIB);
    let mut mbr = vec![0u8; 512];
    for (i, first) in [2048u32, 10240].into_iter().enumerate() {
        let e = &mut mbr[446 + 16 * i..446 + 16 * (i + 1)];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&first.to_le_bytes());
        e[12..16].copy_from_slice(&8192u32.to_le_bytes());
    }
    mbr[510] = 0x55;
    mbr[511] = 0xAA;
    let mut image = std::fs::read(&f.main).unwrap();
    image[..512].copy_from_slice(&mbr);
    std::fs::write(&f.main, image).unwrap();

    let disk = Loop::attach(&f.main, &["--partscan"]);
    // The partition table is read by the kernel's parser where it has one, and added by
    // partx (BLKPG) where it has not.
    require("partx", "util-linux");
    let _ = tool("partx").arg("--add").arg(disk.path()).output();
    let part = |n: u32| PathBuf::from(format!("{}p{n}", disk.path().display()));
    wait_for(
        Duration::from_secs(10),
        "the partitions' device nodes",
        || (part(1).exists() && part(2).exists()).then_some(()),
    );
    refused(&part(1), &part(2), &["the same disk", "partition"]);
    refused(disk.path(), &part(2), &["the same disk"]);
}
