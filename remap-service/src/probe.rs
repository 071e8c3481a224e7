//! Whether a device holds a remap spare, for tools that do not know the format: `remap
//! probe` prints the answer as udev properties, which `dist/udev/60-remap.rules` imports so
//! that the udev database, `lsblk -f` and udisks name a formatted spare instead of seeing
//! an empty device. `docs/format.md` ("Detecting a spare") states the magic and its offsets.
//!
//! A spare is recognised by the rule an open uses: remap-meta's
//! [`read_superblock_copies`] (both head copies, and the tail copy where the newest head copy
//! puts it or, with no valid head copy, in the last 4 KiB of the device) and
//! [`choose_superblock`]. So a spare whose head copies were overwritten, which still opens,
//! is still named; a device that would not open as a spare is not.
//!
//! The probe reads only the superblock copies, takes no lock and writes nothing: udev runs
//! it on every block device that appears, including spares that a `remap serve` or the
//! kernel target holds open.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use remap_core::backend::{OpenError, OpenOptions};
use remap_core::{BlockBackend, FileBackend};
use remap_meta::io::BackendIo;
use remap_meta::recovery::{choose_superblock, read_superblock_copies};
use remap_meta::{DeviceIdentity, FormatError, Region, Superblock};
use serde::Serialize;

use crate::status::uuid_text;

/// The `ID_FS_TYPE` of a remap spare.
pub const FS_TYPE: &str = "remap_spare";

/// The superblock copies in the order [`read_superblock_copies`] returns them.
const COPIES: [Region; 3] = [
    Region::SuperblockA,
    Region::SuperblockB,
    Region::SuperblockTail,
];

/// What a probe found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// No superblock copy carries the remap magic: not a spare (as far as remap knows).
    NotFound,
    /// A valid superblock copy: a formatted spare.
    Spare {
        /// The copy an open would trust (the newest valid one).
        superblock: Box<Superblock>,
        /// Which copies are valid (A, B, tail), the trusted one among them.
        valid: Vec<Region>,
    },
    /// A copy carries the magic but none decodes (torn, corrupt, or a newer format): a
    /// spare that needs `remap check`, and must not look empty to an installer.
    Damaged {
        /// Why each copy that carries the magic was refused, in the order A, B, tail.
        reasons: Vec<FormatError>,
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

/// Probe the device or file at `path`: open it read-only without a lock, read the
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
    let size = device.size_bytes();
    // Too small for the two head copies: cannot be a spare (the smallest spare is far
    // larger), and reading them would run off the end.
    if size < 2 * remap_meta::META_BLOCK as u64 {
        return Ok(Probe::NotFound);
    }
    let copies =
        read_superblock_copies(&mut BackendIo(device), size).map_err(|e| ProbeError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(classify(&copies))
}

/// What the decoded copies (A, B, tail) say, by the rule an open follows.
fn classify(copies: &[Result<Superblock, FormatError>; 3]) -> Probe {
    if let Ok((_, superblock)) = choose_superblock(copies) {
        let valid = COPIES
            .iter()
            .zip(copies)
            .filter(|(_, c)| c.is_ok())
            .map(|(r, _)| *r)
            .collect();
        return Probe::Spare {
            superblock: Box::new(superblock),
            valid,
        };
    }
    // No valid copy. The magic on a copy that does not decode is a damaged spare; a tail
    // copy whose own geometry puts it elsewhere (the recorded spare size does not end
    // here) belongs to another device that shares this one's last 4 KiB (a partition
    // ending where its disk ends) and is not this device's metadata, as an open would
    // not take it either.
    let reasons: Vec<FormatError> = copies
        .iter()
        .filter_map(|c| c.as_ref().err())
        .filter(|e| {
            !matches!(
                e,
                FormatError::BadMagic { .. }
                    | FormatError::Geometry {
                        region: Region::SuperblockTail,
                        ..
                    }
            )
        })
        .cloned()
        .collect();
    if reasons.is_empty() {
        Probe::NotFound
    } else {
        Probe::Damaged { reasons }
    }
}

/// The name of a superblock copy in the probe's output.
fn copy_name(region: Region) -> &'static str {
    match region {
        Region::SuperblockA => "A",
        Region::SuperblockB => "B",
        _ => "tail",
    }
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
    /// The valid superblock copies (`A`, `B`, `tail`), when a valid one was found.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub valid_copies: Vec<&'static str>,
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
            valid_copies: Vec::new(),
            problems: Vec::new(),
        };
        match self {
            Probe::NotFound => {}
            Probe::Spare {
                superblock: sb,
                valid,
            } => {
                r.state = Some("valid");
                r.uuid = Some(uuid_text(&sb.uuid));
                r.version = Some(sb.version);
                r.block_size = Some(sb.geometry.block_size.bytes());
                r.main = Some(MainRecord {
                    size_bytes: sb.geometry.main_size,
                    identity: sb.identity,
                });
                r.valid_copies = valid.iter().map(|&c| copy_name(c)).collect();
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
            Probe::Spare {
                superblock: sb,
                valid,
            } => {
                let uuid = uuid_text(&sb.uuid);
                let g = &sb.geometry;
                let copies: Vec<&str> = valid.iter().map(|&c| copy_name(c)).collect();
                let mut p = vec![
                    ("ID_FS_TYPE", FS_TYPE.to_string()),
                    ("ID_FS_USAGE", "other".to_string()),
                    ("ID_FS_VERSION", sb.version.to_string()),
                    ("ID_FS_UUID", uuid.clone()),
                    ("ID_FS_UUID_ENC", uuid),
                    ("REMAP_STATE", "valid".to_string()),
                    ("REMAP_VALID_COPIES", copies.join(",")),
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
