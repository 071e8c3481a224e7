//! Check the kernel target's real write ordering on a spare device, from a dm-log-writes
//! log recorded in the guest (`scripts/guest-test.sh` runs this after boot 1).
//!
//! dm-log-writes records every write that reached the spare, in the order it could have
//! become durable: a plain write is logged only at the next flush, a FUA write when it
//! completes. The guest put a mark `r<N>` in the log right after each write to block N of
//! the remapped device returned (each of those writes failed on the main device, so the
//! kernel moved the block). Here the log is replayed into remap-core's crash simulator:
//! at every point of the history, with seeded choices of which unflushed writes survive
//! (torn at 512 bytes), the spare must recover, and every block whose mark is at or before
//! that point must be remapped and its spare block must hold the data that was written.
//!
//! ```text
//! log_replay --log LOG --spare SPARE_BEFORE --data DATA [--block-size 4096] [--seeds 4]
//! ```
//! DATA holds the data written to block N at byte N × block size.

use std::process::ExitCode;

use remap_core::backend::crash::CrashBackend;
use remap_core::{BlockBackend, MemBackend};

const MAGIC: u64 = 0x006a_7366_7773_6872;
const FLUSH: u64 = 1;
const FUA: u64 = 2;
const DISCARD: u64 = 4;
const MARK: u64 = 8;

struct Args {
    log: String,
    spare: String,
    data: String,
    block_size: u64,
    seeds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        log: String::new(),
        spare: String::new(),
        data: String::new(),
        block_size: 4096,
        seeds: 4,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--log" => a.log = value()?,
            "--spare" => a.spare = value()?,
            "--data" => a.data = value()?,
            "--block-size" => a.block_size = value()?.parse().map_err(|e| format!("{e}"))?,
            "--seeds" => a.seeds = value()?.parse().map_err(|e| format!("{e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.log.is_empty() || a.spare.is_empty() || a.data.is_empty() {
        return Err("usage: log_replay --log LOG --spare SPARE_BEFORE --data DATA".into());
    }
    Ok(a)
}

fn le64(b: &[u8], at: usize) -> Result<u64, String> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap_or_default()))
        .ok_or_else(|| format!("log truncated at byte {at}"))
}

/// A replayed log: the device, its marks (label, history position), the entry count.
struct Replayed {
    dev: CrashBackend,
    marks: Vec<(String, usize)>,
    entries: u64,
}

/// Replay the log into a crash simulator.
fn replay(log: &[u8], spare: Vec<u8>) -> Result<Replayed, String> {
    if le64(log, 0)? != MAGIC {
        return Err("not a dm-log-writes log (bad magic)".into());
    }
    let entries = le64(log, 16)?;
    let sector = log
        .get(24..28)
        .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()) as usize)
        .ok_or("log truncated in its super block")?;
    if !(512..=65536).contains(&sector) || !sector.is_power_of_two() {
        return Err(format!("log sector size {sector} is not plausible"));
    }
    let dev = CrashBackend::from_image(spare);
    let mut marks = Vec::new();
    let mut pos = sector;
    for i in 0..entries {
        let dev_sector = le64(log, pos)?;
        let nr_sectors = le64(log, pos + 8)?;
        let flags = le64(log, pos + 16)?;
        let data_len = le64(log, pos + 24)? as usize;
        let header = pos;
        pos += sector;
        if flags & MARK != 0 {
            let label = log
                .get(header + 32..header + 32 + data_len)
                .ok_or_else(|| format!("entry {i}: mark truncated"))?;
            let label = String::from_utf8_lossy(label)
                .trim_end_matches('\0')
                .to_string();
            marks.push((label, dev.history_len()));
            continue;
        }
        if flags & FLUSH != 0 {
            dev.flush().map_err(|e| format!("entry {i}: {e}"))?;
        }
        if nr_sectors == 0 {
            continue;
        }
        let offset = dev_sector * sector as u64;
        let len = nr_sectors as usize * sector;
        if flags & DISCARD != 0 {
            // The target never discards its metadata; a discard of data reads as zeroes.
            let zeroes = vec![0u8; len];
            dev.write_at(offset, &zeroes)
                .map_err(|e| format!("entry {i}: {e}"))?;
            continue;
        }
        let data = log
            .get(pos..pos + len)
            .ok_or_else(|| format!("entry {i}: data truncated"))?;
        pos += len;
        let r = if flags & FUA != 0 {
            dev.write_at_fua(offset, data)
        } else {
            dev.write_at(offset, data)
        };
        r.map_err(|e| format!("entry {i}: {e}"))?;
    }
    Ok(Replayed {
        dev,
        marks,
        entries,
    })
}

fn run() -> Result<String, String> {
    let a = parse_args()?;
    let read = |p: &str| std::fs::read(p).map_err(|e| format!("{p}: {e}"));
    let (log, spare, data) = (read(&a.log)?, read(&a.spare)?, read(&a.data)?);
    let Replayed {
        dev,
        marks,
        entries,
    } = replay(&log, spare)?;
    // Marks r<N>: block N was acknowledged there.
    let mut acked: Vec<(u64, usize)> = Vec::new();
    for (label, at) in &marks {
        if let Some(n) = label.strip_prefix('r').and_then(|n| n.parse::<u64>().ok()) {
            acked.push((n, *at));
        }
    }
    if acked.is_empty() {
        return Err(format!("no r<N> marks among {} marks", marks.len()));
    }
    let bs = a.block_size as usize;
    let history = dev.history_len();
    let mut states = 0u64;
    for point in 0..=history {
        for seed in 0..a.seeds {
            let image =
                dev.crash_image_seeded(point, seed.wrapping_mul(0x9e37_79b9) ^ point as u64);
            let mem = MemBackend::from_vec(image.clone());
            let r = remap_meta::recover(&mut remap_meta::io::BackendIo(&mem), mem.size_bytes())
                .map_err(|e| {
                    format!("crash point {point} seed {seed}: the spare does not recover: {e}")
                })?;
            let pool = r.superblock.geometry.pool_offset as usize;
            for &(block, at) in acked.iter().filter(|(_, at)| *at <= point) {
                let e = r.table.get(block).ok_or_else(|| {
                    format!("crash point {point} seed {seed}: block {block}, acknowledged at {at}, is not remapped")
                })?;
                let spare = e.spare.ok_or_else(|| {
                    format!("crash point {point} seed {seed}: block {block} has no spare block")
                })? as usize;
                let on_spare = image.get(pool + spare * bs..pool + (spare + 1) * bs);
                let want = data.get(block as usize * bs..(block as usize + 1) * bs);
                if on_spare.is_none() || on_spare != want {
                    return Err(format!(
                        "crash point {point} seed {seed}: block {block}: spare block {spare} does not hold the data written"
                    ));
                }
            }
            states += 1;
        }
    }
    Ok(format!(
        "{entries} log entries, {history} history points, {states} crash states: the spare recovers at every one, and each of the {} acknowledged remaps is there with its data from its mark on",
        acked.len()
    ))
}

fn main() -> ExitCode {
    match run() {
        Ok(msg) => {
            println!("log_replay: {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("log_replay: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
