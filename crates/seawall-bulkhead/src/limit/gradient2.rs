use super::{check_bounds, Limit, Sample};
use seawall_core::{config, ConfigError};

/// Latency-based limit from the gradient between a long-term and the current round-trip time
/// (Netflix `Gradient2Limit`).
///
/// Each sample updates a long-term RTT (an exponential average over `long_window` samples, a plain
/// average for the first 10) and takes the sample itself as the short-term RTT. Then, unless the
/// bulkhead is app-limited (fewer than half the limit in flight):
///
/// ```text
/// gradient  = clamp(rtt_tolerance × long_rtt / short_rtt, 0.5, 1.0)
/// estimate  = limit × gradient + queue_size
/// limit     = limit × (1 − smoothing) + estimate × smoothing      (within min..=max)
/// ```
///
/// When latency rises beyond `rtt_tolerance` times the long-term RTT (default 1.5) the gradient
/// drops below 1 and the limit shrinks (by at most half per sample before smoothing); while
/// latency stays within the tolerance, jitter included, the limit grows by
/// `queue_size × smoothing` per sample. When the long-term RTT is more than twice the short-term
/// one (latency has recovered after a long slow period) it is cut by 5% per sample, so the limit
/// recovers without waiting for the average to decay. The cut counts from the next sample on (the
/// sample that triggers it has its gradient from the long-term RTT before the cut). During the
/// first 10 samples it does not last: the next sample recomputes the plain average from the
/// samples' sum, which the cut left alone, so a cut on any of the first 9 samples is undone by the
/// next one, as in Netflix's `ExpAvgMeasurement`. From the 10th sample on, cuts carry into the
/// exponential average and add up.
///
/// As `queue_size` is added to every estimate, latency alone takes the limit no lower than about
/// `2 × queue_size` (8 by default), where `limit × 0.5 + queue_size` no longer shrinks it. A
/// dropped call (as the layer's classifier says: a 503, a 429) halves the estimate before
/// smoothing, without `queue_size` (× 0.9 per drop with the default smoothing, as
/// [`Aimd`](super::Aimd)'s default backoff), and is not an RTT sample: a fast failure would
/// otherwise read as recovered latency. Netflix's `Gradient2Limit` ignores drops.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    estimate: f64,
    min: usize,
    max: usize,
    smoothing: f64,
    queue_size: f64,
    tolerance: f64,
    long_rtt: ExpAvg,
}

impl Gradient2 {
    /// Starts a builder with the defaults (initial 20, bounds 1..=200, smoothing 0.2, queue size 4,
    /// long window 600, RTT tolerance 1.5).
    pub fn builder() -> Gradient2Builder {
        Gradient2Builder {
            initial: 20,
            min: 1,
            max: 200,
            smoothing: 0.2,
            queue_size: 4,
            long_window: 600,
            rtt_tolerance: 1.5,
        }
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Gradient2::builder()
            .build()
            .expect("default Gradient2 configuration is valid")
    }
}

impl Gradient2 {
    /// The estimate as a whole limit. Above 2^53 an `f64` no longer holds every integer, and the
    /// estimate can round past a bound; the answer never does.
    fn limit(&self) -> usize {
        (self.estimate as usize).clamp(self.min, self.max)
    }
}

impl Limit for Gradient2 {
    fn initial_limit(&self) -> usize {
        self.limit()
    }

    fn bounds(&self) -> (usize, usize) {
        (self.min, self.max)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if sample.dropped {
            // Before the RTTs are looked at: a fast failure says nothing about latency.
            let halved = self.estimate * 0.5;
            let smoothed = self.estimate * (1.0 - self.smoothing) + halved * self.smoothing;
            self.estimate = smoothed.clamp(self.min as f64, self.max as f64);
            return self.limit();
        }
        let short = (sample.rtt.as_nanos() as f64).max(1.0);
        let long = self.long_rtt.add(short);
        if long / short > 2.0 {
            self.long_rtt.value *= 0.95;
        }
        if (sample.in_flight as f64) < self.estimate / 2.0 {
            return self.limit();
        }
        let gradient = (self.tolerance * long / short).clamp(0.5, 1.0);
        let estimate = self.estimate * gradient + self.queue_size;
        let smoothed = self.estimate * (1.0 - self.smoothing) + estimate * self.smoothing;
        self.estimate = smoothed.clamp(self.min as f64, self.max as f64);
        self.limit()
    }
}

/// An average that is plain for the first `warmup` samples, then exponential with factor
/// `2 / (window + 1)` (Netflix `ExpAvgMeasurement`).
#[derive(Debug, Clone)]
struct ExpAvg {
    value: f64,
    sum: f64,
    count: usize,
    warmup: usize,
    factor: f64,
}

impl ExpAvg {
    fn new(window: usize, warmup: usize) -> Self {
        ExpAvg {
            value: 0.0,
            sum: 0.0,
            count: 0,
            warmup,
            factor: 2.0 / (window as f64 + 1.0),
        }
    }

    fn add(&mut self, sample: f64) -> f64 {
        if self.count < self.warmup {
            self.count += 1;
            self.sum += sample;
            self.value = self.sum / self.count as f64;
        } else {
            self.value = self.value * (1.0 - self.factor) + sample * self.factor;
        }
        self.value
    }
}

/// Builds a [`Gradient2`] limit; see [`Gradient2::builder`].
#[derive(Debug, Clone)]
pub struct Gradient2Builder {
    initial: usize,
    min: usize,
    max: usize,
    smoothing: f64,
    queue_size: usize,
    long_window: usize,
    rtt_tolerance: f64,
}

/// The longest `long_window`.
const MAX_LONG_WINDOW: usize = 1 << 30;

impl Gradient2Builder {
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

    /// How much of each new estimate is taken, in `(0, 1]`. Default 0.2.
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// How far the estimate may run ahead of the measured capacity while latency is steady, at
    /// least 1 (the limit could never grow with 0). Default 4. Latency alone takes the limit no
    /// lower than about twice this.
    pub fn queue_size(mut self, queue_size: usize) -> Self {
        self.queue_size = queue_size;
        self
    }

    /// Samples in the long-term RTT average. Default 600. It must be greater than
    /// `2 × rtt_tolerance − 1` (at least 3 at the default tolerance): past the first 10, each
    /// sample makes up `2 / (long_window + 1)` of the average, so the gradient is at least
    /// `rtt_tolerance × 2 / (long_window + 1)`, and at 1 or more latency could never lower the
    /// limit.
    pub fn long_window(mut self, samples: usize) -> Self {
        self.long_window = samples;
        self
    }

    /// How many times the long-term RTT a call may take before the limit shrinks, at least 1 and
    /// less than 2^29 + 0.5 (no [`long_window`](Self::long_window) is long enough beyond).
    /// Default 1.5: latency jitter within that does not hold the limit back. A higher tolerance
    /// needs a longer [`long_window`](Self::long_window).
    pub fn rtt_tolerance(mut self, tolerance: f64) -> Self {
        self.rtt_tolerance = tolerance;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Gradient2, ConfigError> {
        check_bounds(self.min, self.initial, self.max)?;
        config::check_rate("smoothing", self.smoothing)?;
        config::check_range("long_window", self.long_window, 1, MAX_LONG_WINDOW)?;
        config::check_range("queue_size", self.queue_size, 1, super::MAX_LIMIT)?;
        config::check_at_least_f64("rtt_tolerance", self.rtt_tolerance, 1.0)?;
        if 2.0 * self.rtt_tolerance - 1.0 >= MAX_LONG_WINDOW as f64 {
            // No `long_window` could be long enough for it (see below).
            return Err(ConfigError::invalid(
                "rtt_tolerance",
                format!(
                    "must be less than {}, or no long_window (at most {MAX_LONG_WINDOW}) is \
                     greater than 2 × rtt_tolerance − 1",
                    (MAX_LONG_WINDOW as f64 + 1.0) / 2.0
                ),
                self.rtt_tolerance.to_string(),
            ));
        }
        // The long-term average holds at least `2 / (long_window + 1)` of the current RTT, so the
        // gradient is at least `rtt_tolerance × 2 / (long_window + 1)`: at 1 or more it is
        // clamped to 1 whatever the latency.
        let bound = 2.0 * self.rtt_tolerance - 1.0;
        if self.long_window as f64 <= bound {
            return Err(ConfigError::conflict(
                "long_window",
                format!(
                    "must be greater than 2 × rtt_tolerance − 1 ({bound}), or latency can never \
                     lower the limit, got {}",
                    self.long_window
                ),
            ));
        }
        Ok(Gradient2 {
            estimate: self.initial as f64,
            min: self.min,
            max: self.max,
            smoothing: self.smoothing,
            queue_size: self.queue_size as f64,
            tolerance: self.rtt_tolerance,
            long_rtt: ExpAvg::new(self.long_window, 10),
        })
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
    fn steady_latency_grows_slowly_and_slow_latency_shrinks() {
        let mut g = Gradient2::builder().initial_limit(20).build().unwrap();
        for _ in 0..10 {
            g.update(&sample(10, 20));
        }
        let steady = g.update(&sample(10, 20));
        assert!(steady > 20, "steady latency grows the limit: {steady}");
        let before = g.estimate;
        g.update(&sample(40, 30));
        assert!(g.estimate < before, "a slow sample shrinks the limit");
    }

    #[test]
    fn latency_alone_stops_at_twice_the_queue_size_and_drops_go_lower() {
        let mut g = Gradient2::builder()
            .initial_limit(20)
            .rtt_tolerance(1.0)
            .build()
            .unwrap();
        for _ in 0..10 {
            g.update(&sample(10, 20));
        }
        let mut limit = 20;
        for _ in 0..100 {
            limit = g.update(&sample(1_000, limit));
        }
        assert_eq!(limit, 8, "limit × 0.5 + 4 shrinks no further than 8");
        // A drop: 0.8 × 8 + 0.2 × 4 = 7.2; and a fast one is no sign that latency recovered.
        let long_rtt = g.long_rtt.value;
        let fast_failure = Sample::new(Duration::from_millis(1), 8, true);
        assert_eq!(g.update(&fast_failure), 7);
        for _ in 0..100 {
            g.update(&fast_failure);
        }
        assert_eq!(g.limit(), 1);
        assert_eq!(g.long_rtt.value, long_rtt);
        let e = Gradient2::builder().queue_size(0).build().unwrap_err();
        assert_eq!(e.field(), "queue_size");
    }

    #[test]
    fn rtt_jitter_alone_does_not_cap_the_limit() {
        let mut g = Gradient2::default();
        let mut limit = g.initial_limit();
        for n in 0..3_000 {
            let ms = if n % 2 == 0 { 10 } else { 15 };
            limit = g.update(&sample(ms, limit));
        }
        assert_eq!(
            limit, 200,
            "jitter within the tolerance reaches the maximum"
        );
        // The estimate stops at the maximum too: a slow sample takes the limit down at once, by
        // the smallest gradient (0.5): 0.8 × 200 + 0.2 × (0.5 × 200 + 4) = 180.8.
        assert_eq!(g.estimate, 200.0);
        assert_eq!(g.update(&sample(40, 200)), 180);
    }

    /// Latency recovers after a slow spell: the long-term RTT, more than twice the sample, is
    /// averaged with it and then cut by exactly 5%.
    #[test]
    fn a_recovered_latency_cuts_the_long_rtt_by_five_percent() {
        const MS: f64 = 1_000_000.0;
        let mut g = Gradient2::builder().long_window(600).build().unwrap();
        for _ in 0..10 {
            g.update(&sample(100, 20));
        }
        assert_eq!(
            g.long_rtt.value,
            100.0 * MS,
            "a plain average while warming up"
        );
        g.update(&sample(10, 20));
        let factor = 2.0 / 601.0;
        let averaged = 100.0 * MS * (1.0 - factor) + 10.0 * MS * factor;
        let long = g.long_rtt.value;
        assert!(
            (long - averaged * 0.95).abs() < 1.0,
            "long RTT {long} ns, expected {} ns",
            averaged * 0.95
        );
        // One sample no longer more than twice as fast: no cut.
        g.update(&sample(60, 20));
        let again = long * (1.0 - factor) + 60.0 * MS * factor;
        assert!((g.long_rtt.value - again).abs() < 1.0);
    }

    /// While the long-term RTT is a plain average (the first 10 samples), the next sample
    /// recomputes it from the samples' sum and undoes a cut; the 10th sample's cut lasts.
    #[test]
    fn a_cut_while_warming_up_is_undone_by_the_next_sample() {
        const MS: f64 = 1_000_000.0;
        let mut g = Gradient2::builder().long_window(600).build().unwrap();
        g.update(&sample(1_000, 20));
        g.update(&sample(10, 20));
        assert!((g.long_rtt.value - 505.0 * MS * 0.95).abs() < 1.0);
        // The plain average of all three, cut once: the second sample's cut is gone.
        g.update(&sample(10, 20));
        assert!((g.long_rtt.value - 340.0 * MS * 0.95).abs() < 1.0);
        for _ in 3..10 {
            g.update(&sample(10, 20));
        }
        let tenth = 109.0 * MS * 0.95;
        assert!((g.long_rtt.value - tenth).abs() < 1.0);
        // The 11th sample averages from the cut value, and cuts again.
        g.update(&sample(10, 20));
        let factor = 2.0 / 601.0;
        let eleventh = (tenth * (1.0 - factor) + 10.0 * MS * factor) * 0.95;
        assert!(
            (g.long_rtt.value - eleventh).abs() < 1.0,
            "long RTT {} ns, expected {eleventh} ns",
            g.long_rtt.value
        );
    }

    #[test]
    fn app_limited_does_not_grow() {
        let mut g = Gradient2::default();
        for _ in 0..100 {
            assert_eq!(g.update(&sample(10, 1)), 20);
        }
    }

    #[test]
    fn limits_beyond_f64_precision_stay_within_bounds() {
        let max = crate::limit::MAX_LIMIT;
        let g = Gradient2::builder()
            .initial_limit(max)
            .max_limit(max)
            .build()
            .unwrap();
        assert_eq!(g.initial_limit(), max);

        let min = (1 << 53) + 1;
        let mut g = Gradient2::builder()
            .min_limit(min)
            .initial_limit(min)
            .max_limit(1 << 54)
            .build()
            .unwrap();
        assert_eq!(g.initial_limit(), min);
        assert_eq!(g.update(&sample(10, 1)), min, "app-limited");
        assert_eq!(g.update(&sample(100, min)), min, "slower: at the floor");
    }

    #[test]
    fn validation() {
        assert_eq!(
            Gradient2::builder()
                .smoothing(0.0)
                .build()
                .unwrap_err()
                .field(),
            "smoothing"
        );
        assert_eq!(
            Gradient2::builder()
                .long_window(0)
                .build()
                .unwrap_err()
                .field(),
            "long_window"
        );
        for tolerance in [0.99, f64::NAN, f64::INFINITY] {
            assert_eq!(
                Gradient2::builder()
                    .rtt_tolerance(tolerance)
                    .build()
                    .unwrap_err()
                    .field(),
                "rtt_tolerance"
            );
        }
        assert!(Gradient2::builder().rtt_tolerance(1.0).build().is_ok());
    }

    /// A tolerance no `long_window` can be long enough for is the tolerance's fault, whatever
    /// the window.
    #[test]
    fn a_tolerance_too_large_for_any_long_window_is_rejected_as_the_tolerance() {
        for tolerance in [1e300, f64::MAX, (MAX_LONG_WINDOW as f64 + 1.0) / 2.0] {
            for window in [600, MAX_LONG_WINDOW] {
                let e = Gradient2::builder()
                    .rtt_tolerance(tolerance)
                    .long_window(window)
                    .build()
                    .unwrap_err();
                assert_eq!(e.field(), "rtt_tolerance", "tolerance {tolerance}");
            }
        }
        let e = Gradient2::builder()
            .rtt_tolerance(1e300)
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "rtt_tolerance must be less than 536870912.5, or no long_window (at most \
                 1073741824) is greater than 2 × rtt_tolerance − 1, got {}",
                1e300
            )
        );
        // The largest tolerance with a window long enough for it still builds.
        assert!(Gradient2::builder()
            .rtt_tolerance(MAX_LONG_WINDOW as f64 / 2.0)
            .long_window(MAX_LONG_WINDOW)
            .build()
            .is_ok());
        // A tolerance some window fits, with a window too short, still names the window.
        let e = Gradient2::builder()
            .rtt_tolerance(1e6)
            .long_window(600)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "long_window");
    }

    /// The gradient is at least `rtt_tolerance × 2 / (long_window + 1)`: a window at which that
    /// is 1 or more is rejected, naming the rule.
    #[test]
    fn a_long_window_too_short_for_the_tolerance_is_rejected() {
        let e = Gradient2::builder().long_window(2).build().unwrap_err();
        assert_eq!(e.field(), "long_window");
        assert_eq!(
            e.to_string(),
            "long_window must be greater than 2 × rtt_tolerance − 1 (2), or latency can never \
             lower the limit, got 2"
        );
        assert!(Gradient2::builder().long_window(1).build().is_err());
        assert!(Gradient2::builder().long_window(3).build().is_ok());
        // A tolerance of 1 lets any window but 1 through; one of 3 needs more than 5 samples.
        assert!(Gradient2::builder()
            .rtt_tolerance(1.0)
            .long_window(2)
            .build()
            .is_ok());
        assert!(Gradient2::builder()
            .rtt_tolerance(1.0)
            .long_window(1)
            .build()
            .is_err());
        let e = Gradient2::builder()
            .rtt_tolerance(3.0)
            .long_window(5)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "long_window");
        assert!(Gradient2::builder()
            .rtt_tolerance(3.0)
            .long_window(6)
            .build()
            .is_ok());
    }

    /// Why: at the bound the limit only grows however slow the calls; one sample past it, a slow
    /// call lowers the limit.
    #[test]
    fn latency_lowers_the_limit_only_past_the_long_window_bound() {
        let slow_after_warm_up = |window| {
            let mut g = Gradient2 {
                long_rtt: ExpAvg::new(window, 10),
                ..Gradient2::default()
            };
            for _ in 0..10 {
                g.update(&sample(10, 20));
            }
            let before = g.estimate;
            g.update(&sample(10_000, 30));
            g.estimate < before
        };
        assert!(!slow_after_warm_up(2), "gradient ≥ 1.5 × 2/3 = 1");
        assert!(slow_after_warm_up(3), "gradient ≥ 1.5 × 2/4 = 0.75");
    }
}
