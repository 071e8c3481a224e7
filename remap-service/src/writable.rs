//! Whether a device opened for writing will take writes. A block device can be read-only
//! (`losetup --read-only`, `blockdev --setro`, a write-protected medium) and still open for
//! writing; every write then fails. The kernel target refuses such a table at load; the
//! commands that write refuse at start the same way, before anything is served or moved.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A device that must take writes is read-only.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WritableError {
    #[error("{}: the {role} device is read-only (sysfs {}/ro is 1): every write to it would fail; make it writable (`blockdev --setrw`) or give another device", path.display(), sysfs.display())]
    ReadOnly {
        path: PathBuf,
        role: &'static str,
        sysfs: PathBuf,
    },
}

/// Refuse a block device whose sysfs `ro` flag is set. Files (and devices without a sysfs
/// entry) pass: opening them for writing already fails when they cannot be written.
pub fn refuse_read_only(path: &Path, role: &'static str) -> Result<(), WritableError> {
    refuse_read_only_in(Path::new("/sys"), path, role)
}

/// [`refuse_read_only`] against another sysfs root (for tests).
pub fn refuse_read_only_in(
    sysfs: &Path,
    path: &Path,
    role: &'static str,
) -> Result<(), WritableError> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    if !meta.file_type().is_block_device() {
        return Ok(());
    }
    let dir = sysfs.join(format!(
        "dev/block/{}:{}",
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev())
    ));
    let ro = fs::read_to_string(dir.join("ro")).unwrap_or_default();
    if ro.trim() == "1" {
        return Err(WritableError::ReadOnly {
            path: path.to_path_buf(),
            role,
            sysfs: dir,
        });
    }
    Ok(())
}
