//! [`Discovery`]: the stream of endpoint changes every discovery source here produces.

use crate::diff::Tracker;
use futures_core::Stream;
use seawall_balance::EndpointMeta;
use std::{
    convert::Infallible,
    fmt,
    hash::Hash,
    pin::Pin,
    task::{Context, Poll},
};
use tokio::{sync::mpsc, task::AbortHandle};
use tower::discover::Change;

/// A stream of endpoint inserts and removes: a [`tower::discover::Discover`] that a balancer
/// (seawall's `BalanceLayer`, tower's `p2c::Balance`) consumes.
///
/// Sources that change over time (a watch channel, DNS) run a task that feeds the stream; it is
/// aborted when the stream is dropped.
pub struct Discovery<K, S> {
    rx: mpsc::UnboundedReceiver<Change<K, S>>,
    task: Option<AbortHandle>,
}

impl<K, S> Discovery<K, S> {
    pub(crate) fn new(
        rx: mpsc::UnboundedReceiver<Change<K, S>>,
        task: Option<AbortHandle>,
    ) -> Self {
        Discovery { rx, task }
    }
}

impl<K, S> Stream for Discovery<K, S> {
    type Item = Result<Change<K, S>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|change| change.map(Ok))
    }
}

impl<K, S> Drop for Discovery<K, S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl<K, S> fmt::Debug for Discovery<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("queued", &self.rx.len())
            .field("live", &self.task.is_some())
            .finish()
    }
}

/// Sends the difference between the published set and `next` down `tx`, making a service for
/// each key inserted (new, or with new metadata). Inserts go first: a balancer applies changes
/// one at a time, and removing first would leave it, for a moment, without the endpoints of
/// either list (empty, when the whole set turns over). Returns `false` when the stream has been
/// dropped.
pub(crate) fn publish<K, S, M>(
    tracker: &mut Tracker<K>,
    next: impl IntoIterator<Item = K>,
    make: &mut M,
    tx: &mpsc::UnboundedSender<Change<K, S>>,
) -> bool
where
    K: Hash + Eq + Clone,
    M: FnMut(&K) -> S,
{
    let (added, removed) = tracker.update(next);
    for key in added {
        let service = make(&key);
        if tx.send(Change::Insert(key, service)).is_err() {
            return false;
        }
    }
    for key in removed {
        if tx.send(Change::Remove(key)).is_err() {
            return false;
        }
    }
    !tx.is_closed()
}

/// A fixed set of endpoints, given with their services.
///
/// ```
/// use seawall::discover::fixed;
/// use tower::service_fn;
///
/// let discovery = fixed([("a", service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }))]);
/// # drop(discovery);
/// ```
pub fn fixed<K, S>(endpoints: impl IntoIterator<Item = (K, S)>) -> Discovery<K, S> {
    let (tx, rx) = mpsc::unbounded_channel();
    for (key, service) in endpoints {
        let _ = tx.send(Change::Insert(key, service));
    }
    Discovery::new(rx, None)
}

/// A fixed list of endpoint keys (addresses), with `make` turning each into a service.
pub fn from_list<K, S, M>(keys: impl IntoIterator<Item = K>, mut make: M) -> Discovery<K, S>
where
    K: Hash + Eq + Clone,
    M: FnMut(&K) -> S,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let mut tracker = Tracker::new();
    publish(&mut tracker, keys, &mut make, &tx);
    Discovery::new(rx, None)
}

/// Endpoints from a watch channel the application updates: each new list is compared with the
/// previous one and the differences are sent as inserts and removes; `make` turns a new key into
/// a service. The new keys are inserted before the old ones are removed, so a balancer never
/// sees its set empty while it turns over.
///
/// A key equal to one already published but with another [`weight`](EndpointMeta::weight) or
/// [`zone`](EndpointMeta::zone) (a [`Tagged`](seawall_balance::Tagged) key whose weight changed)
/// is the same endpoint with new metadata: it is inserted again, with a service from `make`, and
/// not removed; seawall's balancer then updates the endpoint in place.
///
/// Must be called inside a Tokio runtime. The discovery ends when the sender is dropped (the
/// balancer keeps the last set).
pub fn watch<K, S, M>(mut rx: tokio::sync::watch::Receiver<Vec<K>>, mut make: M) -> Discovery<K, S>
where
    K: Hash + Eq + Clone + EndpointMeta + Send + Sync + 'static,
    S: Send + 'static,
    M: FnMut(&K) -> S + Send + 'static,
{
    let (tx, out) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        let mut tracker = Tracker::with_meta();
        loop {
            let next = rx.borrow_and_update().clone();
            if !publish(&mut tracker, next, &mut make, &tx) {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    Discovery::new(out, Some(task.abort_handle()))
}
