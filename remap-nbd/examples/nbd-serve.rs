//! `nbd-serve`: serve a file, a memory disk, or a remapping device over a simulated failing
//! disk, over NBD. A test harness (and a demo) until `remap serve` exists.
//!
//! ```text
//! nbd-serve file disk.img                       # a plain file, read-write
//! nbd-serve mem 1G --socket /tmp/nbd.sock       # a memory disk on a Unix socket
//! nbd-serve remap main.img --fail-read 10,20-29 --fail-write 100 --flaky 0.001 --seed 7
//! ```
//!
//! The remap mode builds a `RemapDevice` whose main device is MAIN wrapped in a
//! `FaultyBackend` (blocks that fail reads, fail writes, or fail at random at a seeded
//! rate), whose spare pool lives in SPARE (or in memory), and whose metadata lives in memory
//! (`MemStore`): the remap table is gone when the process exits.
//!
//! Once listening, prints `listening on <URI>` for each address on stdout. On SIGINT or
//! SIGTERM: stops accepting, finishes requests in flight, flushes, and prints a summary
//! (for the remap mode: `remapped: <blocks>` and `pending: <blocks>` lines) on stdout.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use remap_core::clock::SystemClock;
use remap_core::device::Layout;
use remap_core::testing::{FaultyBackend, MemStore, device_from_mem_store};
use remap_core::{BlockBackend, BlockSize, DeviceConfig, FileBackend, MemBackend, RemapDevice};
use remap_nbd::{BlockStateSource, ListenAddr, Server, ServerConfig};

/// Serve a block device over NBD.
#[derive(Debug, Parser)]
#[command(name = "nbd-serve", version)]
struct Args {
    /// TCP address to listen on (default 127.0.0.1:10809 unless only --socket is given).
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// Unix socket to listen on.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Export name (clients asking for the default export get it too).
    #[arg(long, global = true, default_value = "")]
    name: String,
    /// Export description.
    #[arg(long, global = true, default_value = "")]
    description: String,
    /// Refuse writes.
    #[arg(long, global = true)]
    read_only: bool,
    /// Block size: the advertised minimum block size, and the remap unit in remap mode
    /// (default 512 for file and mem, 4096 for remap).
    #[arg(long, global = true)]
    block_size: Option<u32>,
    /// Requests in flight per connection.
    #[arg(long, global = true, default_value_t = 16)]
    workers: usize,
    /// Connections served at once.
    #[arg(long, global = true, default_value_t = 64)]
    max_connections: usize,
    #[command(subcommand)]
    device: Device,
}

#[derive(Debug, Subcommand)]
enum Device {
    /// A regular file or block device.
    File { path: PathBuf },
    /// A zero-filled disk in memory, e.g. `64M`, `1G`.
    Mem {
        #[arg(value_parser = parse_size)]
        size: u64,
    },
    /// A remapping device over MAIN (a file), with injected faults.
    Remap {
        /// The main device: an existing file.
        main: PathBuf,
        /// The spare pool: an existing file of at least SPARE_BLOCKS blocks (default: memory).
        spare: Option<PathBuf>,
        /// Blocks in the spare pool.
        #[arg(long, default_value_t = 1024)]
        spare_blocks: u64,
        /// Blocks of MAIN that fail every read, e.g. `10,20-29`.
        #[arg(long, value_parser = parse_blocks, default_value = "")]
        fail_read: BlockList,
        /// Blocks of MAIN that fail every write.
        #[arg(long, value_parser = parse_blocks, default_value = "")]
        fail_write: BlockList,
        /// Fraction of reads and writes on MAIN that fail at random (0 to 1).
        #[arg(long, default_value_t = 0.0)]
        flaky: f64,
        /// Seed for --flaky.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// A list of block numbers.
#[derive(Debug, Clone, Default)]
struct BlockList(Vec<u64>);

/// The most blocks a fault list may name (a guard against `0-99999999999`).
const MAX_LISTED_BLOCKS: u64 = 1 << 20;

fn parse_blocks(s: &str) -> Result<BlockList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u64 = lo
            .parse()
            .map_err(|_| format!("{part:?} is not a block or a range"))?;
        let hi: u64 = hi
            .parse()
            .map_err(|_| format!("{part:?} is not a block or a range"))?;
        if hi < lo {
            return Err(format!("range {part:?} ends before it starts"));
        }
        if (hi - lo) as u128 + out.len() as u128 >= u128::from(MAX_LISTED_BLOCKS) {
            return Err(format!("more than {MAX_LISTED_BLOCKS} blocks listed"));
        }
        out.extend(lo..=hi);
    }
    Ok(BlockList(out))
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, shift) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 10),
        Some((i, 'M' | 'm')) => (&s[..i], 20),
        Some((i, 'G' | 'g')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

type Main = FaultyBackend<Arc<dyn BlockBackend>>;
type Remap = RemapDevice<Main, Arc<dyn BlockBackend>>;

fn open_file(path: &PathBuf, read_only: bool) -> Result<FileBackend, String> {
    remap_core::backend::OpenOptions::new()
        .read_only(read_only)
        .open(path)
        .map_err(|e| e.to_string())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("nbd-serve: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();

    let mut remap: Option<Arc<Remap>> = None;
    let (export, state, block_size): (
        Arc<dyn BlockBackend>,
        Option<Arc<dyn BlockStateSource>>,
        u32,
    ) = match &args.device {
        Device::File { path } => (
            Arc::new(open_file(path, args.read_only)?),
            None,
            args.block_size.unwrap_or(512),
        ),
        Device::Mem { size } => {
            let size = usize::try_from(*size).map_err(|_| "size too large".to_string())?;
            (
                Arc::new(MemBackend::new(size)),
                None,
                args.block_size.unwrap_or(512),
            )
        }
        Device::Remap {
            main,
            spare,
            spare_blocks,
            fail_read,
            fail_write,
            flaky,
            seed,
        } => {
            let bs = args.block_size.unwrap_or(4096);
            let block = BlockSize::new(bs.into()).map_err(|e| e.to_string())?;
            let main: Arc<dyn BlockBackend> = Arc::new(open_file(main, args.read_only)?);
            let main = FaultyBackend::new(main, block.bytes_u64());
            main.fail_reads(fail_read.0.iter().copied());
            main.fail_writes(fail_write.0.iter().copied());
            if !(0.0..=1.0).contains(flaky) {
                return Err(format!("--flaky {flaky} is not between 0 and 1"));
            }
            main.set_transient((flaky * 1e6).round() as u32, *seed);
            let pool_bytes = spare_blocks
                .checked_mul(block.bytes_u64())
                .ok_or("spare pool too large")?;
            let spare: Arc<dyn BlockBackend> = match spare {
                Some(p) => Arc::new(open_file(p, args.read_only)?),
                None => Arc::new(MemBackend::new(
                    usize::try_from(pool_bytes).map_err(|_| "spare pool too large")?,
                )),
            };
            let (_, handle) = MemStore::new();
            let layout = Layout {
                block_size: block,
                spare_offset: 0,
                spare_blocks: *spare_blocks,
            };
            let dev = device_from_mem_store(
                main,
                spare,
                layout,
                &handle,
                Arc::new(SystemClock),
                DeviceConfig::default(),
            )
            .map_err(|e| e.to_string())?;
            let dev = Arc::new(dev);
            remap = Some(dev.clone());
            (dev.clone(), Some(dev), bs)
        }
    };

    let mut listen = Vec::new();
    if let Some(a) = args.listen {
        listen.push(ListenAddr::Tcp(a));
    }
    if let Some(p) = &args.socket {
        listen.push(ListenAddr::Unix(p.clone()));
    }
    if listen.is_empty() {
        listen = ServerConfig::default().listen;
    }
    let config = ServerConfig {
        listen,
        name: args.name.clone(),
        description: args.description.clone(),
        read_only: args.read_only,
        block_size,
        workers_per_connection: args.workers,
        max_connections: args.max_connections,
        ..ServerConfig::default()
    };
    let server = Server::new(export, state, config).map_err(|e| e.to_string())?;
    let stop = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|e| format!("cannot catch signals: {e}"))?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stop.shutdown();
        }
    });
    {
        let mut out = std::io::stdout().lock();
        for a in server.local_addrs() {
            let _ = writeln!(out, "listening on {a}");
        }
        let _ = out.flush();
    }
    let summary = server.run().map_err(|e| e.to_string())?;
    println!(
        "served: connections={} requests={} errors={} bytes_read={} bytes_written={}",
        summary.connections,
        summary.requests,
        summary.errors,
        summary.bytes_read,
        summary.bytes_written
    );
    if let Some(dev) = remap {
        dev.shutdown()
            .map_err(|e| format!("device shutdown failed: {e}"))?;
        let s = dev.stats();
        let injected = dev.main().injected();
        println!(
            "device: remaps={} remapped_blocks={} pending_blocks={} main_read_errors={} main_write_errors={} spares_used={} injected_sticky_reads={} injected_sticky_writes={} injected_transient={}",
            s.remaps,
            s.remapped_blocks,
            s.pending_blocks,
            s.main_read_errors,
            s.main_write_errors,
            s.spares_used,
            injected.sticky_reads,
            injected.sticky_writes,
            injected.transient
        );
        let entries = dev.entries(0, u64::MAX);
        let list = |pick: fn(&remap_core::Entry) -> bool| {
            entries
                .iter()
                .filter(|(_, e)| pick(e))
                .map(|(lba, _)| lba.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        println!("remapped: {}", list(|e| e.is_remapped()));
        println!("pending: {}", list(|e| e.is_pending()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lists_and_sizes_parse() {
        assert_eq!(parse_blocks("1, 5-7,9").unwrap().0, vec![1, 5, 6, 7, 9]);
        assert!(parse_blocks("").unwrap().0.is_empty());
        assert!(parse_blocks("7-5").is_err());
        assert!(parse_blocks("x").is_err());
        assert!(parse_blocks("0-18446744073709551615").is_err());
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("99999999999G").is_err());
    }
}
