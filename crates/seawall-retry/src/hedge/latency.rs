//! The rolling latency histogram behind percentile hedge delays.

use hdrhistogram::Histogram;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, MutexGuard, TryLockError,
    },
    time::Duration,
};
use tokio::time::Instant;

/// No delay known yet.
const NONE: u64 = u64::MAX;
/// The longest latency recorded, in microseconds (1 hour); longer ones count as this.
const HIGHEST: u64 = 3_600_000_000;

/// Latencies of the current period in an HdrHistogram; at the end of each period (once it holds
/// at least `min_data_points` as recorded, failures left out at its end included) the percentile
/// is computed, cached for lock-free reads, and the histogram starts afresh. So the delay in force
/// is the percentile of the last full period. The first period starts at the first sample, so the
/// time before the first call does not count towards it; each later one starts at the sample that
/// ended the one before.
///
/// Successful calls are recorded as they took. A call that failed, or was dropped unanswered,
/// is recorded as having taken as long as it ran, a lower bound, in a second histogram; when the
/// period ends, the percentile of its *successes* is computed first, and only the unanswered
/// calls longer than that join them before the delay is computed. A quicker one says nothing of
/// how long the dependency takes and is left out, so failures can only raise the delay. A period
/// without a success measures them against the last bar. Calls not longer than the last bar are
/// left out when they are recorded, without taking the lock. The bar is the successes'
/// percentile, not the delay: slow failures raise the delay to their own duration, and would
/// then no longer clear it, drop out, and let the delay fall back, period after period.
pub(crate) struct Latencies {
    percentile: f64,
    min_data_points: u64,
    period: Duration,
    state: Mutex<Rolling>,
    cached_nanos: AtomicU64,
    /// The percentile of the last full period's successful calls (of the last that had any):
    /// what an unanswered call must have run longer than to be recorded at all.
    slow_nanos: AtomicU64,
}

struct Rolling {
    /// Successful calls.
    histogram: Histogram<u64>,
    /// Calls that failed, or were dropped unanswered, after running past `slow_nanos`; those
    /// past this period's successes' percentile join `histogram` when the period ends.
    unanswered: Histogram<u64>,
    since: Instant,
}

/// An empty histogram for latencies in microseconds.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST, 2).expect("constant histogram bounds are valid")
}

fn micros(latency: Duration) -> u64 {
    u64::try_from(latency.as_micros())
        .unwrap_or(HIGHEST)
        .clamp(1, HIGHEST)
}

impl Latencies {
    pub(crate) fn new(percentile: f64, min_data_points: u64, period: Duration) -> Self {
        Latencies {
            percentile,
            min_data_points,
            period,
            state: Mutex::new(Rolling {
                histogram: histogram(),
                unanswered: histogram(),
                since: Instant::now(),
            }),
            cached_nanos: AtomicU64::new(NONE),
            slow_nanos: AtomicU64::new(NONE),
        }
    }

    /// The percentile of the last full period, if one has been measured.
    #[inline]
    pub(crate) fn delay(&self) -> Option<Duration> {
        match self.cached_nanos.load(Ordering::Relaxed) {
            NONE => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Records one successful call's latency. Skips the sample rather than wait if another
    /// thread is recording.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        if let Some(mut state) = self.lock(now) {
            state.histogram.saturating_record(micros(latency));
        }
    }

    /// Records a call that failed, or was dropped before its answer, after running for `ran`: as
    /// having taken that long, when that is longer than the percentile of the last period's
    /// successful calls (nothing is recorded before one has been measured), and counted towards
    /// the delay when it is longer than this period's too.
    pub(crate) fn record_unanswered(&self, ran: Duration, now: Instant) {
        let slow = self.slow_nanos.load(Ordering::Relaxed);
        if slow == NONE || ran.as_nanos() <= u128::from(slow) {
            return;
        }
        if let Some(mut state) = self.lock(now) {
            state.unanswered.saturating_record(micros(ran));
        }
    }

    /// The rolling state, for a sample taken at `now`, after ending the period if it is over.
    /// `None` if another thread holds it.
    fn lock(&self, now: Instant) -> Option<MutexGuard<'_, Rolling>> {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return None,
        };
        let samples = state.histogram.len() + state.unanswered.len();
        if samples == 0 {
            // The first sample (the histograms are never both empty after it, as a sample
            // follows every rotation).
            state.since = now;
        } else if now.saturating_duration_since(state.since) >= self.period
            && samples >= self.min_data_points
        {
            let state = &mut *state;
            // The bar is this period's successes' percentile, so that failures quick for this
            // period cannot pull the delay down; a period without a success keeps the last bar.
            let slow = if state.histogram.is_empty() {
                self.slow_nanos.load(Ordering::Relaxed) / 1000
            } else {
                let slow = state.histogram.value_at_quantile(self.percentile);
                self.slow_nanos.store(nanos(slow), Ordering::Relaxed);
                slow
            };
            for value in state.unanswered.iter_recorded() {
                if value.value_iterated_to() > slow {
                    state
                        .histogram
                        .saturating_record_n(value.value_iterated_to(), value.count_at_value());
                }
            }
            if !state.histogram.is_empty() {
                let delay = state.histogram.value_at_quantile(self.percentile);
                self.cached_nanos.store(nanos(delay), Ordering::Relaxed);
            }
            state.histogram.reset();
            state.unanswered.reset();
            state.since = now;
        }
        Some(state)
    }
}

/// Microseconds from the histogram as cached nanoseconds.
fn nanos(micros: u64) -> u64 {
    micros.saturating_mul(1000).min(NONE - 1)
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latencies")
            .field("percentile", &self.percentile)
            .field("min_data_points", &self.min_data_points)
            .field("period", &self.period)
            .field("delay", &self.delay())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_period_starts_at_its_first_sample() {
        let l = Latencies::new(0.9, 10, Duration::from_secs(1));
        let ms = Duration::from_millis;
        // Idle after the layer is built, then 110 ms of calls: not a period yet.
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..11 {
            l.record(ms(10), Instant::now());
            tokio::time::advance(ms(10)).await;
        }
        assert_eq!(l.delay(), None);
        tokio::time::advance(ms(890)).await;
        l.record(ms(10), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(9) && d <= ms(11), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_calls_count_only_past_the_successes_percentile() {
        let l = Latencies::new(0.5, 3, Duration::from_secs(1));
        let ms = Duration::from_millis;
        // Nothing known yet: not even a slow failure is recorded.
        l.record_unanswered(ms(900), Instant::now());
        for _ in 0..4 {
            l.record(ms(10), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(10), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(9) && d <= ms(11), "{d:?}");
        // Three successes (one closed the last period) and four calls past their median, two
        // quicker ones left out: the median is the slow ones'.
        l.record(ms(10), Instant::now());
        l.record(ms(10), Instant::now());
        for ran in [ms(1), ms(5), ms(500), ms(500), ms(500), ms(500)] {
            l.record_unanswered(ran, Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(10), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(495) && d <= ms(505), "{d:?}");
        // The bar stays the successes' median, not the delay: the same mix keeps it there.
        for _ in 0..2 {
            l.record(ms(10), Instant::now());
        }
        for _ in 0..4 {
            l.record_unanswered(ms(500), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(10), Instant::now());
        assert_eq!(l.delay(), Some(d));
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_calls_are_measured_against_their_own_periods_successes() {
        let l = Latencies::new(0.9, 3, Duration::from_secs(1));
        let ms = Duration::from_millis;
        for _ in 0..3 {
            l.record(ms(10), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        // Closes the first period (p90 10 ms) and opens the second, in which latency rises.
        l.record(ms(10), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(9) && d <= ms(11), "{d:?}");
        for _ in 0..8 {
            l.record(ms(100), Instant::now());
        }
        for _ in 0..2 {
            l.record(ms(1000), Instant::now());
        }
        // Slower than the last period's successes, quicker than this one's p90 (1 s): left out.
        for _ in 0..10 {
            l.record_unanswered(ms(50), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record_unanswered(ms(2000), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(990) && d <= ms(1010), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_without_a_success_keeps_the_last_bar() {
        let l = Latencies::new(0.3, 2, Duration::from_secs(1));
        let ms = Duration::from_millis;
        l.record(ms(10), Instant::now());
        l.record(ms(10), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(10), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(9) && d <= ms(11), "{d:?}");
        for _ in 0..3 {
            l.record(ms(1000), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        // Past the bar in force (10 ms), so recorded; taking the lock ends the period (new bar
        // 1 s), and it lands in the next one, which has no success and keeps that bar.
        l.record_unanswered(ms(500), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(990) && d <= ms(1010), "{d:?}");
        l.record_unanswered(ms(2000), Instant::now());
        l.record_unanswered(ms(2000), Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        // Only the two past the bar count: their p30 is 2 s (with the 500 ms one it would be
        // 500 ms).
        l.record(ms(10), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(1990) && d <= ms(2010), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_period_ends_on_its_recorded_count_though_failures_are_left_out() {
        let l = Latencies::new(0.9, 10, Duration::from_secs(1));
        let ms = Duration::from_millis;
        for _ in 0..10 {
            l.record(ms(10), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(10), Instant::now());
        // One slow success among failures quick for this period (past the last bar, 10 ms): the
        // period ends on its ten recorded latencies, and its percentile rests on its successes.
        l.record(ms(1000), Instant::now());
        for _ in 0..8 {
            l.record_unanswered(ms(50), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(10), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(990) && d <= ms(1010), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn failures_quicker_than_the_bar_leave_the_delay_in_force() {
        let l = Latencies::new(0.9, 10, Duration::from_secs(1));
        let ms = Duration::from_millis;
        for _ in 0..10 {
            l.record(ms(50), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(50), Instant::now());
        let before = l.delay().unwrap();
        for _ in 0..5 {
            for _ in 0..1000 {
                l.record_unanswered(ms(1), Instant::now());
            }
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        assert_eq!(l.delay(), Some(before));
    }

    /// A layer with a period longer than the longest latency recorded (an hour) builds, and the
    /// period still ends and yields a delay.
    #[tokio::test(start_paused = true)]
    async fn a_period_longer_than_an_hour_yields_a_delay() {
        use crate::{budget::RetryBudget, hedge::HedgeLayer};
        use seawall_core::BoxError;
        use tower::{Layer, Service, ServiceExt};

        #[derive(Clone, Copy)]
        struct Ping;
        impl seawall_core::deadline::RequestDeadline for Ping {}

        let hours = |h: u64| Duration::from_secs(h * 3600);
        let ms = Duration::from_millis;
        let layer = HedgeLayer::builder()
            .percentile(0.9, 10, hours(2))
            .budget(RetryBudget::unlimited())
            .build()
            .unwrap();
        let mut svc = layer.layer(tower::service_fn(|_: Ping| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, BoxError>(())
        }));
        for _ in 0..10 {
            svc.ready().await.unwrap().call(Ping).await.unwrap();
            tokio::time::advance(hours(2) / 10).await;
        }
        assert_eq!(layer.current_delay(), None, "the period has not ended");
        svc.ready().await.unwrap().call(Ping).await.unwrap();
        let d = layer.current_delay().expect("the period ended");
        assert!(d >= ms(9) && d <= ms(11), "{d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn percentile_of_last_full_period() {
        let l = Latencies::new(0.9, 10, Duration::from_secs(1));
        let ms = Duration::from_millis;
        for i in 1..=100 {
            l.record(ms(i), Instant::now());
        }
        assert_eq!(l.delay(), None, "no full period yet");
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(500), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(89) && d <= ms(92), "{d:?}");
        // Too few points: the period runs on and the old delay stays.
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(500), Instant::now());
        assert_eq!(l.delay(), Some(d));
        for _ in 0..20 {
            l.record(ms(300), Instant::now());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        l.record(ms(1), Instant::now());
        let d = l.delay().unwrap();
        assert!(d >= ms(297) && d <= ms(303), "{d:?}");
    }
}
