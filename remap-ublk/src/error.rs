//! Why attaching, recovering or detaching failed. Every message names the device it is
//! about.

use std::path::PathBuf;

use remap_core::DeviceError;
use remap_service::PairError;
use remap_service::control::ControlError;
use remap_service::metrics::MetricsError;

/// What to use instead on a kernel without ublk, in the refusal.
pub const INSTEAD: &str = "use the dm-remap-v4 kernel target (`remap activate NAME MAIN SPARE`) or `remap serve MAIN SPARE` with nbd-client";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttachError {
    /// The kernel has no ublk driver. Nothing was opened.
    #[error("this kernel ({kernel}) has no ublk: {} is missing and the ublk_drv module could not be loaded; {INSTEAD}", control.display())]
    NoUblk { kernel: String, control: PathBuf },

    #[error(transparent)]
    Pair(#[from] PairError),

    #[error(transparent)]
    Control(#[from] ControlError),

    #[error(transparent)]
    Metrics(#[from] MetricsError),

    /// A ublk control command failed.
    #[error("{}: ublk {what} failed: {reason}", path.display())]
    Ublk {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },

    /// `--recover` found no ublk device left by an attach of this pair.
    #[error("{}: no ublk device left by an earlier `remap attach` of this pair to recover{}", path.display(), if found.is_empty() { String::new() } else { format!(" (ublk devices: {found})") })]
    NothingToRecover { path: PathBuf, found: String },

    /// `--recover` found the pair's device, but it is still served.
    #[error("{}: /dev/ublkb{id} is still served by pid {pid}; `remap detach /dev/ublkb{id}` stops it", path.display())]
    StillServed { path: PathBuf, id: u32, pid: i32 },

    /// A thread of the daemon could not be started.
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// The final flush and checkpoint failed. What was made durable is in the journal.
    #[error("{}: flush and checkpoint at detach failed: {source}", path.display())]
    Shutdown {
        path: PathBuf,
        #[source]
        source: DeviceError,
    },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DetachError {
    #[error(transparent)]
    Kernel(#[from] AttachError),

    /// The path does not name a ublk block device.
    #[error("{}: not a ublk block device (/dev/ublkbN)", path.display())]
    NotUblk { path: PathBuf },

    /// No such ublk device.
    #[error("{}: no such ublk device", path.display())]
    Missing { path: PathBuf },

    /// The ublk device was not made by `remap attach`.
    #[error("{}: not a remap device (its ublk target is {target:?}); use the tool that made it", path.display())]
    NotOurs { path: PathBuf, target: String },

    /// The serving daemon could not be told to stop.
    #[error("{}: cannot signal the serving daemon (pid {pid}): {source}", path.display())]
    Signal {
        path: PathBuf,
        pid: i32,
        #[source]
        source: std::io::Error,
    },

    /// The daemon did not finish in time.
    #[error("{}: still present {seconds} s after asking pid {pid} to detach", path.display())]
    Timeout {
        path: PathBuf,
        pid: i32,
        seconds: u64,
    },

    /// A ublk control command failed.
    #[error("{}: ublk {what} failed: {reason}", path.display())]
    Ublk {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
}

/// libublk's error as words: its `OtherError` carries a negative errno.
pub(crate) fn describe(e: &libublk::UblkError) -> String {
    match e {
        libublk::UblkError::OtherError(code) | libublk::UblkError::UringIOError(code) => {
            std::io::Error::from_raw_os_error(code.saturating_abs()).to_string()
        }
        other => other.to_string(),
    }
}
