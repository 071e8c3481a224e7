//! What a serving session (`remap serve`, `remap attach`) did to the device, as both print
//! it when they stop, in a line a test harness can parse.

use remap_core::StatsSnapshot;

/// `device: 3 remapped, 0 pending; this session 3 remaps, 1 main read errors, 2 main write
/// errors`: the device's state after, and the counters' growth since `before`.
pub fn device_line(before: &StatsSnapshot, after: &StatsSnapshot) -> String {
    format!(
        "device: {} remapped, {} pending; this session {} remaps, {} main read errors, {} main write errors",
        after.remapped_blocks,
        after.pending_blocks,
        after.remaps - before.remaps,
        after.main_read_errors - before.main_read_errors,
        after.main_write_errors - before.main_write_errors,
    )
}
