//! `remap activate NAME MAIN SPARE`: the pair as the kernel device `/dev/mapper/NAME`
//! (`dm-remap-v4`), through `dmsetup`.

use std::io::Write;

use crate::cmd::{PairArgs, SettingArgs};
use crate::error::CliError;
use remap_service::activation;
use remap_service::dmsetup::Dmsetup;

const AFTER_HELP: &str = "\
Refused, with nothing written to either device, when: NAME is not a valid device name
(letters, digits and . _ + - only, at most 127 bytes) or is taken; the dm_remap module is
not loaded (`modprobe dm_remap`); MAIN or SPARE is in use (mounted, held by another
device-mapper device, or opened by `remap serve`); SPARE holds no remap metadata (`remap
create` formats it) or was formatted for another main device.

Examples:
  remap activate salvage /dev/sdb /dev/sdc1      then mount /dev/mapper/salvage
  remap activate salvage /dev/sdb /dev/sdc1 --json";

/// Bring the pair up as /dev/mapper/NAME with the dm-remap-v4 kernel target.
///
/// Needs the dm_remap module and the dmsetup program. The device gets the device-mapper
/// UUID REMAP-<spare metadata UUID>. `remap deactivate NAME` takes it down.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The device-mapper name: the device appears as /dev/mapper/NAME.
    #[arg(value_name = "NAME")]
    pub name: String,

    #[command(flatten)]
    pub pair: PairArgs,

    #[command(flatten, next_help_heading = "Options for this activation only")]
    pub overrides: SettingArgs,

    /// Print what was created as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let done = activation::activate(
        &Dmsetup::system(),
        &args.name,
        &args.pair.main,
        &args.pair.spare,
        &args.overrides.changes(),
    )?;
    if args.json {
        serde_json::to_writer(&mut *out, &done).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "{}: active, {} sectors, table: {}",
            done.device.display(),
            done.table.sectors,
            done.table.text()
        )?;
    }
    Ok(())
}
