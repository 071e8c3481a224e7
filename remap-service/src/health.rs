//! The operator's health report: the verdict and every reason for it, error, remap and
//! pending rates, and when the spare pool will run out at the current rate, optionally with
//! the drive's own SMART counters folded in.
//!
//! Built two ways, with the same shape:
//!
//! - **live** (a served device, [`crate::live::Live::health`]): rates over the sliding
//!   minute/hour/day windows that the server feeds with the counters every second;
//! - **offline** (a pair at rest, [`at_rest`]): lifetime counters from the last checkpoint,
//!   and remaps and pending marks per window taken from the timestamps of the table entries.
//!
//! The state is remap's own verdict ([`remap_core::health::evaluate`] on the lifetime
//! counters, as `remap status` shows it), raised by the SMART verdict when SMART data is
//! given. The exhaustion projection is [`crate::predict::project_exhaustion`] over the
//! remap times of the remapped entries.

use crate::predict::{NoProjection, project_exhaustion};
use crate::window::{Counts, HealthWindows};
use remap_core::health::HealthReasons;
use remap_core::{Entry, HealthReport, HealthState, HealthThresholds, StatsSnapshot};
use remap_meta::{Recovered, counters};
use serde::{Deserialize, Serialize};

use crate::smart::{SmartReading, SmartReason};
use crate::time::utc;

/// remap's own verdict, as `remap status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub state: HealthState,
    pub reasons: Vec<String>,
    pub error_rate_ppm: u64,
    pub spare_used_pct: u64,
    pub pending: u64,
}

impl From<&HealthReport> for Verdict {
    fn from(r: &HealthReport) -> Self {
        Verdict {
            state: r.state,
            reasons: r.reasons.descriptions().map(str::to_string).collect(),
            error_rate_ppm: r.error_rate_ppm,
            spare_used_pct: r.spare_used_pct,
            pending: r.pending,
        }
    }
}

/// Where a reason comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Remap,
    Smart,
}

/// One reason for the verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reason {
    pub source: Source,
    pub state: HealthState,
    /// The SMART attribute id behind a SMART reason, if one is.
    pub attribute: Option<u32>,
    pub message: String,
}

/// Counts over one window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// `minute`, `hour` or `day`.
    pub name: String,
    pub span_s: u64,
    /// How much of the window has been watched (less than the span while the server is
    /// younger than it; the span itself offline).
    pub observed_s: u64,
    /// Data I/Os and device errors (live only: offline they are not known per window).
    pub ios: Option<u64>,
    pub errors: Option<u64>,
    pub error_rate_ppm: Option<u64>,
    /// Live: remap and pending events. Offline: remapped and pending blocks whose last
    /// change falls in the window.
    pub remaps: u64,
    pub pending_marked: u64,
}

/// Lifetime totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifetime {
    pub ios: u64,
    pub errors: u64,
    pub error_rate_ppm: u64,
    pub remaps: u64,
    pub pending_marked: u64,
}

/// Rates: per window and over the device's life.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rates {
    /// How the windows were measured, in words.
    pub basis: String,
    pub windows: Vec<Window>,
    pub lifetime: Lifetime,
}

/// Spare pool use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpareUse {
    pub total: u64,
    pub used: u64,
    pub retired: u64,
    pub free: u64,
    pub used_pct: u64,
}

/// When the spare pool runs out at the fitted rate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProjectionView {
    pub blocks_per_day: f64,
    /// Seconds from now, point estimate and the ±2σ interval (`None`: unbounded).
    pub seconds_left: f64,
    pub seconds_left_low: f64,
    pub seconds_left_high: Option<f64>,
    /// Remaps the fit is based on.
    pub samples: usize,
    /// The same as dates (UTC).
    pub exhausted_at: Option<String>,
    pub exhausted_at_low: Option<String>,
    pub exhausted_at_high: Option<String>,
}

/// The SMART part of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmartSection {
    pub state: HealthState,
    /// Readings given; with more than one, growth from the first to the last is judged.
    pub readings: usize,
    pub model: Option<String>,
    pub serial: Option<String>,
    /// The attributes whose reasons set the SMART state.
    pub driving_attributes: Vec<u32>,
    pub reasons: Vec<SmartReason>,
}

/// Everything `remap health` shows; `--json` prints exactly this.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    /// The verdict: remap's own, raised by SMART's if given.
    pub state: HealthState,
    pub reasons: Vec<Reason>,
    pub remap: Verdict,
    pub thresholds: HealthThresholds,
    pub spares: SpareUse,
    pub rates: Rates,
    pub projection: Option<ProjectionView>,
    /// Why there is no projection, when there is none.
    pub no_projection: Option<String>,
    pub smart: Option<SmartSection>,
}

/// remap's reasons, each with its state and the figures against the thresholds.
fn remap_reasons(r: &HealthReport, t: &HealthThresholds) -> Vec<Reason> {
    use HealthState::{Critical, Degraded};
    let rate = format!(
        "{} errors per million I/Os (degraded at {}, critical at {})",
        r.error_rate_ppm, t.error_rate_degraded_ppm, t.error_rate_critical_ppm
    );
    let spare = format!(
        "{} % of the spare pool used or retired (degraded at {} %, critical at {} %)",
        r.spare_used_pct, t.spare_used_degraded_pct, t.spare_used_critical_pct
    );
    let pending = format!(
        "{} unreadable blocks pending (degraded at {}, critical at {})",
        r.pending, t.pending_degraded, t.pending_critical
    );
    let rules = [
        (HealthReasons::ERROR_RATE, Degraded, &rate),
        (HealthReasons::ERROR_RATE_CRITICAL, Critical, &rate),
        (HealthReasons::SPARE_USE, Degraded, &spare),
        (HealthReasons::SPARE_USE_CRITICAL, Critical, &spare),
        (HealthReasons::PENDING, Degraded, &pending),
        (HealthReasons::PENDING_CRITICAL, Critical, &pending),
    ];
    let mut out: Vec<Reason> = rules
        .into_iter()
        .filter(|(flag, _, _)| r.reasons.contains(*flag))
        .map(|(_, state, message)| Reason {
            source: Source::Remap,
            state,
            attribute: None,
            message: message.clone(),
        })
        .collect();
    if r.reasons.contains(HealthReasons::SPARE_EXHAUSTED) {
        out.push(Reason {
            source: Source::Remap,
            state: Critical,
            attribute: None,
            message: "the spare pool is exhausted: the next failing write fails".to_string(),
        });
    }
    out
}

/// The times (seconds) of the remaps that failures forced: remapped entries whose block has
/// seen an error. A block moved by hand (`map` of a healthy block) consumes a spare, which
/// the projection counts, but says nothing about how fast the disk is failing, so it does not
/// enter the fitted rate.
pub fn failure_remap_times<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<u64> {
    entries
        .into_iter()
        .filter(|e| e.is_remapped() && e.error_count > 0)
        .map(|e| u64::from(e.time_s))
        .collect()
}

/// The projection over `remap_times` (seconds, of the blocks that failures moved, from
/// [`failure_remap_times`]), or why there is none: every consumed spare is counted, the rate
/// is the rate of failures.
pub fn projection(
    remap_times: &[u64],
    stats: &StatsSnapshot,
    now_s: u64,
) -> Result<ProjectionView, NoProjection> {
    let times = remap_times;
    let consumed = stats.spares_used.saturating_add(stats.spares_retired);
    let p = project_exhaustion(times, consumed, stats.spares_total)?;
    let at = |seconds: f64| -> Option<String> {
        (0.0..1e12)
            .contains(&seconds)
            .then(|| utc(now_s.saturating_add(seconds as u64)))
    };
    Ok(ProjectionView {
        blocks_per_day: p.blocks_per_day,
        seconds_left: p.seconds_left,
        seconds_left_low: p.seconds_left_low,
        seconds_left_high: p
            .seconds_left_high
            .is_finite()
            .then_some(p.seconds_left_high),
        samples: p.samples,
        exhausted_at: at(p.seconds_left),
        exhausted_at_low: at(p.seconds_left_low),
        exhausted_at_high: at(p.seconds_left_high),
    })
}

fn ppm(errors: u64, ios: u64) -> u64 {
    remap_core::health::HealthInputs {
        errors,
        ios,
        ..Default::default()
    }
    .error_rate_ppm()
}

fn lifetime(s: &StatsSnapshot) -> Lifetime {
    let c = Counts::from_snapshot(s);
    Lifetime {
        ios: c.ios,
        errors: c.errors,
        error_rate_ppm: ppm(c.errors, c.ios),
        remaps: c.remaps,
        pending_marked: c.pending_marked,
    }
}

fn spare_use(s: &StatsSnapshot, r: &HealthReport) -> SpareUse {
    SpareUse {
        total: s.spares_total,
        used: s.spares_used,
        retired: s.spares_retired,
        free: s.spares_free(),
        used_pct: r.spare_used_pct,
    }
}

/// The three windows' names and spans.
const WINDOWS: [(&str, u64); 3] = [("minute", 60), ("hour", 3_600), ("day", 86_400)];

/// The inputs a report is built from.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub stats: &'a StatsSnapshot,
    pub report: &'a HealthReport,
    pub thresholds: &'a HealthThresholds,
    pub projection: Result<ProjectionView, NoProjection>,
}

fn assemble(i: Inputs<'_>, rates: Rates) -> HealthView {
    let (projection, no_projection) = match i.projection {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    HealthView {
        state: i.report.state,
        reasons: remap_reasons(i.report, i.thresholds),
        remap: Verdict::from(i.report),
        thresholds: *i.thresholds,
        spares: spare_use(i.stats, i.report),
        rates,
        projection,
        no_projection,
        smart: None,
    }
}

/// The report of a served device, from its sliding windows. `uptime_s` is how long the
/// windows have been fed.
pub fn live(i: Inputs<'_>, windows: &HealthWindows, uptime_s: u64) -> HealthView {
    let sums = [windows.minute.sum(), windows.hour.sum(), windows.day.sum()];
    let windows = WINDOWS
        .iter()
        .zip(sums)
        .map(|(&(name, span_s), c)| Window {
            name: name.to_string(),
            span_s,
            observed_s: uptime_s.min(span_s),
            ios: Some(c.ios),
            errors: Some(c.errors),
            error_rate_ppm: Some(ppm(c.errors, c.ios)),
            remaps: c.remaps,
            pending_marked: c.pending_marked,
        })
        .collect();
    let rates = Rates {
        basis: format!(
            "live: counters sampled every second by the server, running for {uptime_s} s"
        ),
        windows,
        lifetime: lifetime(i.stats),
    };
    assemble(i, rates)
}

/// What the offline windows are counted from: each table entry's last change (seconds) and
/// whether it is remapped (else pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    pub time_s: u64,
    pub remapped: bool,
}

impl From<&Entry> for Mark {
    fn from(e: &Entry) -> Self {
        Mark {
            time_s: u64::from(e.time_s),
            remapped: e.is_remapped(),
        }
    }
}

/// The report of a pair at rest, from the lifetime counters and the table's timestamps.
pub fn offline(i: Inputs<'_>, marks: &[Mark], now_s: u64) -> HealthView {
    let windows = WINDOWS
        .iter()
        .map(|&(name, span_s)| {
            let since = now_s.saturating_sub(span_s);
            let recent = marks.iter().filter(|m| m.time_s >= since);
            Window {
                name: name.to_string(),
                span_s,
                observed_s: span_s,
                ios: None,
                errors: None,
                error_rate_ppm: None,
                remaps: recent.clone().filter(|m| m.remapped).count() as u64,
                pending_marked: recent.filter(|m| !m.remapped).count() as u64,
            }
        })
        .collect();
    let rates = Rates {
        basis: "offline: lifetime counters; per window, remapped and pending blocks by the \
                time of their last change (per-window I/O and error rates: ask a running \
                server with --control)"
            .to_string(),
        windows,
        lifetime: lifetime(i.stats),
    };
    assemble(i, rates)
}

/// Fold SMART readings (oldest first; the last is the drive now) into the report.
pub fn fold_smart(view: &mut HealthView, readings: &[SmartReading]) {
    let Some(newest) = readings.last() else {
        return;
    };
    let earliest = (readings.len() > 1).then(|| &readings[0]);
    let verdict = newest.verdict(earliest, view.thresholds.pending_critical);
    let mut driving: Vec<u32> = verdict
        .reasons
        .iter()
        .filter(|r| r.state == verdict.state)
        .filter_map(|r| r.attribute)
        .collect();
    driving.sort_unstable();
    driving.dedup();
    for r in &verdict.reasons {
        view.reasons.push(Reason {
            source: Source::Smart,
            state: r.state,
            attribute: r.attribute,
            message: r.message.clone(),
        });
    }
    view.state = view.state.max(verdict.state);
    view.smart = Some(SmartSection {
        state: verdict.state,
        readings: readings.len(),
        model: newest.model.clone(),
        serial: newest.serial.clone(),
        driving_attributes: driving,
        reasons: verdict.reasons,
    });
}

/// The counters as a live device would report them: the lifetime counts from the spare
/// plus the gauges that describe the table and pool. Health is judged from this, so a pair
/// at rest shows the same verdict it had while running.
pub fn snapshot(rec: &Recovered) -> StatsSnapshot {
    let mut s = counters::to_snapshot(&rec.counters);
    s.pending_blocks = rec.table.pending_count() as u64;
    s.remapped_blocks = rec.table.remapped_count() as u64;
    s.spares_total = rec.spares.pool_blocks();
    s.spares_used = rec.spares.used_count();
    s.spares_retired = rec.spares.retired_count();
    s
}

/// The report of a pair at rest, from what recovery read off its spare, at `now_s`.
pub fn at_rest(rec: &Recovered, now_s: u64) -> HealthView {
    let stats = snapshot(rec);
    let thresholds = rec.superblock.thresholds;
    let report = remap_core::health::evaluate(
        &remap_core::health::HealthInputs::from_snapshot(&stats),
        &thresholds,
    );
    let entries: Vec<Entry> = rec.table.iter().map(|(_, e)| e).collect();
    let marks: Vec<Mark> = entries.iter().map(Mark::from).collect();
    let times = failure_remap_times(&entries);
    offline(
        Inputs {
            stats: &stats,
            report: &report,
            thresholds: &thresholds,
            projection: projection(&times, &stats, now_s),
        },
        &marks,
        now_s,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use remap_core::health::{HealthInputs, evaluate};

    fn view(stats: &StatsSnapshot) -> HealthView {
        let t = HealthThresholds::default();
        let report = evaluate(&HealthInputs::from_snapshot(stats), &t);
        offline(
            Inputs {
                stats,
                report: &report,
                thresholds: &t,
                projection: Err(NoProjection::TooFewRemaps),
            },
            &[],
            1_000_000,
        )
    }

    #[test]
    fn reasons_name_the_figures_and_the_thresholds() {
        let stats = StatsSnapshot {
            pending_blocks: 3,
            spares_total: 100,
            spares_used: 95,
            ..Default::default()
        };
        let v = view(&stats);
        assert_eq!(v.state, HealthState::Critical);
        assert!(v.reasons.iter().any(|r| {
            r.state == HealthState::Degraded
                && r.message
                    .starts_with("3 unreadable blocks pending (degraded at 1")
        }));
        assert!(
            v.reasons.iter().any(|r| r.state == HealthState::Critical
                && r.message.starts_with("95 % of the spare pool"))
        );
        assert_eq!(
            v.no_projection.as_deref(),
            Some(&*NoProjection::TooFewRemaps.to_string())
        );
        let json = serde_json::to_string(&v).unwrap();
        let back: HealthView = serde_json::from_str(&json).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn smart_raises_the_state_and_names_its_attributes() {
        let mut v = view(&StatsSnapshot {
            spares_total: 100,
            ..Default::default()
        });
        assert_eq!(v.state, HealthState::Healthy);
        let json = r#"{"smart_status":{"passed":true},"ata_smart_attributes":{"table":[
            {"id":197,"name":"Current_Pending_Sector","value":100,"thresh":0,"raw":{"value":5,"string":"5"}}]}}"#;
        let reading = SmartReading::parse(json, "test").unwrap();
        fold_smart(&mut v, &[reading]);
        assert_eq!(v.state, HealthState::Degraded);
        let s = v.smart.as_ref().unwrap();
        assert_eq!(s.driving_attributes, vec![197]);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.source == Source::Smart && r.attribute == Some(197))
        );
    }
}
