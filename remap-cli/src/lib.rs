//! The `remap` command line: format a spare device for a failing main device, show what has
//! moved and how healthy the disk is, move blocks by hand, and verify or repair the metadata.
//!
//! The binary (`src/main.rs`) only calls [`main`]. What the commands do lives in
//! `remap-service` (opening the pair, moving blocks, scrub, health, SMART, settings, the
//! control socket, metrics, serving); this crate parses arguments, calls the service,
//! prints, and maps errors to exit codes:
//!
//! - [`cmd`]: one module per subcommand, each with its clap arguments and its `run`;
//! - [`address`]: TCP addresses on the command line;
//! - [`stop`]: the orderly stop on SIGINT, SIGTERM, SIGHUP or a closed stdout;
//! - [`plain_json`]: JSON for programs without Rust's `Result` and enum encodings;
//! - [`error`]: the error type and its exit codes;
//! - [`units`]: sizes for the human-readable output.
#![forbid(unsafe_code)]

pub mod address;
pub mod cmd;
pub mod error;
pub mod plain_json;
pub mod session;
pub mod stop;
pub mod units;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::error::{CliError, EXIT_OK};

const AFTER_HELP: &str = "\
Devices are positional, MAIN first, as in a device-mapper table line. Block numbers are in
the block size chosen at `remap create` (4096 bytes by default).

Examples:
  remap create /dev/sdb /dev/sdc1             format sdc1 as the spare for failing sdb
  remap status /dev/sdb /dev/sdc1             what has moved, how healthy the disk is
  remap dump /dev/sdb /dev/sdc1 --json        every remapped or pending block
  remap map /dev/sdb /dev/sdc1 1234 2000-2015 move blocks to the spare now
  remap check /dev/sdb /dev/sdc1 --repair     verify the metadata, fix a bad copy
  remap scrub /dev/sdb /dev/sdc1 --rate 50     read every block, find bad ones early
  remap health /dev/sdb /dev/sdc1 --smart /dev/sdb
                                              verdict, reasons, when the spares run out
  remap set /dev/sdb /dev/sdc1 --pending-critical 100
                                              change health thresholds
  remap serve /dev/sdb /dev/sdc1              export over NBD on 127.0.0.1:10809
  remap serve --demo                          try it: a demo disk with failing blocks
  remap status --control /run/remap.ctl       ask a `remap serve --control` that runs
  remap activate salvage /dev/sdb /dev/sdc1   the kernel target: /dev/mapper/salvage
  remap deactivate salvage                    flush, checkpoint and remove it
  remap probe /dev/sdc1                       is this a remap spare? (udev properties)

Exit status: 0 success, 1 the operation failed or problems remain (or stdout could not
be written), 2 usage error, 130/143/129 stopped by SIGINT/SIGTERM/SIGHUP: map, unmap, scrub
and serve finish the block in hand, commit, checkpoint and print their summary on stderr
first (a second signal exits at once; what was acknowledged is in the journal).
`remap health` exits as monitoring plugins expect: 0 healthy, 1 degraded, 2 critical,
3 unknown (no verdict). `remap probe` exits 3 when the device holds no remap metadata.
Logging: -v (info), -vv (debug), -vvv (trace), or RUST_LOG; quiet otherwise.";

/// `remap`: keep a failing disk in service by moving its bad blocks to a spare device.
#[derive(Debug, Parser)]
#[command(
    name = "remap",
    version,
    about = "Keep a failing disk in service by moving its bad blocks to a spare device",
    long_about = "Keep a failing disk in service by moving its bad blocks to a spare device.\n\n\
        Every block of the MAIN device is read and written in place until it fails; then it \
        moves to a block of the spare pool on the SPARE device, where it stays. The mapping \
        lives in checksummed, journaled metadata at the start of the SPARE device and \
        survives a crash at any instant.",
    after_help = AFTER_HELP,
    propagate_version = true
)]
pub struct Cli {
    /// More log output on stderr: -v info, -vv debug, -vvv trace (RUST_LOG also works).
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands. Each lives in its own module under [`cmd`].
#[derive(Debug, Subcommand)]
pub enum Command {
    Create(cmd::create::Args),
    Status(cmd::status::Args),
    Dump(cmd::dump::Args),
    Map(cmd::map::Args),
    Unmap(cmd::unmap::Args),
    Check(cmd::check::Args),
    Scrub(cmd::scrub::Args),
    Health(cmd::health::Args),
    Set(cmd::set::Args),
    Serve(cmd::serve::Args),
    Upgrade(cmd::upgrade::Args),
    Attach(cmd::attach::Args),
    Detach(cmd::detach::Args),
    Table(cmd::table::Args),
    Activate(cmd::activate::Args),
    Deactivate(cmd::deactivate::Args),
    SystemdGenerator(cmd::generator::Args),
    Probe(cmd::probe::Args),
}

/// Log to stderr. `-v` sets the level; without it `RUST_LOG` does; without either only
/// warnings and errors are shown.
fn init_logging(verbose: u8) {
    let filter = match verbose {
        0 => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        1 => EnvFilter::new("info"),
        2 => EnvFilter::new("debug"),
        _ => EnvFilter::new("trace"),
    };
    // A second initialisation (tests calling `run` twice) is harmless; ignore it.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// Run one parsed command, writing its report to `out`.
pub fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match cli.command {
        Command::Create(args) => cmd::create::run(&args, out),
        Command::Status(args) => cmd::status::run(&args, out),
        Command::Dump(args) => cmd::dump::run(&args, out),
        Command::Map(args) => cmd::map::run(&args, out),
        Command::Unmap(args) => cmd::unmap::run(&args, out),
        Command::Check(args) => cmd::check::run(&args, out),
        Command::Scrub(args) => cmd::scrub::run(&args, out),
        Command::Health(args) => cmd::health::run(&args, out),
        Command::Set(args) => cmd::set::run(&args, out),
        Command::Serve(args) => cmd::serve::run(&args, out),
        Command::Upgrade(args) => cmd::upgrade::run(&args, out),
        Command::Attach(args) => cmd::attach::run(&args, out),
        Command::Detach(args) => cmd::detach::run(&args, out),
        Command::Table(args) => cmd::table::run(&args, out),
        Command::Activate(args) => cmd::activate::run(&args, out),
        Command::Deactivate(args) => cmd::deactivate::run(&args, out),
        Command::SystemdGenerator(args) => cmd::generator::run(&args, out),
        Command::Probe(args) => cmd::probe::run(&args, out),
    }
}

/// The whole program: parse (clap exits 2 on a usage error), run, print any error as one
/// `remap: ...` line on stderr, and return the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = run(cli, &mut out).and_then(|()| out.flush().map_err(CliError::from));
    match result {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) if e.is_broken_pipe() => ExitCode::from(EXIT_OK),
        Err(e) => {
            // Whatever the command printed before failing goes out first.
            let _ = out.flush();
            eprintln!("remap: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
