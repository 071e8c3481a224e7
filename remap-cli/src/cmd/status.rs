//! `remap status MAIN SPARE`: geometry, spare use, remapped and pending counts, health,
//! sequence numbers and lifetime counters, read from the spare without writing anything.
//! `remap status --control PATH`: the same figures, live, from a running `remap serve`.

use std::io::Write;

use remap_core::BlockBackend;
use remap_meta::counters;
use remap_service::control::{self, ProtocolFault, Request};
use remap_service::devices::{Access, Pair};
use remap_service::scrub::ScrubState;
use remap_service::status::{
    BlockSection, LiveStatus, SpareSection, Status, gather, identity_text,
};

use crate::cmd::{Target, TargetArgs};
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
                    reason: ProtocolFault::Decode(e),
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
        if sc.state == ScrubState::Idle {
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
