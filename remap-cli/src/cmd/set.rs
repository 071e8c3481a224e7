//! `remap set MAIN SPARE [--pending-critical N ...]`: change the persisted settings (health
//! thresholds, read retries) of a pair, or of a running server with `--control PATH`.
//! The same options set the first values at `remap create`.

use std::io::Write;

use remap_core::store::Settings;
use remap_service::control::{self, Request};
use remap_service::devices::{Access, Pair};
use remap_service::settings::{self, SavedSettings, SettingChanges};
use remap_service::status::LiveStatus;

use crate::cmd::{SettingArgs, Target, TargetArgs};
use crate::error::CliError;

const AFTER_HELP: &str = "\
The health verdict (see `remap health`) is degraded or critical when a figure reaches the
threshold:
  error rate     device errors per million data I/Os, judged after --min-ios-for-rate I/Os
  spare use      percent of the spare pool used or retired
  pending        blocks that could not be read and wait for a whole-block write
Each degraded threshold must not be above its critical one. Settings live in both
superblocks of SPARE; the change is durable when the command returns, and a running
server applies it at once (--control). Without options, prints the current settings.

Examples:
  remap set /dev/sdb /dev/sdc1 --pending-degraded 4 --pending-critical 100
  remap set main.img spare.img --spare-used-critical 80 --read-retries 5
  remap set --control /run/remap.ctl --error-rate-degraded 50
  remap set main.img spare.img            show the current settings";

/// Change health thresholds and read retries, persisted on the spare.
///
/// Changes the thresholds at which the health verdict turns degraded or critical, and how
/// often a failing read is retried. Writes only the two superblocks of SPARE (one after the
/// other, each flushed). With --control, a running `remap serve` saves and applies them.
#[derive(Debug, clap::Args)]
#[command(
    after_help = AFTER_HELP,
    override_usage = "remap set [OPTIONS] <MAIN> <SPARE>\n       remap set [OPTIONS] --control <PATH>"
)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,

    #[command(flatten)]
    pub changes: SettingArgs,

    /// Print the resulting settings as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let changes: SettingChanges = args.changes.changes();
    let (before, after) = match args.target.target() {
        Target::Control(path) => {
            let status: LiveStatus = control::call_as(&path, &Request::Status {})?;
            let before = Settings {
                thresholds: status.thresholds,
                read_retries: status.read_retries,
                scrub_cursor: status.scrub_cursor,
                scrub_passes: status.scrub_passes,
            };
            if changes.is_empty() {
                (None, before)
            } else {
                let after: SavedSettings = control::call_as(
                    &path,
                    &Request::Set {
                        changes: changes.clone(),
                    },
                )?;
                (Some(before), after.into())
            }
        }
        Target::Pair(p) => {
            let access = if changes.is_empty() {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            let pair = Pair::open(&p.main, &p.spare, access, access)?;
            let spare_path = pair.spare_path.clone();
            if changes.is_empty() {
                let sb = pair.inspect()?.superblock;
                (None, Settings::from(SavedSettings::from(&sb)))
            } else {
                let opened = pair.into_device()?;
                let before = opened.device.settings();
                let after = settings::update(&opened.device, &changes, &spare_path)?;
                (Some(before), after)
            }
        }
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &after).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    print_settings(before.as_ref(), &after, out)
}

fn print_settings(
    before: Option<&Settings>,
    after: &Settings,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (a, b) = (&after.thresholds, before.map(|s| s.thresholds));
    let show = |now: u64, was: Option<u64>| match was {
        Some(w) if w != now => format!("{w} -> {now}"),
        _ => now.to_string(),
    };
    let rows = [
        (
            "error rate (ppm)",
            u64::from(a.error_rate_degraded_ppm),
            b.map(|t| u64::from(t.error_rate_degraded_ppm)),
            u64::from(a.error_rate_critical_ppm),
            b.map(|t| u64::from(t.error_rate_critical_ppm)),
        ),
        (
            "spare use (%)",
            u64::from(a.spare_used_degraded_pct),
            b.map(|t| u64::from(t.spare_used_degraded_pct)),
            u64::from(a.spare_used_critical_pct),
            b.map(|t| u64::from(t.spare_used_critical_pct)),
        ),
        (
            "pending blocks",
            a.pending_degraded,
            b.map(|t| t.pending_degraded),
            a.pending_critical,
            b.map(|t| t.pending_critical),
        ),
    ];
    writeln!(
        out,
        "{:<18} {:>16} {:>16}",
        "threshold", "degraded at", "critical at"
    )?;
    for (name, d, dw, c, cw) in rows {
        writeln!(out, "{name:<18} {:>16} {:>16}", show(d, dw), show(c, cw))?;
    }
    writeln!(
        out,
        "error rate judged after {} data I/Os",
        show(a.min_ios_for_rate, b.map(|t| t.min_ios_for_rate))
    )?;
    writeln!(
        out,
        "read retries {}",
        show(
            u64::from(after.read_retries),
            before.map(|s| u64::from(s.read_retries))
        )
    )?;
    if before.is_some() {
        writeln!(out, "saved")?;
    }
    Ok(())
}
