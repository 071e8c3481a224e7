//! One module per subcommand. Each holds its clap arguments (`Args`, whose doc comments are
//! the `--help` text) and a `run` that writes its report to the given output.
//!
//! Commands that can also ask a running `remap serve` (`status`, `health`, `scrub`, `set`,
//! `map`) take either the pair or `--control PATH` ([`TargetArgs`]).

use std::path::PathBuf;

pub mod check;
pub mod create;
pub mod dump;
pub mod health;
pub mod map;
pub mod scrub;
pub mod serve;
pub mod set;
pub mod status;
pub mod transfer;
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
