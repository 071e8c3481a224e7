//! `dmsetup message <dev> 0 <verb> [args]`: parsing and answers.
//!
//! Messages that only read counters run at once ([`Message::is_exclusive`] false); those
//! that read or change the table run in the target's work queue with I/O quiesced.

use core::fmt::{self, Write};

use remap_core::Entry;
use remap_core::health::HealthReasons;

use crate::io::BlockIo;
use crate::status::throughput_bps;
use crate::target::{Shared, SlowError, State};
use remap_meta::table_options::{Lossy, parse_u64};

/// The answer to `help`.
pub const HELP: &str =
    "help | map <block> | lookup <block> | stats | clear_stats | health | checkpoint";

/// A parsed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Help,
    /// Move a block to a spare now, copying its data.
    Map {
        block: u64,
    },
    /// Where a block lives.
    Lookup {
        block: u64,
    },
    Stats,
    ClearStats,
    Health,
    Checkpoint,
}

/// A message that is not understood. Its text goes to the kernel log and back to dmsetup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("empty message; try 'help'")]
    Empty,
    #[error("unknown message '{0}'; try 'help' ({HELP})")]
    Unknown(Lossy),
    #[error("message '{verb}' takes {want}, got {got} argument(s)")]
    Arity {
        verb: &'static str,
        want: &'static str,
        got: usize,
    },
    #[error("message '{verb}': '{arg}' is not a block number")]
    BadBlock { verb: &'static str, arg: Lossy },
}

impl Message {
    pub fn parse(args: &[&[u8]]) -> Result<Message, MessageError> {
        let Some((verb, rest)) = args.split_first() else {
            return Err(MessageError::Empty);
        };
        let none = |verb: &'static str, m: Message| {
            if rest.is_empty() {
                Ok(m)
            } else {
                Err(MessageError::Arity {
                    verb,
                    want: "no arguments",
                    got: rest.len(),
                })
            }
        };
        let block = |verb: &'static str| match rest {
            [b] => parse_u64(b, u64::MAX).ok_or_else(|| MessageError::BadBlock {
                verb,
                arg: Lossy(b.to_vec()),
            }),
            _ => Err(MessageError::Arity {
                verb,
                want: "one block number",
                got: rest.len(),
            }),
        };
        match *verb {
            b"help" => none("help", Message::Help),
            b"map" => Ok(Message::Map {
                block: block("map")?,
            }),
            b"lookup" => Ok(Message::Lookup {
                block: block("lookup")?,
            }),
            b"stats" => none("stats", Message::Stats),
            b"clear_stats" => none("clear_stats", Message::ClearStats),
            b"health" => none("health", Message::Health),
            b"checkpoint" => none("checkpoint", Message::Checkpoint),
            other => Err(MessageError::Unknown(Lossy(other.to_vec()))),
        }
    }

    /// Whether the message needs the table, so must run with I/O quiesced.
    pub fn is_exclusive(&self) -> bool {
        matches!(
            self,
            Message::Map { .. } | Message::Lookup { .. } | Message::Checkpoint
        )
    }
}

/// Answer a message that needs only the counters. `Err` carries the errno.
pub fn run_shared(
    msg: &Message,
    sh: &Shared,
    now_ns: u64,
    out: &mut impl Write,
) -> Result<(), i32> {
    let r = match msg {
        Message::Help => out.write_str(HELP),
        Message::Stats => write_stats(out, sh, now_ns),
        Message::ClearStats => {
            sh.clear_stats(now_ns);
            out.write_str("statistics cleared")
        }
        Message::Health => write_health(out, sh),
        _ => return Err(crate::io::EINVAL),
    };
    // A full answer buffer truncates the answer; that is not the message's failure.
    let _ = r;
    Ok(())
}

/// Run a message that needs the table. Called with I/O quiesced (`&mut State`).
pub fn run_exclusive<I: BlockIo + ?Sized>(
    msg: &Message,
    state: &mut State,
    sh: &Shared,
    io: &mut I,
    now_s: u32,
    out: &mut impl Write,
) -> Result<(), (i32, SlowError)> {
    match *msg {
        Message::Map { block } => {
            let spare = state
                .serve_map(sh, io, block, now_s)
                .map_err(|e| (e.errno(), e))?;
            let _ = write!(out, "block {block} remapped to spare block {spare}");
        }
        Message::Lookup { block } => {
            if block >= sh.blocks {
                let e = SlowError::BlockOutOfRange {
                    lba: block,
                    blocks: sh.blocks,
                };
                return Err((e.errno(), e));
            }
            let _ = write_lookup(out, block, state.table().get(block));
        }
        Message::Checkpoint => {
            let seq = state
                .serve_checkpoint(sh, io, now_s)
                .map_err(|e| (e.errno(), e))?;
            let _ = write!(out, "checkpoint {seq} written");
        }
        _ => {
            let _ = run_shared(msg, sh, 0, out);
        }
    }
    Ok(())
}

fn write_lookup(out: &mut impl Write, block: u64, e: Option<Entry>) -> fmt::Result {
    match e {
        None => write!(out, "block {block} main"),
        Some(e) => {
            match e.spare {
                Some(s) => write!(out, "block {block} spare {s}")?,
                None => write!(out, "block {block} pending")?,
            }
            write!(out, " errors {} time {}", e.error_count, e.time_s)?;
            if e.flags.contains(remap_core::EntryFlags::SPARE_RETIRED) {
                out.write_str(" spare_retired")?;
            }
            Ok(())
        }
    }
}

fn write_stats(out: &mut impl Write, sh: &Shared, now_ns: u64) -> fmt::Result {
    let s = sh.stats.snapshot();
    let elapsed = now_ns.saturating_sub(sh.since_ns.load(core::sync::atomic::Ordering::Relaxed));
    write!(
        out,
        "reads={} writes={} flushes={} discards={} write_zeroes={} bytes_read={} bytes_written={} \
         normal_ios={} remapped_ios={} failed_ios={} main_read_errors={} main_write_errors={} \
         spare_read_errors={} spare_write_errors={} transient_recoveries={} flush_errors={} \
         remaps={} pending_marked={} spares_retired_events={} commits={} \
         remapped_blocks={} pending_blocks={} spares_total={} spares_used={} spares_retired={} spares_free={} \
         latency_count={} latency_avg_ns={} latency_p50_ns={} latency_p99_ns={} throughput_bps={}",
        s.reads,
        s.writes,
        s.flushes,
        s.trims,
        s.write_zeroes,
        s.bytes_read,
        s.bytes_written,
        s.normal_ios,
        s.remapped_ios,
        s.failed_ios,
        s.main_read_errors,
        s.main_write_errors,
        s.spare_read_errors,
        s.spare_write_errors,
        s.transient_recoveries,
        s.flush_errors,
        s.remaps,
        s.pending_marked,
        s.spares_retired_events,
        s.commits,
        s.remapped_blocks,
        s.pending_blocks,
        s.spares_total,
        s.spares_used,
        s.spares_retired,
        s.spares_free(),
        s.latency.count,
        s.latency.average_ns(),
        s.latency.percentile_upper_ns(500),
        s.latency.percentile_upper_ns(990),
        throughput_bps(s.bytes_read.saturating_add(s.bytes_written), elapsed),
    )
}

fn write_health(out: &mut impl Write, sh: &Shared) -> fmt::Result {
    let h = sh.health();
    write!(
        out,
        "state={} error_rate_ppm={} spare_used_pct={} pending={} reasons=",
        h.state.as_str(),
        h.error_rate_ppm,
        h.spare_used_pct,
        h.pending
    )?;
    let poisoned = sh.is_poisoned();
    if h.reasons == HealthReasons::default() && !poisoned {
        return out.write_str("none");
    }
    if poisoned {
        out.write_str("metadata_writes_failed,_writes_refused_until_the_table_is_reloaded")?;
    }
    for (i, r) in h.reasons.descriptions().enumerate() {
        if i > 0 || poisoned {
            out.write_char(',')?;
        }
        // One token per reason, for scripts.
        for c in r.chars() {
            out.write_char(if c == ' ' { '_' } else { c })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Message, MessageError> {
        let v: alloc::vec::Vec<&[u8]> = s.split_whitespace().map(str::as_bytes).collect();
        Message::parse(&v)
    }

    #[test]
    fn parses_every_verb_and_refuses_the_rest() {
        assert_eq!(parse("help"), Ok(Message::Help));
        assert_eq!(parse("map 42"), Ok(Message::Map { block: 42 }));
        assert_eq!(parse("lookup 7"), Ok(Message::Lookup { block: 7 }));
        assert_eq!(parse("clear_stats"), Ok(Message::ClearStats));
        assert!(parse("checkpoint").unwrap().is_exclusive());
        assert!(!parse("stats").unwrap().is_exclusive());
        assert_eq!(parse(""), Err(MessageError::Empty));
        for (bad, want) in [
            ("frobnicate", "unknown message 'frobnicate'"),
            ("map", "takes one block number, got 0"),
            ("map x", "'x' is not a block number"),
            ("map 1 2", "got 2"),
            ("help me", "takes no arguments"),
        ] {
            let msg = alloc::format!("{}", parse(bad).unwrap_err());
            assert!(msg.contains(want), "{bad:?}: {msg:?}");
        }
    }

    #[test]
    fn lookup_answers_are_one_line_tokens() {
        let mut s = alloc::string::String::new();
        write_lookup(&mut s, 3, None).unwrap();
        assert_eq!(s, "block 3 main");
        s.clear();
        write_lookup(&mut s, 3, Some(Entry::remapped(9, 1, 77))).unwrap();
        assert_eq!(s, "block 3 spare 9 errors 1 time 77");
        s.clear();
        write_lookup(&mut s, 4, Some(Entry::pending(2, 5))).unwrap();
        assert_eq!(s, "block 4 pending errors 2 time 5");
    }
}
