//! Bringing a pair up as a `dm-remap-v4` device and taking it down again.
//!
//! [`activate`] refuses, before anything reaches the kernel: a bad name, a name already
//! taken, the target not registered (module not loaded), a device in use (mounted, held by
//! another device-mapper device, opened exclusively, or locked by a `remap` command), a
//! spare without remap metadata and a spare formatted for another main device. It opens
//! both devices to check this and writes nothing to either. [`deactivate`] refuses a device
//! that is not ours or is open, and otherwise flushes it, has the target write a checkpoint
//! and removes it.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use remap_core::backend::OpenError;
use serde::Serialize;

use crate::devices::{Access, Pair, PairError, Role};
use crate::dmsetup::{Dmsetup, DmsetupError};
use crate::settings::SettingChanges;
use crate::table_line::{DmName, NameError, TARGET, TableLine, TableLineError};

/// Why a pair could not be activated or a device deactivated. Each message names the device
/// or the device-mapper name it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    #[error(transparent)]
    Name(#[from] NameError),

    /// The kernel has no `dm-remap-v4` target: the module is not loaded.
    #[error(
        "the {TARGET} target is not registered in the kernel: the dm_remap module is not loaded"
    )]
    ModuleNotLoaded,

    /// A device-mapper device of this name exists already.
    #[error("{name}: a device-mapper device of this name exists already")]
    NameTaken { name: String },

    /// The main or spare device is held by someone else.
    #[error("{}: the {role} device is in use{}", path.display(), describe_holders(holders))]
    InUse {
        role: Role,
        path: PathBuf,
        /// What holds it, as far as sysfs and the lock say.
        holders: Vec<String>,
    },

    /// Opening or inspecting the pair failed or was refused (no metadata, another main).
    #[error(transparent)]
    Pair(PairError),

    #[error(transparent)]
    TableLine(#[from] TableLineError),

    /// A spare given as `UUID=` was not found, or not once.
    #[error(transparent)]
    Lookup(#[from] crate::spare_lookup::LookupError),

    /// `UUID=` followed by something that is not a UUID.
    #[error("'{value}' is not a UUID (expected UUID= and 8-4-4-4-12 hexadecimal digits)")]
    BadUuid { value: String },

    /// No device-mapper device of this name.
    #[error("{name}: no device-mapper device of this name")]
    NotFound { name: String },

    /// The device exists but is not a `dm-remap-v4` device of one segment.
    #[error("{name}: not a {TARGET} device (its table is '{table}')")]
    NotRemap { name: String, table: String },

    /// The device is open (mounted, held by another device, or opened by a process).
    #[error(
        "{name}: the device is in use (open count {open}); unmount it or stop what holds it first"
    )]
    Busy { name: String, open: u64 },

    /// Flushing the device before removing it failed; it was left in place.
    #[error("{}: flush failed: {source}; the device was left in place", path.display())]
    Flush {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A `dmsetup` step failed.
    #[error("{name}: {source}")]
    Dmsetup {
        name: String,
        #[source]
        source: DmsetupError,
    },
}

impl ActivationError {
    /// Whether the command line itself was wrong (as opposed to the system's state).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ActivationError::Name(_)
                | ActivationError::Pair(PairError::SameDevice { .. })
                | ActivationError::TableLine(TableLineError::PathWithSpace { .. })
                | ActivationError::BadUuid { .. }
        )
    }
}

fn describe_holders(holders: &[String]) -> String {
    if holders.is_empty() {
        String::new()
    } else {
        format!(" ({})", holders.join(", "))
    }
}

impl From<PairError> for ActivationError {
    fn from(e: PairError) -> Self {
        match e {
            PairError::OpenDevice {
                role,
                path,
                source: OpenError::InUse { holder, .. },
            } => {
                let mut holders = sysfs_holders(&path);
                if let Some(pid) = holder {
                    holders.push(format!("locked by pid {pid}"));
                }
                ActivationError::InUse {
                    role,
                    path,
                    holders,
                }
            }
            other => ActivationError::Pair(other),
        }
    }
}

/// What sysfs says holds a block device: device-mapper devices by name, others by kernel
/// name. Empty for a regular file or when nothing is listed (a mount, an exclusive open).
fn sysfs_holders(path: &Path) -> Vec<String> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    if !meta.file_type().is_block_device() {
        return Vec::new();
    }
    let (major, minor) = (
        rustix::fs::major(meta.rdev()),
        rustix::fs::minor(meta.rdev()),
    );
    let dir = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/holders"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .map(|e| {
            let kernel = e.file_name().to_string_lossy().into_owned();
            match std::fs::read_to_string(e.path().join("dm/name")) {
                Ok(name) => format!("held by device-mapper device {}", name.trim()),
                Err(_) => format!("held by {kernel}"),
            }
        })
        .collect();
    out.sort();
    out
}

/// The table line for a pair, read without writing anything (both devices opened
/// read-only under a shared lock).
pub fn table_line(
    main: &Path,
    spare: &Path,
    overrides: &SettingChanges,
) -> Result<TableLine, ActivationError> {
    let spare = &resolve_spare(main, spare)?;
    let pair = Pair::open(main, spare, Access::ReadOnly, Access::ReadOnly)?;
    let rec = pair.inspect()?;
    Ok(TableLine::for_pair(&pair, &rec.superblock, overrides)?)
}

/// What [`activate`] made.
#[derive(Debug, Clone, Serialize)]
pub struct Activated {
    pub name: String,
    pub device: PathBuf,
    pub dm_uuid: String,
    pub table: TableLine,
}

/// The spare as given: a path, or `UUID=` and the UUID of its remap metadata, looked up
/// among the block devices (leaving out `main`).
pub fn resolve_spare(main: &Path, spare: &Path) -> Result<PathBuf, ActivationError> {
    let text = spare.to_string_lossy();
    let Some(uuid) = text.strip_prefix("UUID=") else {
        return Ok(spare.to_path_buf());
    };
    let uuid = crate::remaptab::parse_uuid(uuid).ok_or_else(|| ActivationError::BadUuid {
        value: text.to_string(),
    })?;
    Ok(crate::spare_lookup::find_spare(&uuid, main)?)
}

/// Create the device-mapper device `name` over the pair. See the module documentation for
/// what is refused; nothing is written to either device by the checks. `spare` may be
/// `UUID=...` ([`resolve_spare`]).
pub fn activate(
    dm: &Dmsetup,
    name: &str,
    main: &Path,
    spare: &Path,
    overrides: &SettingChanges,
) -> Result<Activated, ActivationError> {
    let name = DmName::new(name)?;
    let wrap = |source| ActivationError::Dmsetup {
        name: name.to_string(),
        source,
    };
    if !dm.targets().map_err(wrap)?.iter().any(|t| t == TARGET) {
        return Err(ActivationError::ModuleNotLoaded);
    }
    if dm.exists(name.as_str()).map_err(wrap)? {
        return Err(ActivationError::NameTaken {
            name: name.to_string(),
        });
    }
    let spare = &resolve_spare(main, spare)?;
    // Opened for writing, so that a device someone else holds is refused here (O_EXCL on a
    // block device, the exclusive lock on both), with what holds it, rather than by the
    // kernel with EBUSY. Nothing is written; both are closed before the kernel opens them.
    let table = {
        let pair = Pair::open(main, spare, Access::ReadWrite, Access::ReadWrite)?;
        let rec = pair.inspect()?;
        TableLine::for_pair(&pair, &rec.superblock, overrides)?
    };
    let dm_uuid = table.dm_uuid();
    dm.create(name.as_str(), &dm_uuid, &table.text())
        .map_err(wrap)?;
    Ok(Activated {
        device: name.device_path(),
        name: name.to_string(),
        dm_uuid,
        table,
    })
}

/// What [`deactivate`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Deactivated {
    pub name: String,
    /// The target's answer to the checkpoint message (`checkpoint N written`).
    pub checkpoint: String,
}

/// Flush the device, have the target write a checkpoint, and remove it. Refuses a name that
/// does not exist, a device that is not a one-segment `dm-remap-v4` device, and an open one.
pub fn deactivate(dm: &Dmsetup, name: &str) -> Result<Deactivated, ActivationError> {
    let name = DmName::new(name)?;
    let wrap = |source| ActivationError::Dmsetup {
        name: name.to_string(),
        source,
    };
    if !dm.exists(name.as_str()).map_err(wrap)? {
        return Err(ActivationError::NotFound {
            name: name.to_string(),
        });
    }
    let table = dm.table(name.as_str()).map_err(wrap)?;
    let lines: Vec<&str> = table.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() != 1 || lines[0].split_whitespace().nth(2) != Some(TARGET) {
        return Err(ActivationError::NotRemap {
            name: name.to_string(),
            table: lines.join("; "),
        });
    }
    let open = dm.open_count(name.as_str()).map_err(wrap)?;
    if open > 0 {
        return Err(ActivationError::Busy {
            name: name.to_string(),
            open,
        });
    }
    let path = name.device_path();
    // fsync of a block device writes its dirty pages and sends a cache flush down to both
    // devices of the pair.
    std::fs::File::open(&path)
        .and_then(|f| f.sync_all())
        .map_err(|source| ActivationError::Flush {
            path: path.clone(),
            source,
        })?;
    let checkpoint = dm.message(name.as_str(), "checkpoint").map_err(wrap)?;
    dm.remove(name.as_str()).map_err(wrap)?;
    Ok(Deactivated {
        name: name.to_string(),
        checkpoint,
    })
}
