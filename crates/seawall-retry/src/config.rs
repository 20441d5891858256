use crate::{
    backoff::Backoff,
    budget::RetryBudget,
    layer::Settings,
    policy::{ByClone, Classified, HttpPolicy, Ignoring},
    RetryEvent, RetryLayer,
};
use seawall_core::{config, ConfigError, Listener, Listeners, Name};
use std::{
    hash::{BuildHasher, Hasher},
    time::Duration,
};

/// The default number of attempts, the first included: 3.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The longest server-requested pause (`Retry-After`) honoured by default: 10 s.
pub const DEFAULT_RETRY_AFTER_CAP: Duration = Duration::from_secs(10);

/// Builds a [`RetryLayer`]; see [`RetryLayer::builder`].
///
/// `P` is the [`Policy`](crate::policy::Policy) that decides what is retried and `K` the
/// [`CloneRequest`](crate::policy::CloneRequest) that copies requests.
#[derive(Debug)]
pub struct RetryConfigBuilder<P = Classified, K = ByClone> {
    max_attempts: u32,
    backoff: Backoff,
    retry_after_cap: Duration,
    per_attempt_timeout: Option<Duration>,
    budget: Option<RetryBudget>,
    seed: Option<u64>,
    name: Option<String>,
    listeners: Listeners<RetryEvent>,
    policy: P,
    cloner: K,
}

impl RetryConfigBuilder {
    pub(crate) fn new() -> Self {
        RetryConfigBuilder {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            backoff: Backoff::default(),
            retry_after_cap: DEFAULT_RETRY_AFTER_CAP,
            per_attempt_timeout: None,
            budget: None,
            seed: None,
            name: None,
            listeners: Listeners::new(),
            policy: Classified::default(),
            cloner: ByClone,
        }
    }
}

impl<P, K> RetryConfigBuilder<P, K> {
    /// Attempts per call, the first included, 1 to 100 (default 3). 1 turns retries off.
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// The delays between attempts (default: exponential with full jitter, 50 ms base, 2 s cap).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The longest `Retry-After` honoured (default 10 s). A failed response asking for a longer
    /// pause is returned as it is rather than retried early against the server's wish; so is an
    /// error the policy reads a longer pause from ([`Policy::retry_after_error`](crate::Policy::retry_after_error):
    /// gRPC's retry pushback), and one whose [`NotSent`](seawall_core::error::NotSent) asks for
    /// one (a rate limiter's `retry_after`). A policy's pause of [`Duration::MAX`] asks for no
    /// retry, and is not retried whatever the cap.
    ///
    /// A retry counts against a ratio budget from when it is scheduled, not when it is sent, so
    /// retries held by a pause close to the budget's `ttl` can go out in the same window as the
    /// retries allowed after them. A rejection's `retry_after` is waited and then the
    /// [`backoff`](Self::backoff), so the pause can reach this cap plus the backoff's longest
    /// delay (with the default cap and backoff, up to 12 s, past the default `ttl` of 10 s; 10.1 s
    /// with the default 3 attempts): keep that sum well under the `ttl` (see the
    /// [budget docs](crate::budget)).
    pub fn retry_after_cap(mut self, cap: Duration) -> Self {
        self.retry_after_cap = cap;
        self
    }

    /// Gives each attempt a timeout of its own: the attempt's request carries `now + timeout`,
    /// and the attempt fails with [`Elapsed`](crate::Elapsed) (and may be retried) when it
    /// passes.
    ///
    /// When the call's deadline, or the earlier one a copy carries of its own (see
    /// [`clone_with`](Self::clone_with)), is earlier, or at most a millisecond later (a timer's
    /// resolution: both would fire on the same tick, or a tick apart), the attempt carries that
    /// deadline instead, so it may run up to a millisecond past `timeout`. Cut there, it counts
    /// for nothing (no failure for the budget, no give-up event), as when the timeout above
    /// cancels it: the call fails with `Elapsed`. Off by default.
    ///
    /// A request carrying a [`PerTryTimeoutOverride`](crate::PerTryTimeoutOverride) has each of
    /// its attempts timed by that instead, longer or shorter (one slow method given longer
    /// attempts), still bounded by the call's deadline as above. It is read from each attempt's
    /// request, so a copy made without it (see [`clone_with`](Self::clone_with)) is timed by
    /// `timeout`, as is a request whose override is `Duration::ZERO` (ignored, as a zero
    /// `timeout` is rejected). Without a per-attempt timeout the override is not read: it starts
    /// no timeout of its own, as a [`TimeoutOverride`](seawall_core::deadline::TimeoutOverride)
    /// starts none where there is no timeout layer.
    pub fn per_attempt_timeout(mut self, timeout: Duration) -> Self {
        self.per_attempt_timeout = Some(timeout);
        self
    }

    /// The budget retries draw on. Pass clones of one [`RetryBudget`] to every layer that calls
    /// the same dependency. Default: a new ratio budget (20% plus 10 a second over 10 s) for
    /// this layer alone.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Seeds the backoff jitter, for tests. The n-th failed call to reach the backoff draw
    /// (counting from 0) draws its delays from `backoff.delays(seed + n × 0x9E3779B97F4A7C15)`, so
    /// the first one's delays are exactly `backoff.delays(seed)`. A failed call counts even when
    /// the budget, the deadline or a `Retry-After` beyond the cap then stops its retry. Default:
    /// each such call draws a random seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The policy instance name for events and metrics. Default `"retry"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a listener called on every [`RetryEvent`].
    pub fn on_event(mut self, listener: impl Listener<RetryEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Decides what is retried with `policy`. Each call takes a clone of it (as tower's `Retry`
    /// does its policy), so keep it cheap to clone: put large state behind an `Arc`.
    pub fn policy<P2>(self, policy: P2) -> RetryConfigBuilder<P2, K> {
        self.map_policy(|_| policy)
    }

    fn map_policy<P2>(self, f: impl FnOnce(P) -> P2) -> RetryConfigBuilder<P2, K> {
        RetryConfigBuilder {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            per_attempt_timeout: self.per_attempt_timeout,
            budget: self.budget,
            seed: self.seed,
            name: self.name,
            listeners: self.listeners,
            policy: f(self.policy),
            cloner: self.cloner,
        }
    }

    /// Retries what `classifier` calls a failure (any [`seawall_core::Classify`] over the
    /// response and a [`BoxError`](seawall_core::BoxError), closures included). Cloned into each
    /// call, like [`policy`](Self::policy).
    pub fn classify<C>(self, classifier: C) -> RetryConfigBuilder<Classified<C>, K> {
        self.policy(Classified(classifier))
    }

    /// The HTTP policy: 5xx, 429 and connection errors, idempotent methods only (another method
    /// only when it was never sent: a seawall rejection below, a refused connection),
    /// `Retry-After` honoured. See [`HttpPolicy`] to change any of it.
    pub fn http(self) -> RetryConfigBuilder<HttpPolicy, K> {
        self.policy(HttpPolicy::new())
    }

    /// Returns errors of type `E` (found anywhere in an error's `source()` chain) at once, not
    /// retried, whatever the policy chosen so far says; see [`Ignoring`]. Call it after
    /// [`policy`](Self::policy), [`classify`](Self::classify) or [`http`](Self::http), which
    /// replace the policy; call it again for another type. An `E` that proves its attempt was
    /// never sent, after an earlier attempt that was, comes back wrapped in a
    /// [`SentEarlier`](seawall_core::error::SentEarlier): look for it with
    /// [`seawall_core::error::find`].
    ///
    /// Above all for a circuit breaker's `Open` under the retry: its wait is seconds, a backoff
    /// tens of milliseconds, so retrying it only waits to be rejected again, and spends a ratio
    /// budget's retries that real failures need once the breaker closes (a token bucket is not
    /// charged for a rejection never sent). The client stack's retry ignores `Open`.
    ///
    /// ```
    /// use seawall::{breaker::Open, retry::RetryLayer};
    ///
    /// let retry = RetryLayer::builder().http().ignore_error::<Open>().build()?;
    /// # Ok::<(), seawall::core::ConfigError>(())
    /// ```
    pub fn ignore_error<E: std::error::Error + 'static>(
        self,
    ) -> RetryConfigBuilder<Ignoring<P, E>, K> {
        self.map_policy(Ignoring::new)
    }

    /// Copies requests with `cloner`: a [`CloneRequest`](crate::policy::CloneRequest) such as a
    /// closure `Fn(&Req) -> Option<Req>` (return `None` for a request that cannot be sent again).
    /// Cloned into each call, like [`policy`](Self::policy). The call's deadline is read from the
    /// original request, and a copy made without one, or with a later one, is given it. A copy
    /// keeps a deadline of its own only when it is earlier than the call's (or when the call has
    /// none): the layers below see it, and a
    /// [`per_attempt_timeout`](Self::per_attempt_timeout) cuts the attempt there as at the
    /// call's deadline. Whether to retry, and how long to wait for readiness, go by the call's
    /// deadline alone.
    pub fn clone_with<K2>(self, cloner: K2) -> RetryConfigBuilder<P, K2> {
        RetryConfigBuilder {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            per_attempt_timeout: self.per_attempt_timeout,
            budget: self.budget,
            seed: self.seed,
            name: self.name,
            listeners: self.listeners,
            policy: self.policy,
            cloner,
        }
    }

    /// Validates the configuration and builds the layer.
    pub fn build(self) -> Result<RetryLayer<P, K>, ConfigError> {
        config::check_range("max_attempts", self.max_attempts, 1, 100)?;
        self.backoff.validate()?;
        if let Some(timeout) = self.per_attempt_timeout {
            config::check_positive_duration("per_attempt_timeout", timeout)?;
        }
        let name = match self.name {
            Some(name) => Name::validate("name", &name)?,
            None => Name::default_for("retry"),
        };
        let settings = Settings {
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            retry_after_cap: self.retry_after_cap,
            per_attempt_timeout: self.per_attempt_timeout,
            name,
        };
        Ok(RetryLayer::from_parts(
            self.policy,
            self.cloner,
            settings,
            self.budget.unwrap_or_default(),
            self.seed,
            self.listeners,
        ))
    }
}

/// A seed from the standard library's per-process random hasher keys (no extra dependency).
pub(crate) fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0x5EA_3A11);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        let e = RetryLayer::builder().max_attempts(0).build().unwrap_err();
        assert_eq!(e.to_string(), "max_attempts must be in 1..=100, got 0");
        let e = RetryLayer::builder()
            .per_attempt_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "per_attempt_timeout");
        let e = RetryLayer::builder()
            .backoff(Backoff::exponential(Duration::ZERO))
            .build()
            .unwrap_err();
        assert_eq!(e.field(), "base");
        let e = RetryLayer::builder().name("a b").build().unwrap_err();
        assert_eq!(e.field(), "name");
    }

    #[test]
    fn defaults() {
        let layer = RetryLayer::builder().build().unwrap();
        assert_eq!(layer.max_attempts(), 3);
        assert_eq!(layer.name().as_str(), "retry");
        assert_ne!(random_seed(), random_seed());
    }
}
