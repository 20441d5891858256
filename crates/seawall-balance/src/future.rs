use crate::{
    endpoint::{Endpoint, Key, Stats},
    picker::{PickCx, Skip, Tuning},
    set::Snapshot,
    shared::Shared,
    BalanceEvent, NoEndpoints,
};
use pin_project_lite::pin_project;
use rand::{rngs::SmallRng, Rng};
use seawall_core::{deadline::deadline_after, metrics, BoxError, Classify, Outcome};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{
            fence, AtomicUsize,
            Ordering::{Acquire, Relaxed, SeqCst},
        },
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    sync::futures::OwnedNotified,
    time::{sleep_until, Instant, Sleep},
};
use tower_service::Service;

/// The least a waiting call sleeps before asking the filter again.
const MIN_RECHECK: Duration = Duration::from_millis(1);

/// How often a waiting call looks again while an endpoint it polled wakes nobody when it turns
/// ready: one it found broken (a recovery wakes nobody), or one not ready that it does not hold
/// (the clone it polled, dropped, took the endpoint's wake-up with it).
const RECHECK: Duration = Duration::from_millis(250);

/// How many times a call asks the picker for an endpoint in one look before it walks the rest
/// of the set in order: most picks cost a pass over the set once most endpoints were tried, so
/// asking once per endpoint would cost a pass per endpoint.
const MAX_ASKS: usize = 32;

pin_project! {
    /// The response future of [`Balance`](crate::Balance).
    ///
    /// First it picks an endpoint that is available and ready (waiting, at most the balancer's
    /// `max_wait`, for one to become so), then it calls it and records the outcome. Dropping it
    /// at any point releases what it holds and records no outcome: in flight, the endpoint's
    /// in-flight count and the endpoint's future; while waiting, the endpoint service it was
    /// polling ready, with any capacity already handed to it (a concurrency limit's permit).
    /// Either way it wakes calls waiting for an endpoint, as a completed call does, and so does
    /// a call that lets go of an endpoint service it held without calling it. With a
    /// latency-aware picker, a call dropped in flight bounds the endpoint's estimate from below:
    /// it raises the estimate to the time the call had taken so far when that is longer, and a
    /// dropped trial call (on an endpoint never measured, or stale) is used up, so an endpoint
    /// that never answers is measured by the calls that give up on it.
    pub struct ResponseFuture<K, S, C, Req, F> {
        #[pin]
        state: State<K, S, Req, F>,
        shared: Arc<Shared<K, S, C>>,
    }

    impl<K, S, C, Req, F> PinnedDrop for ResponseFuture<K, S, C, Req, F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // A call dropped before it completed gives back what it held: in flight, its
            // in-flight count and the endpoint's future (a half-open breaker's probe slot);
            // waiting, the endpoint service it was polling ready (a concurrency limit's permit
            // already handed to it). Wake calls waiting for an endpoint, as a completed call
            // does. A completed call is `Done` already, and a call holding no endpoint service
            // frees nothing another could take.
            let held = match this.state.as_mut().project() {
                StateProj::Call { .. } => true,
                StateProj::Pick { pending, .. } => pending.is_some(),
                StateProj::Done => false,
            };
            if held {
                // Released first, and this call no longer counted among the waiters.
                this.state.set(State::Done);
                wake_waiters(this.shared);
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<K, S, Req, F> {
        Pick {
            req: Option<Req>,
            snapshot: Arc<Snapshot<K, S>>,
            // A version of the set no newer than `snapshot`; another current version means the
            // set may have changed since.
            version: u64,
            rng: SmallRng,
            hash: Option<u64>,
            // An endpoint that was picked but not ready: kept so its readiness wakes this task.
            pending: Option<(Arc<Endpoint<K, S>>, S)>,
            // The endpoints whose readiness error this call has counted: each counts once per
            // call, however often the call polls it while it waits.
            failed: Vec<Arc<Stats>>,
            deadline: Option<Instant>,
            #[pin]
            sleep: Option<Sleep>,
            // When the filter expects a refused endpoint to take calls again.
            #[pin]
            recheck: Option<Sleep>,
            #[pin]
            notified: Option<OwnedNotified>,
            waiter: Option<Waiter>,
        },
        Call {
            #[pin]
            fut: F,
            guard: Guard<K, S>,
        },
        Done,
    }
}

/// Counts this call among the calls waiting for an endpoint, until it is dropped.
pub(crate) struct Waiter(Arc<AtomicUsize>);

impl Waiter {
    /// Counts a call that found nothing to call; it must look at the endpoints again after this,
    /// before it sleeps.
    fn new(waiting: &Arc<AtomicUsize>) -> Self {
        waiting.fetch_add(1, Relaxed);
        // Pairs with the fence in `wake_waiters`: either the call's next look sees the capacity
        // a finishing call gave back, or the finishing call sees this count and wakes it. Without
        // both fences each could read the other's old value (store buffering) and the wake-up
        // would be lost.
        fence(SeqCst);
        Waiter(waiting.clone())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Wakes the calls waiting for an endpoint, if there are any: a call or a health probe has
/// completed or given back an endpoint service it held (with any capacity reserved for it, a
/// probe slot or a permit).
pub(crate) fn wake_waiters<K, S, C>(shared: &Shared<K, S, C>) {
    // Orders the capacity given back before the count is read; see `Waiter::new`.
    fence(SeqCst);
    if shared.waiting.load(Relaxed) > 0 {
        shared.changed.notify_waiters();
    }
}

/// Holds an endpoint's in-flight count for the length of a call.
pub(crate) struct Guard<K, S> {
    endpoint: Arc<Endpoint<K, S>>,
    start: Option<Instant>,
    // With a latency-aware picker, until the call's outcome is recorded: the balancer's clock
    // origin and PeakEWMA tuning, to record the time a dropped call had been in flight.
    unfinished: Option<(Instant, Tuning)>,
}

impl<K, S> Guard<K, S> {
    fn new(
        endpoint: Arc<Endpoint<K, S>>,
        start: Option<Instant>,
        peak: Option<(Instant, Tuning)>,
    ) -> Self {
        endpoint.stats.outstanding.fetch_add(1, Relaxed);
        Guard {
            endpoint,
            start,
            unfinished: peak.filter(|_| start.is_some()),
        }
    }
}

impl<K, S> Drop for Guard<K, S> {
    fn drop(&mut self) {
        // A call dropped in flight (an outer timeout, a hedge that lost) has no outcome, but the
        // endpoint took at least this long: without it, an endpoint that never answers would
        // never be measured and would keep winning picks. It bounds the estimate from below and
        // uses up a trial call, but a call dropped at once says nothing of how fast the
        // endpoint is.
        if let (Some((epoch, tuning)), Some(start)) = (self.unfinished, self.start) {
            let end = Instant::now();
            let elapsed = end.saturating_duration_since(start).as_nanos() as f64;
            let since = |at: Instant| at.saturating_duration_since(epoch).as_nanos() as u64;
            self.endpoint.stats.record_dropped(
                since(end),
                || since(Instant::now()),
                elapsed,
                tuning.tau_ns,
            );
        }
        self.endpoint.stats.outstanding.fetch_sub(1, Relaxed);
    }
}

impl<K, S, C, Req, F> ResponseFuture<K, S, C, Req, F> {
    pub(crate) fn new(
        shared: Arc<Shared<K, S, C>>,
        snapshot: Arc<Snapshot<K, S>>,
        version: u64,
        req: Req,
        rng: SmallRng,
        hash: Option<u64>,
    ) -> Self {
        ResponseFuture {
            state: State::Pick {
                req: Some(req),
                snapshot,
                version,
                rng,
                hash,
                pending: None,
                failed: Vec::new(),
                deadline: None,
                sleep: None,
                recheck: None,
                notified: None,
                waiter: None,
            },
            shared,
        }
    }
}

/// An endpoint's place in the set, a service of it and what polling the service ready gave.
type Polled<S, E> = (usize, S, Poll<Result<(), E>>);

enum Step<K, S> {
    Call(Arc<Endpoint<K, S>>, S),
    Fail(BoxError),
    /// Nothing to call yet. `unheld`: an endpoint the look found not ready was let go of, not
    /// held, so its turning ready wakes nobody.
    Wait {
        unheld: bool,
    },
}

impl<K, S, C, Req> ResponseFuture<K, S, C, Req, S::Future>
where
    K: Key,
    S: Service<Req> + Clone + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    /// Picks an available endpoint and polls it ready; if it is not, picks again without it, and
    /// so on through every available endpoint, so one unready endpoint never holds a call up.
    /// Only one endpoint not ready is held (its readiness wakes the call); the waiting call looks
    /// again every `RECHECK` while it let go of another not ready.
    /// `waited`: the call has waited before, so its pick's readiness error does not fail it.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn try_pick(
        shared: &Shared<K, S, C>,
        snapshot: &Snapshot<K, S>,
        rng: &mut SmallRng,
        hash: Option<u64>,
        pending: &mut Option<(Arc<Endpoint<K, S>>, S)>,
        failed: &mut Vec<Arc<Stats>>,
        waited: bool,
        cx: &mut Context<'_>,
    ) -> Step<K, S> {
        // A call that holds no endpoint and has found none broken picks with nothing to skip; it
        // goes on to the rest only when that pick is not ready.
        if pending.is_some() || !failed.is_empty() {
            return Self::try_more(
                shared, snapshot, rng, hash, pending, failed, waited, cx, None,
            );
        }
        static NONE_SKIPPED: Skip = Skip::new();
        let n = snapshot.len();
        if n == 0 {
            return Step::Wait { unheld: false };
        }
        let panic = shared.panicking(snapshot);
        let available = |i: usize, _key: &K| shared.available(panic, &snapshot.endpoints[i]);
        let now = if shared.settings.picker.uses_latency() {
            shared.nanos(Instant::now())
        } else {
            0
        };
        let mut pcx = PickCx {
            rng,
            hash,
            now,
            round_robin: &shared.round_robin,
            available: &available,
            panic,
            skip: &NONE_SKIPPED,
        };
        let Some(i) = shared
            .settings
            .picker
            .pick(snapshot, &shared.tuning, &mut pcx)
        else {
            return Step::Wait { unheld: false };
        };
        let ep = &snapshot.endpoints[i];
        let mut svc = ep.service.clone();
        match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => Step::Call(ep.clone(), svc),
            ready => Self::try_more(
                shared,
                snapshot,
                rng,
                hash,
                pending,
                failed,
                waited,
                cx,
                Some((i, svc, ready)),
            ),
        }
    }

    /// [`try_pick`](Self::try_pick) past a first pick that was not ready (`first`, the pick,
    /// its service and what polling it gave), or for a call that holds an endpoint or found one
    /// broken.
    #[cold]
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn try_more(
        shared: &Shared<K, S, C>,
        snapshot: &Snapshot<K, S>,
        rng: &mut SmallRng,
        hash: Option<u64>,
        pending: &mut Option<(Arc<Endpoint<K, S>>, S)>,
        failed: &mut Vec<Arc<Stats>>,
        waited: bool,
        cx: &mut Context<'_>,
        mut first: Option<Polled<S, S::Error>>,
    ) -> Step<K, S> {
        let n = snapshot.len();
        let panic = shared.panicking(snapshot);
        // Whether this call has tried no endpoint yet and never waited: only then does its
        // pick's readiness error fail it. A call that waits passes over one that fails since,
        // even after the endpoint it held left the set.
        let fresh = !waited && pending.is_none() && failed.is_empty();
        // Endpoints tried and passed over, so no pick tries one twice. They are skipped, not
        // taken for unavailable: they are busy, not out, so a zone-aware pick still judges their
        // zone's health with them.
        let mut skip = Skip::default();
        // The endpoint held, if this poll polled one, and the last readiness error this poll saw
        // of an endpoint whose error this call counted.
        let mut held_at = None;
        let mut broken: Option<BoxError> = None;
        // Whether the endpoint held failed this call's readiness a second time: it was held
        // though broken, as no other endpoint was left, and has not recovered. The broken
        // endpoints are then polled for one that has, but none is held again: left with only
        // them, the call fails, rather than hold one after another for as long as they stay
        // down.
        let mut held_broke_again = false;
        if let Some((ep, mut svc)) = pending.take() {
            // Only while the endpoint is still available; else it is dropped (with anything its
            // service reserved) and the pick starts over. The filter is asked about the service
            // held: what it reserved (a half-open breaker's probe slot) is this call's, and does
            // not make the endpoint look full to it. It is in `snapshot`: the caller lets go of it
            // when it moves to a set without it.
            if shared.available_held(panic, &ep, &svc) {
                // No pick takes a second service of it (with a concurrency limit, a second
                // permit), nor polls it again if it failed.
                held_at = snapshot.endpoints.iter().position(|e| Arc::ptr_eq(e, &ep));
                if let Some(i) = held_at {
                    skip.insert(i);
                }
                match svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) => return Step::Call(ep, svc),
                    // Held, so not this call's first pick: passed over, as another endpoint that
                    // fails while the call waits.
                    Poll::Ready(Err(e)) => {
                        held_broke_again = failed.iter().any(|s| Arc::ptr_eq(s, &ep.stats));
                        broken = Some(Self::passed_over(shared, &ep, e, failed));
                    }
                    Poll::Pending => *pending = Some((ep, svc)),
                }
            }
        }
        if n == 0 {
            return Step::Wait { unheld: false };
        }
        let available = |i: usize, _key: &K| shared.available(panic, &snapshot.endpoints[i]);
        // The endpoints whose readiness error this call counted already are passed over, so
        // that the pick is one that may become ready, which the call can hold. They are polled
        // again once the picks are done. `broken_at`: the places in the set of the endpoints
        // whose readiness error this call counted, found once here and added to as picks fail.
        let mut broken_at: Vec<usize> = Vec::new();
        let mut known_broken = 0;
        if !failed.is_empty() {
            for (i, ep) in snapshot.endpoints.iter().enumerate() {
                if failed.iter().any(|s| Arc::ptr_eq(s, &ep.stats)) {
                    broken_at.push(i);
                    if available(i, &ep.key) && skip.insert(i) {
                        known_broken += 1;
                    }
                }
            }
        }
        let now = if shared.settings.picker.uses_latency() {
            shared.nanos(Instant::now())
        } else {
            0
        };
        let pick = |rng: &mut SmallRng, skip: &Skip| {
            let mut pcx = PickCx {
                rng,
                hash,
                now,
                round_robin: &shared.round_robin,
                available: &available,
                panic,
                skip,
            };
            shared
                .settings
                .picker
                .pick(snapshot, &shared.tuning, &mut pcx)
        };
        // If the pick is not ready, ask the picker again without it, and without each endpoint
        // tried since, until one is ready or every available endpoint was tried (past
        // `MAX_ASKS` asks, the rest are tried in the set's order from a random place): a consistent
        // hash then walks on along its ring, so a key keeps to the endpoints it would move to
        // anyway; the random and least-loaded pickers draw afresh rather than load the next
        // endpoint in the set; the turn-taking pickers pass the turn on to the next one due, so
        // an unready endpoint's turns spread over the others as its unavailable turns do (in
        // turn, in proportion to their weights), rather than all going to its neighbour in the
        // set; and a zone-aware pick sends what a busy local zone cannot take to the healthy
        // zones, however many local endpoints are busy.
        //
        // Once every available endpoint has been tried there is nothing left to ask for: a
        // turn-taking picker would walk its shared counter over the whole set to find nothing.
        // The available endpoints not tried yet are counted once the pick is not ready, in one
        // pass that reads each endpoint's availability and whether it was tried together (so an
        // endpoint taken out meanwhile is left out of both).
        let mut left = None;
        // The first endpoint tried that was not ready, kept when no service is held, so that its
        // readiness wakes the call.
        let mut waiting: Option<(usize, S)> = None;
        // Whether an endpoint found not ready was let go of: the call holds one service only, so
        // another endpoint's turning ready wakes nobody, and the call must look again itself.
        let mut unheld = false;
        let mut asks = 0;
        // Past `MAX_ASKS` asks: where the walk over the set started, and how far it has come.
        let mut walk: Option<(usize, usize)> = None;
        let next = |rng: &mut SmallRng,
                    skip: &Skip,
                    asks: &mut usize,
                    walk: &mut Option<(usize, usize)>| {
            if *asks < MAX_ASKS {
                *asks += 1;
                return pick(rng, skip);
            }
            let (start, step) = walk.get_or_insert_with(|| (rng.random_range(0..n), 0));
            while *step < n {
                let i = (*start + *step) % n;
                *step += 1;
                if !skip.contains(i) && available(i, &snapshot.endpoints[i].key) {
                    return Some(i);
                }
            }
            None
        };
        while left.is_none_or(|left| left > 0) {
            let (i, svc, ready) = match first.take() {
                Some(first) => {
                    asks += 1;
                    first
                }
                None => {
                    let Some(i) = next(rng, &skip, &mut asks, &mut walk) else {
                        break;
                    };
                    let mut svc = snapshot.endpoints[i].service.clone();
                    let ready = svc.poll_ready(cx);
                    (i, svc, ready)
                }
            };
            let ep = &snapshot.endpoints[i];
            match ready {
                Poll::Ready(Ok(())) => return Step::Call(ep.clone(), svc),
                // The call's first pick's readiness error fails the call; one of an endpoint
                // tried after it, in this poll or an earlier one, is passed over.
                Poll::Ready(Err(e)) if fresh && left.is_none() => {
                    Self::record_ready_error(shared, ep, failed);
                    return Step::Fail(e.into());
                }
                Poll::Ready(Err(e)) => {
                    broken = Some(Self::passed_over(shared, ep, e, failed));
                    if known_broken > 0 {
                        broken_at.push(i);
                    }
                }
                Poll::Pending => {
                    if pending.is_none() && waiting.is_none() {
                        waiting = Some((i, svc));
                    } else {
                        unheld = true;
                    }
                }
            }
            skip.insert(i);
            left = Some(match left {
                None => (0..n)
                    .filter(|&i| !skip.contains(i) && available(i, &snapshot.endpoints[i].key))
                    .count(),
                Some(left) => left - 1,
            });
        }
        // The endpoints this call found broken are polled again: one that has recovered takes
        // the call, though another endpoint is held (it may stay busy for long), and one not
        // ready yet is held when no other is (unless the one held broke again). Their errors are
        // not counted again; left with nothing else, the call fails with the last of them, as a
        // call whose pick fails.
        if known_broken > 0 {
            // In the set's order, each once: those that failed in this look were added in the
            // order they were tried, and one out when the look began may have come back and
            // failed since.
            broken_at.sort_unstable();
            broken_at.dedup();
            for i in broken_at {
                let ep = &snapshot.endpoints[i];
                if Some(i) == held_at || !available(i, &ep.key) {
                    continue;
                }
                let mut svc = ep.service.clone();
                match svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) => return Step::Call(ep.clone(), svc),
                    Poll::Ready(Err(e)) => broken = Some(e.into()),
                    Poll::Pending => {
                        if pending.is_none() && waiting.is_none() && !held_broke_again {
                            waiting = Some((i, svc));
                        } else {
                            unheld = true;
                        }
                    }
                }
            }
        }
        if pending.is_some() {
            return Step::Wait { unheld };
        }
        if let Some((i, svc)) = waiting {
            *pending = Some((snapshot.endpoints[i].clone(), svc));
            return Step::Wait { unheld };
        }
        match broken {
            Some(e) => Step::Fail(e),
            None => Step::Wait { unheld },
        }
    }

    /// An endpoint tried after the pick was not ready failed its readiness: the call goes on to
    /// the next candidate, and the error counts against the endpoint as it would had the
    /// endpoint been picked, once per call. Returns the error.
    fn passed_over(
        shared: &Shared<K, S, C>,
        ep: &Endpoint<K, S>,
        e: S::Error,
        failed: &mut Vec<Arc<Stats>>,
    ) -> BoxError {
        let error: BoxError = e.into();
        if Self::record_ready_error(shared, ep, failed) {
            // A key's `Debug` or a subscriber that panics loses the line, not the call.
            seawall_core::event::panics::caught(
                || tracing::debug!(name = %shared.name, key = ?ep.key, %error, "seawall balance endpoint failed its readiness"),
            );
        }
        error
    }

    /// Counts a readiness error against `ep` unless this call counted one of its already;
    /// returns whether it did.
    fn record_ready_error(
        shared: &Shared<K, S, C>,
        ep: &Endpoint<K, S>,
        failed: &mut Vec<Arc<Stats>>,
    ) -> bool {
        if failed.iter().any(|s| Arc::ptr_eq(s, &ep.stats)) {
            return false;
        }
        failed.push(ep.stats.clone());
        // A failure like a failed call: with a latency-aware picker it is recorded as taking
        // `failure_penalty`, so an endpoint whose readiness fails at once does not look fast.
        let now = shared.timed.then(Instant::now);
        shared.record(ep, Outcome::Failure, now, now);
        true
    }
}

impl<K, S, C, Req> Future for ResponseFuture<K, S, C, Req, S::Future>
where
    K: Key,
    S: Service<Req> + Clone + 'static,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Pick {
                    req,
                    snapshot,
                    version,
                    rng,
                    hash,
                    pending,
                    failed,
                    deadline,
                    mut sleep,
                    mut recheck,
                    mut notified,
                    waiter,
                } => {
                    let shared = &**this.shared;
                    // Pick from the set in force: the set may have changed since the call was
                    // made (a call stored or queued before its first poll) or last polled. An
                    // endpoint held that is no longer in it is let go: it must not be called.
                    let latest = shared.version.load(Acquire);
                    if *version != latest {
                        *version = latest;
                        *snapshot = shared.current();
                        let removed = pending.as_ref().is_some_and(|(ep, _)| {
                            !snapshot.endpoints.iter().any(|e| Arc::ptr_eq(e, ep))
                        });
                        if removed {
                            *pending = None;
                            wake_waiters(shared);
                        }
                    }
                    let waited = waiter.is_some();
                    // The endpoint held before the pick: `snapshot` keeps it alive, so no other
                    // endpoint takes its address meanwhile.
                    let before = pending.as_ref().map(|(ep, _)| Arc::as_ptr(ep));
                    let step =
                        Self::try_pick(shared, snapshot, rng, *hash, pending, failed, waited, cx);
                    // An endpoint service still held is dropped when the call leaves the pick
                    // (it calls another endpoint, or gives up at `max_wait`); one the pick let
                    // go of (no longer available, or its readiness failed) is dropped already.
                    // Either may give back capacity another call can take (a probe slot, a
                    // permit): wake the waiting calls, as a cancelled call does.
                    let held = pending.is_some();
                    let now = pending.as_ref().map(|(ep, _)| Arc::as_ptr(ep));
                    let called = match &step {
                        Step::Call(ep, _) => Some(Arc::as_ptr(ep)),
                        _ => None,
                    };
                    let released = before.is_some() && before != now && before != called;
                    let unheld = match step {
                        Step::Call(endpoint, mut svc) => {
                            let req = req.take().expect("request taken once");
                            let timed = shared.timed
                                || <C as Classify<S::Response, S::Error>>::uses_elapsed(
                                    &shared.classifier,
                                );
                            let start = timed.then(Instant::now);
                            let guard = Guard::new(endpoint, start, shared.peak_clock());
                            let fut = svc.call(req);
                            this.state.set(State::Call { fut, guard });
                            if held || released {
                                wake_waiters(shared);
                            }
                            continue;
                        }
                        Step::Fail(e) => {
                            this.state.set(State::Done);
                            wake_waiters(shared);
                            return Poll::Ready(Err(e));
                        }
                        Step::Wait { unheld } => {
                            if released {
                                wake_waiters(shared);
                            }
                            unheld
                        }
                    };
                    // Nothing to call yet: arm the deadline, listen for set and health changes,
                    // and look again once listening (a change may have landed since the pick).
                    if waiter.is_none() {
                        *waiter = Some(Waiter::new(&shared.waiting));
                    }
                    if deadline.is_none() {
                        if let Some(wait) = shared.settings.max_wait {
                            let at = Instant::now() + wait;
                            *deadline = Some(at);
                            sleep.set(Some(sleep_until(at)));
                        }
                    }
                    match notified.as_mut().as_pin_mut() {
                        Some(n) => {
                            if n.poll(cx).is_ready() {
                                notified.set(None);
                                continue;
                            }
                        }
                        None => {
                            notified.set(Some(shared.changed.clone().notified_owned()));
                            if let Some(n) = notified.as_mut().as_pin_mut() {
                                n.enable();
                            }
                            continue;
                        }
                    }
                    // A filter that knows when a refused endpoint returns (an open breaker's
                    // wait): look again then. An endpoint this call found broken wakes nobody
                    // when it recovers, nor does one not ready that this look let go of (the
                    // call holds one service only, and the clone dropped took its wake-up with
                    // it): look again every `RECHECK` while there is one. With only the endpoint
                    // held not ready, its readiness wakes the call and nothing more is armed.
                    // Whichever comes first, asked again at every poll: a recheck armed before
                    // an endpoint broke, or before the filter refused one that returns sooner, is
                    // brought forward.
                    let now = Instant::now();
                    let unwoken_at =
                        (unheld || !failed.is_empty()).then(|| deadline_after(now, RECHECK));
                    let filter_at = shared
                        .filter_recheck(snapshot)
                        .map(|wait| deadline_after(now, wait.max(MIN_RECHECK)));
                    let soonest = match (filter_at, unwoken_at) {
                        (Some(a), Some(b)) => Some(a.min(b)),
                        (a, b) => a.or(b),
                    };
                    let armed = recheck.as_ref().as_pin_ref().map(|r| r.deadline());
                    let at = match armed {
                        None => soonest,
                        Some(armed) => soonest.filter(|&at| at < armed),
                    };
                    if let Some(at) = at {
                        match recheck.as_mut().as_pin_mut() {
                            Some(r) => r.reset(at),
                            None => recheck.set(Some(sleep_until(at))),
                        }
                    }
                    if let Some(r) = recheck.as_mut().as_pin_mut() {
                        if r.poll(cx).is_ready() {
                            recheck.set(None);
                            continue;
                        }
                    }
                    if let Some(s) = sleep.as_mut().as_pin_mut() {
                        if s.poll(cx).is_ready() {
                            let waited = shared.settings.max_wait.unwrap_or_default();
                            this.state.set(State::Done);
                            if held {
                                wake_waiters(shared);
                            }
                            metrics::counter(metrics::BALANCE_NO_ENDPOINTS, &shared.name)
                                .increment(1);
                            tracing::debug!(name = %shared.name, ?waited, "seawall balance found no endpoint");
                            shared
                                .listeners
                                .emit(&shared.name, &BalanceEvent::NoEndpoints { waited });
                            return Poll::Ready(Err(Box::new(NoEndpoints::new())));
                        }
                    }
                    return Poll::Pending;
                }
                StateProj::Call { fut, guard } => {
                    let result = match fut.poll(cx) {
                        Poll::Ready(result) => result,
                        Poll::Pending => return Poll::Pending,
                    };
                    let shared = &**this.shared;
                    let end = guard.start.map(|_| Instant::now());
                    let elapsed = match (guard.start, end) {
                        (Some(s), Some(e)) => e.saturating_duration_since(s),
                        _ => std::time::Duration::ZERO,
                    };
                    let outcome = shared.classifier.classify(result.as_ref(), elapsed);
                    let result = result.map_err(Into::into);
                    let outcome = match (&result, &shared.filter) {
                        // The filter's own rejection (an endpoint's breaker that opened after
                        // the pick, and admits no call now): the call was never sent, and
                        // counts for nothing.
                        (Err(error), Some(filter))
                            if outcome != Outcome::Ignored
                                && filter.rejected(
                                    &guard.endpoint.key,
                                    &guard.endpoint.service,
                                    &**error,
                                ) =>
                        {
                            Outcome::Ignored
                        }
                        _ => outcome,
                    };
                    let unreported =
                        shared.record_unreported(&guard.endpoint, outcome, end, guard.start);
                    guard.unfinished = None;
                    // Dropping the call releases the endpoint's capacity; wake calls waiting
                    // for a ready endpoint.
                    this.state.set(State::Done);
                    wake_waiters(shared);
                    // The changes the outcome made (an ejection) are reported once the call has
                    // let go of the endpoint, so the listeners do not hold its capacity.
                    unreported.report();
                    return Poll::Ready(result);
                }
                StateProj::Done => panic!("balance ResponseFuture polled after completion"),
            }
        }
    }
}

impl<K, S, C, Req, F> fmt::Debug for ResponseFuture<K, S, C, Req, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Pick { .. } => "picking",
            State::Call { .. } => "calling",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Picker;
    use rand::SeedableRng;
    use std::{
        sync::{atomic::Ordering::Relaxed, Mutex, Weak},
        task::Waker,
    };
    use tower::discover::Change;

    /// An endpoint that is never ready.
    #[derive(Clone)]
    struct Never;

    impl Service<u32> for Never {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Pending
        }

        fn call(&mut self, _: u32) -> Self::Future {
            unreachable!("never ready")
        }
    }

    /// An endpoint that is ready, not ready or fails its readiness, as its `mode` says. Each clone
    /// of its service keeps its own waker, as a connection's pending permit does: a clone
    /// dropped while not ready wakes nothing when the endpoint turns ready.
    #[derive(Default)]
    struct Valve {
        mode: Arc<std::sync::atomic::AtomicU8>,
        polls: Arc<AtomicUsize>,
        wakers: Arc<Mutex<Vec<Weak<WakerSlot>>>>,
        waker: Arc<WakerSlot>,
        // An endpoint that outlier detection takes out when this one is polled.
        ejects: Arc<Mutex<Option<Arc<Stats>>>>,
    }

    type WakerSlot = Mutex<Option<Waker>>;

    impl Valve {
        const READY: u8 = 0;
        const PENDING: u8 = 1;
        const BROKEN: u8 = 2;

        fn set(&self, mode: u8) {
            self.mode.store(mode, Relaxed);
            for waker in self.wakers.lock().unwrap().iter() {
                if let Some(waker) = waker.upgrade().and_then(|w| w.lock().unwrap().take()) {
                    waker.wake();
                }
            }
        }
    }

    impl Clone for Valve {
        fn clone(&self) -> Self {
            let waker = Arc::default();
            self.wakers.lock().unwrap().push(Arc::downgrade(&waker));
            Valve {
                mode: self.mode.clone(),
                polls: self.polls.clone(),
                wakers: self.wakers.clone(),
                waker,
                ejects: self.ejects.clone(),
            }
        }
    }

    impl Service<u32> for Valve {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            self.polls.fetch_add(1, Relaxed);
            if let Some(stats) = &*self.ejects.lock().unwrap() {
                stats.ejected.store(true, Relaxed);
            }
            match self.mode.load(Relaxed) {
                Valve::READY => Poll::Ready(Ok(())),
                Valve::PENDING => {
                    *self.waker.lock().unwrap() = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(Err("connection refused".into())),
            }
        }

        fn call(&mut self, _: u32) -> Self::Future {
            std::future::ready(Ok(()))
        }
    }

    /// A round-robin balancer over `modes.len()` valves in those modes, whose next turn is
    /// `turn`, and a call on it, not polled yet.
    #[allow(clippy::type_complexity)]
    fn valves(
        modes: &[u8],
        turn: usize,
    ) -> (
        Arc<Shared<usize, Valve, seawall_core::classify::DefaultClassifier>>,
        Vec<Valve>,
        tokio_test::task::Spawn<
            ResponseFuture<
                usize,
                Valve,
                seawall_core::classify::DefaultClassifier,
                u32,
                std::future::Ready<Result<(), BoxError>>,
            >,
        >,
    ) {
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        let valves: Vec<Valve> = modes
            .iter()
            .map(|&mode| {
                let valve = Valve::default();
                valve.mode.store(mode, Relaxed);
                valve
            })
            .collect();
        for (i, valve) in valves.iter().enumerate() {
            shared.apply(Change::Insert(i, valve.clone()));
        }
        shared.round_robin.store(turn, Relaxed);
        let call = tokio_test::task::spawn(ResponseFuture::new(
            shared.clone(),
            shared.current(),
            shared.version.load(Acquire),
            0u32,
            SmallRng::seed_from_u64(2),
            None,
        ));
        (shared, valves, call)
    }

    /// Round robin over A, B and C, A's turn first: A and C are not ready and B is broken. The
    /// call holds A, counts B's error and passes over it. Then A leaves the set, and the call's
    /// next turn may be B's or C's. It passes over B, which it found broken already, without
    /// failing with its error, and holds C, so C turning ready wakes it and it calls C.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_that_lets_go_of_its_endpoint_holds_another_not_ready() {
        for turn in [0, 3] {
            let modes = [Valve::PENDING, Valve::BROKEN, Valve::PENDING];
            let (shared, valves, mut call) = valves(&modes, turn);
            assert!(call.poll().is_pending());
            shared.apply(Change::Remove(0));
            assert!(call.poll().is_pending());
            assert!(!call.is_woken());
            valves[2].set(Valve::READY);
            assert!(
                call.is_woken(),
                "turn {turn}: C's readiness did not wake the call"
            );
            assert!(matches!(call.poll(), Poll::Ready(Ok(()))));
        }
    }

    /// Round robin over A and B, A's turn first, both not ready. The call holds A and lets go of
    /// B, whose clone took B's wake-up with it: the call looks again within `RECHECK`, finds B
    /// ready and calls it, though A stays busy and no other call completes.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_looks_again_at_a_not_ready_endpoint_it_let_go_of() {
        let (_shared, valves, mut call) = valves(&[Valve::PENDING, Valve::PENDING], 0);
        assert!(call.poll().is_pending());
        valves[1].set(Valve::READY);
        assert!(!call.is_woken(), "B's clone was held");
        tokio::time::advance(RECHECK + Duration::from_millis(50)).await;
        assert!(
            call.is_woken(),
            "B turned ready and the call never looked again"
        );
        assert!(matches!(call.poll(), Poll::Ready(Ok(()))));
    }

    /// A call waiting on the one endpoint not ready that it holds, with no other left to look at
    /// (one endpoint only, or the others taken out), arms no recheck: the endpoint held wakes it.
    #[tokio::test(start_paused = true)]
    async fn a_call_waiting_on_the_only_endpoint_not_ready_arms_no_recheck() {
        let (_shared, _valves, mut call) = valves(&[Valve::PENDING], 0);
        assert!(call.poll().is_pending());
        tokio::time::advance(RECHECK * 4).await;
        assert!(!call.is_woken());

        let (shared, _valves, mut call) = valves(&[Valve::PENDING, Valve::PENDING], 0);
        shared.current().endpoints[1]
            .stats
            .ejected
            .store(true, Relaxed);
        assert!(call.poll().is_pending());
        tokio::time::advance(RECHECK * 4).await;
        assert!(!call.is_woken());
    }

    /// A waiting call whose every available endpoint failed its readiness, and whose error it
    /// counted already, fails with the error, as a call whose pick fails does, rather than wait
    /// (with no `max_wait`, for ever) for an endpoint it would not call.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_left_with_only_broken_endpoints_fails_with_their_error() {
        let (shared, valves, mut call) = valves(&[Valve::PENDING, Valve::BROKEN], 0);
        assert!(call.poll().is_pending());
        shared.apply(Change::Remove(0));
        match call.poll() {
            Poll::Ready(Err(e)) => assert_eq!(e.to_string(), "connection refused"),
            Poll::Ready(Ok(())) => panic!("called a broken endpoint"),
            Poll::Pending => panic!("waits with nothing to wait for"),
        }
        drop(valves);
    }

    /// Round robin over A, K, B and C, A's turn first: A, B and C are not ready and K is broken.
    /// The call holds A and passes over K. On its next poll, polling B takes K out: the call
    /// still tries C, which has turned ready, rather than count K among the endpoints it tried.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_tries_every_endpoint_when_one_it_found_broken_is_taken_out() {
        let modes = [
            Valve::PENDING,
            Valve::BROKEN,
            Valve::PENDING,
            Valve::PENDING,
        ];
        let (shared, valves, mut call) = valves(&modes, 0);
        assert!(call.poll().is_pending());
        *valves[2].ejects.lock().unwrap() = Some(shared.current().endpoints[1].stats.clone());
        valves[3].mode.store(Valve::READY, Relaxed);
        let c_polls = valves[3].polls.load(Relaxed);
        assert!(matches!(call.poll(), Poll::Ready(Ok(()))));
        assert_eq!(valves[3].polls.load(Relaxed), c_polls + 1);
    }

    /// Round robin over A, B and C, A's turn first: A is not ready, B is broken and C is ready.
    /// A subscriber that panics on the line logging B's error loses the line, not the call: the
    /// call passes over B and calls C.
    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_panics_on_a_passed_over_endpoint_does_not_fail_the_call() {
        let modes = [Valve::PENDING, Valve::BROKEN, Valve::READY];
        let (_shared, valves, mut call) = valves(&modes, 0);
        let _subscriber =
            tracing::subscriber::set_default(seawall_core::event::PanickingSubscriber);
        assert!(matches!(call.poll(), Poll::Ready(Ok(()))));
        assert_eq!(valves[1].polls.load(Relaxed), 1, "B was tried");
    }

    /// Twenty endpoints, two of them available and both busy: a waiting call tries each once per
    /// poll and asks the turn-taking picker for no more, which would walk the shared counter
    /// over every endpoint to find none.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_stops_picking_once_it_has_tried_every_available_endpoint() {
        const N: usize = 20;
        for picker in [Picker::RoundRobin, Picker::WeightedRoundRobin] {
            let shared = Arc::new(Shared::<usize, Never, _>::for_tests(picker.clone()));
            for i in 0..N {
                shared.apply(Change::Insert(i, Never));
            }
            let snapshot = shared.current();
            for ep in &snapshot.endpoints[2..] {
                ep.stats.ejected.store(true, Relaxed);
            }
            let version = shared.version.load(Acquire);
            let mut call = Box::pin(ResponseFuture::new(
                shared.clone(),
                snapshot,
                version,
                0u32,
                SmallRng::seed_from_u64(2),
                None,
            ));
            let mut cx = Context::from_waker(std::task::Waker::noop());
            assert!(call.as_mut().poll(&mut cx).is_pending());
            for _ in 0..10 {
                let before = shared.round_robin.load(Relaxed);
                assert!(call.as_mut().poll(&mut cx).is_pending());
                // The pick passes over the held endpoint and the unavailable ones to the other
                // available one: at most one turn per endpoint.
                let turns = shared.round_robin.load(Relaxed).wrapping_sub(before);
                assert!(turns <= N, "{picker:?}: {turns} turns");
            }
        }
    }
}
