//! The metric naming scheme every concern uses.
//!
//! Numbers go through the [`metrics`](https://docs.rs/metrics) facade, so any exporter works
//! (Prometheus, StatsD, OpenTelemetry). Names are `seawall_<concern>_<measure>` and every series has
//! one label, `name`, the policy instance [`Name`]. With no recorder installed a metric costs
//! almost nothing.
//!
//! Policies register their metric handles when they are built, so install the recorder *before*
//! building layers; a policy built earlier reports to the recorder that was current then (none).
//!
//! The full list of names is [`ALL`]; [`describe`] registers a help text for each with the installed
//! recorder.

use crate::Name;

/// The one label every seawall series carries: the policy instance name.
pub const LABEL: &str = "name";

/// Counter: calls a timeout layer cut off.
pub const TIMEOUT_ELAPSED: &str = "seawall_timeout_elapsed_total";
/// Counter: failed calls a fallback answered for.
pub const FALLBACK_USED: &str = "seawall_fallback_used_total";
/// Counter: fallbacks that failed themselves.
pub const FALLBACK_FAILED: &str = "seawall_fallback_failed_total";

// ----- breaker metric names -----
// ----- end breaker -----

// ----- bulkhead and rate limiter metric names -----
// ----- end bulkhead -----

// ----- retry and hedging metric names -----
// ----- end retry -----

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
        "Failed calls answered by a seawall fallback.",
    ),
    (
        FALLBACK_FAILED,
        Kind::Counter,
        "Seawall fallbacks that failed themselves.",
    ),
    // ----- breaker entries -----
    // ----- end breaker entries -----
    // ----- bulkhead entries -----
    // ----- end bulkhead entries -----
    // ----- retry entries -----
    // ----- end retry entries -----
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
    metrics::counter!(metric, LABEL => name.shared())
}

/// A gauge handle for `metric`, labelled with the policy name.
pub fn gauge(metric: &'static str, name: &Name) -> metrics::Gauge {
    metrics::gauge!(metric, LABEL => name.shared())
}

/// A histogram handle for `metric`, labelled with the policy name.
pub fn histogram(metric: &'static str, name: &Name) -> metrics::Histogram {
    metrics::histogram!(metric, LABEL => name.shared())
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
