use seawall_core::{metrics, Listeners, Name};
use std::time::Duration;

/// What a rate limiter reports to its listeners (see [`RateLimitConfigBuilder::on_event`]).
///
/// The keyed limiter reports the same events without the key: keys are request data, and events
/// (like metrics) are labelled only by the limiter's name. Log the key from the request where the
/// [`Limited`](super::Limited) error comes back if it is needed.
///
/// [`RateLimitConfigBuilder::on_event`]: super::RateLimitConfigBuilder::on_event
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitEvent {
    /// A call was rejected with [`Limited`](super::Limited): no permit within `max_wait`. A
    /// waiter whose service got ready too late for its permit (or whose future was polled late),
    /// with no later one due within `max_wait` of the call (past that, none free at once), is
    /// rejected then, after its `Delayed`.
    Limited {
        /// When a permit is free again.
        retry_after: Duration,
    },
    /// A call waits for a permit that is due within `max_wait` (or, with backpressure,
    /// `poll_ready` waits for one, or a call made after its permit's span waits for the next).
    /// Reported once per wait started in `poll_ready` or `call`: a waiter that takes a later
    /// permit because its service got ready too late, or its future was polled late, is not
    /// reported again.
    Delayed {
        /// How long it waits.
        delay: Duration,
    },
}

/// How a limiter (plain or keyed) reports rejections and waits: metrics, `tracing` and listeners.
pub(crate) struct Reporter {
    pub(crate) name: Name,
    limited: ::metrics::Counter,
    delayed: ::metrics::Counter,
    listeners: Listeners<RateLimitEvent>,
}

impl Reporter {
    pub(crate) fn new(name: Name, listeners: Listeners<RateLimitEvent>) -> Self {
        Reporter {
            limited: metrics::counter(metrics::RATELIMIT_LIMITED, &name),
            delayed: metrics::counter(metrics::RATELIMIT_DELAYED, &name),
            name,
            listeners,
        }
    }

    /// A call rejected: a permit is free again after `retry` nanoseconds, which it returns.
    #[cold]
    pub(crate) fn limited(&self, retry: u64) -> Duration {
        self.limited.increment(1);
        tracing::debug!(name = %self.name, retry_after_ns = retry, "rate limited");
        let retry_after = Duration::from_nanos(retry);
        self.listeners
            .emit(&self.name, &RateLimitEvent::Limited { retry_after });
        retry_after
    }

    /// A call waits `delay` nanoseconds for its permit.
    #[cold]
    pub(crate) fn delayed(&self, delay: u64) {
        self.delayed.increment(1);
        let delay = Duration::from_nanos(delay);
        self.listeners
            .emit(&self.name, &RateLimitEvent::Delayed { delay });
    }
}
