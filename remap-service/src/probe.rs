//! Whether a device holds a remap spare, for tools that do not know the format: `remap
//! probe` prints the answer as udev properties, which `dist/udev/60-remap.rules` imports so
//! that the udev database, `lsblk -f` and udisks name a formatted spare instead of seeing
//! an empty device. `docs/format.md` ("Detecting a spare") states the magic and its offsets.
//!
//! The probe reads only the superblock copies, takes no lock and writes nothing: udev runs
//! it on every block device that appears, including spares that a `remap serve` or the
//! kernel target holds open.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use remap_core::backend::{OpenError, OpenOptions};
use remap_core::{BlockBackend, FileBackend};
use remap_meta::io::BackendIo;
use remap_meta::recovery::{choose_superblock, read_superblocks};
use remap_meta::{DeviceIdentity, FormatError, Superblock};
use serde::Serialize;

use crate::status::uuid_text;

/// The `ID_FS_TYPE` of a remap spare.
pub const FS_TYPE: &str = "remap_spare";

/// What a probe found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No superblock copy carries the remap magic: not a spare (as far as remap knows).
    NotFound,
    /// A valid superblock copy: a formatted spare.
    Spare(Box<Superblock>),
    /// The magic is there but no copy decodes (torn, corrupt, or a newer format): a spare
    /// that needs `remap check`, and must not look empty to an installer.
    Damaged {
        /// Why each copy was refused, A then B.
        reasons: [FormatError; 2],
    },
}

/// Why a device could not be probed (as opposed to "not a spare").
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The device could not be opened (missing, not a file or block device, no permission).
    #[error("{}: cannot open: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: OpenError,
    },

    /// Reading the superblock copies failed.
    #[error("{}: cannot probe: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
}

/// Probe the device or file at `path`: open it read-only without a lock, read the two
/// superblock copies, and say what they are.
pub fn probe(path: &Path) -> Result<Probe, ProbeError> {
    let block_device = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let device = OpenOptions::new()
        .read_only(true)
        .direct(block_device)
        .exclusive(false)
        .open(path)
        .map_err(|source| ProbeError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    probe_backend(&device, path)
}

/// [`probe`] over an opened device; `path` is for messages.
pub fn probe_backend(device: &FileBackend, path: &Path) -> Result<Probe, ProbeError> {
    // Too small for the two copies: cannot be a spare, and reading would run off the end.
    if device.size_bytes() < 2 * remap_meta::META_BLOCK as u64 {
        return Ok(Probe::NotFound);
    }
    let copies = read_superblocks(&mut BackendIo(device)).map_err(|e| ProbeError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(match choose_superblock(&copies) {
        Ok((_, sb)) => Probe::Spare(Box::new(sb)),
        Err((FormatError::BadMagic { .. }, FormatError::BadMagic { .. })) => Probe::NotFound,
        Err((a, b)) => Probe::Damaged { reasons: [a, b] },
    })
}

/// The main device a spare was formatted for, as its superblock records it.
#[derive(Debug, Clone, Serialize)]
pub struct MainRecord {
    pub size_bytes: u64,
    pub identity: DeviceIdentity,
}

/// A probe's answer as programs take it (`remap probe --json`).
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub found: bool,
    /// `valid` or `damaged` when found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub main: Option<MainRecord>,
    /// Why each superblock copy was refused, for a damaged spare.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

impl Probe {
    /// The report `--json` prints.
    pub fn report(&self) -> ProbeReport {
        let mut r = ProbeReport {
            found: !matches!(self, Probe::NotFound),
            state: None,
            uuid: None,
            version: None,
            block_size: None,
            main: None,
            problems: Vec::new(),
        };
        match self {
            Probe::NotFound => {}
            Probe::Spare(sb) => {
                r.state = Some("valid");
                r.uuid = Some(uuid_text(&sb.uuid));
                // Decoding refuses every version but this one.
                r.version = Some(remap_meta::superblock::VERSION);
                r.block_size = Some(sb.geometry.block_size.bytes());
                r.main = Some(MainRecord {
                    size_bytes: sb.geometry.main_size,
                    identity: sb.identity,
                });
            }
            Probe::Damaged { reasons } => {
                r.state = Some("damaged");
                r.problems = reasons.iter().map(ToString::to_string).collect();
            }
        }
        r
    }

    /// The udev properties, in order, as `KEY=value` pairs whose values are already
    /// encoded for udev's `IMPORT{program}` (see [`udev_encode`]). Empty when nothing was
    /// found.
    pub fn udev_properties(&self) -> Vec<(&'static str, String)> {
        match self {
            Probe::NotFound => Vec::new(),
            Probe::Spare(sb) => {
                let uuid = uuid_text(&sb.uuid);
                let g = &sb.geometry;
                let mut p = vec![
                    ("ID_FS_TYPE", FS_TYPE.to_string()),
                    ("ID_FS_USAGE", "other".to_string()),
                    ("ID_FS_VERSION", remap_meta::superblock::VERSION.to_string()),
                    ("ID_FS_UUID", uuid.clone()),
                    ("ID_FS_UUID_ENC", uuid),
                    ("REMAP_STATE", "valid".to_string()),
                    ("REMAP_BLOCK_SIZE", g.block_size.bytes().to_string()),
                    ("REMAP_MAIN_SIZE", g.main_size.to_string()),
                    ("REMAP_MAIN_ID_KIND", sb.identity.kind.as_str().to_string()),
                ];
                if !sb.identity.value().is_empty() {
                    p.push(("REMAP_MAIN_ID_ENC", udev_encode(sb.identity.value())));
                }
                p
            }
            Probe::Damaged { .. } => vec![
                ("ID_FS_TYPE", FS_TYPE.to_string()),
                ("ID_FS_USAGE", "other".to_string()),
                ("REMAP_STATE", "damaged".to_string()),
            ],
        }
    }
}

/// Encode bytes the way udev and libblkid encode `*_ENC` properties: ASCII letters, digits
/// and `#+-.:=@_` stay, every other byte (space, quote, backslash, non-ASCII) becomes
/// `\xNN`. The result is one word udev imports as it is.
pub fn udev_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"#+-.:=@_".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_keeps_safe_bytes_and_escapes_the_rest() {
        assert_eq!(udev_encode(b"naa.5000c500a1b2"), "naa.5000c500a1b2");
        assert_eq!(
            udev_encode(b"WD-WX1 \"x\"\\/\xff"),
            "WD-WX1\\x20\\x22x\\x22\\x5c\\x2f\\xff"
        );
    }
}
