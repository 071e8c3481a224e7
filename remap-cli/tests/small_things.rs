//! Issue 11, "Smaller things found on the way", each through the binary: monitoring exit
//! codes of `remap health`, usage errors, clear refusals of bad rates and thresholds,
//! errors naming the device they happened on, read-only opens, `check --json`'s schema,
//! nothing written when nothing changed, and the README agreeing with `--help`.

mod common;

use common::*;

const MAIN_SIZE: u64 = 4 << 20;
const SPARE_SIZE: u64 = 1 << 20;

fn code(o: &std::process::Output) -> i32 {
    o.status.code().expect("exited")
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `remap health`: 0 healthy, 1 degraded, 2 critical, 3 unknown (the Nagios plugin
/// convention); a usage error stays 2.
#[test]
fn health_exits_with_monitoring_codes() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&["--pending-degraded", "1", "--pending-critical", "3"]);
    let (m, sp) = (s(&f.main), s(&f.spare));
    let o = remap(&["health", m, sp]);
    assert_eq!(code(&o), 0, "healthy: {}", text(&o));

    // Pending blocks, through a served device with failing reads.
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
            "7-9",
        ],
    );
    let o = remap(&["scrub", "--control", s(&ctl)]);
    assert!(o.status.success(), "{}", text(&o));
    wait_for(std::time::Duration::from_secs(30), "the scrub", || {
        let v = remap_json(&["scrub", "--control", s(&ctl), "--status", "--json"]);
        (v["state"] == "finished").then_some(())
    });
    let o = remap(&["health", "--control", s(&ctl)]);
    assert_eq!(code(&o), 2, "critical, live: {}", text(&o));
    served.stop();
    let o = remap(&["health", m, sp, "--json"]);
    assert_eq!(code(&o), 2, "critical: {}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("the report still prints");
    assert_eq!(v["state"], "critical");
    let o = remap(&["set", m, sp, "--pending-critical", "64"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = remap(&["health", m, sp]);
    assert_eq!(code(&o), 1, "degraded: {}", text(&o));
    assert!(err(&o).contains("degraded"), "{}", text(&o));

    // No verdict: unknown.
    let o = remap(&["health", "/nonexistent/main", sp]);
    assert_eq!(code(&o), 3, "{}", text(&o));
    // A usage error is still 2.
    let o = remap(&["health", m]);
    assert_eq!(code(&o), 2, "{}", text(&o));
}

/// A usage error: exit 2, one clear line, both devices unchanged.
#[track_caller]
fn usage_error(f: &Files, args: &[&str], want: &str) {
    let before = Hashes::of(&f.main, &f.spare);
    let o = remap(args);
    assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
    assert!(
        err(&o).contains(want),
        "{args:?}: {want:?} not in {}",
        err(&o)
    );
    before.assert_unchanged(&f.main, &f.spare, &format!("{args:?}"));
}

#[test]
fn bad_sizes_rates_and_zero_thresholds_are_usage_errors() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    let (m, sp) = (s(&f.main), s(&f.spare));
    usage_error(
        &f,
        &["create", m, sp, "--journal-blocks", "3"],
        "4..=1048576",
    );
    usage_error(&f, &["create", m, sp, "--spare-blocks", "0"], "1..");
    for t in [
        "--pending-critical",
        "--pending-degraded",
        "--error-rate-degraded",
        "--error-rate-critical",
        "--spare-used-degraded",
        "--spare-used-critical",
    ] {
        usage_error(&f, &["create", m, sp, t, "0"], "0 is not in 1..");
    }
    f.create(&[]);
    usage_error(
        &f,
        &["set", m, sp, "--pending-critical", "0"],
        "0 is not in 1..",
    );
    for rate in ["1e-300", "-1", "0"] {
        usage_error(&f, &["scrub", m, sp, "--rate", rate], "is outside 0.01 to");
    }
}

/// The same mistake exits the same offline and through a running server.
#[test]
fn the_same_mistake_exits_the_same_offline_and_with_control() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    let (m, sp) = (s(&f.main), s(&f.spare));
    let offline = [
        vec!["map", m, sp, "99999"],
        vec!["unmap", m, sp, "99999"],
        vec!["set", m, sp, "--pending-degraded", "100"],
    ];
    let offline_codes: Vec<i32> = offline.iter().map(|a| code(&remap(a))).collect();
    assert_eq!(offline_codes, [2, 2, 2]);
    let ctl = f.path("ctl");
    let sock = f.path("nbd.sock");
    let served = Served::start(&f, &["--socket", s(&sock), "--control", s(&ctl)]);
    let c = s(&ctl);
    for args in [
        vec!["map", "--control", c, "99999"],
        vec!["unmap", "--control", c, "99999"],
        vec!["set", "--control", c, "--pending-degraded", "100"],
    ] {
        let o = remap(&args);
        assert_eq!(code(&o), 2, "{args:?}: {}", text(&o));
    }
    served.stop();
}

/// A listen failure names the address, not MAIN; `--listen localhost:PORT` is accepted.
#[test]
fn listen_failures_name_the_address_and_host_names_are_accepted() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let before = Hashes::of(&f.main, &f.spare);
    let o = remap(&["serve", s(&f.main), s(&f.spare), "--listen", &addr]);
    assert_eq!(code(&o), 1, "{}", text(&o));
    let e = err(&o);
    assert!(
        e.starts_with(&format!("remap: cannot listen on {addr}")),
        "{e}"
    );
    assert!(
        !e.contains(s(&f.main)),
        "a listen failure is not MAIN's: {e}"
    );
    before.assert_unchanged(&f.main, &f.spare, "serve that cannot listen");
    drop(taken);

    let served = Served::start(&f, &["--listen", "localhost:0"]);
    assert!(
        served
            .lines
            .iter()
            .any(|l| l.starts_with("listening on nbd://127.0.0.1:")),
        "{:?}",
        served.lines
    );
    served.stop();
}

/// README and --help agree on the control socket path and the metrics address, and the
/// README says how to put `remap` on PATH.
#[test]
fn readme_and_help_agree() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let mut help = String::new();
    for cmd in [
        &["--help"][..],
        &["serve", "--help"],
        &["status", "--help"],
        &["health", "--help"],
        &["map", "--help"],
        &["unmap", "--help"],
    ] {
        help.push_str(&String::from_utf8_lossy(&remap(cmd).stdout));
    }
    assert!(help.contains("/run/remap.ctl"), "{help}");
    for (doc, text) in [("README", &readme), ("--help", &help)] {
        assert!(
            !text.contains("/run/remap.sock"),
            "{doc} names another socket path"
        );
        assert!(!text.contains(":9100"), "{doc} uses node_exporter's port");
    }
    assert!(readme.contains("/run/remap.ctl"));
    assert!(help.contains("127.0.0.1:10810") && readme.contains("127.0.0.1:10810"));
    assert!(readme.contains("cargo install") && readme.contains("PATH"));
}

/// `map` and `scrub` only read MAIN: they work on a read-only MAIN (a loop device attached
/// `--read-only`; needs root and the loop driver), and leave it unchanged.
#[test]
fn map_and_scrub_open_main_read_only() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    std::fs::write(&f.main, vec![0x3Cu8; MAIN_SIZE as usize]).unwrap();
    let ro = Loop::attach(&f.main, &["--read-only"]);
    let main_before = sha256(ro.path());
    let o = remap(&["map", s(ro.path()), s(&f.spare), "5-6"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    let o = remap(&["scrub", s(ro.path()), s(&f.spare)]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    assert_eq!(sha256(ro.path()), main_before, "MAIN changed");
    let st = remap_json(&["status", s(ro.path()), s(&f.spare), "--json"]);
    assert_eq!(st["blocks"]["remapped"], 2);
}

/// Nothing is written when nothing changed: an idle read-only `serve` stopped, and `set`
/// with the values already set (offline and through the server).
#[test]
fn an_idle_serve_and_an_unchanged_set_write_nothing() {
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&["--pending-critical", "50"]);
    let (m, sp) = (s(&f.main), s(&f.spare));
    let before = Hashes::of(&f.main, &f.spare);
    let sock = f.path("nbd.sock");
    let served = Served::start(&f, &["--socket", s(&sock), "--read-only"]);
    served.stop();
    before.assert_unchanged(&f.main, &f.spare, "an idle read-only serve");

    let o = remap(&["set", m, sp, "--pending-critical", "50"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    before.assert_unchanged(&f.main, &f.spare, "set to the value already set");

    let ctl = f.path("ctl");
    let served = Served::start(&f, &["--socket", s(&sock), "--control", s(&ctl)]);
    let o = remap(&["set", "--control", s(&ctl), "--pending-critical", "50"]);
    assert_eq!(code(&o), 0, "{}", text(&o));
    served.stop();
    before.assert_unchanged(&f.main, &f.spare, "set --control to the value already set");
}

/// `check --json` follows its documented schema: no Rust `{"Ok": ...}` encodings; a value
/// that could not be read is `{"error": ...}`.
#[test]
fn check_json_has_a_documented_schema() {
    fn has_rust_encoding(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.keys().any(|k| k == "Ok" || k == "Err") || m.values().any(has_rust_encoding)
            }
            serde_json::Value::Array(a) => a.iter().any(has_rust_encoding),
            _ => false,
        }
    }
    let f = Files::new(MAIN_SIZE, SPARE_SIZE);
    f.create(&[]);
    let (m, sp) = (s(&f.main), s(&f.spare));
    let v = remap_json(&["check", m, sp, "--json"]);
    assert!(!has_rust_encoding(&v), "{v:#}");
    assert!(
        v["check"]["recovery"]["superblock_used"].is_string(),
        "{v:#}"
    );
    assert!(v["check"]["checkpoints"][0].is_u64(), "{v:#}");
    assert!(
        v["check"]["recovery"]["journal_stop"]["kind"].is_string(),
        "{v:#}"
    );
    // A checkpoint area destroyed: its entry is {"error": ...}.
    let status = remap_json(&["status", m, sp, "--json"]);
    let area = status["geometry"]["checkpoint_offsets"][0]
        .as_u64()
        .unwrap();
    let mut img = std::fs::read(&f.spare).unwrap();
    for b in &mut img[area as usize..area as usize + 4096] {
        *b = !*b;
    }
    std::fs::write(&f.spare, img).unwrap();
    let o = remap(&["check", m, sp, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert!(!has_rust_encoding(&v), "{v:#}");
    assert!(v["check"]["checkpoints"][0]["error"].is_string(), "{v:#}");
    let help = String::from_utf8_lossy(&remap(&["check", "--help"]).stdout).into_owned();
    assert!(help.contains("--json prints one object"), "{help}");
}
