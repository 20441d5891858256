use super::{
    config::Validated,
    event::Reporter,
    future::{Permit, ResponseFuture},
    gcra::{budget, decide, nanos_since, to_nanos, usable_until, Budget, Grant, Holes},
};
use seawall_core::{metrics, BoxError, Name};
use std::{
    cmp::{Ordering as ByTat, Reverse},
    collections::{BinaryHeap, HashMap},
    fmt,
    hash::{BuildHasher, Hash},
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
/// Stale elements a shard's eviction order may hold, beyond one per key, before it is rebuilt.
const STALE_SLACK: usize = 16;

/// Picks a key's shard: random per limiter, so no client can aim its keys at one shard; fixed in
/// the unit tests, so which shard a key lands in is the same on every run.
#[cfg(not(test))]
type ShardHasher = std::hash::RandomState;
#[cfg(test)]
type ShardHasher = std::hash::BuildHasherDefault<std::hash::DefaultHasher>;

/// Applies a [`KeyedRateLimit`]: one GCRA budget per key, the key computed from each request.
///
/// Keys live in a bounded table (`max_keys`, default 10 000), split into up to 16 shards that are
/// locked independently (each holds `max_keys / shards` keys, rounded down: 1 000 keys are 15
/// shards of 66, the 990 `Debug` shows as `max_keys`). A key whose budget is full again (its TAT
/// has passed, up to `burst × T + max_wait` after its last call, for `T = period / permits`)
/// holds no information a fresh key would not, so when a shard is full its idle keys are evicted
/// first, losslessly; if every key is busy, the one closest to idle goes, and comes back with a
/// fresh budget. A shard is full at its own share of keys whatever the others hold, and keys do
/// not hash evenly, so for `N` keys active within `burst × T + max_wait` size `max_keys` at least
/// `N + 16·√N + 16`, rounded up (1 000 keys: 1 522; 10 000: 11 616; 100 000: 105 076): then
/// all `N` fit with a chance above 99.9%. A flat 10% above `N` is enough by that standard in a
/// single shard (`max_keys` below 128) and from about 23 000 keys on, not in between: with 1 000
/// keys some busy key is evicted almost surely, with 5 000 nearly half the time.
/// The table holds at most `max_keys` keys whatever the requests are, each as large as the key
/// function makes it: a key copied from a request (a header's bytes) is as long as the client
/// chose, so cap or hash it. Each shard keeps its keys in a heap by TAT as well, so making room
/// takes no scan of the shard: a key costs one heap operation (`O(log n)`) when it comes, when it
/// goes, and at most once more for each time it was used since it was last placed in the heap.
///
/// Keys are shared between the shard's table and its heap, so the layer and its services are
/// `Send + Sync` when the key is (and the key function is); [`build_keyed`] asks for a
/// `Send + Sync` key.
///
/// [`build_keyed`]: super::RateLimitConfigBuilder::build_keyed
///
/// ```
/// use seawall::bulkhead::ratelimit::RateLimitLayer;
/// use std::time::Duration;
///
/// // 100 requests a second per tenant, by the `x-tenant` header: its first 64 bytes, so a
/// // client cannot make keys as large as it likes.
/// let per_tenant = RateLimitLayer::builder()
///     .rate(100, Duration::from_secs(1))
///     .max_keys(50_000)
///     .build_keyed(|req: &http::Request<()>| {
///         let tenant = req.headers().get("x-tenant")?.as_bytes();
///         Some(tenant[..tenant.len().min(64)].to_vec())
///     })?;
/// # Ok::<_, seawall::ConfigError>(())
/// ```
pub struct KeyedRateLimitLayer<K, F> {
    shared: Arc<KeyedShared<K>>,
    key: Arc<F>,
}

/// One key's budget: its TAT and the holes left by given-back grants that were not the latest (as
/// in [`Gcra`](super::gcra::Gcra)); `id` tells this entry from a later one for the same key, made
/// after an eviction, so a grant from before is never given back to it. `queued` is the TAT its
/// element in [`Shard::by_tat`] carries.
struct Entry {
    tat: u64,
    holes: Holes,
    id: u64,
    queued: u64,
}

/// One independently locked part of the table: its keys' budgets, and the same keys ordered by
/// TAT for eviction.
struct Shard<K> {
    map: HashMap<Arc<K>, Entry>,
    /// One element per entry, lowest TAT first, with the entry's TAT when it was queued. A call
    /// only moves a TAT forward, so an element's TAT is at most its entry's, and the top element,
    /// once it is found up to date, is the entry with the lowest TAT; one found behind is queued
    /// again at its entry's TAT. A refund that moves a TAT back queues the entry again at once,
    /// leaving a stale element (its entry's `queued` no longer matches), dropped when it comes to
    /// the top. When stale elements outnumber the keys (plus [`STALE_SLACK`]) the heap is rebuilt,
    /// so it holds at most about twice the keys, and a rebuild follows as many refunds as it
    /// costs.
    by_tat: BinaryHeap<Reverse<Queued<K>>>,
}

/// An element of [`Shard::by_tat`], ordered by TAT (then id, so no two entries tie).
struct Queued<K> {
    tat: u64,
    id: u64,
    key: Arc<K>,
}

impl<K> PartialEq for Queued<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.tat, self.id) == (other.tat, other.id)
    }
}

impl<K> Eq for Queued<K> {}

impl<K> PartialOrd for Queued<K> {
    fn partial_cmp(&self, other: &Self) -> Option<ByTat> {
        Some(self.cmp(other))
    }
}

impl<K> Ord for Queued<K> {
    fn cmp(&self, other: &Self) -> ByTat {
        (self.tat, self.id).cmp(&(other.tat, other.id))
    }
}

impl<K: Hash + Eq> Shard<K> {
    fn new() -> Self {
        Shard {
            map: HashMap::new(),
            by_tat: BinaryHeap::new(),
        }
    }

    /// Queues every entry afresh at its TAT, dropping stale elements.
    fn requeue_all(&mut self) {
        self.by_tat = self
            .map
            .iter_mut()
            .map(|(key, entry)| {
                entry.queued = entry.tat;
                Reverse(Queued {
                    tat: entry.tat,
                    id: entry.id,
                    key: key.clone(),
                })
            })
            .collect();
    }
}

pub(crate) struct KeyedShared<K> {
    shards: Box<[Mutex<Shard<K>>]>,
    hasher: ShardHasher,
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
    /// Entries looked at to make room, for the tests' bound on that work.
    #[cfg(test)]
    visited: AtomicUsize,
    /// Heaps rebuilt, for the tests.
    #[cfg(test)]
    rebuilds: AtomicUsize,
}

impl<K> Drop for KeyedShared<K> {
    fn drop(&mut self) {
        // The gauge moves by differences, so a limiter that goes takes its keys with it: one
        // built again under the same name starts from what the others hold.
        self.keys_gauge.decrement(*self.keys.get_mut() as f64);
    }
}

impl<K: Hash + Eq> KeyedShared<K> {
    pub(crate) fn new(config: Validated) -> Arc<Self> {
        let shards = (config.max_keys / MIN_KEYS_PER_SHARD).clamp(1, SHARDS);
        Arc::new(KeyedShared {
            shards: (0..shards).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: ShardHasher::default(),
            shard_capacity: config.max_keys / shards,
            keys: AtomicUsize::new(0),
            next_id: AtomicU64::new(0),
            interval: config.interval,
            tolerance: config.interval.saturating_mul(config.burst),
            epoch: Instant::now(),
            max_wait: to_nanos(config.max_wait),
            keys_gauge: metrics::gauge(metrics::RATELIMIT_KEYS, &config.name),
            report: Reporter::new(config.name, config.listeners),
            #[cfg(test)]
            visited: AtomicUsize::new(0),
            #[cfg(test)]
            rebuilds: AtomicUsize::new(0),
        })
    }

    fn now(&self) -> u64 {
        nanos_since(self.epoch)
    }

    fn shard(&self, key: &K) -> &Mutex<Shard<K>> {
        let index = self.hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[index]
    }

    /// Takes a permit for `key` at `now`, due within `max_wait`: as
    /// [`Gcra::acquire`](super::gcra::Gcra::acquire). The grant comes with the id of the key's
    /// entry, for [`refund`](Self::refund).
    fn acquire(&self, key: &K, now: u64, max_wait: u64) -> Result<(Grant, u64), u64>
    where
        K: Clone,
    {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = shard.map.get_mut(key) {
            let mut hole_retry = u64::MAX;
            if !entry.holes.is_empty() {
                match entry
                    .holes
                    .take(now, self.interval, self.tolerance, max_wait)
                {
                    Ok(grant) => return Ok((grant, entry.id)),
                    Err(retry) => hole_retry = retry,
                }
            }
            let (tat, delay) = decide(entry.tat, now, self.interval, self.tolerance, max_wait)
                .map_err(|retry| retry.min(hole_retry))?;
            entry.tat = tat;
            return Ok((Grant { delay, tat }, entry.id));
        }
        let (tat, delay) = decide(0, now, self.interval, self.tolerance, max_wait)?;
        let before = shard.map.len();
        if before >= self.shard_capacity {
            self.evict(&mut shard, now);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = Arc::new(key.clone());
        shard.by_tat.push(Reverse(Queued {
            tat,
            id,
            key: key.clone(),
        }));
        shard.map.insert(
            key,
            Entry {
                tat,
                holes: Holes::default(),
                id,
                queued: tat,
            },
        );
        let after = shard.map.len();
        // The count moves under the shard's lock, so it stays exact; no recorder runs under it.
        self.count_keys(before, after);
        drop(shard);
        self.gauge_keys(before, after);
        Ok((Grant { delay, tat }, id))
    }

    /// Makes room in a full shard: every idle key (budget full again; its holes, all earlier than
    /// its TAT, have passed too), else the key closest to idle. Both are found at the top of the
    /// shard's heap by TAT.
    fn evict(&self, shard: &mut Shard<K>, now: u64) {
        let mut made_room = false;
        while let Some(Reverse(mut queued)) = shard.by_tat.pop() {
            #[cfg(test)]
            self.visited.fetch_add(1, Ordering::Relaxed);
            let Some(entry) = shard
                .map
                .get_mut(&*queued.key)
                .filter(|entry| entry.id == queued.id && entry.queued == queued.tat)
            else {
                // Stale: the entry was evicted, or queued again by a refund.
                continue;
            };
            if entry.tat > queued.tat {
                // Used since it was queued: its place is further back.
                entry.queued = entry.tat;
                queued.tat = entry.tat;
                shard.by_tat.push(Reverse(queued));
                continue;
            }
            // The entry with the lowest TAT in the shard.
            let idle = queued.tat <= now;
            if !idle && made_room {
                shard.by_tat.push(Reverse(queued));
                return;
            }
            shard.map.remove(&*queued.key);
            made_room = true;
            if !idle {
                return;
            }
        }
    }

    fn count_keys(&self, before: usize, after: usize) {
        if after > before {
            self.keys.fetch_add(after - before, Ordering::Relaxed);
        } else if before > after {
            self.keys.fetch_sub(before - after, Ordering::Relaxed);
        }
    }

    fn gauge_keys(&self, before: usize, after: usize) {
        if after > before {
            self.keys_gauge.increment((after - before) as f64);
        } else if before > after {
            self.keys_gauge.decrement((before - after) as f64);
        }
    }

    /// `key`'s budget at `now`, read under its shard's lock without taking or moving anything: a
    /// key not in the table (never seen, or evicted) has a whole budget, as its next call finds.
    fn budget(&self, key: &K, now: u64) -> Budget {
        let shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match shard.map.get(key) {
            Some(entry) => budget(
                entry.tat,
                Some(&entry.holes),
                now,
                self.interval,
                self.tolerance,
            ),
            None => budget(0, None, now, self.interval, self.tolerance),
        }
    }

    /// Gives back a grant of the entry `id` for `key`, as [`Gcra::refund`](super::gcra::Gcra::refund):
    /// the latest moves the TAT back, any other becomes a hole, and holes at the TAT fold into it.
    /// Nothing happens if that entry was evicted since.
    fn refund(&self, key: &K, id: u64, grant: Grant) {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let shard = &mut *shard;
        let Some(entry) = shard.map.get_mut(key).filter(|entry| entry.id == id) else {
            return;
        };
        if entry.tat == grant.tat {
            entry.tat -= self.interval;
        } else {
            entry.holes.insert(grant.tat);
        }
        while entry.holes.remove(entry.tat) {
            entry.tat -= self.interval;
        }
        if entry.tat < entry.queued {
            // Moved back past its place in the eviction order: queued again there.
            entry.queued = entry.tat;
            let tat = entry.tat;
            if let Some((key, _)) = shard.map.get_key_value(key) {
                let key = key.clone();
                shard.by_tat.push(Reverse(Queued { tat, id, key }));
            }
            if shard.by_tat.len() > 2 * shard.map.len() + STALE_SLACK {
                #[cfg(test)]
                {
                    self.visited.fetch_add(shard.map.len(), Ordering::Relaxed);
                    self.rebuilds.fetch_add(1, Ordering::Relaxed);
                }
                shard.requeue_all();
            }
        }
    }
}

struct KeyedReservation<K> {
    shared: Arc<KeyedShared<K>>,
    key: K,
    id: u64,
    grant: Grant,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Permit for KeyedReservation<K> {
    fn refund(&self) {
        self.shared.refund(&self.key, self.id, self.grant);
    }

    fn now(&self) -> u64 {
        self.shared.now()
    }

    fn instant(&self, nanos: u64) -> Instant {
        self.shared.epoch + Duration::from_nanos(nanos)
    }

    fn usable_until(&self, due: u64) -> u64 {
        usable_until(self.shared.interval, self.grant, due)
    }

    fn interval(&self) -> u64 {
        self.shared.interval
    }

    fn renew(&mut self, now: u64, max_wait: u64) -> Result<u64, Duration> {
        self.shared.refund(&self.key, self.id, self.grant);
        match self.shared.acquire(&self.key, now, max_wait) {
            Ok((grant, id)) => {
                (self.grant, self.id) = (grant, id);
                Ok(grant.delay)
            }
            Err(retry) => Err(self.shared.report.limited(retry)),
        }
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

    /// A handle on this limiter's budgets, key by key.
    pub fn handle(&self) -> KeyedRateLimitHandle<K> {
        KeyedRateLimitHandle {
            shared: self.shared.clone(),
        }
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.report.name
    }
}

/// A view of one keyed rate limiter's budgets, key by key, for dashboards, tests and health
/// checks: what [`RateLimitHandle`](super::RateLimitHandle) shows of a plain limiter, for the key
/// given.
///
/// Get one with [`KeyedRateLimitLayer::handle`]; it shares the layer's table, so it sees every
/// service the layer made and every clone. A reading locks the key's shard, as a call for that
/// key does, and holds it (calls for the shard's keys wait) while it counts the key's permits
/// given back by dropped waiters and free at once, one by one and up to the burst. It neither
/// takes a permit nor adds the key to the table: a key the table does not hold (never seen, or
/// evicted) reads as a whole budget, which is what its next call finds.
/// Time is tokio's clock, as for the limiter.
pub struct KeyedRateLimitHandle<K> {
    shared: Arc<KeyedShared<K>>,
}

impl<K: Hash + Eq> KeyedRateLimitHandle<K> {
    /// Calls for `key` that would be admitted at once now, one after another: at most the burst.
    /// As [`RateLimitHandle::available`](super::RateLimitHandle::available), for one key.
    pub fn available(&self, key: &K) -> u64 {
        self.shared.budget(key, self.shared.now()).available
    }

    /// How long until a call for `key` would be admitted at once: zero while
    /// [`available`](Self::available) is above zero, else the
    /// [`retry_after`](super::Limited::retry_after) a call for it rejected now would carry.
    pub fn next_permit_in(&self, key: &K) -> Duration {
        Duration::from_nanos(self.shared.budget(key, self.shared.now()).next_in)
    }
}

impl<K> KeyedRateLimitHandle<K> {
    /// Keys tracked right now (at most `max_keys`).
    pub fn tracked_keys(&self) -> usize {
        self.shared.keys.load(Ordering::Relaxed)
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.report.name
    }
}

impl<K> Clone for KeyedRateLimitHandle<K> {
    fn clone(&self) -> Self {
        KeyedRateLimitHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedRateLimitHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
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
///
/// The key comes from the request, so a call is decided in `call`, after `poll_ready` has polled
/// the inner service. A call rejected with [`Limited`](super::Limited) replaces the inner service
/// with a clone of it, to give back what its readiness may hold for the call (a permit of a limit
/// below, a place in a `Buffer`): each rejection pays that clone, an allocation when the inner
/// service is boxed (a `BoxCloneSyncService` stack), besides the one for its `Limited`. A call
/// that waits for its permit does the same, and its future polls a clone of the inner service
/// ready only once the permit is due: one hot key's sleeping calls hold nothing below that other
/// keys' calls could use meanwhile.
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
        match self.shared.acquire(&key, now, self.shared.max_wait) {
            Ok((grant, _)) if grant.delay == 0 => ResponseFuture::running(self.inner.call(request)),
            Ok((grant, id)) => {
                self.shared.report.delayed(grant.delay);
                ResponseFuture::waiting(
                    now + grant.delay,
                    now.saturating_add(self.shared.max_wait),
                    super::service::unpolled(&mut self.inner),
                    false,
                    request,
                    Box::new(KeyedReservation {
                        shared: self.shared.clone(),
                        key,
                        id,
                        grant,
                    }),
                )
            }
            Err(retry) => {
                super::service::drop_readiness(&mut self.inner);
                ResponseFuture::limited(self.shared.report.limited(retry))
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::RateLimitLayer;

    /// 10 000 distinct keys at one instant, every one busy, through a table of 1 024: each new
    /// key makes room, and doing so looks at a bounded number of entries, not at the shard.
    #[test]
    fn making_room_among_busy_keys_visits_a_bounded_number_of_entries() {
        let config = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .max_keys(1_024)
            .validate()
            .unwrap();
        let shared = KeyedShared::<u64>::new(config);
        let mut most = 0;
        for key in 0..10_000u64 {
            let before = shared.visited.load(Ordering::Relaxed);
            assert!(shared.acquire(&key, 0, shared.max_wait).is_ok());
            most = most.max(shared.visited.load(Ordering::Relaxed) - before);
        }
        assert_eq!(shared.keys.load(Ordering::Relaxed), 1_024);
        assert!(most <= 2, "{most} entries visited by one call");
    }

    /// 1 000 distinct busy keys at one instant, in a table sized by the rule in the type's docs
    /// (`N + 16·√N + 16`, 1 522 for 1 000 keys): every shard holds its share, so every key is
    /// tracked and none lost its budget. With `max_keys` 10% above the keys (1 100, 16 shards of
    /// 68), the same keys overflow a shard, and some are evicted.
    #[test]
    fn max_keys_by_the_sizing_rule_holds_every_busy_key() {
        const N: usize = 1_000;
        let max_keys = N + (16.0 * (N as f64).sqrt()).ceil() as usize + 16;
        assert_eq!(max_keys, 1_522);
        let config = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .max_keys(max_keys)
            .validate()
            .unwrap();
        let shared = KeyedShared::<String>::new(config);
        for n in 0..N {
            assert!(shared.acquire(&format!("key-{n}"), 0, 0).is_ok());
        }
        assert_eq!(shared.keys.load(Ordering::Relaxed), N);
        for n in 0..N {
            let key = format!("key-{n}");
            assert!(
                shared.shard(&key).lock().unwrap().map.contains_key(&key),
                "{key} evicted"
            );
        }

        let config = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .max_keys(1_100)
            .validate()
            .unwrap();
        let flat = KeyedShared::<String>::new(config);
        for n in 0..N {
            assert!(flat.acquire(&format!("key-{n}"), 0, 0).is_ok());
        }
        let tracked = flat.keys.load(Ordering::Relaxed);
        assert!(tracked < N, "{tracked} of {N} keys tracked in 1 100");
    }

    /// One key's 10 000 waiters at 10 000 a second, all but the latest given up oldest first: each
    /// becomes a hole of the key's entry. A quarter of the holes pass, as many are taken, earliest
    /// first, and the latest waiter given up folds the rest back into the key's TAT. Each hole
    /// costs a bounded number of operations on the entry's ordered set of holes (each O(log n))
    /// under the shard's lock, not a walk over every hole.
    #[test]
    fn holes_given_back_oldest_first_cost_a_bounded_number_of_looks_each() {
        const N: u64 = 10_000;
        const T: u64 = 100_000;
        const KEY: u64 = 7;
        let config = RateLimitLayer::builder()
            .rate(10_000, Duration::from_secs(1))
            .burst(1)
            .max_wait(Duration::from_secs(10))
            .validate()
            .unwrap();
        let shared = KeyedShared::<u64>::new(config);
        let max_wait = shared.max_wait;
        shared.acquire(&KEY, 0, 0).unwrap();
        let grants: Vec<(Grant, u64)> = (0..N)
            .map(|_| shared.acquire(&KEY, 0, max_wait).unwrap())
            .collect();
        let (&(latest, id), earlier) = grants.split_last().unwrap();
        for &(grant, id) in earlier {
            shared.refund(&KEY, id, grant);
        }
        // At `N/4 × T` the holes of TAT up to `N/4 × T` have passed; the next `N/4` are taken.
        let now = N / 4 * T;
        for n in 1..=N / 4 {
            let (grant, _) = shared.acquire(&KEY, now, max_wait).unwrap();
            assert_eq!(grant.tat, (N / 4 + n) * T);
        }
        shared.refund(&KEY, id, latest);
        let shard = shared.shard(&KEY).lock().unwrap();
        let entry = &shard.map[&KEY];
        assert_eq!((entry.tat, entry.holes.len()), (N / 2 * T, 0));
        let visited = entry.holes.visited.get();
        assert!(visited < 20 * N as usize, "{visited} holes looked at");
    }

    /// A refund that moves a key's TAT back moves it forward in the eviction order: once idle it
    /// goes before a busy key, though it was busier than that key when last ordered.
    #[test]
    fn a_refund_moves_a_key_forward_in_the_eviction_order() {
        const S: u64 = 1_000_000_000;
        let config = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .burst(1)
            .max_wait(Duration::from_secs(10))
            .max_keys(2)
            .validate()
            .unwrap();
        let shared = KeyedShared::<&str>::new(config);
        shared.acquire(&"a", 0, shared.max_wait).unwrap();
        let (waiting, a) = shared.acquire(&"a", 0, shared.max_wait).unwrap();
        assert_eq!(waiting.tat, 2 * S);
        shared.acquire(&"b", 0, shared.max_wait).unwrap();
        // The shard is full: "a" is found to be busier than when it came, and busy "b" goes.
        shared.acquire(&"c", 8 * S / 10, shared.max_wait).unwrap();
        // The waiter of "a" is dropped: its TAT is back at 1 s.
        shared.refund(&"a", a, waiting);
        // At 1.5 s "a" is idle and "c" (TAT 1.8 s) is not: "a" makes room for "d".
        shared.acquire(&"d", 15 * S / 10, shared.max_wait).unwrap();
        let shard = shared.shards[0].lock().unwrap();
        let mut keys: Vec<_> = shard.map.keys().map(|key| **key).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["c", "d"]);
    }

    /// A hot key used, found behind in the eviction order as a new key makes room (so queued
    /// again at its TAT), then refunded (so queued again, earlier): each round leaves stale
    /// elements in the shard's heap, and the heap is rebuilt whenever they pile up, so it stays
    /// within its bound. A warm key used in every round is ahead of its place when the heap is
    /// rebuilt, and the rebuild puts it at its TAT. Evictions match a scan of the shard
    /// throughout, and at the end, when every key is idle.
    #[test]
    fn stale_elements_from_refunds_are_dropped_by_a_rebuild() {
        const S: u64 = 1_000_000_000;
        const HOT: u64 = 0;
        const WARM: u64 = 1;
        let config = RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .burst(1)
            .max_wait(Duration::from_secs(1_000))
            .max_keys(3)
            .validate()
            .unwrap();
        let shared = KeyedShared::<u64>::new(config);
        let mut scanned = Scanned::default();
        let acquire = |scanned: &mut Scanned, key, now| {
            let got = shared.acquire(&key, now, shared.max_wait);
            assert_eq!(got, scanned.acquire(&shared, key, now), "key {key}");
            got.expect("within max_wait")
        };
        let check = |scanned: &Scanned| {
            let shard = shared.shards[0].lock().unwrap();
            let (kept, expected) = scanned.compare(&shard);
            assert_eq!(kept, expected);
            assert!(shard.by_tat.len() <= 2 * shard.map.len() + STALE_SLACK);
            shard.by_tat.len()
        };
        acquire(&mut scanned, HOT, 0);
        acquire(&mut scanned, WARM, 0);
        let mut most = 0;
        for round in 2..200 {
            // The hot key waits for its next slot...
            let (grant, id) = acquire(&mut scanned, HOT, 0);
            // ...a new key evicts the last one, passing the hot key on the way (found behind,
            // queued again at its TAT)...
            acquire(&mut scanned, round, 0);
            // ...the warm key moves ahead of its place...
            acquire(&mut scanned, WARM, 0);
            // ...and the hot key's wait is given up: its TAT goes back, and it is queued again.
            shared.refund(&HOT, id, grant);
            scanned.refund(shared.interval, HOT, id, grant);
            most = most.max(check(&scanned));
        }
        let rebuilds = shared.rebuilds.load(Ordering::Relaxed);
        assert!(rebuilds >= 5, "{rebuilds} rebuilds in 200 rounds");
        assert_eq!(
            most,
            3 * 2 + STALE_SLACK,
            "the heap grows to its bound, no further"
        );
        // Every key is idle: a new key evicts them all, as a scan would.
        acquire(&mut scanned, 1_000, 10_000 * S);
        check(&scanned);
        assert_eq!(shared.shards[0].lock().unwrap().map.len(), 1);
    }

    /// Proptest's configuration with `cases` cases and a fixed seed, so that every run tries the
    /// same cases; a seed in `PROPTEST_RNG_SEED` still takes precedence.
    fn seeded(cases: u32) -> proptest::prelude::ProptestConfig {
        use proptest::test_runner::RngSeed;
        let mut config = proptest::prelude::ProptestConfig::with_cases(cases);
        if config.rng_seed == RngSeed::Random {
            config.rng_seed = RngSeed::Fixed(0x05EA_0A11);
        }
        config
    }

    /// The table as a scan of the shard keeps it: every idle key goes when a new key finds the
    /// shard full, else the one with the lowest TAT (the earliest made, on a tie). Each key's
    /// budget is kept with the limiter's own arithmetic (`decide`, `Holes`, the refund's
    /// steps), so comparing with it checks which keys are kept and that eviction leaves the
    /// budgets it keeps alone, not the arithmetic: [`Runs`] checks that from the rate's
    /// definition.
    #[derive(Default)]
    struct Scanned {
        map: HashMap<u64, (u64, Holes, u64)>,
        next_id: u64,
    }

    impl Scanned {
        /// The shard's keys and the scan's, each as sorted `(key, tat, id)`.
        #[allow(clippy::type_complexity)]
        fn compare(&self, shard: &Shard<u64>) -> (Vec<(u64, u64, u64)>, Vec<(u64, u64, u64)>) {
            let mut kept: Vec<_> = shard
                .map
                .iter()
                .map(|(key, entry)| (**key, entry.tat, entry.id))
                .collect();
            let mut expected: Vec<_> = self
                .map
                .iter()
                .map(|(key, (tat, _, id))| (*key, *tat, *id))
                .collect();
            kept.sort_unstable();
            expected.sort_unstable();
            (kept, expected)
        }

        fn acquire(
            &mut self,
            shared: &KeyedShared<u64>,
            key: u64,
            now: u64,
        ) -> Result<(Grant, u64), u64> {
            let (interval, tolerance, max_wait) =
                (shared.interval, shared.tolerance, shared.max_wait);
            if let Some((tat, holes, id)) = self.map.get_mut(&key) {
                let mut hole_retry = u64::MAX;
                if !holes.is_empty() {
                    match holes.take(now, interval, tolerance, max_wait) {
                        Ok(grant) => return Ok((grant, *id)),
                        Err(retry) => hole_retry = retry,
                    }
                }
                let (next, delay) = decide(*tat, now, interval, tolerance, max_wait)
                    .map_err(|retry| retry.min(hole_retry))?;
                *tat = next;
                return Ok((Grant { delay, tat: next }, *id));
            }
            let (tat, delay) = decide(0, now, interval, tolerance, max_wait)?;
            if self.map.len() >= shared.shard_capacity {
                self.map.retain(|_, (tat, _, _)| *tat > now);
                if self.map.len() >= shared.shard_capacity {
                    let closest = self.map.iter().min_by_key(|(_, (tat, _, id))| (*tat, *id));
                    let closest = *closest.unwrap().0;
                    self.map.remove(&closest);
                }
            }
            let id = self.next_id;
            self.next_id += 1;
            self.map.insert(key, (tat, Holes::default(), id));
            Ok((Grant { delay, tat }, id))
        }

        fn refund(&mut self, interval: u64, key: u64, id: u64, grant: Grant) {
            let Some((tat, holes, _)) = self.map.get_mut(&key).filter(|entry| entry.2 == id) else {
                return;
            };
            if *tat == grant.tat {
                *tat -= interval;
            } else {
                holes.insert(grant.tat);
            }
            while holes.remove(*tat) {
                *tat -= interval;
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(seeded(512))]

        /// Under random calls, refunds and time, the heap by TAT evicts exactly the keys a scan
        /// of the shard would, and leaves the budgets of the keys it keeps as they were (the
        /// scan's budgets use the limiter's arithmetic: `every_entry_keeps_to_its_rate` checks
        /// that).
        #[test]
        fn evicts_as_a_scan_of_the_shard_would(
            ops in proptest::collection::vec(
                (0u64..8, 0u64..4, proptest::bool::weighted(0.3), proptest::prelude::any::<proptest::sample::Index>()),
                1..200,
            ),
        ) {
            const S: u64 = 1_000_000_000;
            let config = RateLimitLayer::builder()
                .rate(1, Duration::from_secs(1))
                .burst(2)
                .max_wait(Duration::from_secs(2))
                .max_keys(4)
                .validate()
                .unwrap();
            let shared = KeyedShared::<u64>::new(config);
            let mut scanned = Scanned::default();
            let mut grants = Vec::new();
            let mut now = 0;
            for (key, advance, refund, index) in ops {
                now += advance * S / 2;
                if refund && !grants.is_empty() {
                    let (key, id, grant) = grants.swap_remove(index.index(grants.len()));
                    shared.refund(&key, id, grant);
                    scanned.refund(shared.interval, key, id, grant);
                } else {
                    let got = shared.acquire(&key, now, shared.max_wait);
                    proptest::prop_assert_eq!(got, scanned.acquire(&shared, key, now));
                    if let Ok((grant, id)) = got {
                        grants.push((key, id, grant));
                    }
                }
                let shard = shared.shards[0].lock().unwrap();
                let (kept, expected) = scanned.compare(&shard);
                proptest::prop_assert_eq!(kept, expected);
                proptest::prop_assert!(shard.by_tat.len() <= 2 * shard.map.len() + STALE_SLACK);
            }
        }
    }

    /// One entry's grants (a key between evictions) as the rate's definition sees them, written
    /// from it rather than from the limiter's arithmetic: with an interval `T` and a burst `B`,
    /// any window of `w` holds at most `B + ⌊w/T⌋` grants, counted where they run. A grant runs
    /// no earlier than it is asked for and, in the order of their slots, no earlier than the
    /// grants before it; one that takes the slot of a grant given back may run before them.
    #[derive(Default)]
    struct Runs {
        /// When each grant not given back runs, with the grant's number, in the order granted.
        runs: Vec<(u64, usize)>,
        /// Whether a grant other than the last was given back. Until then the grants are those
        /// of an entry that never gave any back, and each runs at the earliest time the
        /// definition allows.
        holed: bool,
    }

    impl Runs {
        /// The earliest time, from `now` and the last grant's, at which one more grant keeps
        /// every window ending with it within the bound: with the `n`-th grant before it (the
        /// last being the first), `n + 1` grants run in a window from that grant's time, so at
        /// least `(n + 1 − B) × T` after it.
        fn earliest(&self, now: u64, interval: u64, burst: u64) -> u64 {
            let last = self.runs.last().map_or(0, |&(run, _)| run);
            self.runs
                .iter()
                .rev()
                .enumerate()
                .fold(now.max(last), |at, (n, &(run, _))| {
                    let grants = n as u64 + 2;
                    at.max(run + grants.saturating_sub(burst) * interval)
                })
        }

        /// Whether every window holds at most `B + ⌊w/T⌋` of the grants, in whatever order they
        /// run.
        fn within_rate(&self, interval: u64, burst: u64) -> bool {
            let mut runs: Vec<u64> = self.runs.iter().map(|&(run, _)| run).collect();
            runs.sort_unstable();
            (0..runs.len()).all(|i| {
                (i..runs.len())
                    .all(|j| (j - i + 1) as u64 <= burst + (runs[j] - runs[i]) / interval)
            })
        }
    }

    proptest::proptest! {
        #![proptest_config(seeded(512))]

        /// Under random calls, waiters given up before their turn, time and evictions, every
        /// key keeps to its rate between evictions, as the rate's definition says: a new entry
        /// starts with a full budget; while no grant but the latest has been given back, each
        /// grant runs at the earliest time the definition allows, and a call is limited only
        /// when that time is more than `max_wait` away (its retry after then); whatever was given
        /// back, no window holds more grants than the bound.
        #[test]
        fn every_entry_keeps_to_its_rate(
            burst in 1u64..4,
            max_wait_halves in 0u64..12,
            ops in proptest::collection::vec(
                (
                    0u64..5,
                    proptest::prop_oneof![3 => proptest::strategy::Just(0u64), 1 => 1u64..3],
                    proptest::bool::weighted(0.3),
                    proptest::prelude::any::<proptest::sample::Index>(),
                ),
                1..200,
            ),
        ) {
            const S: u64 = 1_000_000_000;
            let interval = S;
            let max_wait = max_wait_halves * S / 2;
            let config = RateLimitLayer::builder()
                .rate(1, Duration::from_secs(1))
                .burst(burst)
                .max_wait(Duration::from_nanos(max_wait))
                .max_keys(4)
                .validate()
                .unwrap();
            let shared = KeyedShared::<u64>::new(config);
            let mut entries: HashMap<(u64, u64), Runs> = HashMap::new();
            // The entry each key had when last granted: a limited call was asked of it, as a
            // new entry is never limited.
            let mut current: HashMap<u64, u64> = HashMap::new();
            // Grants whose waiters have not run yet: (key, entry, grant, number, run).
            let mut waiting: Vec<(u64, u64, Grant, usize, u64)> = Vec::new();
            let mut now = 0;
            for (number, (key, advance, give_up, index)) in ops.into_iter().enumerate() {
                now += advance * S / 2;
                waiting.retain(|&(.., run)| run > now);
                if give_up && !waiting.is_empty() {
                    let (key, id, grant, given, _) = waiting.swap_remove(index.index(waiting.len()));
                    shared.refund(&key, id, grant);
                    let entry = entries.get_mut(&(key, id)).unwrap();
                    let last = entry.runs.last().map(|&(_, last)| last);
                    entry.holed |= last != Some(given);
                    entry.runs.retain(|&(_, n)| n != given);
                    continue;
                }
                match shared.acquire(&key, now, shared.max_wait) {
                    Ok((grant, id)) => {
                        let run = now + grant.delay;
                        proptest::prop_assert!(grant.delay <= max_wait);
                        match current.insert(key, id) {
                            Some(before) if before == id => {
                                let entry = &entries[&(key, id)];
                                if !entry.holed {
                                    proptest::prop_assert_eq!(
                                        run,
                                        entry.earliest(now, interval, burst),
                                        "key {} at {}", key, now
                                    );
                                }
                            }
                            _ => proptest::prop_assert_eq!(grant.delay, 0, "a new entry's budget is full"),
                        }
                        let entry = entries.entry((key, id)).or_default();
                        entry.runs.push((run, number));
                        proptest::prop_assert!(
                            entry.within_rate(interval, burst),
                            "key {} at {}: {:?}", key, now, entry.runs
                        );
                        if grant.delay > 0 {
                            waiting.push((key, id, grant, number, run));
                        }
                    }
                    Err(retry) => {
                        proptest::prop_assert!(retry > max_wait);
                        let id = current.get(&key).copied();
                        proptest::prop_assert!(id.is_some(), "a new entry's budget is full");
                        let entry = &entries[&(key, id.unwrap())];
                        if !entry.holed {
                            let earliest = entry.earliest(now, interval, burst);
                            proptest::prop_assert_eq!(retry, earliest - now, "key {} at {}", key, now);
                        }
                    }
                }
            }
        }
    }
}
