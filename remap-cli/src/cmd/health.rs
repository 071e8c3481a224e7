//! `remap health MAIN SPARE` / `remap health --control PATH`: the health verdict and its
//! reasons, rates, and the spare exhaustion projection, optionally with SMART data folded
//! in. The report itself is [`crate::health`].

use std::io::Write;
use std::path::PathBuf;

use remap_core::clock::{Clock, SystemClock};
use remap_core::health::{HealthInputs, evaluate};

use crate::cmd::status::snapshot;
use crate::cmd::{Target, TargetArgs};
use crate::control::{self, Request};
use crate::devices::{Access, Pair};
use crate::error::CliError;
use crate::health::{self, HealthView, Inputs, Mark};
use crate::smart::SmartReading;

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

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
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
            let stats = snapshot(&rec);
            let thresholds = rec.superblock.thresholds;
            let report = evaluate(&HealthInputs::from_snapshot(&stats), &thresholds);
            let marks: Vec<Mark> = rec.table.iter().map(|(_, e)| Mark::from(&e)).collect();
            let times: Vec<u64> = marks
                .iter()
                .filter(|m| m.remapped)
                .map(|m| m.time_s)
                .collect();
            let now_s = SystemClock.now_s();
            health::offline(
                Inputs {
                    stats: &stats,
                    report: &report,
                    thresholds: &thresholds,
                    projection: health::projection(&times, &stats, now_s),
                },
                &marks,
                now_s,
            )
        }
    };
    health::fold_smart(&mut view, &readings);
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &view).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    health::print_human(&view, out)
}
