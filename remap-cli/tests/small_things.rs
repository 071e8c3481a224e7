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
