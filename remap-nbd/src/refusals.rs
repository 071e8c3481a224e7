//! Connections closed before they were served, counted by reason and logged as one summary
//! line per interval, so a flood of bad connections costs the log a line every few seconds
//! instead of a line per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::HandshakeError;

/// Why a connection was closed before it reached the transmission phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` clients were being served.
    Full,
    /// Closed to make room: the oldest waiting or negotiating connection when a new one
    /// needed its slot.
    Evicted,
    /// Did not finish negotiating within `handshake_timeout`.
    TimedOut,
    /// Announced option data above [`crate::proto::MAX_OPTION_LEN`].
    OptionTooLong,
    /// Sent something the protocol does not allow (bad magic, unknown flags, too many
    /// options, an unknown export with `NBD_OPT_EXPORT_NAME`).
    ProtocolError,
    /// The client left (or aborted) before choosing the export.
    Left,
}

impl Refusal {
    const ALL: [Refusal; 6] = [
        Refusal::Full,
        Refusal::Evicted,
        Refusal::TimedOut,
        Refusal::OptionTooLong,
        Refusal::ProtocolError,
        Refusal::Left,
    ];

    /// How a negotiation that failed by itself (not closed by the server) is counted.
    pub fn of(e: &HandshakeError) -> Refusal {
        match e {
            HandshakeError::OptionTooLong { .. } => Refusal::OptionTooLong,
            HandshakeError::UnknownClientFlags { .. }
            | HandshakeError::DecodeOptionHeader(_)
            | HandshakeError::UnknownExport { .. }
            | HandshakeError::TooManyOptions { .. } => Refusal::ProtocolError,
            HandshakeError::NoSlot { .. } => Refusal::Full,
            _ => Refusal::Left,
        }
    }
}

/// The counters and the time of the last summary line.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    counts: [AtomicU64; 6],
    /// Every refusal since the server started (for [`crate::ServeSummary::refused`]).
    total: AtomicU64,
    interval: Duration,
    /// When the last summary line was written; `None` before the first.
    last: Mutex<Option<Instant>>,
}

impl RefusalLog {
    pub fn new(interval: Duration) -> Self {
        RefusalLog {
            counts: Default::default(),
            total: AtomicU64::new(0),
            interval,
            last: Mutex::new(None),
        }
    }

    /// Count one refusal; write the summary if the interval has passed since the last one
    /// (the first refusal after a quiet interval is logged at once).
    pub fn note(&self, why: Refusal) {
        self.counts[why as usize].fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.tick(Instant::now());
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    fn pending(&self) -> bool {
        self.counts.iter().any(|c| c.load(Ordering::Relaxed) > 0)
    }

    /// When the accept loop must wake to write the pending summary, if any is pending.
    pub fn due(&self) -> Option<Instant> {
        if !self.pending() {
            return None;
        }
        Some(match *self.last.lock() {
            Some(last) => last + self.interval,
            None => Instant::now(),
        })
    }

    /// Write the summary if counts are pending and the interval has passed.
    pub fn tick(&self, now: Instant) {
        let Some(mut last) = self.last.try_lock() else {
            return; // another thread is writing it
        };
        if last.is_some_and(|l| now < l + self.interval) || !self.pending() {
            return;
        }
        *last = Some(now);
        self.write();
    }

    /// Write whatever is pending now (at shutdown).
    pub fn flush(&self) {
        let mut last = self.last.lock();
        if self.pending() {
            *last = Some(Instant::now());
            self.write();
        }
    }

    fn write(&self) {
        let [
            full,
            evicted,
            timed_out,
            option_too_long,
            protocol_error,
            left,
        ] = Refusal::ALL.map(|r| self.counts[r as usize].swap(0, Ordering::Relaxed));
        let interval_s = self.interval.as_secs_f64();
        if full + evicted + timed_out + option_too_long + protocol_error > 0 {
            tracing::warn!(
                full,
                evicted,
                timed_out,
                option_too_long,
                protocol_error,
                left,
                interval_s,
                "connections closed before negotiating (counts since the last summary)"
            );
        } else {
            tracing::info!(
                left,
                interval_s,
                "connections closed by their clients before negotiating"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_summed_and_reset_once_per_interval() {
        let log = RefusalLog::new(Duration::from_secs(3600));
        assert_eq!(log.due(), None);
        log.note(Refusal::Full); // first: written at once
        assert!(!log.pending());
        for _ in 0..1000 {
            log.note(Refusal::Evicted);
        }
        assert!(log.pending(), "held until the interval has passed");
        let due = log.due().expect("pending");
        assert!(due > Instant::now() + Duration::from_secs(3000));
        log.tick(due);
        assert!(!log.pending());
        log.note(Refusal::Left);
        log.flush();
        assert!(!log.pending());
        assert_eq!(log.total(), 1002);
    }
}
