//! Finding a spare by the UUID of its remap metadata (`UUID=` in `/etc/remaptab` and on
//! `remap activate`'s command line): every block device the kernel lists is probed
//! ([`crate::probe`]: its superblock copies only, read-only, no lock, by the rule an open
//! follows, so a spare whose head copies are gone is found by its tail copy) and the one
//! whose valid superblock carries the UUID is the spare.

use std::path::{Path, PathBuf};

use crate::probe::{Probe, probe};

/// Why no single spare was found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    #[error("UUID={uuid}: no block device holds remap metadata with this UUID")]
    NotFound { uuid: String },
    #[error("UUID={uuid}: several block devices hold remap metadata with this UUID ({}); name the spare by its path", paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous { uuid: String, paths: Vec<PathBuf> },
}

/// The UUID of the remap metadata on `path`, if it holds a valid superblock.
pub fn metadata_uuid(path: &Path) -> Option<[u8; 16]> {
    match probe(path).ok()? {
        Probe::Spare { superblock, .. } => Some(superblock.uuid),
        Probe::NotFound | Probe::Damaged { .. } => None,
    }
}

/// The block device (`/dev/NAME` for each entry of `/sys/class/block`) whose remap metadata
/// has this UUID, leaving out `except` (the main device).
pub fn find_spare(uuid: &[u8; 16], except: &Path) -> Result<PathBuf, LookupError> {
    let text = crate::status::uuid_text(uuid);
    let except = std::fs::canonicalize(except).unwrap_or_else(|_| except.to_path_buf());
    let mut found = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        let path = Path::new("/dev").join(&name);
        if path == except {
            continue;
        }
        if metadata_uuid(&path).as_ref() == Some(uuid) {
            found.push(path);
        }
    }
    match found.len() {
        0 => Err(LookupError::NotFound { uuid: text }),
        1 => Ok(found.remove(0)),
        _ => Err(LookupError::Ambiguous {
            uuid: text,
            paths: found,
        }),
    }
}
