//! `remap probe DEVICE`: the udev properties of a formatted spare (found by the rule an open
//! uses: a spare whose head copies were overwritten is named by its tail copy), nothing for
//! a plain file or a filesystem, `damaged` for a spare whose copies carry the magic but do
//! not decode, an error for a device that cannot be read; never a write, and no lock in the
//! way of a spare that is in use.

mod common;

use std::path::Path;

use common::{BS, Files, Served, must, remap, remap_json, require, s, text, tool};
use sha2::{Digest, Sha256};

const MAIN_SIZE: u64 = 4096 * BS;
const SPARE_SIZE: u64 = 1024 * BS;

fn sha(path: &Path) -> [u8; 32] {
    Sha256::digest(std::fs::read(path).expect("read")).into()
}

fn lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// A formatted pair and the uuid `remap status` reports for it.
fn formatted() -> (Files, String) {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&["--block-size", "4096"]);
    let status = remap_json(&["status", s(&f.main), s(&f.spare), "--json"]);
    let uuid = status["uuid"].as_str().expect("uuid").to_string();
    (f, uuid)
}

#[test]
fn a_formatted_spare_prints_its_udev_properties_and_is_not_written() {
    let (f, uuid) = formatted();
    let before = sha(&f.spare);
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        lines(&o.stdout),
        [
            "ID_FS_TYPE=remap_spare".to_string(),
            "ID_FS_USAGE=other".to_string(),
            "ID_FS_VERSION=2".to_string(),
            format!("ID_FS_UUID={uuid}"),
            format!("ID_FS_UUID_ENC={uuid}"),
            "REMAP_STATE=valid".to_string(),
            "REMAP_VALID_COPIES=A,B,tail".to_string(),
            "REMAP_BLOCK_SIZE=4096".to_string(),
            format!("REMAP_MAIN_SIZE={MAIN_SIZE}"),
            // A file has no identity; the size is what the spare records of it.
            "REMAP_MAIN_ID_KIND=none".to_string(),
        ],
        "{}",
        text(&o)
    );
    assert!(o.stderr.is_empty(), "{}", text(&o));
    assert_eq!(sha(&f.spare), before, "probe wrote to the spare");

    let v = remap_json(&["probe", s(&f.spare), "--json"]);
    assert_eq!(v["found"], true);
    assert_eq!(v["state"], "valid");
    assert_eq!(v["uuid"], uuid.as_str());
    assert_eq!(v["version"], 2);
    assert_eq!(v["block_size"], 4096);
    assert_eq!(v["valid_copies"], serde_json::json!(["A", "B", "tail"]));
    assert_eq!(v["main"]["size_bytes"], MAIN_SIZE);
    assert_eq!(v["main"]["identity"]["kind"], "none");
}

#[test]
fn the_main_device_is_not_a_spare() {
    let (f, _) = formatted();
    let o = remap(&["probe", s(&f.main)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
}

#[test]
fn a_plain_file_has_no_properties_and_exits_3() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    // Not only zeroes: bytes that are nothing in particular.
    let noise: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&f.spare, &noise).expect("write");
    for path in [&f.main, &f.spare] {
        let o = remap(&["probe", s(path)]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        assert!(o.stdout.is_empty(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(
            err.trim_end(),
            format!("remap: {}: no remap metadata found", path.display())
        );
        let o = remap(&["probe", s(path), "--json"]);
        assert_eq!(o.status.code(), Some(3), "{}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(v, serde_json::json!({ "found": false }));
    }
    // Smaller than the two superblock copies: not a spare, not a read error.
    let tiny = f.path("tiny.img");
    std::fs::write(&tiny, [0u8; 100]).expect("write");
    let o = remap(&["probe", s(&tiny)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

#[test]
fn a_file_holding_an_ext4_filesystem_is_left_to_blkid() {
    require("mkfs.ext4", "e2fsprogs");
    require("blkid", "util-linux");
    let f = Files::new(MAIN_SIZE, 32 << 20);
    must(tool("mkfs.ext4").args(["-F", "-q", s(&f.spare)]));
    // The file really holds a filesystem that libblkid recognises...
    let found = must(tool("blkid").args(["-p", "-o", "export", s(&f.spare)]));
    assert!(found.lines().any(|l| l == "TYPE=ext4"), "{found}");
    let before = sha(&f.spare);
    // ...and remap does not claim it.
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
    assert_eq!(sha(&f.spare), before);
}

/// Flip one byte of a superblock copy's checksummed body.
fn corrupt(path: &Path, offset: u64) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    let mut b = [0u8; 1];
    file.read_exact_at(&mut b, offset).expect("read");
    file.write_all_at(&[b[0] ^ 0xff], offset).expect("write");
}

/// Zero `len` bytes of `path` at `offset`.
fn zero(path: &Path, offset: u64, len: usize) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.write_all_at(&vec![0u8; len], offset).expect("write");
}

#[test]
fn bad_copies_leave_the_spare_named_until_none_is_left_and_then_say_damaged() {
    let (f, uuid) = formatted();
    let tail = SPARE_SIZE - 4096;
    // Copy A's uuid byte: A no longer matches its CRC; B and the tail are intact.
    corrupt(&f.spare, 24);
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = lines(&o.stdout);
    assert!(out.contains(&format!("ID_FS_UUID={uuid}")), "{out:?}");
    assert!(
        out.contains(&"REMAP_VALID_COPIES=B,tail".to_string()),
        "{out:?}"
    );

    // B too: the tail copy alone still names it, as it still opens.
    corrupt(&f.spare, 4096 + 24);
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = lines(&o.stdout);
    assert!(out.contains(&format!("ID_FS_UUID={uuid}")), "{out:?}");
    assert!(
        out.contains(&"REMAP_VALID_COPIES=tail".to_string()),
        "{out:?}"
    );

    // And the tail: every copy carries the magic, none decodes.
    corrupt(&f.spare, tail + 24);
    let before = sha(&f.spare);
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        lines(&o.stdout),
        [
            "ID_FS_TYPE=remap_spare",
            "ID_FS_USAGE=other",
            "REMAP_STATE=damaged"
        ],
        "{}",
        text(&o)
    );
    let v = remap_json(&["probe", s(&f.spare), "--json"]);
    assert_eq!(v["state"], "damaged");
    let problems = v["problems"].as_array().expect("problems");
    assert_eq!(problems.len(), 3, "{v}");
    assert!(
        problems
            .iter()
            .all(|p| p.as_str().unwrap_or("").contains("checksum mismatch")),
        "{v}"
    );
    assert!(problems[2].as_str().unwrap_or("").contains("tail"), "{v}");
    assert_eq!(sha(&f.spare), before, "probe wrote to a damaged spare");
}

#[test]
fn a_spare_whose_head_copies_were_overwritten_is_named_by_its_tail_copy_as_open_finds_it() {
    let (f, uuid) = formatted();
    // What an installer or `mkfs` would destroy first: the first 8 KiB, both head copies.
    zero(&f.spare, 0, 8192);
    let before = sha(&f.spare);
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = lines(&o.stdout);
    for want in [
        "ID_FS_TYPE=remap_spare".to_string(),
        "ID_FS_VERSION=2".to_string(),
        format!("ID_FS_UUID={uuid}"),
        "REMAP_STATE=valid".to_string(),
        "REMAP_VALID_COPIES=tail".to_string(),
        format!("REMAP_MAIN_SIZE={MAIN_SIZE}"),
    ] {
        assert!(out.contains(&want), "no {want} in {out:?}");
    }
    assert_eq!(sha(&f.spare), before, "probe wrote to the spare");
    // The same rule as an open: the pair still opens, with the same uuid.
    let status = remap_json(&["status", s(&f.main), s(&f.spare), "--json"]);
    assert_eq!(status["uuid"], uuid.as_str());
    // And `UUID=` (remaptab, `remap activate`) finds it by the same probe.
    let found = remap_service::spare_lookup::metadata_uuid(&f.spare).expect("a UUID");
    assert_eq!(remap_service::status::uuid_text(&found), uuid);
    assert_eq!(remap_service::spare_lookup::metadata_uuid(&f.main), None);
}

#[test]
fn a_spare_at_the_end_of_a_larger_device_is_not_that_devices_metadata() {
    // A disk whose last partition is a spare shares the spare's last 4 KiB (the tail
    // copy), but the tail's recorded spare size does not end where the disk does: the disk
    // is not named (and would not open as this spare).
    let (f, _) = formatted();
    let spare = std::fs::read(&f.spare).expect("read");
    let disk = f.path("disk.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes.extend_from_slice(&spare);
    std::fs::write(&disk, &bytes).expect("write");
    let o = remap(&["probe", s(&disk)]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(o.stdout.is_empty(), "{}", text(&o));
}

#[test]
fn a_version_1_spare_is_named_by_its_two_head_copies() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../remap-meta/golden/v1-spare.bin");
    std::fs::copy(&golden, &f.spare).expect("copy the golden image");
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = lines(&o.stdout);
    assert!(out.contains(&"ID_FS_VERSION=1".to_string()), "{out:?}");
    assert!(
        out.contains(&"REMAP_VALID_COPIES=A,B".to_string()),
        "{out:?}"
    );
}

#[test]
fn an_unreadable_device_is_an_error_naming_it() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let missing = f.path("missing.img");
    for (path, code) in [(missing.as_path(), 1), (f.dir.path(), 1)] {
        let o = remap(&["probe", s(path)]);
        assert_eq!(o.status.code(), Some(code), "{}", text(&o));
        assert!(o.stdout.is_empty(), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with(&format!("remap: {}: cannot open", path.display())),
            "{err}"
        );
    }
    let o = remap(&["probe"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn a_spare_in_use_by_remap_serve_is_still_probed() {
    let (f, uuid) = formatted();
    let served = Served::start(&f, &["--listen", "127.0.0.1:0"]);
    // The server holds the exclusive lock: a pair command is refused...
    let o = remap(&["status", s(&f.main), s(&f.spare)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    // ...the probe is not.
    let o = remap(&["probe", s(&f.spare)]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(lines(&o.stdout).contains(&format!("ID_FS_UUID={uuid}")));
    served.stop();
}
