//! [`KeyedBreakerLayer`]: a breaker per key computed from each request, from a [`BreakerSet`].

use crate::{
    future::{Guard, ResponseFuture},
    service::call_start,
    set::BreakerSet,
};
use seawall_core::{
    classify::{Classify, DefaultClassifier},
    BoxError, Name,
};
use std::{
    fmt,
    hash::Hash,
    sync::Arc,
    task::{Context, Poll},
};
use tower_layer::Layer;
use tower_service::Service;

/// Applies a [`KeyedBreaker`]: each call goes through the breaker of its key in a
/// [`BreakerSet`], the key computed from the request (a host, an endpoint, a tenant). Made by
/// [`BreakerSet::keyed_layer`].
///
/// For a client that calls many hosts through one service (a reqwest- or hyper-style client whose
/// requests carry their host): one host that fails opens its own breaker, and the calls to the
/// other hosts go on. Every service the layer builds, and every clone of those, draws on the same
/// set, so a key has one breaker however many services call it.
///
/// The key's breaker is looked up in the set on every call. A key the set holds costs the set's
/// lock taken for reading, which other calls share, a hash lookup and a read of the set's clock,
/// and a write of the key's stamp (for the least recently used order) only when a key has been
/// put in since the key was last called. A key new to the set
/// takes the lock for writing, which holds up every call of every service of the set while the
/// key is put in: for a full set, while it makes room, as [`BreakerSet`] describes, which scans
/// every breaker of the set. The set's rules apply as they are: a breaker is created the first time its key is seen, from the set's configuration;
/// it stays in the set, Open or not, until it is evicted to make room or removed
/// ([`BreakerSet::remove`]), and a breaker with a call in flight counts as in use, so it is
/// evicted after every idle one. Size the set's capacity for the keys called within a breaker's
/// wait: a key evicted comes back with a fresh Closed breaker.
///
/// What the set reports applies too: every breaker carries the set's name in its log lines and
/// metrics (`seawall_breaker_keys_open` counts the keys open, half-open or forced open), and a
/// listener registered with [`BreakerSet::on_transition`] is told which key's breaker changed.
/// [`BreakerSet::handle`] and [`BreakerSet::unhealthy`] tell one key's state and the keys not
/// letting calls through. Like the set, the layer and its services are `Send` and `Sync` only
/// when the key is both.
///
/// ```
/// use seawall::breaker::{BreakerConfig, BreakerSet};
/// use tower::{service_fn, Layer};
///
/// let per_host = BreakerSet::new(BreakerConfig::builder().name("per-host").build_config()?, 1_024)?;
/// // A request's key: the authority of its URI (`host:port`), none for a relative URI.
/// let by_host = per_host.keyed_layer(|req: &http::Request<()>| req.uri().authority().cloned())?;
/// let client = by_host.layer(service_fn(|_: http::Request<()>| async {
///     Ok::<_, seawall::BoxError>(http::Response::new(()))
/// }));
/// # let _ = client;
/// # Ok::<(), seawall::ConfigError>(())
/// ```
pub struct KeyedBreakerLayer<K, F, C = DefaultClassifier> {
    set: BreakerSet<K, C>,
    key: Arc<F>,
}

impl<K, F, C> KeyedBreakerLayer<K, F, C> {
    pub(crate) fn new(set: BreakerSet<K, C>, key: F) -> Self {
        KeyedBreakerLayer {
            set,
            key: Arc::new(key),
        }
    }

    /// The set whose breakers the layer's services call through.
    pub fn set(&self) -> &BreakerSet<K, C> {
        &self.set
    }

    /// The set's name, which every breaker of the set carries.
    pub fn name(&self) -> &Name {
        self.set.name()
    }
}

impl<K, F, C> Clone for KeyedBreakerLayer<K, F, C> {
    fn clone(&self) -> Self {
        KeyedBreakerLayer {
            set: self.set.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, F, C> Layer<S> for KeyedBreakerLayer<K, F, C> {
    type Service = KeyedBreaker<S, K, F, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedBreaker {
            inner,
            set: self.set.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, F, C> fmt::Debug for KeyedBreakerLayer<K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreakerLayer")
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}

/// A breaker per key around `S`, the key computed from each request. Made by
/// [`KeyedBreakerLayer`].
///
/// The key comes from the request, so the call is decided in `call`, after `poll_ready` has
/// polled the inner service (as the keyed rate limiter does): `poll_ready` is the inner service's,
/// and `call` asks the key's breaker. A call the breaker admits is made, and its outcome recorded
/// in the key's breaker with the set's classifier when its response future completes. A call it
/// rejects gets a response future that fails at once with [`Open`](crate::Open) (whose source is
/// a [`NotSent`](seawall_core::error::NotSent), as from [`Breaker`](crate::Breaker)), without the
/// inner service being called; the inner service, polled ready for that call, is replaced with a
/// clone of it, which gives back what its readiness holds (a bulkhead's permit, a place in a
/// `Buffer`'s queue). So a call to an Open key still waits for the inner service to be ready
/// before it is rejected.
///
/// The breaker's [`backpressure`](crate::BreakerConfigBuilder::backpressure) option (a
/// `poll_ready` that waits while the breaker rejects) cannot apply before the request is known:
/// [`BreakerSet::keyed_layer`] refuses a set configured with it. To wait for a key's breaker
/// rather than fail, retry [`Open`](crate::Open) above with a backoff no shorter than the wait.
///
/// The permit is taken in `call`, so no permit is held between `poll_ready` and `call`. A
/// HalfOpen key's probe slot is held by the call's response future: dropped before the call
/// completes (a timeout above, a client gone), the future records the call as ignored and hands
/// the slot back, as [`Breaker`](crate::Breaker)'s does.
pub struct KeyedBreaker<S, K, F, C = DefaultClassifier> {
    inner: S,
    set: BreakerSet<K, C>,
    key: Arc<F>,
}

impl<S, K, F, C> KeyedBreaker<S, K, F, C> {
    /// Wraps `inner` in the keyed breaker `layer` (the same as `layer.layer(inner)`).
    pub fn new(inner: S, layer: &KeyedBreakerLayer<K, F, C>) -> Self {
        layer.layer(inner)
    }

    /// The set whose breakers this service calls through.
    pub fn set(&self) -> &BreakerSet<K, C> {
        &self.set
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, K, F, C, Req> Service<Req> for KeyedBreaker<S, K, F, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone,
    F: Fn(&Req) -> K,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let shared = self.set.breaker(&(self.key)(&request));
        let permit = match shared.acquire() {
            Ok(permit) => permit,
            Err(_) => {
                shared.count_rejection();
                drop_readiness(&mut self.inner);
                return ResponseFuture::rejected();
            }
        };
        if permit.shadowed() {
            shared.machine.count_would_have_rejected();
        }
        let times_calls = shared.times_calls;
        // The guard first: if the classifier (asked next) or the inner `call` panics, the guard
        // hands the permit back (a probe slot is freed) as it unwinds.
        let guard = Guard::new(shared, permit);
        let classifier = self.set.classifier();
        let timed = times_calls || classifier.uses_elapsed();
        let classifier = classifier.clone();
        let start = timed.then(call_start);
        ResponseFuture::admitted(self.inner.call(request), guard, classifier, start)
    }
}

/// Gives back what the inner service's readiness holds for a call that is rejected: the inner
/// service, polled ready for it, is replaced with a clone of it.
#[cold]
#[inline(never)]
fn drop_readiness<S: Clone>(inner: &mut S) {
    *inner = inner.clone();
}

impl<S: Clone, K, F, C> Clone for KeyedBreaker<S, K, F, C> {
    fn clone(&self) -> Self {
        KeyedBreaker {
            inner: self.inner.clone(),
            set: self.set.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F, C> fmt::Debug for KeyedBreaker<S, K, F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedBreaker")
            .field("inner", &self.inner)
            .field("set", &self.set)
            .finish_non_exhaustive()
    }
}
