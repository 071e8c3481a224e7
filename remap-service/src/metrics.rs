//! The metrics endpoint of a running server: the live figures in the Prometheus text format, encoded by
//! `prometheus-client` (OpenMetrics text), served over a minimal HTTP/1.1 `GET` handler.
//!
//! Two forms, by the scraper's `Accept` header: a scraper that asks for
//! `application/openmetrics-text` (Prometheus does) gets the crate's OpenMetrics text as it
//! is; any other client (curl, `promtool check metrics`, older scrapers) gets the classic
//! text format 0.0.4, which differs only in naming a counter family after its samples
//! (`# TYPE remap_reads_total counter` where OpenMetrics writes `remap_reads`), and in
//! having no `# UNIT` and `# EOF` lines. [`to_classic`] makes that change on the crate's
//! output; values, labels and escaping stay the crate's.
//!
//! Every scrape takes one snapshot of the device and encodes it through a
//! [`Collector`]: every counter of [`remap_core::StatsSnapshot`] (`remap_<name>_total`),
//! the table and pool gauges, the health state and its reasons, the thresholds, the
//! windowed rates, the exhaustion projection, the background scrub's progress, and the
//! latency histogram (`remap_io_latency_seconds`, log2 buckets).
//!
//! The HTTP side is a `std::net::TcpListener` and a few lines, not a crate: it answers
//! `GET /metrics` (and `/`) with the text and anything else with 404 or 405, one request
//! per connection, request head bounded to [`MAX_REQUEST_HEAD`] bytes, read and write
//! timeouts of a few seconds. A scraper needs nothing more, and the server gains no
//! dependency tree for it.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeMetric, MetricEncoder, NoLabelSet, text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use remap_core::stats::{LATENCY_BUCKETS, LatencyHistogram, LatencySnapshot};
use remap_core::{BlockBackend, HealthState, StatsSnapshot};

use crate::live::Live;
use crate::scrub::ScrubState;

/// The longest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 8 << 10;
const TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(100);
/// The content type of OpenMetrics text, which `prometheus-client` writes.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the classic text format.
pub const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The latency histogram as Prometheus wants it: seconds, per-bucket counts.
#[derive(Debug)]
struct Latency(LatencySnapshot);

impl EncodeMetric for Latency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = (0..LATENCY_BUCKETS)
            .map(|i| {
                let upper = if i + 1 == LATENCY_BUCKETS {
                    f64::MAX
                } else {
                    LatencyHistogram::bucket_upper_ns(i) as f64 / 1e9
                };
                (upper, self.0.buckets[i])
            })
            .collect();
        encoder.encode_histogram::<NoLabelSet>(
            self.0.total_ns as f64 / 1e9,
            self.0.count,
            &buckets,
            None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// The metrics endpoint could not listen.
#[derive(Debug, thiserror::Error)]
#[error("{addr}: cannot serve metrics: {source}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    #[source]
    pub source: io::Error,
}

/// Takes a snapshot of the served device at every scrape.
struct DeviceCollector<M: BlockBackend + 'static, S: BlockBackend + 'static> {
    live: Arc<Live<M, S>>,
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    let m = e.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: N,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    let m = e.encode_descriptor(name, help, None, g.metric_type())?;
    g.encode(m)
}

/// A gauge with one label, one sample per `(label value, value)`.
fn labelled<N: prometheus_client::encoding::EncodeGaugeValue + Copy>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: &[(&str, N)],
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (value, v) in samples {
        let labels = [(label, *value)];
        let fam = m.encode_family(&labels)?;
        ConstGauge::new(*v).encode(fam)?;
    }
    Ok(())
}

/// Every counter of a snapshot, with what it counts.
fn counters(s: &StatsSnapshot) -> [(&'static str, &'static str, u64); 23] {
    [
        ("reads", "Client read requests", s.reads),
        ("writes", "Client write requests", s.writes),
        ("flushes", "Client flush requests", s.flushes),
        ("trims", "Client trim requests", s.trims),
        (
            "write_zeroes",
            "Client write-zeroes requests",
            s.write_zeroes,
        ),
        ("bytes_read", "Bytes read by clients", s.bytes_read),
        ("bytes_written", "Bytes written by clients", s.bytes_written),
        (
            "normal_ios",
            "Data I/Os served by the main device alone",
            s.normal_ios,
        ),
        (
            "remapped_ios",
            "Data I/Os that touched a remapped or pending block",
            s.remapped_ios,
        ),
        (
            "failed_ios",
            "Data I/Os that returned an error",
            s.failed_ios,
        ),
        (
            "main_read_errors",
            "Failed read attempts on the main device",
            s.main_read_errors,
        ),
        (
            "main_write_errors",
            "Failed writes on the main device",
            s.main_write_errors,
        ),
        (
            "spare_read_errors",
            "Failed read attempts on the spare device",
            s.spare_read_errors,
        ),
        (
            "spare_write_errors",
            "Failed writes on the spare device",
            s.spare_write_errors,
        ),
        (
            "transient_recoveries",
            "Reads that failed and then succeeded on a retry",
            s.transient_recoveries,
        ),
        ("flush_errors", "Failed flushes", s.flush_errors),
        ("remaps", "Blocks moved to a spare block", s.remaps),
        ("unmaps", "Blocks moved back to the main device", s.unmaps),
        (
            "pending_marked",
            "Times a block was marked pending (unreadable)",
            s.pending_marked,
        ),
        (
            "spares_retired_events",
            "Spare blocks taken out of service",
            s.spares_retired_events,
        ),
        (
            "commits",
            "Metadata commits (journal write and flush)",
            s.commits,
        ),
        ("scrubbed_bytes", "Bytes read by scrubs", s.scrubbed_bytes),
        (
            "scrub_errors",
            "Scrub reads that found unreadable blocks",
            s.scrub_errors,
        ),
    ]
}

impl<M: BlockBackend + 'static, S: BlockBackend + 'static> std::fmt::Debug
    for DeviceCollector<M, S>
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCollector")
            .field("live", &self.live)
            .finish()
    }
}

impl<M: BlockBackend + 'static, S: BlockBackend + 'static> Collector for DeviceCollector<M, S> {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = &self.live;
        let d = &live.device;
        let s = d.stats();
        let health = d.health();
        let thresholds = d.thresholds();
        let scrub = live.scrub_status();
        let view = live.health();

        for (name, help, v) in counters(&s) {
            counter(&mut e, name, help, v)?;
        }
        gauge(
            &mut e,
            "pending_blocks",
            "Blocks that could not be read and wait for a whole-block write",
            s.pending_blocks,
        )?;
        gauge(
            &mut e,
            "remapped_blocks",
            "Blocks that live on a spare block",
            s.remapped_blocks,
        )?;
        gauge(
            &mut e,
            "spare_pool_blocks",
            "Spare blocks in the pool",
            s.spares_total,
        )?;
        gauge(
            &mut e,
            "spares_used",
            "Spare blocks holding a remapped block",
            s.spares_used,
        )?;
        gauge(
            &mut e,
            "spares_retired",
            "Spare blocks taken out of service",
            s.spares_retired,
        )?;
        gauge(&mut e, "spares_free", "Spare blocks free", s.spares_free())?;
        gauge(
            &mut e,
            "spare_used_ratio",
            "Share of the spare pool used or retired, 0 to 1",
            s.spares_used.saturating_add(s.spares_retired) as f64 / s.spares_total.max(1) as f64,
        )?;
        gauge(
            &mut e,
            "device_blocks",
            "Blocks of the exported device",
            d.blocks(),
        )?;
        gauge(
            &mut e,
            "block_size_bytes",
            "The remap unit",
            d.block_size().bytes_u64(),
        )?;
        gauge(
            &mut e,
            "metadata_sequence",
            "Sequence number of the newest durable metadata change",
            d.sequence(),
        )?;
        gauge(
            &mut e,
            "uptime_seconds",
            "Seconds since remap serve started",
            live.uptime_s(),
        )?;

        let states = [
            HealthState::Healthy,
            HealthState::Degraded,
            HealthState::Critical,
        ];
        let samples: Vec<(&str, i64)> = states
            .iter()
            .map(|st| (st.as_str(), i64::from(*st == health.state)))
            .collect();
        labelled(
            &mut e,
            "health_state",
            "1 for the current health state (remap's own verdict), 0 for the others",
            "state",
            &samples,
        )?;
        gauge(
            &mut e,
            "health_severity",
            "Health as a number: 0 healthy, 1 degraded, 2 critical",
            health.state as i64,
        )?;
        let reasons: Vec<(&str, i64)> = health.reasons.descriptions().map(|r| (r, 1i64)).collect();
        labelled(
            &mut e,
            "health_reason",
            "1 for each reason behind the health state",
            "reason",
            &reasons,
        )?;
        gauge(
            &mut e,
            "error_rate_ppm",
            "Device errors per million data I/Os, lifetime",
            health.error_rate_ppm,
        )?;
        let t = [
            (
                "error_rate_degraded_ppm",
                u64::from(thresholds.error_rate_degraded_ppm),
            ),
            (
                "error_rate_critical_ppm",
                u64::from(thresholds.error_rate_critical_ppm),
            ),
            ("min_ios_for_rate", thresholds.min_ios_for_rate),
            (
                "spare_used_degraded_pct",
                u64::from(thresholds.spare_used_degraded_pct),
            ),
            (
                "spare_used_critical_pct",
                u64::from(thresholds.spare_used_critical_pct),
            ),
            ("pending_degraded", thresholds.pending_degraded),
            ("pending_critical", thresholds.pending_critical),
        ];
        labelled(
            &mut e,
            "health_threshold",
            "The health thresholds in force",
            "threshold",
            &t,
        )?;

        for (metric, help, pick) in [
            (
                "window_ios",
                "Data I/Os in the last minute, hour, day",
                0usize,
            ),
            (
                "window_errors",
                "Device errors in the last minute, hour, day",
                1,
            ),
            ("window_remaps", "Remaps in the last minute, hour, day", 2),
            (
                "window_pending_marked",
                "Blocks marked pending in the last minute, hour, day",
                3,
            ),
        ] {
            let samples: Vec<(&str, u64)> = view
                .rates
                .windows
                .iter()
                .map(|w| {
                    let v = match pick {
                        0 => w.ios.unwrap_or(0),
                        1 => w.errors.unwrap_or(0),
                        2 => w.remaps,
                        _ => w.pending_marked,
                    };
                    (w.name.as_str(), v)
                })
                .collect();
            labelled(&mut e, metric, help, "window", &samples)?;
        }
        if let Some(p) = &view.projection {
            gauge(
                &mut e,
                "spare_exhaustion_seconds",
                "Projected seconds until the spare pool runs out at the fitted remap rate",
                p.seconds_left,
            )?;
            gauge(
                &mut e,
                "spare_exhaustion_low_seconds",
                "Lower end of the projection's ±2 sigma interval",
                p.seconds_left_low,
            )?;
            if let Some(high) = p.seconds_left_high {
                gauge(
                    &mut e,
                    "spare_exhaustion_high_seconds",
                    "Upper end of the projection's ±2 sigma interval",
                    high,
                )?;
            }
            gauge(
                &mut e,
                "spare_consumption_blocks_per_day",
                "Fitted spare consumption rate",
                p.blocks_per_day,
            )?;
        }

        gauge(
            &mut e,
            "scrub_running",
            "1 while a background scrub runs",
            i64::from(scrub.state == ScrubState::Running),
        )?;
        gauge(
            &mut e,
            "scrub_cursor_block",
            "Next block the current or last scrub reads",
            scrub.cursor,
        )?;
        gauge(
            &mut e,
            "scrub_end_block",
            "One past the last block of the current or last scrub",
            scrub.end_block,
        )?;
        gauge(
            &mut e,
            "scrub_progress_ratio",
            "Share of the current or last scrub's range read, 0 to 1",
            scrub.fraction_done(),
        )?;
        gauge(
            &mut e,
            "scrub_unreadable_blocks",
            "Unreadable blocks found by the current or last scrub",
            scrub.unreadable_count,
        )?;
        gauge(
            &mut e,
            "scrub_saved_cursor_block",
            "Persisted scrub cursor: the next resumable scrub starts here",
            scrub.saved_cursor,
        )?;
        counter(
            &mut e,
            "scrub_passes",
            "Completed scrub passes over the whole device",
            scrub.passes,
        )?;

        let latency = Latency(s.latency.clone());
        let m = e.encode_descriptor(
            "io_latency_seconds",
            "Latency of client requests (log2 buckets)",
            None,
            latency.metric_type(),
        )?;
        latency.encode(m)
    }
}

/// OpenMetrics text to the classic text format: counter families named after their samples
/// (`_total`), no `# UNIT` and no `# EOF` lines. Everything else passes unchanged.
pub fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len() + 16 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(l.trim_end()),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The metrics text of `live` in OpenMetrics form.
pub fn render<M: BlockBackend + 'static, S: BlockBackend + 'static>(
    live: &Arc<Live<M, S>>,
) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::with_prefix("remap");
    registry.register_collector(Box::new(DeviceCollector { live: live.clone() }));
    let mut body = String::new();
    text::encode(&mut body, &registry)?;
    Ok(body)
}

/// The metrics endpoint of a running server.
#[derive(Debug)]
pub struct MetricsServer {
    listener: TcpListener,
    addr: SocketAddr,
}

impl MetricsServer {
    pub fn bind(addr: SocketAddr) -> Result<MetricsServer, MetricsError> {
        let err = |source| MetricsError { addr, source };
        let listener = TcpListener::bind(addr).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let addr = listener.local_addr().map_err(err)?;
        Ok(MetricsServer { listener, addr })
    }

    /// The address it listens on (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer scrapes on a thread until `live` stops.
    pub fn spawn<M: BlockBackend + 'static, S: BlockBackend + 'static>(
        self,
        live: Arc<Live<M, S>>,
    ) -> io::Result<JoinHandle<()>> {
        std::thread::Builder::new()
            .name("remap-metrics".into())
            .spawn(move || {
                while !live.is_stopping() {
                    match self.listener.accept() {
                        Ok((stream, peer)) => {
                            if let Err(e) = answer(stream, &live) {
                                tracing::debug!(%peer, error = %e, "metrics request failed");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(POLL);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "metrics: accept failed");
                            std::thread::sleep(POLL);
                        }
                    }
                }
            })
    }
}

/// Read one request head (bounded) and answer it.
fn answer<M: BlockBackend + 'static, S: BlockBackend + 'static>(
    stream: TcpStream,
    live: &Arc<Live<M, S>>,
) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?.take(MAX_REQUEST_HEAD as u64));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Drain the headers up to the blank line (or the bound).
    let mut header = String::new();
    let mut openmetrics = false;
    loop {
        header.clear();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("accept")
            && value.contains("application/openmetrics-text")
        {
            openmetrics = true;
        }
    }
    let mut words = request_line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => match render(live) {
            Ok(text) if openmetrics => ("200 OK", OPENMETRICS, text),
            Ok(text) => ("200 OK", CLASSIC, to_classic(&text)),
            Err(_) => (
                "500 Internal Server Error",
                "text/plain; charset=utf-8",
                "cannot encode the metrics\n".to_string(),
            ),
        },
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only /metrics is served here\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "use GET /metrics\n".to_string(),
        ),
    };
    let mut head = String::new();
    let _ = write!(
        head,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let mut out = &stream;
    out.write_all(head.as_bytes())?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_form_names_counter_families_after_their_samples() {
        let om = "# HELP remap_reads Client reads\n# TYPE remap_reads counter\nremap_reads_total 5\n\
                  # HELP remap_x_seconds Latency\n# TYPE remap_x_seconds histogram\n# UNIT remap_x_seconds seconds\n\
                  remap_x_seconds_sum 1.5\n# HELP remap_pending_blocks Pending\n# TYPE remap_pending_blocks gauge\n\
                  remap_pending_blocks 3\n# EOF\n";
        assert_eq!(
            to_classic(om),
            "# HELP remap_reads_total Client reads\n# TYPE remap_reads_total counter\nremap_reads_total 5\n\
             # HELP remap_x_seconds Latency\n# TYPE remap_x_seconds histogram\nremap_x_seconds_sum 1.5\n\
             # HELP remap_pending_blocks Pending\n# TYPE remap_pending_blocks gauge\nremap_pending_blocks 3\n"
        );
    }
}
