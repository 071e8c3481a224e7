//! `remap probe DEVICE`: whether DEVICE holds a remap spare, printed as udev properties
//! (`KEY=value` lines, the format of udev's `IMPORT{program}`) or as JSON. The udev rule
//! `dist/udev/60-remap.rules` runs it; the logic is `remap_service::probe`.

use std::io::Write;
use std::path::PathBuf;

use remap_service::probe::{Probe, probe};

use crate::error::CliError;

const AFTER_HELP: &str = "\
Properties printed for a formatted spare:
  ID_FS_TYPE=remap_spare   ID_FS_USAGE=other   ID_FS_VERSION (format version)
  ID_FS_UUID, ID_FS_UUID_ENC (the uuid given at `remap create`)
  REMAP_STATE=valid        REMAP_VALID_COPIES (of the superblock: A, B, tail)
  REMAP_BLOCK_SIZE (bytes)
  REMAP_MAIN_SIZE (bytes)  REMAP_MAIN_ID_KIND (none, wwid, serial, dm-uuid)
  REMAP_MAIN_ID_ENC        the main device's identity as recorded, \\xNN-encoded as udev does
A spare is found by the rule `remap` uses to open one: the two head copies of the
superblock and the tail copy in the spare's last 4 KiB, so a spare whose first blocks were
overwritten is still named (REMAP_VALID_COPIES=tail; run `remap check --repair`). A device
whose copies carry the remap magic but none decodes prints ID_FS_TYPE=remap_spare,
ID_FS_USAGE=other and REMAP_STATE=damaged (run `remap check`).

Exit status: 0 a remap spare was found (valid or damaged), 3 no remap metadata on the
device (nothing printed; `--json` prints {\"found\": false}), 1 the device could not be
read, 2 usage error.

Reads the superblock copies only; takes no lock and writes nothing, so it is safe on a
spare that is in use.

Examples:
  remap probe /dev/sdc1
  remap probe spare.img --json";

/// Print udev properties naming a remap spare (for udev's IMPORT{program}).
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The device or file to probe.
    #[arg(value_name = "DEVICE")]
    pub device: PathBuf,

    /// Print what was found as JSON instead of udev properties.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let found = probe(&args.device)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &found.report()).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        for (key, value) in found.udev_properties() {
            writeln!(out, "{key}={value}")?;
        }
    }
    if found == Probe::NotFound {
        return Err(CliError::NothingFound {
            path: args.device.clone(),
        });
    }
    Ok(())
}
