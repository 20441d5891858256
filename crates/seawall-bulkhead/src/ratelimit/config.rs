use super::RateLimitEvent;
use super::{
    keyed::{KeyedRateLimitLayer, KeyedShared},
    layer::{RateLimitLayer, Shared},
};
use seawall_core::{config, ConfigError, Listener, Listeners, Name};
use std::{hash::Hash, time::Duration};

/// The largest number of keys a keyed limiter tracks when `max_keys` is not set.
pub const DEFAULT_MAX_KEYS: usize = 10_000;

/// Builds a [`RateLimitLayer`] or a [`KeyedRateLimitLayer`]; see [`RateLimitLayer::builder`].
#[derive(Debug, Clone)]
pub struct RateLimitConfigBuilder {
    rate: Option<(u64, Duration)>,
    burst: Option<u64>,
    max_wait: Duration,
    backpressure: bool,
    name: Option<String>,
    max_keys: usize,
    listeners: Listeners<RateLimitEvent>,
}

/// What both limiters are built from, validated.
pub(crate) struct Validated {
    pub(crate) interval: u64,
    pub(crate) burst: u64,
    pub(crate) max_wait: Duration,
    pub(crate) backpressure: bool,
    pub(crate) name: Name,
    pub(crate) max_keys: usize,
    pub(crate) listeners: Listeners<RateLimitEvent>,
}

impl RateLimitConfigBuilder {
    pub(crate) fn new() -> Self {
        RateLimitConfigBuilder {
            rate: None,
            burst: None,
            max_wait: Duration::ZERO,
            backpressure: false,
            name: None,
            max_keys: DEFAULT_MAX_KEYS,
            listeners: Listeners::new(),
        }
    }

    /// `permits` calls per `period`, spread evenly: one permit every `period / permits` (rounded
    /// up to the nanosecond), on top of the [`burst`](Self::burst). So at most
    /// `burst + permits − 1` calls start in any span shorter than `period`: up to
    /// `2 × permits − 1` after a quiet spell with the default burst, exactly `permits` with
    /// `burst(1)`. A call starts by the end of its permit's span, or within 10 ms of its permit's
    /// time if that is later (see the [module docs](super)). Required.
    pub fn rate(mut self, permits: u64, period: Duration) -> Self {
        self.rate = Some((permits, period));
        self
    }

    /// How many calls may go at once after an idle spell. Default: `permits` (a full period's
    /// worth); 1 spaces every call evenly.
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// How long a call may wait for its permit before it is rejected with
    /// [`Limited`](super::Limited). Default zero: reject at once. A waiting call polls the inner
    /// service ready only once its permit is due, so it holds nothing below while it waits; if
    /// the service gets ready after the permit's span (or the waiting future is polled after it),
    /// the call gives the permit and the readiness back and waits for the next permit if it is due
    /// within `max_wait` of the call. Past that deadline it still takes a permit free at once,
    /// which costs the rate nothing, and runs; it is rejected only when no permit is due by the
    /// deadline (or, past it, free at once).
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Makes `poll_ready` reserve the next permit and return `Pending` until it is due, as tower's
    /// `RateLimit` does, instead of rejecting. Default `false`. A call made after its permit's span
    /// (more than 10 ms after its time, with a burst of 1) takes the permit due then, waiting for
    /// it in its response future; once a permit has gone stale before the call, the inner service
    /// is made ready first and kept ready while the next permit is waited for. Not available for
    /// the keyed limiter, whose key is only known in `call`.
    pub fn backpressure(mut self, backpressure: bool) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// The policy instance name for metrics and logs. Default `"ratelimit"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The most keys a keyed limiter tracks. Default 10 000. The table is split into shards of
    /// `max_keys / shards` keys, rounded down, and a shard evicts when it holds its share: see
    /// [`KeyedRateLimitLayer`] for eviction and sizing.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    pub(super) fn validate(self) -> Result<Validated, ConfigError> {
        let (permits, period) = self.rate.ok_or(ConfigError::missing("rate"))?;
        config::check_range("rate", permits, 1, u64::MAX)?;
        config::check_positive_duration("period", period)?;
        // Rounded up to the nanosecond, so the rate is never exceeded; a rate of more than one
        // permit a nanosecond cannot be kept and is refused rather than slowed.
        let interval = period.as_nanos().div_ceil(u128::from(permits));
        if u128::from(permits) > period.as_nanos() || interval > u64::MAX as u128 / 4 {
            return Err(ConfigError::invalid(
                "rate",
                "must space permits between 1 ns and about 146 years apart",
                format!("{permits} per {period:?}"),
            ));
        }
        let interval = interval as u64;
        let burst = self.burst.unwrap_or(permits);
        config::check_range("burst", burst, 1, u64::MAX)?;
        if interval.checked_mul(burst).is_none_or(|t| t > u64::MAX / 4) {
            return Err(match self.burst {
                Some(_) => ConfigError::conflict(
                    "burst",
                    format!("is too large for the rate (burst × interval overflows), got {burst}"),
                ),
                // The burst was not set: it is the rate's own permits that do not fit.
                None => ConfigError::conflict(
                    "rate",
                    format!(
                        "spans too long a time for its default burst of {permits} \
                         (burst × interval overflows); set a smaller burst, got {permits} per \
                         {period:?}"
                    ),
                ),
            });
        }
        if self.backpressure && !self.max_wait.is_zero() {
            return Err(ConfigError::conflict(
                "max_wait",
                format!(
                    "must be zero with backpressure (poll_ready waits instead), got {:?}",
                    self.max_wait
                ),
            ));
        }
        config::check_range("max_keys", self.max_keys, 1, usize::MAX)?;
        let name = match self.name {
            Some(name) => Name::validate("name", &name)?,
            None => Name::default_for("ratelimit"),
        };
        Ok(Validated {
            interval,
            burst,
            max_wait: self.max_wait,
            backpressure: self.backpressure,
            name,
            max_keys: self.max_keys,
            listeners: self.listeners,
        })
    }

    /// Adds a listener called on every [`RateLimitEvent`]: each rejected call, and each call
    /// that waits for its permit. Calls admitted at once report nothing.
    pub fn on_event(mut self, listener: impl Listener<RateLimitEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Validates and builds a limiter shared by every request.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        Ok(RateLimitLayer::from_shared(Shared::new(self.validate()?)))
    }

    /// Validates and builds a limiter with one budget per key, `key` computing a request's key
    /// (a tenant, a user, a client address).
    ///
    /// The key must be `Send + Sync`: the table of keys is shared by every service and call the
    /// layer makes, across threads (the service also needs it `Clone + 'static`).
    pub fn build_keyed<Req, K, F>(self, key: F) -> Result<KeyedRateLimitLayer<K, F>, ConfigError>
    where
        F: Fn(&Req) -> K,
        K: Hash + Eq + Send + Sync,
    {
        let validated = self.validate()?;
        if validated.backpressure {
            return Err(ConfigError::conflict(
                "backpressure",
                "is not available for a keyed limiter (the key is only known in call)",
            ));
        }
        Ok(KeyedRateLimitLayer::new(KeyedShared::new(validated), key))
    }
}

#[cfg(test)]
mod tests {
    use super::super::RateLimitLayer;
    use super::*;

    #[test]
    fn errors_name_the_field() {
        let err = RateLimitLayer::builder().build().unwrap_err();
        assert_eq!(err.to_string(), "rate is required");
        let err = RateLimitLayer::builder()
            .rate(0, Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "rate");
        let err = RateLimitLayer::builder()
            .rate(1, Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "period");
        let err = RateLimitLayer::builder()
            .rate(2_000_000_000, Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "rate");
        let err = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .burst(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "burst");
        let err = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .burst(u64::MAX)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "burst");
        // A rate whose own permits, as the default burst, span too long: the rate is named, not
        // the burst the caller never set.
        let two_centuries = Duration::from_secs(200 * 365 * 86_400);
        let err = RateLimitLayer::builder()
            .rate(1_000_000, two_centuries)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "rate");
        assert!(err.to_string().contains("set a smaller burst"), "{err}");
        let err = RateLimitLayer::builder()
            .rate(1_000_000, two_centuries)
            .burst(1_000_000)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "burst");
        assert!(RateLimitLayer::builder()
            .rate(1_000_000, two_centuries)
            .burst(1)
            .build()
            .is_ok());
        let err = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .backpressure(true)
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_wait");
        let err = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .backpressure(true)
            .build_keyed(|r: &u32| *r)
            .unwrap_err();
        assert_eq!(err.field(), "backpressure");
        let err = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .max_keys(0)
            .build_keyed(|r: &u32| *r)
            .unwrap_err();
        assert_eq!(err.field(), "max_keys");
    }

    #[test]
    fn interval_rounds_up_to_the_nanosecond() {
        let interval = |permits, period| {
            RateLimitLayer::builder()
                .rate(permits, period)
                .validate()
                .unwrap()
                .interval
        };
        assert_eq!(interval(10, Duration::from_secs(1)), 100_000_000);
        assert_eq!(interval(3, Duration::from_secs(1)), 333_333_334);
        assert_eq!(interval(2, Duration::from_nanos(3)), 2);
        assert_eq!(interval(1_000_000_000, Duration::from_secs(1)), 1);
    }
}
