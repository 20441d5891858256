use crate::{
    endpoint::Key,
    hook::{HashKey, NoKey},
    set::Snapshot,
    shared::Shared,
    ResponseFuture,
};
use rand::{rngs::SmallRng, SeedableRng};
use seawall_core::{classify::DefaultClassifier, BoxError, Classify};
use std::{
    fmt,
    sync::{atomic::Ordering::*, Arc, Weak},
    task::{Context, Poll},
};
use tower_service::Service;

/// A client-side load balancer over a discovered set of endpoints; see the [crate docs](crate).
///
/// `Clone`: every clone shares the one endpoint set, its statistics and its health, and each has
/// its own random stream (derived from the balancer's seed, in the order clones are made). A
/// clone takes no lock and allocates nothing. It is always ready: waiting for an endpoint happens
/// in the response future, bounded by `max_wait`.
pub struct Balance<K, S, C = DefaultClassifier, H = NoKey> {
    shared: Arc<Shared<K, S, C>>,
    hash_key: H,
    // The set as of `version`, held weakly: an idle clone keeps no endpoint alive that discovery
    // has removed (a connection stays open only while calls use it). Empty in a new clone: its
    // first call loads the set.
    snapshot: Weak<Snapshot<K, S>>,
    version: u64,
    rng: SmallRng,
}

// ===== impl Balance =====

impl<K, S> Balance<K, S>
where
    K: Key,
    S: Clone + Send + Sync + 'static,
{
    /// A balancer with the default configuration over `discover` (a one-off policy; build a
    /// [`BalanceLayer`](crate::BalanceLayer) to name and tune it).
    ///
    /// Must be called inside a Tokio runtime; see [`BalanceLayer`](crate::BalanceLayer).
    pub fn new<D>(discover: D) -> Self
    where
        D: tower::discover::Discover<Key = K, Service = S> + Send + 'static,
        D::Error: fmt::Display,
    {
        tower_layer::Layer::layer(&crate::BalanceLayer::default(), discover)
    }
}

impl<K: Key, S: 'static, C, H> Balance<K, S, C, H> {
    /// A new clone. Kept cheap, as a layer above may clone the balancer to drop the readiness of
    /// a call it rejects, under overload: it takes no lock and touches no endpoint set (its first
    /// call loads the set). Its random stream is the next of the balancer's seed, in the order
    /// clones are made, so a seeded run repeats whatever order clones are first called in.
    pub(crate) fn from_shared(shared: Arc<Shared<K, S, C>>, hash_key: H) -> Self {
        let n = shared.clones.fetch_add(1, Relaxed);
        let rng = SmallRng::seed_from_u64(shared.seed ^ crate::endpoint::mix(n + 1));
        Balance {
            shared,
            hash_key,
            snapshot: Weak::new(),
            version: 0,
            rng,
        }
    }

    /// The keys of the endpoints in the set, in the set's order.
    pub fn endpoints(&self) -> Vec<K> {
        self.shared
            .current()
            .endpoints
            .iter()
            .map(|e| e.key.clone())
            .collect()
    }

    /// The keys of the endpoints health checking currently keeps out of the pick (ejected by
    /// outlier detection or failing their active health check).
    pub fn unhealthy(&self) -> Vec<K> {
        self.shared
            .current()
            .endpoints
            .iter()
            .filter(|e| !e.stats.healthy())
            .map(|e| e.key.clone())
            .collect()
    }

    /// The calls in flight on the endpoint with `key`, if it is in the set.
    pub fn outstanding(&self, key: &K) -> Option<u32> {
        self.shared
            .current()
            .endpoints
            .iter()
            .find(|e| &e.key == key)
            .map(|e| e.stats.outstanding.load(Relaxed))
    }

    /// Whether health is being ignored because too few endpoints are healthy (panic mode).
    pub fn is_panicking(&self) -> bool {
        self.shared.panicking(self.shared.current().len())
    }

    /// The policy instance name.
    pub fn name(&self) -> &seawall_core::Name {
        &self.shared.name
    }
}

impl<K: Key, S: 'static, C, H: Clone> Clone for Balance<K, S, C, H> {
    fn clone(&self) -> Self {
        Balance::from_shared(self.shared.clone(), self.hash_key.clone())
    }
}

impl<K, S, C, H, Req> Service<Req> for Balance<K, S, C, H>
where
    K: Key,
    S: Service<Req> + Clone + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    H: HashKey<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<K, S, C, Req, S::Future>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let version = self.shared.version.load(Acquire);
        let cached = if version == self.version {
            self.snapshot.upgrade()
        } else {
            None
        };
        let snapshot = cached.unwrap_or_else(|| {
            let current = self.shared.current();
            self.snapshot = Arc::downgrade(&current);
            self.version = version;
            current
        });
        let hash = self.hash_key.hash_key(&req);
        let rng = SmallRng::from_rng(&mut self.rng);
        ResponseFuture::new(self.shared.clone(), snapshot, version, req, rng, hash)
    }
}

impl<K: fmt::Debug, S, C, H> fmt::Debug for Balance<K, S, C, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}
