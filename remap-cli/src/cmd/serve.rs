//! `remap serve MAIN SPARE`: export the remapped device over NBD (`remap-nbd`), optionally
//! with faults injected on the main device for testers.
//!
//! The pair is opened read-write and locked for the life of the server, so other `remap`
//! commands on it say "in use by pid N"; with `--control PATH` they ask the server instead
//! (status, health, map, scrub, set), and `--metrics ADDR` serves the live figures to
//! Prometheus. SIGINT or SIGTERM stops accepting, lets requests in flight finish, stops a
//! background scrub (saving its cursor), flushes, checkpoints, and exits 0; a second signal
//! exits at once (what the journal already holds survives, as after a crash).
//!
//! On exit it prints a summary whose lines a test harness can parse: `served:
//! connections=N requests=N errors=N bytes_read=N bytes_written=N`, `device: ...`,
//! `faults: injected_sticky_reads=N injected_sticky_writes=N injected_transient=N` (with
//! fault injection), and `remapped: B,B,...` / `pending: B,...` (up to
//! [`MAX_LISTED_BLOCKS`] blocks each).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use remap_core::testing::FaultyBackend;
use remap_core::{BlockBackend, FileBackend};
use remap_nbd::{BlockStateSource, ListenAddr, Server, ServerConfig};

use crate::blocks::{BlockList, BlockRange};
use crate::control::ControlServer;
use crate::devices::{Access, Pair};
use crate::error::CliError;
use crate::live::{Live, ServedDevice};
use crate::metrics::MetricsServer;

/// Blocks listed by number in the exit summary's `remapped:` and `pending:` lines; beyond
/// this only the count is printed (`remap dump` lists them all).
pub const MAX_LISTED_BLOCKS: usize = 1000;

/// The most blocks the fault lists may name together: each is kept in memory.
pub const MAX_FAULT_BLOCKS: u64 = 1 << 20;

const AFTER_HELP: &str = "\
Connect with any NBD client, for example:
  nbdinfo nbd://127.0.0.1                        size, block sizes, contexts
  nbdinfo --map=remap:state nbd://127.0.0.1      which ranges are remapped or pending
  qemu-io -f raw nbd://127.0.0.1 -c 'read 0 1M'
  nbd-client 127.0.0.1 /dev/nbd0                 the Linux kernel client

Fault injection (for testing what sits on top): --fail-read and --fail-write take block
numbers of MAIN (N, N-M, comma-separated); a write to a --fail-write block moves it to the
spare and succeeds, a read of a --fail-read block fails with EIO and marks it pending until
a whole-block write moves it. --flaky fails that fraction of all MAIN reads and writes,
reproducibly for a given --seed.

Operating a served pair (it is locked, so the other commands ask the server):
  remap status --control /run/remap.ctl         live figures (--json for programs)
  remap health --control /run/remap.ctl         verdict, reasons, rates, projection
  remap map --control /run/remap.ctl 1234       move a block now
  remap scrub --control /run/remap.ctl          background scrub; --status, --stop
  curl http://127.0.0.1:9187/metrics            with --metrics 127.0.0.1:9187

Examples:
  remap serve --demo
  remap serve /dev/sdb /dev/sdc1 --control /run/remap.ctl --metrics 127.0.0.1:9187
  remap serve main.img spare.img --socket /tmp/remap.sock --read-only
  remap serve main.img spare.img --create --fail-write 100-199 --fail-read 7 --flaky 0.001 --seed 42";

/// Export the remapped device over NBD until SIGINT or SIGTERM.
///
/// Serves MAIN through the remap table on SPARE to NBD clients (qemu, nbdinfo, nbdcopy,
/// fio, the Linux nbd client): failing writes move blocks to the spare, failing reads are
/// reported as errors and marked pending, never answered with made-up data. Listens on
/// 127.0.0.1:10809 unless --listen or --socket says otherwise. On SIGINT or SIGTERM: stops
/// accepting, finishes requests in flight, flushes, checkpoints, exits 0.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// The main device: the failing disk (or a file standing for one). Not with --demo.
    #[arg(value_name = "MAIN", required_unless_present = "demo")]
    pub main: Option<PathBuf>,

    /// The spare device, formatted by `remap create`. Not with --demo.
    #[arg(value_name = "SPARE", required_unless_present = "demo")]
    pub spare: Option<PathBuf>,

    /// Serve a demonstration pair: creates (if absent) a sparse 1 GiB main and a formatted
    /// 64 MiB spare under ./remap-demo/, makes a few blocks fail (unless --fail-read or
    /// --fail-write say otherwise), listens for control commands on
    /// ./remap-demo/control.sock (unless --control), and prints commands to try.
    #[arg(long, conflicts_with_all = ["main", "spare"])]
    pub demo: bool,

    /// TCP address to listen on (port 0 picks a free one). Default 127.0.0.1:10809 unless
    /// --socket is given.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<SocketAddr>,

    /// Unix socket to listen on.
    #[arg(long, value_name = "PATH")]
    pub socket: Vec<PathBuf>,

    /// Export name (clients asking for the default export get it too).
    #[arg(long, value_name = "NAME", default_value = "")]
    pub name: String,

    /// Export description, shown by `nbdinfo` (default: the two device paths).
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,

    /// Refuse client writes, trims and zeroing (EPERM). Unreadable blocks are still
    /// recorded as pending on SPARE.
    #[arg(long)]
    pub read_only: bool,

    /// Blocks of MAIN that fail every read (testing).
    #[arg(long, value_name = "BLOCK[-BLOCK]", value_delimiter = ',')]
    pub fail_read: Vec<BlockRange>,

    /// Blocks of MAIN that fail every write (testing).
    #[arg(long, value_name = "BLOCK[-BLOCK]", value_delimiter = ',')]
    pub fail_write: Vec<BlockRange>,

    /// Fraction (0 to 1) of MAIN reads and writes that fail at random (testing).
    #[arg(long, value_name = "RATE", default_value = "0", value_parser = parse_rate)]
    pub flaky: f64,

    /// Seed for --flaky: the same seed fails the same requests.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Control socket for the other `remap` commands (status, health, map, scrub, set
    /// with --control PATH). Created mode 0600, removed on exit.
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free one).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    /// Format SPARE first if it holds no remap metadata (as `remap create MAIN SPARE` with
    /// the defaults would); a formatted SPARE is used as it is. For testers and scripts that
    /// start from blank files.
    #[arg(long)]
    pub create: bool,
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{rate} is not between 0 and 1"));
    }
    Ok(rate)
}

/// Where `--demo` keeps its pair, relative to the current directory.
pub const DEMO_DIR: &str = "remap-demo";
const DEMO_MAIN_BYTES: u64 = 1 << 30;
const DEMO_SPARE_BYTES: u64 = 64 << 20;
/// The demo's failing blocks: a run that fails writes (they move to the spare) and two
/// that fail reads (EIO, then pending until rewritten).
const DEMO_FAIL_WRITE: BlockRange = BlockRange {
    first: 1000,
    last: 1009,
};
const DEMO_FAIL_READ: BlockRange = BlockRange {
    first: 2000,
    last: 2001,
};

/// Create (if absent) and format (if blank) the demo pair; return its paths.
fn prepare_demo(out: &mut dyn Write) -> Result<(PathBuf, PathBuf), CliError> {
    let dir = PathBuf::from(DEMO_DIR);
    let demo_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| CliError::Demo { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(demo_err(&dir))?;
    let main = dir.join("main.img");
    let spare = dir.join("spare.img");
    for (path, size) in [(&main, DEMO_MAIN_BYTES), (&spare, DEMO_SPARE_BYTES)] {
        if !path.exists() {
            // Sparse: takes no room until written.
            std::fs::File::create_new(path)
                .and_then(|f| f.set_len(size))
                .map_err(demo_err(path))?;
            writeln!(
                out,
                "created {} ({})",
                path.display(),
                crate::units::bytes(size)
            )?;
        }
    }
    let pair = Pair::open(&main, &spare, Access::ReadOnly, Access::ReadWrite)?;
    format_if_blank(&pair, out)?;
    Ok((main, spare))
}

/// Format the pair's spare with the defaults unless it already holds remap metadata.
fn format_if_blank(pair: &Pair, out: &mut dyn Write) -> Result<(), CliError> {
    if pair.superblock()?.is_some() {
        return Ok(());
    }
    remap_meta::create(
        &pair.spare,
        pair.main.size_bytes(),
        pair.identity,
        &remap_meta::CreateOptions::default(),
    )
    .map_err(|source| CliError::Create {
        path: pair.spare_path.clone(),
        source: Box::new(source),
    })?;
    writeln!(
        out,
        "formatted {} as the spare for {}",
        pair.spare_path.display(),
        pair.main_path.display()
    )?;
    Ok(())
}

/// The demo's files, for the commands it prints.
#[derive(Debug, Clone, Copy)]
struct DemoPaths<'a> {
    main: &'a std::path::Path,
    spare: &'a std::path::Path,
    control: Option<&'a std::path::Path>,
}

/// What to type in another terminal, with offsets that hit the demo's failing blocks.
fn print_demo_commands(
    out: &mut dyn Write,
    uri: &str,
    block_size: u64,
    fail_read: &BlockList,
    fail_write: &BlockList,
    pair: &DemoPaths<'_>,
) -> Result<(), CliError> {
    let DemoPaths {
        main,
        spare,
        control,
    } = *pair;
    writeln!(out, "try, from another terminal:")?;
    writeln!(out, "  nbdinfo '{uri}'")?;
    if let Some(lba) = fail_write.iter().next() {
        let at = lba * block_size;
        let len = fail_write.len().min(16) * block_size;
        writeln!(
            out,
            "  qemu-io -f raw '{uri}' -c 'write -P 0xab {at} {len}' -c 'read -P 0xab {at} {len}'    # writes to failing blocks move them to the spare"
        )?;
    }
    if let Some(lba) = fail_read.iter().next() {
        let at = lba * block_size;
        writeln!(
            out,
            "  qemu-io -f raw '{uri}' -c 'read {at} {block_size}'    # a failing read: EIO, never data; the block becomes pending"
        )?;
    }
    writeln!(
        out,
        "  nbdinfo --map=remap:state '{uri}'    # 1 = remapped, 2 = pending"
    )?;
    if let Some(c) = control {
        let c = c.display();
        writeln!(
            out,
            "  remap status --control {c}    # live figures; also health, scrub, map --control"
        )?;
        writeln!(
            out,
            "  remap scrub --control {c} && remap health --control {c}    # find the bad blocks before a client does"
        )?;
    }
    writeln!(
        out,
        "then stop with Ctrl-C and look: remap dump {} {}",
        main.display(),
        spare.display()
    )?;
    Ok(())
}

pub fn run(args: &Args, out: &mut dyn Write) -> Result<(), CliError> {
    let fail_read = BlockList::new(&args.fail_read);
    let fail_write = BlockList::new(&args.fail_write);
    if fail_read.len().saturating_add(fail_write.len()) > MAX_FAULT_BLOCKS {
        return Err(CliError::Usage {
            message: format!(
                "--fail-read and --fail-write name more than {MAX_FAULT_BLOCKS} blocks together"
            ),
        });
    }
    let (main, spare, fail_read, fail_write) = match (&args.main, &args.spare) {
        (Some(m), Some(s)) if !args.demo => (m.clone(), s.clone(), fail_read, fail_write),
        _ => {
            let (m, s) = prepare_demo(out)?;
            if fail_read.is_empty() && fail_write.is_empty() {
                let demo_read = BlockList::new(&[DEMO_FAIL_READ]);
                (m, s, demo_read, BlockList::new(&[DEMO_FAIL_WRITE]))
            } else {
                (m, s, fail_read, fail_write)
            }
        }
    };
    let injects_faults = !fail_read.is_empty() || !fail_write.is_empty() || args.flaky > 0.0;
    let pair = Pair::open(&main, &spare, Access::ReadWrite, Access::ReadWrite)?;
    if args.create {
        format_if_blank(&pair, out)?;
    }
    let (main_path, spare_path) = (pair.main_path.clone(), pair.spare_path.clone());
    let spare_size = pair.spare.size_bytes();
    // Fault lists are checked against the device before anything starts. Without a valid
    // superblock, opening the device below reports why.
    let block_size = match pair.superblock()? {
        Some(sb) => {
            let g = sb.geometry;
            fail_read.check_within(&main_path, g.main_blocks(), g.block_size.bytes())?;
            fail_write.check_within(&main_path, g.main_blocks(), g.block_size.bytes())?;
            g.block_size
        }
        None => remap_core::BlockSize::DEFAULT,
    };

    let mut faulty: Option<Arc<FaultyBackend<FileBackend>>> = None;
    let opened = pair.into_device_over(|main| -> Arc<dyn BlockBackend> {
        if !injects_faults {
            return Arc::new(main);
        }
        let f = Arc::new(FaultyBackend::new(main, block_size.bytes_u64()));
        f.fail_reads(fail_read.iter());
        f.fail_writes(fail_write.iter());
        f.set_transient((args.flaky * 1e6).round() as u32, args.seed);
        faulty = Some(f.clone());
        f
    })?;
    let superblock = opened.superblock;
    let device: Arc<ServedDevice> = Arc::new(opened.device);
    let before = device.stats();

    let mut listen: Vec<ListenAddr> = args.listen.iter().copied().map(ListenAddr::Tcp).collect();
    listen.extend(args.socket.iter().cloned().map(ListenAddr::Unix));
    if listen.is_empty() {
        listen = ServerConfig::default().listen;
    }
    let config = ServerConfig {
        listen,
        name: args.name.clone(),
        description: args.description.clone().unwrap_or_else(|| {
            format!(
                "remap of {} (spare {})",
                main_path.display(),
                spare_path.display()
            )
        }),
        read_only: args.read_only,
        block_size: device.block_size().bytes(),
        ..ServerConfig::default()
    };
    let export: Arc<dyn BlockBackend> = device.clone();
    let state: Arc<dyn BlockStateSource> = device.clone();
    let server = Server::new(export, Some(state), config).map_err(|source| CliError::Serve {
        path: main_path.clone(),
        source,
    })?;

    // Catch the signals before saying we listen, so a client that stops us at once is
    // heard.
    let stop = server.shutdown_handle();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .map_err(|source| CliError::Signals { source })?;
    std::thread::spawn(move || {
        let mut received = signals.forever();
        if received.next().is_some() {
            tracing::info!("signal received: finishing requests in flight, then stopping");
            stop.shutdown();
        }
        if received.next().is_some() {
            eprintln!("remap: second signal: exiting now; the journal keeps what was made durable");
            std::process::exit(i32::from(crate::error::EXIT_FAILED));
        }
    });

    writeln!(
        out,
        "serving {} ({} blocks of {} bytes) with spare {}{}",
        main_path.display(),
        device.blocks(),
        device.block_size(),
        spare_path.display(),
        if args.read_only { ", read-only" } else { "" }
    )?;
    if let Some(f) = &faulty {
        writeln!(
            out,
            "injecting faults on main: {} blocks fail reads, {} fail writes, flaky rate {} (seed {})",
            f.read_failing().len(),
            f.write_failing().len(),
            args.flaky,
            args.seed
        )?;
    }
    // The operator side: windows fed every second, the control socket, the metrics.
    let live = Live::new(
        device.clone(),
        main_path.clone(),
        spare_path.clone(),
        spare_size,
        superblock,
    );
    let mut helpers = vec![live.spawn_feeder().map_err(|source| CliError::Thread {
        what: "health window",
        source,
    })?];
    // The demo always has a control socket, so its printed commands can use it.
    let control_path = args.control.clone().or_else(|| {
        args.demo
            .then(|| PathBuf::from(DEMO_DIR).join("control.sock"))
    });
    if let Some(path) = &control_path {
        let control = ControlServer::bind(path)?;
        helpers.push(
            control
                .spawn(live.clone())
                .map_err(|source| CliError::Thread {
                    what: "control socket",
                    source,
                })?,
        );
        writeln!(out, "control socket {}", path.display())?;
    }
    if let Some(addr) = args.metrics {
        let metrics = MetricsServer::bind(addr)?;
        let at = metrics.local_addr();
        helpers.push(
            metrics
                .spawn(live.clone())
                .map_err(|source| CliError::Thread {
                    what: "metrics",
                    source,
                })?,
        );
        writeln!(out, "metrics on http://{at}/metrics")?;
    }
    for addr in server.local_addrs() {
        writeln!(out, "listening on {addr}")?;
    }
    if args.demo
        && let Some(addr) = server.local_addrs().first()
    {
        print_demo_commands(
            out,
            &addr.to_string(),
            device.block_size().bytes_u64(),
            &fail_read,
            &fail_write,
            &DemoPaths {
                main: &main_path,
                spare: &spare_path,
                control: control_path.as_deref(),
            },
        )?;
    }
    out.flush()?;

    let served = server.run();
    // Stop the operator side first: the background scrub saves its cursor, control
    // commands in progress finish, the socket file goes.
    live.stop();
    for h in helpers {
        if h.join().is_err() {
            tracing::error!("a helper thread of the server panicked");
        }
    }
    // Whatever the server did, end with a clean shutdown of the device: flush + checkpoint.
    let shutdown = device.shutdown();
    let summary = served.map_err(|source| CliError::Serve {
        path: main_path.clone(),
        source,
    })?;
    shutdown.map_err(|source| CliError::Shutdown {
        path: spare_path.clone(),
        source,
    })?;

    let after = device.stats();
    writeln!(
        out,
        "served: connections={} requests={} errors={} bytes_read={} bytes_written={}",
        summary.connections,
        summary.requests,
        summary.errors,
        summary.bytes_read,
        summary.bytes_written
    )?;
    writeln!(
        out,
        "device: {} remapped, {} pending; this session {} remaps, {} main read errors, {} main write errors",
        after.remapped_blocks,
        after.pending_blocks,
        after.remaps - before.remaps,
        after.main_read_errors - before.main_read_errors,
        after.main_write_errors - before.main_write_errors,
    )?;
    if let Some(f) = &faulty {
        let injected = f.injected();
        writeln!(
            out,
            "faults: injected_sticky_reads={} injected_sticky_writes={} injected_transient={}",
            injected.sticky_reads, injected.sticky_writes, injected.transient
        )?;
    }
    let entries = device.entries(0, u64::MAX);
    for (label, remapped) in [("remapped", true), ("pending", false)] {
        let blocks: Vec<u64> = entries
            .iter()
            .filter(|(_, e)| e.is_remapped() == remapped)
            .map(|(lba, _)| *lba)
            .collect();
        if blocks.len() > MAX_LISTED_BLOCKS {
            writeln!(
                out,
                "{label}: {} blocks (`remap dump` lists them)",
                blocks.len()
            )?;
        } else {
            let list: Vec<String> = blocks.iter().map(u64::to_string).collect();
            writeln!(out, "{label}: {}", list.join(","))?;
        }
    }
    Ok(())
}
