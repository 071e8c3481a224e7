//! Whether MAIN and SPARE share storage, so that writing the spare would overwrite main.
//!
//! Each device is followed down to what finally stores its bytes, as sysfs describes it:
//!
//! - a loop device to its backing file (`loop/backing_file`, `loop/offset`,
//!   `loop/sizelimit`), with the byte range it covers;
//! - a partition to its disk (`partition`, `start`);
//! - a stacked device (device-mapper, md) to every device under it (`slaves/`);
//! - a regular file is itself (device and inode).
//!
//! Two devices share storage when they reach the same file at overlapping byte ranges, or
//! the same disk at all (two partitions of one failing disk fail together; device-mapper
//! tables are not in sysfs, so a stacked device is taken to cover all of each device under
//! it), or two disks with the same WWN or serial number (two paths to one disk), or when one
//! is stacked on the other (`holders/`). Paths that cannot be followed (a device without a
//! sysfs entry) end where they are: the check refuses only what it can show.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use remap_meta::{DeviceIdentity, IdentityKind};

/// Bytes per sector in sysfs `start` and `size` files, whatever the device's block size.
const SYSFS_SECTOR: u64 = 512;
/// How deep a stack of devices is followed (a cycle would otherwise never end).
const MAX_DEPTH: usize = 16;

/// Where some bytes of a device finally live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backing {
    /// A regular file, by device and inode.
    File { dev: u64, ino: u64 },
    /// A disk, by `major:minor`.
    Disk { major: u32, minor: u32 },
}

/// A run of bytes of a [`Backing`], and how the named device got there.
#[derive(Debug, Clone)]
struct Extent {
    backing: Backing,
    start: u64,
    /// Exclusive; `u64::MAX` for "to the end".
    end: u64,
    identity: DeviceIdentity,
    /// Every block device on the way down, `major:minor`: two extents that passed through
    /// one device (two partitions of one disk) share it whatever their byte ranges.
    devices: Vec<(u32, u32)>,
    /// `/dev/loop1 -> backing file /tmp/main.img, bytes 1048576 to the end`.
    via: String,
}

/// MAIN and SPARE share storage.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    #[error("{} and {} share storage ({why}); the spare must be a different device or file: formatting or writing it would overwrite the main device", main.display(), spare.display())]
    Shared {
        main: PathBuf,
        spare: PathBuf,
        why: String,
    },
}

fn read_trimmed(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn read_u64(p: &Path) -> Option<u64> {
    read_trimmed(p)?.parse().ok()
}

/// `major:minor` from a sysfs `dev` file.
fn read_dev(p: &Path) -> Option<(u32, u32)> {
    let text = read_trimmed(p)?;
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn range_text(start: u64, end: u64) -> String {
    if end == u64::MAX {
        format!("bytes {start} to the end")
    } else {
        format!("bytes {start} to {end}")
    }
}

/// The sysfs tree to read (`/sys`, or a fake one in tests).
#[derive(Debug, Clone)]
pub struct Sysfs {
    root: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            root: PathBuf::from("/sys"),
        }
    }
}

impl Sysfs {
    pub fn at(root: impl Into<PathBuf>) -> Sysfs {
        Sysfs { root: root.into() }
    }

    fn dev_dir(&self, major: u32, minor: u32) -> PathBuf {
        self.root.join(format!("dev/block/{major}:{minor}"))
    }

    /// The kernel's name of a block device (`loop0`, `sda1`), for messages.
    fn name(&self, major: u32, minor: u32) -> String {
        let dir = self.dev_dir(major, minor);
        fs::read_to_string(dir.join("uevent"))
            .ok()
            .and_then(|u| {
                u.lines()
                    .find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string))
            })
            .or_else(|| {
                fs::canonicalize(&dir)
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            })
            .unwrap_or_else(|| format!("{major}:{minor}"))
    }

    /// Every extent the device at `path` reaches.
    fn extents_of_path(&self, path: &Path) -> Vec<Extent> {
        let Ok(meta) = fs::metadata(path) else {
            return Vec::new();
        };
        if meta.file_type().is_block_device() {
            let (major, minor) = (
                rustix::fs::major(meta.rdev()),
                rustix::fs::minor(meta.rdev()),
            );
            let mut out = Vec::new();
            let via = path.display().to_string();
            self.extents_of_dev(major, minor, 0, u64::MAX, &via, 0, &mut out);
            out
        } else {
            vec![Extent {
                backing: Backing::File {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
                start: 0,
                end: u64::MAX,
                identity: DeviceIdentity::NONE,
                devices: Vec::new(),
                via: format!("file {}", path.display()),
            }]
        }
    }

    /// Follow block device `major:minor`, of which bytes `start..end` are of interest.
    #[allow(clippy::too_many_arguments)]
    fn extents_of_dev(
        &self,
        major: u32,
        minor: u32,
        start: u64,
        end: u64,
        via: &str,
        depth: usize,
        out: &mut Vec<Extent>,
    ) {
        let mark = out.len();
        self.follow(major, minor, start, end, via, depth, out);
        for e in &mut out[mark..] {
            e.devices.push((major, minor));
        }
    }

    /// [`Self::extents_of_dev`] without recording the device itself.
    #[allow(clippy::too_many_arguments)]
    fn follow(
        &self,
        major: u32,
        minor: u32,
        start: u64,
        end: u64,
        via: &str,
        depth: usize,
        out: &mut Vec<Extent>,
    ) {
        let dir = self.dev_dir(major, minor);
        let leaf = |out: &mut Vec<Extent>, via: String| {
            out.push(Extent {
                backing: Backing::Disk { major, minor },
                start,
                end,
                identity: remap_meta::identity::identify_dev(&self.root, major, minor),
                devices: Vec::new(),
                via,
            });
        };
        if depth >= MAX_DEPTH {
            return leaf(out, via.to_string());
        }
        if let Some(file) = read_trimmed(&dir.join("loop/backing_file")) {
            let file = file.strip_suffix(" (deleted)").unwrap_or(&file).to_string();
            let offset = read_u64(&dir.join("loop/offset")).unwrap_or(0);
            let limit = read_u64(&dir.join("loop/sizelimit")).unwrap_or(0);
            let loop_end = if limit == 0 {
                u64::MAX
            } else {
                offset.saturating_add(limit)
            };
            let (s, e) = (
                offset.saturating_add(start),
                offset.saturating_add(end).min(loop_end),
            );
            let via = format!(
                "{via} -> loop device {} over {file}, {}",
                self.name(major, minor),
                range_text(s, e)
            );
            match fs::metadata(&file) {
                Ok(m) if m.file_type().is_block_device() => self.extents_of_dev(
                    rustix::fs::major(m.rdev()),
                    rustix::fs::minor(m.rdev()),
                    s,
                    e,
                    &via,
                    depth + 1,
                    out,
                ),
                Ok(m) => out.push(Extent {
                    backing: Backing::File {
                        dev: m.dev(),
                        ino: m.ino(),
                    },
                    start: s,
                    end: e,
                    identity: DeviceIdentity::NONE,
                    devices: Vec::new(),
                    via,
                }),
                // The backing file is gone or unreachable: nothing else can reach it.
                Err(_) => {}
            }
            return;
        }
        if let Some(first) = read_u64(&dir.join("start"))
            && dir.join("partition").exists()
            && let Some((pmajor, pminor)) = read_dev(&dir.join("../dev"))
        {
            let base = first.saturating_mul(SYSFS_SECTOR);
            let part_end = read_u64(&dir.join("size")).map_or(u64::MAX, |n| {
                base.saturating_add(n.saturating_mul(SYSFS_SECTOR))
            });
            let via = format!(
                "{via} -> partition {} of disk {}",
                self.name(major, minor),
                self.name(pmajor, pminor)
            );
            return self.extents_of_dev(
                pmajor,
                pminor,
                base.saturating_add(start),
                base.saturating_add(end).min(part_end),
                &via,
                depth + 1,
                out,
            );
        }
        let slaves = self.linked_devs(&dir.join("slaves"));
        if slaves.is_empty() {
            return leaf(out, format!("{via} -> disk {}", self.name(major, minor)));
        }
        for (smajor, sminor) in slaves {
            // The mapping table is not in sysfs: take all of each device underneath.
            let via = format!(
                "{via} -> {} built on {}",
                self.name(major, minor),
                self.name(smajor, sminor)
            );
            self.extents_of_dev(smajor, sminor, 0, u64::MAX, &via, depth + 1, out);
        }
    }

    /// The devices linked from a `slaves/` or `holders/` directory.
    fn linked_devs(&self, dir: &Path) -> Vec<(u32, u32)> {
        let Ok(entries) = fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut devs: Vec<(u32, u32)> = entries
            .flatten()
            .filter_map(|e| read_dev(&e.path().join("dev")))
            .collect();
        devs.sort_unstable();
        devs
    }

    /// Every device stacked on `major:minor`, at any depth.
    fn holders(&self, major: u32, minor: u32) -> BTreeSet<(u32, u32)> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![(major, minor)];
        while let Some((ma, mi)) = todo.pop() {
            for h in self.linked_devs(&self.dev_dir(ma, mi).join("holders")) {
                if seen.len() < 1024 && seen.insert(h) {
                    todo.push(h);
                }
            }
        }
        seen
    }
}

fn block_dev(path: &Path) -> Option<(u32, u32)> {
    let meta = fs::metadata(path).ok()?;
    meta.file_type().is_block_device().then(|| {
        (
            rustix::fs::major(meta.rdev()),
            rustix::fs::minor(meta.rdev()),
        )
    })
}

/// Why `a` and `b` are the same storage, if they are.
fn clash(a: &Extent, b: &Extent) -> Option<&'static str> {
    if a.devices.iter().any(|d| b.devices.contains(d)) {
        return Some("the same disk");
    }
    match (a.backing, b.backing) {
        (Backing::File { .. }, Backing::File { .. })
            if a.backing == b.backing && a.start < b.end && b.start < a.end =>
        {
            Some("overlapping bytes of the same file")
        }
        (Backing::Disk { .. }, Backing::Disk { .. }) if a.backing == b.backing => {
            Some("the same disk")
        }
        (Backing::Disk { .. }, Backing::Disk { .. })
            if a.identity.kind != IdentityKind::None && a.identity == b.identity =>
        {
            Some("disks with the same WWN or serial number: two paths to one disk")
        }
        _ => None,
    }
}

impl Sysfs {
    /// Refuse MAIN and SPARE that share storage. `refuse_shared` with `/sys`.
    pub fn refuse_shared(&self, main: &Path, spare: &Path) -> Result<(), StorageError> {
        let shared = |why: String| StorageError::Shared {
            main: main.to_path_buf(),
            spare: spare.to_path_buf(),
            why,
        };
        if let (Some(m), Some(s)) = (block_dev(main), block_dev(spare)) {
            if self.holders(m.0, m.1).contains(&s) {
                return Err(shared(format!(
                    "{} is stacked on {} (sysfs holders)",
                    spare.display(),
                    main.display()
                )));
            }
            if self.holders(s.0, s.1).contains(&m) {
                return Err(shared(format!(
                    "{} is stacked on {} (sysfs holders)",
                    main.display(),
                    spare.display()
                )));
            }
        }
        let main_extents = self.extents_of_path(main);
        let spare_extents = self.extents_of_path(spare);
        for a in &main_extents {
            for b in &spare_extents {
                if let Some(what) = clash(a, b) {
                    return Err(shared(format!("{what}: MAIN {}; SPARE {}", a.via, b.via)));
                }
            }
        }
        Ok(())
    }
}

/// Refuse MAIN and SPARE that share storage, as `/sys` describes them.
pub fn refuse_shared(main: &Path, spare: &Path) -> Result<(), StorageError> {
    Sysfs::default().refuse_shared(main, spare)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake sysfs: `dev/block/M:m` links to `devices/NAME`, which has `dev` and `uevent`.
    struct Fake {
        root: tempfile::TempDir,
    }

    impl Fake {
        fn new() -> Fake {
            let root = tempfile::tempdir().unwrap();
            fs::create_dir_all(root.path().join("dev/block")).unwrap();
            Fake { root }
        }

        fn sysfs(&self) -> Sysfs {
            Sysfs::at(self.root.path())
        }

        fn file(&self, rel: &str, content: &str) {
            let p = self.root.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }

        /// A block device at `devices/DIR` (DIR may nest, for partitions).
        fn dev(&self, dir: &str, major: u32, minor: u32) -> PathBuf {
            let d = self.root.path().join("devices").join(dir);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("dev"), format!("{major}:{minor}\n")).unwrap();
            let name = dir.rsplit('/').next().unwrap();
            fs::write(d.join("uevent"), format!("DEVNAME={name}\n")).unwrap();
            std::os::unix::fs::symlink(
                &d,
                self.root.path().join(format!("dev/block/{major}:{minor}")),
            )
            .unwrap();
            d
        }

        /// `upper` is stacked on `lower`: `upper/slaves/lower` and `lower/holders/upper`.
        fn stack(&self, upper: &str, lower: &str) {
            let dev = |n: &str| self.root.path().join("devices").join(n);
            let leaf = |n: &str| n.rsplit('/').next().unwrap().to_string();
            fs::create_dir_all(dev(upper).join("slaves")).unwrap();
            fs::create_dir_all(dev(lower).join("holders")).unwrap();
            std::os::unix::fs::symlink(dev(lower), dev(upper).join("slaves").join(leaf(lower)))
                .unwrap();
            std::os::unix::fs::symlink(dev(upper), dev(lower).join("holders").join(leaf(upper)))
                .unwrap();
        }

        fn extents(&self, major: u32, minor: u32) -> Vec<Extent> {
            let mut out = Vec::new();
            self.sysfs()
                .extents_of_dev(major, minor, 0, u64::MAX, "x", 0, &mut out);
            out
        }

        fn shared(&self, a: (u32, u32), b: (u32, u32)) -> Option<&'static str> {
            let (ea, eb) = (self.extents(a.0, a.1), self.extents(b.0, b.1));
            ea.iter().find_map(|x| eb.iter().find_map(|y| clash(x, y)))
        }
    }

    #[test]
    fn partitions_of_one_disk_share_it_and_other_disks_do_not() {
        let f = Fake::new();
        f.dev("sda", 8, 0);
        f.dev("sda/sda1", 8, 1);
        f.file("devices/sda/sda1/partition", "1\n");
        f.file("devices/sda/sda1/start", "2048\n");
        f.dev("sda/sda2", 8, 2);
        f.file("devices/sda/sda2/partition", "2\n");
        f.file("devices/sda/sda2/start", "1050624\n");
        f.dev("sdb", 8, 16);
        assert_eq!(f.shared((8, 1), (8, 2)), Some("the same disk"));
        assert_eq!(f.shared((8, 0), (8, 2)), Some("the same disk"));
        assert_eq!(f.shared((8, 1), (8, 16)), None);
        let e = f.extents(8, 2);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].start, 1050624 * 512);
        assert!(
            e[0].via.contains("partition sda2 of disk sda"),
            "{}",
            e[0].via
        );
    }

    #[test]
    fn device_mapper_slaves_and_holders_are_followed() {
        let f = Fake::new();
        f.dev("sda", 8, 0);
        f.dev("sdb", 8, 16);
        f.dev("dm-0", 253, 0);
        f.stack("dm-0", "sda");
        f.dev("dm-1", 253, 1);
        f.stack("dm-1", "dm-0");
        assert_eq!(f.shared((253, 1), (8, 0)), Some("the same disk"));
        assert_eq!(f.shared((253, 1), (8, 16)), None);
        let via = &f.extents(253, 1)[0].via;
        assert!(
            via.contains("dm-1 built on dm-0") && via.contains("dm-0 built on sda"),
            "{via}"
        );
        assert!(f.sysfs().holders(8, 0).contains(&(253, 1)));
        assert!(f.sysfs().holders(8, 16).is_empty());
    }

    #[test]
    fn the_same_wwn_or_serial_is_the_same_disk() {
        let f = Fake::new();
        f.dev("sda", 8, 0);
        f.file("devices/sda/device/wwid", "naa.5000c500a1b2c3d4\n");
        f.dev("sdb", 8, 16);
        f.file("devices/sdb/device/wwid", "naa.5000c500a1b2c3d4\n");
        f.dev("sdc", 8, 32);
        f.file("devices/sdc/device/serial", "WD-1\n");
        f.dev("sdd", 8, 48);
        f.file("devices/sdd/device/serial", "WD-2\n");
        assert_eq!(
            f.shared((8, 0), (8, 16)),
            Some("disks with the same WWN or serial number: two paths to one disk")
        );
        assert_eq!(f.shared((8, 32), (8, 48)), None);
        assert_eq!(f.shared((8, 0), (8, 32)), None);
    }

    #[test]
    fn loop_devices_share_a_file_only_where_their_ranges_overlap() {
        let f = Fake::new();
        let backing = f.root.path().join("disk.img");
        fs::write(&backing, vec![0u8; 4096]).unwrap();
        let b = backing.to_str().unwrap();
        for (minor, offset, limit) in [(0, 0, 1 << 20), (1, 1 << 20, 0), (2, 512 << 10, 4096)] {
            let name = format!("loop{minor}");
            f.dev(&name, 7, minor);
            f.file(
                &format!("devices/{name}/loop/backing_file"),
                &format!("{b}\n"),
            );
            f.file(
                &format!("devices/{name}/loop/offset"),
                &format!("{offset}\n"),
            );
            f.file(
                &format!("devices/{name}/loop/sizelimit"),
                &format!("{limit}\n"),
            );
        }
        assert_eq!(f.shared((7, 0), (7, 1)), None, "[0, 1M) and [1M, end)");
        assert_eq!(
            f.shared((7, 0), (7, 2)),
            Some("overlapping bytes of the same file")
        );
        assert_eq!(f.shared((7, 1), (7, 2)), None);
        // A deleted backing file is nothing another device can reach.
        f.file(
            "devices/loop1/loop/backing_file",
            "/nonexistent (deleted)\n",
        );
        assert!(f.extents(7, 1).is_empty());
    }

    #[test]
    fn a_cycle_ends() {
        let f = Fake::new();
        f.dev("dm-0", 253, 0);
        f.dev("dm-1", 253, 1);
        f.stack("dm-0", "dm-1");
        f.stack("dm-1", "dm-0");
        assert!(!f.extents(253, 0).is_empty());
        assert!(f.sysfs().holders(253, 0).len() <= 2);
    }
}
