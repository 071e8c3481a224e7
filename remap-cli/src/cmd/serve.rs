//! `remap serve MAIN SPARE`: export the remapped device over NBD (`remap-nbd`), optionally
//! with faults injected on the main device for testers.
//!
//! The pair is opened read-write and locked for the life of the server, so other `remap`
//! commands on it say "in use by pid N"; with `--control PATH` they ask the server instead
//! (status, health, map, scrub, set), and `--metrics ADDR` serves the live figures to
//! Prometheus. SIGINT, SIGTERM or SIGHUP stops accepting, lets requests in flight finish,
//! stops a background scrub (saving its cursor), flushes, checkpoints, prints the summary on
//! stderr and exits 130, 143 or 129; a second signal exits at once (what the journal already
//! holds survives, as after a crash).
//!
//! On exit it prints a summary whose lines a test harness can parse: `served:
//! connections=N requests=N errors=N bytes_read=N bytes_written=N`, `device: ...`,
//! `faults: injected_sticky_reads=N injected_sticky_writes=N injected_transient=N` (with
//! fault injection), and `remapped: B,B,...` / `pending: B,...` (up to
//! [`MAX_LISTED_BLOCKS`] blocks each).

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use remap_service::blocks::{BlockList, BlockRange};
use remap_service::devices::{Access, Pair};
use remap_service::serve::MAX_FAULT_BLOCKS;
use remap_service::{ConnectionLimits, FaultPlan, ListenAddr, ServeConfig, ServeSummary, Serving};

use crate::error::CliError;
use crate::stop::Stopped;

/// Blocks listed by number in the exit summary's `remapped:` and `pending:` lines; beyond
/// this only the count is printed (`remap dump` lists them all).
pub const MAX_LISTED_BLOCKS: usize = 1000;

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

/// Export the remapped device over NBD until SIGINT, SIGTERM or SIGHUP.
///
/// Serves MAIN through the remap table on SPARE to NBD clients (qemu, nbdinfo, nbdcopy,
/// fio, the Linux nbd client): failing writes move blocks to the spare, failing reads are
/// reported as errors and marked pending, never answered with made-up data. Listens on
/// 127.0.0.1:10809 unless --listen or --socket says otherwise. On SIGINT, SIGTERM or
/// SIGHUP: stops accepting, finishes requests in flight, flushes, checkpoints, prints the
/// summary on stderr, exits 130, 143 or 129 (128 + the signal).
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

    /// TCP address to listen on, HOST:PORT (a host name such as localhost is resolved; port
    /// 0 picks a free one). Default 127.0.0.1:10809 unless --socket is given.
    #[arg(long, value_name = "ADDR", value_parser = crate::address::parse_socket_addr)]
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

    /// Serve Prometheus metrics at http://ADDR/metrics; without ADDR (put --metrics after
    /// MAIN and SPARE) at 127.0.0.1:10810, beside the NBD port and outside the exporters'
    /// 9100-9999 (9100 is node_exporter's). Port 0 picks a free one.
    #[arg(
        long,
        value_name = "ADDR",
        num_args = 0..=1,
        default_missing_value = crate::address::DEFAULT_METRICS_ADDR,
        value_parser = crate::address::parse_socket_addr
    )]
    pub metrics: Option<SocketAddr>,

    /// Format SPARE first if it holds no remap metadata (as `remap create MAIN SPARE` with
    /// the defaults would); a formatted SPARE is used as it is. For testers and scripts that
    /// start from blank files.
    #[arg(long)]
    pub create: bool,

    /// Clients served at once (in the transmission phase); further clients are closed at
    /// once until one leaves.
    #[arg(long, value_name = "N", help_heading = "Client limits",
          default_value_t = ConnectionLimits::default().max_connections as u64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_clients: u64,

    /// Connections accepted that have not spoken yet, held without a thread; when full,
    /// the oldest is closed for the newcomer.
    #[arg(long, value_name = "N", help_heading = "Client limits",
          default_value_t = ConnectionLimits::default().max_waiting as u64,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_waiting: u64,

    /// Connections negotiating at once (a thread each); when full, the one negotiating
    /// longest is closed for the newcomer.
    #[arg(long, value_name = "N", help_heading = "Client limits",
          default_value_t = ConnectionLimits::default().max_negotiating as u64,
          value_parser = clap::value_parser!(u64).range(1..=4_096))]
    pub max_negotiating: u64,

    /// Seconds a client has from connecting to the end of negotiation (as qemu-nbd's
    /// --handshake-limit); then it is closed and its slot freed.
    #[arg(long, value_name = "SECONDS", help_heading = "Client limits",
          default_value_t = ConnectionLimits::default().handshake_timeout.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    pub handshake_limit: u64,

    /// Seconds between the summary lines that count refused or closed connections.
    #[arg(long, value_name = "SECONDS", help_heading = "Client limits",
          default_value_t = ConnectionLimits::default().refusal_log_interval.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub refusal_log_interval: u64,
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
    if pair.format_if_blank()? {
        writeln!(
            out,
            "formatted {} as the spare for {}",
            pair.spare_path.display(),
            pair.main_path.display()
        )?;
    }
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
    let pair = Pair::open(&main, &spare, Access::ReadWrite, Access::ReadWrite)?;
    let mut listen: Vec<ListenAddr> = args.listen.iter().copied().map(ListenAddr::Tcp).collect();
    listen.extend(args.socket.iter().cloned().map(ListenAddr::Unix));
    // The demo always has a control socket, so its printed commands can use it.
    let control = args.control.clone().or_else(|| {
        args.demo
            .then(|| PathBuf::from(DEMO_DIR).join("control.sock"))
    });
    let config = ServeConfig {
        listen,
        name: args.name.clone(),
        description: args.description.clone(),
        read_only: args.read_only,
        faults: FaultPlan {
            fail_read: fail_read.clone(),
            fail_write: fail_write.clone(),
            flaky_rate: args.flaky,
            seed: args.seed,
        },
        control,
        metrics: args.metrics,
        create_if_blank: args.create,
        connection_limits: ConnectionLimits {
            max_connections: args.max_clients as usize,
            max_waiting: args.max_waiting as usize,
            max_negotiating: args.max_negotiating as usize,
            handshake_timeout: Duration::from_secs(args.handshake_limit),
            refusal_log_interval: Duration::from_secs(args.refusal_log_interval),
        },
    };
    let serving = remap_service::serve(pair, config)?;
    if serving.formatted() {
        writeln!(
            out,
            "formatted {} as the spare for {}",
            spare.display(),
            main.display()
        )?;
    }

    // Catch the signals before saying we listen, so a client that stops us at once is
    // heard.
    let stop = serving.stopper();
    let stopped_by = crate::stop::on_daemon_signals(
        move || stop.stop(),
        "finishing requests in flight, then stopping",
    )
    .map_err(|source| CliError::Signals { source })?;

    print_started(args, &serving, &fail_read, &fail_write, out)?;
    out.flush()?;
    // Under systemd (remap-serve@.service, Type=notify): ready once every address listens.
    if let Err(e) = remap_service::notify::notify("READY=1") {
        tracing::warn!("{e}");
    }
    let summary = serving.wait()?;
    // Stopped by a signal (the usual end): the summary goes to stderr, and the exit status
    // says which signal, as for map, unmap and scrub.
    match stopped_by.load(Ordering::SeqCst) {
        0 => print_summary(&summary, out),
        signal => {
            print_summary(&summary, &mut std::io::stderr())?;
            Err(Stopped::Signal {
                signal,
                what: "requests in flight finished, device flushed and checkpointed".to_string(),
            }
            .into())
        }
    }
}

/// What is served where, and what to try (the demo).
fn print_started(
    args: &Args,
    serving: &Serving,
    fail_read: &BlockList,
    fail_write: &BlockList,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let live = serving.live();
    let device = &live.device;
    writeln!(
        out,
        "serving {} ({} blocks of {} bytes) with spare {}{}",
        live.main_path.display(),
        device.blocks(),
        device.block_size(),
        live.spare_path.display(),
        if args.read_only { ", read-only" } else { "" }
    )?;
    if let Some((reads, writes)) = serving.fault_blocks() {
        writeln!(
            out,
            "injecting faults on main: {reads} blocks fail reads, {writes} fail writes, flaky rate {} (seed {})",
            args.flaky, args.seed
        )?;
    }
    if let Some(path) = serving.control_path() {
        writeln!(out, "control socket {}", path.display())?;
    }
    if let Some(at) = serving.metrics_addr() {
        writeln!(out, "metrics on http://{at}/metrics")?;
    }
    for addr in serving.local_addrs() {
        writeln!(out, "listening on {addr}")?;
    }
    if args.demo
        && let Some(addr) = serving.local_addrs().first()
    {
        print_demo_commands(
            out,
            &addr.to_string(),
            device.block_size().bytes_u64(),
            fail_read,
            fail_write,
            &DemoPaths {
                main: &live.main_path,
                spare: &live.spare_path,
                control: serving.control_path(),
            },
        )?;
    }
    Ok(())
}

/// The exit summary, in lines a test harness can parse.
fn print_summary(summary: &ServeSummary, out: &mut dyn Write) -> Result<(), CliError> {
    let (n, before, after) = (&summary.nbd, &summary.before, &summary.after);
    writeln!(
        out,
        "served: connections={} requests={} errors={} bytes_read={} bytes_written={}",
        n.connections, n.requests, n.errors, n.bytes_read, n.bytes_written
    )?;
    writeln!(out, "{}", crate::session::device_line(before, after))?;
    if let Some(injected) = &summary.injected {
        writeln!(
            out,
            "faults: injected_sticky_reads={} injected_sticky_writes={} injected_transient={}",
            injected.sticky_reads, injected.sticky_writes, injected.transient
        )?;
    }
    for (label, blocks) in [
        ("remapped", &summary.remapped),
        ("pending", &summary.pending),
    ] {
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
