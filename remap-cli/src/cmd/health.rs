//! `remap health MAIN SPARE` / `remap health --control PATH`: the health verdict and its
//! reasons, rates, and the spare exhaustion projection, optionally with SMART data folded
//! in. The report itself is `remap_service::health`; this module asks for it and prints it.

use std::io::Write;
use std::path::PathBuf;

use remap_core::HealthState;
use remap_core::clock::{Clock, SystemClock};
use remap_service::control::{self, Request};
use remap_service::devices::{Access, Pair};
use remap_service::health::{self, HealthView, Source};
use remap_service::smart::SmartReading;

use crate::cmd::{Target, TargetArgs};
use crate::error::CliError;

const AFTER_HELP: &str = "\
The state is healthy, degraded or critical: remap's own verdict from the error rate, the
spare pool use and the pending blocks against the thresholds (`remap set` changes them),
raised by the drive's SMART verdict when SMART data is given. Every reason is listed, with
its figures; SMART reasons name their attribute (5 reallocated, 187 reported
uncorrectable, 188 command timeout, 197 pending, 198 offline uncorrectable, 199 CRC errors).

Rates: with --control, over the last minute, hour and day, as the server measured them;
offline, the lifetime counters, and per window the remapped and pending blocks whose last
change falls in it. The projection fits a line through the remap times and says when the
spare pool runs out at that rate, with a ±2σ interval, or why it cannot tell yet.

SMART: --smart DEV runs `smartctl --json -a DEV` (package smartmontools); --smart-json FILE
reads its saved output. Give --smart-json several times, oldest first, to have growth
between readings judged; with --smart too, the files are the earlier readings.

Exit status, as monitoring plugins (Nagios, Icinga) expect: 0 healthy, 1 degraded,
2 critical, 3 unknown (no verdict: a device could not be opened or read). A usage error
is 2, as for every remap command.

Examples:
  remap health /dev/sdb /dev/sdc1 --smart /dev/sdb
  remap health main.img spare.img --json | jq .projection
  remap health --control /run/remap.ctl --smart-json monday.json --smart-json today.json";

/// Show the health verdict, its reasons, rates, and when the spare pool runs out.
///
/// Opens both devices read-only under a shared lock and writes nothing; with --control,
/// asks the running server (live rates over the last minute, hour and day).
#[derive(Debug, clap::Args)]
#[command(
    after_help = AFTER_HELP,
    override_usage = "remap health [OPTIONS] <MAIN> <SPARE>\n       remap health [OPTIONS] --control <PATH>"
)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Fold in the SMART counters of this drive (runs `smartctl --json -a DEV`).
    #[arg(long, value_name = "DEV")]
    pub smart: Option<PathBuf>,

    /// Fold in saved `smartctl --json -a` output; repeat, oldest first, for growth.
    #[arg(long, value_name = "FILE")]
    pub smart_json: Vec<PathBuf>,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The most SMART readings one report takes.
pub const MAX_SMART_READINGS: usize = 64;

/// Exit status: 0 healthy, 1 degraded, 2 critical, 3 unknown (no verdict); see
/// [`crate::error::EXIT_HEALTH_DEGRADED`].
pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let state = match report(args, out) {
        Ok(state) => state,
        Err(e) if e.exit_code() == crate::error::EXIT_USAGE => return Err(e),
        Err(e) => return Err(CliError::NoVerdict(Box::new(e))),
    };
    match state {
        HealthState::Healthy => Ok(()),
        state => Err(CliError::Unhealthy { state }),
    }
}

/// Print the report; return the verdict.
fn report(args: &Args, out: &mut dyn Write) -> Result<HealthState, CliError> {
    if args.smart_json.len() > MAX_SMART_READINGS {
        return Err(CliError::Usage {
            message: format!("at most {MAX_SMART_READINGS} --smart-json readings"),
        });
    }
    // SMART first: a bad file is reported before any device is opened.
    let mut readings = args
        .smart_json
        .iter()
        .map(|p| SmartReading::from_file(p))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(dev) = &args.smart {
        readings.push(SmartReading::from_device(dev)?);
    }
    let mut view = match args.target.target() {
        Target::Control(path) => control::call_as::<HealthView>(&path, &Request::Health {})?,
        Target::Pair(p) => {
            let pair = Pair::open(&p.main, &p.spare, Access::ReadOnly, Access::ReadOnly)?;
            let rec = pair.inspect()?;
            health::at_rest(&rec, SystemClock.now_s())
        }
    };
    health::fold_smart(&mut view, &readings);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &view).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(view.state);
    }
    print_human(&view, out)?;
    Ok(view.state)
}

/// A duration in the largest unit that keeps it readable.
fn duration(seconds: f64) -> String {
    if seconds >= 2.0 * 86_400.0 {
        format!("{:.1} days", seconds / 86_400.0)
    } else if seconds >= 2.0 * 3_600.0 {
        format!("{:.1} hours", seconds / 3_600.0)
    } else if seconds >= 120.0 {
        format!("{:.1} minutes", seconds / 60.0)
    } else {
        format!("{seconds:.0} seconds")
    }
}

/// Words of `text` in lines of at most `width` characters (longer words alone).
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        match lines.last_mut() {
            Some(l) if l.len() + 1 + word.len() <= width => {
                l.push(' ');
                l.push_str(word);
            }
            _ => lines.push(word.to_string()),
        }
    }
    lines
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The human form.
pub fn print_human(v: &HealthView, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "health      {}", v.state)?;
    if v.reasons.is_empty() {
        writeln!(out, "  no reason for concern")?;
    }
    for r in &v.reasons {
        let source = match (r.source, r.attribute) {
            (Source::Remap, _) => "remap".to_string(),
            (Source::Smart, Some(id)) => format!("smart {id}"),
            (Source::Smart, None) => "smart".to_string(),
        };
        writeln!(out, "  {:<9} {:<8}  {}", source, r.state, r.message)?;
    }
    if let Some(s) = &v.smart {
        let drive = match (&s.model, &s.serial) {
            (Some(m), Some(n)) => format!("{m}, serial {n}"),
            (Some(m), None) => m.clone(),
            (None, Some(n)) => format!("serial {n}"),
            (None, None) => "the drive".to_string(),
        };
        let driven = if s.driving_attributes.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = s.driving_attributes.iter().map(u32::to_string).collect();
            format!(", driven by attribute(s) {}", ids.join(", "))
        };
        writeln!(
            out,
            "smart       {}: {}{} ({} reading(s))",
            drive, s.state, driven, s.readings
        )?;
    }
    writeln!(
        out,
        "spares      {} total, {} used, {} retired, {} free ({} % consumed)",
        v.spares.total, v.spares.used, v.spares.retired, v.spares.free, v.spares.used_pct
    )?;
    match (&v.projection, &v.no_projection) {
        (Some(p), _) => {
            let high = p
                .seconds_left_high
                .map_or_else(|| "no upper bound".to_string(), duration);
            writeln!(
                out,
                "projection  spare pool exhausted in about {} (between {} and {}, ±2σ){}",
                duration(p.seconds_left),
                duration(p.seconds_left_low),
                high,
                p.exhausted_at
                    .as_ref()
                    .map_or_else(String::new, |at| format!(", around {at}"))
            )?;
            writeln!(
                out,
                "            at {:.2} spare blocks a day, fitted over {} remaps forced by failures",
                p.blocks_per_day, p.samples
            )?;
            writeln!(
                out,
                "            (blocks moved by hand use spares but do not set the rate)"
            )?;
        }
        (None, Some(why)) => writeln!(out, "projection  none: {why}")?,
        (None, None) => writeln!(out, "projection  none")?,
    }
    for (i, line) in wrap(&v.rates.basis, 76).iter().enumerate() {
        writeln!(
            out,
            "{}{line}",
            if i == 0 {
                "rates       "
            } else {
                "            "
            }
        )?;
    }
    writeln!(
        out,
        "            {:<12} {:>12} {:>8} {:>10} {:>8} {:>8}",
        "", "I/Os", "errors", "ppm", "remaps", "pending"
    )?;
    for w in &v.rates.windows {
        writeln!(
            out,
            "            {:<12} {:>12} {:>8} {:>10} {:>8} {:>8}",
            format!("last {}", w.name),
            opt(w.ios),
            opt(w.errors),
            opt(w.error_rate_ppm),
            w.remaps,
            w.pending_marked
        )?;
    }
    let l = &v.rates.lifetime;
    writeln!(
        out,
        "            {:<12} {:>12} {:>8} {:>10} {:>8} {:>8}",
        "lifetime", l.ios, l.errors, l.error_rate_ppm, l.remaps, l.pending_marked
    )?;
    let t = &v.thresholds;
    writeln!(
        out,
        "thresholds  error rate {}/{} ppm (after {} I/Os), spare use {}/{} %, pending {}/{} (degraded/critical)",
        t.error_rate_degraded_ppm,
        t.error_rate_critical_ppm,
        t.min_ios_for_rate,
        t.spare_used_degraded_pct,
        t.spare_used_critical_pct,
        t.pending_degraded,
        t.pending_critical
    )?;
    Ok(())
}
