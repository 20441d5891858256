//! The rolling latency histogram behind percentile hedge delays.

use hdrhistogram::Histogram;
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex, TryLockError,
    },
    time::Duration,
};
use tokio::time::Instant;

/// No delay known yet.
const NONE: u64 = u64::MAX;
/// The longest latency recorded, in microseconds (1 hour); longer ones count as this.
const HIGHEST: u64 = 3_600_000_000;

/// Latencies of the current period in an HdrHistogram; at the end of each period (once it holds
/// at least `min_data_points`) the percentile is computed, cached for lock-free reads, and the
/// histogram starts afresh. So the delay in force is the percentile of the last full period. The
/// first period starts at the first sample, so the time before the first call does not count
/// towards it; each later one starts at the sample that ended the one before.
pub(crate) struct Latencies {
    percentile: f64,
    min_data_points: u64,
    period: Duration,
    state: Mutex<Rolling>,
    cached_nanos: AtomicU64,
}

struct Rolling {
    histogram: Histogram<u64>,
    since: Instant,
}

impl Latencies {
    pub(crate) fn new(percentile: f64, min_data_points: u64, period: Duration) -> Self {
        Latencies {
            percentile,
            min_data_points,
            period,
            state: Mutex::new(Rolling {
                histogram: Histogram::new_with_bounds(1, HIGHEST, 2)
                    .expect("constant histogram bounds are valid"),
                since: Instant::now(),
            }),
            cached_nanos: AtomicU64::new(NONE),
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

    /// Records one call's latency. Skips the sample rather than wait if another thread is
    /// recording.
    pub(crate) fn record(&self, latency: Duration, now: Instant) {
        let mut state = match self.state.try_lock() {
            Ok(state) => state,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        if state.histogram.is_empty() {
            // The first sample (a histogram is never empty after it, as a sample follows
            // every rotation).
            state.since = now;
        } else if now.saturating_duration_since(state.since) >= self.period
            && state.histogram.len() >= self.min_data_points
        {
            let micros = state.histogram.value_at_quantile(self.percentile);
            let nanos = micros.saturating_mul(1000).min(NONE - 1);
            self.cached_nanos.store(nanos, Ordering::Relaxed);
            state.histogram.reset();
            state.since = now;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(HIGHEST);
        state.histogram.saturating_record(micros.clamp(1, HIGHEST));
    }
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
