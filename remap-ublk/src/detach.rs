//! `detach`: stop the daemon that serves a `/dev/ublkbN` (it drains, flushes, checkpoints
//! and removes the device, as on SIGTERM), or remove a device whose daemon died and that
//! nobody will recover (what the journal holds is recovered at the next open of the pair).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libublk::ctrl::UblkCtrl;

use crate::error::{DetachError, describe};
use crate::registry::{self, TARGET_NAME};
use crate::support;

/// What `detach` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detached {
    /// The serving daemon (this pid) finished and the device is gone.
    Stopped { device: PathBuf, pid: i32 },
    /// The device's daemon was dead; the device was removed.
    Removed { device: PathBuf },
}

/// Detach `path` (`/dev/ublkbN`), waiting up to `timeout` for the daemon to finish.
pub fn detach(path: &Path, timeout: Duration) -> Result<Detached, DetachError> {
    support::check_kernel()?;
    let resolved = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let id = registry::parse_block_path(&resolved).ok_or_else(|| DetachError::NotUblk {
        path: path.to_path_buf(),
    })?;
    let dev = registry::describe(id).ok_or_else(|| DetachError::Missing {
        path: path.to_path_buf(),
    })?;
    if dev.target.as_deref() != Some(TARGET_NAME) {
        return Err(DetachError::NotOurs {
            path: path.to_path_buf(),
            target: dev.target.unwrap_or_else(|| "unknown".into()),
        });
    }
    let device = dev.block_path();
    if dev.awaits_recovery() {
        let ctrl = UblkCtrl::new_simple(id as i32).map_err(|e| DetachError::Ublk {
            path: path.to_path_buf(),
            what: "open",
            reason: describe(&e),
        })?;
        ctrl.del_dev().map_err(|e| DetachError::Ublk {
            path: path.to_path_buf(),
            what: "delete",
            reason: describe(&e),
        })?;
        return Ok(Detached::Removed { device });
    }
    let pid = dev.daemon_pid;
    let target = rustix::process::Pid::from_raw(pid).ok_or_else(|| DetachError::Signal {
        path: path.to_path_buf(),
        pid,
        source: std::io::Error::from_raw_os_error(rustix::io::Errno::SRCH.raw_os_error()),
    })?;
    rustix::process::kill_process(target, rustix::process::Signal::TERM).map_err(|e| {
        DetachError::Signal {
            path: path.to_path_buf(),
            pid,
            source: e.into(),
        }
    })?;
    let sys_block = PathBuf::from(format!("/sys/block/ublkb{id}"));
    let char_dev = PathBuf::from(format!("/sys/class/ublk-char/ublkc{id}"));
    let start = Instant::now();
    // Gone when the device is deleted and the daemon has exited (after its checkpoint).
    while sys_block.exists() || char_dev.exists() || process_runs(pid) {
        if start.elapsed() >= timeout {
            return Err(DetachError::Timeout {
                path: path.to_path_buf(),
                pid,
                seconds: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Detached::Stopped { device, pid })
}

/// Whether `pid` is a process that has not exited (a zombie has).
fn process_runs(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}
