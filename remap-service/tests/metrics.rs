//! The metrics endpoint, in-process: a pair served by `serve()` with faults, client I/O
//! through the device, a map and a finished scrub; the scrape passes `promtool check
//! metrics` and every figure equals the live status taken at the same quiet moment.
//! (`remap-cli/tests/metrics.rs` does the same through the `remap` binary and real NBD
//! clients.)

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use remap_core::BlockBackend;
use remap_service::blocks::BlockRange;
use remap_service::scrub::ScrubState;
use remap_service::{FaultPlan, ServeConfig};

/// `METHOD PATH` with extra header lines; returns (status line, headers, body).
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

/// `promtool check metrics` on `text`: fails loudly when promtool is missing.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package `prometheus`; scripts/install-deps.sh installs it)");
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
fn a_scrape_passes_promtool_and_equals_the_live_status() {
    let f = Files::new(32 << 20, 4 << 20);
    let serving = f.serve(
        FaultPlan {
            fail_write: blocks(5, 6),
            fail_read: blocks(300, 300),
            ..FaultPlan::default()
        },
        ServeConfig {
            metrics: Some("127.0.0.1:0".parse().expect("address")),
            ..ServeConfig::default()
        },
    );
    let addr = serving.metrics_addr().expect("metrics address").to_string();
    let live = serving.live().clone();
    // Client I/O (two remaps, a read error), a map and a finished scrub.
    let d = &live.device;
    d.write_at(0, &vec![7u8; 1 << 20]).expect("write");
    let mut buf = vec![0u8; 1 << 20];
    d.read_at(0, &mut buf).expect("read");
    assert!(buf.iter().all(|&b| b == 7));
    d.flush().expect("flush");
    assert!(
        d.read_at(300 * BS, &mut buf[..BS as usize]).is_err(),
        "block 300 fails reads"
    );
    let map = live
        .map(
            &[BlockRange {
                first: 1000,
                last: 1000,
            }],
            false,
            false,
        )
        .expect("map");
    assert_eq!(map.moved, 1);
    live.scrub_start(None).expect("scrub");
    wait_for(Duration::from_secs(60), "the scrub", || {
        (live.scrub_status().state == ScrubState::Finished).then_some(())
    });

    // Quiet now: the metrics and the status describe the same moment.
    let (status, headers, body) = http(&addr, "GET", "/metrics", "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(headers.contains("text/plain; version=0.0.4"), "{headers}");
    let now = serde_json::to_value(live.status()).expect("status");
    let (ok, report) = promtool(&body);
    assert!(ok, "promtool check metrics failed:\n{report}\n{body}");

    let m = samples(&body);
    let mut compared = 0;
    for (name, value) in now["stats"].as_object().expect("stats") {
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
    assert_eq!(
        m["remap_remapped_blocks"], 3.0,
        "5, 6 by failing writes, 1000 by map"
    );
    assert_eq!(m["remap_pending_blocks"], 1.0, "300");
    assert_eq!(m["remap_health_state{state=\"degraded\"}"], 1.0);
    assert_eq!(m["remap_scrub_unreadable_blocks"], 1.0);
    assert_eq!(
        m["remap_metadata_sequence"],
        now["sequence"]["newest_durable"]
            .as_f64()
            .expect("sequence")
    );

    // OpenMetrics on request; anything else refused politely.
    let (_, headers, om) = http(
        &addr,
        "GET",
        "/metrics",
        "Accept: application/openmetrics-text; version=1.0.0\r\n",
    );
    assert!(
        headers.contains("application/openmetrics-text"),
        "{headers}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert_eq!(http(&addr, "GET", "/other", "").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        http(&addr, "POST", "/metrics", "").0,
        "HTTP/1.1 405 Method Not Allowed"
    );

    let summary = serving.stop().expect("stop");
    assert_eq!(summary.remapped, vec![5, 6, 1000]);
    assert_eq!(summary.pending, vec![300]);
    assert!(TcpStream::connect(&addr).is_err(), "the endpoint is closed");
}
