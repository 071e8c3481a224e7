//! `remap status MAIN SPARE`: geometry, spare use, remapped and pending counts, health,
//! sequence numbers and lifetime counters, read from the spare without writing anything.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use remap_core::health::{HealthInputs, evaluate};
use remap_core::{BlockBackend, HealthReport, HealthThresholds, StatsSnapshot};
use remap_meta::{DeviceIdentity, Geometry, Recovered, RecoveryReport, counters};
use serde::Serialize;

use crate::cmd::PairArgs;
use crate::cmd::create::{identity_text, uuid_text};
use crate::devices::{Access, Pair};
use crate::error::CliError;
use crate::units;

const AFTER_HELP: &str = "\
Examples:
  remap status /dev/sdb /dev/sdc1
  remap status main.img spare.img --json | jq .health.state";

/// Show geometry, spare use, remapped and pending counts, health and counters.
///
/// Shows the geometry, spare blocks total/used/free/retired, remapped and pending block
/// counts, health (state and reasons), superblock, checkpoint and journal sequence numbers,
/// and the lifetime counters carried in checkpoints.
///
/// Opens both devices read-only under a shared lock and writes nothing. Refuses a MAIN that
/// is not the device SPARE was formatted for.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct DeviceSection<'a> {
    pub path: &'a Path,
    pub size_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct SpareSection {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub retired: u64,
    pub block_size: u32,
    pub capacity_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct BlockSection {
    pub remapped: u64,
    pub pending: u64,
    pub table_entries: u64,
    pub table_capacity: u64,
}

#[derive(Debug, Serialize)]
pub struct SequenceSection {
    pub superblock: u64,
    pub checkpoint: u64,
    /// Sequence number the next journal block will carry.
    pub journal_next: u64,
    /// Journal blocks written since the checkpoint (replayed on open).
    pub journal_live_blocks: u32,
}

/// Everything `remap status` shows; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub main: DeviceSection<'a>,
    pub spare: DeviceSection<'a>,
    pub uuid: String,
    pub created: String,
    pub identity: DeviceIdentity,
    pub main_blocks: u64,
    pub geometry: Geometry,
    pub spares: SpareSection,
    pub blocks: BlockSection,
    pub health: HealthReport,
    pub thresholds: HealthThresholds,
    pub sequence: SequenceSection,
    pub scrub_cursor: u64,
    pub scrub_passes: u64,
    pub recovery: &'a RecoveryReport,
    /// Lifetime counters carried in checkpoints (I/Os, errors, remaps), by name.
    pub counters: BTreeMap<&'static str, u64>,
}

/// The counters as a live device would report them: the lifetime counts from the spare
/// plus the gauges that describe the table and pool. Health is judged from this, so a pair
/// at rest shows the same verdict it had while running.
pub fn snapshot(rec: &Recovered) -> StatsSnapshot {
    let mut s = counters::to_snapshot(&rec.counters);
    s.pending_blocks = rec.table.pending_count() as u64;
    s.remapped_blocks = rec.table.remapped_count() as u64;
    s.spares_total = rec.spares.pool_blocks();
    s.spares_used = rec.spares.used_count();
    s.spares_retired = rec.spares.retired_count();
    s
}

/// Gather the status of an inspected pair.
pub fn gather<'a>(
    main: &'a Path,
    spare: &'a Path,
    spare_size: u64,
    rec: &'a Recovered,
) -> Status<'a> {
    let sb = &rec.superblock;
    let g = sb.geometry;
    let snap = snapshot(rec);
    let health = evaluate(&HealthInputs::from_snapshot(&snap), &sb.thresholds);
    let counters = counters::NAMES
        .iter()
        .zip(rec.counters.iter())
        .map(|(name, value)| (*name, *value))
        .collect();
    Status {
        main: DeviceSection {
            path: main,
            size_bytes: g.main_size,
        },
        spare: DeviceSection {
            path: spare,
            size_bytes: spare_size,
        },
        uuid: uuid_text(&sb.uuid),
        created: units::utc(sb.created_ns / 1_000_000_000),
        identity: sb.identity,
        main_blocks: g.main_blocks(),
        geometry: g,
        spares: SpareSection {
            total: snap.spares_total,
            used: snap.spares_used,
            free: snap.spares_free(),
            retired: snap.spares_retired,
            block_size: g.block_size.bytes(),
            capacity_bytes: g.pool_blocks.saturating_mul(g.block_size.bytes_u64()),
        },
        blocks: BlockSection {
            remapped: snap.remapped_blocks,
            pending: snap.pending_blocks,
            table_entries: rec.table.len() as u64,
            table_capacity: g.table_capacity,
        },
        health,
        thresholds: sb.thresholds,
        sequence: SequenceSection {
            superblock: sb.sequence,
            checkpoint: sb.checkpoint_sequence,
            journal_next: rec.journal.next_sequence(),
            journal_live_blocks: rec.journal.live_blocks(),
        },
        scrub_cursor: sb.scrub_cursor,
        scrub_passes: sb.scrub_passes,
        recovery: &rec.report,
        counters,
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
    let status = gather(
        &pair.main_path,
        &pair.spare_path,
        pair.spare.size_bytes(),
        &rec,
    );
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &status).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    print_human(&status, out)
}

fn print_human(s: &Status<'_>, out: &mut dyn Write) -> Result<(), CliError> {
    let g = &s.geometry;
    writeln!(
        out,
        "main      {}: {}",
        s.main.path.display(),
        units::bytes(s.main.size_bytes)
    )?;
    writeln!(
        out,
        "          {} blocks of {} bytes, identity {}",
        s.main_blocks,
        g.block_size,
        identity_text(&s.identity)
    )?;
    writeln!(
        out,
        "spare     {}: {}",
        s.spare.path.display(),
        units::bytes(s.spare.size_bytes)
    )?;
    writeln!(out, "          uuid {}, created {}", s.uuid, s.created)?;
    writeln!(
        out,
        "health    {}{}",
        s.health.state,
        if s.health.reasons.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                s.health
                    .reasons
                    .descriptions()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        }
    )?;
    writeln!(
        out,
        "          error rate {} ppm, spare use {} %, {} pending",
        s.health.error_rate_ppm, s.health.spare_used_pct, s.health.pending
    )?;
    writeln!(
        out,
        "spares    {} total, {} used, {} free, {} retired; capacity {}",
        s.spares.total,
        s.spares.used,
        s.spares.free,
        s.spares.retired,
        units::bytes(s.spares.capacity_bytes)
    )?;
    writeln!(
        out,
        "blocks    {} remapped, {} pending ({} of {} table entries)",
        s.blocks.remapped, s.blocks.pending, s.blocks.table_entries, s.blocks.table_capacity
    )?;
    writeln!(
        out,
        "sequence  superblock {}, checkpoint {}, journal next {} ({} live journal blocks)",
        s.sequence.superblock,
        s.sequence.checkpoint,
        s.sequence.journal_next,
        s.sequence.journal_live_blocks
    )?;
    writeln!(
        out,
        "metadata  journal 2 x {} blocks at {} and {}, checkpoint areas at {} and {} ({} bytes each), pool at {}",
        g.journal_blocks,
        g.journal_block_offset(0, 0),
        g.journal_block_offset(1, 0),
        g.checkpoint_offsets[0],
        g.checkpoint_offsets[1],
        g.checkpoint_area_bytes,
        g.pool_offset
    )?;
    let r = s.recovery;
    writeln!(
        out,
        "recovery  {} in use, copies {}; {} journal records replayed",
        r.superblock_used,
        if r.superblocks_agree {
            "agree"
        } else {
            "DIFFER (run `remap check`)"
        },
        r.records_replayed
    )?;
    writeln!(
        out,
        "scrub     cursor at block {}, {} passes completed",
        s.scrub_cursor, s.scrub_passes
    )?;
    writeln!(out, "lifetime counters")?;
    for name in counters::NAMES {
        if let Some(v) = s.counters.get(name) {
            writeln!(out, "  {name:<24}{v}")?;
        }
    }
    Ok(())
}
