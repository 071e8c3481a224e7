//! `remap status MAIN SPARE`: geometry, spare use, remapped and pending counts, health,
//! sequence numbers and lifetime counters, read from the spare without writing anything.
//! `remap status --control PATH`: the same figures, live, from a running `remap serve`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use remap_core::health::{HealthInputs, evaluate};
use remap_core::{BlockBackend, HealthReport, HealthThresholds, StatsSnapshot};
use remap_meta::{DeviceIdentity, Geometry, Recovered, RecoveryReport, counters};
use serde::{Deserialize, Serialize};

use crate::cmd::create::{identity_text, uuid_text};
use crate::cmd::{Target, TargetArgs};
use crate::control::{self, Request};
use crate::devices::{Access, Pair};
use crate::error::CliError;
use crate::units;

const AFTER_HELP: &str = "\
With --control, the figures come live from the `remap serve --control PATH` that holds the
pair: counters as they are now (every statistic, the latency histogram), the background
scrub's progress, and the newest durable metadata sequence number.

Examples:
  remap status /dev/sdb /dev/sdc1
  remap status main.img spare.img --json | jq .health.state
  remap status --control /run/remap.ctl --json | jq .stats.remaps";

/// Show geometry, spare use, remapped and pending counts, health and counters.
///
/// Shows the geometry, spare blocks total/used/free/retired, remapped and pending block
/// counts, health (state and reasons), superblock, checkpoint and journal sequence numbers,
/// and the lifetime counters carried in checkpoints.
///
/// Opens both devices read-only under a shared lock and writes nothing. Refuses a MAIN that
/// is not the device SPARE was formatted for.
#[derive(Debug, clap::Args)]
#[command(
    after_help = AFTER_HELP,
    override_usage = "remap status [OPTIONS] <MAIN> <SPARE>\n       remap status [OPTIONS] --control <PATH>"
)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,

    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
pub struct DeviceSection<'a> {
    pub path: &'a Path,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpareSection {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub retired: u64,
    pub block_size: u32,
    pub capacity_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    let pair_args = match args.target.target() {
        Target::Pair(p) => p,
        Target::Control(path) => {
            let v = control::call(&path, &Request::Status {})?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &v).map_err(std::io::Error::from)?;
                writeln!(out)?;
                return Ok(());
            }
            let s: LiveStatus =
                serde_json::from_value(v).map_err(|e| control::ControlError::Protocol {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            return print_live_human(&s, out);
        }
    };
    let pair = Pair::open(
        &pair_args.main,
        &pair_args.spare,
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

/// The lines the offline and the live status share: the health figures, the pool, the table.
fn print_pool(
    out: &mut dyn Write,
    (error_rate_ppm, spare_used_pct, pending): (u64, u64, u64),
    spares: &SpareSection,
    blocks: &BlockSection,
) -> Result<(), CliError> {
    writeln!(
        out,
        "          error rate {error_rate_ppm} ppm, spare use {spare_used_pct} %, {pending} pending"
    )?;
    writeln!(
        out,
        "spares    {} total, {} used, {} free, {} retired; capacity {}",
        spares.total,
        spares.used,
        spares.free,
        spares.retired,
        units::bytes(spares.capacity_bytes)
    )?;
    writeln!(
        out,
        "blocks    {} remapped, {} pending ({} of {} table entries)",
        blocks.remapped, blocks.pending, blocks.table_entries, blocks.table_capacity
    )?;
    Ok(())
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
    print_pool(
        out,
        (
            s.health.error_rate_ppm,
            s.health.spare_used_pct,
            s.health.pending,
        ),
        &s.spares,
        &s.blocks,
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

/// A device path and size, owned (the live status travels over the control socket).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnedDevice {
    pub path: std::path::PathBuf,
    pub size_bytes: u64,
}

/// The serving process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveSection {
    pub pid: u32,
    /// When the server started (UTC).
    pub started: String,
    pub uptime_s: u64,
}

/// Metadata sequence numbers a live device knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveSequence {
    /// Sequence number of the newest durable metadata change.
    pub newest_durable: u64,
    /// Sequence number the next journal block will carry.
    pub journal_next: u64,
}

/// Everything `remap status --control` shows; `--json` prints exactly this. The keys of
/// `remap status --json` are kept where a live device has the figure; `stats` adds every
/// live counter and gauge (including scrub counters and the latency histogram, buckets in
/// log2 nanoseconds), and `scrub` the background scrub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveStatus {
    pub live: LiveSection,
    pub main: OwnedDevice,
    pub spare: OwnedDevice,
    pub uuid: String,
    pub created: String,
    pub main_blocks: u64,
    pub geometry: serde_json::Value,
    pub spares: SpareSection,
    pub blocks: BlockSection,
    pub health: crate::health::Verdict,
    pub thresholds: HealthThresholds,
    /// Extra attempts for a failing read.
    pub read_retries: u32,
    pub sequence: LiveSequence,
    pub scrub_cursor: u64,
    pub scrub_passes: u64,
    pub scrub: crate::scrub::ScrubStatus,
    /// The lifetime counters (the names `remap status` shows), live.
    pub counters: BTreeMap<String, u64>,
    /// Every statistic of the device, live.
    pub stats: serde_json::Value,
}

fn print_live_human(s: &LiveStatus, out: &mut dyn Write) -> Result<(), CliError> {
    let block_size = s.spares.block_size;
    writeln!(
        out,
        "serving   pid {}, since {} ({} s)",
        s.live.pid, s.live.started, s.live.uptime_s
    )?;
    writeln!(
        out,
        "main      {}: {}",
        s.main.path.display(),
        units::bytes(s.main.size_bytes)
    )?;
    writeln!(
        out,
        "          {} blocks of {} bytes",
        s.main_blocks, block_size
    )?;
    writeln!(
        out,
        "spare     {}: {}",
        s.spare.path.display(),
        units::bytes(s.spare.size_bytes)
    )?;
    writeln!(out, "          uuid {}, created {}", s.uuid, s.created)?;
    let reasons = if s.health.reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", s.health.reasons.join("; "))
    };
    writeln!(out, "health    {}{reasons}", s.health.state)?;
    print_pool(
        out,
        (
            s.health.error_rate_ppm,
            s.health.spare_used_pct,
            s.health.pending,
        ),
        &s.spares,
        &s.blocks,
    )?;
    writeln!(
        out,
        "sequence  newest durable metadata change {}",
        s.sequence.newest_durable
    )?;
    let sc = &s.scrub;
    writeln!(
        out,
        "scrub     cursor at block {}, {} passes completed; background scrub {}{}",
        s.scrub_cursor,
        s.scrub_passes,
        sc.state.as_str(),
        if sc.state == crate::scrub::ScrubState::Idle {
            String::new()
        } else {
            format!(
                " (block {} of {}, {} unreadable found)",
                sc.cursor, sc.end_block, sc.unreadable_count
            )
        }
    )?;
    let latency = &s.stats["latency"];
    let count = latency["count"].as_u64().unwrap_or(0);
    let total = latency["total_ns"].as_u64().unwrap_or(0);
    writeln!(
        out,
        "latency   {} I/Os, average {} µs",
        count,
        total.checked_div(count).unwrap_or(0) / 1000
    )?;
    writeln!(out, "counters (live)")?;
    if let Some(map) = s.stats.as_object() {
        for (name, value) in map {
            if let Some(v) = value.as_u64() {
                writeln!(out, "  {name:<24}{v}")?;
            }
        }
    }
    Ok(())
}
