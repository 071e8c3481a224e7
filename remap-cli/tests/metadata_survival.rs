//! Issue 11, the metadata half, through the binary: a spare whose head was overwritten still
//! opens from its tail superblock copy, and `create` refuses to format over it unless forced;
//! a spare whose active checkpoint is destroyed is refused by `status` (both files unchanged,
//! SHA-256), and `check --repair` salvages it, naming what it could not prove.

mod common;

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::process::Output;

use common::{BS, Hashes, remap};
use serde_json::Value;

const MAIN_SIZE: u64 = 4 << 20;
const SPARE_SIZE: u64 = 1 << 20;

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed by a signal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Pair {
    _dir: tempfile::TempDir,
    main: PathBuf,
    spare: PathBuf,
}

impl Pair {
    /// A formatted pair (4-block journal, so checkpoints come quickly) with blocks 0..10 of
    /// MAIN holding a pattern and moved to the spare by `remap map`.
    fn mapped() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (main, spare) = (dir.path().join("main.img"), dir.path().join("spare.img"));
        fs::File::create(&main).unwrap().set_len(MAIN_SIZE).unwrap();
        fs::File::create(&spare)
            .unwrap()
            .set_len(SPARE_SIZE)
            .unwrap();
        let p = Pair {
            _dir: dir,
            main,
            spare,
        };
        let mut f = fs::OpenOptions::new().write(true).open(&p.main).unwrap();
        for lba in 0..10u64 {
            f.seek(SeekFrom::Start(lba * BS)).unwrap();
            f.write_all(&[lba as u8 + 1; BS as usize]).unwrap();
        }
        let o = p.run(&["create"], &["--journal-blocks", "4"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        for lba in 0..10u64 {
            let o = p.run(&["map"], &[&lba.to_string()]);
            assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        }
        p
    }

    fn run(&self, cmd: &[&str], extra: &[&str]) -> Output {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push(self.main.to_str().unwrap());
        args.push(self.spare.to_str().unwrap());
        args.extend_from_slice(extra);
        remap(&args)
    }

    fn hashes(&self) -> Hashes {
        Hashes::of(&self.main, &self.spare)
    }

    fn overwrite_spare(&self, at: u64, len: u64) {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(&self.spare)
            .unwrap();
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&vec![0xA5; len as usize]).unwrap();
    }

    fn dump(&self) -> Vec<Value> {
        let o = self.run(&["dump"], &["--json"]);
        assert_eq!(code(&o), 0, "{}", text(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["entries"].as_array().unwrap().clone()
    }
}

#[test]
fn a_spare_with_its_head_overwritten_opens_from_the_tail_and_create_refuses_it() {
    let p = Pair::mapped();
    let table = p.dump();
    assert_eq!(table.len(), 10);
    // A stray `dd` of 8 KiB over the start of SPARE: both head copies gone.
    p.overwrite_spare(0, 2 * BS);
    assert_eq!(p.dump(), table, "opened from the tail copy");
    let before = p.hashes();
    let o = p.run(&["create"], &[]);
    assert_eq!(code(&o), 1, "create must refuse");
    let err = text(&o.stderr);
    assert!(
        err.contains("last 4 KiB") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(p.hashes(), before, "a refused create writes nothing");
    // Repair rewrites the head copies from the tail copy.
    let o = p.run(&["check"], &["--repair"]);
    assert_eq!(code(&o), 0, "{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(p.dump(), table);
    let o = p.run(&["create"], &["--force"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(p.dump().is_empty());
}

#[test]
fn check_repair_salvages_a_destroyed_checkpoint_from_the_older_one_and_the_journal() {
    let p = Pair::mapped();
    let table = p.dump();
    let rec = remap_meta::inspect(&remap_core::FileBackend::open(&p.spare).unwrap()).unwrap();
    let g = rec.superblock.geometry;
    let active = g.checkpoint_offsets[usize::from(rec.superblock.active_checkpoint)];
    p.overwrite_spare(active, g.checkpoint_area_bytes);
    let before = p.hashes();
    let o = p.run(&["status"], &[]);
    assert_eq!(code(&o), 1);
    assert_eq!(p.hashes(), before, "a refused status writes nothing");
    let o = p.run(&["check"], &["--repair", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = &v["repair"]["salvage"];
    assert_eq!(s["written"], true, "{v}");
    // The last `map` ended with an explicit checkpoint: the older checkpoint plus the journal
    // commit after it prove the whole state, and salvage says nothing is lost.
    assert_eq!(s["base_is_active"], false, "{s}");
    assert_eq!(s["unidentified_lost_commits"], 0, "{s}");
    assert!(s["lost"].as_array().unwrap().is_empty(), "{s}");
    assert!(s["unproven_blocks"].as_array().unwrap().is_empty(), "{s}");
    assert_eq!(code(&o), 0, "{v}");
    assert_eq!(p.dump(), table, "salvage kept every entry");
    let o = p.run(&["status"], &[]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
}

#[test]
fn upgrade_turns_a_version_1_spare_into_version_2_only_when_asked() {
    let p = Pair::mapped();
    let table = p.dump();
    // Make it a version 1 spare, as a build before issue 11 would have left it.
    {
        let spare = remap_core::FileBackend::open(&p.spare).unwrap();
        let rec = remap_meta::inspect(&spare).unwrap();
        let v1 = remap_meta::Superblock {
            version: 1,
            sequence: rec.superblock.sequence + 1,
            ..rec.superblock
        };
        remap_meta::journal::write_superblocks(
            &mut remap_meta::io::BackendIo(&spare),
            &v1,
            remap_meta::Region::SuperblockA,
        )
        .unwrap();
    }
    let version = |p: &Pair| {
        remap_meta::inspect(&remap_core::FileBackend::open(&p.spare).unwrap())
            .unwrap()
            .superblock
            .version
    };
    // Using it does not upgrade it.
    let o = p.run(&["map"], &["20"]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert_eq!(version(&p), 1);
    let table: Vec<Value> = {
        let mut t = table;
        t.extend(p.dump().into_iter().filter(|e| e["block"] == 20));
        t
    };
    // A wrong MAIN is refused, both files unchanged.
    let other = p._dir.path().join("other.img");
    fs::File::create(&other)
        .unwrap()
        .set_len(MAIN_SIZE / 2)
        .unwrap();
    let before = p.hashes();
    let o = remap(&[
        "upgrade",
        other.to_str().unwrap(),
        p.spare.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1);
    assert_eq!(p.hashes(), before);
    let o = p.run(&["upgrade"], &[]);
    assert_eq!(code(&o), 0, "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("1 -> 2"), "{}", text(&o.stdout));
    assert_eq!(version(&p), 2);
    assert_eq!(p.dump(), table);
    let before = p.hashes();
    let o = p.run(&["upgrade"], &["--json"]);
    assert_eq!(code(&o), 0);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["unchanged"], true);
    assert_eq!(p.hashes(), before, "nothing written when nothing changes");
}
