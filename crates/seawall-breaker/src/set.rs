//! [`BreakerSet`]: one breaker per key (per host, per endpoint), created on demand, bounded.

use crate::{
    config::BreakerConfig,
    handle::BreakerHandle,
    keyed::KeyedBreakerLayer,
    layer::BreakerLayer,
    shared::{self, Shared},
    state::{State, Transition},
};
use seawall_core::{
    classify::DefaultClassifier, config::check_range, event::Listener, metrics, ConfigError, Name,
};
use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard,
    },
};

/// The same `u64` for the same key in every process built with the same toolchain: std's hasher
/// with its fixed keys.
fn key_seed<K: Hash>(key: &K) -> u64 {
    use std::hash::BuildHasher;
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(key)
}

/// A set of independent breakers, one per key, all following one configuration.
///
/// A breaker is created the first time its key is asked for. At most `capacity` breakers are
/// kept: making room evicts the least recently asked-for breaker, preferring one that no service
/// uses any more and that is Closed (a breaker that is Open remembers a failing key, so it goes
/// after the Closed ones). A breaker in a manual state (forced open, disabled or metrics-only)
/// goes after the other idle ones: evicted, it would come back Closed the next time its key is
/// asked for. A breaker a service still uses goes after every idle one, whatever its state:
/// evicted, it would split in two, the service keeping the old breaker while the key gets a
/// fresh one. A set of 128 or more makes room for several at once: up to a 64th of it, among the
/// idle Closed breakers (beyond the one entry that must go), so a set kept full by new keys is
/// scanned once per 64th of its capacity rather than for every new key, while that many idle
/// Closed breakers are there. A service built from an evicted
/// breaker keeps working with it; asking for the key again creates a fresh one.
///
/// Looking up a key the set holds takes the set's lock for reading, shared with every other lookup
/// of a key it holds, and stamps the breaker as just used: a hash lookup, a read of the set's
/// clock, and a write of the breaker's stamp only when a key has been put in since it was last
/// stamped (the clock moves only then), so a key asked for over and over writes no memory the other
/// lookups share but the lock's. Breakers asked for between the same two new keys count as used at
/// once, their order among themselves unknown. A key the set does not hold takes the
/// lock for writing, which waits for the lookups in progress and holds up every other lookup while
/// the key is put in: for a full set, that includes making room, which scans every breaker of the
/// set. The new breaker itself is built before the lock is taken, and breakers evicted or removed
/// are let go of after it is released. A lookup waiting for the write lock waits for
/// [`unhealthy`](Self::unhealthy), which holds the read lock while it goes through every breaker,
/// and may hold up the lookups that come after it (the standard library's lock does on Linux; it
/// promises no order between readers and writers). For a service that calls many keys (a client whose
/// requests carry their host), [`keyed_layer`](Self::keyed_layer) looks the key of each call up for
/// it; for a service per endpoint, ask once when the endpoint is discovered and keep the layer or
/// the service.
///
/// Lookups of one key run on several threads at once, under the read lock, so the set is `Send`
/// and `Sync` only when its key is both (and its classifier is): a key type that is `Send` but not
/// `Sync` (one holding a `Cell`) makes a set that cannot be shared between threads.
///
/// Every breaker of the set carries the set's name, so their counters add up under it. None of
/// them sets `seawall_breaker_state` (it would show whichever key changed last); the set reports
/// `seawall_breaker_keys_open` instead: how many of the breakers it holds are Open, HalfOpen or
/// ForcedOpen. [`handle`](Self::handle) tells one key's state.
///
/// ```
/// use seawall::breaker::{BreakerConfig, BreakerSet};
///
/// let per_host = BreakerSet::new(BreakerConfig::builder().name("per-host").build_config()?, 1024)?;
/// assert_eq!(per_host.name().as_str(), "per-host");
/// let a = per_host.get(&"10.0.0.1:80");
/// let again = per_host.get(&"10.0.0.1:80");
/// assert!(a.handle().same_breaker(&again.handle()));
/// assert!(!a.handle().same_breaker(&per_host.get(&"10.0.0.2:80").handle()));
/// # Ok::<(), seawall::ConfigError>(())
/// ```
pub struct BreakerSet<K, C = DefaultClassifier> {
    inner: Arc<Inner<K, C>>,
}

struct Inner<K, C> {
    config: BreakerConfig,
    classifier: C,
    capacity: usize,
    /// Read for a key the set holds, written to put a key in or take one out.
    map: RwLock<Map<K>>,
    /// Counts the keys put in, for the least recently used order: moved under the write lock
    /// only, so every lookup under the read lock reads one value, and stamps its breaker with it.
    clock: AtomicU64,
    /// `seawall_breaker_keys_open`, which every breaker of the set counts itself in.
    keys_open: ::metrics::Gauge,
}

struct Map<K> {
    entries: HashMap<K, Entry>,
    /// Listeners told which key's breaker changed: each makes, for a key, a listener bound to it
    /// for the breaker the set creates for that key.
    key_listeners: Vec<Arc<KeyListener<K>>>,
}

/// Binds a keyed listener to one key.
type KeyListener<K> = dyn Fn(&K) -> Arc<dyn Listener<Transition>> + Send + Sync;

struct Entry {
    shared: Arc<Shared>,
    /// The clock when the key was put in or last asked for: raised under the read lock, read by an
    /// eviction under the write lock (so while no lookup raises it, and no lookup takes a breaker
    /// into use).
    last_used: AtomicU64,
}

impl Drop for Entry {
    /// Removed, evicted, or the set dropped: a breaker that lives on in a service no longer
    /// counts in the set's gauge.
    fn drop(&mut self) {
        let shared = &*self.shared;
        shared::in_drop(&shared.name, || shared.leave_set());
    }
}

impl<K: Hash + Eq + Clone> BreakerSet<K> {
    /// Up to `capacity` breakers (in `1..=1_000_000`) following `config`, with the default
    /// classifier.
    pub fn new(config: BreakerConfig, capacity: usize) -> Result<Self, ConfigError> {
        Self::with_classifier(config, capacity, DefaultClassifier)
    }
}

impl<K: Hash + Eq + Clone, C: Clone> BreakerSet<K, C> {
    /// Up to `capacity` breakers (in `1..=1_000_000`) following `config`, classifying with
    /// `classifier`.
    pub fn with_classifier(
        config: BreakerConfig,
        capacity: usize,
        classifier: C,
    ) -> Result<Self, ConfigError> {
        check_range("capacity", capacity, 1, 1_000_000)?;
        let keys_open = metrics::gauge(metrics::BREAKER_KEYS_OPEN, &config.name);
        Ok(BreakerSet {
            inner: Arc::new(Inner {
                keys_open,
                config,
                classifier,
                capacity,
                map: RwLock::new(Map {
                    entries: HashMap::new(),
                    key_listeners: Vec::new(),
                }),
                clock: AtomicU64::new(0),
            }),
        })
    }

    // Nothing in the set can be left half-updated by a panic; keep going after one.
    fn read(&self) -> RwLockReadGuard<'_, Map<K>> {
        self.inner
            .map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Map<K>> {
        self.inner
            .map
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Stamps `entry` as just used and takes its breaker. Under either lock: an eviction, under
    /// the write lock, sees every stamp and every breaker taken into use.
    #[inline]
    fn used(&self, entry: &Entry) -> Arc<Shared> {
        // The clock moves only under the write lock: every lookup holding a lock reads the same
        // value, and a stamp already there is not written again, so a hot key's line stays shared.
        let now = self.inner.clock.load(Ordering::Relaxed);
        if entry.last_used.load(Ordering::Relaxed) < now {
            entry.last_used.store(now, Ordering::Relaxed);
        }
        entry.shared.clone()
    }

    /// The breaker of `key`, created if there is none.
    pub fn get(&self, key: &K) -> BreakerLayer<C> {
        BreakerLayer {
            shared: self.breaker(key),
            classifier: self.inner.classifier.clone(),
        }
    }

    /// The breaker of `key`, created if there is none: what [`get`](Self::get) and a
    /// [`KeyedBreaker`](crate::KeyedBreaker)'s call look up. A key the set holds takes the read
    /// lock only.
    #[inline]
    pub(crate) fn breaker(&self, key: &K) -> Arc<Shared> {
        let key_listeners = {
            let map = self.read();
            if let Some(entry) = map.entries.get(key) {
                return self.used(entry);
            }
            map.key_listeners.clone()
        };
        self.insert(key, &key_listeners)
    }

    /// Puts a breaker for `key` in the set, unless another thread has put one in since the read
    /// lock was let go (or looks `key` up again, when a listener was registered since). The breaker is built before the write lock is taken (it registers its
    /// metrics with the recorder), and the breakers evicted to make room are let go of after it
    /// is released (each takes itself off `seawall_breaker_keys_open`).
    #[cold]
    #[inline(never)]
    fn insert(&self, key: &K, key_listeners: &[Arc<KeyListener<K>>]) -> Arc<Shared> {
        let mut config = self.inner.config.clone();
        // A seeded set stays reproducible, but each key draws its own jitter: keys that trip
        // together (one dependency's hosts) do not probe again in lockstep.
        if let Some(seed) = config.seed {
            config.seed = Some(seed ^ key_seed(key));
        }
        for bind in key_listeners {
            let listener = bind(key);
            config.listeners =
                config
                    .listeners
                    .with(move |name: &Name, transition: &Transition| {
                        listener.on_event(name, transition)
                    });
        }
        let built = Shared::keyed(&config, self.inner.keys_open.clone());
        let mut map = self.write();
        if let Some(entry) = map.entries.get(key) {
            let shared = self.used(entry);
            drop(map);
            return shared;
        }
        if map.key_listeners.len() != key_listeners.len() {
            // A listener was registered since the read lock was let go: build the breaker again
            // with it. This ends, since the list only grows.
            drop(map);
            drop(built);
            return self.breaker(key);
        }
        let evicted = match map.entries.len() >= self.inner.capacity {
            true => evict(&mut map.entries),
            false => Vec::new(),
        };
        // The new key ranks above the keys asked for before it, and below those asked for after.
        let put_in = self.inner.clock.load(Ordering::Relaxed) + 1;
        self.inner.clock.store(put_in + 1, Ordering::Relaxed);
        let entry = Entry {
            shared: built.clone(),
            last_used: AtomicU64::new(put_in),
        };
        map.entries.insert(key.clone(), entry);
        drop(map);
        drop(evicted);
        built
    }

    /// A layer whose services send each call through the breaker of its key, `key` computing a
    /// request's key (its host, its endpoint): one service for a client that calls many hosts,
    /// with one breaker per host. See [`KeyedBreakerLayer`] and
    /// [`KeyedBreaker`](crate::KeyedBreaker) for how a call is decided.
    ///
    /// Fails, naming the field, when the set's configuration asks for
    /// [`backpressure`](crate::BreakerConfigBuilder::backpressure): a `poll_ready` that waits for
    /// a breaker cannot know which breaker before the request is known.
    ///
    /// ```
    /// # async fn demo() -> Result<(), seawall::BoxError> {
    /// use seawall::{
    ///     breaker::{BreakerConfig, BreakerSet, Open},
    ///     core::error::is,
    /// };
    /// use tower::{service_fn, Layer, Service, ServiceExt};
    ///
    /// let per_host = BreakerSet::new(
    ///     BreakerConfig::builder().name("per-host").consecutive_failures(2).build_config()?,
    ///     1_024,
    /// )?;
    /// let mut client = per_host
    ///     .keyed_layer(|req: &http::Request<()>| req.uri().authority().cloned())?
    ///     .layer(service_fn(|req: http::Request<()>| async move {
    ///         match req.uri().host() {
    ///             Some("down.example") => Err::<&str, seawall::BoxError>("connection refused".into()),
    ///             _ => Ok("ok"),
    ///         }
    ///     }));
    /// let get = |uri: &str| http::Request::get(uri).body(()).unwrap();
    ///
    /// for _ in 0..2 {
    ///     let _ = client.ready().await?.call(get("http://down.example/")).await;
    /// }
    /// // down.example's breaker is open; up.example's lets calls through.
    /// let err = client.ready().await?.call(get("http://down.example/")).await.unwrap_err();
    /// assert!(is::<Open>(&*err));
    /// assert_eq!(client.ready().await?.call(get("http://up.example/")).await?, "ok");
    /// let down = http::uri::Authority::from_static("down.example");
    /// assert_eq!(per_host.unhealthy(), [Some(down)]);
    /// # Ok(())
    /// # }
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(demo()).unwrap();
    /// ```
    pub fn keyed_layer<Req, F>(&self, key: F) -> Result<KeyedBreakerLayer<K, F, C>, ConfigError>
    where
        F: Fn(&Req) -> K,
    {
        if self.inner.config.backpressure {
            return Err(ConfigError::conflict(
                "backpressure",
                "is not available for a keyed breaker layer (the key is only known in call)",
            ));
        }
        Ok(KeyedBreakerLayer::new(self.clone(), key))
    }

    /// Registers a listener told of every state change of the set's breakers with the key whose
    /// breaker changed, besides the listeners of the set's configuration (which, like the log
    /// line and the metrics, carry only the set's name). It hears the breakers the set creates
    /// from now on, so register it before asking for keys. Like those, it may hear two changes of
    /// one key's breaker made at nearly the same time on different threads out of order: order
    /// them by [`Transition::generation`], which counts each key's changes on their own (see
    /// [`BreakerConfigBuilder::on_transition`](crate::BreakerConfigBuilder::on_transition)).
    ///
    /// ```
    /// use seawall::breaker::{BreakerConfig, BreakerSet, State};
    /// use std::sync::{Arc, Mutex};
    ///
    /// let opened = Arc::new(Mutex::new(Vec::new()));
    /// let seen = opened.clone();
    /// let per_host = BreakerSet::new(BreakerConfig::builder().name("per-host").build_config()?, 64)?
    ///     .on_transition(move |host: &&str, t: &seawall::breaker::Transition| {
    ///         if t.to == State::ForcedOpen {
    ///             seen.lock().unwrap().push(host.to_string());
    ///         }
    ///     });
    /// per_host.get(&"10.0.0.2:80").handle().force_open();
    /// assert_eq!(*opened.lock().unwrap(), ["10.0.0.2:80"]);
    /// # Ok::<(), seawall::ConfigError>(())
    /// ```
    pub fn on_transition(self, listener: impl Fn(&K, &Transition) + Send + Sync + 'static) -> Self
    where
        K: Send + Sync + 'static,
    {
        let listener = Arc::new(listener);
        let bind = move |key: &K| -> Arc<dyn Listener<Transition>> {
            let (key, listener) = (key.clone(), listener.clone());
            Arc::new(move |_: &Name, transition: &Transition| listener(&key, transition))
        };
        self.write().key_listeners.push(Arc::new(bind));
        self
    }

    /// The breaker of `key`, if there is one (does not create one).
    pub fn handle(&self, key: &K) -> Option<BreakerHandle> {
        self.read().entries.get(key).map(|e| BreakerHandle {
            shared: e.shared.clone(),
        })
    }

    /// Forgets the breaker of `key`.
    pub fn remove(&self, key: &K) -> bool {
        // Let go of after the lock: it takes itself off `seawall_breaker_keys_open`.
        let removed = self.write().entries.remove(key);
        removed.is_some()
    }

    /// Forgets the breaker of `key` unless an operator put it in a manual state (forced open,
    /// disabled or metrics-only), which is kept: forgotten, it would come back Closed the next
    /// time its key is asked for. Returns whether a breaker was forgotten.
    ///
    /// For a key whose endpoint is gone for now, as when a balancer's discovery removes it (the
    /// canonical stack's per-endpoint breakers do this): a breaker left Open by the endpoint's
    /// failures no longer counts in `seawall_breaker_keys_open` nor takes a place, while an
    /// endpoint drained with [`force_open`](BreakerHandle::force_open) stays drained when it comes
    /// back.
    ///
    /// The state is read and the breaker removed under the set's lock, one step for every other
    /// user of the set. A manual change made through a [`BreakerHandle`] takes no set lock: one
    /// made while this runs is kept if it lands before the state is read; one that lands after
    /// (however soon) applies to the forgotten breaker alone, as any change through the handle of
    /// a forgotten breaker does, and the key comes back Closed. To drain an endpoint that
    /// discovery may remove at the same moment, check afterwards that the key still has the
    /// breaker you changed ([`handle`](Self::handle) and [`BreakerHandle::same_breaker`]), and
    /// change the key's current breaker (from [`get`](Self::get)) if it has not.
    pub fn remove_unless_manual(&self, key: &K) -> bool {
        let mut map = self.write();
        let removed = match map.entries.get(key) {
            Some(entry) if !is_manual(entry.shared.machine.state()) => map.entries.remove(key),
            _ => None,
        };
        drop(map);
        removed.is_some()
    }

    /// How many breakers the set holds.
    pub fn len(&self) -> usize {
        self.read().entries.len()
    }

    /// Whether the set holds no breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys whose breakers are not letting calls through, for a balancer to skip: ForcedOpen,
    /// Open until its wait is over, and HalfOpen while every probe slot is taken (the same answer
    /// as [`Breaker::is_call_permitted`](crate::Breaker::is_call_permitted)). An Open breaker whose
    /// wait is over is not listed: the next call is its probe, and a balancer that skipped it would
    /// keep a lazy breaker Open for good.
    pub fn unhealthy(&self) -> Vec<K> {
        self.read()
            .entries
            .iter()
            .filter(|(_, e)| {
                // Asked without applying a deadline, so no state changes and no listener runs
                // under the set's lock.
                let shared = &e.shared;
                !shared.machine.permits(|| shared.now())
            })
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Whether `state` is one an operator sets and only an operator leaves.
fn is_manual(state: State) -> bool {
    matches!(
        state,
        State::ForcedOpen | State::Disabled | State::MetricsOnly
    )
}

/// Makes room for one more entry: removes the least recently used among the idle Closed entries,
/// else among the idle ones in an automatic state, else among the idle ones in a manual state
/// (ForcedOpen, Disabled, MetricsOnly: evicted, an operator's choice would be lost), else among
/// those in use, in the same order. An entry in use goes last: evicted, its service would keep a
/// breaker the set no longer reaches, and its key would get a fresh twin. From 128 entries on, it
/// removes up to a 64th of them in that order, idle Closed ones only after the first (at least
/// one entry): an Open breaker that remembers a failing key goes only when one entry must.
/// Returns the entries removed, for the caller to let go of once the set's lock is released.
fn evict<K: Hash + Eq + Clone>(entries: &mut HashMap<K, Entry>) -> Vec<Entry> {
    let rank = |e: &Entry| {
        let in_use = Arc::strong_count(&e.shared) > 1;
        let state = e.shared.machine.state();
        let manual = is_manual(state);
        let holds_failure = state != State::Closed;
        (
            in_use,
            manual,
            holds_failure,
            e.last_used.load(Ordering::Relaxed),
        )
    };
    let batch = entries.len() / 64;
    if batch <= 1 {
        return entries
            .iter()
            .min_by_key(|(_, e)| rank(e))
            .map(|(k, _)| k.clone())
            .and_then(|key| entries.remove(&key))
            .into_iter()
            .collect();
    }
    let mut ranked: Vec<_> = entries.iter().map(|(k, e)| (rank(e), k)).collect();
    ranked.select_nth_unstable_by_key(batch - 1, |(rank, _)| *rank);
    ranked.truncate(batch);
    ranked.sort_unstable_by_key(|(rank, _)| *rank);
    let evicted: Vec<K> = ranked
        .iter()
        .enumerate()
        .filter(|(i, ((in_use, manual, holds_failure, _), _))| {
            *i == 0 || !(*in_use || *manual || *holds_failure)
        })
        .map(|(_, (_, k))| (*k).clone())
        .collect();
    evicted
        .iter()
        .filter_map(|key| entries.remove(key))
        .collect()
}

impl<K, C> BreakerSet<K, C> {
    /// The set's name, which every breaker of the set carries in its events, logs and metrics.
    pub fn name(&self) -> &Name {
        &self.inner.config.name
    }

    /// The classifier every breaker of the set records outcomes with.
    pub(crate) fn classifier(&self) -> &C {
        &self.inner.classifier
    }
}

impl<K, C> Clone for BreakerSet<K, C> {
    fn clone(&self) -> Self {
        BreakerSet {
            inner: self.inner.clone(),
        }
    }
}

impl<K, C> fmt::Debug for BreakerSet<K, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerSet")
            .field("name", &self.inner.config.name)
            .field("capacity", &self.inner.capacity)
            .finish_non_exhaustive()
    }
}
