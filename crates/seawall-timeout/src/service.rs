use crate::{
    layer::{Override, Shared},
    ResponseFuture, TimeoutEvent, TimeoutLayer,
};
use seawall_core::{
    deadline::{deadline_after, RequestDeadline},
    BoxError, Listeners,
};
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower_service::Service;

/// One tick of tokio's timer: how long before `call` a deadline this layer enforces must have
/// passed for the call not to be made, and how much later than this layer's own deadline one left
/// to a layer further out may be for the call to be timed at it, so that both timers fire on one
/// tick.
const TICK: Duration = Duration::from_millis(1);

/// Fails calls to `S` that do not answer by their deadline; see the [crate docs](crate).
///
/// A call whose deadline (an earlier one on the request, which this layer enforces) had passed a
/// millisecond (a tick of tokio's timer) or more before `call` is not made: the inner service is not called, and the call fails
/// with [`Elapsed`](crate::Elapsed) on its first poll. What the inner service's `poll_ready`
/// reserved for it (a bulkhead's permit, a breaker's permit or half-open probe slot, a place in a
/// `Buffer`) stays with the service for its next call, as tower's contract allows, and goes back
/// when the service is dropped: a caller that calls a clone once (`oneshot`) gives it back at
/// once, one that keeps the service (a `Buffer`'s worker) holds it until its next call. No seawall
/// layer needs a call after `poll_ready`, but a half-open breaker below counts a probe slot held
/// so as a probe in flight (see `seawall-breaker`'s `Breaker`).
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    shared: Arc<Shared>,
}

// ===== impl Timeout =====

impl<S> Timeout<S> {
    /// Wraps `inner` in a timeout of `timeout` (a one-off policy; build a [`TimeoutLayer`] to
    /// share one between services).
    pub fn new(inner: S, timeout: Duration) -> Self {
        tower_layer::Layer::layer(&TimeoutLayer::new(timeout), inner)
    }

    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Timeout { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The listeners a response future reports to: `None` unless one is registered, so the
    /// common case copies no reference count.
    #[inline]
    fn listeners(&self) -> Option<Listeners<TimeoutEvent>> {
        (!self.shared.listeners.is_empty()).then(|| self.shared.listeners.clone())
    }
}

impl<S, Req> Service<Req> for Timeout<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: RequestDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let now = Instant::now();
        let timeout = match self.shared.reads {
            Override::Total => req.timeout_override().unwrap_or(self.shared.timeout),
            // A zero per-try override is ignored: it would cut every attempt not ready on its
            // first poll.
            Override::PerTry => req
                .per_try_timeout_override()
                .filter(|t| !t.is_zero())
                .unwrap_or(self.shared.timeout),
            Override::Ignored => self.shared.timeout,
        };
        let own = deadline_after(now, timeout);
        let outer = req.deadline();
        // A deadline left to a layer further out that is due with this one's (within a tick
        // after it, as tokio's timer rounds both up to a tick) or before it is that layer's to
        // cut: when both have passed this layer holds its cut for one poll (see `ResponseFuture`).
        // A layer that enforces an earlier deadline cuts the call at it itself, and reports it.
        let outer_first = !self.shared.enforce_outer
            && outer.is_some_and(|outer| outer.saturating_duration_since(own) <= TICK);
        let (deadline, send) = match outer {
            // An earlier deadline stays on the request; this layer enforces it unless told to
            // leave it to a layer further out. One that passed a timer tick or more ago is not
            // sent: nothing sent now could answer in time. A deadline a layer further out has just
            // written (`Duration::ZERO`) passes by the nanoseconds between the two clock reads,
            // and is still sent.
            Some(outer) if outer <= own && self.shared.enforce_outer => {
                (outer, now.saturating_duration_since(outer) < TICK)
            }
            Some(outer) if outer <= own => (own, true),
            // One left to a layer further out and due within a tick after this one's may fire on
            // the tick after this one's timer: the call is timed at it instead, so both timers
            // fire on one tick, and it stays on the request.
            Some(outer) if outer_first => (outer, true),
            _ => {
                if self.shared.propagate {
                    req.set_deadline(own);
                }
                (own, true)
            }
        };
        // One place builds the response future, sent or not, so it is built where it is returned.
        let future = send.then(|| self.inner.call(req));
        ResponseFuture::new(
            future,
            now,
            deadline,
            self.shared.name,
            self.listeners(),
            outer_first,
        )
    }
}
