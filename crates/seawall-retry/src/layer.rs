use crate::{
    backoff::Backoff,
    budget::{RetryBudget, Withdrawal},
    config::random_seed,
    policy::{ByClone, Classified},
    GiveUpReason, Retry, RetryEvent,
};
use seawall_core::{metrics, Listeners, Name};
use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tower_layer::Layer;

/// Applies [`Retry`] to every service it wraps.
///
/// One layer instance is one policy: the services it produces, and their clones, share its
/// budget, name, listeners and metric handles.
pub struct RetryLayer<P = Classified, K = ByClone> {
    link: Link<P, K>,
    budget: RetryBudget,
}

/// What each service, clone and response future of one layer carries.
///
/// The policy and cloner are held by value, the settings by an interned reference, and the shared
/// state only when there is something to share (a budget, listeners or a seed): a call through a
/// layer with an unlimited budget and no listeners writes to no shared memory at all.
pub(crate) struct Link<P, K> {
    pub(crate) policy: P,
    pub(crate) cloner: K,
    // `None` only when `core` holds them.
    settings: Option<&'static Settings>,
    pub(crate) core: SharedCore,
}

/// The layer's shared state, if it has any, let go of out of line and without unwinding (a panic
/// while dropping it aborts): a response future's drop then needs no cleanup path, which keeps
/// it small enough to inline.
#[derive(Clone)]
pub(crate) struct SharedCore(Option<Arc<Core>>);

impl std::ops::Deref for SharedCore {
    type Target = Option<Arc<Core>>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl Drop for SharedCore {
    #[inline]
    fn drop(&mut self) {
        #[allow(improper_ctypes_definitions)]
        #[inline(never)]
        extern "C" fn release(core: Arc<Core>) {
            drop(core);
        }
        if let Some(core) = self.0.take() {
            release(core);
        }
    }
}

/// The layer's plain settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Settings {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) retry_after_cap: Duration,
    pub(crate) per_attempt_timeout: Option<Duration>,
    pub(crate) name: Name,
}

/// How many distinct [`Settings`] are interned per process; the layers of any further ones keep
/// theirs in their [`Core`].
const MAX_INTERNED: usize = 4096;

/// The process's interned settings.
static INTERNED: Interner = Interner::new(MAX_INTERNED);

/// A table of distinct [`Settings`], each leaked once, holding at most `capacity`.
struct Interner {
    capacity: usize,
    table: Mutex<Vec<&'static Settings>>,
}

impl Interner {
    const fn new(capacity: usize) -> Self {
        Interner {
            capacity,
            table: Mutex::new(Vec::new()),
        }
    }

    /// `settings` as a reference that is free to copy: interned (a process builds few distinct
    /// retry configurations), or `None` once the table is full.
    fn intern(&self, settings: Settings) -> Option<&'static Settings> {
        let mut table = self
            .table
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(found) = table.iter().find(|found| ***found == settings) {
            return Some(found);
        }
        if table.len() >= self.capacity {
            return None;
        }
        let leaked: &'static Settings = Box::leak(Box::new(settings));
        table.push(leaked);
        Some(leaked)
    }
}

/// What the services, clones and response futures of one layer share.
pub(crate) struct Core {
    settings: Settings,
    pub(crate) budget: RetryBudget,
    seed: Option<u64>,
    retried: AtomicU64,
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
    pub fn builder() -> crate::RetryConfigBuilder {
        crate::RetryConfigBuilder::new()
    }
}

impl Default for RetryLayer {
    fn default() -> Self {
        RetryLayer::new()
    }
}

impl<P, K> RetryLayer<P, K> {
    pub(crate) fn from_parts(
        policy: P,
        cloner: K,
        settings: Settings,
        budget: RetryBudget,
        seed: Option<u64>,
        listeners: Listeners<RetryEvent>,
    ) -> Self {
        Self::interning_in(&INTERNED, policy, cloner, settings, budget, seed, listeners)
    }

    /// [`from_parts`](Self::from_parts) with the settings interned in `interner`.
    fn interning_in(
        interner: &Interner,
        policy: P,
        cloner: K,
        settings: Settings,
        budget: RetryBudget,
        seed: Option<u64>,
        listeners: Listeners<RetryEvent>,
    ) -> Self {
        let interned = interner.intern(settings);
        let shared =
            !budget.is_unlimited() || seed.is_some() || !listeners.is_empty() || interned.is_none();
        let core = shared.then(|| {
            let name = &settings.name;
            Arc::new(Core {
                settings,
                budget: budget.clone(),
                seed,
                retried: AtomicU64::new(0),
                listeners,
                retries: metrics::counter(metrics::RETRY_RETRIES, name),
                budget_exhausted: metrics::counter(metrics::RETRY_BUDGET_EXHAUSTED, name),
                gave_up: metrics::counter(metrics::RETRY_GAVE_UP, name),
            })
        });
        RetryLayer {
            link: Link {
                policy,
                cloner,
                settings: interned,
                core: SharedCore(core),
            },
            budget,
        }
    }

    /// The budget this layer's retries draw on.
    pub fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Attempts per call, the first included.
    pub fn max_attempts(&self) -> u32 {
        self.link.settings().max_attempts
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.link.settings().name
    }
}

impl<P: Clone, K: Clone> Clone for RetryLayer<P, K> {
    fn clone(&self) -> Self {
        RetryLayer {
            link: self.link.clone(),
            budget: self.budget.clone(),
        }
    }
}

impl<S, P: Clone, K: Clone> Layer<S> for RetryLayer<P, K> {
    type Service = Retry<S, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_link(inner, self.link.clone())
    }
}

impl<P, K> fmt::Debug for RetryLayer<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.link.settings();
        let mut f = f.debug_struct("RetryLayer");
        f.field("name", &settings.name)
            .field("max_attempts", &settings.max_attempts)
            .field("backoff", &settings.backoff)
            .field("retry_after_cap", &settings.retry_after_cap)
            .field("per_attempt_timeout", &settings.per_attempt_timeout)
            .field("budget", &self.budget)
            .field("policy", &std::any::type_name::<P>())
            .field("cloner", &std::any::type_name::<K>());
        if let Some(core) = self.link.core.as_ref() {
            f.field("listeners", &core.listeners);
        }
        f.finish()
    }
}

impl<P: Clone, K: Clone> Clone for Link<P, K> {
    #[inline]
    fn clone(&self) -> Self {
        Link {
            policy: self.policy.clone(),
            cloner: self.cloner.clone(),
            settings: self.settings,
            core: self.core.clone(),
        }
    }
}

impl<P, K> Link<P, K> {
    /// The layer's settings.
    #[inline]
    pub(crate) fn settings(&self) -> &Settings {
        match (self.settings, self.core.as_ref()) {
            (Some(settings), _) => settings,
            (None, Some(core)) => &core.settings,
            (None, None) => unreachable!("a retry layer's settings are interned or in its core"),
        }
    }

    /// Counts one request (not a retry) in the budget.
    #[inline]
    pub(crate) fn deposit(&self) {
        if let Some(core) = self.core.as_ref() {
            core.budget.deposit();
        }
    }

    /// Tells the budget how one attempt ended.
    #[inline]
    pub(crate) fn record(&self, outcome: seawall_core::Outcome) {
        if let Some(core) = self.core.as_ref() {
            core.budget.record(outcome);
        }
    }

    /// Takes one retry from the budget, given back if the retry is never sent.
    pub(crate) fn withdraw(&self) -> Option<Withdrawal> {
        match self.core.as_ref() {
            Some(core) => core.budget.withdraw(),
            None => Some(Withdrawal::free()),
        }
    }

    /// The seed of the next call to retry: the layer's seed stepped once per retried call, or a
    /// fresh random one when the layer was not seeded.
    pub(crate) fn next_seed(&self) -> u64 {
        match self.core.as_ref() {
            Some(core) => match core.seed {
                Some(seed) => {
                    let n = core.retried.fetch_add(1, Ordering::Relaxed);
                    seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
                }
                None => random_seed(),
            },
            None => random_seed(),
        }
    }

    /// A retry was scheduled: reported to the listeners and traced. It is counted in the metric
    /// only once sent ([`on_retry_sent`](Self::on_retry_sent)).
    #[cold]
    pub(crate) fn on_retry(&self, attempt: u32, delay: Duration) {
        let name = &self.settings().name;
        tracing::debug!(name = %name, attempt, ?delay, "seawall retry");
        if let Some(core) = self.core.as_ref() {
            core.listeners
                .emit(name, &RetryEvent::Retry { attempt, delay });
        }
    }

    /// A retry was sent.
    #[cold]
    pub(crate) fn on_retry_sent(&self) {
        match self.core.as_ref() {
            Some(core) => core.retries.increment(1),
            None => metrics::counter(metrics::RETRY_RETRIES, &self.settings().name).increment(1),
        }
    }

    #[cold]
    pub(crate) fn on_budget_exhausted(&self, attempts: u32) {
        let name = &self.settings().name;
        if let Some(core) = self.core.as_ref() {
            core.budget_exhausted.increment(1);
            tracing::debug!(name = %name, attempts, "seawall retry budget exhausted");
            core.listeners
                .emit(name, &RetryEvent::BudgetExhausted { attempts });
        }
    }

    #[cold]
    pub(crate) fn on_give_up(&self, attempts: u32, reason: GiveUpReason) {
        let name = &self.settings().name;
        match self.core.as_ref() {
            Some(core) => core.gave_up.increment(1),
            None => metrics::counter(metrics::RETRY_GAVE_UP, name).increment(1),
        }
        tracing::debug!(name = %name, attempts, ?reason, "seawall retry gave up");
        if let Some(core) = self.core.as_ref() {
            core.listeners
                .emit(name, &RetryEvent::GaveUp { attempts, reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RetryLayer;

    fn unlimited() -> crate::RetryConfigBuilder {
        RetryLayer::builder().budget(RetryBudget::unlimited())
    }

    #[test]
    fn shares_state_only_when_there_is_some_to_share() {
        assert!(unlimited().build().unwrap().link.core.is_none());
        assert!(RetryLayer::new().link.core.is_some());
        assert!(unlimited().seed(1).build().unwrap().link.core.is_some());
        let with_listener = unlimited()
            .on_event(|_: &Name, _: &RetryEvent| {})
            .build()
            .unwrap();
        assert!(with_listener.link.core.is_some());
    }

    #[test]
    fn equal_settings_are_interned_once() {
        let a = unlimited().name("interned-a").build().unwrap();
        let b = unlimited().name("interned-a").build().unwrap();
        let c = unlimited().name("interned-c").build().unwrap();
        let (a, b, c) = (a.link.settings, b.link.settings, c.link.settings);
        assert!(std::ptr::eq(a.unwrap(), b.unwrap()));
        assert!(!std::ptr::eq(a.unwrap(), c.unwrap()));
    }

    // A table of its own: filling the process's would starve every test that interns after it.
    #[test]
    fn the_table_is_bounded_and_layers_past_it_keep_their_settings() {
        const CAPACITY: usize = 4;
        let interner = Interner::new(CAPACITY);
        let base = *unlimited().build().unwrap().link.settings();
        // Distinct per-attempt timeouts make distinct settings; fill the table and go past it.
        let layers: Vec<_> = (1..=CAPACITY as u64 + 2)
            .map(|n| {
                let settings = Settings {
                    per_attempt_timeout: Some(Duration::from_nanos(1_000_000_007 * n)),
                    ..base
                };
                let layer: RetryLayer = RetryLayer::interning_in(
                    &interner,
                    Classified::default(),
                    ByClone,
                    settings,
                    RetryBudget::unlimited(),
                    None,
                    Listeners::new(),
                );
                (settings, layer)
            })
            .collect();
        for (n, (settings, layer)) in layers.iter().enumerate() {
            assert_eq!(layer.link.settings(), settings);
            let interned = n < CAPACITY;
            assert_eq!(layer.link.settings.is_some(), interned, "layer {n}");
            assert_eq!(layer.link.core.is_none(), interned, "layer {n}");
        }
        // Settings interned before the table filled are still found.
        let (first, layer) = &layers[0];
        let found = interner.intern(*first).unwrap();
        assert!(std::ptr::eq(found, layer.link.settings.unwrap()));
    }
}
