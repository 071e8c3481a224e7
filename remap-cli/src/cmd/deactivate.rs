//! `remap deactivate NAME`: flush, checkpoint and remove a `dm-remap-v4` device.

use std::io::Write;

use crate::error::CliError;
use remap_service::activation;
use remap_service::dmsetup::Dmsetup;

const AFTER_HELP: &str = "\
Refused when NAME does not exist, is not a dm-remap-v4 device, or is open (mounted, held
by another device, or opened by a process); the device is then left as it was.

Examples:
  umount /mnt/salvage && remap deactivate salvage";

/// Take down /dev/mapper/NAME: flush it, have the target write a checkpoint, remove it.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The device-mapper name given to `remap activate`.
    #[arg(value_name = "NAME")]
    pub name: String,

    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let done = activation::deactivate(&Dmsetup::system(), &args.name)?;
    if args.json {
        serde_json::to_writer(&mut *out, &done).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}: flushed, {}, removed", done.name, done.checkpoint)?;
    }
    Ok(())
}
