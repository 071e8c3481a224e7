//! Opening the main and spare devices the same way for every operation.
//!
//! - Regular files and block devices go through [`FileBackend`] with its advisory lock:
//!   operations that change something take it exclusively, read-only ones take it shared,
//!   so a reader never sees a table being rewritten and a second writer gets "in use by
//!   pid N" instead of a corrupted table.
//! - Block devices are opened with `O_DIRECT`, so that a write error is reported by the
//!   write that caused it (and the block it belongs to), not later by a flush.
//! - The main device's identity comes from sysfs ([`remap_meta::identity::identify`]); a
//!   spare formatted for another main device is refused before anything is read from main.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use remap_core::backend::{OpenError, OpenOptions};
use remap_core::clock::SystemClock;
use remap_core::{BlockBackend, FileBackend};
use remap_meta::io::BackendIo;
use remap_meta::open::{MetaError, OpenedDevice, check_main};
use remap_meta::recovery::{RecoverError, choose_superblock, read_superblock_copies};
use remap_meta::{DeviceIdentity, FormatError, Recovered, Superblock};

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

/// Why a pair could not be opened, inspected or formatted. Every message starts with the
/// device it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairError {
    /// The same file or block device given as main and spare. Nothing was opened.
    #[error("{} and {} are the same device; the spare must be a different device or file", main.display(), spare.display())]
    SameDevice { main: PathBuf, spare: PathBuf },

    /// MAIN and SPARE share storage (the same file, disk, or stack of devices). Nothing
    /// was opened.
    #[error(transparent)]
    SharedStorage(#[from] crate::storage::StorageError),

    /// A device the operation must write is read-only. Nothing was opened.
    #[error(transparent)]
    ReadOnly(#[from] crate::writable::WritableError),

    /// Opening the main or spare device failed (missing, not a device, in use).
    #[error("{}: cannot open the {role} device: {}", path.display(), describe_open(.source))]
    OpenDevice {
        role: Role,
        path: PathBuf,
        #[source]
        source: OpenError,
    },

    /// The spare device is smaller than the two superblocks, so it cannot hold metadata.
    #[error("{}: holds no remap metadata: it is {size} bytes, smaller than the two 4 KiB superblocks", path.display())]
    TooSmallForMetadata { path: PathBuf, size: u64 },

    /// The spare's metadata could not be read back into a table.
    #[error("{}: cannot read the remap metadata: {source}", path.display())]
    Inspect {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },

    /// The spare device holds no remap metadata at all.
    #[error("{}: holds no remap metadata", path.display())]
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

    /// MAIN holds remap metadata and SPARE none: the arguments look swapped.
    #[error(transparent)]
    Swapped(#[from] crate::signatures::SignaturesError),

    /// Formatting a blank spare with the defaults failed.
    #[error("{}: cannot format the spare device: {source}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: Box<MetaError>,
    },
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

/// Whether an operation may change the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Opened read-only under a shared lock.
    ReadOnly,
    /// Opened read-write under an exclusive lock.
    ReadWrite,
}

/// Open one device of the pair.
pub fn open_device(path: &Path, role: Role, access: Access) -> Result<FileBackend, PairError> {
    let block_device = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    OpenOptions::new()
        .read_only(access == Access::ReadOnly)
        .direct(block_device)
        .exclusive(true)
        .open(path)
        .map_err(|source| PairError::OpenDevice {
            role,
            path: path.to_path_buf(),
            source,
        })
}

/// Refuse the same file or block device given as both main and spare: the spare's
/// metadata would be written over the data it protects.
fn refuse_same_device(main: &Path, spare: &Path) -> Result<(), PairError> {
    let (Ok(m), Ok(s)) = (std::fs::metadata(main), std::fs::metadata(spare)) else {
        // Opening reports a missing device with its own message.
        return Ok(());
    };
    let same = if m.file_type().is_block_device() && s.file_type().is_block_device() {
        m.rdev() == s.rdev()
    } else {
        m.dev() == s.dev() && m.ino() == s.ino()
    };
    if same {
        return Err(PairError::SameDevice {
            main: main.to_path_buf(),
            spare: spare.to_path_buf(),
        });
    }
    Ok(())
}

/// The main and spare devices, opened and locked.
#[derive(Debug)]
pub struct Pair {
    pub main: FileBackend,
    pub spare: FileBackend,
    pub main_path: PathBuf,
    pub spare_path: PathBuf,
    /// The main device's identity as sysfs reports it now.
    pub identity: DeviceIdentity,
}

impl Pair {
    /// Open both devices, main first, as in the device-mapper table line.
    pub fn open(
        main: &Path,
        spare: &Path,
        main_access: Access,
        spare_access: Access,
    ) -> Result<Pair, PairError> {
        refuse_same_device(main, spare)?;
        crate::storage::refuse_shared(main, spare)?;
        if main_access == Access::ReadWrite {
            crate::writable::refuse_read_only(main, "main")?;
        }
        if spare_access == Access::ReadWrite {
            crate::writable::refuse_read_only(spare, "spare")?;
        }
        let main_dev = open_device(main, Role::Main, main_access)?;
        let spare_dev = open_device(spare, Role::Spare, spare_access)?;
        Ok(Pair {
            identity: remap_meta::identity::identify(main),
            main: main_dev,
            spare: spare_dev,
            main_path: main.to_path_buf(),
            spare_path: spare.to_path_buf(),
        })
    }

    /// Read the spare's whole state without writing anything, and check that the main
    /// device is the one the spare was formatted for.
    pub fn inspect(&self) -> Result<Recovered, PairError> {
        self.refuse_tiny_spare()?;
        self.refuse_swapped()?;
        let rec = remap_meta::inspect(&self.spare).map_err(|e| self.metadata_error(e))?;
        self.check_main(&rec.superblock)?;
        Ok(rec)
    }

    /// The superblock copy recovery would use, if any, without reading further.
    pub fn superblock(&self) -> Result<Option<Superblock>, PairError> {
        self.refuse_tiny_spare()?;
        let copies = read_superblock_copies(&mut BackendIo(&self.spare), self.spare.size_bytes())
            .map_err(|e| PairError::Inspect {
            path: self.spare_path.clone(),
            source: Box::new(MetaError::Recover(e)),
        })?;
        Ok(choose_superblock(&copies).ok().map(|(_, sb)| sb))
    }

    /// Format the spare with the defaults unless it already holds remap metadata. Returns
    /// whether it formatted.
    pub fn format_if_blank(&self) -> Result<bool, PairError> {
        if self.superblock()?.is_some() {
            return Ok(false);
        }
        // Formatting SPARE beside a MAIN that holds metadata would format the wrong disk.
        self.refuse_swapped()?;
        remap_meta::create(
            &self.spare,
            self.main.size_bytes(),
            self.identity,
            &remap_meta::CreateOptions::default(),
        )
        .map_err(|source| PairError::Format {
            path: self.spare_path.clone(),
            source: Box::new(source),
        })?;
        Ok(true)
    }

    /// A SPARE without remap metadata beside a MAIN that holds some: the arguments are
    /// swapped, which is worth saying before "format it with `remap create`" is suggested
    /// (following that hint would format the failing disk).
    fn refuse_swapped(&self) -> Result<(), PairError> {
        if self.superblock()?.is_some() {
            return Ok(());
        }
        crate::signatures::refuse_metadata_on_main(&self.main, &self.main_path, &self.spare_path)?;
        Ok(())
    }

    /// A spare smaller than the two superblock copies cannot hold metadata; say so rather
    /// than report a read past its end.
    fn refuse_tiny_spare(&self) -> Result<(), PairError> {
        let size = self.spare.size_bytes();
        if size < 2 * remap_meta::META_BLOCK as u64 {
            return Err(PairError::TooSmallForMetadata {
                path: self.spare_path.clone(),
                size,
            });
        }
        Ok(())
    }

    /// Refuse a main device of another size or identity than the spare was formatted for.
    pub fn check_main(&self, sb: &Superblock) -> Result<(), PairError> {
        check_main(sb, self.main.size_bytes(), &self.identity).map_err(|source| {
            PairError::WrongMain {
                main: self.main_path.clone(),
                spare: self.spare_path.clone(),
                source: Box::new(source),
            }
        })
    }

    /// Open the pair as a remapping device. Writes nothing by itself.
    pub fn into_device(self) -> Result<OpenedDevice<FileBackend, FileBackend>, PairError> {
        self.into_device_over(|main| main)
    }

    /// Open the pair as a remapping device whose main device is `wrap(main)` (a fault
    /// injector for testers, a dynamic backend for the server). Writes nothing by itself.
    pub fn into_device_over<M: BlockBackend>(
        self,
        wrap: impl FnOnce(FileBackend) -> M,
    ) -> Result<OpenedDevice<M, FileBackend>, PairError> {
        self.refuse_tiny_spare()?;
        self.refuse_swapped()?;
        let Pair {
            main,
            spare,
            main_path,
            spare_path,
            identity,
        } = self;
        let main = wrap(main);
        remap_meta::open(main, Arc::new(spare), &identity, Arc::new(SystemClock)).map_err(
            |source| match source {
                MetaError::WrongMainSize { .. } | MetaError::WrongMainIdentity { .. } => {
                    PairError::WrongMain {
                        main: main_path,
                        spare: spare_path,
                        source: Box::new(source),
                    }
                }
                other => metadata_error(&spare_path, other, |path, source| PairError::OpenPair {
                    path,
                    source,
                }),
            },
        )
    }

    fn metadata_error(&self, e: MetaError) -> PairError {
        metadata_error(&self.spare_path, e, |path, source| PairError::Inspect {
            path,
            source,
        })
    }
}

/// A spare without any remap metadata gets one clear error instead of two "bad magic"
/// findings.
fn metadata_error(
    path: &Path,
    e: MetaError,
    wrap: impl FnOnce(PathBuf, Box<MetaError>) -> PairError,
) -> PairError {
    if let MetaError::Recover(RecoverError::NoSuperblock {
        a: FormatError::BadMagic { .. },
        b: FormatError::BadMagic { .. },
    }) = &e
    {
        return PairError::NotFormatted {
            path: path.to_path_buf(),
        };
    }
    wrap(path.to_path_buf(), Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_use_names_the_pid_once() {
        let e = PairError::OpenDevice {
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
}
