//! The breaker's configuration: builder, defaults and validation.

use crate::{layer::BreakerLayer, state::Transition, window};
use seawall_core::{
    classify::DefaultClassifier,
    config::{check_at_least_f64, check_fraction, check_range, check_rate},
    ConfigError, Listener, Listeners, Name,
};
use std::{
    collections::hash_map::RandomState,
    hash::{BuildHasher, Hasher},
    time::Duration,
};

/// The longest wait or bound a breaker accepts: one day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// Which calls the closed breaker's failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlidingWindow {
    /// The last `n` calls (Resilience4j's `COUNT_BASED`). `n` in `1..=1_000_000`.
    Count(u32),
    /// The calls of the last `length`, kept in `buckets` buckets of `length / buckets` each
    /// (Resilience4j's `TIME_BASED`, Polly's sampling duration). `buckets` in `1..=1000`. A
    /// bucket counts its first 32,767 calls exactly and a random sample of any further ones,
    /// weighted so that the window's rates stay unbiased (see [`window`](crate::window)).
    Time {
        /// How far back the window reaches.
        length: Duration,
        /// How many buckets the window is kept in; a bucket leaves the window whole.
        buckets: u32,
    },
}

impl SlidingWindow {
    /// The last `n` calls.
    pub fn count(n: u32) -> Self {
        SlidingWindow::Count(n)
    }

    /// The calls of the last `length`, in 10 buckets.
    pub fn time(length: Duration) -> Self {
        SlidingWindow::Time {
            length,
            buckets: 10,
        }
    }

    /// The calls of the last `length`, in `buckets` buckets.
    pub fn time_with_buckets(length: Duration, buckets: u32) -> Self {
        SlidingWindow::Time { length, buckets }
    }
}

/// A validated breaker configuration, shared by every breaker built from it.
///
/// Built with [`BreakerConfig::builder`]; turn it into a layer with
/// [`BreakerLayer::from_config`], or use it to create breakers on demand in a
/// [`BreakerSet`](crate::BreakerSet).
#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub(crate) name: Name,
    pub(crate) window: SlidingWindow,
    pub(crate) minimum_calls: u32,
    pub(crate) failure_rate: Option<f64>,
    pub(crate) slow_rate: Option<f64>,
    pub(crate) slow_call_duration: Duration,
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) wait: Duration,
    pub(crate) max_wait: Duration,
    pub(crate) multiplier: f64,
    pub(crate) jitter: f64,
    pub(crate) permitted_probes: u32,
    pub(crate) max_wait_in_half_open: Duration,
    pub(crate) eager_half_open: bool,
    pub(crate) backpressure: bool,
    pub(crate) seed: Option<u64>,
    pub(crate) listeners: Listeners<Transition>,
}

impl BreakerConfig {
    /// A builder with the defaults of the table in the [crate docs](crate).
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfigBuilder::new()
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The sliding window.
    pub fn window(&self) -> SlidingWindow {
        self.window
    }

    /// Whether `poll_ready` waits (instead of the response future rejecting) while the breaker
    /// does not admit calls. A call whose permit went stale after its inner service was polled is
    /// rejected with [`Open`](crate::Open) all the same (see
    /// [`BreakerConfigBuilder::backpressure`]).
    pub fn backpressure(&self) -> bool {
        self.backpressure
    }

    pub(crate) fn build_window(&self) -> window::Window {
        match self.window {
            SlidingWindow::Count(n) => window::Window::Count(window::CountWindow::new(n)),
            SlidingWindow::Time { length, buckets } => {
                let bucket = (length.as_nanos() / buckets as u128).clamp(1, u64::MAX as u128);
                window::Window::Time(window::TimeWindow::new(bucket as u64, buckets))
            }
        }
    }

    /// The seed of the jitter draws: the configured one, or a fresh random one.
    pub(crate) fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(|| {
            let mut hasher = RandomState::new().build_hasher();
            hasher.write_u64(0x5ea_3a11);
            hasher.finish()
        })
    }
}

/// Builds a [`BreakerConfig`] or a [`BreakerLayer`]; see [`BreakerLayer::builder`].
///
/// Every setter takes the value as given; [`build`](Self::build) validates them all and names the
/// first field that breaks a rule.
#[derive(Debug, Clone)]
pub struct BreakerConfigBuilder {
    name: Option<String>,
    window: SlidingWindow,
    /// `None`: the default, [`DEFAULT_MINIMUM_CALLS`] or a count window's size if smaller.
    minimum_calls: Option<u32>,
    failure_rate: Option<f64>,
    slow_rate: Option<f64>,
    slow_call_duration: Duration,
    consecutive_failures: Option<u32>,
    wait: Duration,
    max_wait: Option<Duration>,
    multiplier: f64,
    jitter: f64,
    permitted_probes: u32,
    max_wait_in_half_open: Duration,
    eager_half_open: bool,
    backpressure: bool,
    seed: Option<u64>,
    listeners: Listeners<Transition>,
}

/// Default sliding window: the last 100 calls.
pub const DEFAULT_WINDOW: SlidingWindow = SlidingWindow::Count(100);
/// Default number of calls in the window before any rate is evaluated.
pub const DEFAULT_MINIMUM_CALLS: u32 = 20;
/// Default failure-rate threshold.
pub const DEFAULT_FAILURE_RATE: f64 = 0.5;
/// Default duration from which a call counts as slow (the slow-call rule is off by default).
pub const DEFAULT_SLOW_CALL_DURATION: Duration = Duration::from_secs(5);
/// Default first wait in Open before probing.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// Default cap of the growing wait in Open.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(60);
/// Default growth of the wait in Open on each consecutive trip.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;
/// Default jitter: each wait is drawn from `[wait × (1 − jitter), wait]`.
pub const DEFAULT_JITTER: f64 = 0.2;
/// Default number of trial calls in HalfOpen.
pub const DEFAULT_PERMITTED_PROBES: u32 = 3;
/// Default bound on HalfOpen's probes in flight, counted from the first one admitted while none
/// was out.
pub const DEFAULT_MAX_WAIT_IN_HALF_OPEN: Duration = Duration::from_secs(30);

impl BreakerConfigBuilder {
    pub(crate) fn new() -> Self {
        BreakerConfigBuilder {
            name: None,
            window: DEFAULT_WINDOW,
            minimum_calls: None,
            failure_rate: Some(DEFAULT_FAILURE_RATE),
            slow_rate: None,
            slow_call_duration: DEFAULT_SLOW_CALL_DURATION,
            consecutive_failures: None,
            wait: DEFAULT_WAIT,
            max_wait: None,
            multiplier: DEFAULT_MULTIPLIER,
            jitter: DEFAULT_JITTER,
            permitted_probes: DEFAULT_PERMITTED_PROBES,
            max_wait_in_half_open: DEFAULT_MAX_WAIT_IN_HALF_OPEN,
            eager_half_open: false,
            backpressure: false,
            seed: None,
            listeners: Listeners::new(),
        }
    }

    /// The policy instance name for events, logs and metrics. Default `"breaker"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The sliding window rates are computed over. Default the last 100 calls.
    pub fn sliding_window(mut self, window: SlidingWindow) -> Self {
        self.window = window;
        self
    }

    /// How many counted calls the window must hold before a rate can trip the breaker.
    /// Default 20, or a count window's size if that is smaller (as Resilience4j takes the smaller
    /// of the two); set, at most the size of a count window, and at most 1,000,000 for a time
    /// window.
    pub fn minimum_calls(mut self, calls: u32) -> Self {
        self.minimum_calls = Some(calls);
        self
    }

    /// Trip when failures / counted calls in the window reach this share, in `(0, 1]`.
    /// Default 0.5. In HalfOpen the probes' failure rate is judged against it too. Rates are
    /// compared in whole parts per million: a threshold between two is rounded up (but one at
    /// most 1e-12 above the lower, as `0.5 + 1e-13`, is rounded down, so that a decimal
    /// threshold such as `0.07` keeps its whole number of ppm despite its binary rounding), and
    /// one below a millionth counts as a millionth. So the breaker never trips more than 1e-12
    /// below the configured rate while the window counts exactly (a time bucket past 32,767 calls
    /// counts a sample; see [`window`](crate::window) for its error).
    pub fn failure_rate_threshold(mut self, threshold: f64) -> Self {
        self.failure_rate = Some(threshold);
        self
    }

    /// Turn the failure-rate rule off (for example to trip on consecutive failures alone).
    pub fn without_failure_rate(mut self) -> Self {
        self.failure_rate = None;
        self
    }

    /// Trip when slow calls / counted calls in the window reach this share, in `(0, 1]`.
    /// Off by default. A call is slow when it takes at least
    /// [`slow_call_duration`](Self::slow_call_duration), whether it succeeded or failed. Compared
    /// in whole parts per million, rounded up as
    /// [`failure_rate_threshold`](Self::failure_rate_threshold) is.
    pub fn slow_call_rate_threshold(mut self, threshold: f64) -> Self {
        self.slow_rate = Some(threshold);
        self
    }

    /// From how long a call counts as slow. Default 5 s.
    pub fn slow_call_duration(mut self, duration: Duration) -> Self {
        self.slow_call_duration = duration;
        self
    }

    /// Also trip after `failures` failures in a row (a success resets the count, an ignored call
    /// does not). Off by default. Not subject to `minimum_calls`.
    pub fn consecutive_failures(mut self, failures: u32) -> Self {
        self.consecutive_failures = Some(failures);
        self
    }

    /// How long the breaker stays Open after its first trip before probing. Default 5 s.
    pub fn wait_duration(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Each further trip without closing in between multiplies the wait by `multiplier`, up to
    /// `max_wait`. Default ×2 up to 60 s, or up to `wait_duration` if that is longer. `multiplier` 1
    /// keeps the wait constant. The wait is back to [`wait_duration`](Self::wait_duration) once the
    /// breaker closes.
    pub fn backoff(mut self, multiplier: f64, max_wait: Duration) -> Self {
        self.multiplier = multiplier;
        self.max_wait = Some(max_wait);
        self
    }

    /// Draw each wait from `[wait × (1 − jitter), wait]`, so that many clients do not probe a
    /// recovering dependency at the same instant. In `[0, 1]`; default 0.2.
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seed the jitter draws, for reproducible tests. Default a fresh random seed per breaker.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How many probe slots HalfOpen has: a probe that answers keeps its slot, an ignored or
    /// cancelled one hands it back, and a call that finds every slot taken is rejected with
    /// `Open`; the verdict is taken by rate once this many results are in. In `1..=1000`;
    /// default 3.
    pub fn permitted_probes(mut self, probes: u32) -> Self {
        self.permitted_probes = probes;
        self
    }

    /// How long HalfOpen waits for the probes in flight, counted from the first one admitted
    /// while none was out, before it gives up on them and opens again (a probe that hangs must
    /// not hold the breaker). A HalfOpen with no probe in flight (none admitted yet, or each one
    /// answered short of the verdict, ignored or cancelled) waits for its next call without a
    /// limit, keeping the results it has, and that call starts the bound afresh: a client that
    /// calls a recovered dependency rarely still closes the breaker, as long as it calls soon
    /// after `poll_ready`. The probe slot `poll_ready` reserves counts as a probe in flight until
    /// the service is called or dropped, so a caller that keeps a service polled ready without
    /// calling it (tower's `p2c::Balance` keeps every ready endpoint until it picks it) lets the
    /// bound run out and reopens the breaker; see [`Breaker`](crate::Breaker). Default 30 s.
    /// (Resilience4j's `maxWaitDurationInHalfOpenState` bounds the whole HalfOpen state, idle or
    /// not, and is off by default.)
    pub fn max_wait_in_half_open(mut self, bound: Duration) -> Self {
        self.max_wait_in_half_open = bound;
        self
    }

    /// Move Open → HalfOpen (and a HalfOpen whose probes outlived their bound → Open) on a
    /// timer, so that listeners and metrics see it when it is due, instead of lazily on the next
    /// call. Needs a tokio runtime when the breaker opens; without one the move stays lazy.
    /// Default `false`.
    pub fn eager_half_open(mut self, eager: bool) -> Self {
        self.eager_half_open = eager;
        self
    }

    /// While the breaker does not admit calls, make `poll_ready` return `Pending` (woken by a
    /// timer when the wait ends, or by a state change) instead of letting the response future
    /// fail with [`Open`](crate::Open). Default `false`.
    ///
    /// A caller waits only until the breaker has polled its inner service: a caller whose
    /// reserved permit went stale while its inner service got ready (the breaker opened
    /// meanwhile) is rejected, as without backpressure. What that readiness holds (a bulkhead's
    /// permit, a place in a queue) may be what the breaker's own trial calls need (see
    /// [`Breaker`](crate::Breaker)).
    pub fn backpressure(mut self, backpressure: bool) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// Adds a listener called on every state change (and, in MetricsOnly, on every change the
    /// breaker would have made). A change to Open or ForcedOpen says why in
    /// [`Transition::reason`] (a failure or slow-call rate with its threshold, a run of failures,
    /// failed, slow or hung probes, or [`force_open`](crate::BreakerHandle::force_open)).
    ///
    /// A listener is called on the thread that made the change, after the change: another
    /// thread can make the next change and call the listeners with it in between, so changes
    /// made at nearly the same time on different threads (a trip and a
    /// [`reset`](crate::BreakerHandle::reset), say) may be heard out of order. Order them by
    /// [`Transition::generation`], which every change raises: a transition with a lower
    /// generation than one already heard is older, and can be dropped.
    /// [`BreakerHandle::state`](crate::BreakerHandle::state) and
    /// [`subscribe`](crate::BreakerHandle::subscribe) always show the current state.
    pub fn on_transition(mut self, listener: impl Listener<Transition>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Validates the configuration.
    pub fn build_config(self) -> Result<BreakerConfig, ConfigError> {
        let name = match &self.name {
            Some(name) => Name::validate("name", name)?,
            None => Name::default_for("breaker"),
        };
        let window_limit = match self.window {
            SlidingWindow::Count(n) => {
                check_range("sliding_window", n, 1, window::MAX_COUNT_WINDOW)?;
                n
            }
            SlidingWindow::Time { length, buckets } => {
                check_range("sliding_window", buckets, 1, window::MAX_BUCKETS)?;
                check_range(
                    "sliding_window",
                    length,
                    Duration::from_micros(buckets as u64),
                    MAX_DURATION,
                )?;
                // A time window counts any number of calls (past what a bucket counts exactly, a
                // sample of them); `minimum_calls` has the bound of the largest count window.
                window::MAX_COUNT_WINDOW
            }
        };
        let minimum_calls = self
            .minimum_calls
            .unwrap_or(DEFAULT_MINIMUM_CALLS.min(window_limit));
        check_range("minimum_calls", minimum_calls, 1, window_limit).map_err(|err| {
            match self.window {
                SlidingWindow::Count(n)
                    if minimum_calls > n && minimum_calls <= window::MAX_COUNT_WINDOW =>
                {
                    ConfigError::conflict(
                        "minimum_calls",
                        format!("must not exceed the count window ({n}), got {minimum_calls}"),
                    )
                }
                _ => err,
            }
        })?;
        if let Some(rate) = self.failure_rate {
            check_rate("failure_rate_threshold", rate)?;
        }
        if let Some(rate) = self.slow_rate {
            check_rate("slow_call_rate_threshold", rate)?;
        }
        check_range(
            "slow_call_duration",
            self.slow_call_duration,
            Duration::from_nanos(1),
            MAX_DURATION,
        )?;
        if let Some(k) = self.consecutive_failures {
            check_range("consecutive_failures", k, 1, window::MAX_COUNT_WINDOW)?;
        }
        if self.failure_rate.is_none()
            && self.slow_rate.is_none()
            && self.consecutive_failures.is_none()
        {
            return Err(ConfigError::conflict(
                "failure_rate_threshold",
                "must be set when neither slow_call_rate_threshold nor consecutive_failures is",
            ));
        }
        check_range(
            "wait_duration",
            self.wait,
            Duration::from_millis(1),
            MAX_DURATION,
        )?;
        let max_wait = self.max_wait.unwrap_or(DEFAULT_MAX_WAIT.max(self.wait));
        check_range("max_wait", max_wait, Duration::from_millis(1), MAX_DURATION)?;
        if max_wait < self.wait {
            return Err(ConfigError::conflict(
                "max_wait",
                format!(
                    "must not be less than wait_duration ({:?}), got {max_wait:?}",
                    self.wait
                ),
            ));
        }
        check_at_least_f64("multiplier", self.multiplier, 1.0)?;
        check_fraction("jitter", self.jitter)?;
        check_range("permitted_probes", self.permitted_probes, 1, 1000)?;
        check_range(
            "max_wait_in_half_open",
            self.max_wait_in_half_open,
            Duration::from_millis(1),
            MAX_DURATION,
        )?;
        Ok(BreakerConfig {
            name,
            window: self.window,
            minimum_calls,
            failure_rate: self.failure_rate,
            slow_rate: self.slow_rate,
            slow_call_duration: self.slow_call_duration,
            consecutive_failures: self.consecutive_failures,
            wait: self.wait,
            max_wait,
            multiplier: self.multiplier,
            jitter: self.jitter,
            permitted_probes: self.permitted_probes,
            max_wait_in_half_open: self.max_wait_in_half_open,
            eager_half_open: self.eager_half_open,
            backpressure: self.backpressure,
            seed: self.seed,
            listeners: self.listeners,
        })
    }

    /// Validates the configuration and builds a layer with the default classifier (`Err` is a
    /// failure, `Ok` a success).
    pub fn build(self) -> Result<BreakerLayer<DefaultClassifier>, ConfigError> {
        Ok(BreakerLayer::from_config(
            self.build_config()?,
            DefaultClassifier,
        ))
    }

    /// Validates the configuration and builds a layer that classifies outcomes with
    /// `classifier` (an [`HttpClassifier`](seawall_core::classify::HttpClassifier), a
    /// [`GrpcClassifier`](seawall_core::classify::GrpcClassifier) or a closure).
    pub fn build_with<C>(self, classifier: C) -> Result<BreakerLayer<C>, ConfigError> {
        Ok(BreakerLayer::from_config(self.build_config()?, classifier))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(builder: BreakerConfigBuilder) -> ConfigError {
        builder.build_config().unwrap_err()
    }

    #[test]
    fn defaults_are_valid() {
        let config = BreakerConfig::builder().build_config().unwrap();
        assert_eq!(config.window, SlidingWindow::Count(100));
        assert_eq!(config.max_wait, DEFAULT_MAX_WAIT);
        assert_eq!(config.name().as_str(), "breaker");
    }

    #[test]
    fn every_rule_names_its_field() {
        let b = BreakerConfig::builder;
        let cases = [
            (
                err(b().failure_rate_threshold(1.5)),
                "failure_rate_threshold must be in (0, 1], got 1.5",
            ),
            (
                err(b().slow_call_rate_threshold(0.0)),
                "slow_call_rate_threshold must be in (0, 1], got 0",
            ),
            (
                err(b().sliding_window(SlidingWindow::count(0))),
                "sliding_window must be in 1..=1000000, got 0",
            ),
            (
                err(b().sliding_window(SlidingWindow::count(10)).minimum_calls(20)),
                "minimum_calls must not exceed the count window (10), got 20",
            ),
            (
                err(b().minimum_calls(0)),
                "minimum_calls must be in 1..=100, got 0",
            ),
            (
                err(b()
                    .sliding_window(SlidingWindow::time_with_buckets(Duration::from_secs(10), 2))
                    .minimum_calls(1_000_001)),
                "minimum_calls must be in 1..=1000000, got 1000001",
            ),
            (
                err(b().permitted_probes(0)),
                "permitted_probes must be in 1..=1000, got 0",
            ),
            (err(b().jitter(-0.1)), "jitter must be in [0, 1], got -0.1"),
            (
                err(b().backoff(0.5, Duration::from_secs(60))),
                "multiplier must be a finite number of at least 1, got 0.5",
            ),
            (
                err(b().backoff(2.0, Duration::from_secs(1))),
                "max_wait must not be less than wait_duration (5s), got 1s",
            ),
            (
                err(b().wait_duration(Duration::ZERO)),
                "wait_duration must be in 1ms..=86400s, got 0ns",
            ),
            (
                err(b().without_failure_rate()),
                "failure_rate_threshold must be set when neither slow_call_rate_threshold nor consecutive_failures is",
            ),
            (
                err(b().consecutive_failures(0)),
                "consecutive_failures must be in 1..=1000000, got 0",
            ),
            (
                err(b().max_wait_in_half_open(Duration::ZERO)),
                "max_wait_in_half_open must be in 1ms..=86400s, got 0ns",
            ),
            (err(b().name("a b")), ""),
        ];
        for (error, message) in cases {
            if !message.is_empty() {
                assert_eq!(error.to_string(), message);
            }
            assert!(error.to_string().starts_with(error.field()), "{error}");
        }
        assert_eq!(
            err(b().sliding_window(SlidingWindow::time_with_buckets(Duration::from_secs(1), 0)))
                .field(),
            "sliding_window"
        );
    }

    #[test]
    fn single_rules_are_enough() {
        BreakerConfig::builder()
            .without_failure_rate()
            .consecutive_failures(5)
            .build_config()
            .unwrap();
        BreakerConfig::builder()
            .without_failure_rate()
            .slow_call_rate_threshold(0.5)
            .build_config()
            .unwrap();
        let config = BreakerConfig::builder()
            .wait_duration(Duration::from_secs(120))
            .build_config()
            .unwrap();
        assert_eq!(config.max_wait, Duration::from_secs(120));
    }

    #[test]
    fn a_time_window_takes_any_minimum_calls_up_to_a_million() {
        for buckets in [1, 2, 1000] {
            let window = SlidingWindow::time_with_buckets(Duration::from_secs(1), buckets);
            let config = BreakerConfig::builder()
                .sliding_window(window)
                .minimum_calls(1_000_000)
                .build_config()
                .unwrap();
            assert_eq!(config.minimum_calls, 1_000_000);
        }
    }

    #[test]
    fn the_default_minimum_calls_is_at_most_a_count_window() {
        let minimum = |window| {
            BreakerConfig::builder()
                .sliding_window(window)
                .build_config()
                .unwrap()
                .minimum_calls
        };
        assert_eq!(minimum(SlidingWindow::count(10)), 10);
        assert_eq!(minimum(SlidingWindow::count(100)), DEFAULT_MINIMUM_CALLS);
        assert_eq!(
            minimum(SlidingWindow::time(Duration::from_secs(10))),
            DEFAULT_MINIMUM_CALLS
        );
    }
}
