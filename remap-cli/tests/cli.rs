//! The `remap` binary driven as a user would, on temporary files: every subcommand, every
//! refusal, exit codes, `--json` shapes, lock conflicts, and that refused or read-only
//! commands leave both files byte for byte as they were (compared whole).

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use remap_core::FileBackend;
use remap_core::backend::OpenOptions;
use serde_json::Value;

const BS: u64 = 4096;
const MAIN_SIZE: u64 = 4 << 20;
const SPARE_SIZE: u64 = 1 << 20;

fn remap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remap"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the remap binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().expect("exited, not killed by a signal")
}

/// An error from our code (not clap's): exactly one line, `remap: ` first, no Debug dump,
/// no panic, no backtrace.
#[track_caller]
fn assert_one_line_error(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected on stderr, got: {err:?}");
    assert!(lines[0].starts_with("remap: "), "{err:?}");
    for bad in ["panicked", "RUST_BACKTRACE", "{ ", "Os {", "kind:"] {
        assert!(!err.contains(bad), "{bad:?} in {err:?}");
    }
    err
}

/// The whole file. Compared whole rather than by hash: as strong, faster in a debug build,
/// and a mismatch can name the first byte that changed.
fn contents(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap()
}

#[track_caller]
fn assert_same(before: &[u8], after: &[u8], what: &str) {
    if before != after {
        let at = before.iter().zip(after).position(|(a, b)| a != b);
        panic!(
            "{what}: changed (lengths {} -> {}, first differing byte at {at:?})",
            before.len(),
            after.len()
        );
    }
}

struct Pair {
    _dir: tempfile::TempDir,
    main: PathBuf,
    spare: PathBuf,
}

impl Pair {
    /// Unformatted files: a sparse main and a sparse spare.
    fn new() -> Self {
        Self::sized(MAIN_SIZE, SPARE_SIZE)
    }

    fn sized(main_size: u64, spare_size: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let main = dir.path().join("main.img");
        let spare = dir.path().join("spare.img");
        fs::File::create(&main).unwrap().set_len(main_size).unwrap();
        fs::File::create(&spare)
            .unwrap()
            .set_len(spare_size)
            .unwrap();
        Pair {
            _dir: dir,
            main,
            spare,
        }
    }

    /// Formatted with the default options.
    fn created() -> Self {
        let p = Self::new();
        let o = p.run(&["create"], &[]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        p
    }

    fn m(&self) -> &str {
        self.main.to_str().unwrap()
    }

    fn s(&self) -> &str {
        self.spare.to_str().unwrap()
    }

    /// `remap CMD MAIN SPARE EXTRA...`
    fn run(&self, cmd: &[&str], extra: &[&str]) -> Output {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push(self.m());
        args.push(self.s());
        args.extend_from_slice(extra);
        remap(&args)
    }

    fn snapshot(&self) -> (Vec<u8>, Vec<u8>) {
        (contents(&self.main), contents(&self.spare))
    }

    #[track_caller]
    fn assert_unchanged_since(&self, before: &(Vec<u8>, Vec<u8>), what: &str) {
        let (main, spare) = self.snapshot();
        assert_same(&before.0, &main, &format!("{what}: main"));
        assert_same(&before.1, &spare, &format!("{what}: spare"));
    }

    /// Run and check that neither file changed, byte for byte.
    #[track_caller]
    fn run_unchanged(&self, cmd: &[&str], extra: &[&str]) -> Output {
        let before = self.snapshot();
        let o = self.run(cmd, extra);
        self.assert_unchanged_since(&before, &format!("{cmd:?} {extra:?}"));
        o
    }

    fn json(&self, cmd: &str) -> Value {
        let o = self.run(&[cmd], &["--json"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).expect("--json prints JSON")
    }

    fn write_block(&self, lba: u64, data: &[u8]) {
        let mut f = fs::OpenOptions::new().write(true).open(&self.main).unwrap();
        f.seek(SeekFrom::Start(lba * BS)).unwrap();
        f.write_all(data).unwrap();
    }

    fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
        let mut f = fs::File::open(path).unwrap();
        f.seek(SeekFrom::Start(offset)).unwrap();
        let mut buf = vec![0u8; len];
        f.read_exact(&mut buf).unwrap();
        buf
    }

    fn main_block(&self, lba: u64) -> Vec<u8> {
        Self::read_at(&self.main, lba * BS, BS as usize)
    }

    fn spare_block(&self, spare: u64) -> Vec<u8> {
        let status = self.json("status");
        let pool = status["geometry"]["pool_offset"].as_u64().unwrap();
        Self::read_at(&self.spare, pool + spare * BS, BS as usize)
    }

    /// Flip the bytes of the spare at `offset`.
    fn corrupt_spare(&self, offset: u64, len: usize) {
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.spare)
            .unwrap();
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.read_exact(&mut buf).unwrap();
        for b in &mut buf {
            *b = !*b;
        }
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&buf).unwrap();
    }
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..BS as usize)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

// ----- help and usage -----

#[test]
fn help_explains_every_command_with_an_example() {
    let o = remap(&["--help"]);
    assert_eq!(code(&o), 0);
    let top = stdout(&o);
    for cmd in [
        "create", "status", "dump", "map", "unmap", "check", "scrub", "health", "set",
    ] {
        assert!(top.contains(cmd), "{cmd} missing from remap --help");
        let o = remap(&[cmd, "--help"]);
        assert_eq!(code(&o), 0, "{cmd} --help");
        let text = stdout(&o);
        assert!(text.contains(&format!("Usage: remap {cmd}")), "{text}");
        assert!(
            text.contains("<MAIN>") && text.contains("<SPARE>"),
            "{text}"
        );
        assert!(text.contains("Examples:"), "{cmd} --help has no example");
        assert!(text.contains(&format!("remap {cmd} ")), "{cmd} example");
    }
    assert!(top.contains("Exit status"));
    let o = remap(&["serve", "--help"]);
    assert_eq!(code(&o), 0);
    let text = stdout(&o);
    for want in [
        "Usage: remap serve",
        "[MAIN]",
        "--demo",
        "--fail-write",
        "Examples:",
        "remap serve --demo",
    ] {
        assert!(text.contains(want), "{want:?} missing from serve --help");
    }
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["status"][..],
        &["status", "only-one-device"][..],
        &["map", "a", "b"][..],
        &["create", "a", "b", "--block-size", "3000"][..],
        &["create", "a", "b", "--block-size", "huge"][..],
        &["create", "a", "b", "--journal-blocks", "-1"][..],
    ] {
        let o = remap(args);
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
}

// ----- create -----

#[test]
fn create_prints_geometry_and_capacity() {
    let p = Pair::new();
    let o = p.run(&["create"], &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("spare capacity"), "{text}");
    let geometry = format!("{} blocks of 4096 bytes", MAIN_SIZE / BS);
    assert!(text.contains(&geometry), "main geometry: {text}");
    assert!(stderr(&o).is_empty(), "quiet by default: {}", stderr(&o));

    let p = Pair::new();
    let o = p.run(
        &["create"],
        &[
            "--json",
            "--block-size",
            "512",
            "--journal-blocks",
            "8",
            "--spare-blocks",
            "100",
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["geometry"]["block_size"], 512);
    assert_eq!(v["geometry"]["journal_blocks"], 8);
    assert_eq!(v["geometry"]["pool_blocks"], 100);
    assert_eq!(v["spare_capacity"]["blocks"], 100);
    assert_eq!(v["spare_capacity"]["bytes"], 100 * 512);
    assert_eq!(v["main_blocks"], MAIN_SIZE / 512);
    assert_eq!(v["main"]["size_bytes"], MAIN_SIZE);
    assert_eq!(v["spare"]["size_bytes"], SPARE_SIZE);
    assert_eq!(v["uuid"].as_str().unwrap().len(), 36);
    // What create printed is what the spare now says.
    let status = p.json("status");
    assert_eq!(status["geometry"], v["geometry"]);
    assert_eq!(status["spares"]["total"], 100);
}

#[test]
fn create_refuses_a_formatted_spare_unless_forced() {
    let p = Pair::created();
    let o = p.run(&["map"], &["3"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));

    let o = p.run_unchanged(&["create"], &[]);
    assert_eq!(code(&o), 1);
    let err = assert_one_line_error(&o);
    assert!(
        err.contains("already holds remap metadata") && err.contains("--force"),
        "{err}"
    );
    assert!(err.contains(p.s()), "names the device: {err}");

    let o = p.run(&["create"], &["--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("1 remapped block"),
        "warns about the remap it destroys: {}",
        stderr(&o)
    );
    let dump = p.json("dump");
    assert_eq!(dump["entries"].as_array().unwrap().len(), 0);
}

#[test]
fn create_refuses_a_spare_too_small_with_both_sizes() {
    let p = Pair::sized(MAIN_SIZE, 20 * 1024);
    let o = p.run_unchanged(&["create"], &[]);
    assert_eq!(code(&o), 1);
    let err = assert_one_line_error(&o);
    assert!(err.contains("too small"), "{err}");
    assert!(err.contains("20480 bytes"), "has: {err}");
    // The figure it asks for is exact: one byte less is refused, that much is accepted.
    let needed: u64 = err
        .split("needs at least ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .expect("the message gives the size needed");
    let p = Pair::sized(MAIN_SIZE, needed - 1);
    assert_eq!(code(&p.run_unchanged(&["create"], &[])), 1);
    let p = Pair::sized(MAIN_SIZE, needed);
    let o = p.run(&["create"], &["--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["spare_capacity"]["blocks"], 1);
}

#[test]
fn create_refuses_the_same_file_twice() {
    let p = Pair::new();
    let before = contents(&p.main);
    let o = remap(&["create", p.m(), p.m()]);
    assert_eq!(code(&o), 2);
    assert!(assert_one_line_error(&o).contains("same device"));
    // Another name for the same file is the same device too.
    let link = p._dir.path().join("link.img");
    std::os::unix::fs::symlink(&p.main, &link).unwrap();
    let o = remap(&["create", p.m(), link.to_str().unwrap()]);
    assert_eq!(code(&o), 2);
    assert!(assert_one_line_error(&o).contains("same device"));
    assert_same(&before, &contents(&p.main), "nothing written");
}

#[test]
fn missing_devices_are_named() {
    let p = Pair::created();
    let o = remap(&["status", "/nonexistent/main", p.s()]);
    assert_eq!(code(&o), 1);
    let err = assert_one_line_error(&o);
    assert!(
        err.contains("/nonexistent/main") && err.contains("main device"),
        "{err}"
    );
}

// ----- status -----

#[test]
fn status_json_has_the_figures_and_writes_nothing() {
    let p = Pair::created();
    let before = p.snapshot();
    let v = p.json("status");
    p.assert_unchanged_since(&before, "status --json");
    let total = v["geometry"]["pool_blocks"].as_u64().unwrap();
    assert!(total > 0);
    assert_eq!(v["spares"]["total"], total);
    assert_eq!(v["spares"]["used"], 0);
    assert_eq!(v["spares"]["free"], total);
    assert_eq!(v["spares"]["retired"], 0);
    assert_eq!(v["blocks"]["remapped"], 0);
    assert_eq!(v["blocks"]["pending"], 0);
    assert_eq!(v["health"]["state"], "healthy");
    assert!(v["health"]["reasons"].as_array().unwrap().is_empty());
    assert!(v["sequence"]["superblock"].as_u64().unwrap() >= 1);
    assert!(v["sequence"]["journal_next"].as_u64().is_some());
    assert_eq!(v["counters"]["remaps"], 0);
    assert_eq!(v["main_blocks"], MAIN_SIZE / BS);

    let o = p.run(&["map"], &["1-3"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v2 = p.json("status");
    assert_eq!(v2["spares"]["used"], 3);
    assert_eq!(v2["spares"]["free"], total - 3);
    assert_eq!(v2["blocks"]["remapped"], 3);
    assert_eq!(v2["counters"]["remaps"], 3);
    assert!(
        v2["sequence"]["superblock"].as_u64() > v["sequence"]["superblock"].as_u64(),
        "the checkpoint at exit advanced the superblock"
    );

    let o = p.run_unchanged(&["status"], &[]);
    assert_eq!(code(&o), 0);
    let text = stdout(&o);
    for want in [
        "health    healthy",
        "3 used",
        "3 remapped, 0 pending",
        "remaps",
    ] {
        assert!(text.contains(want), "{want:?} not in {text}");
    }
}

#[test]
fn status_refuses_the_wrong_main_device() {
    let p = Pair::created();
    fs::OpenOptions::new()
        .write(true)
        .open(&p.main)
        .unwrap()
        .set_len(MAIN_SIZE + BS)
        .unwrap();
    for cmd in ["status", "dump", "map"] {
        let extra: &[&str] = if cmd == "map" { &["1"] } else { &[] };
        let o = p.run_unchanged(&[cmd], extra);
        assert_eq!(code(&o), 1, "{cmd}");
        let err = assert_one_line_error(&o);
        assert!(err.contains("wrong main device"), "{err}");
        assert!(
            err.contains(&MAIN_SIZE.to_string()) && err.contains(&(MAIN_SIZE + BS).to_string()),
            "both sizes: {err}"
        );
    }
}

#[test]
fn status_of_an_unformatted_spare_says_so() {
    let p = Pair::new();
    let o = p.run_unchanged(&["status"], &[]);
    assert_eq!(code(&o), 1);
    assert!(assert_one_line_error(&o).contains("holds no remap metadata"));
}

// ----- map, dump, unmap -----

#[test]
fn map_copies_data_dump_lists_it_unmap_restores_it() {
    let p = Pair::created();
    for lba in 10..13 {
        p.write_block(lba, &pattern(lba as u8));
    }
    let o = p.run(&["map"], &["10-12", "100"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("block 10 -> spare block"), "{text}");
    assert!(text.contains("4 moved"), "{text}");

    let dump = p.json("dump");
    let entries = dump["entries"].as_array().unwrap();
    let blocks: Vec<u64> = entries
        .iter()
        .map(|e| e["block"].as_u64().unwrap())
        .collect();
    assert_eq!(blocks, [10, 11, 12, 100]);
    for e in entries {
        assert_eq!(e["state"], "remapped");
        assert_eq!(e["error_count"], 0);
        assert!(e["time"].as_str().unwrap().ends_with('Z'));
        let lba = e["block"].as_u64().unwrap();
        let spare = e["spare_block"].as_u64().unwrap();
        let want = if lba < 100 {
            pattern(lba as u8)
        } else {
            vec![0; BS as usize]
        };
        assert_eq!(
            p.spare_block(spare),
            want,
            "block {lba} copied to spare {spare}"
        );
    }
    let spares: Vec<u64> = entries
        .iter()
        .map(|e| e["spare_block"].as_u64().unwrap())
        .collect();
    let mut distinct = spares.clone();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        4,
        "every block has its own spare: {spares:?}"
    );

    let o = p.run_unchanged(&["dump"], &[]);
    assert_eq!(code(&o), 0);
    let text = stdout(&o);
    assert!(
        text.contains("remapped") && text.contains("4 entries"),
        "{text}"
    );

    // Main now holds something else at block 11; the spare holds the block's data.
    p.write_block(11, &pattern(0xEE));
    let o = p.run(&["unmap"], &["11"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("verified"), "{}", stdout(&o));
    assert_eq!(p.main_block(11), pattern(11), "data copied back to main");
    let dump = p.json("dump");
    let blocks: Vec<u64> = dump["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["block"].as_u64().unwrap())
        .collect();
    assert_eq!(blocks, [10, 12, 100]);
    let status = p.json("status");
    assert_eq!(status["spares"]["used"], 3);
    assert_eq!(status["counters"]["unmaps"], 1);
}

#[test]
fn map_and_unmap_of_blocks_already_in_place_write_nothing() {
    let p = Pair::created();
    assert_eq!(code(&p.run(&["map"], &["7"])), 0);
    let o = p.run_unchanged(&["map"], &["7"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains("already on spare block"),
        "{}",
        stdout(&o)
    );
    let o = p.run_unchanged(&["unmap"], &["8-9"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("not remapped"), "{}", stdout(&o));
}

#[test]
fn bad_block_lists_are_usage_errors_that_change_nothing() {
    let p = Pair::created();
    assert_eq!(code(&p.run(&["map"], &["1"])), 0);
    for cmd in ["map", "unmap"] {
        for bad in ["x", "5-3", "1-2-3", "+4", "3-", "1,,2", "0x10"] {
            let o = p.run_unchanged(&[cmd], &[bad]);
            assert_eq!(code(&o), 2, "{cmd} {bad}: {}", stderr(&o));
        }
        let last = MAIN_SIZE / BS - 1;
        let o = p.run_unchanged(&[cmd], &["2", &(last + 1).to_string()]);
        assert_eq!(code(&o), 2, "{cmd}: {}", stderr(&o));
        let err = assert_one_line_error(&o);
        assert!(
            err.contains(&format!("block {}", last + 1)) && err.contains(&format!("0 to {last}")),
            "{err}"
        );
        assert!(err.contains(p.m()), "{err}");
        let o = p.run_unchanged(&[cmd], &["0-99999999999"]);
        assert_eq!(code(&o), 2, "{cmd}");
    }
    // The last block itself is fine.
    let last = (MAIN_SIZE / BS - 1).to_string();
    assert_eq!(code(&p.run(&["map"], &[&last])), 0);
}

#[test]
fn map_with_verbose_logs_and_without_is_quiet() {
    let p = Pair::created();
    let o = p.run(&["map"], &["5"]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
    let o = remap(&["-v", "map", p.m(), p.s(), "6"]);
    assert_eq!(code(&o), 0);
    assert!(stderr(&o).contains("remapped by request"), "{}", stderr(&o));
}

// ----- exclusive open -----

#[test]
fn a_held_lock_is_reported_with_its_pid() {
    let p = Pair::created();
    let pid = std::process::id();
    {
        let _held = FileBackend::open(&p.spare).unwrap();
        for (cmd, extra) in [
            ("status", &[][..]),
            ("dump", &[][..]),
            ("check", &[][..]),
            ("map", &["1"][..]),
            ("create", &["--force"][..]),
        ] {
            let o = p.run_unchanged(&[cmd], extra);
            assert_eq!(code(&o), 1, "{cmd}");
            let err = assert_one_line_error(&o);
            assert!(
                err.contains(&format!("in use by pid {pid}")),
                "{cmd}: {err}"
            );
            assert!(err.contains(p.s()), "{err}");
        }
    }
    {
        // A reader's shared lock: other readers go on, writers are refused.
        let _reader = OpenOptions::new().read_only(true).open(&p.main).unwrap();
        assert_eq!(code(&p.run(&["status"], &[])), 0);
        let o = p.run_unchanged(&["unmap"], &["1"]);
        assert_eq!(code(&o), 1);
        let err = assert_one_line_error(&o);
        assert!(
            err.contains(&format!("in use by pid {pid}")) && err.contains(p.m()),
            "{err}"
        );
    }
    // Released: the map goes through (FileBackend rides out the moment a sibling test's
    // child still holds a copy of the descriptor before its exec).
    let o = p.run(&["map"], &["1"]);
    assert_eq!(
        code(&o),
        0,
        "lock released: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

// ----- check and repair -----

#[test]
fn check_is_clean_on_a_fresh_and_a_used_spare() {
    let p = Pair::created();
    let o = p.run_unchanged(&["check"], &[]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("clean"));
    assert_eq!(code(&p.run(&["map"], &["1-20"])), 0);
    let o = p.run_unchanged(&["check"], &["--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clean"], true);
    assert_eq!(v["main"]["matches"], true);
    assert!(v["problems"].as_array().unwrap().is_empty());
    // Copies A, B and the tail copy (format version 2).
    assert!(v["check"]["superblocks"].as_array().unwrap().len() == 3);
    assert!(v["repair"].is_null());
}

#[test]
fn check_repair_rewrites_a_corrupt_superblock_copy() {
    let p = Pair::created();
    for lba in 30..33 {
        p.write_block(lba, &pattern(lba as u8));
    }
    assert_eq!(code(&p.run(&["map"], &["30-32"])), 0);
    let dump_before = p.json("dump");
    p.corrupt_spare(100, 8);

    let o = p.run_unchanged(&["check"], &["--json"]);
    assert_eq!(code(&o), 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert!(!v["check"]["superblocks"][0]["error"].is_null(), "{v}");
    assert!(v["check"]["superblocks"][1]["error"].is_null(), "{v}");
    assert!(!v["check"]["repairable"].as_array().unwrap().is_empty());
    let err = assert_one_line_error(&o);
    assert!(err.contains("--repair"), "{err}");

    // The table is still there through copy B, and reading it changes nothing.
    assert_eq!(p.json("dump")["entries"], dump_before["entries"]);

    let o = p.run(&["check"], &["--repair"]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("rewrote superblock A"),
        "{}",
        stdout(&o)
    );
    let o = p.run_unchanged(&["check"], &["--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clean"], true, "{v}");
    assert_eq!(p.json("dump")["entries"], dump_before["entries"]);
    for (lba, e) in (30..33).zip(dump_before["entries"].as_array().unwrap()) {
        assert_eq!(
            p.spare_block(e["spare_block"].as_u64().unwrap()),
            pattern(lba as u8)
        );
    }
}

#[test]
fn repair_never_invents_a_table() {
    let p = Pair::created();
    assert_eq!(code(&p.run(&["map"], &["4"])), 0);
    // Every superblock copy: both head copies and the tail copy.
    p.corrupt_spare(100, 8);
    p.corrupt_spare(BS + 100, 8);
    p.corrupt_spare(SPARE_SIZE - BS + 100, 8);
    let o = p.run_unchanged(&["check"], &[]);
    assert_eq!(code(&o), 1);
    assert!(stdout(&o).contains("BAD"), "{}", stdout(&o));
    let o = p.run_unchanged(&["check"], &["--repair"]);
    assert_eq!(code(&o), 1);
    let err = assert_one_line_error(&o);
    assert!(err.contains("never invents a table"), "{err}");
    let o = p.run_unchanged(&["status"], &[]);
    assert_eq!(code(&o), 1);
}

#[test]
fn check_reports_the_wrong_main_and_repair_refuses_it() {
    let p = Pair::created();
    p.corrupt_spare(100, 8);
    let other = p._dir.path().join("other.img");
    fs::File::create(&other)
        .unwrap()
        .set_len(MAIN_SIZE / 2)
        .unwrap();
    let other = other.to_str().unwrap();
    let before = p.snapshot();
    let o = remap(&["check", "--json", other, p.s()]);
    assert_eq!(code(&o), 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["main"]["matches"], false);
    let o = remap(&["check", "--repair", other, p.s()]);
    assert_eq!(code(&o), 1);
    assert!(assert_one_line_error(&o).contains("wrong main device"));
    p.assert_unchanged_since(&before, "repair against another disk");
}

#[test]
fn check_of_an_unformatted_spare_fails_without_writing() {
    let p = Pair::new();
    let o = p.run_unchanged(&["check"], &["--json"]);
    assert_eq!(code(&o), 1);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["clean"], false);
    assert!(
        v["main"]["matches"].is_null(),
        "nothing to compare main with: {v}"
    );
    assert!(!v["check"]["fatal"].as_array().unwrap().is_empty());
    let o = p.run_unchanged(&["check"], &["--repair"]);
    assert_eq!(code(&o), 1);
    assert!(assert_one_line_error(&o).contains("never invents a table"));
}

#[test]
fn degenerate_devices_get_plain_refusals() {
    // A spare smaller than the superblocks.
    let p = Pair::sized(MAIN_SIZE, 100);
    for cmd in ["status", "dump", "check", "map"] {
        let extra: &[&str] = if cmd == "map" { &["1"] } else { &[] };
        let o = p.run_unchanged(&[cmd], extra);
        assert_eq!(code(&o), 1, "{cmd}");
        let err = assert_one_line_error(&o);
        assert!(
            err.contains("holds no remap metadata") && err.contains("100 bytes"),
            "{err}"
        );
    }
    // An empty main device: nothing to protect, nothing formatted.
    let p = Pair::sized(0, SPARE_SIZE);
    let o = p.run_unchanged(&["create"], &[]);
    assert_eq!(code(&o), 1);
    let err = assert_one_line_error(&o);
    assert!(err.contains(p.m()) && err.contains("empty"), "{err}");
}
