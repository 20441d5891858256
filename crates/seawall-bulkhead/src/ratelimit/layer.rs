use super::{
    config::{RateLimitConfigBuilder, Validated},
    event::Reporter,
    future::Permit,
    gcra::{nanos_since, to_nanos, usable_until, Budget, Gcra, Grant},
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

    /// The budget now, on tokio's clock; takes nothing.
    fn budget(&self) -> Budget {
        self.gcra.budget(self.now())
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

    /// A handle on this limiter's budget: permits free now, and how long until the next one.
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle {
            shared: self.shared.clone(),
        }
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

/// A view of one rate limiter's budget, for dashboards, tests and health checks.
///
/// Get one with [`RateLimitLayer::handle`]; it shares the layer's state, so it sees every service
/// the layer made and every clone. Reading takes no permit and moves nothing: it reads the
/// limiter's TAT (and, only while a dropped waiter's permit is set aside, takes the lock of those
/// permits) on tokio's clock, the one the limiter runs on, so paused time in tests moves it too.
/// Under that lock, which every call takes while such permits are set aside, it counts the ones
/// free at once one by one, up to the burst: with a large burst and many waiters dropped, read it
/// at a dashboard's pace rather than on every call. A reading is a snapshot: calls on other
/// threads may take the permits it counted at once.
///
/// There is no count of waiting calls: a waiter reserves its permit when it is called (the TAT
/// moves on) and keeps no place in a queue, so the limiter counts none, and counting them would
/// cost every waiter an update on its way in and out. Waits started are counted by the
/// `seawall_ratelimit_delayed_total` metric and [`RateLimitEvent::Delayed`](super::RateLimitEvent::Delayed).
#[derive(Clone)]
pub struct RateLimitHandle {
    shared: Arc<Shared>,
}

impl RateLimitHandle {
    /// Calls that would be admitted at once now, one after another: the burst after a quiet
    /// spell, one less for each call since, one more for each interval (`period / permits`) that
    /// passes, and never more than the burst. Permits reserved by waiting calls are not free; one
    /// given back by a waiter dropped before its time is, once it is due.
    pub fn available(&self) -> u64 {
        self.shared.budget().available
    }

    /// How long until a call would be admitted at once: zero while [`available`](Self::available)
    /// is above zero, else the [`retry_after`](super::Limited::retry_after) a call rejected now
    /// would carry.
    pub fn next_permit_in(&self) -> Duration {
        Duration::from_nanos(self.shared.budget().next_in)
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.report.name
    }
}

impl fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
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
