//! The one error type of the `remap` command and the one place errors become exit codes.
//!
//! Every message is one line of the form `DEVICE: [block N: ]cause`, so that `main` prints
//! `remap: ` in front of it and nothing else: no Debug dumps, no source chains repeated
//! (each variant's text already includes its cause), no backtraces. The service's errors
//! are wrapped as they are; where the command line has something to add (the option that
//! would help, the command to run first), [`hint`] adds it here, in the command line's
//! terms, so the library's messages name no option.

use std::io;
use std::path::PathBuf;

use remap_core::{DeviceError, HealthState};
use remap_meta::open::MetaError;
use remap_service::ServeError;
use remap_service::activation::ActivationError;
use remap_service::blocks::OutOfRange;
use remap_service::budget::BudgetError;
use remap_service::control::ControlError;
use remap_service::devices::PairError;
use remap_service::probe::ProbeError;
use remap_service::scrub::ScrubError;
use remap_service::settings::SettingsError;
use remap_service::signatures::SignaturesError;
use remap_service::smart::SmartError;
use remap_service::transfer::{BlockError, TransferError};

use crate::units;

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status when an operation failed or problems remain.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error (clap uses the same for its own errors).
pub const EXIT_USAGE: u8 = 2;
/// `remap health`'s exit status follows the monitoring plugin convention (Nagios, Icinga,
/// Sensu): 0 healthy, 1 degraded, 2 critical, 3 unknown (no verdict: a device could not be
/// opened or read). A usage error is 2 as for every command: a misconfigured check then
/// shows as critical, loud rather than silent.
pub const EXIT_HEALTH_DEGRADED: u8 = 1;
/// See [`EXIT_HEALTH_DEGRADED`].
pub const EXIT_HEALTH_CRITICAL: u8 = 2;
/// See [`EXIT_HEALTH_DEGRADED`].
pub const EXIT_HEALTH_UNKNOWN: u8 = 3;
/// Exit status when a command was stopped by SIGINT or SIGTERM (128 + SIGINT, as shells do).
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit status of `remap probe` when the device holds no remap metadata (not an error).
pub const EXIT_NOT_FOUND: u8 = 3;

/// Why a `remap` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The command line names something impossible for these devices. Nothing was changed.
    #[error("{message}")]
    Usage { message: String },

    /// A block number beyond the main device. Nothing was changed.
    #[error(transparent)]
    BlockOutOfRange(#[from] OutOfRange),

    /// Opening, inspecting or formatting the pair failed or was refused.
    #[error("{source}{}", hint_pair(.source))]
    Pair {
        #[from]
        source: PairError,
    },

    /// Formatting the spare device failed or was refused.
    #[error("{}: cannot format the spare device: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// The main device has no blocks to protect.
    #[error("{}: the main device is empty (0 bytes)", path.display())]
    EmptyMain { path: PathBuf },

    /// The spare device cannot hold the metadata and one spare block.
    #[error("{}: too small for a spare device: it has {}, and needs at least {} for the metadata (three superblock copies, a journal of {journal_blocks} blocks kept twice, two checkpoint areas) and one spare block", path.display(), units::bytes(*.spare_size), units::bytes(*.needed))]
    SpareTooSmall {
        path: PathBuf,
        spare_size: u64,
        needed: u64,
        journal_blocks: u32,
    },

    /// Moving one block failed or was refused.
    #[error("{source}{}", hint_block(.source))]
    Block {
        #[from]
        source: BlockError,
    },

    /// A `map` or `unmap` run failed.
    #[error("{source}{}", hint_transfer(.source))]
    Transfer {
        #[from]
        source: TransferError,
    },

    /// Some blocks of a `map --control` failed; each was reported on its own line before.
    #[error("{}: {failed} of {requested} blocks failed; see the messages above", path.display())]
    BlocksFailed {
        path: PathBuf,
        failed: u64,
        requested: u64,
    },

    /// The final flush and checkpoint failed. What was moved is in the journal, which
    /// recovery replays; the checkpoint only shortens that replay.
    #[error("{}: flush and checkpoint at exit failed: {source}", path.display())]
    Shutdown {
        path: PathBuf,
        #[source]
        source: DeviceError,
    },

    /// Verifying the spare device failed to run (an I/O error, not a finding).
    #[error("{}: cannot check the metadata: {source}", path.display())]
    Check {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// Repair refused or failed.
    #[error("{}: cannot repair the metadata: {source}", path.display())]
    Repair {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// `upgrade` refused or failed.
    #[error("{}: cannot upgrade the format: {source}", path.display())]
    Upgrade {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// `check` found problems that remain.
    #[error("{}: {problems} problem(s) remain{}", path.display(), if *.repairable > 0 { " (`remap check --repair` can fix the repairable ones)" } else { "" })]
    ProblemsRemain {
        path: PathBuf,
        problems: usize,
        repairable: usize,
    },

    /// Serving could not start or failed while serving.
    #[error("{source}{}", hint_serve(.source))]
    Serve {
        #[from]
        source: ServeError,
    },

    /// The `serve --demo` files could not be created.
    #[error("{}: cannot prepare the demo: {source}", path.display())]
    Demo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// SIGINT/SIGTERM could not be caught, so a clean stop would be impossible.
    #[error("cannot catch SIGINT, SIGTERM and SIGHUP: {source}")]
    Signals {
        #[source]
        source: io::Error,
    },

    /// Talking to a running server over its control socket failed, or it refused.
    #[error("{source}{}", hint_control(.source))]
    Control {
        #[from]
        source: ControlError,
    },

    /// A scrub stopped on an error other than an unreadable block.
    #[error("{}: {source}", path.display())]
    Scrub {
        path: PathBuf,
        #[source]
        source: ScrubError,
    },

    /// A scrub found unreadable blocks (now pending); each was reported before.
    #[error("{}: {count} unreadable block(s) found and marked pending; a write covering each whole block moves it to the spare", path.display())]
    UnreadableFound { path: PathBuf, count: u64 },

    /// Stopped by SIGINT or SIGTERM, cleanly; `what` says what was kept.
    #[error("interrupted: {what}")]
    Interrupted { what: String },

    /// Saving settings (thresholds, read retries) failed or they were refused.
    #[error(transparent)]
    Settings(#[from] SettingsError),

    /// SMART data could not be read or understood.
    #[error(transparent)]
    Smart(#[from] SmartError),

    /// `create` refused what the devices already hold, or could not probe them.
    #[error("{source}{}", hint_signatures(.source))]
    Signatures {
        #[from]
        source: SignaturesError,
    },

    /// A `map` needs more spare blocks than are free; nothing was moved.
    #[error("{source}{}", hint_budget(.source))]
    Budget {
        #[from]
        source: BudgetError,
    },

    /// Stopped in order by a signal or a failed write on stdout.
    #[error(transparent)]
    Stopped(#[from] crate::stop::Stopped),

    /// `remap health`: the verdict is not healthy (the report was printed).
    #[error("health is {state}")]
    Unhealthy { state: HealthState },

    /// `remap health` could not reach a verdict: exit 3 (unknown) instead of 1.
    #[error("{0}")]
    NoVerdict(Box<CliError>),

    /// `remap probe` could not read the device.
    #[error(transparent)]
    Probe(#[from] ProbeError),

    /// `remap probe` found no remap metadata on the device: an answer, not a failure.
    #[error("{}: no remap metadata found", path.display())]
    NothingFound { path: PathBuf },

    /// `remap table`, `activate` or `deactivate` failed or refused.
    #[error("{source}{}", hint_activation(.source))]
    Activation {
        #[from]
        source: ActivationError,
    },

    /// The boot configuration could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Remaptab {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// Lines of the boot configuration were skipped; each was reported before.
    #[error("{}: {bad} bad line(s) skipped; see the messages above", path.display())]
    RemaptabLines { path: PathBuf, bad: usize },

    /// The generator could not write its units.
    #[error(transparent)]
    Units(#[from] remap_service::boot_units::UnitsError),

    /// `remap attach` could not start, refused, or ended in failure.
    #[error(transparent)]
    Attach(#[from] remap_ublk::AttachError),

    /// `remap detach` failed or refused.
    #[error(transparent)]
    Detach(#[from] remap_ublk::DetachError),

    /// Writing the command's output failed (other than a closed pipe, which ends quietly).
    #[error("cannot write the output: {source}")]
    Output {
        #[source]
        source: io::Error,
    },
}

impl CliError {
    /// The exit status for this error: 2 for usage errors, 130 for an interruption, 1 for
    /// everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage { .. }
            | CliError::BlockOutOfRange(_)
            | CliError::Pair {
                source: PairError::SameDevice { .. } | PairError::SharedStorage(_),
            }
            | CliError::Serve {
                source:
                    ServeError::FaultOutOfRange(_)
                    | ServeError::TooManyFaultBlocks { .. }
                    | ServeError::Pair(PairError::SameDevice { .. } | PairError::SharedStorage(_)),
            } => EXIT_USAGE,
            CliError::Settings(e) if e.is_invalid() => EXIT_USAGE,
            CliError::Control {
                source: ControlError::UsageRefused { .. },
            } => EXIT_USAGE,
            CliError::Activation { source } if source.is_usage() => EXIT_USAGE,
            CliError::Interrupted { .. } => EXIT_INTERRUPTED,
            CliError::Stopped(s) => s.signal_exit_code().unwrap_or(EXIT_FAILED),
            CliError::Unhealthy { state } => match state {
                HealthState::Critical => EXIT_HEALTH_CRITICAL,
                _ => EXIT_HEALTH_DEGRADED,
            },
            CliError::NoVerdict(_) => EXIT_HEALTH_UNKNOWN,
            CliError::NothingFound { .. } => EXIT_NOT_FOUND,
            _ => EXIT_FAILED,
        }
    }

    /// Whether this is a write to a closed pipe (`remap dump | head`), which is not worth a
    /// message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Output { source } if source.kind() == io::ErrorKind::BrokenPipe)
    }
}

impl From<io::Error> for CliError {
    fn from(source: io::Error) -> Self {
        CliError::Output { source }
    }
}

/// The line printed for one block that failed while the others went on.
pub fn block_line(e: &BlockError) -> String {
    format!("{e}{}", hint_block(e))
}

/// What the command line adds to a pair error.
fn hint_pair(e: &PairError) -> &'static str {
    match e {
        PairError::NotFormatted { .. } => " (format it first with `remap create MAIN SPARE`)",
        _ => "",
    }
}

/// What the command line adds to a block error: the option that moves an unreadable block.
fn hint_block(e: &BlockError) -> &'static str {
    match e.source {
        DeviceError::Unreadable { .. } => " (pass --zero-unreadable to move it with zeroes)",
        _ => "",
    }
}

fn hint_transfer(e: &TransferError) -> &'static str {
    match e {
        TransferError::Stopped(b) => hint_block(b),
        TransferError::BlocksFailed { .. } => "; see the messages above",
        _ => "",
    }
}

/// What the command line adds to a refusal to format: the option that overrides it, where
/// one does.
fn hint_signatures(e: &SignaturesError) -> &'static str {
    match e {
        SignaturesError::SignaturesFound { .. } => ": wipe it first or pass --force",
        SignaturesError::MainHoldsMetadata { .. } => ". Refused even with --force",
        SignaturesError::Spawn { .. } | SignaturesError::Failed { .. } => {
            "; pass --force to format without probing"
        }
        _ => "",
    }
}

/// What the command line adds to a map that does not fit: the ways out.
fn hint_budget(e: &BudgetError) -> &'static str {
    match e {
        BudgetError::NotEnoughSpares { .. } => {
            ". Name fewer blocks, free spares with `remap unmap`, or pass --partial to move as many as fit"
        }
        _ => "",
    }
}

fn hint_serve(e: &ServeError) -> &'static str {
    match e {
        ServeError::Pair(p) => hint_pair(p),
        _ => "",
    }
}

fn hint_activation(e: &ActivationError) -> &'static str {
    match e {
        ActivationError::ModuleNotLoaded => " (load it with `modprobe dm_remap`)",
        ActivationError::Pair(p) => hint_pair(p),
        _ => "",
    }
}

fn hint_control(e: &ControlError) -> &'static str {
    match e {
        ControlError::Connect { .. } => " (is `remap serve --control PATH` running?)",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_others_exit_1() {
        let e = CliError::from(OutOfRange {
            path: "/dev/sdb".into(),
            lba: 10,
            blocks: 10,
            block_size: 4096,
        });
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert_eq!(
            e.to_string(),
            "/dev/sdb: block 10 is beyond the end of the device (10 blocks of 4096 bytes, numbered 0 to 9)"
        );
        let e = CliError::from(BlockError {
            path: "/dev/sdb".into(),
            lba: 1234,
            source: DeviceError::MainStillFailing {
                lba: 1234,
                reason: "write failed".into(),
            },
        });
        assert_eq!(e.exit_code(), EXIT_FAILED);
        let text = e.to_string();
        assert!(text.starts_with("/dev/sdb: block 1234: the main device still fails there"));
        assert!(!text.contains('\n'));
    }

    #[test]
    fn the_command_line_names_the_option_that_moves_an_unreadable_block() {
        let e = CliError::from(BlockError {
            path: "/m".into(),
            lba: 7,
            source: DeviceError::Unreadable {
                lba: 7,
                reason: "read failed".into(),
            },
        });
        let text = e.to_string();
        assert!(text.contains("--zero-unreadable"), "{text}");
        assert_eq!(text.matches("block 7").count(), 1, "{text}");
        assert!(!text.contains('\n'));
    }
}
