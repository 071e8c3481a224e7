//! What a device already holds, asked before formatting it as a spare.
//!
//! - Foreign signatures (filesystems, partition tables, RAID members, LVM, LUKS, swap) are
//!   found by libblkid, the library `mount`, `mkfs` and udev use, through util-linux's
//!   `wipefs --no-act --json`. It runs libblkid's full probe (every superblock and partition
//!   table prober, not only the first match) and reports each signature with its offset,
//!   which is what the refusal must say. The in-process alternative, the `libblkid-rs`
//!   crate, generates its bindings with bindgen at build time, which would make libclang
//!   and libblkid's headers a build requirement of the whole workspace for the same probe;
//!   util-linux is an essential package on Debian and present on every Linux system.
//! - Remap metadata on the MAIN device means the arguments look swapped: the failing disk
//!   would be formatted as a spare. That is decided by our own superblock decoder.

use std::path::{Path, PathBuf};
use std::process::Command;

use remap_core::BlockBackend;
use remap_meta::FormatError;
use remap_meta::io::BackendIo;
use remap_meta::recovery::read_superblock_copies;

/// One signature found on a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// libblkid's name for it: `ext4`, `swap`, `gpt`, `dos`, `LVM2_member`,
    /// `linux_raid_member`, `crypto_LUKS`, ...
    pub kind: String,
    /// Byte offset of the magic that identified it.
    pub offset: u64,
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} at offset {} ({:#x})",
            self.kind, self.offset, self.offset
        )
    }
}

/// Why a device may not be formatted, or could not be probed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignaturesError {
    /// SPARE holds data that formatting would destroy.
    #[error("{}: holds {} (found by libblkid); formatting would destroy it", path.display(), describe(.found))]
    SignaturesFound {
        path: PathBuf,
        found: Vec<Signature>,
    },

    /// MAIN holds remap metadata: MAIN and SPARE look swapped.
    #[error("{}: the main device holds remap metadata ({what}); the arguments look swapped: MAIN comes first, then SPARE ({} was given as SPARE)", main.display(), spare.display())]
    MainHoldsMetadata {
        main: PathBuf,
        spare: PathBuf,
        what: String,
    },

    /// The prober could not be run.
    #[error("{}: cannot probe for existing signatures: cannot run wipefs (util-linux): {source}", path.display())]
    Spawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The prober ran and failed.
    #[error("{}: cannot probe for existing signatures: wipefs failed: {message}", path.display())]
    Failed { path: PathBuf, message: String },

    /// Reading the main device's first blocks failed.
    #[error("{}: cannot read the main device to check for remap metadata: {message}", path.display())]
    ReadMain { path: PathBuf, message: String },
}

fn describe(found: &[Signature]) -> String {
    let items: Vec<String> = found.iter().map(Signature::to_string).collect();
    match items.len() {
        1 => format!("a signature: {}", items[0]),
        n => format!("{n} signatures: {}", items.join(", ")),
    }
}

/// Where util-linux keeps `wipefs`; `/usr/sbin` and `/sbin` are often not on a user's PATH.
fn wipefs_program() -> PathBuf {
    for dir in ["/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        let p = Path::new(dir).join("wipefs");
        if p.is_file() {
            return p;
        }
    }
    PathBuf::from("wipefs")
}

/// Every signature libblkid recognises on `path`, with its offset.
pub fn find(path: &Path) -> Result<Vec<Signature>, SignaturesError> {
    let output = Command::new(wipefs_program())
        .args(["--no-act", "--json", "--"])
        .arg(path)
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|source| SignaturesError::Spawn {
            path: path.to_path_buf(),
            source,
        })?;
    if !output.status.success() {
        return Err(SignaturesError::Failed {
            path: path.to_path_buf(),
            message: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    parse_wipefs_json(&output.stdout).map_err(|message| SignaturesError::Failed {
        path: path.to_path_buf(),
        message,
    })
}

/// Decode `wipefs --json`: `{"signatures": [{"offset": "0x438", "type": "ext4", ...}]}`.
/// Nothing found prints nothing at all on some util-linux versions.
fn parse_wipefs_json(stdout: &[u8]) -> Result<Vec<Signature>, String> {
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("unexpected output: {e}"))?;
    let Some(items) = v.get("signatures").and_then(|s| s.as_array()) else {
        return Err("unexpected output: no \"signatures\" list".to_string());
    };
    items
        .iter()
        .map(|item| {
            let kind = item
                .get("type")
                .and_then(|t| t.as_str())
                .ok_or("unexpected output: a signature without a type")?;
            let offset = item
                .get("offset")
                .and_then(|o| o.as_str())
                .and_then(|o| o.strip_prefix("0x"))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .ok_or("unexpected output: a signature without an offset")?;
            Ok(Signature {
                kind: kind.to_string(),
                offset,
            })
        })
        .collect()
}

/// Refuse a SPARE holding any signature libblkid recognises.
pub fn refuse_signatures(spare: &Path) -> Result<(), SignaturesError> {
    let found = find(spare)?;
    if found.is_empty() {
        return Ok(());
    }
    Err(SignaturesError::SignaturesFound {
        path: spare.to_path_buf(),
        found,
    })
}

/// Refuse a MAIN device that holds remap metadata (a superblock copy with our magic, valid
/// or not): it is somebody's spare, and the arguments look swapped.
pub fn refuse_metadata_on_main(
    main: &dyn BlockBackend,
    main_path: &Path,
    spare_path: &Path,
) -> Result<(), SignaturesError> {
    if main.size_bytes() < 2 * remap_meta::META_BLOCK as u64 {
        // Too small to hold either copy.
        return Ok(());
    }
    let copies = read_superblock_copies(&mut BackendIo(main), main.size_bytes()).map_err(|e| {
        SignaturesError::ReadMain {
            path: main_path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let what = match &copies {
        [Ok(sb), _, _] | [_, Ok(sb), _] | [_, _, Ok(sb)] => format!(
            "a valid superblock, sequence {}, main device size {} bytes",
            sb.sequence, sb.geometry.main_size
        ),
        [
            Err(FormatError::BadMagic { .. }),
            Err(FormatError::BadMagic { .. }),
            Err(FormatError::BadMagic { .. }),
        ] => return Ok(()),
        [
            Err(FormatError::BadMagic { .. }),
            Err(FormatError::BadMagic { .. }),
            Err(e),
        ]
        | [Err(FormatError::BadMagic { .. }), Err(e), _]
        | [Err(e), _, _] => format!("a damaged superblock: {e}"),
    };
    Err(SignaturesError::MainHoldsMetadata {
        main: main_path.to_path_buf(),
        spare: spare_path.to_path_buf(),
        what,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipefs_json_is_decoded_with_offsets() {
        let out = br#"{
   "signatures": [
      {"device": "sdc1", "offset": "0x438", "type": "ext4", "uuid": "a", "label": null},
      {"device": "sdc1", "offset": "0x1fe", "type": "dos", "uuid": null, "label": null}
   ]
}"#;
        let found = parse_wipefs_json(out).unwrap();
        assert_eq!(
            found,
            [
                Signature {
                    kind: "ext4".into(),
                    offset: 0x438
                },
                Signature {
                    kind: "dos".into(),
                    offset: 0x1fe
                }
            ]
        );
        assert_eq!(found[0].to_string(), "ext4 at offset 1080 (0x438)");
        assert!(parse_wipefs_json(b"").unwrap().is_empty());
        assert!(
            parse_wipefs_json(b"{\"signatures\": []}")
                .unwrap()
                .is_empty()
        );
        for bad in [
            &b"nonsense"[..],
            b"{}",
            b"{\"signatures\": [{\"type\": \"ext4\"}]}",
            b"{\"signatures\": [{\"offset\": \"0x10\"}]}",
            b"{\"signatures\": [{\"offset\": \"16\", \"type\": \"x\"}]}",
        ] {
            assert!(parse_wipefs_json(bad).is_err(), "{bad:?}");
        }
    }
}
