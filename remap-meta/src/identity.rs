//! Who the main device is. A spare formatted for one disk must never be used with another:
//! the superblock records the main device's size and, for a block device, a stable identity
//! read from sysfs (WWN, serial number, or a device-mapper UUID). Regular files have no
//! stable identity; for them only the size is checked.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::superblock::{DeviceIdentity, IdentityKind};

/// The identity of the device at `path`, read from `/sys`.
pub fn identify(path: &Path) -> DeviceIdentity {
    identify_in(Path::new("/sys"), path)
}

/// [`identify`] against another sysfs root (for tests).
pub fn identify_in(sysfs: &Path, path: &Path) -> DeviceIdentity {
    let Ok(meta) = fs::metadata(path) else {
        return DeviceIdentity::NONE;
    };
    if !meta.file_type().is_block_device() {
        return DeviceIdentity::NONE;
    }
    let (major, minor) = (
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev()),
    );
    identify_dev(sysfs, major, minor)
}

fn read_trimmed(p: PathBuf) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Identity of block device `major:minor` under `sysfs`. A partition is identified by its
/// disk's identity plus its partition number.
pub fn identify_dev(sysfs: &Path, major: u32, minor: u32) -> DeviceIdentity {
    let dev = sysfs.join(format!("dev/block/{major}:{minor}"));
    let (disk, suffix) = match read_trimmed(dev.join("partition")) {
        // /sys/dev/block/M:m of a partition links to .../sda/sda1: the disk is the parent.
        Some(n) => (dev.join(".."), format!("-part{n}")),
        None => (dev.clone(), String::new()),
    };
    let candidates = [
        (IdentityKind::Wwid, disk.join("wwid")),
        (IdentityKind::Wwid, disk.join("device/wwid")),
        (IdentityKind::DmUuid, disk.join("dm/uuid")),
        (IdentityKind::Serial, disk.join("device/serial")),
        (IdentityKind::Serial, disk.join("serial")),
    ];
    for (kind, p) in candidates {
        if let Some(v) = read_trimmed(p) {
            return DeviceIdentity::new(kind, format!("{v}{suffix}").as_bytes());
        }
    }
    DeviceIdentity::NONE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wwid_serial_and_dm_uuid_from_a_sysfs_tree() {
        let root = tempfile::tempdir().unwrap();
        let mk = |rel: &str, content: &str| {
            let p = root.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        };
        mk("dev/block/8:0/device/wwid", "naa.5000c500a1b2c3d4\n");
        mk("dev/block/8:16/device/serial", "  WD-WCC4N1234567 \n");
        mk("dev/block/253:2/dm/uuid", "LVM-abc\n");
        mk("dev/block/9:9/size", "100\n");
        let id = identify_dev(root.path(), 8, 0);
        assert_eq!(
            (id.kind, id.value()),
            (IdentityKind::Wwid, &b"naa.5000c500a1b2c3d4"[..])
        );
        let id = identify_dev(root.path(), 8, 16);
        assert_eq!(
            (id.kind, id.value()),
            (IdentityKind::Serial, &b"WD-WCC4N1234567"[..])
        );
        assert_eq!(identify_dev(root.path(), 253, 2).kind, IdentityKind::DmUuid);
        assert_eq!(identify_dev(root.path(), 9, 9), DeviceIdentity::NONE);
    }

    #[test]
    fn partitions_carry_their_number() {
        let root = tempfile::tempdir().unwrap();
        let disk = root.path().join("devices/sda");
        fs::create_dir_all(disk.join("sda1")).unwrap();
        fs::create_dir_all(disk.join("device")).unwrap();
        fs::write(disk.join("device/wwid"), "naa.1\n").unwrap();
        fs::write(disk.join("sda1/partition"), "1\n").unwrap();
        fs::create_dir_all(root.path().join("dev/block")).unwrap();
        std::os::unix::fs::symlink(disk.join("sda1"), root.path().join("dev/block/8:1")).unwrap();
        let id = identify_dev(root.path(), 8, 1);
        assert_eq!(id.value(), b"naa.1-part1");
    }

    #[test]
    fn regular_files_have_no_identity() {
        let f = tempfile::NamedTempFile::new().unwrap();
        assert_eq!(identify(f.path()), DeviceIdentity::NONE);
    }
}
