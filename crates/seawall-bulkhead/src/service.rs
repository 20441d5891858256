use crate::{
    future::ResponseFuture,
    release::{OnResponse, Release},
    state::{Permit, Place, Shared, Unreserved},
    BulkheadLayer,
};
use seawall_core::{classify::DefaultClassifier, BoxError, Classify};
use std::{
    fmt, mem,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::time::Instant;
use tower_service::Service;

/// A bulkhead around `S`: at most the limit of calls run at once; the rest wait up to `max_wait`
/// or are rejected with [`Full`](crate::Full).
///
/// Made by [`BulkheadLayer`]; every service a layer makes, and every clone, shares its permits.
/// See the [crate docs](crate) for readiness and waiting.
pub struct Bulkhead<S, C = DefaultClassifier, R = OnResponse> {
    inner: S,
    shared: Arc<Shared>,
    classifier: Arc<C>,
    reserved: Option<Permit>,
    /// Backpressure mode: this service's place in the queue while `poll_ready` waits.
    place: Option<Place>,
    /// Whether the inner service has been polled since it was last called (or handed to a
    /// waiting call): its readiness may hold something for the next call.
    inner_polled: bool,
    /// `poll_ready` found no permit free, for a call that may not wait, before it polled the
    /// inner service: `call` rejects the call, whatever the permits are by then.
    full: bool,
    _release: std::marker::PhantomData<fn() -> R>,
}

impl<S, C, R> Bulkhead<S, C, R> {
    /// Wraps `inner` in the bulkhead `layer` (the same as `layer.layer(inner)`).
    pub fn new(inner: S, layer: &BulkheadLayer<C, R>) -> Self {
        let (shared, classifier) = layer.parts();
        Bulkhead {
            inner,
            shared,
            classifier,
            reserved: None,
            place: None,
            inner_polled: false,
            full: false,
            _release: std::marker::PhantomData,
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

    /// The inner service; a reserved permit goes back to the bulkhead.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, C, R, Req> Service<Req> for Bulkhead<S, C, R>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
    R: Release<S::Response>,
{
    type Response = R::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req, C, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.reserved.is_none() {
            if self.shared.fail_fast {
                // A call that may not wait is rejected if no permit is free. Decided here, before
                // the inner service is polled, the rejection leaves nothing held below. An inner
                // service polled already (it was pending, say) is polled on, and `call` gives
                // back what its readiness holds if the call is rejected after all.
                if !self.inner_polled {
                    self.full = !self.shared.has_free_permit();
                    if self.full {
                        return Poll::Ready(Ok(()));
                    }
                }
            } else if self.shared.backpressure {
                ready!(self.poll_queued(cx));
            } else if !self.inner_polled && !self.shared.has_free_permit() {
                // A call that may wait takes its permit before the inner service's readiness:
                // it queues in `call` with a clone of the inner service, polled ready only once
                // the permit is its own. Polled now, the inner service's readiness (a permit of
                // a limit below, a place in a `Buffer`) would be held while the call waits, and
                // could hold up the very call whose permit it waits for.
                return Poll::Ready(Ok(()));
            }
        }
        self.inner_polled = true;
        ready!(self.inner.poll_ready(cx)).map_err(Into::into)?;
        if self.reserved.is_none() {
            self.reserved = Permit::try_acquire(&self.shared);
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let permit = match self.reserved.take() {
            Some(permit) => permit,
            // The rejection `poll_ready` decided stands, even if a permit has freed since: the
            // inner service was not polled for this call.
            None if self.full => return self.reject_unpolled(),
            None => match Permit::try_acquire_or_reject(&self.shared) {
                Unreserved::Acquired(permit) if self.inner_polled => permit,
                // `poll_ready` found no permit free and did not poll the inner service; one has
                // freed since. The call starts once its inner service is ready.
                Unreserved::Acquired(permit) => return self.call_unpolled(permit, request),
                Unreserved::Rejected => return self.reject(),
                Unreserved::Wait { place, deadline } => {
                    return self.call_waiting(place, deadline, request)
                }
            },
        };
        let timing = permit.start();
        let classifier = if self.shared.is_adaptive() {
            Some(self.classifier.clone())
        } else {
            None
        };
        self.inner_polled = false;
        ResponseFuture::running(self.inner.call(request), permit, timing, classifier)
    }
}

impl<S: Clone, C, R> Bulkhead<S, C, R> {
    /// The bulkhead is full and the call may not wait: it fails with [`Full`](crate::Full). When
    /// `poll_ready` found a permit free, the inner service was polled for the call, and its
    /// readiness may hold something for it (a permit of a limit below, a place in a `Buffer`)
    /// that only a call or a drop gives back. Kept by a service that gets no call for a while (a
    /// `Buffer`'s worker keeps one for good), it would hold up whoever needs it, such as the next
    /// attempt of a retry below whose call holds this bulkhead's permit: a deadlock. So an inner
    /// service polled since its last call is replaced with a clone of it, which holds nothing.
    #[cold]
    #[inline(never)]
    fn reject<F, Req>(&mut self) -> ResponseFuture<F, S, Req, C, R> {
        if mem::take(&mut self.inner_polled) {
            self.inner = self.inner.clone();
        }
        ResponseFuture::rejected()
    }
}

impl<S, C, R> Bulkhead<S, C, R> {
    /// The rejection `poll_ready` decided, without polling the inner service: nothing to give
    /// back.
    #[cold]
    #[inline(never)]
    fn reject_unpolled<F, Req>(&mut self) -> ResponseFuture<F, S, Req, C, R> {
        self.full = false;
        self.shared.reject(false);
        ResponseFuture::rejected()
    }
}

impl<S, C, R> Bulkhead<S, C, R> {
    /// Backpressure: waits in the queue for a permit and reserves it.
    #[inline(never)]
    fn poll_queued(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let shared = &self.shared;
        let place = self.place.get_or_insert_with(|| Place::new(shared.clone()));
        // A place queued here has no deadline, so it is always handed a permit in the end.
        self.reserved = ready!(place.poll_acquire(cx)).ok();
        Poll::Ready(())
    }

    /// No permit is free and `max_wait` is above zero: the call, queued at `place`, waits for one
    /// in its future until `deadline`, then polls its inner service ready and calls it.
    ///
    /// The future gets a clone of the inner service that was not polled, so it holds nothing
    /// below while it waits. An inner service polled for this call (a permit was free when
    /// `poll_ready` looked, and gone by now) is replaced with a clone too: its readiness is
    /// handed back rather than kept for a later call.
    #[cold]
    #[inline(never)]
    fn call_waiting<Req>(
        &mut self,
        place: Place,
        deadline: Instant,
        request: Req,
    ) -> ResponseFuture<S::Future, S, Req, C, R>
    where
        S: Service<Req> + Clone,
    {
        let unpolled = self.unpolled_inner();
        ResponseFuture::waiting(
            place,
            deadline,
            unpolled,
            request,
            self.adaptive_classifier(),
        )
    }

    /// `poll_ready` did not poll the inner service, for a call that could wait, but a permit has
    /// freed by `call`: the call holds it, and its future polls a clone of the inner service
    /// ready before it calls it.
    #[cold]
    #[inline(never)]
    fn call_unpolled<Req>(
        &mut self,
        permit: Permit,
        request: Req,
    ) -> ResponseFuture<S::Future, S, Req, C, R>
    where
        S: Service<Req> + Clone,
    {
        let unpolled = self.inner.clone();
        ResponseFuture::starting(permit, unpolled, request, self.adaptive_classifier())
    }

    /// A clone of the inner service for a call's future to poll ready later; an inner service
    /// polled since its last call is replaced with a clone, which drops what its readiness
    /// holds.
    fn unpolled_inner(&mut self) -> S
    where
        S: Clone,
    {
        if mem::take(&mut self.inner_polled) {
            self.inner = self.inner.clone();
        }
        self.inner.clone()
    }

    fn adaptive_classifier(&self) -> Option<Arc<C>> {
        if self.shared.is_adaptive() {
            Some(self.classifier.clone())
        } else {
            None
        }
    }
}

impl<S: Clone, C, R> Clone for Bulkhead<S, C, R> {
    /// A clone shares the bulkhead but not this service's reserved permit.
    fn clone(&self) -> Self {
        Bulkhead {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
            reserved: None,
            place: None,
            inner_polled: false,
            full: false,
            _release: std::marker::PhantomData,
        }
    }
}

impl<S: fmt::Debug, C, R> fmt::Debug for Bulkhead<S, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bulkhead")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("reserved", &self.reserved.is_some())
            .finish()
    }
}
