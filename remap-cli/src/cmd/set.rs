//! `remap set MAIN SPARE [--pending-critical N ...]`: change the persisted settings (health
//! thresholds, read retries) of a pair, or of a running server with `--control PATH`.
//! The same options set the first values at `remap create`.

use std::io::Write;

use remap_core::HealthThresholds;
use remap_core::store::Settings;
use serde::{Deserialize, Serialize};

use crate::cmd::{Target, TargetArgs};
use crate::control::{self, Request};
use crate::devices::{Access, Pair};
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

/// Changes to the persisted settings; each is optional. The same options serve
/// `remap create` (first values), `remap set`, and the control socket's `set` request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SettingChanges {
    /// Error rate (device errors per million data I/Os) at which health is degraded.
    #[arg(long, value_name = "PPM", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    #[serde(default)]
    pub error_rate_degraded: Option<u32>,
    /// Error rate at which health is critical.
    #[arg(long, value_name = "PPM", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    #[serde(default)]
    pub error_rate_critical: Option<u32>,
    /// Data I/Os before the error rate is judged (one early error is not a 100 % rate).
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub min_ios_for_rate: Option<u64>,
    /// Percent of the spare pool used or retired at which health is degraded.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
    #[serde(default)]
    pub spare_used_degraded: Option<u8>,
    /// Percent of the spare pool used or retired at which health is critical.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(0..=100))]
    #[serde(default)]
    pub spare_used_critical: Option<u8>,
    /// Pending (unreadable) blocks at which health is degraded.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub pending_degraded: Option<u64>,
    /// Pending blocks at which health is critical.
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub pending_critical: Option<u64>,
    /// Extra attempts for a failing read before its block is declared pending (0 to 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=16))]
    #[serde(default)]
    pub read_retries: Option<u32>,
}

impl SettingChanges {
    pub fn is_empty(&self) -> bool {
        *self == SettingChanges::default()
    }

    /// Apply the threshold changes.
    pub fn apply_thresholds(&self, t: &mut HealthThresholds) {
        fn put<T: Copy>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        put(&mut t.error_rate_degraded_ppm, self.error_rate_degraded);
        put(&mut t.error_rate_critical_ppm, self.error_rate_critical);
        put(&mut t.min_ios_for_rate, self.min_ios_for_rate);
        put(&mut t.spare_used_degraded_pct, self.spare_used_degraded);
        put(&mut t.spare_used_critical_pct, self.spare_used_critical);
        put(&mut t.pending_degraded, self.pending_degraded);
        put(&mut t.pending_critical, self.pending_critical);
    }

    /// Apply every change (the engine validates the result before saving it).
    pub fn apply(&self, s: &mut Settings) {
        self.apply_thresholds(&mut s.thresholds);
        if let Some(r) = self.read_retries {
            s.read_retries = r;
        }
    }
}

/// The settings as the control socket returns them (remap-core's `Settings` only
/// serializes).
#[derive(Debug, Clone, Deserialize)]
struct SavedSettings {
    thresholds: HealthThresholds,
    read_retries: u32,
    scrub_cursor: u64,
    scrub_passes: u64,
}

impl From<SavedSettings> for Settings {
    fn from(s: SavedSettings) -> Self {
        Settings {
            thresholds: s.thresholds,
            read_retries: s.read_retries,
            scrub_cursor: s.scrub_cursor,
            scrub_passes: s.scrub_passes,
        }
    }
}

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
    pub changes: SettingChanges,

    /// Print the resulting settings as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let (before, after) = match args.target.target() {
        Target::Control(path) => {
            let status: crate::cmd::status::LiveStatus =
                control::call_as(&path, &Request::Status {})?;
            let before = Settings {
                thresholds: status.thresholds,
                read_retries: status.read_retries,
                scrub_cursor: status.scrub_cursor,
                scrub_passes: status.scrub_passes,
            };
            if args.changes.is_empty() {
                (None, before)
            } else {
                let after: SavedSettings = control::call_as(
                    &path,
                    &Request::Set {
                        changes: args.changes.clone(),
                    },
                )?;
                (Some(before), after.into())
            }
        }
        Target::Pair(p) => {
            let access = if args.changes.is_empty() {
                Access::ReadOnly
            } else {
                Access::ReadWrite
            };
            let pair = Pair::open(&p.main, &p.spare, access, access)?;
            let spare_path = pair.spare_path.clone();
            if args.changes.is_empty() {
                let sb = pair.inspect()?.superblock;
                let now = Settings {
                    thresholds: sb.thresholds,
                    read_retries: sb.read_retries,
                    scrub_cursor: sb.scrub_cursor,
                    scrub_passes: sb.scrub_passes,
                };
                (None, now)
            } else {
                let opened = pair.into_device()?;
                let before = opened.device.settings();
                let after = opened
                    .device
                    .update_settings(|s| args.changes.apply(s))
                    .map_err(|source| match source {
                        remap_core::DeviceError::Config(message) => CliError::Usage {
                            message: format!("{}: {message}", spare_path.display()),
                        },
                        source => CliError::Settings {
                            path: spare_path.clone(),
                            source,
                        },
                    })?;
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
