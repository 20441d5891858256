use crate::{
    backoff::Backoff,
    budget::RetryBudget,
    config::RetryConfigBuilder,
    policy::{ByClone, Classified},
    GiveUpReason, Retry, RetryEvent,
};
use seawall_core::{metrics, Listeners, Name};
use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tower_layer::Layer;

/// Applies [`Retry`] to every service it wraps.
///
/// One layer instance is one policy: the services it produces, and their clones, share its
/// budget, name, listeners and metric handles.
pub struct RetryLayer<P = Classified, K = ByClone> {
    shared: Arc<Shared<P, K>>,
}

/// The layer's policy: the generic parts, and the rest (kept apart so the future's code that does
/// not depend on the request type is compiled once).
pub(crate) struct Shared<P, K> {
    pub(crate) policy: P,
    pub(crate) cloner: K,
    pub(crate) core: Arc<Core>,
}

/// What a retry layer shares between its services, clones and response futures.
pub(crate) struct Core {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) retry_after_cap: Duration,
    pub(crate) per_attempt_timeout: Option<Duration>,
    pub(crate) budget: RetryBudget,
    seed: u64,
    retried: AtomicU64,
    pub(crate) name: Name,
    listeners: Listeners<RetryEvent>,
    retries: ::metrics::Counter,
    budget_exhausted: ::metrics::Counter,
    gave_up: ::metrics::Counter,
}

impl RetryLayer {
    /// Retries with the defaults: 3 attempts, exponential backoff with full jitter, failures
    /// being errors, a budget of its own.
    pub fn new() -> Self {
        RetryLayer::builder()
            .build()
            .expect("the default retry configuration is valid")
    }

    /// Starts a builder.
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder::new()
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<P, K> RetryLayer<P, K> {
    pub(crate) fn from_shared(shared: Arc<Shared<P, K>>) -> Self {
        RetryLayer { shared }
    }

    /// The budget this layer's retries draw on.
    pub fn budget(&self) -> &RetryBudget {
        &self.shared.core.budget
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.shared.core.max_attempts
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.core.name
    }
}

impl<P, K> Clone for RetryLayer<P, K> {
    fn clone(&self) -> Self {
        RetryLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<S, P, K> Layer<S> for RetryLayer<P, K> {
    type Service = Retry<S, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_shared(inner, self.shared.clone())
    }
}

impl<P, K> fmt::Debug for RetryLayer<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl<P, K> fmt::Debug for Shared<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let core = &*self.core;
        f.debug_struct("RetryLayer")
            .field("name", &core.name)
            .field("max_attempts", &core.max_attempts)
            .field("backoff", &core.backoff)
            .field("retry_after_cap", &core.retry_after_cap)
            .field("per_attempt_timeout", &core.per_attempt_timeout)
            .field("budget", &core.budget)
            .field("policy", &std::any::type_name::<P>())
            .field("cloner", &std::any::type_name::<K>())
            .field("listeners", &core.listeners)
            .finish()
    }
}

impl<P, K> Shared<P, K> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        policy: P,
        cloner: K,
        max_attempts: u32,
        backoff: Backoff,
        retry_after_cap: Duration,
        per_attempt_timeout: Option<Duration>,
        budget: RetryBudget,
        seed: u64,
        name: Name,
        listeners: Listeners<RetryEvent>,
    ) -> Arc<Self> {
        let core = Arc::new(Core {
            max_attempts,
            backoff,
            retry_after_cap,
            per_attempt_timeout,
            budget,
            seed,
            retried: AtomicU64::new(0),
            retries: metrics::counter(metrics::RETRY_RETRIES, &name),
            budget_exhausted: metrics::counter(metrics::RETRY_BUDGET_EXHAUSTED, &name),
            gave_up: metrics::counter(metrics::RETRY_GAVE_UP, &name),
            name,
            listeners,
        });
        Arc::new(Shared {
            policy,
            cloner,
            core,
        })
    }
}

impl Core {
    /// The seed of the next call to retry.
    pub(crate) fn next_seed(&self) -> u64 {
        let n = self.retried.fetch_add(1, Ordering::Relaxed);
        self.seed
            .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    #[cold]
    pub(crate) fn on_retry(&self, attempt: u32, delay: Duration) {
        self.retries.increment(1);
        tracing::debug!(name = %self.name, attempt, ?delay, "seawall retry");
        self.listeners
            .emit(&self.name, &RetryEvent::Retry { attempt, delay });
    }

    #[cold]
    pub(crate) fn on_budget_exhausted(&self, attempts: u32) {
        self.budget_exhausted.increment(1);
        tracing::debug!(name = %self.name, attempts, "seawall retry budget exhausted");
        self.listeners
            .emit(&self.name, &RetryEvent::BudgetExhausted { attempts });
    }

    #[cold]
    pub(crate) fn on_give_up(&self, attempts: u32, reason: GiveUpReason) {
        self.gave_up.increment(1);
        tracing::debug!(name = %self.name, attempts, ?reason, "seawall retry gave up");
        self.listeners
            .emit(&self.name, &RetryEvent::GaveUp { attempts, reason });
    }
}
