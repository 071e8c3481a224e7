//! `remap map MAIN SPARE BLOCK...`: move blocks to the spare pool now, copying their data.

use std::io::Write;

use crate::blocks::{BlockList, BlockRange};
use crate::cmd::PairArgs;
use crate::cmd::transfer::{self, Outcome, Paths};
use crate::devices::{Access, Pair};
use crate::error::CliError;

const AFTER_HELP: &str = "\
BLOCK is a block number (in the block size chosen at `remap create`) or an inclusive range
N-M; give several, or separate them with commas. A block already on a spare block is left
where it is. Each move is durable (journaled and flushed) before the next one starts.

Examples:
  remap map /dev/sdb /dev/sdc1 1234
  remap map /dev/sdb /dev/sdc1 2000-2015 4096,4100
  remap map main.img spare.img 77 --zero-unreadable";

/// Move blocks to the spare pool now, copying their data.
///
/// Each block's current data is read from MAIN and written to a free spare block; the new
/// mapping is journaled and flushed before the next block starts.
///
/// Use it to move blocks away before they fail for good (after a SMART warning, or blocks
/// that read slowly). A block whose data cannot be read is refused, unless
/// --zero-unreadable says zeroes may take its place. The other blocks are still moved; the
/// command exits 1 if any block failed. Ends with a flush of both devices and a checkpoint;
/// if nothing moved, nothing is written.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    /// Blocks to move: N or N-M (inclusive), several or comma-separated.
    #[arg(value_name = "BLOCK[-BLOCK]", required = true, num_args = 1.., value_delimiter = ',')]
    pub blocks: Vec<BlockRange>,

    /// Move a block whose data cannot be read anyway, with zeroes in its place. Its old
    /// data is lost; without this flag such a block is refused.
    #[arg(long)]
    pub zero_unreadable: bool,
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
    let summary = transfer::map_blocks(device, &blocks, args.zero_unreadable, paths, &mut |o| {
        report(o, out)
    })?;
    writeln!(out, "map: {}", transfer::totals(&summary))?;
    transfer::finish(device, summary, paths)
}

/// One line per block: moves on stdout, refusals on stderr as `remap: ...` lines.
fn report(outcome: &Outcome, out: &mut dyn Write) -> Result<(), CliError> {
    match outcome {
        Outcome::Mapped {
            lba,
            spare,
            zeroed: false,
        } => writeln!(out, "block {lba} -> spare block {spare}: data copied")?,
        Outcome::Mapped {
            lba,
            spare,
            zeroed: true,
        } => writeln!(
            out,
            "block {lba} -> spare block {spare}: data unreadable, zeroes written in its place"
        )?,
        Outcome::AlreadyMapped { lba, spare } => {
            writeln!(
                out,
                "block {lba} is already on spare block {spare}: unchanged"
            )?;
        }
        Outcome::Unmapped { lba, spare } => {
            writeln!(out, "block {lba} <- spare block {spare}")?;
        }
        Outcome::AlreadyOnMain { lba } => writeln!(out, "block {lba} is on main: unchanged")?,
        Outcome::Failed(e) => eprintln!("remap: {e}"),
    }
    Ok(())
}
