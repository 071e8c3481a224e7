//! `remap health` through the binary: the SMART fixtures (a healthy drive, one with growing
//! pending sectors, one with reallocations near exhaustion) each give their verdict and
//! reasons; remap's own verdict and thresholds (set at create, changed by `remap set`)
//! combine with SMART's; the rates and the projection say what they know.

mod common;

use std::path::PathBuf;

use common::*;
use serde_json::Value;

/// The smartctl fixtures live with the SMART code, in `remap-service`.
fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../remap-service/tests/fixtures/smart")
        .join(name)
}

fn health(f: &Files, extra: &[&str]) -> Value {
    let mut args = vec!["health", s(&f.main), s(&f.spare), "--json"];
    args.extend_from_slice(extra);
    health_json(&args)
}

fn smart_reasons(v: &Value) -> Vec<(u64, String, String)> {
    v["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .filter(|r| r["source"] == "smart")
        .map(|r| {
            (
                r["attribute"].as_u64().unwrap_or(0),
                r["state"].as_str().expect("state").to_string(),
                r["message"].as_str().expect("message").to_string(),
            )
        })
        .collect()
}

fn formatted() -> Files {
    let f = Files::new(16 << 20, 4 << 20);
    f.create(&[]);
    f
}

#[test]
fn a_healthy_drive_is_healthy() {
    let f = formatted();
    let h = fixture("healthy.json");
    let v = health(&f, &["--smart-json", s(&h)]);
    assert_eq!(v["state"], "healthy");
    assert_eq!(v["reasons"], serde_json::json!([]));
    assert_eq!(v["smart"]["state"], "healthy");
    assert_eq!(v["smart"]["serial"], "WD-WCC4N0HEALTHY");
    assert_eq!(v["smart"]["driving_attributes"], serde_json::json!([]));
    let o = remap(&["health", s(&f.main), s(&f.spare), "--smart-json", s(&h)]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("health      healthy\n  no reason for concern"),
        "{out}"
    );
}

#[test]
fn growing_pending_sectors_degrade_and_name_attribute_197() {
    let f = formatted();
    let before = fixture("pending-before.json");
    let after = fixture("pending-growing.json");
    let v = health(&f, &["--smart-json", s(&before), "--smart-json", s(&after)]);
    assert_eq!(v["state"], "degraded");
    assert_eq!(v["smart"]["readings"], 2);
    let reasons = smart_reasons(&v);
    assert!(
        reasons.contains(&(
            197,
            "degraded".into(),
            "24 sectors pending reallocation (unreadable)".into()
        )),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(id, _, m)| *id == 197 && m.contains("grew from 8 to 24 between readings")),
        "{reasons:?}"
    );
    let driving = v["smart"]["driving_attributes"]
        .as_array()
        .expect("driving");
    assert!(driving.contains(&Value::from(197)), "{driving:?}");
    // One reading alone: no growth reason.
    let v = health(&f, &["--smart-json", s(&after)]);
    assert!(!smart_reasons(&v).iter().any(|(_, _, m)| m.contains("grew")));

    // remap's pending-critical threshold applies to the drive's pending count too: at 16
    // (set later with `remap set`), 24 pending sectors are critical.
    let o = remap(&["set", s(&f.main), s(&f.spare), "--pending-critical", "16"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = health(&f, &["--smart-json", s(&after)]);
    assert_eq!(v["state"], "critical");
    assert_eq!(v["smart"]["driving_attributes"], serde_json::json!([197]));
    assert_eq!(v["thresholds"]["pending_critical"], 16);
}

#[test]
fn reallocations_near_exhaustion_are_critical_and_crc_errors_blame_the_cable() {
    let f = formatted();
    let v = health(
        &f,
        &["--smart-json", s(&fixture("realloc-near-exhaustion.json"))],
    );
    assert_eq!(v["state"], "critical");
    assert_eq!(v["smart"]["driving_attributes"], serde_json::json!([5]));
    let reasons = smart_reasons(&v);
    assert!(
        reasons
            .iter()
            .any(|(id, st, m)| *id == 5 && st == "critical" && m.contains("nearly exhausted")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(id, st, m)| *id == 199 && st == "degraded" && m.contains("cable")),
        "{reasons:?}"
    );
    let o = remap(&[
        "health",
        s(&f.main),
        s(&f.spare),
        "--smart-json",
        s(&fixture("realloc-near-exhaustion.json")),
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("critical, driven by attribute(s) 5"), "{out}");
}

#[test]
fn remaps_thresholds_rates_and_the_projection_offline() {
    let f = Files::new(16 << 20, 4 << 20);
    // Thresholds at create time: a pool of 10 spare blocks, degraded at 40 % used.
    f.create(&["--spare-blocks", "10", "--spare-used-degraded", "40"]);
    let v = health(&f, &[]);
    assert_eq!(v["state"], "healthy");
    assert_eq!(v["thresholds"]["spare_used_degraded_pct"], 40);
    assert_eq!(
        v["no_projection"],
        "fewer than 3 remaps so far: not enough history to project"
    );
    let o = remap(&["map", s(&f.main), s(&f.spare), "1-5"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = health(&f, &["--smart-json", s(&fixture("healthy.json"))]);
    assert_eq!(v["state"], "degraded", "{v}");
    assert_eq!(v["reasons"][0]["source"], "remap");
    assert_eq!(v["reasons"][0]["state"], "degraded");
    assert!(
        v["reasons"][0]["message"].as_str().is_some_and(
            |m| m.starts_with("50 % of the spare pool used or retired (degraded at 40 %")
        ),
        "{v}"
    );
    assert_eq!(v["spares"]["used"], 5);
    assert_eq!(v["spares"]["free"], 5);
    // The five remaps happened within the last minute, by the table's timestamps.
    let minute = &v["rates"]["windows"][0];
    assert_eq!(
        (minute["name"].as_str(), minute["remaps"].as_u64()),
        (Some("minute"), Some(5))
    );
    assert!(minute["ios"].is_null(), "unknown offline: {minute}");
    assert_eq!(v["rates"]["lifetime"]["remaps"], 5);
    // All five were moved by hand: they use spares but give no failure rate to fit, and
    // the report says why.
    assert_eq!(
        v["no_projection"], "fewer than 3 remaps so far: not enough history to project",
        "{v}"
    );
    // Out-of-order thresholds are refused, at create and at set.
    let g = Files::new(16 << 20, 4 << 20);
    let o = remap(&[
        "create",
        s(&g.main),
        s(&g.spare),
        "--pending-degraded",
        "10",
        "--pending-critical",
        "5",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = remap(&[
        "set",
        s(&f.main),
        s(&f.spare),
        "--spare-used-critical",
        "30",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("above the critical one"));
}

#[test]
fn bad_smart_input_is_one_clear_line_before_anything_is_opened() {
    let f = formatted();
    let junk = f.path("junk.json");
    std::fs::write(&junk, "not json").expect("write");
    let o = remap(&[
        "health",
        "/nonexistent/main",
        "/nonexistent/spare",
        "--smart-json",
        s(&junk),
    ]);
    // No verdict: 3, unknown, as monitoring plugins expect.
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("is not smartctl JSON output"), "{err}");
    let o = remap(&[
        "health",
        s(&f.main),
        s(&f.spare),
        "--smart-json",
        "/nonexistent.json",
    ]);
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot read /nonexistent.json"));
}
