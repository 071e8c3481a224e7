//! Scrub: finds exactly the blocks that fail, marks them pending durably, never changes user
//! data, resumes after an interruption without rereading what it finished, and stays under
//! its rate limit (measured).
//!
//! Faults come from `remap-core`'s `FaultyBackend` wrapped around the real main file, under
//! the scrub loop the binary runs ([`remap_cli::scrub::run`]); the rest runs the `remap`
//! binary on files and interrupts it with SIGINT, as a user would with Ctrl-C.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use remap_cli::devices::{Access, Pair};
use remap_cli::scrub::{self, ScrubPlan, ScrubState, ScrubStatus};
use remap_core::FileBackend;
use remap_core::testing::FaultyBackend;
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

/// `(block, state)` of every table entry, from `remap dump --json` in a fresh process.
fn dumped(main: &Path, spare: &Path) -> Vec<(u64, String)> {
    let v = json(&remap(&["dump", "--json", s(main), s(spare)]));
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["block"].as_u64().expect("block"),
                e["state"].as_str().expect("state").to_string(),
            )
        })
        .collect()
}

#[test]
fn scrub_finds_exactly_the_failing_blocks_marks_them_pending_and_changes_no_data() {
    let (_dir, main, spare) = pair(8 << 20);
    let failing = [3u64, 100, 101, 1500, 2047];
    let before = sha256(&main);

    let pair = Pair::open(&main, &spare, Access::ReadWrite, Access::ReadWrite).expect("open");
    let opened = pair
        .into_device_over(|m: FileBackend| {
            let f = FaultyBackend::new(m, BS);
            f.fail_reads(failing);
            f
        })
        .expect("device");
    let device = opened.device;
    // Block 7 lives on the spare: the scrub reads it there, and it is not a finding.
    device.map_block(7, false).expect("map block 7");
    // Block 100 is already pending when the scrub starts: found, but not new.
    let mut buf = vec![0u8; BS as usize];
    assert!(device.read(100 * BS, &mut buf).is_err());

    let plan = ScrubPlan {
        first: 0,
        end: device.blocks(),
        resumable: true,
        rate_bytes_per_s: None,
        chunk_blocks: 64,
        save_interval: scrub::SAVE_INTERVAL,
    };
    let status = Mutex::new(ScrubStatus::default());
    let stop = AtomicBool::new(false);
    let scrubbed_before = device.stats().scrubbed_bytes;
    let result =
        scrub::run(&device, &plan, &stop, &status, &mut |_| {}).expect("the scrub runs to the end");
    assert_eq!(result.state, ScrubState::Finished);
    assert_eq!(
        result.unreadable,
        failing.to_vec(),
        "exactly the failing blocks"
    );
    assert_eq!(result.unreadable_count, failing.len() as u64);
    assert_eq!(
        result.newly_pending,
        failing.len() as u64 - 1,
        "100 was pending already"
    );
    assert_eq!(result.bytes_read, 8 << 20);
    assert!(result.pass_completed);
    assert_eq!((result.saved_cursor, result.passes), (0, 1));
    // The engine counts the chunks it read whole; the five with a bad block it did not.
    let scrubbed = device.stats().scrubbed_bytes - scrubbed_before;
    assert_eq!(
        scrubbed,
        (8 << 20) - 4 * 64 * BS,
        "scrubbed_bytes: {scrubbed}"
    );
    device.shutdown().expect("shutdown");
    drop(device);

    // Persisted: a fresh process sees the pending blocks and the pass.
    let mut want: Vec<(u64, String)> = failing.iter().map(|&b| (b, "pending".into())).collect();
    want.push((7, "remapped".into()));
    want.sort();
    assert_eq!(dumped(&main, &spare), want);
    let st = json(&remap(&["status", "--json", s(&main), s(&spare)]));
    assert_eq!(st["scrub_passes"], 1);
    assert_eq!(st["scrub_cursor"], 0);
    // No user data changed: main is byte for byte what it was (block 7 was copied to the
    // spare, never written on main).
    assert_eq!(sha256(&main), before, "the scrub changed the main device");
}

#[test]
fn a_stopped_scrub_resumes_at_its_cursor_without_rereading() {
    let (_dir, main, spare) = pair(4 << 20);
    let blocks = (4u64 << 20) / BS;
    let run = |stop_after_chunks: Option<u64>| -> ScrubStatus {
        let pair = Pair::open(&main, &spare, Access::ReadWrite, Access::ReadWrite).expect("open");
        let device = pair.into_device().expect("device").device;
        let settings = device.settings();
        let plan = ScrubPlan {
            first: settings.scrub_cursor,
            end: device.blocks(),
            resumable: true,
            rate_bytes_per_s: None,
            chunk_blocks: 16,
            save_interval: Duration::from_secs(3600),
        };
        let status = Mutex::new(ScrubStatus::default());
        let stop = AtomicBool::new(false);
        let mut chunks = 0;
        let s = scrub::run(&device, &plan, &stop, &status, &mut |_| {
            chunks += 1;
            if Some(chunks) == stop_after_chunks {
                stop.store(true, Ordering::Relaxed);
            }
        })
        .expect("scrub");
        assert_eq!(
            device.stats().scrubbed_bytes,
            s.bytes_read,
            "the engine read exactly what the scrub reports"
        );
        s
    };
    let first = run(Some(10));
    assert_eq!(first.state, ScrubState::Stopped);
    assert_eq!((first.cursor, first.saved_cursor), (160, 160));
    assert_eq!(first.bytes_read, 160 * BS);
    let second = run(None);
    assert_eq!(second.first_block, 160, "resumes at the saved cursor");
    assert_eq!(second.bytes_read, (blocks - 160) * BS, "nothing reread");
    assert!(second.pass_completed);
    assert_eq!(first.bytes_read + second.bytes_read, 4 << 20);
    let third = run(Some(1));
    assert_eq!(third.first_block, 0, "a new pass starts at block 0");
    assert_eq!(third.passes, 1);
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
