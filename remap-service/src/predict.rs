//! When will the spare pool run out? A least-squares line through the remap history
//! (cumulative spare blocks consumed against time) gives the consumption rate; the
//! projection is the time the line reaches the pool size, with an uncertainty interval.
//!
//! The uncertainty has two sources, both stated: the rate is estimated from `n` remaps
//! (relative error about `1/sqrt(n)` for a Poisson-like failure process), and the `r`
//! remaps still to come arrive randomly too (relative spread about `1/sqrt(r)`). The interval
//! is the point estimate ± two combined standard deviations.
//!
//! Userspace only (`std`): it uses floating point, which the kernel target must not.

use serde::Serialize;

/// At least this many remaps before a projection is attempted.
pub const MIN_SAMPLES: usize = 3;

/// A projection of spare-pool exhaustion.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Projection {
    /// Spare blocks consumed per day, least-squares slope.
    pub blocks_per_day: f64,
    /// Seconds from `now` until the pool is exhausted at that rate.
    pub seconds_left: f64,
    /// The interval the exhaustion time is expected in (seconds from now, ± 2 sigma).
    pub seconds_left_low: f64,
    pub seconds_left_high: f64,
    /// Remaps the fit is based on.
    pub samples: usize,
}

/// Why no projection can be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, thiserror::Error)]
pub enum NoProjection {
    #[error("fewer than {MIN_SAMPLES} remaps so far: not enough history to project")]
    TooFewRemaps,
    #[error("all remaps happened at the same moment: no rate can be measured")]
    NoTimeSpan,
    #[error("spare consumption is not growing")]
    NotGrowing,
    #[error("the spare pool is already exhausted")]
    Exhausted,
}

/// Project exhaustion of a pool of `pool` blocks from the times (seconds, any epoch) at
/// which each currently consumed spare block was taken.
/// `consumed_now` may exceed `times.len()` (blocks consumed without a known time, such as
/// retired spares); the fit uses the known times and the projection the real count.
pub fn project_exhaustion(
    times: &[u64],
    consumed_now: u64,
    pool: u64,
) -> Result<Projection, NoProjection> {
    if consumed_now >= pool {
        return Err(NoProjection::Exhausted);
    }
    if times.len() < MIN_SAMPLES {
        return Err(NoProjection::TooFewRemaps);
    }
    let mut t: Vec<f64> = times.iter().map(|&x| x as f64).collect();
    t.sort_by(f64::total_cmp);
    let n = t.len() as f64;
    // Points (t_i, i + 1): the cumulative count after each remap.
    let mean_t = t.iter().sum::<f64>() / n;
    let mean_y = (n + 1.0) / 2.0;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (i, &ti) in t.iter().enumerate() {
        let dt = ti - mean_t;
        sxy += dt * ((i + 1) as f64 - mean_y);
        sxx += dt * dt;
    }
    if sxx <= 0.0 {
        return Err(NoProjection::NoTimeSpan);
    }
    let slope = sxy / sxx; // blocks per second
    if slope <= 0.0 {
        return Err(NoProjection::NotGrowing);
    }
    let remaining = (pool - consumed_now) as f64;
    // From now, at the fitted rate. (The line's own intercept is not used: the real count
    // now is known exactly.)
    let seconds_left = remaining / slope;
    let rel_sigma = (1.0 / n + 1.0 / remaining).sqrt();
    let low = seconds_left * (1.0 - 2.0 * rel_sigma).max(0.0);
    let high = if 2.0 * rel_sigma >= 1.0 {
        f64::INFINITY
    } else {
        seconds_left / (1.0 - 2.0 * rel_sigma)
    };
    Ok(Projection {
        blocks_per_day: slope * 86_400.0,
        seconds_left,
        seconds_left_low: low,
        seconds_left_high: high,
        samples: t.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_rate_projects_exactly() {
        // One remap an hour for 100 hours; 100 of 300 blocks used.
        let times: Vec<u64> = (0..100).map(|i| 1_000_000 + i * 3600).collect();
        let p = project_exhaustion(&times, 100, 300).unwrap();
        assert!((p.blocks_per_day - 24.0).abs() < 1e-6);
        assert!((p.seconds_left - 200.0 * 3600.0).abs() < 1.0);
        assert!(p.seconds_left_low < p.seconds_left && p.seconds_left < p.seconds_left_high);
    }

    #[test]
    fn refuses_without_history() {
        assert_eq!(
            project_exhaustion(&[1, 2], 2, 10),
            Err(NoProjection::TooFewRemaps)
        );
        assert_eq!(
            project_exhaustion(&[5, 5, 5], 3, 10),
            Err(NoProjection::NoTimeSpan)
        );
        assert_eq!(
            project_exhaustion(&[1, 2, 3], 10, 10),
            Err(NoProjection::Exhausted)
        );
    }
}
