//! The control socket of `remap serve --control PATH`, through the `remap` commands that
//! use it and over a raw socket: live status, map, health, settings and the background
//! scrub; bad requests answered without harm; a background scrub under client I/O.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const MAIN_SIZE: u64 = 32 << 20;
const SPARE_SIZE: u64 = 4 << 20;

/// Send raw lines, read one reply line per request.
fn raw(path: &std::path::Path, lines: &[&[u8]]) -> Vec<Value> {
    let stream = UnixStream::connect(path).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut w = &stream;
    let mut replies = Vec::new();
    for l in lines {
        w.write_all(l).expect("write");
        let mut reply = String::new();
        reader.read_line(&mut reply).expect("read reply");
        replies.push(serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}")));
    }
    replies
}

fn scrub_done(ctl: &str) -> Value {
    wait_for(Duration::from_secs(60), "the scrub to finish", || {
        let v = remap_json(&["scrub", "--control", ctl, "--status", "--json"]);
        (v["state"] == "finished").then_some(v)
    })
}

#[test]
fn status_map_health_set_and_scrub_work_live_through_the_socket() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    let ctl = f.path("ctl");
    let sock = f.path("nbd.sock");
    let served = Served::start(
        &f,
        &[
            "--socket",
            s(&sock),
            "--control",
            s(&ctl),
            "--fail-read",
            "10,2000-2001",
        ],
    );
    let c = s(&ctl);
    // Created for its owner only: whoever opens it can move blocks.
    let mode = std::fs::metadata(&ctl)
        .expect("socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Without --control the pair is in use by the server, which the message names.
    let o = remap(&["status", s(&f.main), s(&f.spare)]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("in use by pid {}", served.pid())),
        "{err}"
    );

    let st = remap_json(&["status", "--control", c, "--json"]);
    assert_eq!(st["live"]["pid"].as_u64(), Some(u64::from(served.pid())));
    assert_eq!(st["main_blocks"].as_u64(), Some(MAIN_SIZE / BS));
    assert_eq!(st["blocks"]["remapped"], 0);
    assert_eq!(st["health"]["state"], "healthy");
    let human = remap(&["status", "--control", c]);
    assert!(human.status.success(), "{}", text(&human));
    assert!(String::from_utf8_lossy(&human.stdout).contains("serving   pid"));

    // map, live: moved, counted, and shown by the next status.
    let o = remap(&["map", "--control", c, "3", "8-9"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("map: 3 moved, 0 already in place, 0 failed"),
        "{out}"
    );
    let o = remap(&["map", "--control", c, "3"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("already on spare block"));
    // Refusals come back as messages: past the end, unreadable data.
    let o = remap(&["map", "--control", c, "99999999"]);
    // Past the end is a usage error, exit 2 as offline.
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("beyond the end"),
        "{}",
        text(&o)
    );
    let o = remap(&["map", "--control", c, "10"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot be read"),
        "{}",
        text(&o)
    );
    let st = remap_json(&["status", "--control", c, "--json"]);
    assert_eq!(st["blocks"]["remapped"], 3);
    assert_eq!(st["stats"]["remaps"], 3);
    assert!(st["sequence"]["newest_durable"].as_u64() > Some(0));

    // A background scrub finds exactly the failing blocks.
    let o = remap(&["scrub", "--control", c, "--rate", "200"]);
    assert!(o.status.success(), "{}", text(&o));
    let done = scrub_done(c);
    assert_eq!(done["unreadable"], serde_json::json!([10, 2000, 2001]));
    assert_eq!(done["pass_completed"], true);
    assert_eq!(done["passes"], 1);
    assert_eq!(done["bytes_read"].as_u64(), Some(MAIN_SIZE));
    let st = remap_json(&["status", "--control", c, "--json"]);
    assert_eq!(st["blocks"]["pending"], 3);
    assert_eq!(st["scrub_passes"], 1);

    // Health, live: degraded by the pending blocks, with rates over the windows.
    let h = health_json(&["health", "--control", c, "--json"]);
    assert_eq!(h["state"], "degraded");
    assert!(
        h["reasons"][0]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("3 unreadable blocks pending")),
        "{h}"
    );
    let windows: Vec<&str> = h["rates"]["windows"]
        .as_array()
        .expect("windows")
        .iter()
        .map(|w| w["name"].as_str().expect("name"))
        .collect();
    assert_eq!(windows, ["minute", "hour", "day"]);
    assert!(
        h["rates"]["basis"]
            .as_str()
            .is_some_and(|b| b.starts_with("live"))
    );
    // The windows are fed every second: the pending marks appear in the minute window.
    wait_for(Duration::from_secs(10), "the minute window", || {
        let h = health_json(&["health", "--control", c, "--json"]);
        (h["rates"]["windows"][0]["pending_marked"] == 3).then_some(())
    });

    // set, live: lower the critical threshold, the verdict follows at once, and it is
    // persisted (seen after the server stops).
    let o = remap(&["set", "--control", c, "--pending-critical", "3"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("64 -> 3"),
        "{}",
        text(&o)
    );
    let h = health_json(&["health", "--control", c, "--json"]);
    assert_eq!(h["state"], "critical");
    let o = remap(&["set", "--control", c, "--pending-degraded", "9"]);
    // A usage error, as offline.
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("above the critical one"));

    let (out, err) = served.stop();
    assert!(err.contains("control connection opened"), "{err}");
    assert!(err.contains("control command"), "{err}");
    // The exit summary is on stderr (stopped by SIGTERM).
    assert!(!out.contains("remapped:"), "{out}");
    assert!(err.contains("remapped: 3,8,9"), "{err}");
    assert!(err.contains("pending: 10,2000,2001"), "{err}");
    assert!(!ctl.exists(), "the socket file is removed on exit");
    let st = remap_json(&["status", "--json", s(&f.main), s(&f.spare)]);
    assert_eq!(st["thresholds"]["pending_critical"], 3);
    assert_eq!(st["health"]["state"], "critical");
    assert_eq!(st["scrub_passes"], 1);
}

#[test]
fn bad_requests_are_answered_and_the_server_stays_up() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    let ctl = f.path("ctl");
    let served = Served::start(
        &f,
        &["--socket", s(&f.path("nbd.sock")), "--control", s(&ctl)],
    );
    let long = vec![b'x'; 70 << 10];
    let replies = raw(
        &ctl,
        &[
            b"not json\n",
            b"{\"cmd\":\"frobnicate\"}\n",
            b"{\"cmd\":\"status\",\"extra\":1}\n",
            b"{\"cmd\":\"map\",\"blocks\":[{\"first\":9,\"last\":1}]}\n",
            b"{\"cmd\":\"map\",\"blocks\":[{\"first\":0,\"last\":18446744073709551615}]}\n",
            b"{\"cmd\":\"scrub-start\",\"rate_bytes_per_s\":0}\n",
            b"{\"cmd\":\"scrub-status\"}\n",
        ],
    );
    for r in &replies[..6] {
        assert_eq!(r["ok"], false, "{r}");
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()), "{r}");
    }
    assert!(
        replies[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("frobnicate"))
    );
    assert_eq!(replies[6]["ok"], true, "the connection still answers");
    assert_eq!(replies[6]["result"]["state"], "idle");

    // A request over the limit is answered, then the connection is closed.
    let stream = UnixStream::connect(&ctl).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let _ = (&stream).write_all(&long);
    let mut reader = BufReader::new(&stream);
    let mut reply = String::new();
    reader.read_line(&mut reply).expect("reply");
    assert!(reply.contains("longer than 65536 bytes"), "{reply}");
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    assert!(rest.is_empty(), "closed after the refusal");

    // More connections than allowed: the extra ones are told so; the first ones work.
    let held: Vec<UnixStream> = (0..16)
        .map(|_| UnixStream::connect(&ctl).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let extra = UnixStream::connect(&ctl).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut line = String::new();
    BufReader::new(&extra).read_line(&mut line).expect("reply");
    assert!(line.contains("too many control connections"), "{line}");
    drop(held);
    let ok = wait_for(Duration::from_secs(10), "a free connection slot", || {
        let r = raw(&ctl, &[b"{\"cmd\":\"status\"}\n"]);
        (r[0]["ok"] == true).then_some(r)
    });
    assert_eq!(ok[0]["result"]["blocks"]["remapped"], 0, "nothing changed");

    // A second server cannot take a live socket; a client of a missing one gets a hint.
    let g = Files::new(MAIN_SIZE, SPARE_SIZE);
    g.create(&[]);
    let o = remap(&[
        "serve",
        s(&g.main),
        s(&g.spare),
        "--socket",
        s(&g.path("nbd.sock")),
        "--control",
        s(&ctl),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("another server already listens"));
    let o = remap(&["status", "--control", s(&g.path("nope"))]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("is `remap serve --control"));
    served.stop();
}

#[test]
fn a_background_scrub_does_not_fail_client_io() {
    require("qemu-io", "qemu-utils");
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    let ctl = f.path("ctl");
    let sock = f.path("nbd.sock");
    let served = Served::start(
        &f,
        &[
            "--socket",
            s(&sock),
            "--control",
            s(&ctl),
            "--fail-write",
            "100-103",
        ],
    );
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    let io = |cmds: &[String]| {
        let mut c = tool("qemu-io");
        c.args(["-f", "raw", &uri]);
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        let out = must(&mut c);
        assert!(!out.contains("error") && !out.contains("failed"), "{out}");
    };
    // A scrub slow enough (32 MiB at 2 MiB/s) to still run while the client works.
    let o = remap(&["scrub", "--control", s(&ctl), "--rate", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let t0 = Instant::now();
    let mut bytes = 0u64;
    for round in 0..4u8 {
        let p = 0x40 + round;
        io(&[
            format!("write -P {p} 0 8M"),
            "flush".to_string(),
            format!("read -P {p} 0 8M"),
        ]);
        bytes += 16 << 20;
    }
    let secs = t0.elapsed().as_secs_f64();
    let st = remap_json(&["scrub", "--control", s(&ctl), "--status", "--json"]);
    assert_eq!(
        st["state"], "running",
        "the scrub ran during the client I/O: {st}"
    );
    println!(
        "client I/O during a background scrub at 2 MiB/s: {:.1} MiB written and read back in {secs:.2} s ({:.1} MiB/s, {} build), scrub at block {}",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / 1_048_576.0 / secs,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        st["cursor"]
    );
    let stopped = remap_json(&["scrub", "--control", s(&ctl), "--stop", "--json"]);
    assert_eq!(stopped["state"], "stopped");
    let cursor = stopped["saved_cursor"].as_u64().expect("cursor");
    assert!(cursor > 0, "{stopped}");
    let st = remap_json(&["status", "--control", s(&ctl), "--json"]);
    assert_eq!(st["stats"]["failed_ios"], 0, "no client request failed");
    assert_eq!(st["blocks"]["remapped"], 4, "the failing writes moved");
    let (_, err) = served.stop();
    assert!(err.contains("remapped: 100,101,102,103"), "{err}");
    // The stopped scrub's cursor survives the restart.
    let st = remap_json(&["status", "--json", s(&f.main), s(&f.spare)]);
    assert_eq!(st["scrub_cursor"].as_u64(), Some(cursor));
}
