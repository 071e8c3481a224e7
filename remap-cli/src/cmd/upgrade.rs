//! `remap upgrade MAIN SPARE`: turn a format version 1 spare into this build's version.

use std::io::Write;

use crate::cmd::PairArgs;
use crate::error::CliError;
use remap_service::devices::{Access, Pair};

const AFTER_HELP: &str = "\
Examples:
  remap upgrade /dev/sdb /dev/sdc1
  remap upgrade main.img spare.img --json";

/// Upgrade SPARE's on-disk format to the version this build writes (docs/format.md,
/// \"Versions\").
///
/// Version 2 adds a superblock copy in the last 4 KiB of SPARE (found when the head of SPARE
/// is overwritten) and keeps the lifetime counters in every journal block (so the health
/// verdict survives a power cut). A version 1 spare keeps working without it: nothing but
/// this command changes a spare's version. Recovers SPARE first and refuses, writing
/// nothing, if that fails or MAIN is not the device SPARE was formatted for; gives up the
/// pool blocks in SPARE's last 4 KiB, which must be free. A crash during the upgrade leaves
/// version 1 or version 2, complete. Writes nothing when SPARE already has this version.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let pair = Pair::open(
        &args.pair.main,
        &args.pair.spare,
        Access::ReadOnly,
        Access::ReadWrite,
    )?;
    // Recovers SPARE and checks MAIN against it, writing nothing.
    pair.inspect()?;
    let report = remap_meta::upgrade(&pair.spare).map_err(|source| CliError::Upgrade {
        path: pair.spare_path.clone(),
        source: Box::new(source),
    })?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &report).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else if report.unchanged {
        writeln!(
            out,
            "format version {} already: nothing written",
            report.to_version
        )?;
    } else {
        writeln!(
            out,
            "format version {} -> {}: tail superblock copy at byte {}; spare blocks {} -> {}",
            report.from_version,
            report.to_version,
            report.tail_offset,
            report.pool_blocks_before,
            report.pool_blocks_after
        )?;
    }
    Ok(())
}
