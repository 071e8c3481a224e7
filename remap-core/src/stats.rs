//! Counters and the latency histogram. All atomics, updated on the I/O path without locks;
//! a [`StatsSnapshot`] is a consistent-enough copy for reports (each field read once).

use core::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Latency buckets: bucket `i` counts latencies in `[2^(i-1), 2^i)` ns (bucket 0: 0 ns).
pub const LATENCY_BUCKETS: usize = 64;

/// Live counters of one device. Every field is written by the engine; none is decorative.
#[derive(Debug)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub trims: AtomicU64,
    pub write_zeroes: AtomicU64,
    pub bytes_read: AtomicU64,
    pub bytes_written: AtomicU64,
    /// Data I/Os (read, write, trim, write-zeroes) served by main alone.
    pub normal_ios: AtomicU64,
    /// Data I/Os that touched at least one remapped or pending block.
    pub remapped_ios: AtomicU64,
    /// Data I/Os that returned an error to the caller.
    pub failed_ios: AtomicU64,
    /// Main-device reads that failed (each attempt on an isolated block counts once).
    pub main_read_errors: AtomicU64,
    pub main_write_errors: AtomicU64,
    pub spare_read_errors: AtomicU64,
    pub spare_write_errors: AtomicU64,
    /// Reads that failed and then succeeded on a retry.
    pub transient_recoveries: AtomicU64,
    pub flush_errors: AtomicU64,
    /// Blocks moved to a spare (by a write error, a rewrite of a pending block, or by hand).
    pub remaps: AtomicU64,
    /// Blocks moved back to main by hand.
    pub unmaps: AtomicU64,
    /// Times a block was marked pending.
    pub pending_marked: AtomicU64,
    /// Spare blocks taken out of service.
    pub spares_retired_events: AtomicU64,
    /// Metadata commits (each one a journal write and a flush in `remap-meta`).
    pub commits: AtomicU64,
    /// Bytes read by scrubs (not counted as client reads).
    pub scrubbed_bytes: AtomicU64,
    /// Scrub reads that found unreadable blocks.
    pub scrub_errors: AtomicU64,
    // Gauges, set by the engine whenever the table or pool changes.
    pub pending_blocks: AtomicU64,
    pub remapped_blocks: AtomicU64,
    pub spares_total: AtomicU64,
    pub spares_used: AtomicU64,
    pub spares_retired: AtomicU64,
    pub latency: LatencyHistogram,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

/// A log2 histogram of latencies in nanoseconds.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; LATENCY_BUCKETS],
    total_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    pub const fn new() -> Self {
        LatencyHistogram {
            buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS],
            total_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// The bucket a latency falls in.
    pub fn bucket_of(ns: u64) -> usize {
        (u64::BITS - ns.leading_zeros()).min(LATENCY_BUCKETS as u32 - 1) as usize
    }

    /// Upper bound (exclusive) of bucket `i`, in ns.
    pub fn bucket_upper_ns(i: usize) -> u64 {
        if i >= 63 { u64::MAX } else { 1u64 << i }
    }

    pub fn record(&self, ns: u64) {
        self.buckets[Self::bucket_of(ns)].fetch_add(1, Relaxed);
        self.total_ns.fetch_add(ns, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            buckets: core::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            total_ns: self.total_ns.load(Relaxed),
            count: self.count.load(Relaxed),
        }
    }

    fn clear(&self) {
        for b in &self.buckets {
            b.store(0, Relaxed);
        }
        self.total_ns.store(0, Relaxed);
        self.count.store(0, Relaxed);
    }
}

/// A copy of a [`LatencyHistogram`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct LatencySnapshot {
    #[cfg_attr(feature = "std", serde(serialize_with = "serialize_buckets"))]
    pub buckets: [u64; LATENCY_BUCKETS],
    pub total_ns: u64,
    pub count: u64,
}

#[cfg(feature = "std")]
fn serialize_buckets<S: serde::Serializer>(
    b: &[u64; LATENCY_BUCKETS],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(b.iter())
}

impl Default for LatencySnapshot {
    fn default() -> Self {
        LatencySnapshot {
            buckets: [0; LATENCY_BUCKETS],
            total_ns: 0,
            count: 0,
        }
    }
}

impl LatencySnapshot {
    pub fn average_ns(&self) -> u64 {
        self.total_ns.checked_div(self.count).unwrap_or(0)
    }

    /// Upper bound of the bucket holding the `permille`-th latency (500 = median).
    pub fn percentile_upper_ns(&self, permille: u64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = (self.count.saturating_mul(permille.min(1000)) / 1000).max(1);
        let mut seen = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return LatencyHistogram::bucket_upper_ns(i);
            }
        }
        u64::MAX
    }
}

macro_rules! snapshot_struct {
    ($($field:ident),* $(,)?) => {
        /// A copy of every counter of [`Stats`].
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[cfg_attr(feature = "std", derive(serde::Serialize))]
        pub struct StatsSnapshot {
            $(pub $field: u64,)*
            pub latency: LatencySnapshot,
        }

        impl Stats {
            pub const fn new() -> Self {
                Stats {
                    $($field: AtomicU64::new(0),)*
                    latency: LatencyHistogram::new(),
                }
            }

            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot {
                    $($field: self.$field.load(Relaxed),)*
                    latency: self.latency.snapshot(),
                }
            }

            /// Start counting afresh from `base` (lifetime counters loaded from disk).
            pub fn restore(&self, base: &StatsSnapshot) {
                $(self.$field.store(base.$field, Relaxed);)*
            }
        }
    };
}

snapshot_struct!(
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
    scrubbed_bytes,
    scrub_errors,
    pending_blocks,
    remapped_blocks,
    spares_total,
    spares_used,
    spares_retired,
);

impl Stats {
    /// Count one event.
    #[inline]
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Zero the I/O and error counters (the `clear_stats` message). Gauges that describe the
    /// table and pool are kept, since they are facts about the device, not counts.
    pub fn clear_counters(&self) {
        for c in [
            &self.reads,
            &self.writes,
            &self.flushes,
            &self.trims,
            &self.write_zeroes,
            &self.bytes_read,
            &self.bytes_written,
            &self.normal_ios,
            &self.remapped_ios,
            &self.failed_ios,
            &self.main_read_errors,
            &self.main_write_errors,
            &self.spare_read_errors,
            &self.spare_write_errors,
            &self.transient_recoveries,
            &self.flush_errors,
            &self.remaps,
            &self.unmaps,
            &self.pending_marked,
            &self.spares_retired_events,
            &self.commits,
            &self.scrubbed_bytes,
            &self.scrub_errors,
        ] {
            c.store(0, Relaxed);
        }
        self.latency.clear();
    }
}

impl StatsSnapshot {
    /// Data I/Os: reads, writes, trims and write-zeroes (`normal_ios + remapped_ios`).
    pub fn total_ios(&self) -> u64 {
        self.normal_ios + self.remapped_ios
    }

    /// Every error the devices reported, of any kind.
    pub fn total_errors(&self) -> u64 {
        self.main_read_errors
            + self.main_write_errors
            + self.spare_read_errors
            + self.spare_write_errors
            + self.flush_errors
    }

    pub fn spares_free(&self) -> u64 {
        self.spares_total
            .saturating_sub(self.spares_used)
            .saturating_sub(self.spares_retired)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_and_percentiles() {
        assert_eq!(LatencyHistogram::bucket_of(0), 0);
        assert_eq!(LatencyHistogram::bucket_of(1), 1);
        assert_eq!(LatencyHistogram::bucket_of(1023), 10);
        assert_eq!(LatencyHistogram::bucket_of(1024), 11);
        assert_eq!(LatencyHistogram::bucket_of(u64::MAX), 63);
        let s = Stats::new();
        for ns in [100, 200, 300, 5_000, 1_000_000] {
            s.latency.record(ns);
        }
        let snap = s.snapshot().latency;
        assert_eq!(snap.count, 5);
        assert_eq!(snap.average_ns(), 1_005_600 / 5);
        assert_eq!(snap.percentile_upper_ns(500), 256);
        assert_eq!(snap.percentile_upper_ns(1000), 1 << 20);
    }

    #[test]
    fn clear_keeps_gauges() {
        let s = Stats::new();
        Stats::bump(&s.reads);
        s.spares_total.store(10, Relaxed);
        s.clear_counters();
        let snap = s.snapshot();
        assert_eq!(snap.reads, 0);
        assert_eq!(snap.spares_total, 10);
        assert_eq!(snap.spares_free(), 10);
    }
}
