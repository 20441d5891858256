//! [`Breaker`]: the circuit breaker as a tower service.

use crate::{
    future::{Guard, ResponseFuture},
    handle::BreakerHandle,
    layer::BreakerLayer,
    shared::{self, Shared},
    state::{Permit, PermitKind, Rejected},
};
use seawall_core::{classify::Classify, BoxError};
use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::{
    sync::futures::OwnedNotified,
    time::{Instant, Sleep},
};
use tower_service::Service;

/// A service guarded by a circuit breaker; built by [`BreakerLayer`].
///
/// `poll_ready` asks the breaker first. When it admits the call, the permit is reserved and the
/// inner service is polled; when it does not, `poll_ready` is ready at once without touching the
/// inner service, and the response future fails with [`Open`](crate::Open) (or, with the
/// `backpressure` option, `poll_ready` stays pending until the breaker admits calls again, except
/// for a call whose permit went stale after its inner service was polled: that one fails with
/// `Open` too, as below, if it is called right away; polled ready again first, it waits). Cloning the service does not clone a reservation. As with every tower
/// service, `call` panics unless `poll_ready` returned `Ready(Ok(()))` first.
///
/// Needs `S: Clone`. A permit reserved while the inner service was getting ready can go stale
/// before the call (the breaker opened meanwhile), and the call is then rejected, with
/// backpressure too. The inner service's readiness may hold something for that call (a
/// bulkhead's permit, a place in a `ConcurrencyLimit`'s or a `Buffer`'s queue) that only a call or
/// a drop gives back. A caller kept waiting on the breaker while holding it deadlocks when the
/// breaker's own probe needs it, so backpressure keeps a caller waiting only until its inner
/// service has been polled; and a service kept uncalled (a `Buffer`'s worker keeps one for good)
/// holds up whoever needs it, such as a retry's next attempt, so before it rejects such a call
/// the breaker replaces the inner service with a clone of it, which holds nothing.
///
/// In HalfOpen, the probe slot `poll_ready` reserves counts as a probe in flight until the
/// service is called or dropped: it starts HalfOpen's bound
/// ([`max_wait_in_half_open`](crate::BreakerConfigBuilder::max_wait_in_half_open)), or keeps it
/// running. A caller that keeps a service polled ready without calling it lets the bound run out
/// on a probe never sent, and the breaker reopens however well the dependency answers. tower's
/// `p2c::Balance` does this: its `ReadyCache` polls every endpoint not yet ready on each
/// `poll_ready` and keeps the ready ones until it picks them. Put per-endpoint breakers under
/// seawall's balancer, which polls the endpoint it picked and calls it at once, or call (or drop)
/// the service soon after `poll_ready`.
///
/// An error from the inner service's `poll_ready` is passed up as it is, not classified (tower
/// takes a `poll_ready` error as terminal for the service); the permit reserved for the call is
/// handed back when the service is dropped.
pub struct Breaker<S, C = seawall_core::classify::DefaultClassifier> {
    inner: S,
    classifier: C,
    slot: Slot,
    waiting: Option<Waiting>,
    /// Whether the inner service has been polled since it was last called: its readiness may
    /// hold something for the next call.
    inner_polled: bool,
}

/// The breaker, and what `poll_ready` decided for the next call. A permit reserved and never used
/// is handed back when the slot is dropped.
struct Slot {
    shared: Arc<Shared>,
    next: Next,
}

enum Next {
    Undecided,
    Admitted(Permit),
    Rejected,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Next::Admitted(permit) = mem::replace(&mut self.next, Next::Undecided) {
            let shared = &*self.shared;
            shared::in_drop(&shared.name, || shared.release(permit));
        }
    }
}

/// A backpressure wait: for a state change or a probe slot, and for the breaker's deadline.
struct Waiting {
    notified: Pin<Box<OwnedNotified>>,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<S, C> Breaker<S, C> {
    /// Wraps `inner` in the breaker of `layer` (the same as `layer.layer(inner)`).
    pub fn new(inner: S, layer: &BreakerLayer<C>) -> Self
    where
        C: Clone,
    {
        Self::from_parts(inner, layer.shared.clone(), layer.classifier.clone())
    }

    pub(crate) fn from_parts(inner: S, shared: Arc<Shared>, classifier: C) -> Self {
        Breaker {
            inner,
            classifier,
            slot: Slot {
                shared,
                next: Next::Undecided,
            },
            waiting: None,
            inner_polled: false,
        }
    }

    /// The breaker's state now, as [`BreakerHandle::state`] gives it, without taking a handle
    /// (no reference count): cheap enough to ask on every pick of a balancer.
    pub fn state(&self) -> crate::State {
        let shared = &*self.slot.shared;
        shared.machine.tick(shared.now(), shared)
    }

    /// Whether a call made now would be let through, without taking a permit: Closed, Disabled
    /// or MetricsOnly; Open once its wait is over (the call moves it to HalfOpen); HalfOpen while a
    /// probe slot is free. A balancer's filter asks this (see `seawall-balance`'s
    /// `BreakerFilter`), so a half-open endpoint whose probes are all out gets no more calls.
    pub fn is_call_permitted(&self) -> bool {
        let shared = &*self.slot.shared;
        shared.machine.permits(|| shared.now())
    }

    /// Whether this service holds a permit the breaker still honours: `poll_ready` admitted the
    /// next call (the inner service may not be ready yet) and the breaker has started no new
    /// generation since (it changed state, or was reset), nor has HalfOpen's bound on its probes
    /// run out, so the call goes ahead with that permit. Takes nothing and changes nothing.
    ///
    /// A half-open breaker's probe slot reserved so is this service's own:
    /// [`is_call_permitted`](Self::is_call_permitted) counts it as taken, and says `false` once
    /// every slot is, though this service's call would be let through. A balancer's filter asks
    /// this of the endpoint service a waiting call holds (see `seawall-balance`'s
    /// `BreakerFilter`), so the call keeps its slot rather than giving it back and taking another.
    pub fn holds_permit(&self) -> bool {
        let Next::Admitted(permit) = &self.slot.next else {
            return false;
        };
        let machine = &self.slot.shared.machine;
        let generation = machine.generation();
        if permit.is_counted_in(generation) {
            return true;
        }
        permit.generation() == generation
            && (permit.kind() != PermitKind::Probe
                // The bound is applied lazily; its deadline, read in the same generation.
                || (machine
                    .deadline()
                    .is_none_or(|at| self.slot.shared.now() < at)
                    && machine.generation() == generation))
    }

    /// A handle on the breaker.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.slot.shared.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service; a reserved permit is handed back.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Backpressure: waits for a reason to ask the breaker again. `Ready` means ask again.
    fn wait(&mut self, cx: &mut Context<'_>, rejected: Rejected) -> Poll<()> {
        let Some(waiting) = &mut self.waiting else {
            // Register for state changes before asking again, so no change is missed.
            let shared = &self.slot.shared;
            let mut notified = Box::pin(shared.notify.clone().notified_owned());
            notified.as_mut().enable();
            let sleep = rejected
                .retry_at()
                .map(|at| Box::pin(tokio::time::sleep_until(shared.instant_at(at))));
            self.waiting = Some(Waiting { notified, sleep });
            return Poll::Ready(());
        };
        if waiting.sleep.is_none() {
            // The first rejection can come between a change of state and its deadline being
            // written, and the notice of the change before this waiter listened: take the deadline
            // from this rejection, so the wait always ends.
            if let Some(at) = rejected.retry_at() {
                let at = self.slot.shared.instant_at(at);
                waiting.sleep = Some(Box::pin(tokio::time::sleep_until(at)));
            }
        }
        let notified = waiting.notified.as_mut().poll(cx).is_ready();
        let slept = waiting
            .sleep
            .as_mut()
            .is_some_and(|sleep| sleep.as_mut().poll(cx).is_ready());
        if notified || slept {
            self.waiting = None;
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl<S, C, Req> Service<Req> for Breaker<S, C>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.slot.next {
            Next::Undecided => match self.slot.shared.machine.closed_permit() {
                Some(permit) => {
                    self.slot.next = Next::Admitted(permit);
                    if self.waiting.is_some() {
                        self.waiting = None;
                    }
                }
                None => return self.decide(cx),
            },
            Next::Admitted(ref permit) => {
                if !permit.is_counted_in(self.slot.shared.machine.generation()) {
                    return self.recheck(cx);
                }
            }
            Next::Rejected => return self.decide(cx),
        }
        self.inner_polled = true;
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let shared = &self.slot.shared;
        let permit = match mem::replace(&mut self.slot.next, Next::Undecided) {
            // A Closed call whose permit is still of the current generation.
            Next::Admitted(permit) if permit.is_counted_in(shared.machine.generation()) => permit,
            next => match settle(shared, next) {
                Some(permit) => permit,
                None => {
                    self.drop_readiness();
                    return ResponseFuture::rejected();
                }
            },
        };
        // The guard first: if the inner `call` panics, it hands the permit back (a probe slot is
        // freed) as it unwinds.
        let guard = Guard::new(shared.clone(), permit);
        self.inner_polled = false;
        // The start is read only when the call's duration is looked at; a time window reads the
        // clock when the call completes, for its bucket.
        let start = (shared.times_calls || self.classifier.uses_elapsed()).then(call_start);
        ResponseFuture::admitted(
            self.inner.call(request),
            guard,
            self.classifier.clone(),
            start,
        )
    }
}

/// The time a call starts, for its duration.
#[inline]
pub(crate) fn call_start() -> Instant {
    #[cfg(test)]
    tests::START_READS.with(|reads| reads.set(reads.get() + 1));
    Instant::now()
}

/// The permit a call goes ahead with, in every case but a Closed call whose permit is current: a
/// probe, a permit from an earlier generation, a call MetricsOnly or Disabled lets through.
/// `None`, and the rejection counted, when the call is rejected.
#[inline(never)]
fn settle(shared: &Shared, next: Next) -> Option<Permit> {
    match next {
        Next::Admitted(mut permit) => {
            // A permit reserved before the breaker changed state (the call waited above, say in
            // a full bulkhead or a rate limiter) must not let a call through a breaker that
            // opened since: ask again. A trial call's HalfOpen may also have run out of time
            // meanwhile (the only change applied lazily that matters here).
            if permit.kind() == PermitKind::Probe {
                shared.machine.tick(shared.now(), shared);
            }
            if permit.generation() != shared.machine.generation() {
                shared.release(permit);
                match shared.acquire() {
                    Ok(fresh) => permit = fresh,
                    Err(_) => {
                        shared.count_rejection();
                        return None;
                    }
                }
            }
            if permit.shadowed() {
                shared.machine.count_would_have_rejected();
            }
            Some(permit)
        }
        Next::Rejected => {
            shared.count_rejection();
            None
        }
        Next::Undecided => panic!("Breaker::call without poll_ready returning Ready first"),
    }
}

impl<S, C> Breaker<S, C> {
    /// `poll_ready` again with a permit reserved by an earlier poll that is not a current Closed
    /// one: a probe, a call MetricsOnly or Disabled lets through, or a permit of an earlier
    /// generation. A permit reserved before the breaker changed state (the inner service was not
    /// ready yet) is handed back and the breaker asked again, so an open breaker does not keep
    /// polling the inner service, and rejects the call, with backpressure too (see [`Breaker`]).
    #[inline(never)]
    fn recheck<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        let shared = &*self.slot.shared;
        if let Next::Admitted(permit) = &self.slot.next {
            if permit.kind() == PermitKind::Probe {
                // A trial call's HalfOpen may have run out of time meanwhile.
                shared.machine.tick(shared.now(), shared);
            }
            if permit.generation() != shared.machine.generation() {
                if let Next::Admitted(permit) = mem::replace(&mut self.slot.next, Next::Undecided) {
                    shared.release(permit);
                }
            }
        }
        self.decide(cx)
    }

    /// `poll_ready` in every case but a Closed breaker admitting a call not yet decided.
    #[inline(never)]
    fn decide<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req> + Clone,
        S::Error: Into<BoxError>,
    {
        // A rejection decided by an earlier poll is looked at again: the breaker may have
        // recovered since (a reset, the wait over), and a caller that polls ready again before
        // calling must not get a stale `Open`. With backpressure, a caller rejected because its
        // inner service had been polled (that readiness is dropped by now) and polling again
        // asks afresh, and so waits, holding nothing below.
        if let Next::Rejected = self.slot.next {
            if (self.slot.shared.backpressure && !self.inner_polled) || self.is_call_permitted() {
                self.slot.next = Next::Undecided;
            }
        }
        while let Next::Undecided = self.slot.next {
            match self.slot.shared.acquire() {
                Ok(permit) => {
                    self.slot.next = Next::Admitted(permit);
                    self.waiting = None;
                }
                // A caller whose inner service has been polled is not kept waiting, even with
                // backpressure, and the call it is rejected for leaves nothing held below (see
                // `Breaker`). Waiting instead, after dropping the inner service's readiness, would
                // throw away what a slow readiness (a connection being made) had done so far at
                // every HalfOpen that runs out of time first, and never let a probe through.
                Err(_) if !self.slot.shared.backpressure || self.inner_polled => {
                    self.drop_readiness();
                    self.slot.next = Next::Rejected;
                    return Poll::Ready(Ok(()));
                }
                Err(rejected) => {
                    if self.wait(cx, rejected).is_pending() {
                        return Poll::Pending;
                    }
                }
            }
        }
        match self.slot.next {
            Next::Admitted(_) => {
                self.inner_polled = true;
                self.inner.poll_ready(cx).map_err(Into::into)
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl<S: Clone, C> Breaker<S, C> {
    /// Gives back what the inner service's readiness holds for a call that is not made now (see
    /// [`Breaker`]): the inner service, polled since its last call, is replaced with a clone of
    /// it. Nothing to do when it has not been polled.
    fn drop_readiness(&mut self) {
        if mem::take(&mut self.inner_polled) {
            self.inner = self.inner.clone();
        }
    }
}

impl<S: Clone, C: Clone> Clone for Breaker<S, C> {
    fn clone(&self) -> Self {
        Breaker::from_parts(
            self.inner.clone(),
            self.slot.shared.clone(),
            self.classifier.clone(),
        )
    }
}

impl<S: fmt::Debug, C> fmt::Debug for Breaker<S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("inner", &self.inner)
            .field("breaker", &self.slot.shared)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use crate::{BreakerLayer, SlidingWindow};
    use seawall_core::classify::Outcome;
    use std::{cell::Cell, convert::Infallible, time::Duration};
    use tower::{service_fn, Layer, Service, ServiceExt};

    thread_local! {
        /// How many times a call's start time was read on this thread.
        pub(super) static START_READS: Cell<u64> = const { Cell::new(0) };
    }

    fn time_window() -> crate::BreakerConfigBuilder {
        BreakerLayer::builder().sliding_window(SlidingWindow::time_with_buckets(
            Duration::from_secs(10),
            10,
        ))
    }

    /// Makes `calls` calls through `layer` and counts the start times read.
    async fn start_reads<C>(layer: BreakerLayer<C>, calls: u64) -> u64
    where
        C: seawall_core::classify::Classify<u32, Infallible> + Clone,
    {
        let mut svc = layer.layer(service_fn(|n: u32| async move { Ok::<_, Infallible>(n) }));
        let before = START_READS.with(Cell::get);
        for n in 0..calls as u32 {
            assert_eq!(svc.ready().await.unwrap().call(n).await.unwrap(), n);
        }
        START_READS.with(Cell::get) - before
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_start_is_read_only_when_its_duration_is_looked_at() {
        // A time window reads the clock when a call completes, not when it starts.
        let plain = time_window().build().unwrap();
        assert_eq!(start_reads(plain, 5).await, 0, "time window alone");

        let slow_rule = time_window()
            .slow_call_rate_threshold(0.5)
            .slow_call_duration(Duration::from_millis(100))
            .build()
            .unwrap();
        assert_eq!(start_reads(slow_rule, 5).await, 5, "slow-call rule");

        let timing_classifier = time_window().build().unwrap().with_classifier(
            |result: Result<&u32, &Infallible>, _: Duration| match result {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            },
        );
        assert_eq!(
            start_reads(timing_classifier, 5).await,
            5,
            "classifier using elapsed"
        );
    }
}
