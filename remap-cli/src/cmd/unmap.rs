//! `remap unmap MAIN SPARE BLOCK...`: move blocks back from the spare pool to main.

use std::io::Write;

use remap_service::blocks::{BlockList, BlockRange};
use remap_service::devices::{Access, Pair};
use remap_service::transfer::{self, Outcome, Paths};

use crate::cmd::PairArgs;
use crate::cmd::map::totals;
use crate::error::CliError;

const AFTER_HELP: &str = "\
BLOCK is a block number (in the block size chosen at `remap create`) or an inclusive range
N-M; give several, or separate them with commas. A block that is not remapped is left where
it is. A pending block (unreadable, no copy anywhere) cannot be moved back: a write covering
the whole block restores it.

Examples:
  remap unmap /dev/sdb /dev/sdc1 1234
  remap unmap main.img spare.img 2000-2015";

/// Move remapped blocks back to MAIN, verified.
///
/// Copies each block's data from its spare block to MAIN, flushes, reads it back and
/// compares, then frees the spare block and drops the table entry.
///
/// Use it after replacing or repairing the medium under MAIN. A block whose MAIN location
/// still fails (the write or the read-back fails, or the data differs) stays on its spare
/// block, unchanged. The other blocks are still moved; the command exits 1 if any block
/// failed. Ends with a flush of both devices and a checkpoint; if nothing moved, nothing is
/// written.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    /// Blocks to move back: N or N-M (inclusive), several or comma-separated.
    #[arg(value_name = "BLOCK[-BLOCK]", required = true, num_args = 1.., value_delimiter = ',')]
    pub blocks: Vec<BlockRange>,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let blocks = BlockList::new(&args.blocks);
    let pair = Pair::open(
        &args.pair.main,
        &args.pair.spare,
        Access::ReadWrite,
        Access::ReadWrite,
    )?;
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    let opened = pair.into_device()?;
    let device = &opened.device;
    blocks.check_within(&main_path, device.blocks(), device.block_size().bytes())?;
    let paths = Paths {
        main: &main_path,
        spare: &spare_path,
    };
    let summary = transfer::unmap_blocks(device, &blocks, paths, &mut |o| report(o, out))?;
    writeln!(out, "unmap: {}", totals(&summary))?;
    Ok(transfer::finish(device, summary, paths)?)
}

fn report(outcome: &Outcome, out: &mut dyn Write) -> Result<(), CliError> {
    match outcome {
        Outcome::Unmapped { lba, spare } => writeln!(
            out,
            "block {lba} <- spare block {spare}: copied back to main, verified, spare block freed"
        )?,
        Outcome::AlreadyOnMain { lba } => {
            writeln!(out, "block {lba} is not remapped: unchanged")?;
        }
        Outcome::Mapped { lba, spare, .. } | Outcome::AlreadyMapped { lba, spare } => {
            writeln!(out, "block {lba} is on spare block {spare}")?;
        }
        Outcome::Failed(e) => eprintln!("remap: {}", crate::error::block_line(e)),
    }
    Ok(())
}
