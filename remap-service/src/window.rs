//! Rates over sliding windows: errors, I/Os, remaps and pending marks in the last minute,
//! hour and day. A [`RateWindow`] is a ring of fixed intervals fed with counter totals at
//! any cadence; each observation adds the growth since the previous one to the current
//! interval. Integer arithmetic only, no allocation.

use remap_core::StatsSnapshot;

/// The counts a window keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub ios: u64,
    pub errors: u64,
    pub remaps: u64,
    pub pending_marked: u64,
}

impl Counts {
    /// The lifetime totals in a snapshot.
    pub fn from_snapshot(s: &StatsSnapshot) -> Self {
        Counts {
            ios: s.total_ios(),
            errors: s.total_errors(),
            remaps: s.remaps,
            pending_marked: s.pending_marked,
        }
    }

    fn saturating_sub(self, o: Counts) -> Counts {
        Counts {
            ios: self.ios.saturating_sub(o.ios),
            errors: self.errors.saturating_sub(o.errors),
            remaps: self.remaps.saturating_sub(o.remaps),
            pending_marked: self.pending_marked.saturating_sub(o.pending_marked),
        }
    }

    fn add(&mut self, o: Counts) {
        self.ios = self.ios.saturating_add(o.ios);
        self.errors = self.errors.saturating_add(o.errors);
        self.remaps = self.remaps.saturating_add(o.remaps);
        self.pending_marked = self.pending_marked.saturating_add(o.pending_marked);
    }
}

/// A ring of `N` intervals of `interval_ns` each: the window is the last `N` intervals.
#[derive(Debug, Clone)]
pub struct RateWindow<const N: usize> {
    interval_ns: u64,
    buckets: [Counts; N],
    /// Interval number (now / interval_ns) of the newest bucket.
    newest: u64,
    last_totals: Option<Counts>,
}

impl<const N: usize> RateWindow<N> {
    pub const fn new(interval_ns: u64) -> Self {
        RateWindow {
            interval_ns,
            buckets: [Counts {
                ios: 0,
                errors: 0,
                remaps: 0,
                pending_marked: 0,
            }; N],
            newest: 0,
            last_totals: None,
        }
    }

    /// Length of the window in nanoseconds.
    pub fn span_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(N as u64)
    }

    /// Feed the counter totals as of `now_ns`.
    pub fn observe(&mut self, now_ns: u64, totals: Counts) {
        let interval = now_ns / self.interval_ns.max(1);
        if self.last_totals.is_none() {
            self.newest = interval;
        }
        if interval > self.newest {
            // Clear the intervals that passed without an observation.
            let steps = (interval - self.newest).min(N as u64);
            for k in 1..=steps {
                self.buckets[((self.newest + k) % N as u64) as usize] = Counts::default();
            }
            self.newest = interval;
        }
        if let Some(last) = self.last_totals {
            // Observations older than the newest interval land in it (clocks do not go back).
            self.buckets[(self.newest % N as u64) as usize].add(totals.saturating_sub(last));
        }
        self.last_totals = Some(totals);
    }

    /// Counts over the window.
    pub fn sum(&self) -> Counts {
        let mut c = Counts::default();
        for b in &self.buckets {
            c.add(*b);
        }
        c
    }
}

/// The three windows a device's health is judged over.
#[derive(Debug, Clone)]
pub struct HealthWindows {
    pub minute: RateWindow<60>,
    pub hour: RateWindow<60>,
    pub day: RateWindow<24>,
}

impl Default for HealthWindows {
    fn default() -> Self {
        HealthWindows {
            minute: RateWindow::new(1_000_000_000),
            hour: RateWindow::new(60_000_000_000),
            day: RateWindow::new(3_600_000_000_000),
        }
    }
}

impl HealthWindows {
    pub fn observe(&mut self, now_ns: u64, totals: Counts) {
        self.minute.observe(now_ns, totals);
        self.hour.observe(now_ns, totals);
        self.day.observe(now_ns, totals);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(ios: u64, errors: u64) -> Counts {
        Counts {
            ios,
            errors,
            ..Default::default()
        }
    }

    #[test]
    fn counts_growth_and_forgets_old_intervals() {
        let mut w: RateWindow<4> = RateWindow::new(10);
        w.observe(0, c(100, 1)); // baseline
        w.observe(5, c(150, 2));
        w.observe(15, c(200, 2));
        assert_eq!(w.sum(), c(100, 1));
        // At 45 ns the window is intervals 1..=4: interval 0 has left it.
        w.observe(45, c(210, 5));
        assert_eq!(w.sum(), c(60, 3));
        // At 55 ns interval 1 leaves too.
        w.observe(55, c(210, 5));
        assert_eq!(w.sum(), c(10, 3));
        // A long gap empties it.
        w.observe(1_000, c(210, 5));
        assert_eq!(w.sum(), c(0, 0));
    }

    #[test]
    fn counter_resets_do_not_underflow() {
        let mut w: RateWindow<2> = RateWindow::new(10);
        w.observe(0, c(100, 10));
        w.observe(1, c(5, 0));
        assert_eq!(w.sum(), c(0, 0));
    }
}
