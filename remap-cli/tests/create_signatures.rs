//! Issue 11, "`remap create` overwrites anything": create refuses a SPARE holding any
//! signature libblkid recognises (unless --force), and always refuses a MAIN that holds remap
//! metadata (swapped arguments). Each refusal names what was found and where, and leaves both
//! devices' SHA-256 unchanged.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

use common::{Files, Hashes, remap, require, s, text};

const MAIN_SIZE: u64 = 8 << 20;
const SPARE_SIZE: u64 = 4 << 20;

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(bytes).unwrap();
}

/// `remap create MAIN SPARE`, refused with exit 1 and one `remap:` line containing every
/// `want`, both devices unchanged.
#[track_caller]
fn refused(main: &Path, spare: &Path, extra: &[&str], want: &[&str]) {
    let before = Hashes::of(main, spare);
    let mut args = vec!["create", s(main), s(spare)];
    args.extend_from_slice(extra);
    let o = remap(&args);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    for w in want {
        assert!(err.contains(w), "{w:?} not in {err}");
    }
    before.assert_unchanged(main, spare, &format!("create {extra:?}"));
}

#[test]
fn create_refuses_a_spare_with_a_filesystem_swap_or_partition_table() {
    require("mkfs.ext4", "e2fsprogs");
    require("mkswap", "util-linux");
    require("wipefs", "util-linux");

    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let o = common::tool("mkfs.ext4")
        .args(["-q", "-F", s(&f.spare)])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    refused(
        &f.main,
        &f.spare,
        &[],
        &[s(&f.spare), "ext4 at offset 1080 (0x438)", "--force"],
    );
    // --force formats it, and says what it destroyed.
    let o = remap(&["create", s(&f.main), s(&f.spare), "--force"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ext4 at offset 1080"),
        "{}",
        text(&o)
    );

    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let o = common::tool("mkswap").arg(s(&f.spare)).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    refused(&f.main, &f.spare, &[], &["swap at offset 4086 (0xff6)"]);

    // An MBR partition table, written by hand: one Linux partition from sector 2048, and the
    // boot signature at 510.
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let mut entry = [0u8; 16];
    entry[4] = 0x83;
    entry[8..12].copy_from_slice(&2048u32.to_le_bytes());
    entry[12..16].copy_from_slice(&4096u32.to_le_bytes());
    write_at(&f.spare, 446, &entry);
    write_at(&f.spare, 510, &[0x55, 0xAA]);
    refused(&f.main, &f.spare, &[], &["dos at offset 510 (0x1fe)"]);
}

#[test]
fn create_refuses_swapped_arguments_even_with_force() {
    // A formatted pair: MAIN holds data, SPARE holds remap metadata.
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    // The user swaps them: "MAIN" is now the spare of another pair.
    let other_spare = f.path("other-spare.img");
    fs::File::create(&other_spare)
        .unwrap()
        .set_len(SPARE_SIZE)
        .unwrap();
    for extra in [&[][..], &["--force"][..]] {
        refused(
            &f.spare,
            &other_spare,
            extra,
            &[s(&f.spare), "holds remap metadata", "look swapped"],
        );
    }
    // A remap superblock with a broken checksum on MAIN is refused too.
    write_at(&f.spare, 100, &[0xFF; 8]);
    refused(&f.spare, &other_spare, &["--force"], &["look swapped"]);
}

/// `remap status SPARE MAIN` (swapped) says so instead of suggesting `remap create`, which
/// would format the failing disk; map and check likewise change nothing.
#[test]
fn swapped_arguments_are_named_not_answered_with_create() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    // The spare is smaller than MAIN: swapped, "MAIN" is the spare.
    let before = Hashes::of(&f.main, &f.spare);
    for cmd in [&["status"][..], &["dump"], &["map", "1"], &["health"]] {
        let mut args = vec![cmd[0], s(&f.spare), s(&f.main)];
        args.extend_from_slice(&cmd[1..]);
        let o = remap(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_ne!(o.status.code(), Some(0), "{args:?}: {}", text(&o));
        assert!(err.contains("look swapped"), "{args:?}: {err}");
        assert!(!err.contains("remap create"), "{args:?}: {err}");
    }
    before.assert_unchanged(&f.main, &f.spare, "commands with swapped arguments");
}
