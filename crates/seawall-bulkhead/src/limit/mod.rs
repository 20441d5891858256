//! Adaptive concurrency limits: algorithms that move a bulkhead's limit with what calls experience.
//!
//! A fixed `max_concurrent` has to be guessed, and the right value changes as the dependency scales,
//! deploys or degrades. An adaptive limit treats the bulkhead like a TCP congestion window: each
//! finished call is a [`Sample`] (its round-trip time, the number of calls in flight when it started,
//! and whether it was *dropped*, meaning the classifier called it a failure), and the algorithm
//! answers with a new limit. The three algorithms here follow Netflix's
//! [concurrency-limits](https://github.com/Netflix/concurrency-limits) library:
//!
//! | algorithm | signal | moves | cite |
//! |---|---|---|---|
//! | [`Aimd`] | loss (failures, calls slower than a timeout) | +1 while busy, ×`backoff_ratio` on a loss | TCP Reno's additive-increase/multiplicative-decrease |
//! | [`Gradient2`] | latency: short-term RTT against an exponentially smoothed long-term RTT, with a tolerance; and loss | `limit × gradient + queue_size`, smoothed; halved (before smoothing) on a loss | Netflix `Gradient2Limit` |
//! | [`Vegas`] | latency: RTT against the no-load RTT (the minimum seen, re-probed now and then); and loss | with `log = max(1, floor(log10(limit)))` and the estimated queue: +6·`log` at a queue up to `log`, +`log` below `alpha`, −`log` above `beta`; −`log` on a loss | TCP Vegas (Brakmo & Peterson, 1995) |
//!
//! Every algorithm keeps its limit within `min_limit..=max_limit` and grows only while the
//! bulkhead is in real use (at least half the limit in flight), so an idle service does not drift
//! up to its maximum. Defaults:
//!
//! | option | [`Aimd`] | [`Gradient2`] | [`Vegas`] |
//! |---|---|---|---|
//! | `initial_limit` | 20 | 20 | 20 |
//! | `min_limit` | 1 | 1 | 1 |
//! | `max_limit` | 200 | 200 | 1000 |
//! | other | `backoff_ratio` 0.9, `timeout` 5 s | `smoothing` 0.2, `queue_size` 4, `long_window` 600, `rtt_tolerance` 1.5 | `smoothing` 1.0, `probe_multiplier` 30, `alpha` 3·`log`, `beta` 6·`log`, with `log = max(1, floor(log10(limit)))` |
//!
//! Netflix's own floors are higher (`min_limit` 20 for AIMD and Gradient2); seawall's floor of 1
//! lets a limit follow a dependency that degrades badly. Raise it when a floor is wanted. Latency
//! alone takes [`Gradient2`] no lower than about `2 × queue_size` (8 by default) and [`Vegas`] no
//! lower than about 6 (its queue estimate never exceeds the limit, and only a queue above
//! `6·log` lowers it, `log` being 1 below a limit of 100); only drops take them further.
//!
//! Samples are fed by the bulkhead: a call's outcome comes from the layer's classifier
//! ([`Outcome::Failure`](seawall_core::Outcome::Failure) is a drop,
//! [`Outcome::Ignored`](seawall_core::Outcome::Ignored), cancelled calls and failures that prove
//! their request was [never sent](seawall_core::error::not_sent) are not samples), and its
//! round-trip time is measured with `tokio::time`, so simulations in paused time are exact.
//!
//! Your own algorithm implements [`Limit`].

mod aimd;
mod gradient2;
mod vegas;

pub use aimd::{Aimd, AimdBuilder};
pub use gradient2::{Gradient2, Gradient2Builder};
pub use vegas::{Vegas, VegasBuilder};

use seawall_core::ConfigError;
use std::{fmt, time::Duration};

/// The largest limit a bulkhead accepts.
pub const MAX_LIMIT: usize = usize::MAX >> 4;

/// One finished call, as an adaptive limit sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sample {
    /// How long the call held its permit.
    pub rtt: Duration,
    /// Calls in flight when this call started, itself included.
    pub in_flight: usize,
    /// Whether the call was dropped: classified as a failure (an error, a timeout, a 503...).
    pub dropped: bool,
}

impl Sample {
    /// A sample; for tests and custom drivers.
    pub fn new(rtt: Duration, in_flight: usize, dropped: bool) -> Self {
        Sample {
            rtt,
            in_flight,
            dropped,
        }
    }
}

/// An algorithm that computes a concurrency limit from finished calls.
///
/// The bulkhead calls [`update`](Limit::update) once per sample, serialised (under a lock that only
/// adaptive bulkheads take), and clamps the answer to [`bounds`](Limit::bounds), read anew each
/// time, and to `1..=`[`MAX_LIMIT`] whatever the bounds say.
pub trait Limit: fmt::Debug + Send + 'static {
    /// The limit before any sample.
    fn initial_limit(&self) -> usize;

    /// The smallest and largest limit this algorithm may answer.
    fn bounds(&self) -> (usize, usize);

    /// Takes one sample into account and returns the new limit.
    fn update(&mut self, sample: &Sample) -> usize;
}

/// Checks `min <= initial <= max` and `1 <= min`, `max <= MAX_LIMIT`.
pub(crate) fn check_bounds(min: usize, initial: usize, max: usize) -> Result<(), ConfigError> {
    seawall_core::config::check_range("min_limit", min, 1, MAX_LIMIT)?;
    seawall_core::config::check_range("max_limit", max, 1, MAX_LIMIT)?;
    if min > max {
        return Err(ConfigError::conflict(
            "min_limit",
            format!("must not exceed max_limit ({max}), got {min}"),
        ));
    }
    seawall_core::config::check_range("initial_limit", initial, min, max)?;
    Ok(())
}

/// `max(1, floor(log10(limit)))`: the step Vegas uses, as Netflix's `Log10RootFunction`.
pub(crate) fn log10_root(limit: usize) -> usize {
    let mut n = limit.max(1);
    let mut digits = 0;
    while n >= 10 {
        n /= 10;
        digits += 1;
    }
    digits.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log10_root_matches_netflix() {
        assert_eq!(log10_root(0), 1);
        assert_eq!(log10_root(9), 1);
        assert_eq!(log10_root(20), 1);
        assert_eq!(log10_root(100), 2);
        assert_eq!(log10_root(999), 2);
        assert_eq!(log10_root(1000), 3);
    }

    #[test]
    fn bounds_are_checked() {
        assert!(check_bounds(1, 20, 200).is_ok());
        assert_eq!(check_bounds(0, 20, 200).unwrap_err().field(), "min_limit");
        assert_eq!(check_bounds(30, 20, 25).unwrap_err().field(), "min_limit");
        assert_eq!(
            check_bounds(1, 300, 200).unwrap_err().to_string(),
            "initial_limit must be in 1..=200, got 300"
        );
    }
}
