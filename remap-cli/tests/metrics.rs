//! `remap serve --metrics ADDR`: fetched over HTTP, accepted by `promtool check metrics`
//! (Debian package `prometheus`), and every value equal to what `remap status --control
//! --json` reports at the same moment.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::Duration;

use common::*;

/// `GET PATH` with extra header lines; returns (status line, headers, body).
fn http(addr: &str, method: &str, path: &str, headers: &str) -> (String, String, String) {
    let mut c = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    c.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    write!(
        c,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .expect("send");
    let mut reply = String::new();
    c.read_to_string(&mut reply).expect("read");
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_string(), headers.to_string(), body.to_string())
}

/// Samples by `name{labels}`.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().expect("a number"))
        })
        .collect()
}

fn promtool(text: &str) -> (bool, String) {
    require("promtool", "prometheus");
    let mut child = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let o = child.wait_with_output().expect("promtool");
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

#[test]
fn metrics_pass_promtool_and_match_the_live_status() {
    require("qemu-io", "qemu-utils");
    let f = Files::new(32 << 20, 4 << 20);
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
            "--metrics",
            "127.0.0.1:0",
            "--fail-write",
            "5,6",
            "--fail-read",
            "300",
        ],
    );
    let addr = served.metrics_addr();
    // Client I/O (remaps, a read error), a map and a finished scrub: every kind of figure.
    let uri = format!("nbd+unix:///?socket={}", sock.display());
    must(tool("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 7 0 1M",
        "-c",
        "read -P 7 0 1M",
        "-c",
        "flush",
    ]));
    let o = tool("qemu-io")
        .args(["-f", "raw", &uri, "-c", "read 1228800 4096"])
        .output()
        .expect("qemu-io");
    assert!(
        !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("error"),
        "block 300 fails reads"
    );
    assert!(
        remap(&["map", "--control", s(&ctl), "1000"])
            .status
            .success()
    );
    assert!(remap(&["scrub", "--control", s(&ctl)]).status.success());
    wait_for(Duration::from_secs(60), "the scrub", || {
        let v = remap_json(&["scrub", "--control", s(&ctl), "--status", "--json"]);
        (v["state"] == "finished").then_some(())
    });

    // Quiet now: the metrics and the status describe the same moment.
    let (status, headers, body) = http(&addr, "GET", "/metrics", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
    let live = remap_json(&["status", "--control", s(&ctl), "--json"]);
    let (ok, report) = promtool(&body);
    assert!(ok, "promtool check metrics failed:\n{report}\n{body}");

    let m = samples(&body);
    let stats = live["stats"].as_object().expect("stats");
    let mut compared = 0;
    for (name, value) in stats {
        let Some(v) = value.as_u64() else { continue };
        let metric = match name.as_str() {
            "pending_blocks" | "remapped_blocks" | "spares_used" | "spares_retired" => {
                format!("remap_{name}")
            }
            "spares_total" => "remap_spare_pool_blocks".to_string(),
            _ => format!("remap_{name}_total"),
        };
        assert_eq!(
            m.get(&metric),
            Some(&(v as f64)),
            "{metric} vs stats.{name}"
        );
        compared += 1;
    }
    assert!(compared >= 28, "only {compared} statistics compared");
    let latency = &live["stats"]["latency"];
    assert_eq!(
        m["remap_io_latency_seconds_count"],
        latency["count"].as_u64().expect("count") as f64
    );
    assert!(m["remap_io_latency_seconds_count"] > 0.0);
    let inf = m["remap_io_latency_seconds_bucket{le=\"+Inf\"}"];
    assert_eq!(inf, m["remap_io_latency_seconds_count"]);
    assert!(
        (m["remap_io_latency_seconds_sum"] - latency["total_ns"].as_f64().unwrap() / 1e9).abs()
            < 1e-6
    );
    // Health, spare use, scrub progress, thresholds.
    assert_eq!(live["health"]["state"], "degraded");
    assert_eq!(m["remap_health_state{state=\"degraded\"}"], 1.0);
    assert_eq!(m["remap_health_state{state=\"healthy\"}"], 0.0);
    assert_eq!(m["remap_health_severity"], 1.0);
    assert_eq!(
        m["remap_health_reason{reason=\"unreadable blocks pending\"}"],
        1.0
    );
    assert_eq!(
        m["remap_spares_free"],
        live["spares"]["free"].as_f64().unwrap()
    );
    assert_eq!(
        m["remap_scrub_passes_total"],
        live["scrub_passes"].as_f64().unwrap()
    );
    assert_eq!(m["remap_scrub_progress_ratio"], 1.0);
    assert_eq!(m["remap_scrub_unreadable_blocks"], 1.0);
    assert_eq!(m["remap_scrub_running"], 0.0);
    assert_eq!(
        m["remap_health_threshold{threshold=\"pending_critical\"}"],
        live["thresholds"]["pending_critical"].as_f64().unwrap()
    );
    assert_eq!(
        m["remap_metadata_sequence"],
        live["sequence"]["newest_durable"].as_f64().unwrap()
    );
    assert_eq!(
        m["remap_remapped_blocks"], 3.0,
        "5, 6 by failing writes, 1000 by map"
    );
    assert_eq!(m["remap_pending_blocks"], 1.0, "300");

    // A scraper that asks for OpenMetrics gets the crate's text as it is.
    let (status, headers, om) = http(
        &addr,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    );
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers.contains("application/openmetrics-text"),
        "{headers}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(om.contains("# TYPE remap_reads counter\n"), "{om}");
    assert!(body.contains("# TYPE remap_reads_total counter\n"));
    // Anything else is refused politely.
    assert_eq!(http(&addr, "GET", "/other", "").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        http(&addr, "POST", "/metrics", "").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    let (status, _, body) = http(&addr, "HEAD", "/metrics", "");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    served.stop();
}

#[test]
fn promtool_catches_a_broken_exposition() {
    // The check above means something: promtool refuses what it should.
    let (ok, report) = promtool("# TYPE x counter\nx_total{ 1\n");
    assert!(!ok, "{report}");
    let (ok, report) = promtool(
        "# HELP remap_spares_total x\n# TYPE remap_spares_total gauge\nremap_spares_total 1\n",
    );
    assert!(!ok, "a gauge named _total is a lint problem: {report}");
}
