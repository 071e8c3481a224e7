//! `remap scrub MAIN SPARE`: read every block, so bad blocks are found (and marked pending)
//! before their data is needed; `remap scrub --control PATH`: the same in the background of
//! a running `remap serve`. The scrub itself is `remap_service::scrub`; this module asks for
//! it, shows its progress and prints the result.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use remap_core::BlockBackend;
use remap_service::control::{self, Request};
use remap_service::devices::{Access, Pair};
use remap_service::scrub::{self, RangeError, ScrubPlan, ScrubState, ScrubStatus};

use crate::cmd::{Target, TargetArgs};
use crate::error::CliError;
use crate::stop::{StopSignals, Stopped};
use crate::units;

const MIB: f64 = 1_048_576.0;

const AFTER_HELP: &str = "\
Every block is read where it lives (MAIN, or its spare block); a block that cannot be read
is marked pending, durably, as a failing client read would: reads of it fail until a write
covering the whole block moves it to the spare. User data is never written.

Resuming: without --from, the scrub starts at the saved cursor and saves it every few
seconds and when it stops, so an interrupted scrub (Ctrl-C, SIGTERM) continues where it
stopped, without rereading what it finished. When it reaches the last block a pass is
complete: the pass count goes up and the cursor returns to block 0. --to ends this run
early; the next run continues from there. --from BLOCK checks a range once and leaves the
cursor alone.

--rate limits the reading to that many MiB/s (a token bucket; the measured rate is shown
at the end), so the disk keeps serving others.

With --control, the scrub runs in the background of that `remap serve`, from its saved
cursor, rate-limited (16 MiB/s unless --rate) and in small chunks so client I/O keeps
priority; --status shows its progress and --stop stops it (the cursor is saved).

Exit status: 0 the range was read and every block could be read; 1 unreadable blocks were
found (listed) or the scrub failed; 130 interrupted (the cursor is saved).

Examples:
  remap scrub /dev/sdb /dev/sdc1 --rate 50
  remap scrub main.img spare.img --from 1000 --to 1999 --json
  remap scrub --control /run/remap.ctl --rate 20
  remap scrub --control /run/remap.ctl --status";

/// Read every block to find bad ones before their data is needed; resumable.
///
/// Reads MAIN block by block (remapped blocks from SPARE), with a progress bar (rate, ETA,
/// unreadable blocks found) on a terminal. Unreadable blocks are marked pending on SPARE.
/// Never writes user data.
#[derive(Debug, clap::Args)]
#[command(
    after_help = AFTER_HELP,
    override_usage = "remap scrub [OPTIONS] <MAIN> <SPARE>\n       remap scrub [OPTIONS] --control <PATH> [--status | --stop]"
)]
pub struct Args {
    #[command(flatten)]
    pub target: TargetArgs,

    /// First block to read; a one-off check of a range that leaves the saved cursor alone.
    /// Default: the saved cursor.
    #[arg(long, value_name = "BLOCK", conflicts_with = "control")]
    pub from: Option<u64>,

    /// Last block to read (inclusive). Default: the last block of the device.
    #[arg(long, value_name = "BLOCK", conflicts_with = "control")]
    pub to: Option<u64>,

    /// Read at most this many MiB per second (fractions allowed).
    #[arg(long, value_name = "MiB/s", value_parser = parse_rate, allow_negative_numbers = true)]
    pub rate: Option<f64>,

    /// With --control: show the background scrub's progress instead of starting one.
    #[arg(long, requires = "control", conflicts_with = "stop")]
    pub status: bool,

    /// With --control: stop the background scrub (its cursor is saved).
    #[arg(long, requires = "control")]
    pub stop: bool,

    /// Print the result as JSON (and no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// The slowest --rate: 10 KiB/s, so that even a 64 KiB block is read within seconds.
const MIN_RATE_MIB: f64 = 0.01;
/// The fastest --rate: far above any device; "unlimited" is the absence of --rate.
const MAX_RATE_MIB: f64 = 1e9;

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of MiB/s"))?;
    if !(rate.is_finite() && (MIN_RATE_MIB..=MAX_RATE_MIB).contains(&rate)) {
        return Err(format!(
            "{text:?} is outside {MIN_RATE_MIB} to {MAX_RATE_MIB} MiB/s (a slower scrub would read nothing for hours; to stop one, use --stop or Ctrl-C)"
        ));
    }
    Ok(rate)
}

fn bytes_per_s(rate_mib: Option<f64>) -> Option<u64> {
    rate_mib.map(|r| ((r * MIB) as u64).max(1))
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    match args.target.target() {
        Target::Control(path) => {
            let request = if args.status {
                Request::ScrubStatus {}
            } else if args.stop {
                Request::ScrubStop {}
            } else {
                Request::ScrubStart {
                    rate_bytes_per_s: bytes_per_s(args.rate),
                }
            };
            let s: ScrubStatus = control::call_as(&path, &request)?;
            if args.json {
                serde_json::to_writer_pretty(&mut *out, &s).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                if matches!(request, Request::ScrubStart { .. }) {
                    writeln!(
                        out,
                        "background scrub started at block {} of {}",
                        s.first_block, s.end_block
                    )?;
                }
                print_status(&s, out)?;
            }
            Ok(())
        }
        Target::Pair(p) => run_offline(args, &p, out),
    }
}

fn run_offline(args: &Args, p: &crate::cmd::PairArgs, out: &mut dyn Write) -> Result<(), CliError> {
    // MAIN is only read.
    let pair = Pair::open(&p.main, &p.spare, Access::ReadOnly, Access::ReadWrite)?;
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    let opened = pair.into_device()?;
    let device = &opened.device;
    let rate = bytes_per_s(args.rate);
    let plan = ScrubPlan::for_range(
        device,
        &main_path,
        args.from,
        args.to,
        rate,
        scrub::MAX_CHUNK_BYTES,
    )
    .map_err(|e| match e {
        RangeError::OutOfRange(e) => CliError::from(e),
        RangeError::Reversed { first, last, .. } => CliError::Usage {
            message: format!("--from {first} is after --to {last}"),
        },
        RangeError::CursorPast { cursor, last, .. } => CliError::Usage {
            message: format!(
                "the saved scrub cursor (block {cursor}) is already past --to {last}; give --from to check an earlier range"
            ),
        },
        other => CliError::Usage {
            message: other.to_string(),
        },
    })?;
    let block_size = device.block_size();

    // First SIGINT/SIGTERM/SIGHUP: stop after the current chunk, save the cursor. Second:
    // exit at once (the cursor saved last, at most a few seconds old, still holds).
    let signals = StopSignals::install().map_err(|source| CliError::Signals { source })?;
    let stop = signals.flag().clone();

    let total_bytes = plan
        .end
        .saturating_sub(plan.first)
        .saturating_mul(block_size.bytes_u64())
        .min(device.size_bytes());
    if !args.json {
        writeln!(
            out,
            "scrubbing {} blocks {} to {}: {}{}{}",
            main_path.display(),
            plan.first,
            plan.end.saturating_sub(1),
            units::bytes(total_bytes),
            if plan.resumable && plan.first > 0 {
                ", continuing from the saved cursor".to_string()
            } else {
                String::new()
            },
            rate.map_or_else(String::new, |r| format!(
                ", at most {:.2} MiB/s",
                r as f64 / MIB
            ))
        )?;
        out.flush()?;
    }
    // After the header, so the bar draws below it.
    let bar = progress_bar(total_bytes, args.json);
    let mut listed = 0usize;
    let mut report_error: Option<std::io::Error> = None;
    let result = scrub::run_at_rest(device, &plan, &stop, &mut |s| {
        bar.set_position(s.bytes_read);
        bar.set_message(format!("{} unreadable", s.unreadable_count));
        if !args.json {
            for lba in s.unreadable.iter().skip(listed) {
                let line = format!("block {lba}: unreadable; marked pending");
                bar.suspend(|| {
                    if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                        // Stdout is gone: stop in order, as a signal would.
                        stop.store(true, std::sync::atomic::Ordering::SeqCst);
                        report_error.get_or_insert(e);
                    }
                });
            }
            listed = s.unreadable.len();
        }
    });
    bar.finish_and_clear();
    let s = match result {
        Ok(s) => s,
        Err(source) => {
            return Err(CliError::Scrub {
                path: spare_path,
                source,
            });
        }
    };
    let stopped_by = (s.state == ScrubState::Stopped)
        .then(|| signals.received())
        .flatten();
    if args.json {
        // A program reads it: on stdout whatever stopped the scrub.
        serde_json::to_writer_pretty(&mut *out, &s).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else if stopped_by.is_some() || report_error.is_some() {
        // Stopped by a signal or a closed stdout: the summary goes to stderr, as for map
        // and unmap.
        print_status(&s, &mut std::io::stderr())?;
    } else {
        print_status(&s, out)?;
    }
    if s.state == ScrubState::Stopped {
        let what = if s.resumable {
            format!(
                "scrub stopped at block {}; the cursor is saved: run it again to continue",
                s.cursor
            )
        } else {
            format!(
                "scrub stopped at block {}; continue with --from {} --to {}",
                s.cursor,
                s.cursor,
                s.end_block.saturating_sub(1)
            )
        };
        return Err(match (report_error, stopped_by) {
            (Some(source), _) => Stopped::Output { source, what }.into(),
            (None, Some(signal)) => Stopped::Signal { signal, what }.into(),
            (None, None) => CliError::Interrupted { what },
        });
    }
    if let Some(source) = report_error {
        return Err(Stopped::Output {
            source,
            what: "the summary went to stderr".to_string(),
        }
        .into());
    }
    if s.unreadable_count > 0 {
        return Err(CliError::UnreadableFound {
            path: main_path,
            count: s.unreadable_count,
        });
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal (and not for `--json`): bytes, rate, ETA
/// and unreadable blocks found.
fn progress_bar(total_bytes: u64, json: bool) -> ProgressBar {
    if json || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total_bytes);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message("0 unreadable");
    // Keeps the spinner, rate and ETA moving while the rate limit makes the scrub wait.
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// The human form of a scrub's progress or result.
pub fn print_status(s: &ScrubStatus, out: &mut dyn Write) -> Result<(), CliError> {
    writeln!(
        out,
        "scrub     {}: blocks {} to {}, next block {} ({:.1} % of the range)",
        s.state.as_str(),
        s.first_block,
        s.end_block.saturating_sub(1),
        s.cursor,
        s.fraction_done() * 100.0
    )?;
    if s.state != ScrubState::Idle {
        writeln!(
            out,
            "read      {} blocks, {} in {:.1} s: {:.2} MiB/s{}",
            s.blocks_read,
            units::bytes(s.bytes_read),
            s.elapsed_s,
            s.bytes_per_s / MIB,
            s.rate_limit_bytes_per_s
                .map_or_else(String::new, |r| format!(
                    " (limit {:.2} MiB/s)",
                    r as f64 / MIB
                ))
        )?;
        let listed: Vec<String> = s.unreadable.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "found     {} unreadable block(s), {} newly pending{}{}",
            s.unreadable_count,
            s.newly_pending,
            if listed.is_empty() { "" } else { ": " },
            listed.join(" ")
        )?;
    }
    writeln!(
        out,
        "cursor    saved at block {}, {} pass(es) completed{}",
        s.saved_cursor,
        s.passes,
        if s.pass_completed {
            " (this scrub completed one)"
        } else {
            ""
        }
    )?;
    if let Some(e) = &s.error {
        writeln!(out, "error     {e}")?;
    }
    Ok(())
}
