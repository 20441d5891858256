//! [`Discovery`]: the stream of endpoint changes every discovery source here produces.

use crate::{diff::Tracker, latest::Latest};
use futures_core::Stream;
use seawall_balance::EndpointMeta;
use std::{
    any::Any,
    collections::VecDeque,
    convert::Infallible,
    fmt,
    hash::Hash,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{Mutex, PoisonError},
    task::{Context, Poll},
};
use tokio::{runtime::Handle, task::AbortHandle};
use tower::discover::Change;

/// A stream of endpoint inserts and removes: a [`tower::discover::Discover`] that a balancer
/// (seawall's `BalanceLayer`, tower's `p2c::Balance`) consumes.
///
/// Sources that change over time (a watch channel, DNS) run a task that hands the stream the
/// latest endpoint list it has; the task is aborted when the stream is dropped. The stream turns
/// that list into changes as it is read, against the set it has sent so far, and calls `make`
/// for each insert as it yields it: a stream read seldom (tower's `p2c::Balance` reads discovery
/// only while it is polled for readiness) or not yet (built long before a balancer takes it)
/// gets the latest list, not every list in between, and holds no more than the changes left of
/// the list it is reading and the newest list (two, when its source offers one more before the
/// stream has taken the last), however often the source changes. A list that comes while the
/// changes of the one before are still being read waits until they are out, and drops those it
/// no longer calls for: no service is made for a key the newest list has left out.
pub struct Discovery<K, S> {
    // Behind a mutex only so that the stream is `Sync` whatever `make` is: the stream itself
    // reaches it through `&mut self`, without locking.
    inner: Mutex<Inner<K, S>>,
    task: Option<AbortHandle>,
}

enum Inner<K, S> {
    /// Changes made when the stream was built; the stream ends after them.
    Ready(VecDeque<Change<K, S>>),
    /// Lists handed over by a source.
    Lists(Box<dyn Source<K, S> + Send>),
}

/// What the stream reads changes from, with the key's bounds hidden so that the stream needs
/// none.
trait Source<K, S> {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Change<K, S>>>;

    /// How many endpoints the stream has sent (inserted and not removed), how many changes wait
    /// to be yielded, and whether a newer list waits behind them.
    fn counts(&self) -> (usize, usize, bool);
}

/// A source's lists, and what the stream has sent of them.
struct Lists<K, M, P> {
    latest: Latest<Vec<K>>,
    /// The set sent so far: a key is added as its insert is yielded, dropped as its remove is.
    tracker: Tracker<K>,
    make: M,
    /// Reports a panic in `make` for a key, with the panic's message.
    panicked: P,
    /// The runtime the source was built in, entered to call `make` (which may spawn, as a
    /// connection pool does) wherever the stream is read.
    runtime: Handle,
    /// The changes of the list being read, yet to be yielded: inserts, then removes.
    inserts: VecDeque<K>,
    removes: VecDeque<K>,
    /// Whether an insert of the list being read has gone out: until one has, its removes would
    /// leave the balancer without the endpoints of that list.
    inserted: bool,
    /// The newest list that came while those changes were being read, to be compared with
    /// `tracker` once they are all out. Changes it no longer calls for are dropped as it comes
    /// (and the removes, once no insert is left and none has gone out: see `hold`).
    held: Option<Vec<K>>,
}

impl<K, S> Discovery<K, S> {
    /// A stream of `changes`, ending after them.
    pub(crate) fn ready(changes: VecDeque<Change<K, S>>) -> Self {
        Discovery {
            inner: Mutex::new(Inner::Ready(changes)),
            task: None,
        }
    }

    /// A stream of the changes between the lists `latest` hands over, `make` turning each key
    /// inserted into a service. A key whose `make` panics is left out, `panicked` reporting it,
    /// and tried again with the next list. `task`, if any, feeds `latest`: it is aborted with the
    /// stream.
    ///
    /// Must be called inside a Tokio runtime.
    pub(crate) fn lists<M, P>(
        latest: Latest<Vec<K>>,
        tracker: Tracker<K>,
        make: M,
        panicked: P,
        task: Option<AbortHandle>,
    ) -> Self
    where
        K: Hash + Eq + Clone + Send + 'static,
        M: FnMut(&K) -> S + Send + 'static,
        P: Fn(&K, &str) + Send + 'static,
    {
        let lists = Lists {
            latest,
            tracker,
            make,
            panicked,
            runtime: Handle::current(),
            inserts: VecDeque::new(),
            removes: VecDeque::new(),
            inserted: false,
            held: None,
        };
        Discovery {
            inner: Mutex::new(Inner::Lists(Box::new(lists))),
            task,
        }
    }
}

impl<K: Hash + Eq + Clone, M, P> Lists<K, M, P> {
    /// Whether changes wait to be yielded.
    fn pending(&self) -> bool {
        !self.inserts.is_empty() || !self.removes.is_empty()
    }

    /// Holds `next` aside until the changes still to yield are out, dropping those it no longer
    /// calls for: an insert of a key it leaves out or lists with another weight or zone (its
    /// next comparison inserts the key as `next` has it, if at all), a remove of a key it still
    /// lists. So no service is made for a key the newest list has left out, and each list's
    /// changes go out whole, inserts before removes, before the next is compared: a list that
    /// comes before every change is read cannot keep the ones at the back from going out.
    ///
    /// Once `next` leaves no insert to yield, and none of the list being read has gone out, the
    /// removes left are dropped too: sent, they would leave the balancer without the endpoints
    /// of either list. They are not lost: their keys stay in the set sent and out of `next`, so
    /// the comparison of `next` (or of whichever list comes after it) removes them again, after
    /// inserting its own keys.
    ///
    /// Looking `next` over runs the keys' own code (`Hash`, `Eq`, `EndpointMeta`) on the
    /// stream's reader: a panic there leaves `next` out, logged as an error, as if it had not
    /// come; the changes still to yield, and a list held before it, are kept. It runs less of
    /// that code than comparing `next` does (a weight or zone is read only for a key whose insert
    /// waits), so `next` can pass here and panic only when compared: by then it has replaced the
    /// list held before it, and the changes it dropped here stay dropped.
    fn hold(&mut self, next: Vec<K>) {
        if self.pending() {
            let (tracker, inserts, removes) = (&self.tracker, &self.inserts, &self.removes);
            let wanted = catch_unwind(AssertUnwindSafe(|| {
                tracker.still_called_for(&next, inserts, removes)
            }));
            let (inserts, removes) = match wanted {
                Ok(wanted) => wanted,
                Err(panic) => return compare_panicked(&*panic),
            };
            let mut inserts = inserts.into_iter();
            self.inserts.retain(|_| inserts.next().unwrap_or(true));
            let mut removes = removes.into_iter();
            self.removes.retain(|_| removes.next().unwrap_or(true));
            if self.inserts.is_empty() && !self.inserted {
                self.removes.clear();
            }
        }
        self.held = Some(next);
    }

    /// Sets the changes to yield to those from the set sent to `next`; called with none left.
    /// Inserts go first: a balancer applies changes one at a time, and removing first would leave
    /// it, for a moment, without the endpoints of either list (empty, when the whole set turns
    /// over).
    ///
    /// The comparison runs the keys' own code (`Hash`, `Eq`, `Clone`, `EndpointMeta`) on the
    /// stream's reader: a panic there leaves `next` out, logged as an error, with no changes to
    /// yield. The set sent is only read here, so the next list is compared with it as it was;
    /// until then it stays as it is, and may match no list published when `hold` dropped
    /// changes for `next`.
    fn compare(&mut self, next: Vec<K>) {
        debug_assert!(
            !self.pending(),
            "a list is compared once the last one's changes are out"
        );
        let tracker = &self.tracker;
        match catch_unwind(AssertUnwindSafe(|| tracker.diff(next))) {
            Ok((inserts, removes)) => {
                self.inserts = inserts.into();
                self.removes = removes.into();
                self.inserted = false;
            }
            Err(panic) => compare_panicked(&*panic),
        }
    }
}

/// Logs a list left out because a key's own code panicked as the list was compared.
fn compare_panicked(panic: &(dyn Any + Send)) {
    tracing::error!(panic = seawall_core::event::panics::message(panic), "seawall discover could not compare an endpoint list (a key's Hash, Eq, Clone or EndpointMeta panicked); leaving that list out");
}

impl<K, S, M, P> Source<K, S> for Lists<K, M, P>
where
    K: Hash + Eq + Clone,
    M: FnMut(&K) -> S,
    P: Fn(&K, &str),
{
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Change<K, S>>> {
        // Whether a list has been compared in this call: one whose changes all drop out (every
        // `make` panicking) is followed by the next list in the next call, so that lists coming
        // as fast as they are compared do not hold the reader's task (a balancer, with its own
        // work to do) here.
        let mut compared = false;
        loop {
            // A list that came while the last one's changes were being yielded is held aside
            // until they are out, and drops those it no longer calls for.
            if let Some(next) = self.latest.take() {
                self.hold(next);
            }
            if let Some(key) = self.inserts.pop_front() {
                let made = {
                    let _entered = self.runtime.enter();
                    catch_unwind(AssertUnwindSafe(|| (self.make)(&key)))
                };
                match made {
                    Ok(service) => {
                        self.tracker.inserted(key.clone());
                        self.inserted = true;
                        return Poll::Ready(Some(Change::Insert(key, service)));
                    }
                    // The key stays out of the set sent (or keeps the metadata it was sent with),
                    // so the next list inserts it again; the rest of this one goes on.
                    Err(panic) => {
                        (self.panicked)(&key, seawall_core::event::panics::message(&*panic))
                    }
                }
                continue;
            }
            if let Some(key) = self.removes.pop_front() {
                self.tracker.removed(&key);
                return Poll::Ready(Some(Change::Remove(key)));
            }
            // The last list's changes are all out: on to the newest list, held or to come.
            let next = match self.held.take() {
                Some(next) => next,
                None => match std::task::ready!(self.latest.poll_next(cx)) {
                    Some(next) => next,
                    None => return Poll::Ready(None),
                },
            };
            if compared {
                self.held = Some(next);
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            compared = true;
            self.compare(next);
        }
    }

    fn counts(&self) -> (usize, usize, bool) {
        (
            self.tracker.len(),
            self.inserts.len() + self.removes.len(),
            self.held.is_some() || self.latest.is_offered(),
        )
    }
}

impl<K, S> Stream for Discovery<K, S> {
    type Item = Result<Change<K, S>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let inner = self
            .get_mut()
            .inner
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        let change = match inner {
            Inner::Ready(changes) => Poll::Ready(changes.pop_front()),
            Inner::Lists(lists) => lists.poll_next(cx),
        };
        change.map(|change| change.map(Ok))
    }
}

// Nothing in the stream is pinned: its changes and services move out as they are yielded. A
// balancer that needs an `Unpin` discovery (tower's) so takes one whatever the services are.
impl<K, S> Unpin for Discovery<K, S> {}

impl<K, S> Drop for Discovery<K, S> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl<K, S> fmt::Debug for Discovery<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (sent, queued, newer) = match &*inner {
            Inner::Ready(changes) => (None, changes.len(), false),
            Inner::Lists(lists) => {
                let (sent, queued, newer) = lists.counts();
                (Some(sent), queued, newer)
            }
        };
        f.debug_struct("Discovery")
            .field("endpoints", &sent)
            .field("queued", &queued)
            .field("newer_list", &newer)
            .field("live", &self.task.is_some())
            .finish()
    }
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
    let changes = endpoints
        .into_iter()
        .map(|(key, service)| Change::Insert(key, service))
        .collect();
    Discovery::ready(changes)
}

/// A fixed list of endpoint keys (addresses), with `make` turning each into a service. `make` is
/// called here, once per key (equal keys count once).
pub fn from_list<K, S, M>(keys: impl IntoIterator<Item = K>, mut make: M) -> Discovery<K, S>
where
    K: Hash + Eq + Clone,
    M: FnMut(&K) -> S,
{
    let (keys, _) = Tracker::new().update(keys);
    let changes = keys
        .into_iter()
        .map(|key| {
            let service = make(&key);
            Change::Insert(key, service)
        })
        .collect();
    Discovery::ready(changes)
}

/// Endpoints from a watch channel the application updates: the latest list is compared with the
/// set the stream has sent and the differences are sent as inserts and removes; `make` turns a
/// new key into a service. The new keys are inserted before the old ones are removed, so a
/// balancer never sees its set empty while it turns over, unless `make` panics for every new key:
/// those keys are left out, and the old ones the list dropped are still removed.
///
/// A key equal to one already published but with another [`weight`](EndpointMeta::weight) or
/// [`zone`](EndpointMeta::zone) (a [`Tagged`](seawall_balance::Tagged) key whose weight changed)
/// is the same endpoint with new metadata: it is inserted again, with a service from `make`, and
/// not removed; seawall's balancer then updates the endpoint in place.
///
/// The list is compared when the stream is read: a stream read after several lists were published
/// gets the differences from the latest one alone, and `make` is called only for the keys it
/// inserts. A list published while the changes of one are still being read waits until they are
/// out, and drops those it no longer calls for (no service is made for a key it has left out);
/// when it drops every insert left before one of them has gone out, it drops the removes left
/// too, and makes them again after its own inserts.
///
/// A panic in `make` leaves that key out, logged as an error, until the next list tries it again.
/// A panic in the keys' own code (`Hash`, `Eq`, `Clone`, `EndpointMeta`) leaves the list it came
/// from out, logged as an error, and the next list is compared with the endpoints sent. A list
/// published while the changes of one are still being read is first looked over against them:
/// a panic then leaves it out and nothing else (the changes left, and a list held aside behind
/// them, still go out). Looking a list over calls less of the keys' code than comparing it with
/// the endpoints sent (a weight or zone is read only for a key whose insert waits), so a list
/// whose keys panic only when it is compared has by then already replaced the list held before
/// it and dropped the pending changes it no longer calls for: the balancer keeps the endpoints
/// sent, which may match no list published, until the next list.
///
/// A panic in the keys' `Clone` as the task following the channel copies a list off it leaves
/// that list out too, logged as an error, and the task waits for the next value on the channel.
///
/// The discovery ends when the sender is dropped (the balancer keeps the last set), once the
/// differences from the last list are read.
///
/// # Panics
///
/// Outside a Tokio runtime: the task that follows the channel is spawned on the runtime this is
/// called in, and the stream calls `make` inside it.
pub fn watch<K, S, M>(mut rx: tokio::sync::watch::Receiver<Vec<K>>, make: M) -> Discovery<K, S>
where
    K: Hash + Eq + Clone + EndpointMeta + Send + Sync + 'static,
    S: Send + 'static,
    M: FnMut(&K) -> S + Send + 'static,
{
    let Ok(runtime) = Handle::try_current() else {
        panic!("seawall discover::watch must be called inside a Tokio runtime");
    };
    let (publisher, latest) = crate::latest::channel();
    let task = runtime.spawn(async move {
        loop {
            // The list is copied off the channel here, which runs the keys' `Clone`: a panic
            // leaves this list out, as a panic comparing it would, and the task waits for the
            // next.
            match catch_unwind(AssertUnwindSafe(|| rx.borrow_and_update().clone())) {
                Ok(list) => publisher.publish(list),
                Err(panic) => {
                    tracing::error!(panic = seawall_core::event::panics::message(&*panic), "seawall discover could not copy a watched endpoint list (a key's Clone panicked); leaving that list out");
                }
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    let panicked = |_: &K, panic: &str| {
        tracing::error!(%panic, "seawall discover make panicked for a watched key; leaving it out until the next list");
    };
    Discovery::lists(
        latest,
        Tracker::with_meta(),
        make,
        panicked,
        Some(task.abort_handle()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::latest;
    use std::{
        sync::{
            atomic::{AtomicUsize, Ordering::Relaxed},
            Arc, Once,
        },
        task::{Wake, Waker},
    };

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Relaxed);
        }
    }

    /// Keeps the default panic hook from printing the panics `make` raises on purpose here, and
    /// only them.
    fn hide_make_panics() {
        static HIDDEN: Once = Once::new();
        HIDDEN.call_once(|| {
            let hook = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                if info.payload().downcast_ref::<&str>() != Some(&"no service") {
                    hook(info);
                }
            }));
        });
    }

    #[tokio::test]
    async fn lists_that_come_as_fast_as_they_are_compared_leave_the_reader_its_other_work() {
        hide_make_panics();
        let (publisher, lists) = latest::channel();
        publisher.publish(vec![0u32]);
        // Every list brings one new key whose `make` panics, the next list coming meanwhile (as
        // from a source on another thread), up to a hundred lists.
        let made = Arc::new(AtomicUsize::new(0));
        let counted = made.clone();
        let make = move |key: &u32| -> u32 {
            if counted.fetch_add(1, Relaxed) < 100 {
                publisher.publish(vec![key + 1]);
            }
            panic!("no service");
        };
        let mut discovery =
            Discovery::lists(lists, Tracker::new(), make, |_: &u32, _: &str| {}, None);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        for read in 1..=3 {
            assert!(Pin::new(&mut discovery).poll_next(&mut cx).is_pending());
            assert_eq!(made.load(Relaxed), read, "one list compared per read");
            assert_eq!(wakes.0.load(Relaxed), read, "woken to read the next");
        }
    }

    /// The changes the stream yields until it waits for a list, reading on when it wakes itself
    /// (to compare the next list in a later read).
    fn read_until_pending(discovery: &mut Discovery<u32, u32>) -> Vec<(char, u32)> {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut changes = Vec::new();
        loop {
            let woken = wakes.0.load(Relaxed);
            match Pin::new(&mut *discovery).poll_next(&mut cx) {
                Poll::Ready(Some(Ok(Change::Insert(key, _)))) => changes.push(('+', key)),
                Poll::Ready(Some(Ok(Change::Remove(key)))) => changes.push(('-', key)),
                Poll::Ready(None) => return changes,
                Poll::Pending if wakes.0.load(Relaxed) > woken => {}
                Poll::Pending => return changes,
            }
        }
    }

    #[tokio::test]
    async fn a_list_that_leaves_out_every_insert_yet_to_go_out_sends_its_own_before_the_removes() {
        hide_make_panics();
        let (publisher, lists) = latest::channel();
        let publisher = Arc::new(publisher);
        let publishing = publisher.clone();
        // The first new key cannot be made, and a list without the second comes meanwhile.
        let make = move |key: &u32| -> u32 {
            if *key == 2 {
                publishing.publish(vec![4]);
                panic!("no service");
            }
            *key
        };
        let mut discovery =
            Discovery::lists(lists, Tracker::new(), make, |_: &u32, _: &str| {}, None);
        publisher.publish(vec![1]);
        assert_eq!(read_until_pending(&mut discovery), [('+', 1)]);
        // +2 (not made), +3 (left out by [4]), -1: 1 goes once 4 is in, never before.
        publisher.publish(vec![2, 3]);
        assert_eq!(read_until_pending(&mut discovery), [('+', 4), ('-', 1)]);
        let inner = discovery.inner.get_mut().unwrap();
        let Inner::Lists(lists) = inner else {
            unreachable!("a stream of lists")
        };
        assert_eq!(lists.counts(), (1, 0, false), "4 alone is sent");
    }
}
