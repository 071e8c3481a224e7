//! One module per subcommand. Each holds its clap arguments (`Args`, whose doc comments are
//! the `--help` text) and a `run` that writes its report to the given output.
//!
//! Commands that can also ask a running `remap serve` (`status`, `health`, `scrub`, `set`,
//! `map`) take either the pair or `--control PATH` ([`TargetArgs`]).

use std::path::PathBuf;

use remap_service::settings::SettingChanges;

pub mod activate;
pub mod attach;
pub mod check;
pub mod create;
pub mod deactivate;
pub mod detach;
pub mod dump;
pub mod generator;
pub mod health;
pub mod map;
pub mod probe;
pub mod scrub;
pub mod serve;
pub mod set;
pub mod status;
pub mod table;
pub mod unmap;
pub mod upgrade;

/// The device pair, positional, main first.
#[derive(Debug, Clone, clap::Args)]
pub struct PairArgs {
    /// The main device: the failing disk (or a file standing for one).
    #[arg(value_name = "MAIN")]
    pub main: PathBuf,
    /// The spare device: holds the metadata and the pool of spare blocks.
    #[arg(value_name = "SPARE")]
    pub spare: PathBuf,
}

/// The device pair, or the control socket of a running `remap serve` that holds it.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    /// The main device: the failing disk (or a file standing for one).
    #[arg(value_name = "MAIN", required_unless_present = "control")]
    pub main: Option<PathBuf>,
    /// The spare device: holds the metadata and the pool of spare blocks.
    #[arg(value_name = "SPARE", required_unless_present = "control")]
    pub spare: Option<PathBuf>,
    /// Ask the `remap serve --control PATH` that serves the pair, instead of opening it
    /// (a served pair is locked: opening it says "in use by pid N").
    #[arg(long, value_name = "PATH", conflicts_with_all = ["main", "spare"])]
    pub control: Option<PathBuf>,
}

/// What a command works on.
#[derive(Debug, Clone)]
pub enum Target {
    Pair(PairArgs),
    Control(PathBuf),
}

impl TargetArgs {
    pub fn target(&self) -> Target {
        match (&self.control, &self.main, &self.spare) {
            (Some(path), _, _) => Target::Control(path.clone()),
            (None, Some(main), Some(spare)) => Target::Pair(PairArgs {
                main: main.clone(),
                spare: spare.clone(),
            }),
            // clap requires MAIN and SPARE without --control; an empty path fails to open
            // with a clear message should that ever change.
            _ => Target::Pair(PairArgs {
                main: self.main.clone().unwrap_or_default(),
                spare: self.spare.clone().unwrap_or_default(),
            }),
        }
    }
}

/// Changes to the persisted settings; each is optional. The same options serve
/// `remap create` (first values) and `remap set` (on a pair, or through the control socket).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct SettingArgs {
    /// Error rate (device errors per million data I/Os) at which health is degraded.
    #[arg(long, value_name = "PPM", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub error_rate_degraded: Option<u32>,
    /// Error rate at which health is critical.
    #[arg(long, value_name = "PPM", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub error_rate_critical: Option<u32>,
    /// Data I/Os before the error rate is judged (one early error is not a 100 % rate).
    #[arg(long, value_name = "N")]
    pub min_ios_for_rate: Option<u64>,
    /// Percent of the spare pool used or retired at which health is degraded.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub spare_used_degraded: Option<u8>,
    /// Percent of the spare pool used or retired at which health is critical.
    #[arg(long, value_name = "PCT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub spare_used_critical: Option<u8>,
    /// Pending (unreadable) blocks at which health is degraded.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pending_degraded: Option<u64>,
    /// Pending blocks at which health is critical.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub pending_critical: Option<u64>,
    /// Extra attempts for a failing read before its block is declared pending (0 to 16).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=16))]
    pub read_retries: Option<u32>,
}

impl SettingArgs {
    /// The changes as the service takes them.
    pub fn changes(&self) -> SettingChanges {
        SettingChanges {
            error_rate_degraded: self.error_rate_degraded,
            error_rate_critical: self.error_rate_critical,
            min_ios_for_rate: self.min_ios_for_rate,
            spare_used_degraded: self.spare_used_degraded,
            spare_used_critical: self.spare_used_critical,
            pending_degraded: self.pending_degraded,
            pending_critical: self.pending_critical,
            read_retries: self.read_retries,
        }
    }
}
