//! The one error type of the `remap` command and the one place errors become exit codes.
//!
//! Every message is one line of the form `DEVICE: [block N: ]cause`, so that `main` prints
//! `remap: ` in front of it and nothing else: no Debug dumps, no source chains repeated
//! (each variant's text already includes its cause), no backtraces.

use std::io;
use std::path::PathBuf;

use remap_core::DeviceError;
use remap_core::backend::OpenError;
use remap_meta::open::MetaError;

use crate::units;

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status when an operation failed or problems remain.
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error (clap uses the same for its own errors).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when a command was stopped by SIGINT or SIGTERM (128 + SIGINT, as shells do).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Which of the pair a device is, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Main,
    Spare,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Main => "main",
            Role::Spare => "spare",
        })
    }
}

/// Why a `remap` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The command line names something impossible for these devices (a block past the
    /// end, the same device twice). Nothing was changed.
    #[error("{message}")]
    Usage { message: String },

    /// A block number beyond the main device. Nothing was changed.
    #[error("{}: block {lba} is beyond the end of the device ({blocks} blocks of {block_size} bytes, numbered 0 to {})", path.display(), blocks.saturating_sub(1))]
    BlockOutOfRange {
        path: PathBuf,
        lba: u64,
        blocks: u64,
        block_size: u32,
    },

    /// Opening the main or spare device failed (missing, not a device, in use).
    #[error("{}: cannot open the {role} device: {}", path.display(), describe_open(.source))]
    OpenDevice {
        role: Role,
        path: PathBuf,
        #[source]
        source: OpenError,
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

    /// The spare device is smaller than the two superblocks, so it cannot hold metadata.
    #[error("{}: holds no remap metadata: it is {size} bytes, smaller than the two 4 KiB superblocks", path.display())]
    TooSmallForMetadata { path: PathBuf, size: u64 },

    /// The spare device cannot hold the metadata and one spare block.
    #[error("{}: too small for a spare device: it has {}, and needs at least {} for the metadata (three superblock copies, a journal of {journal_blocks} blocks kept twice, two checkpoint areas) and one spare block", path.display(), units::bytes(*.spare_size), units::bytes(*.needed))]
    SpareTooSmall {
        path: PathBuf,
        spare_size: u64,
        needed: u64,
        journal_blocks: u32,
    },

    /// The spare's metadata could not be read back into a table.
    #[error("{}: cannot read the remap metadata: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// The spare device holds no remap metadata at all.
    #[error("{}: holds no remap metadata (format it first with `remap create MAIN SPARE`)", path.display())]
    NotFormatted { path: PathBuf },

    /// The spare was formatted for another main device.
    #[error("{}: {source} (spare device {})", main.display(), spare.display())]
    WrongMain {
        main: PathBuf,
        spare: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// Opening the pair as a remapping device failed.
    #[error("{}: cannot open the device pair: {source}", path.display())]
    OpenPair {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// Moving one block failed or was refused.
    #[error("{}: block {lba}: {}", path.display(), describe_block(.source, .lba))]
    Block {
        path: PathBuf,
        lba: u64,
        #[source]
        source: DeviceError,
    },

    /// Some blocks of a `map` or `unmap` failed; each was reported on its own line before.
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

    /// The NBD server could not start or failed while serving.
    #[error("{}: cannot serve: {source}", path.display())]
    Serve {
        path: PathBuf,
        #[source]
        source: remap_nbd::ServerError,
    },

    /// The `serve --demo` files could not be created.
    #[error("{}: cannot prepare the demo: {source}", path.display())]
    Demo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// SIGINT/SIGTERM could not be caught, so a clean stop would be impossible.
    #[error("cannot catch SIGINT and SIGTERM: {source}")]
    Signals {
        #[source]
        source: io::Error,
    },

    /// Talking to a running server over its control socket failed, or it refused.
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),

    /// A scrub stopped on an error other than an unreadable block.
    #[error("{}: {source}", path.display())]
    Scrub {
        path: PathBuf,
        #[source]
        source: crate::scrub::ScrubError,
    },

    /// A scrub found unreadable blocks (now pending); each was reported before.
    #[error("{}: {count} unreadable block(s) found and marked pending; a write covering each whole block moves it to the spare", path.display())]
    UnreadableFound { path: PathBuf, count: u64 },

    /// Stopped by SIGINT or SIGTERM, cleanly; `what` says what was kept.
    #[error("interrupted: {what}")]
    Interrupted { what: String },

    /// Saving settings (thresholds, read retries) failed.
    #[error("{}: cannot save the settings: {source}", path.display())]
    Settings {
        path: PathBuf,
        #[source]
        source: DeviceError,
    },

    /// SMART data could not be read or understood.
    #[error(transparent)]
    Smart(#[from] crate::smart::SmartError),

    /// The metrics endpoint could not listen.
    #[error("{addr}: cannot serve metrics: {source}")]
    Metrics {
        addr: std::net::SocketAddr,
        #[source]
        source: io::Error,
    },

    /// A helper thread of the server could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: io::Error,
    },

    /// Writing the command's output failed (other than a closed pipe, which ends quietly).
    #[error("cannot write the output: {source}")]
    Output {
        #[source]
        source: io::Error,
    },
}

impl CliError {
    /// The exit status for this error: 2 for usage errors, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage { .. } | CliError::BlockOutOfRange { .. } => EXIT_USAGE,
            CliError::Interrupted { .. } => EXIT_INTERRUPTED,
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

/// The cause of an open failure without the path, which the message already starts with.
fn describe_open(e: &OpenError) -> String {
    match e {
        OpenError::Open { source, .. } => source.to_string(),
        OpenError::InUse { holder, .. } => match holder {
            Some(pid) => format!("in use by pid {pid}"),
            None => "in use by another process".to_string(),
        },
        OpenError::NotADevice { .. } => "neither a regular file nor a block device".to_string(),
        OpenError::Size { source, .. } => format!("cannot determine its size: {source}"),
        other => other.to_string(),
    }
}

/// The cause of a block operation failure, in the command line's terms, without the
/// `block N:` prefix the engine's messages carry (the message already starts with it).
fn describe_block(e: &DeviceError, lba: &u64) -> String {
    match e {
        DeviceError::Unreadable { reason, .. } => format!(
            "cannot be read on the main device, so it was not moved \
             (pass --zero-unreadable to move it with zeroes in place of its data): {reason}"
        ),
        DeviceError::MainStillFailing { reason, .. } => {
            format!("the main device still fails there, so the block stays on its spare: {reason}")
        }
        DeviceError::NotRemapped { .. } => "is not remapped".to_string(),
        DeviceError::AlreadyRemapped { spare, .. } => {
            format!("is already remapped to spare block {spare}")
        }
        DeviceError::SpareExhausted { pool, .. } => {
            format!("the spare pool is exhausted (all {pool} spare blocks are used or retired)")
        }
        DeviceError::SpareReadFailed { spare, source, .. } => format!(
            "spare block {spare} failed a read and was retired; the block is now pending: {source}"
        ),
        DeviceError::SpareWritesFailed { attempts, .. } => {
            format!("no spare block accepted the data after {attempts} attempts")
        }
        other => {
            let text = other.to_string();
            // Engine messages about a block start with "block N: " or "block N is ...";
            // ours already says "block N: ".
            let colon = format!("block {lba}: ");
            let space = format!("block {lba} ");
            if let Some(rest) = text.strip_prefix(&colon) {
                rest.to_string()
            } else if let Some(rest) = text.strip_prefix(&space) {
                rest.to_string()
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_errors_exit_2_and_others_exit_1() {
        let e = CliError::BlockOutOfRange {
            path: "/dev/sdb".into(),
            lba: 10,
            blocks: 10,
            block_size: 4096,
        };
        assert_eq!(e.exit_code(), EXIT_USAGE);
        assert_eq!(
            e.to_string(),
            "/dev/sdb: block 10 is beyond the end of the device (10 blocks of 4096 bytes, numbered 0 to 9)"
        );
        let e = CliError::Block {
            path: "/dev/sdb".into(),
            lba: 1234,
            source: DeviceError::MainStillFailing {
                lba: 1234,
                reason: "write failed".into(),
            },
        };
        assert_eq!(e.exit_code(), EXIT_FAILED);
        let text = e.to_string();
        assert!(text.starts_with("/dev/sdb: block 1234: the main device still fails there"));
        assert!(!text.contains('\n'));
    }

    #[test]
    fn in_use_names_the_pid_once() {
        let e = CliError::OpenDevice {
            role: Role::Spare,
            path: "/tmp/spare".into(),
            source: OpenError::InUse {
                path: "/tmp/spare".into(),
                holder: Some(42),
            },
        };
        assert_eq!(
            e.to_string(),
            "/tmp/spare: cannot open the spare device: in use by pid 42"
        );
    }

    #[test]
    fn engine_block_prefix_is_not_repeated() {
        let e = CliError::Block {
            path: "/m".into(),
            lba: 7,
            source: DeviceError::Pending { lba: 7 },
        };
        let text = e.to_string();
        assert_eq!(text.matches("block 7").count(), 1, "{text}");
    }
}
