//! The persisted settings of a pair (health thresholds, read retries) and changes to them:
//! the same changes set the first values at format time, change a pair at rest, and travel
//! in a control request to a running server.

use std::path::PathBuf;

use remap_core::store::Settings;
use remap_core::{BlockBackend, DeviceError, HealthThresholds, RemapDevice};
use serde::{Deserialize, Serialize};

/// Changes to the persisted settings; each is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingChanges {
    /// Error rate (device errors per million data I/Os) at which health is degraded.
    #[serde(default)]
    pub error_rate_degraded: Option<u32>,
    /// Error rate at which health is critical.
    #[serde(default)]
    pub error_rate_critical: Option<u32>,
    /// Data I/Os before the error rate is judged (one early error is not a 100 % rate).
    #[serde(default)]
    pub min_ios_for_rate: Option<u64>,
    /// Percent of the spare pool used or retired at which health is degraded.
    #[serde(default)]
    pub spare_used_degraded: Option<u8>,
    /// Percent of the spare pool used or retired at which health is critical.
    #[serde(default)]
    pub spare_used_critical: Option<u8>,
    /// Pending (unreadable) blocks at which health is degraded.
    #[serde(default)]
    pub pending_degraded: Option<u64>,
    /// Pending blocks at which health is critical.
    #[serde(default)]
    pub pending_critical: Option<u64>,
    /// Extra attempts for a failing read before its block is declared pending.
    #[serde(default)]
    pub read_retries: Option<u32>,
}

impl SettingChanges {
    pub fn is_empty(&self) -> bool {
        *self == SettingChanges::default()
    }

    /// Apply the threshold changes.
    pub fn apply_thresholds(&self, t: &mut HealthThresholds) {
        fn put<T: Copy>(slot: &mut T, v: Option<T>) {
            if let Some(v) = v {
                *slot = v;
            }
        }
        put(&mut t.error_rate_degraded_ppm, self.error_rate_degraded);
        put(&mut t.error_rate_critical_ppm, self.error_rate_critical);
        put(&mut t.min_ios_for_rate, self.min_ios_for_rate);
        put(&mut t.spare_used_degraded_pct, self.spare_used_degraded);
        put(&mut t.spare_used_critical_pct, self.spare_used_critical);
        put(&mut t.pending_degraded, self.pending_degraded);
        put(&mut t.pending_critical, self.pending_critical);
    }

    /// Apply every change (the engine validates the result before saving it).
    pub fn apply(&self, s: &mut Settings) {
        self.apply_thresholds(&mut s.thresholds);
        if let Some(r) = self.read_retries {
            s.read_retries = r;
        }
    }
}

/// The settings as a control reply carries them (remap-core's `Settings` only
/// serializes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedSettings {
    pub thresholds: HealthThresholds,
    pub read_retries: u32,
    pub scrub_cursor: u64,
    pub scrub_passes: u64,
}

impl From<SavedSettings> for Settings {
    fn from(s: SavedSettings) -> Self {
        Settings {
            thresholds: s.thresholds,
            read_retries: s.read_retries,
            scrub_cursor: s.scrub_cursor,
            scrub_passes: s.scrub_passes,
        }
    }
}

impl From<Settings> for SavedSettings {
    fn from(s: Settings) -> Self {
        SavedSettings {
            thresholds: s.thresholds,
            read_retries: s.read_retries,
            scrub_cursor: s.scrub_cursor,
            scrub_passes: s.scrub_passes,
        }
    }
}

impl From<&remap_meta::Superblock> for SavedSettings {
    fn from(sb: &remap_meta::Superblock) -> Self {
        SavedSettings {
            thresholds: sb.thresholds,
            read_retries: sb.read_retries,
            scrub_cursor: sb.scrub_cursor,
            scrub_passes: sb.scrub_passes,
        }
    }
}

/// Why settings were not saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// The settings that would result are inconsistent (a degraded threshold above its
    /// critical one, a value out of range). Nothing was saved.
    #[error("{}: {source}", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: DeviceError,
    },
    /// Saving them failed.
    #[error("{}: cannot save the settings: {source}", path.display())]
    Save {
        path: PathBuf,
        #[source]
        source: DeviceError,
    },
}

impl SettingsError {
    /// Whether the changes themselves were refused (rather than the save failing).
    pub fn is_invalid(&self) -> bool {
        matches!(self, SettingsError::Invalid { .. })
    }
}

/// Apply `changes` to the device's settings and save them; returns the settings saved.
/// `spare_path` names the device in errors.
pub fn update<M: BlockBackend, S: BlockBackend>(
    device: &RemapDevice<M, S>,
    changes: &SettingChanges,
    spare_path: &std::path::Path,
) -> Result<Settings, SettingsError> {
    // A change to the values already set writes nothing.
    let current = device.settings();
    let mut proposed = current;
    changes.apply(&mut proposed);
    if proposed == current {
        return Ok(current);
    }
    device
        .update_settings(|s| changes.apply(s))
        .map_err(|source| match source {
            DeviceError::Config(_) => SettingsError::Invalid {
                path: spare_path.to_path_buf(),
                source,
            },
            source => SettingsError::Save {
                path: spare_path.to_path_buf(),
                source,
            },
        })
}
