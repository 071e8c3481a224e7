//! `remap table MAIN SPARE`: the `dm-remap-v4` table line for a pair, for `dmsetup create`
//! or a script; read without writing anything.

use std::io::Write;

use crate::cmd::{PairArgs, SettingArgs};
use crate::error::CliError;
use remap_service::activation;

const AFTER_HELP: &str = "\
The line is `0 <sectors> dm-remap-v4 <main> <spare> [<count> <option>...]`, the size read
from MAIN. `main_identity:` is added when the spare records MAIN's serial number or WWN,
which the kernel cannot read; health thresholds and read retries default to what the spare
holds and are added only when given here (they then apply to this table only).

Examples:
  remap table /dev/sdb /dev/sdc1
  dmsetup create salvage --table \"$(remap table /dev/sdb /dev/sdc1)\"
  remap table /dev/sdb /dev/sdc1 --pending-critical 10 --json";

/// Print the dm-remap-v4 table line for MAIN and SPARE.
///
/// Both devices are opened read-only under a shared lock; the spare must hold remap
/// metadata formatted for MAIN.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    #[command(flatten, next_help_heading = "Options for this table only")]
    pub overrides: SettingArgs,

    /// Print the line and its parts as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let line =
        activation::table_line(&args.pair.main, &args.pair.spare, &args.overrides.changes())?;
    if args.json {
        #[derive(serde::Serialize)]
        struct Json<'a> {
            table: String,
            #[serde(flatten)]
            parts: &'a remap_service::table_line::TableLine,
        }
        serde_json::to_writer(
            &mut *out,
            &Json {
                table: line.text(),
                parts: &line,
            },
        )
        .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}", line.text())?;
    }
    Ok(())
}
