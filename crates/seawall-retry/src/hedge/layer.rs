use super::{config::HedgeConfigBuilder, latency::Latencies, Hedge, HedgeEvent};
use crate::{
    budget::RetryBudget,
    policy::{ByClone, Classified},
};
use seawall_core::{metrics, Listeners, Name};
use std::{fmt, sync::Arc, time::Duration};
use tokio::time::Instant;
use tower_layer::Layer;

/// Applies [`Hedge`] to every service it wraps.
///
/// One layer instance is one policy: the services it produces, and their clones, share its
/// latency histogram, budget, name, listeners and metric handles.
pub struct HedgeLayer<P = Classified, K = ByClone> {
    shared: Arc<Shared<P, K>>,
}

// Allocated once, in the policy's shared state: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub(crate) enum DelaySource {
    Fixed(Duration),
    Percentile(Latencies),
}

pub(crate) struct Shared<P, K> {
    pub(crate) policy: P,
    pub(crate) cloner: K,
    pub(crate) max_hedges: u32,
    pub(crate) delay: DelaySource,
    pub(crate) budget: RetryBudget,
    pub(crate) name: Name,
    listeners: Listeners<HedgeEvent>,
    sent: ::metrics::Counter,
    won: ::metrics::Counter,
    budget_exhausted: ::metrics::Counter,
}

impl HedgeLayer {
    /// Starts a builder.
    pub fn builder() -> HedgeConfigBuilder {
        HedgeConfigBuilder::new()
    }
}

impl<P, K> HedgeLayer<P, K> {
    pub(crate) fn from_shared(shared: Arc<Shared<P, K>>) -> Self {
        HedgeLayer { shared }
    }

    /// How long a call runs before its first hedge is sent, as of now: the fixed delay, or the
    /// latency percentile of the last full period (`None` until one has been measured, and no
    /// hedges are sent until then).
    pub fn current_delay(&self) -> Option<Duration> {
        self.shared.current_delay()
    }

    /// The budget hedges draw on.
    pub fn budget(&self) -> &RetryBudget {
        &self.shared.budget
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }
}

impl<P, K> Clone for HedgeLayer<P, K> {
    fn clone(&self) -> Self {
        HedgeLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<S, P, K> Layer<S> for HedgeLayer<P, K> {
    type Service = Hedge<S, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Hedge::from_shared(inner, self.shared.clone())
    }
}

impl<P, K> fmt::Debug for HedgeLayer<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl<P, K> fmt::Debug for Shared<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("HedgeLayer");
        d.field("name", &self.name)
            .field("max_hedges", &self.max_hedges);
        match &self.delay {
            DelaySource::Fixed(delay) => d.field("delay", delay),
            DelaySource::Percentile(latencies) => d.field("delay", latencies),
        };
        d.field("budget", &self.budget)
            .field("policy", &std::any::type_name::<P>())
            .field("cloner", &std::any::type_name::<K>())
            .field("listeners", &self.listeners)
            .finish()
    }
}

impl<P, K> Shared<P, K> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        policy: P,
        cloner: K,
        max_hedges: u32,
        delay: DelaySource,
        budget: RetryBudget,
        name: Name,
        listeners: Listeners<HedgeEvent>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            policy,
            cloner,
            max_hedges,
            delay,
            budget,
            sent: metrics::counter(metrics::HEDGE_SENT, &name),
            won: metrics::counter(metrics::HEDGE_WON, &name),
            budget_exhausted: metrics::counter(metrics::HEDGE_BUDGET_EXHAUSTED, &name),
            name,
            listeners,
        })
    }

    #[inline]
    pub(crate) fn current_delay(&self) -> Option<Duration> {
        match &self.delay {
            DelaySource::Fixed(delay) => Some(*delay),
            DelaySource::Percentile(latencies) => latencies.delay(),
        }
    }

    /// Whether calls' latencies are recorded (percentile delays).
    #[inline]
    pub(crate) fn records_latency(&self) -> bool {
        matches!(self.delay, DelaySource::Percentile(_))
    }

    #[inline]
    pub(crate) fn record_latency(&self, latency: Duration, now: Instant) {
        if let DelaySource::Percentile(latencies) = &self.delay {
            latencies.record(latency, now);
        }
    }

    /// Records a call that failed, or was dropped before its answer, after running from
    /// `started` to `ended` (a failed call's last answer of a copy that was sent, a dropped
    /// call's drop): how long it ran is a lower bound on its latency, counted when it is longer
    /// than the percentile of the successful calls of the last period and of its own. A quicker
    /// failure says nothing of how long the dependency takes (it may not have reached it).
    #[cold]
    pub(crate) fn record_unanswered(&self, started: Instant, ended: Instant) {
        if let DelaySource::Percentile(latencies) = &self.delay {
            latencies.record_unanswered(ended.saturating_duration_since(started), Instant::now());
        }
    }

    #[cold]
    pub(crate) fn on_sent(&self, hedge: u32, after: Duration) {
        self.sent.increment(1);
        tracing::debug!(name = %self.name, hedge, ?after, "seawall hedge sent");
        self.listeners
            .emit(&self.name, &HedgeEvent::Sent { hedge, after });
    }

    #[cold]
    pub(crate) fn on_won(&self, hedge: u32) {
        self.won.increment(1);
        tracing::trace!(name = %self.name, hedge, "seawall hedge won");
        self.listeners.emit(&self.name, &HedgeEvent::Won { hedge });
    }

    #[cold]
    pub(crate) fn on_budget_exhausted(&self) {
        self.budget_exhausted.increment(1);
        tracing::debug!(name = %self.name, "seawall hedge budget exhausted");
        self.listeners
            .emit(&self.name, &HedgeEvent::BudgetExhausted);
    }
}
