use super::{
    config::{RateLimitConfigBuilder, Validated},
    event::Reporter,
    future::Permit,
    gcra::{nanos_since, to_nanos, usable_until, Gcra, Grant},
    RateLimit,
};
use seawall_core::Name;
use std::{fmt, sync::Arc, time::Duration};
use tokio::time::Instant;
use tower_layer::Layer;

/// Applies a [`RateLimit`] to every service it wraps.
///
/// One layer instance is one budget: the services it makes and all their clones draw from it, so a
/// rate limiter can be shared by every connection of a client, or by several clients.
#[derive(Clone)]
pub struct RateLimitLayer {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) gcra: Gcra,
    pub(crate) epoch: Instant,
    pub(crate) max_wait: u64,
    pub(crate) backpressure: bool,
    pub(crate) report: Reporter,
}

impl Shared {
    pub(crate) fn new(config: Validated) -> Arc<Self> {
        Arc::new(Shared {
            gcra: Gcra::new(config.interval, config.burst),
            epoch: Instant::now(),
            max_wait: to_nanos(config.max_wait),
            backpressure: config.backpressure,
            report: Reporter::new(config.name, config.listeners),
        })
    }

    /// Nanoseconds since the epoch, on tokio's clock.
    #[inline(always)]
    pub(crate) fn now(&self) -> u64 {
        nanos_since(self.epoch)
    }

    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

/// A grant reserved ahead of its time, refunded if dropped before use.
pub(crate) struct Reservation {
    pub(crate) shared: Arc<Shared>,
    pub(crate) grant: Grant,
}

impl Permit for Reservation {
    fn refund(&self) {
        self.shared.gcra.refund(self.grant);
    }

    fn now(&self) -> u64 {
        self.shared.now()
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.shared.instant(nanos)
    }

    fn usable_until(&self, due: u64) -> u64 {
        usable_until(self.shared.gcra.interval(), self.grant, due)
    }

    fn interval(&self) -> u64 {
        self.shared.gcra.interval()
    }

    fn renew(&mut self, now: u64, max_wait: u64) -> Result<u64, Duration> {
        self.shared.gcra.refund_at(self.grant, now);
        match self.shared.gcra.acquire(now, max_wait) {
            Ok(grant) => {
                self.grant = grant;
                Ok(grant.delay)
            }
            Err(retry) => Err(self.shared.report.limited(retry)),
        }
    }
}

impl RateLimitLayer {
    /// Starts a builder; see the [module docs](super) for the options and their defaults.
    pub fn builder() -> RateLimitConfigBuilder {
        RateLimitConfigBuilder::new()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        RateLimitLayer { shared }
    }

    pub(crate) fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.report.name
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::new(inner, self)
    }
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.report.name)
            .field("interval", &Duration::from_nanos(self.gcra.interval()))
            .field("burst", &(self.gcra.tolerance() / self.gcra.interval()))
            .field("max_wait", &Duration::from_nanos(self.max_wait))
            .field("backpressure", &self.backpressure)
            .finish()
    }
}
