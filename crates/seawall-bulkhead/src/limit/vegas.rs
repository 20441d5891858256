use super::{check_bounds, log10_root, Limit, Sample};
use seawall_core::{config, ConfigError};

/// Latency-based limit after TCP Vegas (Netflix `VegasLimit`).
///
/// The no-load RTT is the smallest RTT seen. Each sample estimates the queue the limit builds:
/// `queue = ceil(limit × (1 − rtt_noload / rtt))`. With `log = max(1, floor(log10(limit)))`:
///
/// | condition | new limit |
/// |---|---|
/// | the call was dropped | `limit − log` |
/// | fewer than half the limit in flight | unchanged (app-limited) |
/// | `queue <= log` | `limit + 6·log` (no queueing: grow fast) |
/// | `queue < 3·log` (`alpha`) | `limit + log` |
/// | `queue > 6·log` (`beta`) | `limit − log` |
/// | otherwise | unchanged |
///
/// then `limit = (1 − smoothing) × limit + smoothing × new`, within `min..=max`.
///
/// The queue estimate never exceeds the limit, and only a queue above `6·log` lowers it, so latency
/// alone takes the limit no lower than about 6, however slow the calls (below 100, `log` is 1);
/// only drops take it further. Below that a slow success does not lower the limit, and at a limit
/// of 1 its queue, at most 1, counts as none: any success not faster than the no-load RTT adds 6.
///
/// Every `probe_multiplier × limit × jitter` samples (jitter uniform in `[0.5, 1)`, from a
/// seedable generator; at most every other sample) the no-load RTT is reset to the current sample,
/// so the limit can follow a dependency whose baseline latency has moved. A dropped call is
/// neither a no-load RTT nor a probe, nor counted towards one: a fast failure (an instant 503,
/// a connection reset) would otherwise become the baseline and make every normal call
/// look queued.
///
/// # Calls that say nothing of the dependency's cost
///
/// A fast *success* becomes the no-load RTT as well (as in Netflix's `VegasLimit`), so one call
/// that did not cost the dependency what a normal call does (a 404 or a 304 answered at once, a
/// response served from a cache) makes every normal call look queued, and the limit shrinks until
/// the next probe. The stock classifiers count such answers as successes
/// ([`HttpClassifier`](seawall_core::classify::HttpClassifier) a 4xx other than 429,
/// [`GrpcClassifier`](seawall_core::classify::GrpcClassifier) NOT_FOUND); with Vegas, classify
/// them [`Outcome::Ignored`](seawall_core::Outcome::Ignored), so they are no sample at all. A
/// cache hit is told by whatever marks it in the response (a header, say), in the same closure:
///
/// ```
/// use seawall::bulkhead::{limit::Vegas, BulkheadLayer};
/// use seawall::core::classify::{Classify, HttpClassifier, Outcome};
/// use std::{io, time::Duration};
///
/// let statuses = HttpClassifier::new();
/// let layer = BulkheadLayer::builder()
///     .adaptive(Vegas::default())
///     .classifier(
///         move |result: Result<&http::Response<String>, &io::Error>, elapsed: Duration| {
///             match result {
///                 // Neither a 2xx nor a failure: a 304, a 404.
///                 Ok(res) if !res.status().is_success() && !statuses.is_failure(res.status()) => {
///                     Outcome::Ignored
///                 }
///                 _ => statuses.classify(result, elapsed),
///             }
///         },
///     )
///     .build()?;
/// # drop(layer);
/// # Ok::<_, seawall::ConfigError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Vegas {
    estimate: f64,
    min: usize,
    max: usize,
    smoothing: f64,
    probe_multiplier: usize,
    rtt_noload: u64,
    probe_count: usize,
    probe_jitter: f64,
    rng: u64,
}

impl Vegas {
    /// Starts a builder with the defaults (initial 20, bounds 1..=1000, smoothing 1.0, probe
    /// multiplier 30).
    pub fn builder() -> VegasBuilder {
        VegasBuilder {
            initial: 20,
            min: 1,
            max: 1000,
            smoothing: 1.0,
            probe_multiplier: 30,
            seed: 0x5eaa_a11b_u64,
        }
    }

    fn next_jitter(&mut self) -> f64 {
        // SplitMix64: a small, seedable generator; only the probe jitter needs randomness.
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        0.5 + 0.5 * ((z >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// The estimate as a whole limit. Above 2^53 an `f64` no longer holds every integer, and the
    /// estimate can round past a bound; the answer never does.
    fn limit(&self) -> usize {
        (self.estimate as usize).clamp(self.min, self.max)
    }
}

impl Default for Vegas {
    fn default() -> Self {
        Vegas::builder()
            .build()
            .expect("default Vegas configuration is valid")
    }
}

impl Limit for Vegas {
    fn initial_limit(&self) -> usize {
        self.limit()
    }

    fn bounds(&self) -> (usize, usize) {
        (self.min, self.max)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if sample.dropped {
            // Before the no-load RTT is looked at: a fast failure is no baseline latency.
            let log = log10_root(self.limit()) as f64;
            return self.settle(self.estimate - log);
        }
        let rtt = (sample.rtt.as_nanos().min(u64::MAX as u128) as u64).max(1);
        self.probe_count += 1;
        if self.probe_count >= 2
            && self.probe_jitter * self.probe_multiplier as f64 * self.estimate
                <= self.probe_count as f64
        {
            self.probe_jitter = self.next_jitter();
            self.probe_count = 0;
            self.rtt_noload = rtt;
            return self.limit();
        }
        if self.rtt_noload == 0 || rtt < self.rtt_noload {
            self.rtt_noload = rtt;
            return self.limit();
        }

        let limit = self.limit();
        let queue = (self.estimate * (1.0 - self.rtt_noload as f64 / rtt as f64)).ceil() as usize;
        let log = log10_root(limit) as f64;
        let new = if sample.in_flight.saturating_mul(2) < limit {
            return limit;
        } else if queue as f64 <= log {
            self.estimate + 6.0 * log
        } else if (queue as f64) < 3.0 * log {
            self.estimate + log
        } else if queue as f64 > 6.0 * log {
            self.estimate - log
        } else {
            return limit;
        };
        self.settle(new)
    }
}

impl Vegas {
    /// Moves the estimate towards `new` (within the bounds) by the smoothing factor.
    fn settle(&mut self, new: f64) -> usize {
        let new = new.clamp(self.min as f64, self.max as f64);
        self.estimate = (1.0 - self.smoothing) * self.estimate + self.smoothing * new;
        self.limit()
    }
}

/// Builds a [`Vegas`] limit; see [`Vegas::builder`].
#[derive(Debug, Clone)]
pub struct VegasBuilder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    probe_multiplier: usize,
    seed: u64,
}

impl VegasBuilder {
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

    /// The ceiling. Default 1000.
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.max = limit;
        self
    }

    /// How much of each new limit is taken, in `(0, 1]`. Default 1.0 (no smoothing).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// The no-load RTT is re-probed about every `probe_multiplier × limit` samples. At least 1;
    /// default 30.
    pub fn probe_multiplier(mut self, multiplier: usize) -> Self {
        self.probe_multiplier = multiplier;
        self
    }

    /// Seeds the probe jitter, for reproducible runs. Default: a fixed seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Vegas, ConfigError> {
        check_bounds(self.min, self.initial, self.max)?;
        config::check_rate("smoothing", self.smoothing)?;
        config::check_range("probe_multiplier", self.probe_multiplier, 1, 1 << 20)?;
        let mut vegas = Vegas {
            estimate: self.initial as f64,
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            probe_multiplier: self.probe_multiplier,
            rtt_noload: 0,
            probe_count: 0,
            probe_jitter: 1.0,
            rng: self.seed,
        };
        vegas.probe_jitter = vegas.next_jitter();
        Ok(vegas)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(ms: u64, in_flight: usize) -> Sample {
        Sample::new(Duration::from_millis(ms), in_flight, false)
    }

    #[test]
    fn a_fast_failure_is_a_drop_and_no_baseline() {
        let mut v = Vegas::builder().initial_limit(20).build().unwrap();
        assert_eq!(v.update(&sample(20, 20)), 20);
        assert_eq!(v.update(&sample(20, 20)), 26);
        let fast_failure = Sample::new(Duration::from_millis(1), 26, true);
        assert_eq!(v.update(&fast_failure), 25);
        // The baseline is still 20 ms: no queue, so the limit grows again.
        assert_eq!(v.update(&sample(20, 25)), 31);
    }

    /// With a multiplier of 1 a limit of 1 would probe on every sample and never grow: probes
    /// leave at least one sample between them.
    /// A fast success is a baseline, unlike a fast failure: one instant answer (a 404, a cache
    /// hit) the classifier calls a success makes every normal call look queued.
    #[test]
    fn a_fast_success_becomes_the_baseline() {
        let mut v = Vegas::builder().initial_limit(20).build().unwrap();
        assert_eq!(v.update(&sample(20, 20)), 20);
        assert_eq!(v.update(&sample(20, 20)), 26);
        assert_eq!(v.update(&sample(1, 26)), 26, "the new no-load RTT");
        // queue = ceil(26 × (1 − 1/20)) = 25 > beta = 6.
        assert_eq!(v.update(&sample(20, 26)), 25);
        assert_eq!(v.update(&sample(20, 25)), 24);
    }

    #[test]
    fn a_limit_of_one_grows_whatever_the_probe_multiplier() {
        let mut v = Vegas::builder()
            .initial_limit(1)
            .probe_multiplier(1)
            .build()
            .unwrap();
        let mut limit = 1;
        for _ in 0..100 {
            limit = v.update(&sample(10, limit));
        }
        assert!(limit > 1, "{limit}");
    }

    #[test]
    fn grows_without_queueing_and_shrinks_with_it() {
        let mut v = Vegas::builder().initial_limit(20).build().unwrap();
        assert_eq!(
            v.update(&sample(10, 20)),
            20,
            "first sample sets rtt_noload"
        );
        assert_eq!(v.update(&sample(10, 20)), 26, "no queue: + 6·log");
        // rtt doubled: queue = ceil(26 / 2) = 13 > beta = 6.
        assert_eq!(v.update(&sample(20, 26)), 25);
        let drop = Sample::new(Duration::from_millis(10), 25, true);
        assert_eq!(v.update(&drop), 24);
    }

    /// `alpha` and `beta` are 3·`log` and 6·`log` with `log = max(1, floor(log10(limit)))`, not
    /// 3 and 6 × log10(limit): at a limit of 20 they are 3 and 6, not 3.9 and 7.8.
    #[test]
    fn alpha_and_beta_are_multiples_of_the_whole_log() {
        let noload = Duration::from_millis(10);
        // queue = ceil(20 × (1 − 10/11.5)) = 3: not below alpha = 3, so unchanged.
        let mut v = Vegas::builder().initial_limit(20).build().unwrap();
        assert_eq!(v.update(&Sample::new(noload, 20, false)), 20);
        assert_eq!(
            v.update(&Sample::new(Duration::from_micros(11_500), 20, false)),
            20
        );
        // queue = ceil(20 × (1 − 10/15)) = 7: above beta = 6, so − log.
        let mut v = Vegas::builder().initial_limit(20).build().unwrap();
        assert_eq!(v.update(&Sample::new(noload, 20, false)), 20);
        assert_eq!(v.update(&sample(15, 20)), 19);
    }

    /// Latency at the no-load RTT grows the limit to its maximum, and the estimate stops there
    /// too: the first sample with a queue takes the limit down at once.
    #[test]
    fn no_queueing_takes_the_limit_to_its_maximum_and_no_further() {
        let mut v = Vegas::builder()
            .initial_limit(20)
            .max_limit(100)
            .build()
            .unwrap();
        let mut limit = v.update(&sample(10, 20));
        for _ in 0..100 {
            limit = v.update(&sample(10, limit));
            assert!(limit <= 100, "{limit}");
        }
        assert_eq!(limit, 100, "the maximum is reached");
        assert_eq!(v.estimate, 100.0);
        // rtt doubled: queue = ceil(100 / 2) = 50 > beta = 12, so − log = 2.
        assert_eq!(v.update(&sample(20, 100)), 98);
    }

    /// Drops take the limit down to its minimum, and the estimate stops there too: the first
    /// sample without a queue grows the limit from it at once.
    #[test]
    fn drops_take_the_limit_to_its_minimum_and_no_further() {
        let mut v = Vegas::builder()
            .initial_limit(20)
            .min_limit(5)
            .build()
            .unwrap();
        assert_eq!(
            v.update(&sample(10, 20)),
            20,
            "first sample sets rtt_noload"
        );
        let mut limit = 20;
        for _ in 0..100 {
            limit = v.update(&Sample::new(Duration::from_millis(10), limit, true));
            assert!(limit >= 5, "{limit}");
        }
        assert_eq!(limit, 5, "the minimum is reached");
        assert_eq!(v.estimate, 5.0);
        assert_eq!(v.update(&sample(10, 5)), 11, "no queue: + 6·log");
    }

    /// A queue estimate never exceeds the limit, and only one above `6·log` lowers it: latency
    /// alone goes no lower than 6. At a limit of 1 any success, however slow, finds no queue.
    #[test]
    fn latency_alone_takes_the_limit_no_lower_than_six() {
        let mut v = Vegas::builder().initial_limit(20).build().unwrap();
        assert_eq!(
            v.update(&sample(10, 20)),
            20,
            "first sample sets rtt_noload"
        );
        let mut limit = 20;
        for _ in 0..30 {
            limit = v.update(&Sample::new(Duration::from_millis(10), limit, true));
        }
        assert_eq!(limit, 1, "drops take it to the floor");
        // queue = ceil(1 × (1 − 10/1000)) = 1 <= log: + 6·log.
        assert_eq!(v.update(&sample(1_000, 1)), 7, "100× slower, and it grows");
        // queue = ceil(7 × 0.99) = 7 > 6: − log.
        assert_eq!(v.update(&sample(1_000, 7)), 6);
        // queue = ceil(6 × 0.99) = 6, not above 6.
        for _ in 0..10 {
            assert_eq!(v.update(&sample(1_000, 6)), 6);
        }

        // From high up too: a slow dependency takes the limit down to 6 and no further.
        let mut v = Vegas::builder()
            .initial_limit(1000)
            .probe_multiplier(1 << 20)
            .build()
            .unwrap();
        let mut limit = v.update(&sample(10, 1000));
        for _ in 0..1_000 {
            limit = v.update(&sample(1_000, limit));
        }
        assert_eq!(limit, 6);
    }

    #[test]
    fn limits_beyond_f64_precision_stay_within_bounds() {
        let max = crate::limit::MAX_LIMIT;
        let v = Vegas::builder()
            .initial_limit(max)
            .max_limit(max)
            .build()
            .unwrap();
        assert_eq!(v.initial_limit(), max);

        let min = (1 << 53) + 1;
        let mut v = Vegas::builder()
            .min_limit(min)
            .initial_limit(min)
            .max_limit(1 << 54)
            .build()
            .unwrap();
        assert_eq!(v.initial_limit(), min);
        assert_eq!(
            v.update(&sample(10, min)),
            min,
            "first sample sets rtt_noload"
        );
        let drop = Sample::new(Duration::from_millis(10), min, true);
        assert_eq!(v.update(&drop), min, "a drop stays at the floor");
    }

    #[test]
    fn jitter_is_in_range_and_seeded() {
        let mut a = Vegas::builder().seed(7).build().unwrap();
        let mut b = Vegas::builder().seed(7).build().unwrap();
        for _ in 0..1000 {
            let j = a.next_jitter();
            assert!((0.5..1.0).contains(&j));
            assert_eq!(j, b.next_jitter());
        }
    }
}
