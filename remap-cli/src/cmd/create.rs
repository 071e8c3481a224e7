//! `remap create MAIN SPARE`: format the spare device for this main device.

use std::io::Write;

use remap_core::{BlockBackend, BlockSize};
use remap_meta::layout::PlanError;
use remap_meta::open::MetaError;
use remap_meta::{CreateOptions, Geometry, Superblock};
use serde::Serialize;

use crate::cmd::PairArgs;
use crate::error::CliError;
use crate::units;
use remap_service::devices::{Access, Pair};
use remap_service::status::{identity_text, uuid_text};
use remap_service::time::utc;

const AFTER_HELP: &str = "\
Health thresholds (see `remap set --help`) take their defaults unless given here: error rate
100/10000 ppm after 1000 I/Os, spare use 50/90 %, pending 1/64 blocks (degraded/critical).
`remap set` changes them later.

Examples:
  remap create /dev/sdb /dev/sdc1
  remap create /dev/sdb /dev/sdc1 --block-size 512 --spare-blocks 100000
  remap create /dev/sdb /dev/sdc1 --pending-degraded 4 --pending-critical 100
  truncate -s 1G main.img && truncate -s 64M spare.img && remap create main.img spare.img";

/// Format SPARE as the spare device for MAIN.
///
/// Writes the remap metadata (superblocks, journal, checkpoint areas) at the start of SPARE;
/// the rest becomes the spare block pool.
///
/// Records MAIN's size (and, for a block device, its WWN or serial number) so that the spare
/// is never used with another disk. Refuses a SPARE that already holds remap metadata unless
/// --force, and one too small for the metadata and at least one spare block. Reads MAIN but
/// never writes it. Prints the geometry and the spare capacity.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    /// The remap unit in bytes: a power of two from 512 to 65536 (suffix k or KiB accepted).
    /// Block numbers given to other commands are in this unit.
    #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = parse_block_size)]
    pub block_size: BlockSize,

    /// Format even if SPARE already holds remap metadata or another signature (a
    /// filesystem, a partition table, ...). Its remap table, the data of every block that
    /// lives on the spare, and whatever else it held, is lost.
    #[arg(long)]
    pub force: bool,

    /// Journal ring size in 4 KiB blocks (4 to 1048576). Default: 1/64 of SPARE, between 64
    /// and 1024.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(
        i64::from(remap_meta::layout::MIN_JOURNAL_BLOCKS)..=i64::from(remap_meta::layout::MAX_JOURNAL_BLOCKS)
    ))]
    pub journal_blocks: Option<u32>,

    /// Number of spare blocks in the pool. Default: all the room SPARE has after the
    /// metadata.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub spare_blocks: Option<u64>,

    /// Health thresholds and read retries to start with.
    #[command(flatten)]
    pub settings: crate::cmd::SettingArgs,

    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parse `4096`, `4k`, `4K`, `4KiB`.
fn parse_block_size(text: &str) -> Result<BlockSize, String> {
    let t = text.trim();
    let (digits, multiplier) = match t
        .strip_suffix("KiB")
        .or_else(|| t.strip_suffix('k'))
        .or_else(|| t.strip_suffix('K'))
    {
        Some(d) => (d, 1024u64),
        None => (t, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size in bytes (such as 4096 or 4k)"))?;
    let bytes = n
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))?;
    BlockSize::new(bytes).map_err(|e| e.to_string())
}

#[derive(Debug, Serialize)]
struct DeviceReport<'a> {
    path: &'a std::path::Path,
    size_bytes: u64,
}

#[derive(Debug, Serialize)]
struct Capacity {
    blocks: u64,
    bytes: u64,
}

#[derive(Debug, Serialize)]
struct CreateReport<'a> {
    main: DeviceReport<'a>,
    spare: DeviceReport<'a>,
    uuid: String,
    created: String,
    identity: remap_meta::DeviceIdentity,
    main_blocks: u64,
    geometry: Geometry,
    spare_capacity: Capacity,
}

/// How much data the pool can take.
fn capacity(g: &Geometry) -> Capacity {
    Capacity {
        blocks: g.pool_blocks,
        bytes: g.pool_blocks.saturating_mul(g.block_size.bytes_u64()),
    }
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let settings = args.settings.changes();
    let mut thresholds = remap_core::HealthThresholds::default();
    settings.apply_thresholds(&mut thresholds);
    if let Err(e) = thresholds.validate() {
        return Err(CliError::Usage {
            message: format!("bad thresholds: {e}"),
        });
    }
    let defaults = CreateOptions::default();
    let read_retries = settings.read_retries.unwrap_or(defaults.read_retries);
    let pair = Pair::open(
        &args.pair.main,
        &args.pair.spare,
        Access::ReadOnly,
        Access::ReadWrite,
    )?;
    remap_service::signatures::refuse_metadata_on_main(
        &pair.main,
        &pair.main_path,
        &pair.spare_path,
    )?;
    let overwritten = if args.force {
        // Say what --force destroys; a probe that cannot run does not stop a forced format.
        remap_service::signatures::find(&pair.spare_path).unwrap_or_default()
    } else {
        remap_service::signatures::refuse_signatures(&pair.spare_path)?;
        Vec::new()
    };
    let lost = if args.force {
        remapped_blocks_held(&pair)
    } else {
        0
    };
    let opts = CreateOptions {
        block_size: args.block_size,
        journal_blocks: args.journal_blocks,
        pool_blocks: args.spare_blocks,
        force: args.force,
        thresholds,
        read_retries,
        ..defaults
    };
    let sb = remap_meta::create(&pair.spare, pair.main.size_bytes(), pair.identity, &opts)
        .map_err(|source| create_error(&pair, &opts, source))?;
    tracing::info!(spare = %pair.spare_path.display(), pool_blocks = sb.geometry.pool_blocks, "spare formatted");
    for signature in &overwritten {
        eprintln!(
            "remap: warning: {}: formatted over {signature} (--force)",
            pair.spare_path.display()
        );
    }
    if lost > 0 {
        eprintln!(
            "remap: warning: {}: formatted over a table with {lost} remapped block(s); \
             their data lived only on the spare and is lost",
            pair.spare_path.display()
        );
    }
    report(&pair, &sb, args.json, out)
}

/// A too-small spare gets a message with both sizes. The planner cannot say how much is
/// needed when even the metadata does not fit (it reports `u64::MAX`), so the minimum is
/// asked of the same planner with room to spare: the metadata end plus one spare block.
fn create_error(pair: &Pair, opts: &CreateOptions, source: MetaError) -> CliError {
    if let MetaError::Plan(PlanError::EmptyMain) = &source {
        return CliError::EmptyMain {
            path: pair.main_path.clone(),
        };
    }
    if let MetaError::Plan(PlanError::SpareTooSmall { spare_size, .. }) = &source {
        let journal_blocks = opts
            .journal_blocks
            .unwrap_or_else(|| Geometry::default_journal_blocks(*spare_size));
        if let Some(needed) =
            Geometry::min_spare_size(pair.main.size_bytes(), opts.block_size, journal_blocks)
        {
            return CliError::SpareTooSmall {
                path: pair.spare_path.clone(),
                spare_size: *spare_size,
                needed,
                journal_blocks,
            };
        }
    }
    CliError::Create {
        path: pair.spare_path.clone(),
        source: Box::new(source),
    }
}

/// Remapped blocks in the table `--force` is about to destroy: their data lives only on the
/// spare, so the user is told how many were lost.
fn remapped_blocks_held(pair: &Pair) -> usize {
    remap_meta::inspect(&pair.spare).map_or(0, |rec| rec.table.remapped_count())
}

fn report(pair: &Pair, sb: &Superblock, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let g = &sb.geometry;
    let cap = capacity(g);
    if json {
        let r = CreateReport {
            main: DeviceReport {
                path: &pair.main_path,
                size_bytes: g.main_size,
            },
            spare: DeviceReport {
                path: &pair.spare_path,
                size_bytes: g.spare_size,
            },
            uuid: uuid_text(&sb.uuid),
            created: utc(sb.created_ns / 1_000_000_000),
            identity: sb.identity,
            main_blocks: g.main_blocks(),
            geometry: *g,
            spare_capacity: cap,
        };
        serde_json::to_writer_pretty(&mut *out, &r).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "formatted {} as the spare device for {}",
        pair.spare_path.display(),
        pair.main_path.display()
    )?;
    writeln!(out, "  uuid            {}", uuid_text(&sb.uuid))?;
    writeln!(
        out,
        "  main device     {}, {} blocks of {} bytes, identity {}",
        units::bytes(g.main_size),
        g.main_blocks(),
        g.block_size,
        identity_text(&sb.identity)
    )?;
    writeln!(out, "  spare device    {}", units::bytes(g.spare_size))?;
    writeln!(
        out,
        "  journal         2 copies of {} blocks of 4 KiB, at offsets {} and {}",
        g.journal_blocks,
        g.journal_block_offset(0, 0),
        g.journal_block_offset(1, 0)
    )?;
    writeln!(
        out,
        "  checkpoints     2 areas of {} bytes at offsets {} and {}",
        g.checkpoint_area_bytes, g.checkpoint_offsets[0], g.checkpoint_offsets[1]
    )?;
    writeln!(out, "  table capacity  {} entries", g.table_capacity)?;
    writeln!(
        out,
        "  spare capacity  {} blocks of {} bytes = {}, at offset {}",
        cap.blocks,
        g.block_size,
        units::bytes(cap.bytes),
        g.pool_offset
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_size_accepts_suffixes_and_refuses_the_rest() {
        assert_eq!(parse_block_size("4096").unwrap().bytes(), 4096);
        assert_eq!(parse_block_size("4k").unwrap().bytes(), 4096);
        assert_eq!(parse_block_size("64KiB").unwrap().bytes(), 65536);
        assert_eq!(parse_block_size("512").unwrap().bytes(), 512);
        for bad in [
            "3000",
            "256",
            "128k",
            "x",
            "",
            "-4096",
            "99999999999999999999k",
        ] {
            assert!(parse_block_size(bad).is_err(), "{bad}");
        }
    }
}
