use super::{check_bounds, Limit, Sample};
use seawall_core::{config, ConfigError};
use std::time::Duration;

/// Loss-based limit: additive increase, multiplicative decrease (Netflix `AIMDLimit`).
///
/// On a dropped call, or one slower than `timeout`, the limit becomes
/// `min(limit - 1, floor(limit × backoff_ratio))`; on any other call that started with at least half
/// the limit in flight, it grows by one. Latency below `timeout` does not move it, so AIMD suits
/// dependencies that shed load by failing (429, 503, timeouts) rather than by slowing down.
///
/// ```
/// use seawall::bulkhead::limit::Aimd;
/// use std::time::Duration;
///
/// let aimd = Aimd::builder()
///     .initial_limit(10)
///     .max_limit(100)
///     .timeout(Duration::from_millis(500))
///     .build()?;
/// # Ok::<_, seawall::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Aimd {
    /// Starts a builder with the defaults (initial 20, bounds 1..=200, backoff 0.9, timeout 5 s).
    pub fn builder() -> AimdBuilder {
        AimdBuilder {
            initial: 20,
            min: 1,
            max: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl Default for Aimd {
    fn default() -> Self {
        Aimd::builder()
            .build()
            .expect("default AIMD configuration is valid")
    }
}

impl Limit for Aimd {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn bounds(&self) -> (usize, usize) {
        (self.min, self.max)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if sample.dropped || sample.rtt > self.timeout {
            let cut = (self.limit as f64 * self.backoff_ratio) as usize;
            self.limit = cut.min(self.limit.saturating_sub(1)).max(self.min);
        } else if sample.in_flight.saturating_mul(2) >= self.limit {
            self.limit = (self.limit + 1).min(self.max);
        }
        self.limit
    }
}

/// Builds an [`Aimd`] limit; see [`Aimd::builder`].
#[derive(Debug, Clone)]
pub struct AimdBuilder {
    initial: usize,
    min: usize,
    max: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl AimdBuilder {
    /// The limit before any sample. Default 20.
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.initial = limit;
        self
    }

    /// The floor. Default 1.
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.min = limit;
        self
    }

    /// The ceiling. Default 200.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.max = limit;
        self
    }

    /// The factor applied on a drop, in `[0.5, 1)`. Default 0.9.
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// A call slower than this counts as dropped. Default 5 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        check_bounds(self.min, self.initial, self.max)?;
        if !(self.backoff_ratio >= 0.5 && self.backoff_ratio < 1.0) {
            return Err(ConfigError::invalid(
                "backoff_ratio",
                "must be in [0.5, 1)",
                self.backoff_ratio.to_string(),
            ));
        }
        config::check_positive_duration("timeout", self.timeout)?;
        Ok(Aimd {
            limit: self.initial,
            min: self.min,
            max: self.max,
            backoff_ratio: self.backoff_ratio,
            timeout: self.timeout,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(in_flight: usize) -> Sample {
        Sample::new(Duration::from_millis(10), in_flight, false)
    }

    #[test]
    fn grows_when_busy_and_backs_off_on_drop() {
        let mut aimd = Aimd::builder()
            .initial_limit(10)
            .max_limit(12)
            .build()
            .unwrap();
        assert_eq!(aimd.update(&ok(2)), 10, "app-limited: no growth");
        assert_eq!(aimd.update(&ok(5)), 11);
        assert_eq!(aimd.update(&ok(11)), 12);
        assert_eq!(aimd.update(&ok(12)), 12, "capped at max");
        let drop = Sample::new(Duration::from_millis(1), 12, true);
        assert_eq!(aimd.update(&drop), 10, "floor(12 * 0.9)");
        let slow = Sample::new(Duration::from_secs(6), 1, false);
        assert_eq!(aimd.update(&slow), 9, "slower than timeout is a drop");
    }

    #[test]
    fn never_below_min() {
        let mut aimd = Aimd::builder()
            .initial_limit(3)
            .min_limit(2)
            .build()
            .unwrap();
        let drop = Sample::new(Duration::ZERO, 1, true);
        for _ in 0..10 {
            assert!(aimd.update(&drop) >= 2);
        }
        assert_eq!(aimd.update(&drop), 2);
    }

    #[test]
    fn validation() {
        for bad in [0.4, 1.0, f64::NAN] {
            let err = Aimd::builder().backoff_ratio(bad).build().unwrap_err();
            assert_eq!(err.field(), "backoff_ratio");
        }
        let err = Aimd::builder().timeout(Duration::ZERO).build().unwrap_err();
        assert_eq!(err.field(), "timeout");
    }
}
