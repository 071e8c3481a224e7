//! `remap map MAIN SPARE BLOCK...`: move blocks to the spare pool now, copying their data.
//! `remap map --control PATH BLOCK...`: the same on a running `remap serve`, live.

use std::io::{self, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use remap_core::{BlockBackend, RemapDevice};

use remap_service::blocks::{BlockList, BlockRange};
use remap_service::budget;
use remap_service::control::{self, Request};
use remap_service::devices::{Access, Pair};
use remap_service::live::MapReply;
use remap_service::transfer::{self, Outcome, Paths, Summary, TransferError};

use crate::error::CliError;
use crate::stop::{self, StopSignals};

/// What a stopped `map` or `unmap` kept.
const STOPPED: &str =
    "the blocks moved so far are durable and checkpointed; the rest were not tried";

const AFTER_HELP: &str = "\
BLOCK is a block number (in the block size chosen at `remap create`) or an inclusive range
N-M; give several, or separate them with commas. A block already on a spare block is left
where it is. Each move is durable (journaled and flushed) before the next one starts.

A request that needs more spare blocks than are free is refused before anything moves;
--partial moves as many as fit instead. The summary counts every requested block: moved,
already in place, failed, and not tried (after an error that stopped the run).

With --control, the running `remap serve --control PATH` moves the blocks while it serves
them (at most 65536 blocks per command).

Examples:
  remap map /dev/sdb /dev/sdc1 1234
  remap map /dev/sdb /dev/sdc1 2000-2015 4096,4100
  remap map main.img spare.img 77 --zero-unreadable
  remap map --control /run/remap.ctl 1234 2000-2015";

/// Move blocks to the spare pool now, copying their data.
///
/// Each block's current data is read from MAIN and written to a free spare block; the new
/// mapping is journaled and flushed before the next block starts.
///
/// Use it to move blocks away before they fail for good (after a SMART warning, or blocks
/// that read slowly). Opens MAIN read-only: it is read, never written. A block whose data
/// cannot be read is refused, unless
/// --zero-unreadable says zeroes may take its place. The other blocks are still moved; the
/// command exits 1 if any block failed. Ends with a flush of both devices and a checkpoint;
/// if nothing moved, nothing is written.
#[derive(Debug, clap::Args)]
#[command(
    after_help = AFTER_HELP,
    override_usage = "remap map [OPTIONS] <MAIN> <SPARE> <BLOCK[-BLOCK]>...\n       remap map [OPTIONS] --control <PATH> <BLOCK[-BLOCK]>..."
)]
pub struct Args {
    /// The main device: the failing disk (or a file standing for one).
    #[arg(value_name = "MAIN", required_unless_present = "control")]
    pub main: Option<PathBuf>,

    /// The spare device: holds the metadata and the pool of spare blocks.
    #[arg(value_name = "SPARE", required_unless_present = "control")]
    pub spare: Option<PathBuf>,

    /// Blocks to move: N or N-M (inclusive), several or comma-separated.
    #[arg(value_name = "BLOCK[-BLOCK]", num_args = 0.., value_delimiter = ',')]
    pub blocks: Vec<BlockRange>,

    /// Ask the `remap serve --control PATH` that serves the pair to move the blocks live
    /// (then every positional argument is a block).
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Move a block whose data cannot be read anyway, with zeroes in its place. Its old
    /// data is lost; without this flag such a block is refused.
    #[arg(long)]
    pub zero_unreadable: bool,

    /// When the blocks need more spare blocks than are free, move as many as fit (in
    /// ascending order) instead of refusing the whole request; the rest are counted as not
    /// tried, and the command exits 1.
    #[arg(long)]
    pub partial: bool,
}

/// With --control, MAIN and SPARE took the first blocks: give them back.
pub(crate) fn control_blocks(
    main: &Option<PathBuf>,
    spare: &Option<PathBuf>,
    rest: &[BlockRange],
) -> Result<Vec<BlockRange>, CliError> {
    let mut blocks = Vec::new();
    for p in [main, spare].into_iter().flatten() {
        let text = p.to_string_lossy();
        for part in text.split(',') {
            blocks.push(part.parse().map_err(|e| CliError::Usage {
                message: format!("invalid block {part:?}: {e}"),
            })?);
        }
    }
    blocks.extend_from_slice(rest);
    Ok(blocks)
}

fn no_blocks() -> CliError {
    CliError::Usage {
        message: "no blocks given: name at least one BLOCK or BLOCK-BLOCK to move".to_string(),
    }
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    if let Some(path) = &args.control {
        let blocks = control_blocks(&args.main, &args.spare, &args.blocks)?;
        if blocks.is_empty() {
            return Err(no_blocks());
        }
        let reply: MapReply = control::call_as(
            path,
            &Request::Map {
                blocks,
                zero_unreadable: args.zero_unreadable,
                partial: args.partial,
            },
        )?;
        return control_report(path, "map", &reply, out);
    }
    let (Some(main), Some(spare)) = (&args.main, &args.spare) else {
        return Err(no_blocks());
    };
    if args.blocks.is_empty() {
        return Err(no_blocks());
    }
    let blocks = BlockList::new(&args.blocks);
    // MAIN is only read: a read-only MAIN (a write-protected disk) can still be rescued.
    let pair = Pair::open(main, spare, Access::ReadOnly, Access::ReadWrite)?;
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    let opened = pair.into_device()?;
    let device = &opened.device;
    blocks.check_within(&main_path, device.blocks(), device.block_size().bytes())?;
    if !args.partial {
        budget::check_spares(device, &blocks, &spare_path)?;
    }
    let paths = Paths {
        main: &main_path,
        spare: &spare_path,
    };
    moves("map", device, paths, out, report, |each| {
        transfer::map_blocks(device, &blocks, args.zero_unreadable, paths, each)
    })
}

/// Run a `map` or `unmap` loop (`verb`) with the orderly stop: each block's line is printed
/// and flushed; a signal or a failed write stops the loop after the block in hand; the
/// moves so far are committed and checkpointed, and the summary goes to stdout, or to
/// stderr after such a stop.
pub(crate) fn moves<M: BlockBackend, S: BlockBackend>(
    verb: &str,
    device: &RemapDevice<M, S>,
    paths: Paths<'_>,
    out: &mut dyn Write,
    report: fn(&Outcome, &mut dyn Write) -> io::Result<()>,
    run: impl FnOnce(&mut dyn FnMut(&Outcome) -> ControlFlow<()>) -> Summary,
) -> Result<(), CliError> {
    let signals = StopSignals::install().map_err(|source| CliError::Signals { source })?;
    let mut halt = None;
    let summary = run(&mut |o| {
        let reported = report(o, out).and_then(|()| out.flush());
        match signals.after_block(reported, STOPPED) {
            None => ControlFlow::Continue(()),
            Some(stopped) => {
                halt = Some(stopped);
                ControlFlow::Break(())
            }
        }
    });
    let line = format!("{verb}: {}", totals(&summary));
    let printed = stop::summary(out, &line, halt.is_some());
    match (halt, transfer::finish(device, summary, paths)) {
        (Some(stopped), Ok(()) | Err(TransferError::BlocksFailed { .. })) => Err(stopped.into()),
        (_, Err(e)) => Err(e.into()),
        (None, Ok(())) => Ok(printed?),
    }
}

/// One line of totals for the end of a `map` or `unmap` report.
pub fn totals(summary: &Summary) -> String {
    format!(
        "{} moved, {} already in place, {} failed, {} not tried, of {} requested",
        summary.changed, summary.unchanged, summary.failed, summary.not_tried, summary.requested
    )
}

/// The report of a `map` or `unmap` done by a running server (`verb`): one line per block,
/// totals, exit 1 if any block failed or the run stopped early.
pub fn control_report(
    path: &Path,
    verb: &str,
    reply: &MapReply,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    for r in &reply.results {
        match (r.outcome.as_str(), r.spare_block, &r.error) {
            ("mapped", Some(spare), _) => {
                writeln!(out, "block {} -> spare block {spare}: data copied", r.block)?;
            }
            ("zeroed", Some(spare), _) => writeln!(
                out,
                "block {} -> spare block {spare}: data unreadable, zeroes written in its place",
                r.block
            )?,
            ("already", Some(spare), _) => writeln!(
                out,
                "block {} is already on spare block {spare}: unchanged",
                r.block
            )?,
            ("unmapped", Some(spare), _) => writeln!(
                out,
                "block {} <- spare block {spare}: copied back to main, verified, spare block freed",
                r.block
            )?,
            ("unchanged", None, None) => {
                writeln!(out, "block {} is not remapped: unchanged", r.block)?;
            }
            (_, _, Some(e)) => eprintln!("remap: {e}"),
            (other, _, None) => writeln!(out, "block {}: {other}", r.block)?,
        }
    }
    writeln!(
        out,
        "{verb}: {} moved, {} already in place, {} failed, {} not tried, of {} requested",
        reply.moved, reply.unchanged, reply.failed, reply.not_tried, reply.requested
    )?;
    if let Some(e) = &reply.stopped_by {
        return Err(control::ControlError::Refused {
            path: path.to_path_buf(),
            message: e.clone(),
        }
        .into());
    }
    if reply.failed > 0 {
        return Err(CliError::BlocksFailed {
            path: path.to_path_buf(),
            failed: reply.failed,
            requested: reply.requested,
        });
    }
    Ok(())
}

/// One line per block: moves on stdout, refusals on stderr as `remap: ...` lines.
fn report(outcome: &Outcome, out: &mut dyn Write) -> io::Result<()> {
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
        Outcome::Failed(e) => eprintln!("remap: {}", crate::error::block_line(e)),
    }
    Ok(())
}
