//! `remap unmap MAIN SPARE BLOCK...`: move blocks back from the spare pool to main.

use std::io::Write;
use std::path::PathBuf;

use remap_service::blocks::{BlockList, BlockRange};
use remap_service::devices::{Access, Pair};
use remap_service::transfer::{self, Outcome, Paths};

use remap_service::control::{self, Request};
use remap_service::live::MapReply;

use crate::cmd::map::{control_blocks, control_report, moves};
use crate::error::CliError;

const AFTER_HELP: &str = "\
BLOCK is a block number (in the block size chosen at `remap create`) or an inclusive range
N-M; give several, or separate them with commas. A block that is not remapped is left where
it is. A pending block (unreadable, no copy anywhere) cannot be moved back: a write covering
the whole block restores it.

With --control, the running `remap serve --control PATH` moves the blocks back while it
serves them (at most 65536 blocks per command).

Examples:
  remap unmap /dev/sdb /dev/sdc1 1234
  remap unmap main.img spare.img 2000-2015
  remap unmap --control /run/remap.ctl 1234";

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
#[command(
    after_help = AFTER_HELP,
    override_usage = "remap unmap [OPTIONS] <MAIN> <SPARE> <BLOCK[-BLOCK]>...\n       remap unmap [OPTIONS] --control <PATH> <BLOCK[-BLOCK]>..."
)]
pub struct Args {
    /// The main device: the failing disk (or a file standing for one).
    #[arg(value_name = "MAIN", required_unless_present = "control")]
    pub main: Option<PathBuf>,

    /// The spare device: holds the metadata and the pool of spare blocks.
    #[arg(value_name = "SPARE", required_unless_present = "control")]
    pub spare: Option<PathBuf>,

    /// Blocks to move back: N or N-M (inclusive), several or comma-separated.
    #[arg(value_name = "BLOCK[-BLOCK]", num_args = 0.., value_delimiter = ',')]
    pub blocks: Vec<BlockRange>,

    /// Ask the `remap serve --control PATH` that serves the pair to move the blocks back
    /// live (then every positional argument is a block).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
}

fn no_blocks() -> CliError {
    CliError::Usage {
        message: "no blocks given: name at least one BLOCK or BLOCK-BLOCK to move back".to_string(),
    }
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(path) = &args.control {
        let blocks = control_blocks(&args.main, &args.spare, &args.blocks)?;
        if blocks.is_empty() {
            return Err(no_blocks());
        }
        let reply: MapReply = control::call_as(path, &Request::Unmap { blocks })?;
        return control_report(path, "unmap", &reply, out);
    }
    let (Some(main), Some(spare)) = (&args.main, &args.spare) else {
        return Err(no_blocks());
    };
    if args.blocks.is_empty() {
        return Err(no_blocks());
    }
    let blocks = BlockList::new(&args.blocks);
    let pair = Pair::open(main, spare, Access::ReadWrite, Access::ReadWrite)?;
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    let opened = pair.into_device()?;
    let device = &opened.device;
    blocks.check_within(&main_path, device.blocks(), device.block_size().bytes())?;
    let paths = Paths {
        main: &main_path,
        spare: &spare_path,
    };
    moves("unmap", device, paths, out, report, |each| {
        transfer::unmap_blocks(device, &blocks, paths, each)
    })
}

fn report(outcome: &Outcome, out: &mut dyn Write) -> std::io::Result<()> {
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
