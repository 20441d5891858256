use super::{
    latency::Latencies,
    layer::{DelaySource, Shared},
    HedgeEvent, HedgeLayer,
};
use crate::{
    budget::RetryBudget,
    policy::{ByClone, Classified, HttpPolicy},
};
use seawall_core::{config, ConfigError, Listener, Listeners, Name};
use std::time::Duration;

/// The most latencies a percentile period may be asked to hold: a limit on plain mistakes (a
/// period of 10 s reaches it at 100 million calls a second), not on what a period can hold.
const MAX_MIN_DATA_POINTS: u64 = 1_000_000_000;

/// The longest fixed delay and percentile period a builder accepts: one day, as for the
/// breaker's durations. A longer one is taken for a mistake (a unit mixed up), not a setting.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a call runs before a hedge is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HedgeDelay {
    /// Always this long; at most one day.
    Fixed(Duration),
    /// A percentile of recent latencies: of the calls that succeeded in the last full period (an
    /// HdrHistogram, two significant digits), and of those that failed, or were dropped
    /// unanswered, after running longer than that period's successes at that percentile, and
    /// than the previous period's (each counted as the time it ran, a lower bound: a failed
    /// call's, until its last copy that may have been sent answered). A period (the first one
    /// starting at the first latency recorded) lasts at least `period` and until it holds
    /// `min_data_points` latencies as recorded (the failures its successes' percentile then
    /// leaves out included); no hedges are sent until one has been measured.
    Percentile {
        /// In `(0, 1]`; 0.95 hedges the slowest 5% of calls.
        percentile: f64,
        /// Latencies recorded (successful calls, and failures past the last bar) a period needs
        /// before its percentile is used; a quieter period runs on until it has them. 1 to
        /// 1,000,000,000.
        min_data_points: u64,
        /// How often the percentile is recomputed from fresh data; more than zero, at most one
        /// day. Latencies longer than 1 h are recorded as 1 h.
        period: Duration,
    },
}

impl Default for HedgeDelay {
    /// The 95th percentile of the last 10 s, once a period holds 100 recorded latencies.
    fn default() -> Self {
        HedgeDelay::Percentile {
            percentile: 0.95,
            min_data_points: 100,
            period: Duration::from_secs(10),
        }
    }
}

/// Builds a [`HedgeLayer`]; see [`HedgeLayer::builder`].
#[derive(Debug)]
pub struct HedgeConfigBuilder<P = Classified, K = ByClone> {
    max_hedges: u32,
    delay: HedgeDelay,
    budget: Option<RetryBudget>,
    name: Option<String>,
    listeners: Listeners<HedgeEvent>,
    policy: P,
    cloner: K,
}

impl HedgeConfigBuilder {
    pub(crate) fn new() -> Self {
        HedgeConfigBuilder {
            max_hedges: 1,
            delay: HedgeDelay::default(),
            budget: None,
            name: None,
            listeners: Listeners::new(),
            policy: Classified::default(),
            cloner: ByClone,
        }
    }
}

impl<P, K> HedgeConfigBuilder<P, K> {
    /// Extra copies a call may send, 1 to 10 (default 1). Each is sent `delay` after the
    /// previous one while no acceptable answer has come.
    pub fn max_hedges(mut self, max_hedges: u32) -> Self {
        self.max_hedges = max_hedges;
        self
    }

    /// Hedges after a fixed delay, at most one day (zero sends the hedges as soon as the call is
    /// first polled and still pending).
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = HedgeDelay::Fixed(delay);
        self
    }

    /// Hedges after a latency percentile of recent calls (default: the 95th over 10 s periods,
    /// from 100 recorded latencies). `percentile` is in `(0, 1]`, `min_data_points` in
    /// `1..=1_000_000_000` and `period` in `(0, 1 day]`. These limits reject settings that are
    /// plainly mistakes; within them, no hedge is sent until a period has lasted `period` and
    /// holds `min_data_points` latencies, so a long period or a large count delays the first
    /// hedge for as long. Latencies longer than 1 h, the histogram's top, are recorded as 1 h.
    pub fn percentile(mut self, percentile: f64, min_data_points: u64, period: Duration) -> Self {
        self.delay = HedgeDelay::Percentile {
            percentile,
            min_data_points,
            period,
        };
        self
    }

    /// The budget hedges draw on. Default: a ratio budget of its own allowing hedges for 10% of
    /// requests over 10 s, with no reserve.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The policy instance name for events and metrics. Default `"hedge"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a listener called on every [`HedgeEvent`].
    pub fn on_event(mut self, listener: impl Listener<HedgeEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Decides which requests may be hedged and which answers are acceptable with `policy`.
    pub fn policy<P2>(self, policy: P2) -> HedgeConfigBuilder<P2, K> {
        HedgeConfigBuilder {
            max_hedges: self.max_hedges,
            delay: self.delay,
            budget: self.budget,
            name: self.name,
            listeners: self.listeners,
            policy,
            cloner: self.cloner,
        }
    }

    /// Accepts the answers `classifier` calls a success; any other is returned only when no
    /// other copy of the call is still running.
    pub fn classify<C>(self, classifier: C) -> HedgeConfigBuilder<Classified<C>, K> {
        self.policy(Classified(classifier))
    }

    /// The HTTP policy: only idempotent methods are hedged; 5xx, 429 and errors are not accepted
    /// while another copy may still answer. The `Retry-After` of a 429 or 503 from a copy that
    /// fails while another copy runs on holds the next hedge back until at least that long after
    /// the failure, with no cap: `Retry-After: 120` delays it by two minutes, and one the deadline
    /// leaves no room for sends no further hedge (see the [module docs](crate::hedge)).
    pub fn http(self) -> HedgeConfigBuilder<HttpPolicy, K> {
        self.policy(HttpPolicy::new())
    }

    /// Copies requests with `cloner` (a closure `Fn(&Req) -> Option<Req>` or any
    /// [`CloneRequest`](crate::policy::CloneRequest)); a request it cannot copy is not hedged.
    /// The call's deadline is read from the original request, and a copy made without one, or
    /// with a later one, is given it; a copy keeps a deadline of its own only when it is earlier.
    pub fn clone_with<K2>(self, cloner: K2) -> HedgeConfigBuilder<P, K2> {
        HedgeConfigBuilder {
            max_hedges: self.max_hedges,
            delay: self.delay,
            budget: self.budget,
            name: self.name,
            listeners: self.listeners,
            policy: self.policy,
            cloner,
        }
    }

    /// Validates the configuration and builds the layer.
    pub fn build(self) -> Result<HedgeLayer<P, K>, ConfigError> {
        config::check_range("max_hedges", self.max_hedges, 1, 10)?;
        let delay = match self.delay {
            HedgeDelay::Fixed(delay) => {
                config::check_range("delay", delay, Duration::ZERO, MAX_DURATION)?;
                DelaySource::Fixed(delay)
            }
            HedgeDelay::Percentile {
                percentile,
                min_data_points,
                period,
            } => {
                config::check_rate("percentile", percentile)?;
                config::check_range("min_data_points", min_data_points, 1, MAX_MIN_DATA_POINTS)?;
                config::check_positive_duration("period", period)?;
                config::check_range("period", period, Duration::from_nanos(1), MAX_DURATION)?;
                DelaySource::Percentile(Latencies::new(percentile, min_data_points, period))
            }
        };
        let name = match self.name {
            Some(name) => Name::validate("name", &name)?,
            None => Name::default_for("hedge"),
        };
        let budget = match self.budget {
            Some(budget) => budget,
            None => RetryBudget::builder()
                .ratio(0.1)
                .min_per_second(0)
                .build()?,
        };
        Ok(HedgeLayer::from_shared(Shared::new(
            self.policy,
            self.cloner,
            self.max_hedges,
            delay,
            budget,
            name,
            self.listeners,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        let e = HedgeLayer::builder().max_hedges(0).build().unwrap_err();
        assert_eq!(e.to_string(), "max_hedges must be in 1..=10, got 0");
        let e = HedgeLayer::builder()
            .percentile(1.5, 10, Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "percentile");
        let e = HedgeLayer::builder()
            .percentile(0.9, 0, Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "min_data_points");
        let e = HedgeLayer::builder()
            .percentile(0.9, 10, Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "period");
    }

    #[test]
    fn settings_past_the_limits_are_rejected() {
        let day = Duration::from_secs(86_400);
        let e = HedgeLayer::builder()
            .percentile(0.9, 10, Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "period");
        let e = HedgeLayer::builder()
            .percentile(0.9, 10, day + Duration::from_nanos(1))
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "period must be in 1ns..=86400s, got 86400.000000001s"
        );
        let e = HedgeLayer::builder()
            .percentile(0.9, u64::MAX, Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "min_data_points");
        let e = HedgeLayer::builder()
            .percentile(0.9, 1_000_000_001, Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "min_data_points must be in 1..=1000000000, got 1000000001"
        );
        let e = HedgeLayer::builder()
            .delay(Duration::MAX)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "delay");
        let e = HedgeLayer::builder()
            .delay(day + Duration::from_nanos(1))
            .build()
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "delay must be in 0ns..=86400s, got 86400.000000001s"
        );
    }

    #[test]
    fn the_longest_settings_are_accepted() {
        let day = Duration::from_secs(86_400);
        let layer = HedgeLayer::builder()
            .percentile(0.9, 1_000_000_000, day)
            .build()
            .unwrap();
        assert_eq!(layer.current_delay(), None);
        let layer = HedgeLayer::builder().delay(day).build().unwrap();
        assert_eq!(layer.current_delay(), Some(day));
        let layer = HedgeLayer::builder().delay(Duration::ZERO).build().unwrap();
        assert_eq!(layer.current_delay(), Some(Duration::ZERO));
    }

    #[test]
    fn fixed_delay_is_known_at_once() {
        let layer = HedgeLayer::builder()
            .delay(Duration::from_millis(5))
            .build()
            .unwrap();
        assert_eq!(layer.current_delay(), Some(Duration::from_millis(5)));
        assert_eq!(layer.name().as_str(), "hedge");
        let layer = HedgeLayer::builder().build().unwrap();
        assert_eq!(layer.current_delay(), None);
    }
}
