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
/// clone takes no lock and allocates nothing, and starts from the endpoint set its original last
/// loaded, so its first call takes no lock either unless the set has changed. It is always
/// ready: waiting for an endpoint happens in the response future, bounded by `max_wait`.
pub struct Balance<K, S, C = DefaultClassifier, H = NoKey> {
    shared: Arc<Shared<K, S, C>>,
    hash_key: H,
    // The set as of `version`, held weakly: an idle clone keeps no endpoint alive that discovery
    // has removed (a connection stays open only while calls use it). A clone starts with its
    // original's; empty in a balancer a layer has just built, whose first call loads the set.
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
    /// A new balancer over `shared`. Kept cheap, as a layer above may clone the balancer to drop
    /// the readiness of a call it rejects, under overload: it takes no lock and touches no
    /// endpoint set (its first call loads the set; a clone then takes its original's). Its
    /// random stream is the next of the balancer's seed, in the order
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
        self.shared.is_panicking()
    }

    /// The policy instance name.
    pub fn name(&self) -> &seawall_core::Name {
        &self.shared.name
    }
}

impl<K: Key, S: 'static, C, H: Clone> Clone for Balance<K, S, C, H> {
    /// A clone with the next random stream, starting from the set this balancer last loaded:
    /// a layer above that clones the balancer for each call (a retry layer keeps the ready
    /// service for the call and a clone for the next) calls it without reading the set's lock.
    /// The set is still held weakly and checked against the current version at each call.
    fn clone(&self) -> Self {
        let mut clone = Balance::from_shared(self.shared.clone(), self.hash_key.clone());
        clone.snapshot = self.snapshot.clone();
        clone.version = self.version;
        clone
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{set::Snapshot, Picker};
    use std::sync::PoisonError;
    use tower::discover::Change;

    type Answer = std::future::Ready<Result<(), BoxError>>;
    type Svc = tower::util::ServiceFn<fn(u32) -> Answer>;

    fn svc() -> Svc {
        fn answer(_: u32) -> Answer {
            std::future::ready(Ok(()))
        }
        tower::service_fn(answer as fn(u32) -> Answer)
    }

    type Set = Arc<Shared<usize, Svc, DefaultClassifier>>;

    fn balance() -> (Set, Balance<usize, Svc>) {
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        shared.apply(Change::Insert(0, svc()));
        let balance = Balance::from_shared(shared.clone(), NoKey);
        (shared, balance)
    }

    /// A clone made after a call (as a retry layer makes one for each call) starts with the set
    /// that call loaded: its first call takes it without reading the lock. Here the lock holds a
    /// copy of the set under the same version, which a call that read the lock would take.
    #[test]
    fn a_clone_made_after_a_call_reuses_its_set() {
        let (shared, mut balance) = balance();
        drop(balance.call(1));
        let mut clone = balance.clone();
        assert!(Weak::ptr_eq(&clone.snapshot, &balance.snapshot));
        assert_eq!(clone.version, balance.version);

        let set = shared.current();
        let copy = Snapshot::build(set.endpoints.clone(), &Picker::RoundRobin, set.local_zone);
        *shared
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(copy);
        drop(clone.call(2));
        assert!(Weak::ptr_eq(&clone.snapshot, &Arc::downgrade(&set)));
    }

    /// A clone's set is checked against the version as its original's is: a set changed after
    /// the clone was made is loaded by its next call.
    #[test]
    fn a_clone_sees_a_set_changed_after_it_was_made() {
        let (shared, mut balance) = balance();
        drop(balance.call(1));
        let mut clone = balance.clone();
        shared.apply(Change::Insert(1, svc()));
        drop(clone.call(2));
        assert_eq!(clone.version, shared.version.load(Acquire));
        assert_eq!(clone.snapshot.upgrade().map(|s| s.len()), Some(2));
    }
}
