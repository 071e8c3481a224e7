//! `dmsetup status` and `dmsetup table` lines. Every field is documented in the crate's
//! README; the order of the first eighteen follows the reference dm-remap v4 target, the
//! last three are ours.

use core::fmt::{self, Write};
use core::sync::atomic::Ordering;

use remap_core::StatsSnapshot;

use crate::target::Shared;

/// The version the target registers and prints first.
pub const VERSION: &str = "4.0.0";
/// Number of fields of the status line.
pub const STATUS_FIELDS: usize = 21;

/// Bytes per second over `elapsed_ns`, without 128-bit division. Rounds down.
pub fn throughput_bps(bytes: u64, elapsed_ns: u64) -> u64 {
    if elapsed_ns == 0 {
        return 0;
    }
    match bytes.checked_mul(1_000_000_000) {
        Some(scaled) => scaled / elapsed_ns,
        // Huge byte counts: lose sub-millisecond precision instead of overflowing.
        None => bytes / (elapsed_ns / 1_000_000).max(1) * 1000,
    }
}

/// The status line (`STATUSTYPE_INFO`), after device-mapper's `<start> <len> <target>`.
pub fn write_status(
    w: &mut impl Write,
    sh: &Shared,
    main: &str,
    spare: &str,
    now_ns: u64,
) -> fmt::Result {
    let s: StatsSnapshot = sh.stats.snapshot();
    let sectors_per_block = sh.block_bytes() / 512;
    let elapsed = now_ns.saturating_sub(sh.since_ns.load(Ordering::Relaxed));
    let health = sh.health();
    write!(
        w,
        "{VERSION} {main} {spare} {reads} {writes} {remaps} {errors} {active} {ops} {total_ns} {avg_ns} {tput} {sector} {spare_sectors} {total_ios} {normal} {remapped} {remapped_sectors} {pending} {free} {health}",
        reads = s.reads,
        writes = s.writes,
        remaps = s.remaps,
        errors = s.total_errors(),
        active = s.remapped_blocks,
        ops = s.latency.count,
        total_ns = s.latency.total_ns,
        avg_ns = s.latency.average_ns(),
        tput = throughput_bps(s.bytes_read.saturating_add(s.bytes_written), elapsed),
        sector = sh.block_bytes(),
        spare_sectors = sh.pool_blocks.saturating_mul(sectors_per_block),
        total_ios = s.total_ios(),
        normal = s.normal_ios,
        remapped = s.remapped_ios,
        remapped_sectors = s.remapped_blocks.saturating_mul(sectors_per_block),
        pending = s.pending_blocks,
        free = s.spares_free(),
        health = health.state.as_str(),
    )
}

/// The table arguments (`STATUSTYPE_TABLE`): what recreates this target.
pub fn write_table(w: &mut impl Write, sh: &Shared, main: &str, spare: &str) -> fmt::Result {
    write!(w, "{main} {spare}")?;
    sh.options.write_table_args(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throughput_is_exact_and_never_overflows() {
        assert_eq!(throughput_bps(4096, 1_000_000_000), 4096);
        assert_eq!(throughput_bps(1 << 20, 500_000_000), 2 << 20);
        assert_eq!(throughput_bps(123, 0), 0);
        assert_eq!(
            throughput_bps(u64::MAX, 1_000_000_000),
            u64::MAX / 1000 * 1000
        );
    }
}
