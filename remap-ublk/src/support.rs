//! Whether this kernel offers ublk, asked before anything else is opened, so that a kernel
//! without it gets one clear line and nothing is touched.
//!
//! ublk is the `ublk_drv` driver (Linux 6.0 on; in Debian's 6.12 kernel as a module, not
//! built in Debian's 6.1). Its control device `/dev/ublk-control` exists once the module is
//! loaded; if it is missing, `modprobe ublk_drv` is tried once (as `losetup` loads `loop`).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::AttachError;

/// The ublk control device.
pub const CONTROL_DEVICE: &str = "/dev/ublk-control";

/// Succeeds when `control` exists, loading `ublk_drv` first if it does not.
pub fn check_kernel() -> Result<(), AttachError> {
    check_control(Path::new(CONTROL_DEVICE), true)
}

/// [`check_kernel`] for a given control path; `load` says whether to try `modprobe`.
pub fn check_control(control: &Path, load: bool) -> Result<(), AttachError> {
    if control.exists() {
        return Ok(());
    }
    if load {
        // Absent modprobe, or a module it cannot find, leaves the device missing: the
        // refusal below says so; modprobe's own words go to the log only.
        match Command::new("modprobe")
            .args(["-q", "ublk_drv"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(status) => tracing::debug!("modprobe ublk_drv: {status}"),
            Err(e) => tracing::debug!("modprobe ublk_drv: {e}"),
        }
        if wait_for(control) {
            return Ok(());
        }
    }
    Err(AttachError::NoUblk {
        kernel: kernel_release(),
        control: control.to_path_buf(),
    })
}

/// devtmpfs creates the node as the module registers it; give it a moment.
fn wait_for(control: &Path) -> bool {
    for _ in 0..20 {
        if control.exists() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    control.exists()
}

/// The running kernel's release, for the refusal.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_control_device_is_one_clear_line() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_control(&dir.path().join("ublk-control"), false).unwrap_err();
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.contains("has no ublk"), "{text}");
        assert!(text.contains("dm-remap-v4"), "{text}");
        assert!(text.contains("remap serve"), "{text}");
    }

    #[test]
    fn a_present_control_device_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ublk-control");
        std::fs::write(&path, b"").unwrap();
        check_control(&path, false).unwrap();
    }
}
