//! `remap attach MAIN SPARE`: the remapped device as a local block device, `/dev/ublkbN`,
//! through Linux's ublk (`remap-ublk`). Prints the device path (or, with `--json`, one JSON
//! object) as soon as it exists, then serves until `remap detach` (a SIGTERM to the daemon)
//! or SIGTERM/SIGINT/SIGHUP, which drain the requests in flight, remove the device, flush,
//! checkpoint and exit 0; a second signal exits at once with 128 + its number. After `kill -9` the device stays, holding its requests, until
//! `remap attach --recover MAIN SPARE` takes it over (or `remap detach` removes it).
//!
//! On exit it prints `detached: /dev/ublkbN` and a `device: ...` line as `remap serve` does.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use remap_service::devices::{Access, Pair};
use remap_ublk::attach::{DEFAULT_DEPTH, MAX_DEPTH, MAX_QUEUES, default_queues};
use remap_ublk::{AttachConfig, AttachSummary, AttachedInfo};

use crate::error::CliError;

const AFTER_HELP: &str = "\
Needs a kernel with ublk (ublk_drv, Linux 6.0 on; a module in Debian 12's 6.12 kernel, loaded
with modprobe if needed) and root. On a kernel without it, use the dm-remap-v4 target
(`remap activate`) or `remap serve` with nbd-client.

The block device's logical block size is the remap block size. FLUSH returns once data and
metadata are durable; FUA writes are durable before they complete; discard and write-zeroes
keep the remap rules; a read of a failing block fails with EIO and never returns data; a
write to a failing block moves it to the spare before it completes.

Examples:
  remap attach /dev/sdb /dev/sdc1                    prints /dev/ublkb0, serves until detached
  remap attach /dev/sdb /dev/sdc1 --control /run/remap-sdb.ctl --metrics 127.0.0.1:9187
  remap detach /dev/ublkb0                           drain, flush, checkpoint, remove
  remap attach --recover /dev/sdb /dev/sdc1          after the daemon was killed: serve again
  systemctl start remap-attach@sdb                   (dist/systemd/remap-attach@.service)";

/// Serve the remapped device as a local block device (/dev/ublkbN) through ublk.
///
/// Opens MAIN and SPARE (locked for the life of the daemon, so other `remap` commands say
/// "in use"; with --control they ask the daemon instead), adds a ublk block device backed by
/// the remapping engine and prints its path. Serves until `remap detach DEVICE` (which sends
/// it SIGTERM), SIGTERM, SIGINT or SIGHUP: then drains the requests in flight, removes the
/// device, flushes, checkpoints and exits 0.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The main device: the failing disk (or a file standing for one).
    #[arg(value_name = "MAIN")]
    pub main: PathBuf,

    /// The spare device, formatted by `remap create`.
    #[arg(value_name = "SPARE")]
    pub spare: PathBuf,

    /// Hardware queues of the block device, each served by one thread (default: one per
    /// CPU, up to 4).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_QUEUES)))]
    pub queues: Option<u16>,

    /// Requests each queue holds at once. Each takes a 256 KiB buffer.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DEPTH,
          value_parser = clap::value_parser!(u16).range(1..=i64::from(MAX_DEPTH)))]
    pub depth: u16,

    /// Control socket for the other `remap` commands (status, health, map, scrub, set
    /// with --control PATH). Created mode 0600, removed on exit.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Only take over the device that a killed `remap attach` of this pair left (the
    /// kernel holds its requests meanwhile and re-issues those in flight); fails if there
    /// is none. Without --recover such a device is taken over as well (so a restart by
    /// systemd resumes it), and a new one is added otherwise. Queues and depth are the
    /// device's.
    #[arg(long, conflicts_with_all = ["queues"])]
    pub recover: bool,

    /// Print what was attached as one JSON object (and the exit summary as another).
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    // A kernel without ublk is refused before either device is opened.
    remap_ublk::check_kernel()?;
    let pair = Pair::open(
        &args.main,
        &args.spare,
        Access::ReadWrite,
        Access::ReadWrite,
    )?;
    let config = AttachConfig {
        queues: args.queues.unwrap_or_else(default_queues),
        depth: args.depth,
        control: args.control.clone(),
        metrics: args.metrics,
        recover: args.recover,
    };
    let attached = remap_ublk::attach(pair, &config)?;

    let stop = attached.stopper();
    // `remap detach` is a SIGTERM to this daemon: a signal is its normal end, so which one
    // came does not matter; the summary goes to stdout and the status is 0 (a second signal
    // still exits at once).
    crate::stop::on_daemon_signals(
        move || stop.stop(),
        "draining requests in flight, then detaching",
    )
    .map_err(|source| CliError::Signals { source })?;

    print_attached(attached.info(), args.json, out)?;
    out.flush()?;
    // Under systemd (remap-attach@.service, Type=notify): ready once the device exists.
    if let Err(e) = remap_service::notify::notify("READY=1") {
        tracing::warn!("{e}");
    }
    let summary = attached.wait()?;
    print_detached(&summary, args.json, out)
}

/// The exit summary: what the session did to the device.
fn print_detached(
    summary: &AttachSummary,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let (before, after) = (&summary.before, &summary.after);
    if json {
        let v = serde_json::json!({
            "detached": summary.info.device,
            "remapped_blocks": after.remapped_blocks,
            "pending_blocks": after.pending_blocks,
            "remaps": after.remaps - before.remaps,
            "main_read_errors": after.main_read_errors - before.main_read_errors,
            "main_write_errors": after.main_write_errors - before.main_write_errors,
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(out, "detached: {}", summary.info.device.display())?;
        writeln!(out, "{}", crate::session::device_line(before, after))?;
    }
    Ok(())
}

fn print_attached(info: &AttachedInfo, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    if json {
        let v = serde_json::to_string(info).map_err(std::io::Error::other)?;
        writeln!(out, "{v}")?;
        return Ok(());
    }
    writeln!(out, "{}", info.device.display())?;
    Ok(())
}
