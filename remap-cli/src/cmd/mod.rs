//! One module per subcommand. Each holds its clap arguments (`Args`, whose doc comments are
//! the `--help` text) and a `run` that writes its report to the given output.
//!
//! Later subcommands (`scrub`, `health`) slot in the same way: a module here, a
//! variant in [`crate::Command`], and the shared opening code in [`crate::devices`].

use std::path::PathBuf;

pub mod check;
pub mod create;
pub mod dump;
pub mod map;
pub mod serve;
pub mod status;
pub mod transfer;
pub mod unmap;

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
