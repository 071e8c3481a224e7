//! The device-mapper side of a pair: the table line of the `dm-remap-v4` target and the
//! names device-mapper devices may take.
//!
//! The line is the one `remap-kmod/README.md` ("Table line") documents:
//!
//! ```text
//! 0 <main sectors> dm-remap-v4 <main_dev> <spare_dev> [<#opt_args> <opt>...]
//! ```
//!
//! The optional arguments are written by the kernel target's own [`Options`], so the text
//! `remap table` prints is the text the target parses and `dmsetup table` prints back.

use std::path::{Path, PathBuf};

use remap_meta::table_options::{MAX_IDENTITY, Options};
use remap_meta::{IdentityKind, Superblock};
use serde::Serialize;

use crate::devices::Pair;
use crate::settings::SettingChanges;

/// The target's name, as the kernel module registers it (`RK_TARGET_NAME` in
/// `remap-kmod/kernel/dm-remap.c`).
pub const TARGET: &str = "dm-remap-v4";

/// Longest device-mapper name: `DM_NAME_LEN` (128) less the terminating NUL.
pub const MAX_NAME_LEN: usize = 127;

/// Prefix of the device-mapper UUID `remap activate` gives a device (as LVM uses `LVM-`
/// and cryptsetup `CRYPT-`); the rest is the spare's metadata UUID.
pub const UUID_PREFIX: &str = "REMAP-";

/// Why a table line could not be written for a pair.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableLineError {
    /// A device path the line would carry holds whitespace, which splits the line.
    #[error("{}: a device path in a table line cannot contain whitespace", path.display())]
    PathWithSpace { path: PathBuf },

    /// The main device's size is not a whole number of 512-byte sectors.
    #[error("{}: its size ({size} bytes) is not a whole number of 512-byte sectors", path.display())]
    PartialSector { path: PathBuf, size: u64 },

    /// The identity the spare records cannot be written as `main_identity:` (it holds a
    /// blank, a control character, or is too long).
    #[error("{}: the spare records the main device's {kind} '{value}', which a table line cannot carry as main_identity: (blank, control character or longer than {MAX_IDENTITY} bytes)", spare.display())]
    IdentityNotWritable {
        spare: PathBuf,
        kind: &'static str,
        value: String,
    },
}

/// Why a name is refused for a device-mapper device.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    #[error("the device name is empty")]
    Empty,
    #[error(
        "device name '{name}' is {len} bytes long; device-mapper allows at most {MAX_NAME_LEN}"
    )]
    TooLong { name: String, len: usize },
    #[error("device name '{name}' is not allowed: '.' and '..' name directories")]
    Dots { name: String },
    #[error("device name '{name}' starts with '-', which tools would read as an option")]
    LeadingDash { name: String },
    #[error("device name '{name}' holds '{found}'; use letters, digits and . _ + - only")]
    BadCharacter { name: String, found: char },
}

/// A name a device-mapper device may take (`/dev/mapper/NAME`). Stricter than the kernel
/// (which refuses only `/` and over-long names): a name also ends up in unit names, udev
/// rules and shell commands, so it holds letters, digits and `. _ + -` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmName(String);

impl DmName {
    pub fn new(name: &str) -> Result<DmName, NameError> {
        let owned = || name.to_string();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong {
                name: owned(),
                len: name.len(),
            });
        }
        if name == "." || name == ".." {
            return Err(NameError::Dots { name: owned() });
        }
        if name.starts_with('-') {
            return Err(NameError::LeadingDash { name: owned() });
        }
        if let Some(found) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
        {
            return Err(NameError::BadCharacter {
                name: owned(),
                found,
            });
        }
        Ok(DmName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The device node device-mapper gives it.
    pub fn device_path(&self) -> PathBuf {
        Path::new("/dev/mapper").join(&self.0)
    }
}

impl std::fmt::Display for DmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The table line for a pair, in parts (`--json`) and as text ([`TableLine::text`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TableLine {
    pub start: u64,
    /// The main device's size in 512-byte sectors.
    pub sectors: u64,
    pub target: &'static str,
    pub main: PathBuf,
    pub spare: PathBuf,
    /// The optional arguments, each `name:value`, in the order the line carries them.
    pub options: Vec<String>,
    /// The spare's metadata UUID.
    pub spare_uuid: String,
}

impl TableLine {
    /// The line for `pair`, whose spare's superblock is `sb`. The main device's size comes
    /// from the device. `main_identity:` is added when the spare records a serial number or
    /// WWN (the kernel reads a device-mapper UUID itself and has no identity to check for a
    /// file); thresholds and read retries only when `overrides` sets them.
    pub fn for_pair(
        pair: &Pair,
        sb: &Superblock,
        overrides: &SettingChanges,
    ) -> Result<TableLine, TableLineError> {
        for path in [&pair.main_path, &pair.spare_path] {
            if path.to_string_lossy().chars().any(char::is_whitespace) {
                return Err(TableLineError::PathWithSpace { path: path.clone() });
            }
        }
        let size = remap_core::BlockBackend::size_bytes(&pair.main);
        if !size.is_multiple_of(512) {
            return Err(TableLineError::PartialSector {
                path: pair.main_path.clone(),
                size,
            });
        }
        let mut options = Options {
            read_retries: overrides.read_retries,
            error_rate_degraded_ppm: overrides.error_rate_degraded,
            error_rate_critical_ppm: overrides.error_rate_critical,
            min_ios_for_rate: overrides.min_ios_for_rate,
            spare_degraded_pct: overrides.spare_used_degraded,
            spare_critical_pct: overrides.spare_used_critical,
            pending_degraded: overrides.pending_degraded,
            pending_critical: overrides.pending_critical,
            main_identity: None,
        };
        if matches!(sb.identity.kind, IdentityKind::Wwid | IdentityKind::Serial) {
            let value = sb.identity.value();
            if value.is_empty()
                || value.len() > MAX_IDENTITY
                || !value.iter().all(u8::is_ascii_graphic)
            {
                return Err(TableLineError::IdentityNotWritable {
                    spare: pair.spare_path.clone(),
                    kind: sb.identity.kind.as_str(),
                    value: sb.identity.value_lossy().to_string(),
                });
            }
            options.main_identity = Some(value.to_vec());
        }
        let mut args = String::new();
        // Writing to a String cannot fail.
        let _ = options.write_table_args(&mut args);
        // " <count> opt..." -> the options alone.
        let options = args
            .split_whitespace()
            .skip(1)
            .map(str::to_string)
            .collect();
        Ok(TableLine {
            start: 0,
            sectors: size / 512,
            target: TARGET,
            main: pair.main_path.clone(),
            spare: pair.spare_path.clone(),
            options,
            spare_uuid: crate::status::uuid_text(&sb.uuid),
        })
    }

    /// The line as `dmsetup create --table` takes it.
    pub fn text(&self) -> String {
        let mut line = format!(
            "{} {} {} {} {}",
            self.start,
            self.sectors,
            self.target,
            self.main.display(),
            self.spare.display()
        );
        if !self.options.is_empty() {
            line.push_str(&format!(" {}", self.options.len()));
            for o in &self.options {
                line.push(' ');
                line.push_str(o);
            }
        }
        line
    }

    /// The device-mapper UUID `remap activate` gives the device.
    pub fn dm_uuid(&self) -> String {
        format!("{UUID_PREFIX}{}", self.spare_uuid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        for good in ["salvage", "sdb-remap", "a.b_c+d", "x", &"n".repeat(127)] {
            assert_eq!(DmName::new(good).unwrap().as_str(), good);
        }
        assert_eq!(DmName::new(""), Err(NameError::Empty));
        assert!(matches!(
            DmName::new(&"n".repeat(128)),
            Err(NameError::TooLong { len: 128, .. })
        ));
        assert!(matches!(DmName::new(".."), Err(NameError::Dots { .. })));
        assert!(matches!(
            DmName::new("-rf"),
            Err(NameError::LeadingDash { .. })
        ));
        for (bad, c) in [("a/b", '/'), ("a b", ' '), ("a\nb", '\n'), ("é", 'é')] {
            assert_eq!(
                DmName::new(bad),
                Err(NameError::BadCharacter {
                    name: bad.to_string(),
                    found: c
                })
            );
        }
        assert_eq!(
            DmName::new("a/b").unwrap_err().to_string(),
            "device name 'a/b' holds '/'; use letters, digits and . _ + - only"
        );
    }
}
