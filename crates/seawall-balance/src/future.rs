use crate::{
    endpoint::{Endpoint, Key, Stats},
    picker::{PickCx, Skip, Tuning},
    set::Snapshot,
    shared::Shared,
    BalanceEvent, NoEndpoints,
};
use pin_project_lite::pin_project;
use rand::rngs::SmallRng;
use seawall_core::{deadline::deadline_after, metrics, BoxError, Classify, Outcome};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{
            AtomicUsize,
            Ordering::{Acquire, Relaxed},
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
    /// latency-aware picker, a call dropped in flight can only raise the endpoint's estimate: to
    /// the time it had taken so far when that is longer than the estimate, so an endpoint that
    /// never answers is measured by the calls that give up on it.
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
    fn new(waiting: &Arc<AtomicUsize>) -> Self {
        waiting.fetch_add(1, Relaxed);
        Waiter(waiting.clone())
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// Wakes the calls waiting for an endpoint, if there are any: a call has completed or given back
/// an endpoint service it held (with any capacity reserved for it, a probe slot or a permit).
fn wake_waiters<K, S, C>(shared: &Shared<K, S, C>) {
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
        // never be measured and would keep winning picks. It can only raise the estimate: a
        // call dropped at once says nothing of how fast the endpoint is.
        if let (Some((epoch, tuning)), Some(start)) = (self.unfinished, self.start) {
            let now = Instant::now();
            let at = now.saturating_duration_since(epoch).as_nanos() as u64;
            let elapsed = now.saturating_duration_since(start).as_nanos() as f64;
            self.endpoint
                .stats
                .record_dropped(at, elapsed, tuning.tau_ns, tuning.default_ns);
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

enum Step<K, S> {
    Call(Arc<Endpoint<K, S>>, S),
    Fail(BoxError),
    Wait,
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
    fn try_pick(
        shared: &Shared<K, S, C>,
        snapshot: &Snapshot<K, S>,
        rng: &mut SmallRng,
        hash: Option<u64>,
        pending: &mut Option<(Arc<Endpoint<K, S>>, S)>,
        failed: &mut Vec<Arc<Stats>>,
        cx: &mut Context<'_>,
    ) -> Step<K, S> {
        let n = snapshot.len();
        let panic = shared.panicking(n);
        if let Some((ep, mut svc)) = pending.take() {
            // Only while the endpoint is still available; else it is dropped (with anything its
            // service reserved) and the pick starts over. It is in `snapshot`: the caller lets go
            // of it when it moves to a set without it.
            if shared.available(panic, &ep) {
                match svc.poll_ready(cx) {
                    Poll::Ready(Ok(())) => return Step::Call(ep, svc),
                    Poll::Ready(Err(e)) => {
                        if let Some(step) = Self::ready_failed(shared, &ep, e, failed) {
                            return step;
                        }
                    }
                    Poll::Pending => *pending = Some((ep, svc)),
                }
            }
        }
        if n == 0 {
            return Step::Wait;
        }
        let available = |i: usize, _key: &K| shared.available(panic, &snapshot.endpoints[i]);
        let now = if shared.settings.picker.uses_latency() {
            shared.nanos(Instant::now())
        } else {
            0
        };
        // Endpoints tried and passed over, so no pick tries one twice. They are skipped, not
        // taken for unavailable: they are busy, not out, so a zone-aware pick still judges their
        // zone's health with them.
        let pick = |rng: &mut SmallRng, skip: &Skip| {
            let mut pcx = PickCx {
                rng,
                hash,
                now,
                round_robin: &shared.round_robin,
                available: &available,
                skip,
            };
            shared
                .settings
                .picker
                .pick(snapshot, &shared.tuning, &mut pcx)
        };
        // The endpoint held is polled above: no pick takes a second service of it (with a
        // concurrency limit, a second permit).
        let mut skip = Skip::default();
        let mut tried = 0;
        if let Some((held, _)) = pending {
            if let Some(i) = snapshot.endpoints.iter().position(|e| Arc::ptr_eq(e, held)) {
                skip.insert(i);
                tried = 1;
            }
        }
        let Some(first) = pick(rng, &skip) else {
            return Step::Wait;
        };
        let ep = &snapshot.endpoints[first];
        let mut svc = ep.service.clone();
        let first_svc = match svc.poll_ready(cx) {
            Poll::Ready(Ok(())) => return Step::Call(ep.clone(), svc),
            Poll::Ready(Err(e)) => match Self::ready_failed(shared, ep, e, failed) {
                Some(step) => return step,
                None => None,
            },
            Poll::Pending => Some(svc),
        };
        // The pick is not ready. Ask the picker again without it, and without each endpoint
        // tried since, until one is ready or every available endpoint was tried: a consistent
        // hash then walks on along its ring, so a key keeps to the endpoints it would move to
        // anyway; the random and least-loaded pickers draw afresh rather than load the next
        // endpoint in the set; the turn-taking pickers pass the turn on to the next one due, so
        // an unready endpoint's turns spread over the others as its unavailable turns do (in
        // turn, in proportion to their weights), rather than all going to its neighbour in the
        // set; and a zone-aware pick sends what a busy local zone cannot take to the healthy
        // zones, however many local endpoints are busy.
        skip.insert(first);
        tried += 1;
        // Once every available endpoint has been tried there is nothing left to ask for: a
        // turn-taking picker would walk its shared counter over the whole set to find nothing.
        let open = (0..n)
            .filter(|&i| available(i, &snapshot.endpoints[i].key))
            .count();
        while tried < open {
            let Some(i) = pick(rng, &skip) else {
                break;
            };
            let other = &snapshot.endpoints[i];
            let mut candidate = other.service.clone();
            match candidate.poll_ready(cx) {
                Poll::Ready(Ok(())) => return Step::Call(other.clone(), candidate),
                Poll::Ready(Err(e)) => Self::passed_over(shared, other, e, failed),
                Poll::Pending => {}
            }
            skip.insert(i);
            tried += 1;
        }
        if let (None, Some(svc)) = (&*pending, first_svc) {
            *pending = Some((ep.clone(), svc));
        }
        Step::Wait
    }

    /// The picked endpoint's readiness failed: the call fails with the endpoint's error, which
    /// counts against the endpoint. Unless this call has passed over that endpoint's error
    /// already (it waits, and polls again): then it passes over it again (`None`).
    fn ready_failed(
        shared: &Shared<K, S, C>,
        ep: &Endpoint<K, S>,
        e: S::Error,
        failed: &mut Vec<Arc<Stats>>,
    ) -> Option<Step<K, S>> {
        if !Self::record_ready_error(shared, ep, failed) {
            return None;
        }
        Some(Step::Fail(e.into()))
    }

    /// An endpoint tried after the pick was not ready failed its readiness: the call goes on to
    /// the next candidate, and the error counts against the endpoint as it would had the
    /// endpoint been picked, once per call.
    fn passed_over(
        shared: &Shared<K, S, C>,
        ep: &Endpoint<K, S>,
        e: S::Error,
        failed: &mut Vec<Arc<Stats>>,
    ) {
        if Self::record_ready_error(shared, ep, failed) {
            let error: BoxError = e.into();
            tracing::debug!(name = %shared.name, key = ?ep.key, %error, "seawall balance endpoint failed its readiness");
        }
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
                    let step = Self::try_pick(shared, snapshot, rng, *hash, pending, failed, cx);
                    // An endpoint service still held is dropped when the call leaves the pick
                    // (it calls another endpoint, or gives up at `max_wait`); a readiness error
                    // drops the failed service. Either may give back capacity another call can
                    // take (a probe slot, a permit): wake the waiting calls, as a cancelled call
                    // does.
                    let held = pending.is_some();
                    match step {
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
                            if held {
                                wake_waiters(shared);
                            }
                            continue;
                        }
                        Step::Fail(e) => {
                            this.state.set(State::Done);
                            wake_waiters(shared);
                            return Poll::Ready(Err(e));
                        }
                        Step::Wait => {}
                    }
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
                    // wait): look again then.
                    if recheck.is_none() {
                        if let Some(wait) = shared.filter_recheck(snapshot) {
                            let at = deadline_after(Instant::now(), wait.max(MIN_RECHECK));
                            recheck.set(Some(sleep_until(at)));
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
                    shared.record(&guard.endpoint, outcome, end, guard.start);
                    guard.unfinished = None;
                    // Dropping the call releases the endpoint's capacity; wake calls waiting
                    // for a ready endpoint.
                    this.state.set(State::Done);
                    wake_waiters(shared);
                    return Poll::Ready(result.map_err(Into::into));
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
    use std::sync::atomic::Ordering::Relaxed;
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
