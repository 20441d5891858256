//! The metric naming scheme every concern uses.
//!
//! Numbers go through the [`metrics`](https://docs.rs/metrics) facade, so any exporter works
//! (Prometheus, StatsD, OpenTelemetry). Names are `seawall_<concern>_<measure>` and every series has
//! one label, `name`, the policy instance [`Name`]. With no recorder installed a metric costs
//! almost nothing.
//!
//! Measures taken on every call (a gauge of permits in use, a breaker's success counter) use
//! handles registered when the policy is built, so install the recorder *before* building layers.
//! The hedge and rate-limit counters are registered with their layer too, and so are the retry
//! counters of a retry layer that keeps shared state: a budget other than
//! `RetryBudget::unlimited()` (a layer has one by default), a seed, listeners, or settings past the
//! 4096 distinct retry configurations a process keeps in one table. A retry layer without any looks
//! its counters up when the event happens, as the other counters of rare events (a timeout firing,
//! a fallback being called) are looked up, which keeps the per-call path free of them. No seawall
//! metric is a histogram.
//!
//! The full list of names is [`ALL`]; [`describe`] registers a help text for each with the installed
//! recorder.

use crate::Name;

/// The one label every seawall series carries: the policy instance name.
pub const LABEL: &str = "name";

/// Counter: calls a timeout layer cut off.
pub const TIMEOUT_ELAPSED: &str = "seawall_timeout_elapsed_total";
/// Counter: failed calls handed to a fallback, whether or not it answered (those it failed on
/// count in [`FALLBACK_FAILED`] too).
pub const FALLBACK_USED: &str = "seawall_fallback_used_total";
/// Counter: fallbacks that failed themselves.
pub const FALLBACK_FAILED: &str = "seawall_fallback_failed_total";

// ----- breaker metric names -----
/// Gauge: the breaker's state (0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only).
/// Breakers that share a name show the most severe of their states (forced open, open, half-open,
/// metrics only, disabled, then closed), a dropped breaker's state is taken off, and the gauge is 0
/// when none is left; see `docs/observability.md` in the repository.
pub const BREAKER_STATE: &str = "seawall_breaker_state";
/// Counter: calls through a breaker that succeeded.
pub const BREAKER_SUCCESSES: &str = "seawall_breaker_successes_total";
/// Counter: calls through a breaker that failed.
pub const BREAKER_FAILURES: &str = "seawall_breaker_failures_total";
/// Counter: calls through a breaker classified as ignored or cancelled.
pub const BREAKER_IGNORED: &str = "seawall_breaker_ignored_total";
/// Counter: calls through a breaker that were slow (when the slow-call rule is on).
pub const BREAKER_SLOW: &str = "seawall_breaker_slow_calls_total";
/// Counter: calls a breaker rejected.
pub const BREAKER_REJECTED: &str = "seawall_breaker_rejected_total";
/// Counter: breaker state changes (including the ones a metrics-only breaker would make).
pub const BREAKER_TRANSITIONS: &str = "seawall_breaker_transitions_total";
/// Gauge: keys of a keyed breaker set whose breaker is open, half-open or forced open. The
/// breakers of a set share its name and leave [`BREAKER_STATE`] alone.
pub const BREAKER_KEYS_OPEN: &str = "seawall_breaker_keys_open";
// ----- end breaker -----

// ----- bulkhead and rate limiter metric names -----
/// Gauge: permits a bulkhead has handed out and not yet got back (running calls, and permits
/// reserved by services polled ready).
pub const BULKHEAD_IN_FLIGHT: &str = "seawall_bulkhead_in_flight";
/// Gauge: calls waiting for a bulkhead permit.
pub const BULKHEAD_WAITING: &str = "seawall_bulkhead_waiting";
/// Counter: calls a bulkhead rejected because it was full.
pub const BULKHEAD_REJECTED: &str = "seawall_bulkhead_rejected_total";
/// Gauge: a bulkhead's current concurrency limit (fixed or adaptive). Like the in-flight and
/// waiting gauges it is summed over the bulkheads that share a name, and a bulkhead takes its
/// part away when it is dropped.
pub const BULKHEAD_LIMIT: &str = "seawall_bulkhead_limit";
/// Counter: calls a rate limiter rejected.
pub const RATELIMIT_LIMITED: &str = "seawall_ratelimit_limited_total";
/// Counter: calls a rate limiter made wait for a permit, counted when the wait starts, whether or
/// not they are let through (a call dropped while it waits counts too).
pub const RATELIMIT_DELAYED: &str = "seawall_ratelimit_delayed_total";
/// Gauge: keys a keyed rate limiter is tracking. It is summed over the keyed limiters that share a
/// name (every unnamed one is `ratelimit`), and a limiter takes its part away when it is dropped.
pub const RATELIMIT_KEYS: &str = "seawall_ratelimit_keys";
// ----- end bulkhead -----

// ----- retry and hedging metric names -----
/// Counter: retries a retry layer handed to its inner service (attempts after the first), one a
/// layer below then turns away before sending counting too.
pub const RETRY_RETRIES: &str = "seawall_retry_retries_total";
/// Counter: failed calls a retry layer did not retry because its budget was exhausted.
pub const RETRY_BUDGET_EXHAUSTED: &str = "seawall_retry_budget_exhausted_total";
/// Counter: failed calls a retry layer gave up on for another reason: attempts used up, the
/// deadline too close for the backoff (or passed while waiting for readiness), a `Retry-After`, or
/// a rejection's `retry_after`, longer than the cap, a request it could no longer copy, or an inner
/// service that failed to get ready for the next attempt.
pub const RETRY_GAVE_UP: &str = "seawall_retry_gave_up_total";
/// Counter: hedged copies a hedge layer sent, counted when handed to its inner service: a copy a
/// layer below then turns away before sending it (a full bulkhead's `Full`) counts too, though its
/// hedge goes back to the budget.
pub const HEDGE_SENT: &str = "seawall_hedge_sent_total";
/// Counter: calls answered by a hedged copy rather than the original request.
pub const HEDGE_WON: &str = "seawall_hedge_won_total";
/// Counter: hedges a hedge layer did not send because its budget was exhausted.
pub const HEDGE_BUDGET_EXHAUSTED: &str = "seawall_hedge_budget_exhausted_total";
// ----- end retry -----

// ----- balance metric names -----
/// Gauge: endpoints in a balancer's set. It is summed over the balancers that share a name (every
/// unnamed one is `balance`), and a balancer takes its part away when it is dropped.
pub const BALANCE_ENDPOINTS: &str = "seawall_balance_endpoints";
/// Gauge: endpoints of a balancer's set that health keeps out of the pick (ejected by outlier
/// detection or failing their active health check), counted whether or not panic mode lets them
/// take calls. Summed over the balancers that share a name, like [`BALANCE_ENDPOINTS`].
pub const BALANCE_UNHEALTHY_ENDPOINTS: &str = "seawall_balance_unhealthy_endpoints";
/// Gauge: 1 while a balancer is in panic mode (too few of its endpoints are healthy, so health is
/// ignored), 0 otherwise. Summed over the balancers that share a name: the number of them in panic
/// mode.
pub const BALANCE_PANIC: &str = "seawall_balance_panic";
/// Counter: endpoints a balancer's outlier detection ejected.
pub const BALANCE_EJECTIONS: &str = "seawall_balance_ejections_total";
/// Counter: calls a balancer failed because no endpoint was available within its wait.
pub const BALANCE_NO_ENDPOINTS: &str = "seawall_balance_no_endpoints_total";
/// Counter: DNS resolutions of a discovery that failed, wholly (the last good endpoint set is
/// kept) or in part (a lookup went unanswered or failed; the answered rest is published).
pub const DISCOVER_DNS_ERRORS: &str = "seawall_discover_dns_errors_total";
// ----- end balance -----

/// Every metric seawall emits: name, kind and help text.
pub const ALL: &[(&str, Kind, &str)] = &[
    (
        TIMEOUT_ELAPSED,
        Kind::Counter,
        "Calls cut off by a seawall timeout.",
    ),
    (
        FALLBACK_USED,
        Kind::Counter,
        "Failed calls handed to a seawall fallback, whether or not it answered.",
    ),
    (
        FALLBACK_FAILED,
        Kind::Counter,
        "Seawall fallbacks that failed themselves.",
    ),
    // ----- breaker entries -----
    (
        BREAKER_STATE,
        Kind::Gauge,
        "State of a seawall circuit breaker: 0 closed, 1 open, 2 half-open, 3 disabled, 4 forced open, 5 metrics only.",
    ),
    (
        BREAKER_SUCCESSES,
        Kind::Counter,
        "Calls through a seawall circuit breaker that succeeded.",
    ),
    (
        BREAKER_FAILURES,
        Kind::Counter,
        "Calls through a seawall circuit breaker that failed.",
    ),
    (
        BREAKER_IGNORED,
        Kind::Counter,
        "Calls through a seawall circuit breaker that counted as neither success nor failure, or were cancelled.",
    ),
    (
        BREAKER_SLOW,
        Kind::Counter,
        "Calls through a seawall circuit breaker that took at least its slow-call duration.",
    ),
    (
        BREAKER_REJECTED,
        Kind::Counter,
        "Calls a seawall circuit breaker rejected.",
    ),
    (
        BREAKER_TRANSITIONS,
        Kind::Counter,
        "State changes of seawall circuit breakers.",
    ),
    (
        BREAKER_KEYS_OPEN,
        Kind::Gauge,
        "Keys of a seawall keyed circuit breaker set whose breaker is open, half-open or forced open.",
    ),
    // ----- end breaker entries -----
    // ----- bulkhead entries -----
    (
        BULKHEAD_IN_FLIGHT,
        Kind::Gauge,
        "Permits held by running calls, and reserved by ready ones, in a seawall bulkhead.",
    ),
    (
        BULKHEAD_WAITING,
        Kind::Gauge,
        "Calls waiting for a seawall bulkhead permit.",
    ),
    (
        BULKHEAD_REJECTED,
        Kind::Counter,
        "Calls rejected by a full seawall bulkhead.",
    ),
    (
        BULKHEAD_LIMIT,
        Kind::Gauge,
        "Current concurrency limit of a seawall bulkhead, summed over bulkheads of the same name.",
    ),
    (
        RATELIMIT_LIMITED,
        Kind::Counter,
        "Calls rejected by a seawall rate limiter.",
    ),
    (
        RATELIMIT_DELAYED,
        Kind::Counter,
        "Calls a seawall rate limiter made wait for a permit, whether or not they were let through.",
    ),
    (
        RATELIMIT_KEYS,
        Kind::Gauge,
        "Keys tracked by a seawall keyed rate limiter, summed over keyed limiters of the same name.",
    ),
    // ----- end bulkhead entries -----
    // ----- retry entries -----
    (
        RETRY_RETRIES,
        Kind::Counter,
        "Retries a seawall retry layer handed to its inner service, sent or turned away below.",
    ),
    (
        RETRY_BUDGET_EXHAUSTED,
        Kind::Counter,
        "Failed calls not retried because the seawall retry budget was exhausted.",
    ),
    (
        RETRY_GAVE_UP,
        Kind::Counter,
        "Failed calls a seawall retry layer gave up on (attempts, deadline, Retry-After or retry_after, a request it could not copy, or a readiness error).",
    ),
    (
        HEDGE_SENT,
        Kind::Counter,
        "Hedged copies sent by a seawall hedge layer.",
    ),
    (
        HEDGE_WON,
        Kind::Counter,
        "Calls answered by a hedged copy rather than the original request.",
    ),
    (
        HEDGE_BUDGET_EXHAUSTED,
        Kind::Counter,
        "Hedges not sent because the seawall hedge budget was exhausted.",
    ),
    // ----- end retry entries -----
    // ----- balance entries -----
    (
        BALANCE_ENDPOINTS,
        Kind::Gauge,
        "Endpoints in a seawall balancer's set, summed over balancers of the same name.",
    ),
    (
        BALANCE_UNHEALTHY_ENDPOINTS,
        Kind::Gauge,
        "Endpoints a seawall balancer's health keeps out of the pick (ejected or failing their health check), summed over balancers of the same name.",
    ),
    (
        BALANCE_PANIC,
        Kind::Gauge,
        "1 while a seawall balancer is in panic mode (too few healthy endpoints, health ignored), summed over balancers of the same name.",
    ),
    (
        BALANCE_EJECTIONS,
        Kind::Counter,
        "Endpoints ejected by a seawall balancer's outlier detection.",
    ),
    (
        BALANCE_NO_ENDPOINTS,
        Kind::Counter,
        "Calls a seawall balancer failed because no endpoint was available in time.",
    ),
    (
        DISCOVER_DNS_ERRORS,
        Kind::Counter,
        "DNS resolutions of a seawall discovery that failed wholly (the last good set kept) or in part (the answered rest published).",
    ),
    // ----- end balance entries -----
];

/// The kind of a metric in [`ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A monotonically increasing count.
    Counter,
    /// A value that goes up and down.
    Gauge,
    /// A distribution of values.
    Histogram,
}

/// Registers the help text of every seawall metric with the installed recorder.
pub fn describe() {
    for &(name, kind, help) in ALL {
        match kind {
            Kind::Counter => metrics::describe_counter!(name, help),
            Kind::Gauge => metrics::describe_gauge!(name, help),
            Kind::Histogram => metrics::describe_histogram!(name, help),
        }
    }
}

/// A counter handle for `metric`, labelled with the policy name.
pub fn counter(metric: &'static str, name: &Name) -> metrics::Counter {
    metrics::counter!(metric, LABEL => name.as_str())
}

/// A gauge handle for `metric`, labelled with the policy name.
pub fn gauge(metric: &'static str, name: &Name) -> metrics::Gauge {
    metrics::gauge!(metric, LABEL => name.as_str())
}

/// A histogram handle for `metric`, labelled with the policy name.
pub fn histogram(metric: &'static str, name: &Name) -> metrics::Histogram {
    metrics::histogram!(metric, LABEL => name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_scheme() {
        for &(name, kind, help) in ALL {
            let rest = name.strip_prefix("seawall_").expect(name);
            assert!(rest.contains('_'), "{name} names concern and measure");
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{name}"
            );
            if kind == Kind::Counter {
                assert!(name.ends_with("_total"), "{name}: counters end in _total");
            }
            assert!(!help.is_empty());
        }
    }
}

/// A recorder that keeps every series in memory, for tests that assert on metrics.
///
/// Enabled by the `testing` cargo feature.
///
/// ```
/// use seawall_core::{metrics::{self, testing::TestRecorder}, Name};
///
/// let recorder = TestRecorder::new();
/// let _guard = recorder.install_local();
/// let name = Name::new("users").unwrap();
/// metrics::counter(metrics::TIMEOUT_ELAPSED, &name).increment(2);
/// assert_eq!(recorder.counter(metrics::TIMEOUT_ELAPSED, "users"), 2);
/// ```
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing {
    use metrics::{
        Counter, Gauge, Histogram, HistogramFn, Key, KeyName, LocalRecorderGuard, Metadata,
        Recorder, SharedString, Unit,
    };
    use std::{
        collections::HashMap,
        sync::{
            atomic::{AtomicU64, Ordering},
            Arc, Mutex,
        },
    };

    type Series<T> = Mutex<HashMap<(String, String), Arc<T>>>;

    /// Keeps counters, gauges and histograms by metric name and `name` label.
    #[derive(Debug, Default, Clone)]
    pub struct TestRecorder {
        inner: Arc<Inner>,
    }

    #[derive(Debug, Default)]
    struct Inner {
        counters: Series<AtomicU64>,
        gauges: Series<AtomicU64>,
        histograms: Series<Samples>,
    }

    #[derive(Debug, Default)]
    struct Samples(Mutex<Vec<f64>>);

    impl HistogramFn for Samples {
        fn record(&self, value: f64) {
            self.0.lock().unwrap().push(value);
        }
    }

    fn series<T: Default>(map: &Series<T>, key: &Key) -> Arc<T> {
        let label = key
            .labels()
            .find(|l| l.key() == super::LABEL)
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        map.lock()
            .unwrap()
            .entry((key.name().to_owned(), label))
            .or_default()
            .clone()
    }

    fn get<T>(map: &Series<T>, metric: &str, name: &str) -> Option<Arc<T>> {
        map.lock()
            .unwrap()
            .get(&(metric.to_owned(), name.to_owned()))
            .cloned()
    }

    impl TestRecorder {
        /// An empty recorder.
        pub fn new() -> Self {
            Self::default()
        }

        /// Makes this the recorder of the current thread until the guard is dropped (use a
        /// current-thread runtime).
        pub fn install_local(&self) -> LocalRecorderGuard<'_> {
            metrics::set_default_local_recorder(self)
        }

        /// The value of counter `metric` for policy `name` (0 if never incremented).
        pub fn counter(&self, metric: &str, name: &str) -> u64 {
            get(&self.inner.counters, metric, name).map_or(0, |c| c.load(Ordering::SeqCst))
        }

        /// The value of gauge `metric` for policy `name`; `None` if no such gauge was registered.
        ///
        /// A gauge registered and never set reads `Some(0.0)`, as exporters report a registered
        /// gauge.
        pub fn gauge(&self, metric: &str, name: &str) -> Option<f64> {
            get(&self.inner.gauges, metric, name).map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
        }

        /// Every value recorded in histogram `metric` for policy `name`.
        pub fn histogram(&self, metric: &str, name: &str) -> Vec<f64> {
            get(&self.inner.histograms, metric, name)
                .map(|h| h.0.lock().unwrap().clone())
                .unwrap_or_default()
        }
    }

    impl Recorder for TestRecorder {
        fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

        fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(series(&self.inner.counters, key))
        }

        fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(series(&self.inner.gauges, key))
        }

        fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(series(&self.inner.histograms, key))
        }
    }
}
