//! The drive's own counters, folded into remap's health verdict.
//!
//! Input is the JSON that `smartctl --json -a DEV` prints (smartmontools 7+): ATA attribute
//! tables and the NVMe health log. The attributes that speak about a dying medium:
//!
//! | id | attribute | rule |
//! | --- | --- | --- |
//! | 5 | reallocated sectors | > 0 degraded; normalized value within 10 of its threshold (or at it): critical |
//! | 187 | reported uncorrectable | > 0 degraded |
//! | 188 | command timeout | > 0 degraded (media or cabling) |
//! | 197 | current pending sectors | > 0 degraded; at or above remap's pending-critical threshold: critical |
//! | 198 | offline uncorrectable | > 0 degraded |
//! | 199 | UDMA CRC errors | > 0 degraded, reported as an interface (cable) problem, not media |
//!
//! and for any drive: SMART overall status FAILED, or an attribute `FAILING_NOW`: critical.
//! NVMe: critical warning bits set or available spare at/below its threshold: critical;
//! media errors > 0 degraded; percentage used ≥ 90 degraded, ≥ 100 critical.
//!
//! Given an earlier reading too, growth of pending/reallocated/uncorrectable counts between
//! the two readings is a reason of its own.

use std::path::Path;

use remap_core::HealthState;
use serde::Serialize;
use serde_json::Value;

/// SMART attributes remap reads, by id.
pub const REALLOCATED: u32 = 5;
pub const REPORTED_UNCORRECTABLE: u32 = 187;
pub const COMMAND_TIMEOUT: u32 = 188;
pub const CURRENT_PENDING: u32 = 197;
pub const OFFLINE_UNCORRECTABLE: u32 = 198;
pub const UDMA_CRC_ERRORS: u32 = 199;

/// Why SMART data could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SmartError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is not smartctl JSON output: {source}")]
    Parse {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what}: smartctl reported no SMART data (no ATA attribute table, no NVMe health log)")]
    NoData { what: String },
    #[error("cannot run smartctl (install the smartmontools package): {0}")]
    Spawn(std::io::Error),
}

/// One ATA attribute as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Attribute {
    pub id: u32,
    pub name: String,
    /// The raw count (smartctl's interpretation where it gives one).
    pub raw: u64,
    /// Normalized value and the vendor's failure threshold.
    pub value: Option<u64>,
    pub thresh: Option<u64>,
    pub failing_now: bool,
}

/// A parsed SMART reading.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SmartReading {
    pub model: Option<String>,
    pub serial: Option<String>,
    /// The drive's overall self-assessment, if reported.
    pub passed: Option<bool>,
    pub attributes: Vec<Attribute>,
    pub nvme: Option<NvmeHealth>,
}

/// The NVMe health log fields remap reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NvmeHealth {
    pub critical_warning: u64,
    pub available_spare: u64,
    pub available_spare_threshold: u64,
    pub percentage_used: u64,
    pub media_errors: u64,
}

/// One reason in a SMART verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SmartReason {
    pub state: HealthState,
    /// The attribute that drives it (None for the overall status / NVMe log).
    pub attribute: Option<u32>,
    pub message: String,
}

/// The verdict from SMART data alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SmartVerdict {
    pub state: HealthState,
    pub reasons: Vec<SmartReason>,
}

fn number(v: &Value) -> Option<u64> {
    v.as_u64()
}

/// The leading integer of smartctl's interpreted raw string ("12", "0 0 3", "36 (Min/Max 20/45)").
fn leading_int(s: &str) -> Option<u64> {
    let digits: String = s.trim().chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl SmartReading {
    /// Parse `smartctl --json -a` output. `what` names the source in errors.
    pub fn parse(json: &str, what: &str) -> Result<SmartReading, SmartError> {
        let v: Value = serde_json::from_str(json).map_err(|source| SmartError::Parse {
            what: what.to_string(),
            source,
        })?;
        let mut r = SmartReading {
            model: v["model_name"].as_str().map(str::to_string),
            serial: v["serial_number"].as_str().map(str::to_string),
            passed: v["smart_status"]["passed"].as_bool(),
            ..Default::default()
        };
        if let Some(table) = v["ata_smart_attributes"]["table"].as_array() {
            for a in table {
                let Some(id) = number(&a["id"]).and_then(|i| u32::try_from(i).ok()) else {
                    continue;
                };
                let raw = a["raw"]["string"]
                    .as_str()
                    .and_then(leading_int)
                    .or_else(|| number(&a["raw"]["value"]))
                    .unwrap_or(0);
                r.attributes.push(Attribute {
                    id,
                    name: a["name"].as_str().unwrap_or("").to_string(),
                    raw,
                    value: number(&a["value"]),
                    thresh: number(&a["thresh"]),
                    failing_now: a["when_failed"].as_str() == Some("FAILING_NOW"),
                });
            }
        }
        let log = &v["nvme_smart_health_information_log"];
        if log.is_object() {
            r.nvme = Some(NvmeHealth {
                critical_warning: number(&log["critical_warning"]).unwrap_or(0),
                available_spare: number(&log["available_spare"]).unwrap_or(100),
                available_spare_threshold: number(&log["available_spare_threshold"]).unwrap_or(0),
                percentage_used: number(&log["percentage_used"]).unwrap_or(0),
                media_errors: number(&log["media_errors"]).unwrap_or(0),
            });
        }
        if r.attributes.is_empty() && r.nvme.is_none() && r.passed.is_none() {
            return Err(SmartError::NoData {
                what: what.to_string(),
            });
        }
        Ok(r)
    }

    /// Read a saved `smartctl --json -a` output.
    pub fn from_file(path: &Path) -> Result<SmartReading, SmartError> {
        let json = std::fs::read_to_string(path).map_err(|source| SmartError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&json, &path.display().to_string())
    }

    /// Run `smartctl --json -a DEV`. smartctl's exit status is a bit mask that is non-zero
    /// for failing drives too, so only output that does not parse is an error.
    pub fn from_device(dev: &Path) -> Result<SmartReading, SmartError> {
        let out = std::process::Command::new("smartctl")
            .args(["--json", "-a"])
            .arg(dev)
            .output()
            .map_err(SmartError::Spawn)?;
        Self::parse(
            &String::from_utf8_lossy(&out.stdout),
            &format!("smartctl output for {}", dev.display()),
        )
    }

    pub fn attribute(&self, id: u32) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.id == id)
    }

    /// Judge this reading; `earlier`, if given, is a previous reading of the same drive.
    /// `pending_critical` is remap's own pending-blocks critical threshold.
    pub fn verdict(&self, earlier: Option<&SmartReading>, pending_critical: u64) -> SmartVerdict {
        let mut reasons = Vec::new();
        let mut say = |state, attribute, message: String| {
            reasons.push(SmartReason {
                state,
                attribute,
                message,
            })
        };
        use HealthState::{Critical, Degraded};
        if self.passed == Some(false) {
            say(
                Critical,
                None,
                "the drive's own SMART verdict is FAILED".into(),
            );
        }
        for a in &self.attributes {
            if a.failing_now {
                say(
                    Critical,
                    Some(a.id),
                    format!("attribute {} ({}) is FAILING_NOW", a.id, a.name),
                );
            }
        }
        if let Some(a) = self.attribute(REALLOCATED) {
            let near = match (a.value, a.thresh) {
                (Some(v), Some(t)) if t > 0 => v <= t.saturating_add(10),
                _ => false,
            };
            if near {
                say(
                    Critical,
                    Some(a.id),
                    format!(
                        "{} reallocated sectors; the drive's spare area is nearly exhausted (normalized {} vs threshold {})",
                        a.raw,
                        a.value.unwrap_or(0),
                        a.thresh.unwrap_or(0)
                    ),
                );
            } else if a.raw > 0 {
                say(
                    Degraded,
                    Some(a.id),
                    format!("{} reallocated sectors", a.raw),
                );
            }
        }
        if let Some(a) = self.attribute(CURRENT_PENDING).filter(|a| a.raw > 0) {
            let state = if a.raw >= pending_critical {
                Critical
            } else {
                Degraded
            };
            say(
                state,
                Some(a.id),
                format!("{} sectors pending reallocation (unreadable)", a.raw),
            );
        }
        for (id, what) in [
            (
                REPORTED_UNCORRECTABLE,
                "uncorrectable errors reported to the host",
            ),
            (
                OFFLINE_UNCORRECTABLE,
                "sectors uncorrectable in offline scans",
            ),
            (
                COMMAND_TIMEOUT,
                "command timeouts (failing media or cabling)",
            ),
        ] {
            if let Some(a) = self.attribute(id).filter(|a| a.raw > 0) {
                say(Degraded, Some(id), format!("{} {what}", a.raw));
            }
        }
        if let Some(a) = self.attribute(UDMA_CRC_ERRORS).filter(|a| a.raw > 0) {
            say(
                Degraded,
                Some(a.id),
                format!(
                    "{} interface CRC errors: check the cable and port (not a media fault)",
                    a.raw
                ),
            );
        }
        if let Some(n) = &self.nvme {
            if n.critical_warning != 0 {
                say(
                    Critical,
                    None,
                    format!("NVMe critical warning {:#x}", n.critical_warning),
                );
            }
            if n.available_spare <= n.available_spare_threshold {
                say(
                    Critical,
                    None,
                    format!(
                        "NVMe available spare {}% at or below its threshold {}%",
                        n.available_spare, n.available_spare_threshold
                    ),
                );
            }
            if n.media_errors > 0 {
                say(
                    Degraded,
                    None,
                    format!("{} NVMe media errors", n.media_errors),
                );
            }
            if n.percentage_used >= 100 {
                say(
                    Critical,
                    None,
                    format!("NVMe endurance used {}%", n.percentage_used),
                );
            } else if n.percentage_used >= 90 {
                say(
                    Degraded,
                    None,
                    format!("NVMe endurance used {}%", n.percentage_used),
                );
            }
        }
        if let Some(old) = earlier {
            for id in [
                REALLOCATED,
                CURRENT_PENDING,
                OFFLINE_UNCORRECTABLE,
                REPORTED_UNCORRECTABLE,
            ] {
                if let (Some(a), Some(b)) = (old.attribute(id), self.attribute(id))
                    && b.raw > a.raw
                {
                    say(
                        Degraded,
                        Some(id),
                        format!(
                            "{} ({}) grew from {} to {} between readings",
                            b.name, id, a.raw, b.raw
                        ),
                    );
                }
            }
        }
        let state = reasons
            .iter()
            .map(|r| r.state)
            .max()
            .unwrap_or(HealthState::Healthy);
        SmartVerdict { state, reasons }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> SmartReading {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/smart")
            .join(name);
        SmartReading::from_file(&path).unwrap()
    }

    #[test]
    fn healthy_drive_is_healthy() {
        let r = fixture("healthy.json");
        assert_eq!(r.serial.as_deref(), Some("WD-WCC4N0HEALTHY"));
        let v = r.verdict(None, 64);
        assert_eq!(v.state, HealthState::Healthy, "{:?}", v.reasons);
        assert!(v.reasons.is_empty());
    }

    #[test]
    fn pending_sectors_degrade_and_their_growth_is_named() {
        let before = fixture("pending-before.json");
        let after = fixture("pending-growing.json");
        let v = after.verdict(Some(&before), 64);
        assert_eq!(v.state, HealthState::Degraded);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.attribute == Some(CURRENT_PENDING)
                    && r.message.contains("24 sectors pending"))
        );
        assert!(v.reasons.iter().any(
            |r| r.attribute == Some(CURRENT_PENDING) && r.message.contains("grew from 8 to 24")
        ));
        // Above remap's pending-critical threshold the same drive is critical.
        assert_eq!(after.verdict(None, 16).state, HealthState::Critical);
    }

    #[test]
    fn reallocations_near_exhaustion_are_critical() {
        let v = fixture("realloc-near-exhaustion.json").verdict(None, 64);
        assert_eq!(v.state, HealthState::Critical);
        let r = v
            .reasons
            .iter()
            .find(|r| r.attribute == Some(REALLOCATED))
            .unwrap();
        assert_eq!(r.state, HealthState::Critical);
        assert!(r.message.contains("nearly exhausted"), "{}", r.message);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.attribute == Some(UDMA_CRC_ERRORS) && r.message.contains("cable"))
        );
    }

    #[test]
    fn nvme_health_log() {
        let v = fixture("nvme-spare-low.json").verdict(None, 64);
        assert_eq!(v.state, HealthState::Critical);
        assert!(
            v.reasons
                .iter()
                .any(|r| r.message.contains("available spare"))
        );
    }

    #[test]
    fn junk_is_a_clear_error() {
        assert!(matches!(
            SmartReading::parse("not json", "x"),
            Err(SmartError::Parse { .. })
        ));
        assert!(matches!(
            SmartReading::parse("{\"smartctl\": {}}", "x"),
            Err(SmartError::NoData { .. })
        ));
    }
}
