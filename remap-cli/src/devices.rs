//! Opening the main and spare devices the same way for every subcommand.
//!
//! - Regular files and block devices go through [`FileBackend`] with its advisory lock:
//!   commands that change something take it exclusively, read-only commands take it shared,
//!   so a reader never sees a table being rewritten and a second writer gets "in use by
//!   pid N" instead of a corrupted table.
//! - Block devices are opened with `O_DIRECT`, so that a write error is reported by the
//!   write that caused it (and the block it belongs to), not later by a flush.
//! - The main device's identity comes from sysfs ([`remap_meta::identity::identify`]); a
//!   spare formatted for another main device is refused before anything is read from main.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use remap_core::backend::OpenOptions;
use remap_core::clock::SystemClock;
use remap_core::{BlockBackend, FileBackend};
use remap_meta::io::BackendIo;
use remap_meta::open::{MetaError, OpenedDevice, check_main};
use remap_meta::recovery::{RecoverError, choose_superblock, read_superblock_copies};
use remap_meta::{DeviceIdentity, FormatError, Recovered, Superblock};

use crate::error::{CliError, Role};

/// Whether a command may change the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Opened read-only under a shared lock.
    ReadOnly,
    /// Opened read-write under an exclusive lock.
    ReadWrite,
}

/// Open one device of the pair.
pub fn open_device(path: &Path, role: Role, access: Access) -> Result<FileBackend, CliError> {
    let block_device = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    OpenOptions::new()
        .read_only(access == Access::ReadOnly)
        .direct(block_device)
        .exclusive(true)
        .open(path)
        .map_err(|source| CliError::OpenDevice {
            role,
            path: path.to_path_buf(),
            source,
        })
}

/// Refuse the same file or block device given as both main and spare: the spare's
/// metadata would be written over the data it protects.
fn refuse_same_device(main: &Path, spare: &Path) -> Result<(), CliError> {
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
        return Err(CliError::Usage {
            message: format!(
                "{} and {} are the same device; the spare must be a different device or file",
                main.display(),
                spare.display()
            ),
        });
    }
    Ok(())
}

/// The main and spare devices of one command, opened and locked.
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
    ) -> Result<Pair, CliError> {
        refuse_same_device(main, spare)?;
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
    pub fn inspect(&self) -> Result<Recovered, CliError> {
        self.refuse_tiny_spare()?;
        let rec = remap_meta::inspect(&self.spare).map_err(|e| self.metadata_error(e))?;
        self.check_main(&rec.superblock)?;
        Ok(rec)
    }

    /// The superblock copy recovery would use, if any, without reading further.
    pub fn superblock(&self) -> Result<Option<Superblock>, CliError> {
        self.refuse_tiny_spare()?;
        let copies = read_superblock_copies(&mut BackendIo(&self.spare), self.spare.size_bytes())
            .map_err(|e| CliError::Inspect {
            path: self.spare_path.clone(),
            source: Box::new(MetaError::Recover(e)),
        })?;
        Ok(choose_superblock(&copies).ok().map(|(_, sb)| sb))
    }

    /// A spare smaller than the two superblock copies cannot hold metadata; say so rather
    /// than report a read past its end.
    fn refuse_tiny_spare(&self) -> Result<(), CliError> {
        let size = self.spare.size_bytes();
        if size < 2 * remap_meta::META_BLOCK as u64 {
            return Err(CliError::TooSmallForMetadata {
                path: self.spare_path.clone(),
                size,
            });
        }
        Ok(())
    }

    /// Refuse a main device of another size or identity than the spare was formatted for.
    pub fn check_main(&self, sb: &Superblock) -> Result<(), CliError> {
        check_main(sb, self.main.size_bytes(), &self.identity).map_err(|source| {
            CliError::WrongMain {
                main: self.main_path.clone(),
                spare: self.spare_path.clone(),
                source: Box::new(source),
            }
        })
    }

    /// Open the pair as a remapping device. Writes nothing by itself.
    pub fn into_device(self) -> Result<OpenedDevice<FileBackend, FileBackend>, CliError> {
        self.into_device_over(|main| main)
    }

    /// Open the pair as a remapping device whose main device is `wrap(main)` (a fault
    /// injector for testers, a dynamic backend for the server). Writes nothing by itself.
    pub fn into_device_over<M: BlockBackend>(
        self,
        wrap: impl FnOnce(FileBackend) -> M,
    ) -> Result<OpenedDevice<M, FileBackend>, CliError> {
        self.refuse_tiny_spare()?;
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
                    CliError::WrongMain {
                        main: main_path,
                        spare: spare_path,
                        source: Box::new(source),
                    }
                }
                other => metadata_error(&spare_path, other, |path, source| CliError::OpenPair {
                    path,
                    source,
                }),
            },
        )
    }

    fn metadata_error(&self, e: MetaError) -> CliError {
        metadata_error(&self.spare_path, e, |path, source| CliError::Inspect {
            path,
            source,
        })
    }
}

/// A spare without any remap metadata gets a hint instead of two "bad magic" findings.
fn metadata_error(
    path: &Path,
    e: MetaError,
    wrap: impl FnOnce(PathBuf, Box<MetaError>) -> CliError,
) -> CliError {
    if let MetaError::Recover(RecoverError::NoSuperblock {
        a: FormatError::BadMagic { .. },
        b: FormatError::BadMagic { .. },
    }) = &e
    {
        return CliError::NotFormatted {
            path: path.to_path_buf(),
        };
    }
    wrap(path.to_path_buf(), Box::new(e))
}
