//! Lifetime counters carried in checkpoints, like a drive's SMART lifetime counts. They are
//! stored as a fixed array of 32 slots; the order below is part of the format (version 1
//! uses the first 21 slots; the rest are zero and reserved for later counters).

use remap_core::StatsSnapshot;

/// Slots in a checkpoint.
pub const SLOTS: usize = 32;

/// Counter array as stored.
pub type Counters = [u64; SLOTS];

macro_rules! counter_slots {
    ($($field:ident),* $(,)?) => {
        /// Names of the stored counters, in slot order.
        pub const NAMES: &[&str] = &[$(stringify!($field)),*];

        /// The lifetime counters of a snapshot, in slot order.
        pub fn from_snapshot(s: &StatsSnapshot) -> Counters {
            let mut c = [0u64; SLOTS];
            let values = [$(s.$field),*];
            c[..values.len()].copy_from_slice(&values);
            c
        }

        /// A snapshot whose lifetime counters are `c` (gauges and latency zero: they
        /// describe the live device and are recomputed on open).
        pub fn to_snapshot(c: &Counters) -> StatsSnapshot {
            let mut s = StatsSnapshot::default();
            let mut i = 0;
            $(s.$field = c[i]; i += 1;)*
            let _ = i;
            s
        }
    };
}

counter_slots!(
    reads,
    writes,
    flushes,
    trims,
    write_zeroes,
    bytes_read,
    bytes_written,
    normal_ios,
    remapped_ios,
    failed_ios,
    main_read_errors,
    main_write_errors,
    spare_read_errors,
    spare_write_errors,
    transient_recoveries,
    flush_errors,
    remaps,
    unmaps,
    pending_marked,
    spares_retired_events,
    commits,
);

const _: () = assert!(NAMES.len() <= SLOTS);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_lifetime_counters() {
        let s = StatsSnapshot {
            reads: 1,
            commits: 21,
            remaps: 17,
            pending_blocks: 99,
            ..Default::default()
        };
        let c = from_snapshot(&s);
        assert_eq!(c[0], 1);
        assert_eq!(c[20], 21);
        let back = to_snapshot(&c);
        assert_eq!(back.reads, 1);
        assert_eq!(back.remaps, 17);
        assert_eq!(back.pending_blocks, 0, "gauges are not lifetime counters");
    }
}
