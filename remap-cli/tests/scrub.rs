//! `remap scrub` through the binary: interrupted with SIGINT, as a user would with Ctrl-C, it
//! saves its cursor and the next run continues under the rate limit (measured); a range
//! scrub is a one-off. The scrub loop itself is tested in-process in
//! `remap-service/tests/scrub.rs`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

const BS: u64 = 4096;
const MIB: f64 = 1_048_576.0;

fn remap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_remap"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the remap binary runs")
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

fn sha256(path: &Path) -> [u8; 32] {
    Sha256::digest(fs::read(path).expect("read")).into()
}

/// A main file of `size` bytes, every block different, and a formatted spare.
fn pair(size: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = dir.path().join("main.img");
    let spare = dir.path().join("spare.img");
    let data: Vec<u8> = (0..size)
        .map(|i| ((i / BS) as u8).wrapping_mul(31) ^ (i as u8))
        .collect();
    fs::write(&main, data).expect("write main");
    fs::File::create(&spare)
        .and_then(|f| f.set_len(4 << 20))
        .expect("spare");
    let o = remap(&["create", main.to_str().unwrap(), spare.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (dir, main, spare)
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Start `remap scrub ARGS --json` in the background.
fn spawn_scrub(args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_remap"))
        .arg("scrub")
        .args(args)
        .arg("--json")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn remap scrub")
}

fn finish(mut child: std::process::Child) -> (i32, Value, String) {
    let status = child.wait().expect("wait");
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{err}"));
    (status.code().expect("exited"), v, err)
}

#[test]
fn sigint_stops_saves_the_cursor_and_the_next_run_continues_under_the_rate_limit() {
    let size: u64 = 32 << 20;
    let (_dir, main, spare) = pair(size);
    let before = sha256(&main);
    let limit_mib = 8.0;
    let t0 = Instant::now();
    let child = spawn_scrub(&[s(&main), s(&spare), "--rate", "8"]);
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill")
            .success()
    );
    let (code, first, err) = finish(child);
    let wall = t0.elapsed().as_secs_f64();
    assert_eq!(code, 130, "interrupted: {err}");
    assert!(err.contains("cursor is saved"), "{err}");
    assert_eq!(first["state"], "stopped");
    let cursor = first["cursor"].as_u64().expect("cursor");
    let read = first["bytes_read"].as_u64().expect("bytes_read");
    assert!(cursor > 0 && cursor < size / BS, "cursor {cursor}");
    assert_eq!(
        read,
        cursor * BS,
        "read exactly the blocks before the cursor"
    );
    assert_eq!(first["saved_cursor"].as_u64(), Some(cursor));
    // The rate, measured two ways: by the scrub over its own run, and from outside over the
    // whole process life (longer, so lower). Both must be under the limit; the margin only
    // covers clock granularity (the token bucket never runs ahead).
    let inside = first["bytes_per_s"].as_f64().expect("rate") / MIB;
    let outside = read as f64 / MIB / wall;
    println!(
        "scrub --rate {limit_mib}: read {:.2} MiB before SIGINT; measured {inside:.2} MiB/s by the scrub, {outside:.2} MiB/s over the process life",
        read as f64 / MIB
    );
    assert!(
        inside <= limit_mib * 1.02,
        "{inside} MiB/s over the {limit_mib} limit"
    );
    assert!(
        outside <= limit_mib * 1.02,
        "{outside} MiB/s over the {limit_mib} limit"
    );
    assert!(
        inside >= limit_mib * 0.5,
        "{inside} MiB/s: the limit, not the disk, sets the pace"
    );

    let st = json(&remap(&["status", "--json", s(&main), s(&spare)]));
    assert_eq!(st["scrub_cursor"].as_u64(), Some(cursor), "persisted");
    assert_eq!(st["scrub_passes"], 0);

    // The next run continues at the cursor and reads only the rest.
    let (code, second, err) = finish(spawn_scrub(&[s(&main), s(&spare)]));
    assert_eq!(code, 0, "{err}");
    assert_eq!(second["first_block"].as_u64(), Some(cursor));
    assert_eq!(
        second["bytes_read"].as_u64(),
        Some(size - read),
        "nothing reread"
    );
    assert_eq!(second["pass_completed"], true);
    assert_eq!(second["passes"], 1);
    assert_eq!(second["unreadable_count"], 0);
    assert_eq!(sha256(&main), before, "the scrub changed the main device");
}

#[test]
fn a_range_scrub_is_a_one_off_that_leaves_the_cursor_alone() {
    let (_dir, main, spare) = pair(8 << 20);
    let o = remap(&[
        "scrub",
        s(&main),
        s(&spare),
        "--from",
        "10",
        "--to",
        "19",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v = json(&o);
    assert_eq!(v["bytes_read"].as_u64(), Some(10 * BS));
    assert_eq!(v["resumable"], false);
    let st = json(&remap(&["status", "--json", s(&main), s(&spare)]));
    assert_eq!(
        (st["scrub_cursor"].as_u64(), st["scrub_passes"].as_u64()),
        (Some(0), Some(0))
    );
    // Refusals: past the end, reversed, and --from with --control.
    let o = remap(&["scrub", s(&main), s(&spare), "--from", "5000"]);
    assert_eq!(o.status.code(), Some(2));
    let o = remap(&["scrub", s(&main), s(&spare), "--from", "9", "--to", "3"]);
    assert_eq!(o.status.code(), Some(2));
    let o = remap(&["scrub", "--control", "/nonexistent", "--from", "3"]);
    assert_eq!(o.status.code(), Some(2));
    // Human output names the range and the result.
    let o = remap(&["scrub", s(&main), s(&spare), "--to", "99"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("finished: blocks 0 to 99"), "{text}");
    assert!(text.contains("0 unreadable block(s)"), "{text}");
}
