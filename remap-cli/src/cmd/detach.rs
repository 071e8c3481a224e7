//! `remap detach /dev/ublkbN`: stop the `remap attach` daemon serving the device (drain,
//! remove, flush, checkpoint; waits until it has exited), or remove a device whose daemon
//! was killed and that is not to be recovered.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use remap_ublk::Detached;

use crate::error::CliError;

/// Detach a device made by `remap attach`.
///
/// Asks the daemon serving DEVICE to stop (as SIGTERM does): it finishes the requests in
/// flight, removes the device, flushes and checkpoints the pair; returns when it has
/// exited. A device whose daemon died (`kill -9`) is removed instead; its pair is
/// recovered from the journal at the next open.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The block device, /dev/ublkbN.
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,

    /// Seconds to wait for the daemon to finish.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    match remap_ublk::detach(&args.device, Duration::from_secs(args.timeout))? {
        Detached::Stopped { device, pid } => {
            writeln!(
                out,
                "detached {} (daemon pid {pid} finished)",
                device.display()
            )?;
        }
        Detached::Removed { device } => {
            writeln!(out, "removed {} (its daemon had died)", device.display())?;
        }
    }
    Ok(())
}
