use super::{
    config::Validated,
    event::Reporter,
    future::{Refund, ResponseFuture},
    gcra::{decide, nanos_since, take_hole, to_nanos, Grant},
};
use seawall_core::{metrics, BoxError, Name};
use std::{
    collections::HashMap,
    fmt,
    hash::{BuildHasher, Hash, RandomState},
    mem,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

/// The most independently locked shards a keyed limiter uses.
const SHARDS: usize = 16;
/// Keys per shard below which a limiter uses fewer shards (a small table needs no sharding).
const MIN_KEYS_PER_SHARD: usize = 64;

/// Applies a [`KeyedRateLimit`]: one GCRA budget per key, the key computed from each request.
///
/// Keys live in a bounded table (`max_keys`, default 10 000), split into up to 16 shards that are
/// locked independently (each holds `max_keys / shards` keys). A key whose budget is full again (no call within its last `burst` intervals)
/// holds no information a fresh key would not, so when a shard is full its idle keys are evicted
/// first, losslessly; if every key is busy, the one closest to idle goes. Memory stays bounded
/// whatever the request keys are.
///
/// ```
/// use seawall::bulkhead::ratelimit::RateLimitLayer;
/// use std::time::Duration;
///
/// // 100 requests a second per tenant, by the `x-tenant` header.
/// let per_tenant = RateLimitLayer::builder()
///     .rate(100, Duration::from_secs(1))
///     .max_keys(50_000)
///     .build_keyed(|req: &http::Request<()>| {
///         req.headers().get("x-tenant").map(|v| v.as_bytes().to_vec())
///     })?;
/// # Ok::<_, seawall::ConfigError>(())
/// ```
pub struct KeyedRateLimitLayer<K, F> {
    shared: Arc<KeyedShared<K>>,
    key: Arc<F>,
}

/// One key's budget: its TAT and the holes left by given-back grants that were not the latest (as
/// in [`Gcra`](super::gcra::Gcra)); `id` tells this entry from a later one for the same key, made
/// after an eviction, so a grant from before is never given back to it.
struct Entry {
    tat: u64,
    holes: Vec<u64>,
    id: u64,
}

pub(crate) struct KeyedShared<K> {
    shards: Box<[Mutex<HashMap<K, Entry>>]>,
    hasher: RandomState,
    shard_capacity: usize,
    keys: AtomicUsize,
    /// The next [`Entry::id`].
    next_id: AtomicU64,
    interval: u64,
    tolerance: u64,
    epoch: Instant,
    max_wait: u64,
    keys_gauge: ::metrics::Gauge,
    report: Reporter,
}

impl<K: Hash + Eq> KeyedShared<K> {
    pub(crate) fn new(config: Validated) -> Arc<Self> {
        let shards = (config.max_keys / MIN_KEYS_PER_SHARD).clamp(1, SHARDS);
        Arc::new(KeyedShared {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            shard_capacity: config.max_keys / shards,
            keys: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            interval: config.interval,
            tolerance: config.interval.saturating_mul(config.burst),
            epoch: Instant::now(),
            max_wait: to_nanos(config.max_wait),
            keys_gauge: metrics::gauge(metrics::RATELIMIT_KEYS, &config.name),
            report: Reporter::new(config.name, config.listeners),
        })
    }

    fn now(&self) -> u64 {
        nanos_since(self.epoch)
    }

    fn shard(&self, key: &K) -> &Mutex<HashMap<K, Entry>> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[index]
    }

    /// Takes a permit for `key` at `now`: as [`Gcra::acquire`](super::gcra::Gcra::acquire). The
    /// grant comes with the id of the key's entry, for [`refund`](Self::refund).
    fn acquire(&self, key: &K, now: u64) -> Result<(Grant, u64), u64>
    where
        K: Clone,
    {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = map.get_mut(key) {
            let mut hole_retry = u64::MAX;
            if !entry.holes.is_empty() {
                match take_hole(
                    &mut entry.holes,
                    now,
                    self.interval,
                    self.tolerance,
                    self.max_wait,
                ) {
                    Ok(grant) => return Ok((grant, entry.id)),
                    Err(retry) => hole_retry = retry,
                }
            }
            let (tat, delay) = decide(entry.tat, now, self.interval, self.tolerance, self.max_wait)
                .map_err(|retry| retry.min(hole_retry))?;
            entry.tat = tat;
            return Ok((Grant { delay, tat }, entry.id));
        }
        let (tat, delay) = decide(0, now, self.interval, self.tolerance, self.max_wait)?;
        let before = map.len();
        if before >= self.shard_capacity {
            self.evict(&mut map, now);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        map.insert(
            key.clone(),
            Entry {
                tat,
                holes: Vec::new(),
                id,
            },
        );
        self.count_keys(before, map.len());
        Ok((Grant { delay, tat }, id))
    }

    /// Makes room in a full shard: every idle key (budget full again; its holes, all earlier than
    /// its TAT, have passed too), else the key closest to idle.
    fn evict(&self, map: &mut HashMap<K, Entry>, now: u64)
    where
        K: Clone,
    {
        map.retain(|_, entry| entry.tat > now);
        if map.len() >= self.shard_capacity {
            let closest = map
                .iter()
                .min_by_key(|(_, entry)| entry.tat)
                .map(|(key, _)| key.clone());
            if let Some(key) = closest {
                map.remove(&key);
            }
        }
    }

    fn count_keys(&self, before: usize, after: usize) {
        if after > before {
            self.keys.fetch_add(after - before, Ordering::Relaxed);
            self.keys_gauge.increment((after - before) as f64);
        } else if before > after {
            self.keys.fetch_sub(before - after, Ordering::Relaxed);
            self.keys_gauge.decrement((before - after) as f64);
        }
    }

    /// Gives back a grant of the entry `id` for `key`, as [`Gcra::refund`](super::gcra::Gcra::refund):
    /// the latest moves the TAT back, any other becomes a hole, and holes at the TAT fold into it.
    /// Nothing happens if that entry was evicted since.
    fn refund(&self, key: &K, id: u64, grant: Grant) {
        let mut map = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = map.get_mut(key).filter(|entry| entry.id == id) else {
            return;
        };
        if entry.tat == grant.tat {
            entry.tat -= self.interval;
        } else {
            entry.holes.push(grant.tat);
        }
        while let Some(index) = entry.holes.iter().position(|&hole| hole == entry.tat) {
            entry.holes.swap_remove(index);
            entry.tat -= self.interval;
        }
    }
}

struct KeyedReservation<K> {
    shared: Arc<KeyedShared<K>>,
    key: K,
    id: u64,
    grant: Grant,
}

impl<K: Hash + Eq + Send + Sync + 'static> Refund for KeyedReservation<K> {
    fn refund(&self) {
        self.shared.refund(&self.key, self.id, self.grant);
    }
}

impl<K, F> KeyedRateLimitLayer<K, F> {
    pub(crate) fn new(shared: Arc<KeyedShared<K>>, key: F) -> Self {
        KeyedRateLimitLayer {
            shared,
            key: Arc::new(key),
        }
    }

    /// Keys tracked right now (at most `max_keys`).
    pub fn tracked_keys(&self) -> usize {
        self.shared.keys.load(Ordering::Relaxed)
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.report.name
    }
}

impl<K, F> Clone for KeyedRateLimitLayer<K, F> {
    fn clone(&self) -> Self {
        KeyedRateLimitLayer {
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S, K, F> Layer<S> for KeyedRateLimitLayer<K, F> {
    type Service = KeyedRateLimit<S, K, F>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<K, F> fmt::Debug for KeyedRateLimitLayer<K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl<K> fmt::Debug for KeyedShared<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("name", &self.report.name)
            .field("interval", &Duration::from_nanos(self.interval))
            .field("burst", &(self.tolerance / self.interval))
            .field("max_wait", &Duration::from_nanos(self.max_wait))
            .field("max_keys", &(self.shard_capacity * self.shards.len()))
            .field("keys", &self.keys.load(Ordering::Relaxed))
            .finish()
    }
}

/// A per-key GCRA rate limit around `S`. Made by [`KeyedRateLimitLayer`].
pub struct KeyedRateLimit<S, K, F> {
    inner: S,
    shared: Arc<KeyedShared<K>>,
    key: Arc<F>,
}

impl<S, K, F> KeyedRateLimit<S, K, F> {
    /// Wraps `inner` in the keyed rate limit `layer` (the same as `layer.layer(inner)`).
    pub fn new(inner: S, layer: &KeyedRateLimitLayer<K, F>) -> Self {
        layer.layer(inner)
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

impl<S, K, F, Req> Service<Req> for KeyedRateLimit<S, K, F>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    K: Hash + Eq + Clone + Send + Sync + 'static,
    F: Fn(&Req) -> K,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let key = (self.key)(&request);
        let now = self.shared.now();
        match self.shared.acquire(&key, now) {
            Ok((grant, _)) if grant.delay == 0 => ResponseFuture::running(self.inner.call(request)),
            Ok((grant, id)) => {
                self.shared.report.delayed(grant.delay);
                let clone = self.inner.clone();
                let ready = mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(
                    self.shared.epoch + Duration::from_nanos(now + grant.delay),
                    ready,
                    request,
                    Box::new(KeyedReservation {
                        shared: self.shared.clone(),
                        key,
                        id,
                        grant,
                    }),
                )
            }
            Err(retry) => ResponseFuture::limited(self.shared.report.limited(retry)),
        }
    }
}

impl<S: Clone, K, F> Clone for KeyedRateLimit<S, K, F> {
    fn clone(&self) -> Self {
        KeyedRateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key: self.key.clone(),
        }
    }
}

impl<S: fmt::Debug, K, F> fmt::Debug for KeyedRateLimit<S, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.report.name)
            .finish()
    }
}
