//! The figures of a pair's status: geometry, spare use, remapped and pending counts,
//! health, sequence numbers and counters. [`gather`] reads them from a pair at rest (from
//! what recovery read off the spare, without writing anything); [`LiveStatus`] is the same
//! figures from a running server ([`crate::live::Live::status`]), as the control socket
//! carries them.

use std::collections::BTreeMap;
use std::path::Path;

use remap_core::health::{HealthInputs, evaluate};
use remap_core::{HealthReport, HealthThresholds};
use remap_meta::{DeviceIdentity, Geometry, Recovered, RecoveryReport, counters};
use serde::{Deserialize, Serialize};

use crate::health::snapshot;
use crate::time::utc;

/// A uuid in its usual hyphenated form.
pub fn uuid_text(uuid: &[u8; 16]) -> String {
    let hex: String = uuid.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[derive(Debug, Serialize)]
pub struct DeviceSection<'a> {
    pub path: &'a Path,
    pub size_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SpareSection {
    pub total: u64,
    pub used: u64,
    pub free: u64,
    pub retired: u64,
    pub block_size: u32,
    pub capacity_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockSection {
    pub remapped: u64,
    pub pending: u64,
    pub table_entries: u64,
    pub table_capacity: u64,
}

#[derive(Debug, Serialize)]
pub struct SequenceSection {
    pub superblock: u64,
    pub checkpoint: u64,
    /// Sequence number the next journal block will carry.
    pub journal_next: u64,
    /// Journal blocks written since the checkpoint (replayed on open).
    pub journal_live_blocks: u32,
}

/// Everything `remap status` shows; `--json` prints exactly this.
#[derive(Debug, Serialize)]
pub struct Status<'a> {
    pub main: DeviceSection<'a>,
    pub spare: DeviceSection<'a>,
    pub uuid: String,
    pub created: String,
    pub identity: DeviceIdentity,
    pub main_blocks: u64,
    pub geometry: Geometry,
    pub spares: SpareSection,
    pub blocks: BlockSection,
    pub health: HealthReport,
    pub thresholds: HealthThresholds,
    pub sequence: SequenceSection,
    pub scrub_cursor: u64,
    pub scrub_passes: u64,
    pub recovery: &'a RecoveryReport,
    /// Lifetime counters carried in checkpoints (I/Os, errors, remaps), by name.
    pub counters: BTreeMap<&'static str, u64>,
}

/// `wwid "naa.5000..."`, or a note that only the size is checked.
pub fn identity_text(id: &DeviceIdentity) -> String {
    match id.kind {
        remap_meta::IdentityKind::None => {
            "none (a file or a device without one: only the size is checked)".to_string()
        }
        kind => format!("{} {:?}", kind.as_str(), id.value_lossy()),
    }
}

/// Gather the status of an inspected pair.
pub fn gather<'a>(
    main: &'a Path,
    spare: &'a Path,
    spare_size: u64,
    rec: &'a Recovered,
) -> Status<'a> {
    let sb = &rec.superblock;
    let g = sb.geometry;
    let snap = snapshot(rec);
    let health = evaluate(&HealthInputs::from_snapshot(&snap), &sb.thresholds);
    let counters = counters::NAMES
        .iter()
        .zip(rec.counters.iter())
        .map(|(name, value)| (*name, *value))
        .collect();
    Status {
        main: DeviceSection {
            path: main,
            size_bytes: g.main_size,
        },
        spare: DeviceSection {
            path: spare,
            size_bytes: spare_size,
        },
        uuid: uuid_text(&sb.uuid),
        created: utc(sb.created_ns / 1_000_000_000),
        identity: sb.identity,
        main_blocks: g.main_blocks(),
        geometry: g,
        spares: SpareSection {
            total: snap.spares_total,
            used: snap.spares_used,
            free: snap.spares_free(),
            retired: snap.spares_retired,
            block_size: g.block_size.bytes(),
            capacity_bytes: g.pool_blocks.saturating_mul(g.block_size.bytes_u64()),
        },
        blocks: BlockSection {
            remapped: snap.remapped_blocks,
            pending: snap.pending_blocks,
            table_entries: rec.table.len() as u64,
            table_capacity: g.table_capacity,
        },
        health,
        thresholds: sb.thresholds,
        sequence: SequenceSection {
            superblock: sb.sequence,
            checkpoint: sb.checkpoint_sequence,
            journal_next: rec.journal.next_sequence(),
            journal_live_blocks: rec.journal.live_blocks(),
        },
        scrub_cursor: sb.scrub_cursor,
        scrub_passes: sb.scrub_passes,
        recovery: &rec.report,
        counters,
    }
}

/// A device path and size, owned (the live status travels over the control socket).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnedDevice {
    pub path: std::path::PathBuf,
    pub size_bytes: u64,
}

/// The serving process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveSection {
    pub pid: u32,
    /// When the server started (UTC).
    pub started: String,
    pub uptime_s: u64,
}

/// Metadata sequence numbers a live device knows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveSequence {
    /// Sequence number of the newest durable metadata change.
    pub newest_durable: u64,
    /// Sequence number the next journal block will carry.
    pub journal_next: u64,
}

/// Everything `remap status --control` shows; `--json` prints exactly this. The keys of
/// `remap status --json` are kept where a live device has the figure; `stats` adds every
/// live counter and gauge (including scrub counters and the latency histogram, buckets in
/// log2 nanoseconds), and `scrub` the background scrub.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveStatus {
    pub live: LiveSection,
    pub main: OwnedDevice,
    pub spare: OwnedDevice,
    pub uuid: String,
    pub created: String,
    pub main_blocks: u64,
    pub geometry: serde_json::Value,
    pub spares: SpareSection,
    pub blocks: BlockSection,
    pub health: crate::health::Verdict,
    pub thresholds: HealthThresholds,
    /// Extra attempts for a failing read.
    pub read_retries: u32,
    pub sequence: LiveSequence,
    pub scrub_cursor: u64,
    pub scrub_passes: u64,
    pub scrub: crate::scrub::ScrubStatus,
    /// The lifetime counters (the names `remap status` shows), live.
    pub counters: BTreeMap<String, u64>,
    /// Every statistic of the device, live.
    pub stats: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_hyphenated() {
        let u = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef,
        ];
        assert_eq!(uuid_text(&u), "12345678-9abc-def0-0123-456789abcdef");
    }
}
