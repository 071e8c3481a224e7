//! The health verdict: healthy, degraded or critical, from the error rate, the share of the
//! spare pool in use and the number of pending blocks, against thresholds the user sets.
//! Integer arithmetic only (rates in parts per million, shares in percent), so the kernel
//! target computes the same verdict.

use core::fmt;

use crate::stats::StatsSnapshot;

/// The three states, ordered by severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "std", serde(rename_all = "lowercase"))]
pub enum HealthState {
    Healthy,
    Degraded,
    Critical,
}

impl HealthState {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthState::Healthy => "healthy",
            HealthState::Degraded => "degraded",
            HealthState::Critical => "critical",
        }
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the verdict turns. A rule fires at or above its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize, serde::Deserialize))]
pub struct HealthThresholds {
    /// Errors per million data I/Os.
    pub error_rate_degraded_ppm: u32,
    pub error_rate_critical_ppm: u32,
    /// The error rate is judged only after this many data I/Os, so that one early error
    /// does not read as a 100 % error rate.
    pub min_ios_for_rate: u64,
    /// Share of the spare pool used or retired, in percent.
    pub spare_used_degraded_pct: u8,
    pub spare_used_critical_pct: u8,
    /// Pending (unreadable, not yet rewritten) blocks.
    pub pending_degraded: u64,
    pub pending_critical: u64,
}

impl Default for HealthThresholds {
    fn default() -> Self {
        HealthThresholds {
            error_rate_degraded_ppm: 100,
            error_rate_critical_ppm: 10_000,
            min_ios_for_rate: 1_000,
            spare_used_degraded_pct: 50,
            spare_used_critical_pct: 90,
            pending_degraded: 1,
            pending_critical: 64,
        }
    }
}

/// Thresholds that contradict themselves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ThresholdError {
    #[error("{what}: the degraded threshold ({degraded}) is above the critical one ({critical})")]
    Inverted {
        what: &'static str,
        degraded: u64,
        critical: u64,
    },
    #[error("spare use threshold {0}% is above 100%")]
    PercentOver100(u8),
    #[error("error rate threshold {0} ppm is above 1000000 ppm")]
    RateOverMillion(u32),
}

impl HealthThresholds {
    pub fn validate(&self) -> Result<(), ThresholdError> {
        for pct in [self.spare_used_degraded_pct, self.spare_used_critical_pct] {
            if pct > 100 {
                return Err(ThresholdError::PercentOver100(pct));
            }
        }
        for ppm in [self.error_rate_degraded_ppm, self.error_rate_critical_ppm] {
            if ppm > 1_000_000 {
                return Err(ThresholdError::RateOverMillion(ppm));
            }
        }
        for (what, d, c) in [
            (
                "error rate",
                u64::from(self.error_rate_degraded_ppm),
                u64::from(self.error_rate_critical_ppm),
            ),
            (
                "spare use",
                u64::from(self.spare_used_degraded_pct),
                u64::from(self.spare_used_critical_pct),
            ),
            (
                "pending blocks",
                self.pending_degraded,
                self.pending_critical,
            ),
        ] {
            if d > c {
                return Err(ThresholdError::Inverted {
                    what,
                    degraded: d,
                    critical: c,
                });
            }
        }
        Ok(())
    }
}

/// Why the verdict is what it is: one bit per rule that fired.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct HealthReasons(u16);

impl HealthReasons {
    pub const ERROR_RATE: HealthReasons = HealthReasons(1);
    pub const ERROR_RATE_CRITICAL: HealthReasons = HealthReasons(1 << 1);
    pub const SPARE_USE: HealthReasons = HealthReasons(1 << 2);
    pub const SPARE_USE_CRITICAL: HealthReasons = HealthReasons(1 << 3);
    pub const SPARE_EXHAUSTED: HealthReasons = HealthReasons(1 << 4);
    pub const PENDING: HealthReasons = HealthReasons(1 << 5);
    pub const PENDING_CRITICAL: HealthReasons = HealthReasons(1 << 6);

    const NAMES: [(HealthReasons, &'static str); 7] = [
        (Self::ERROR_RATE, "error rate above the degraded threshold"),
        (
            Self::ERROR_RATE_CRITICAL,
            "error rate above the critical threshold",
        ),
        (
            Self::SPARE_USE,
            "spare pool use above the degraded threshold",
        ),
        (
            Self::SPARE_USE_CRITICAL,
            "spare pool use above the critical threshold",
        ),
        (Self::SPARE_EXHAUSTED, "spare pool exhausted"),
        (Self::PENDING, "unreadable blocks pending"),
        (
            Self::PENDING_CRITICAL,
            "pending blocks above the critical threshold",
        ),
    ];

    pub fn contains(self, other: HealthReasons) -> bool {
        self.0 & other.0 == other.0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn bits(self) -> u16 {
        self.0
    }

    /// Each reason that fired, as a sentence fragment.
    pub fn descriptions(self) -> impl Iterator<Item = &'static str> {
        Self::NAMES
            .into_iter()
            .filter(move |(r, _)| self.contains(*r))
            .map(|(_, s)| s)
    }
}

impl core::ops::BitOrAssign for HealthReasons {
    fn bitor_assign(&mut self, rhs: Self) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for HealthReasons {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.descriptions()).finish()
    }
}

#[cfg(feature = "std")]
impl serde::Serialize for HealthReasons {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.descriptions())
    }
}

/// The figures a verdict is computed from. Built from a [`StatsSnapshot`] by
/// [`HealthInputs::from_snapshot`], or from windowed figures by a caller that keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct HealthInputs {
    pub errors: u64,
    pub ios: u64,
    pub spares_total: u64,
    /// Used plus retired: blocks no longer available.
    pub spares_consumed: u64,
    pub pending: u64,
}

impl HealthInputs {
    pub fn from_snapshot(s: &StatsSnapshot) -> Self {
        HealthInputs {
            errors: s.total_errors(),
            ios: s.total_ios(),
            spares_total: s.spares_total,
            spares_consumed: s.spares_used + s.spares_retired,
            pending: s.pending_blocks,
        }
    }

    /// Errors per million I/Os, saturating.
    pub fn error_rate_ppm(&self) -> u64 {
        if self.ios == 0 {
            return 0;
        }
        // errors * 1e6 / ios without 128-bit division: scale down both when errors is huge.
        match self.errors.checked_mul(1_000_000) {
            Some(scaled) => (scaled / self.ios).min(1_000_000),
            None => (self.errors / (self.ios / 1_000_000).max(1)).min(1_000_000),
        }
    }

    /// Percent of the spare pool used or retired, rounded down; 100 for an empty pool.
    pub fn spare_used_pct(&self) -> u64 {
        if self.spares_total == 0 {
            return 100;
        }
        match self.spares_consumed.checked_mul(100) {
            Some(x) => (x / self.spares_total).min(100),
            None => (self.spares_consumed / (self.spares_total / 100).max(1)).min(100),
        }
    }
}

/// A verdict and its reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "std", derive(serde::Serialize))]
pub struct HealthReport {
    pub state: HealthState,
    pub reasons: HealthReasons,
    pub error_rate_ppm: u64,
    pub spare_used_pct: u64,
    pub pending: u64,
}

/// Judge `inputs` against `t`.
pub fn evaluate(inputs: &HealthInputs, t: &HealthThresholds) -> HealthReport {
    let mut reasons = HealthReasons::default();
    let mut state = HealthState::Healthy;
    let mut raise = |s: HealthState, r: HealthReasons| {
        state = state.max(s);
        reasons |= r;
    };
    let rate = inputs.error_rate_ppm();
    if inputs.ios >= t.min_ios_for_rate && inputs.errors > 0 {
        if rate >= u64::from(t.error_rate_critical_ppm) {
            raise(HealthState::Critical, HealthReasons::ERROR_RATE_CRITICAL);
        } else if rate >= u64::from(t.error_rate_degraded_ppm) {
            raise(HealthState::Degraded, HealthReasons::ERROR_RATE);
        }
    }
    let used = inputs.spare_used_pct();
    if inputs.spares_consumed >= inputs.spares_total {
        raise(HealthState::Critical, HealthReasons::SPARE_EXHAUSTED);
    } else if inputs.spares_consumed > 0 {
        if used >= u64::from(t.spare_used_critical_pct) {
            raise(HealthState::Critical, HealthReasons::SPARE_USE_CRITICAL);
        } else if used >= u64::from(t.spare_used_degraded_pct) {
            raise(HealthState::Degraded, HealthReasons::SPARE_USE);
        }
    }
    if inputs.pending > 0 {
        if inputs.pending >= t.pending_critical {
            raise(HealthState::Critical, HealthReasons::PENDING_CRITICAL);
        } else if inputs.pending >= t.pending_degraded {
            raise(HealthState::Degraded, HealthReasons::PENDING);
        }
    }
    HealthReport {
        state,
        reasons,
        error_rate_ppm: rate,
        spare_used_pct: used,
        pending: inputs.pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(errors: u64, ios: u64, total: u64, consumed: u64, pending: u64) -> HealthInputs {
        HealthInputs {
            errors,
            ios,
            spares_total: total,
            spares_consumed: consumed,
            pending,
        }
    }

    #[test]
    fn verdicts_follow_thresholds() {
        let t = HealthThresholds::default();
        assert_eq!(
            evaluate(&inputs(0, 0, 100, 0, 0), &t).state,
            HealthState::Healthy
        );
        // One error in ten I/Os is ignored below min_ios_for_rate...
        assert_eq!(
            evaluate(&inputs(1, 10, 100, 0, 0), &t).state,
            HealthState::Healthy
        );
        // ...but judged above it: 1 in 5000 = 200 ppm.
        let r = evaluate(&inputs(1, 5_000, 100, 0, 0), &t);
        assert_eq!((r.state, r.error_rate_ppm), (HealthState::Degraded, 200));
        assert!(r.reasons.contains(HealthReasons::ERROR_RATE));
        assert_eq!(
            evaluate(&inputs(100, 5_000, 100, 0, 0), &t).state,
            HealthState::Critical
        );
        assert_eq!(
            evaluate(&inputs(0, 0, 100, 50, 0), &t).state,
            HealthState::Degraded
        );
        assert_eq!(
            evaluate(&inputs(0, 0, 100, 90, 0), &t).state,
            HealthState::Critical
        );
        let r = evaluate(&inputs(0, 0, 100, 100, 0), &t);
        assert!(r.reasons.contains(HealthReasons::SPARE_EXHAUSTED));
        assert_eq!(
            evaluate(&inputs(0, 0, 100, 0, 1), &t).state,
            HealthState::Degraded
        );
        assert_eq!(
            evaluate(&inputs(0, 0, 100, 0, 64), &t).state,
            HealthState::Critical
        );
    }

    #[test]
    fn rates_do_not_overflow() {
        let i = inputs(u64::MAX, u64::MAX, u64::MAX, u64::MAX / 2, 0);
        assert!(i.error_rate_ppm() <= 1_000_000);
        assert_eq!(i.spare_used_pct(), 50);
    }

    #[test]
    fn thresholds_are_validated() {
        assert!(HealthThresholds::default().validate().is_ok());
        let t = HealthThresholds {
            pending_degraded: 10,
            pending_critical: 5,
            ..Default::default()
        };
        assert!(matches!(t.validate(), Err(ThresholdError::Inverted { .. })));
        let t = HealthThresholds {
            spare_used_critical_pct: 101,
            ..Default::default()
        };
        assert!(t.validate().is_err());
    }
}
