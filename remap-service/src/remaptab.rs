//! `/etc/remaptab`: the pairs to bring up at boot, one per line, in the style of
//! `/etc/crypttab` and `/etc/integritytab`:
//!
//! ```text
//! # name     main                               spare                                      options
//! salvage    /dev/disk/by-id/ata-WDC_WD10-1234  UUID=6f1c1f3e-8d1b-4c52-9a7e-0c3b5d2e4a11  pending-critical=10
//! scratch    /dev/sdb                           /dev/sdc1
//! ```
//!
//! - `name`: the device-mapper name (`/dev/mapper/NAME`), as `remap activate` takes it.
//! - `main`: an absolute path (`/dev/sdb`, `/dev/disk/by-id/...`, `/dev/disk/by-path/...`).
//! - `spare`: an absolute path, or `UUID=` and the UUID of the remap metadata on the spare
//!   (`remap status` shows it), found among the block devices when the pair is activated.
//! - `options` (optional; `-` or `none` for none): comma-separated. The thresholds of
//!   `remap set` as `name=value` for this activation only (`read-retries`,
//!   `error-rate-degraded`, `error-rate-critical`, `min-ios-for-rate`,
//!   `spare-used-degraded`, `spare-used-critical`, `pending-degraded`, `pending-critical`),
//!   and `nofail` (boot does not wait for or fail on this pair).
//!
//! Blank lines and lines starting with `#` are ignored. A bad line is reported with its
//! number and skipped; the good lines still count.

use std::path::{Path, PathBuf};

use crate::settings::SettingChanges;
use crate::table_line::{DmName, NameError};

/// Where the file lives.
pub const PATH: &str = "/etc/remaptab";

/// How a device is named in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// An absolute path (a node, or a udev symlink such as `/dev/disk/by-id/...`).
    Path(PathBuf),
    /// The UUID of the remap metadata a spare holds.
    SpareUuid([u8; 16]),
}

impl DeviceSpec {
    /// As `remap activate` takes it on its command line.
    pub fn argument(&self) -> String {
        match self {
            DeviceSpec::Path(p) => p.display().to_string(),
            DeviceSpec::SpareUuid(u) => format!("UUID={}", crate::status::uuid_text(u)),
        }
    }
}

/// One pair of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1-based line number.
    pub line: usize,
    pub name: DmName,
    pub main: PathBuf,
    pub spare: DeviceSpec,
    /// Thresholds for this activation only.
    pub overrides: SettingChanges,
    pub nofail: bool,
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    #[error("expected NAME MAIN SPARE [OPTIONS], found {found} field(s)")]
    FieldCount { found: usize },
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("the {role} device '{value}' is not an absolute path")]
    NotAbsolute { role: &'static str, value: String },
    #[error(
        "the main device '{value}' is given by UUID; UUID= names a spare's remap metadata, the main device needs a path (/dev/disk/by-id/... is stable)"
    )]
    MainByUuid { value: String },
    #[error("'{value}' is not a UUID (expected 8-4-4-4-12 hexadecimal digits)")]
    BadUuid { value: String },
    #[error("the main and spare devices are the same ('{value}')")]
    SameDevice { value: String },
    #[error("unknown option '{option}'")]
    UnknownOption { option: String },
    #[error("option '{option}': '{value}' is not a number in range (0 to {max})")]
    BadValue {
        option: String,
        value: String,
        max: u64,
    },
    #[error("option '{option}' needs a value (name=value)")]
    MissingValue { option: String },
    #[error("option '{option}' takes no value")]
    UnexpectedValue { option: String },
    #[error("option '{option}' is given twice")]
    DuplicateOption { option: String },
    #[error("the name '{name}' is used on line {first} already")]
    DuplicateName { name: String, first: usize },
}

/// A bad line of the file, with its number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {error}", path.display())]
pub struct RemaptabError {
    pub path: PathBuf,
    pub line: usize,
    pub error: LineError,
}

/// The file read: its good entries and its bad lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remaptab {
    pub entries: Vec<Entry>,
    pub errors: Vec<RemaptabError>,
}

/// Parse the text of a remaptab; `path` names it in errors.
pub fn parse(path: &Path, text: &str) -> Remaptab {
    let mut tab = Remaptab::default();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let result = parse_line(line, trimmed).and_then(|e| {
            match tab.entries.iter().find(|o| o.name == e.name) {
                Some(o) => Err(LineError::DuplicateName {
                    name: e.name.to_string(),
                    first: o.line,
                }),
                None => Ok(e),
            }
        });
        match result {
            Ok(e) => tab.entries.push(e),
            Err(error) => tab.errors.push(RemaptabError {
                path: path.to_path_buf(),
                line,
                error,
            }),
        }
    }
    tab
}

fn parse_line(line: usize, text: &str) -> Result<Entry, LineError> {
    let fields: Vec<&str> = text.split_whitespace().collect();
    if !(3..=4).contains(&fields.len()) {
        return Err(LineError::FieldCount {
            found: fields.len(),
        });
    }
    let name = DmName::new(fields[0])?;
    if fields[1].starts_with("UUID=") {
        return Err(LineError::MainByUuid {
            value: fields[1].to_string(),
        });
    }
    let main = absolute("main", fields[1])?;
    let spare = match fields[2].strip_prefix("UUID=") {
        Some(u) => DeviceSpec::SpareUuid(parse_uuid(u).ok_or_else(|| LineError::BadUuid {
            value: u.to_string(),
        })?),
        None => DeviceSpec::Path(absolute("spare", fields[2])?),
    };
    if spare == DeviceSpec::Path(main.clone()) {
        return Err(LineError::SameDevice {
            value: fields[1].to_string(),
        });
    }
    let (overrides, nofail) = parse_options(fields.get(3).copied().unwrap_or("-"))?;
    Ok(Entry {
        line,
        name,
        main,
        spare,
        overrides,
        nofail,
    })
}

fn absolute(role: &'static str, value: &str) -> Result<PathBuf, LineError> {
    if value.starts_with('/') {
        Ok(PathBuf::from(value))
    } else {
        Err(LineError::NotAbsolute {
            role,
            value: value.to_string(),
        })
    }
}

/// `8-4-4-4-12` hexadecimal digits, either case.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = text.split('-').collect();
    if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn parse_options(text: &str) -> Result<(SettingChanges, bool), LineError> {
    let mut o = SettingChanges::default();
    let mut nofail = false;
    if text == "-" || text == "none" {
        return Ok((o, nofail));
    }
    let mut seen: Vec<&str> = Vec::new();
    for item in text.split(',') {
        let (name, value) = match item.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (item, None),
        };
        if seen.contains(&name) {
            return Err(LineError::DuplicateOption {
                option: name.to_string(),
            });
        }
        seen.push(name);
        if name == "nofail" {
            if value.is_some() {
                return Err(LineError::UnexpectedValue {
                    option: name.to_string(),
                });
            }
            nofail = true;
            continue;
        }
        let max: u64 = match name {
            "read-retries" => u64::from(remap_meta::table_options::MAX_READ_RETRIES),
            "error-rate-degraded" | "error-rate-critical" => 1_000_000,
            "spare-used-degraded" | "spare-used-critical" => 100,
            "min-ios-for-rate" | "pending-degraded" | "pending-critical" => u64::MAX,
            _ => {
                return Err(LineError::UnknownOption {
                    option: name.to_string(),
                });
            }
        };
        let value = value.ok_or_else(|| LineError::MissingValue {
            option: name.to_string(),
        })?;
        let v = value
            .parse::<u64>()
            .ok()
            .filter(|v| *v <= max)
            .ok_or_else(|| LineError::BadValue {
                option: name.to_string(),
                value: value.to_string(),
                max,
            })?;
        // The ranges above fit each field's type.
        match name {
            "read-retries" => o.read_retries = Some(v as u32),
            "error-rate-degraded" => o.error_rate_degraded = Some(v as u32),
            "error-rate-critical" => o.error_rate_critical = Some(v as u32),
            "spare-used-degraded" => o.spare_used_degraded = Some(v as u8),
            "spare-used-critical" => o.spare_used_critical = Some(v as u8),
            "min-ios-for-rate" => o.min_ios_for_rate = Some(v),
            "pending-degraded" => o.pending_degraded = Some(v),
            _ => o.pending_critical = Some(v),
        }
    }
    Ok((o, nofail))
}

/// The options as `remap activate` flags.
pub fn override_flags(o: &SettingChanges) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |flag: &str, v: Option<u64>| {
        if let Some(v) = v {
            out.push(format!("--{flag}={v}"));
        }
    };
    push("read-retries", o.read_retries.map(u64::from));
    push("error-rate-degraded", o.error_rate_degraded.map(u64::from));
    push("error-rate-critical", o.error_rate_critical.map(u64::from));
    push("min-ios-for-rate", o.min_ios_for_rate);
    push("spare-used-degraded", o.spare_used_degraded.map(u64::from));
    push("spare-used-critical", o.spare_used_critical.map(u64::from));
    push("pending-degraded", o.pending_degraded);
    push("pending-critical", o.pending_critical);
    out
}
