use crate::{
    config::{BalanceConfigBuilder, Settings},
    endpoint::Key,
    hook::{Filter, NoFilter, NoKey, NoProbe, Probe},
    shared::{box_probe, spawn, Shared},
    Balance, BalanceEvent,
};
use seawall_core::{classify::DefaultClassifier, Listeners, Name};
use std::{fmt, sync::Arc, time::Duration};
use tower::discover::Discover;
use tower_layer::Layer;

/// Builds a [`Balance`] over a discovery stream.
///
/// The layer wraps a [`Discover`] (any stream of `Change::Insert` / `Change::Remove`, for example
/// one from `seawall-discover`): `layer.layer(discover)` starts a balancer whose clones share one
/// endpoint set. Each call of `layer` starts an independent balancer over the stream it is given.
/// It must be called inside a Tokio runtime: the balancer runs a background task that applies
/// discovery changes and health checks even when no calls arrive.
pub struct BalanceLayer<C = DefaultClassifier, H = NoKey, P = NoProbe, F = NoFilter> {
    settings: Settings,
    listeners: Listeners<BalanceEvent>,
    classifier: C,
    hash_key: H,
    probe: Arc<P>,
    filter: Arc<F>,
}

impl BalanceLayer {
    /// Starts a builder.
    pub fn builder() -> BalanceConfigBuilder {
        BalanceConfigBuilder::new()
    }
}

impl Default for BalanceLayer {
    /// The default configuration (see the [crate docs](crate)).
    fn default() -> Self {
        BalanceConfigBuilder::new()
            .build()
            .expect("the default configuration is valid")
    }
}

impl<C, H, P, F> BalanceLayer<C, H, P, F> {
    pub(crate) fn new(
        settings: Settings,
        listeners: Listeners<BalanceEvent>,
        classifier: C,
        hash_key: H,
        probe: P,
        filter: F,
    ) -> Self {
        BalanceLayer {
            settings,
            listeners,
            classifier,
            hash_key,
            probe: Arc::new(probe),
            filter: Arc::new(filter),
        }
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.settings.name
    }
}

impl<C, H, P, F, D> Layer<D> for BalanceLayer<C, H, P, F>
where
    D: Discover + Send + 'static,
    D::Key: Key,
    D::Service: Clone + Send + Sync + 'static,
    D::Error: fmt::Display,
    C: Clone + Send + Sync + 'static,
    H: Clone,
    P: Probe<D::Key, D::Service>,
    F: Filter<D::Key, D::Service>,
{
    type Service = Balance<D::Key, D::Service, C, H>;

    fn layer(&self, discover: D) -> Self::Service {
        let filter: Option<Box<dyn Filter<D::Key, D::Service>>> = if self.filter.is_noop() {
            None
        } else {
            Some(Box::new(SharedFilter(self.filter.clone())))
        };
        let probe = if self.probe.is_noop() {
            None
        } else {
            let probe = self.probe.clone();
            box_probe(move |key: &D::Key, svc: D::Service| probe.probe(key, svc))
        };
        let shared = Arc::new(Shared::new(
            self.settings.clone(),
            self.listeners.clone(),
            self.classifier.clone(),
            filter,
        ));
        spawn(&shared, discover, probe);
        Balance::from_shared(shared, self.hash_key.clone())
    }
}

/// The probe and filter are shared, not copied: a clone needs only the classifier and hash key to
/// be `Clone`.
impl<C: Clone, H: Clone, P, F> Clone for BalanceLayer<C, H, P, F> {
    fn clone(&self) -> Self {
        BalanceLayer {
            settings: self.settings.clone(),
            listeners: self.listeners.clone(),
            classifier: self.classifier.clone(),
            hash_key: self.hash_key.clone(),
            probe: self.probe.clone(),
            filter: self.filter.clone(),
        }
    }
}

impl<C, H, P, F> fmt::Debug for BalanceLayer<C, H, P, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("name", &self.settings.name)
            .field("picker", &self.settings.picker)
            .field("max_wait", &self.settings.max_wait)
            .field("panic_threshold", &self.settings.panic_threshold)
            .field("outlier_detection", &self.settings.outlier)
            .field("health_check", &self.settings.health_check)
            .field("listeners", &self.listeners)
            .finish()
    }
}

/// The layer's filter, shared by the balancers it builds.
struct SharedFilter<F>(Arc<F>);

impl<K, S, F: Filter<K, S>> Filter<K, S> for SharedFilter<F> {
    #[inline]
    fn available(&self, key: &K, service: &S) -> bool {
        self.0.available(key, service)
    }

    fn available_held(&self, key: &K, held: &S) -> bool {
        self.0.available_held(key, held)
    }

    fn available_in(&self, key: &K, service: &S) -> Option<Duration> {
        self.0.available_in(key, service)
    }

    fn rejected(&self, key: &K, service: &S, error: &(dyn std::error::Error + 'static)) -> bool {
        self.0.rejected(key, service, error)
    }
}
