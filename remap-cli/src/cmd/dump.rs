//! `remap dump MAIN SPARE`: every entry of the remap table, read without writing anything.

use std::io::Write;

use remap_core::{Entry, EntryFlags};
use serde::Serialize;

use crate::cmd::PairArgs;
use crate::error::CliError;
use remap_service::devices::{Access, Pair};
use remap_service::time::utc;

const AFTER_HELP: &str = "\
States:
  remapped        the block lives on SPARE-BLOCK of the spare pool
  pending         the block could not be read and has no good copy; reads fail until a
                  write covering the whole block moves it
  retired-spare   the block's spare block failed and was retired; the block waits, as a
                  pending block does, for a whole-block write

Examples:
  remap dump /dev/sdb /dev/sdc1
  remap dump main.img spare.img --json | jq '.entries[] | select(.state == \"pending\")'";

/// List every entry of the remap table.
///
/// For each remapped or pending block: its number, state (remapped, pending,
/// retired-spare), spare block, error count and the time of its last change (UTC).
///
/// Opens both devices read-only under a shared lock and writes nothing.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    /// Print the table as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The state `dump` shows for an entry.
pub fn state_name(e: &Entry) -> &'static str {
    if e.is_remapped() {
        "remapped"
    } else if e.flags.contains(EntryFlags::SPARE_RETIRED) {
        "retired-spare"
    } else if e.is_pending() {
        "pending"
    } else {
        // No entry has none of the flags (the table refuses it); say so if one ever does.
        "unknown"
    }
}

fn flag_names(f: EntryFlags) -> Vec<&'static str> {
    [
        (EntryFlags::REMAPPED, "remapped"),
        (EntryFlags::PENDING, "pending"),
        (EntryFlags::SPARE_RETIRED, "spare-retired"),
    ]
    .into_iter()
    .filter(|(flag, _)| f.contains(*flag))
    .map(|(_, name)| name)
    .collect()
}

/// One line of `dump --json`'s `entries`.
#[derive(Debug, Serialize)]
pub struct EntryRow {
    pub block: u64,
    pub state: &'static str,
    pub spare_block: Option<u64>,
    pub error_count: u16,
    /// Seconds since the Unix epoch of the last change.
    pub time_s: u32,
    pub time: String,
    pub flags: Vec<&'static str>,
}

impl EntryRow {
    pub fn new(block: u64, e: &Entry) -> Self {
        EntryRow {
            block,
            state: state_name(e),
            spare_block: e.spare,
            error_count: e.error_count,
            time_s: e.time_s,
            time: utc(u64::from(e.time_s)),
            flags: flag_names(e.flags),
        }
    }
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let pair = Pair::open(
        &args.pair.main,
        &args.pair.spare,
        Access::ReadOnly,
        Access::ReadOnly,
    )?;
    let rec = pair.inspect()?;
    let g = rec.superblock.geometry;
    if args.json {
        // Streamed entry by entry: a table may hold millions.
        write!(
            out,
            "{{\"block_size\":{},\"main_blocks\":{},\"entries\":[",
            g.block_size,
            g.main_blocks()
        )?;
        for (i, (lba, e)) in rec.table.iter().enumerate() {
            if i > 0 {
                out.write_all(b",")?;
            }
            serde_json::to_writer(&mut *out, &EntryRow::new(lba, &e))
                .map_err(std::io::Error::from)?;
        }
        out.write_all(b"],\"retired_spares\":")?;
        let retired: Vec<u64> = rec.spares.retired().collect();
        serde_json::to_writer(&mut *out, &retired).map_err(std::io::Error::from)?;
        writeln!(out, "}}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>12}  {:<13}  {:>11}  {:>6}  TIME",
        "BLOCK", "STATE", "SPARE-BLOCK", "ERRORS"
    )?;
    for (lba, e) in rec.table.iter() {
        let row = EntryRow::new(lba, &e);
        writeln!(
            out,
            "{:>12}  {:<13}  {:>11}  {:>6}  {}",
            row.block,
            row.state,
            row.spare_block
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
            row.error_count,
            row.time
        )?;
    }
    let retired: Vec<String> = rec.spares.retired().map(|s| s.to_string()).collect();
    writeln!(
        out,
        "{} entries: {} remapped, {} pending; blocks of {} bytes",
        rec.table.len(),
        rec.table.remapped_count(),
        rec.table.pending_count(),
        g.block_size
    )?;
    if !retired.is_empty() {
        writeln!(out, "retired spare blocks: {}", retired.join(" "))?;
    }
    Ok(())
}
