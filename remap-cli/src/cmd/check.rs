//! `remap check MAIN SPARE [--repair]`: verify every superblock copy, both checkpoint areas
//! and every journal block; with `--repair`, rewrite a bad or outdated superblock copy from
//! the good one. A table is never invented: what cannot be read back exactly is reported.

use std::io::Write;

use remap_meta::check::{CheckReport, CopyState};
use remap_meta::{Region, Superblock};
use serde::Serialize;

use crate::cmd::PairArgs;
use crate::error::CliError;
use remap_service::devices::{Access, Pair};

const AFTER_HELP: &str = "\
Exit status: 0 if everything is valid (or --repair made it so), 1 if problems remain.

--json prints one object:
  clean       true when no problem remains
  problems    every remaining problem, one sentence each
  main        {matches: true/false/null (no valid superblock to compare), error}
  check       the findings: superblocks [{region (SuperblockA, SuperblockB,
              SuperblockTail), sequence, error, outdated}], recovery (what an open would
              do: superblock_used, superblock_a/_b/_tail, checkpoint_sequence,
              records_replayed, journal_stop {kind, ...}, ...; or {error}), checkpoints
              [sequence or {error}], journal (counts of live, mirror_used, stale, invalid,
              foreign blocks), repairable [..], fatal [..]
  repair      null, or with --repair {rewritten: [region], before: <check as above>,
              salvage: null or what salvage rebuilt and could not prove}
A value that could not be read is {\"error\": \"why\"}; a variant is {\"kind\": name, ...}.

Examples:
  remap check /dev/sdb /dev/sdc1
  remap check /dev/sdb /dev/sdc1 --repair
  remap check main.img spare.img --json | jq .clean";

/// Verify the metadata on SPARE; with --repair, fix a bad copy.
///
/// Verifies both superblock copies, both checkpoint areas, both copies of every journal
/// block, a full recovery as an open would do it, and that MAIN is the device SPARE was
/// formatted for.
///
/// Without --repair both devices are opened read-only under a shared lock and nothing is
/// written. With --repair SPARE is locked exclusively and a corrupt or outdated superblock
/// copy (head or tail) is rewritten from the valid one, and a bad copy of a live journal
/// block from its twin. When recovery itself fails (a checkpoint area or a journal block
/// destroyed), --repair salvages: it rebuilds the table from the other checkpoint and every
/// readable journal commit, names the commits and blocks it could not prove, retires the
/// spare blocks that may hold their data, and only then writes a fresh checkpoint; an
/// incomplete salvage exits 1. Repair is refused if MAIN is not the device SPARE was
/// formatted for, and when nothing is left to rebuild from (nothing is written then).
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    #[command(flatten)]
    pub pair: PairArgs,

    /// Rewrite bad copies from good ones, or salvage what recovery refuses, then check again.
    #[arg(long)]
    pub repair: bool,

    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Whether MAIN matches what SPARE was formatted for.
#[derive(Debug, Serialize)]
pub struct MainCheck {
    /// `None` when no superblock copy is valid, so there is nothing to compare with.
    pub matches: Option<bool>,
    pub error: Option<String>,
}

/// What `check --json` prints.
#[derive(Debug, Serialize)]
pub struct CheckOutput {
    /// No problem remains.
    pub clean: bool,
    /// Every problem that remains, one sentence each.
    pub problems: Vec<String>,
    pub main: MainCheck,
    /// The findings (after repair, with `--repair`).
    pub check: CheckReport,
    /// With `--repair`: the copies rewritten and the findings before.
    pub repair: Option<RepairSection>,
}

#[derive(Debug, Serialize)]
pub struct RepairSection {
    pub rewritten: Vec<Region>,
    pub before: CheckReport,
    /// When recovery refused the spare: what salvage rebuilt and what it could not prove.
    pub salvage: Option<remap_meta::SalvageReport>,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let spare_access = if args.repair {
        Access::ReadWrite
    } else {
        Access::ReadOnly
    };
    let pair = Pair::open(
        &args.pair.main,
        &args.pair.spare,
        Access::ReadOnly,
        spare_access,
    )?;
    let chosen = pair.superblock()?;
    let main = match &chosen {
        None => MainCheck {
            matches: None,
            error: None,
        },
        Some(sb) => match pair.check_main(sb) {
            Ok(()) => MainCheck {
                matches: Some(true),
                error: None,
            },
            Err(e) => MainCheck {
                matches: Some(false),
                error: Some(e.to_string()),
            },
        },
    };
    let (check, repair) = if args.repair {
        if let Some(sb) = &chosen {
            // Never touch a spare that belongs to another disk.
            pair.check_main(sb)?;
        }
        let r = remap_meta::repair(&pair.spare).map_err(|source| CliError::Repair {
            path: pair.spare_path.clone(),
            source: Box::new(source),
        })?;
        (
            r.after,
            Some(RepairSection {
                rewritten: r.rewritten,
                before: r.before,
                salvage: r.salvage,
            }),
        )
    } else {
        let c = remap_meta::check(&pair.spare).map_err(|source| CliError::Check {
            path: pair.spare_path.clone(),
            source: Box::new(source),
        })?;
        (c, None)
    };
    let mut problems: Vec<String> = check
        .fatal
        .iter()
        .chain(&check.repairable)
        .cloned()
        .collect();
    if let Some(e) = &main.error {
        problems.push(e.clone());
    }
    if let Some(s) = repair.as_ref().and_then(|r| r.salvage.as_ref())
        && !s.is_complete()
    {
        problems.push(format!(
            "salvage could not prove the state of every block: {} lost commits left nothing to name their blocks; blocks not proven: {:?}",
            s.unidentified_lost_commits, s.unproven_blocks
        ));
    }
    let output = CheckOutput {
        clean: problems.is_empty(),
        problems,
        main,
        check,
        repair,
    };
    if args.json {
        let v = serde_json::to_value(&output).map_err(std::io::Error::from)?;
        serde_json::to_writer_pretty(&mut *out, &crate::plain_json::plain(v))
            .map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else {
        // The superblock after repair is what the areas and journal were judged against.
        let current = if args.repair {
            pair.superblock()?
        } else {
            chosen
        };
        print_human(&output, current.as_ref(), out)?;
    }
    if output.clean {
        return Ok(());
    }
    Err(CliError::ProblemsRemain {
        path: pair.spare_path.clone(),
        problems: output.problems.len(),
        repairable: output.check.repairable.len(),
    })
}

fn copy_line(c: &CopyState) -> String {
    match (&c.sequence, &c.error) {
        (Some(seq), _) if c.outdated => format!("valid, sequence {seq}, OUTDATED"),
        (Some(seq), _) => format!("valid, sequence {seq}"),
        (None, Some(e)) => format!("BAD: {e}"),
        (None, None) => "BAD".to_string(),
    }
}

fn print_salvage(s: &remap_meta::SalvageReport, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(out, "salvage: recovery refused the spare: {}", s.reason)?;
    writeln!(
        out,
        "salvage: rebuilt from {} (sequence {}) and {} journal commits: {} entries; wrote a fresh checkpoint",
        s.base, s.base_sequence, s.commits_applied, s.entries
    )?;
    for l in &s.lost {
        let blocks = if l.blocks.is_empty() {
            "no record survives: the blocks it changed cannot be named".to_string()
        } else {
            format!("blocks {:?}", l.blocks)
        };
        writeln!(
            out,
            "salvage: LOST journal commits {}..={}: {blocks}",
            l.first_sequence, l.last_sequence
        )?;
    }
    if !s.unproven_blocks.is_empty() {
        writeln!(
            out,
            "salvage: state NOT PROVEN for blocks {:?}",
            s.unproven_blocks
        )?;
    }
    if !s.quarantined_spares.is_empty() {
        writeln!(
            out,
            "salvage: spare blocks {:?} retired: they may hold the only copy of a lost block's data",
            s.quarantined_spares
        )?;
    }
    Ok(())
}

fn print_human(
    o: &CheckOutput,
    sb: Option<&Superblock>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    if let Some(r) = &o.repair {
        if let Some(s) = &r.salvage {
            print_salvage(s, out)?;
        } else if r.rewritten.is_empty() {
            writeln!(out, "repair: nothing to rewrite")?;
        }
        for region in r.rewritten.iter().filter(|_| r.salvage.is_none()) {
            writeln!(out, "repair: rewrote {region} from the valid copy")?;
        }
    }
    let c = &o.check;
    for copy in &c.superblocks {
        writeln!(out, "{:<20}{}", copy.region.to_string(), copy_line(copy))?;
    }
    if sb.is_none() {
        // Without a superblock there is no geometry to find the areas and journal by.
        writeln!(
            out,
            "{:<20}checkpoint areas and journal not examined (no valid superblock says where they are)",
            "checkpoints"
        )?;
    }
    for (area, state) in c.checkpoints.iter().enumerate().filter(|_| sb.is_some()) {
        let active = sb.map(|s| usize::from(s.active_checkpoint) == area);
        let text = match (state, active) {
            (Ok(seq), Some(true)) => format!("valid, sequence {seq}, in use"),
            (Ok(seq), _) => format!("valid, sequence {seq}, not in use"),
            (Err(e), Some(false)) => format!("not in use ({e})"),
            (Err(e), _) => format!("BAD: {e}"),
        };
        writeln!(out, "{:<20}{text}", format!("checkpoint area {area}"))?;
    }
    let j = &c.journal;
    if sb.is_some() {
        writeln!(
            out,
            "{:<20}{} live blocks ({} read from the second copy); over both copies: {} from before the last checkpoint, {} never written or torn, {} from an earlier format",
            "journal", j.live, j.mirror_used, j.stale, j.invalid, j.foreign
        )?;
    }
    match &c.recovery {
        Ok(r) => writeln!(
            out,
            "{:<20}ok: {} in use, checkpoint {} with {} entries, {} journal records replayed",
            "recovery",
            r.superblock_used,
            r.checkpoint_sequence,
            r.checkpoint_entries,
            r.records_replayed
        )?,
        Err(e) => writeln!(out, "{:<20}FAILED: {e}", "recovery")?,
    }
    let main_text = match (&o.main.matches, &o.main.error) {
        (Some(true), _) => "matches the spare's record".to_string(),
        (_, Some(e)) => format!("MISMATCH: {e}"),
        _ => "not checked (no valid superblock)".to_string(),
    };
    writeln!(out, "{:<20}{main_text}", "main device")?;
    if o.clean {
        writeln!(out, "clean")?;
    } else {
        for p in &o.problems {
            writeln!(out, "problem: {p}")?;
        }
    }
    Ok(())
}
