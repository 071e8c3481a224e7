//! Issue 11, "A closed stdout stops map/unmap half way with exit 0" and "Ctrl-C during map
//! prints no summary and writes no checkpoint": a closed stdout, SIGINT, SIGTERM and SIGHUP
//! during `map`, `unmap` and `scrub` end in order: the block in hand finishes, the moves so
//! far are committed and checkpointed, the summary (counting every requested block) goes
//! to stderr, and the exit status is 1 (stdout) or 130/143/129.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};

use common::*;
use serde_json::Value;

/// Enough blocks that the command is still moving them when the test acts.
const BLOCKS: u64 = 20_000;
const MAIN_SIZE: u64 = BLOCKS * BS;
const SPARE_SIZE: u64 = (BLOCKS + 2048) * BS;

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_remap"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn remap")
}

/// The superblock's sequence: a checkpoint advances it.
fn superblock_sequence(f: &Files) -> u64 {
    let v = remap_json(&["status", s(&f.main), s(&f.spare), "--json"]);
    v["sequence"]["superblock"].as_u64().expect("sequence")
}

fn remapped(f: &Files) -> u64 {
    let v = remap_json(&["status", s(&f.main), s(&f.spare), "--json"]);
    v["blocks"]["remapped"].as_u64().expect("remapped")
}

/// `map: N moved, A already in place, F failed, T not tried, of R requested` -> the numbers.
fn totals(stderr: &str, verb: &str) -> [u64; 5] {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("remap: {verb}: ")))
        .unwrap_or_else(|| panic!("no summary on stderr: {stderr}"));
    let n: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect();
    n.try_into()
        .unwrap_or_else(|_| panic!("unexpected summary {line:?}"))
}

/// Wait for the first line on stdout, then `act`; return (exit code, stderr).
fn after_first_line(
    mut child: Child,
    act: impl FnOnce(&mut Child, BufReader<std::process::ChildStdout>),
) -> (i32, String) {
    let mut err_pipe = child.stderr.take().expect("stderr");
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err_pipe.read_to_string(&mut s);
        s
    });
    let mut reader = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    reader.read_line(&mut line).expect("read the first line");
    assert!(!line.is_empty(), "no output");
    act(&mut child, reader);
    let status = child.wait().expect("wait");
    let err = err.join().unwrap_or_default();
    let code = status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal, not stopped in order ({status}): {err}"));
    (code, err)
}

fn kill(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

#[track_caller]
fn assert_stopped_in_order(
    f: &Files,
    verb: &str,
    code: i32,
    want: i32,
    err: &str,
    seq_before: u64,
) {
    assert_eq!(code, want, "{err}");
    let [moved, in_place, failed, not_tried, requested] = totals(err, verb);
    assert_eq!(requested, BLOCKS, "{err}");
    assert_eq!(moved + in_place + failed + not_tried, requested, "{err}");
    assert!(moved > 0 && not_tried > 0, "stopped half way: {err}");
    assert!(
        superblock_sequence(f) > seq_before,
        "a checkpoint was written at the stop: {err}"
    );
    let o = remap(&["check", s(&f.main), s(&f.spare)]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn a_closed_stdout_stops_map_in_order_with_a_failure_status() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    let seq = superblock_sequence(&f);
    let last = (BLOCKS - 1).to_string();
    let range = format!("0-{last}");
    // `remap map ... | head -1`
    let child = spawn(&["map", s(&f.main), s(&f.spare), &range]);
    let (code, err) = after_first_line(child, |_, reader| drop(reader));
    assert!(err.contains("cannot write the output"), "{err}");
    assert_stopped_in_order(&f, "map", code, 1, &err, seq);
    let [moved, ..] = totals(&err, "map");
    assert_eq!(remapped(&f), moved, "the summary counts what moved");
}

#[test]
fn sigint_sigterm_sighup_stop_map_and_unmap_in_order() {
    for (signal, want) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let f = Files::new(MAIN_SIZE, SPARE_SIZE);
        f.create(&[]);
        let seq = superblock_sequence(&f);
        let range = format!("0-{}", BLOCKS - 1);
        let child = spawn(&["map", s(&f.main), s(&f.spare), &range]);
        let (code, err) = after_first_line(child, |c, mut reader| {
            kill(c, signal);
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
        });
        assert!(err.contains(&format!("stopped by SIG{signal}")), "{err}");
        assert_stopped_in_order(&f, "map", code, want, &err, seq);
        let [moved, ..] = totals(&err, "map");
        assert_eq!(remapped(&f), moved);

        if signal == "TERM" {
            // A thousand blocks on the spare, then an unmap of all stopped half way.
            let o = remap(&["map", s(&f.main), s(&f.spare), "0-999"]);
            assert!(o.status.success(), "{}", text(&o));
            let seq = superblock_sequence(&f);
            let on_spare = remapped(&f);
            let child = spawn(&["unmap", s(&f.main), s(&f.spare), &range]);
            let (code, err) = after_first_line(child, |c, mut reader| {
                kill(c, signal);
                let mut rest = String::new();
                let _ = reader.read_to_string(&mut rest);
            });
            assert_stopped_in_order(&f, "unmap", code, want, &err, seq);
            let [moved, ..] = totals(&err, "unmap");
            assert_eq!(remapped(&f), on_spare - moved);
        }
    }
}

#[test]
fn sighup_and_sigterm_stop_scrub_with_the_summary_on_stderr() {
    for (signal, want) in [("HUP", 129), ("TERM", 143)] {
        let f = Files::new(32 << 20, 1 << 20);
        f.create(&[]);
        let main_before = sha256(&f.main);
        let child = spawn(&["scrub", s(&f.main), s(&f.spare), "--rate", "4"]);
        let (code, err) = after_first_line(child, |c, mut reader| {
            std::thread::sleep(std::time::Duration::from_millis(500));
            kill(c, signal);
            let mut rest = String::new();
            let _ = reader.read_to_string(&mut rest);
            assert!(
                !rest.contains("cursor"),
                "the summary went to stdout: {rest}"
            );
        });
        assert_eq!(code, want, "{err}");
        assert!(err.contains(&format!("stopped by SIG{signal}")), "{err}");
        assert!(err.contains("cursor is saved"), "{err}");
        assert!(err.contains("stopped"), "summary on stderr: {err}");
        // The next run continues from the saved cursor.
        let v: Value = remap_json(&["scrub", s(&f.main), s(&f.spare), "--json"]);
        assert!(v["first_block"].as_u64().unwrap_or(0) > 0, "{v}");
        assert_eq!(sha256(&f.main), main_before);
    }
}

#[test]
fn sighup_and_sigint_stop_serve_in_order_with_the_summary_on_stderr() {
    for (signal, want) in [("HUP", 129), ("INT", 130)] {
        let f = Files::new(32 << 20, 1 << 20);
        f.create(&[]);
        let seq = superblock_sequence(&f);
        let ctl = f.path("ctl");
        let sock = f.path("nbd.sock");
        let served = Served::start(&f, &["--socket", s(&sock), "--control", s(&ctl)]);
        let o = remap(&["map", "--control", s(&ctl), "5"]);
        assert!(o.status.success(), "{}", text(&o));
        let (code, out, err) = served.signal(signal);
        assert_eq!(code, want, "{out}\n{err}");
        assert!(err.contains(&format!("stopped by SIG{signal}")), "{err}");
        assert!(
            err.contains("served: connections="),
            "summary on stderr: {err}"
        );
        assert!(err.contains("remapped: 5"), "{err}");
        assert!(!out.contains("served:"), "{out}");
        assert!(superblock_sequence(&f) > seq, "checkpointed at the stop");
    }
}
