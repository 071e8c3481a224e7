//! The ublk devices this kernel holds and which pair each serves: what `--recover` and
//! `remap detach` look up. The kernel knows each device's state and daemon pid; the pair
//! is in the target data `remap attach` records in libublk's run file
//! (`/run/ublksrvd/NNNN.json`), with the target name [`TARGET_NAME`].

use std::path::{Path, PathBuf};

use libublk::ctrl::UblkCtrl;
use libublk::sys;
use serde::{Deserialize, Serialize};

/// The ublk target name of a device made by `remap attach`.
pub const TARGET_NAME: &str = "remap";

/// What `remap attach` records about the pair it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetData {
    pub main: PathBuf,
    pub spare: PathBuf,
    pub block_size: u32,
}

/// One ublk device as the kernel and the run file describe it.
#[derive(Debug, Clone)]
pub struct UblkDevice {
    pub id: u32,
    /// `UBLK_S_DEV_*`.
    pub state: u16,
    /// The serving daemon's pid (that of a dead daemon after a crash).
    pub daemon_pid: i32,
    pub queues: u16,
    pub depth: u16,
    /// The target name, when the run file is there.
    pub target: Option<String>,
    pub data: Option<TargetData>,
}

impl UblkDevice {
    pub fn block_path(&self) -> PathBuf {
        PathBuf::from(format!("/dev/ublkb{}", self.id))
    }

    /// Whether the kernel waits for a daemon to recover the device (its own died).
    pub fn awaits_recovery(&self) -> bool {
        u32::from(self.state) == sys::UBLK_S_DEV_QUIESCED
            || u32::from(self.state) == sys::UBLK_S_DEV_FAIL_IO
    }

    pub fn state_name(&self) -> &'static str {
        match u32::from(self.state) {
            sys::UBLK_S_DEV_DEAD => "dead",
            sys::UBLK_S_DEV_LIVE => "live",
            sys::UBLK_S_DEV_QUIESCED => "quiesced",
            sys::UBLK_S_DEV_FAIL_IO => "failing I/O",
            _ => "unknown",
        }
    }

    /// Whether it serves `main` (compared as given and canonicalised).
    pub fn serves(&self, main: &Path) -> bool {
        let Some(data) = &self.data else {
            return false;
        };
        if data.main == main {
            return true;
        }
        match (data.main.canonicalize(), main.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

/// The ids of the ublk devices (from `/sys/class/ublk-char/ublkcN`), ascending.
pub fn device_ids() -> Vec<u32> {
    let mut ids: Vec<u32> = std::fs::read_dir("/sys/class/ublk-char")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("ublkc"))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// Describe device `id`; `None` if it went away meanwhile.
pub fn describe(id: u32) -> Option<UblkDevice> {
    let ctrl = UblkCtrl::new_simple(i32::try_from(id).ok()?).ok()?;
    let info = ctrl.dev_info();
    let target = ctrl.get_target_type_from_json().ok();
    let data = ctrl
        .get_target_data_from_json()
        .and_then(|v| serde_json::from_value(v).ok());
    Some(UblkDevice {
        id,
        state: info.state,
        daemon_pid: info.ublksrv_pid,
        queues: info.nr_hw_queues,
        depth: info.queue_depth,
        target,
        data,
    })
}

/// Every ublk device.
pub fn devices() -> Vec<UblkDevice> {
    device_ids().into_iter().filter_map(describe).collect()
}

/// The id in `/dev/ublkbN` (or `ublkbN`).
pub fn parse_block_path(path: &Path) -> Option<u32> {
    path.file_name()?
        .to_str()?
        .strip_prefix("ublkb")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_paths_parse() {
        assert_eq!(parse_block_path(Path::new("/dev/ublkb3")), Some(3));
        assert_eq!(parse_block_path(Path::new("ublkb12")), Some(12));
        assert_eq!(parse_block_path(Path::new("/dev/ublkc3")), None);
        assert_eq!(parse_block_path(Path::new("/dev/sda")), None);
        assert_eq!(parse_block_path(Path::new("/dev/ublkbx")), None);
    }
}
