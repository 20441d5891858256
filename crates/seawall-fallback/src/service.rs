use crate::{
    context::{Captured, NoContext, WithRequest},
    layer::Shared,
    ContextHandler, FallbackEvent, FallbackHandler, ResponseFuture,
};
use seawall_core::{BoxError, Classify};
use std::{
    error::Error,
    fmt,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::time::Instant;
use tower_service::Service;

/// Answers failed calls to `S` from a fallback; see the [crate docs](crate).
///
/// `X` is what the service takes from each request: [`NoContext`] (the default), or
/// [`WithRequest`], whose closure runs in `call` and whose context goes to the fallback with what
/// failed (see [`with_request`](crate::FallbackBuilder::with_request)).
///
/// A readiness error of `S` that the layer handles is kept: from then on `poll_ready` reports
/// ready and every call is answered from the fallback with that error. `S` itself is dropped (a
/// service whose `poll_ready` failed is gone, as tower's `Buffer` treats its worker), and with it
/// whatever the layers inside it had reserved for the call that never came: a bulkhead's permit,
/// a HalfOpen breaker's probe, which are shared with every other service of those layers. From
/// then on [`get_ref`](Self::get_ref), [`get_mut`](Self::get_mut) and
/// [`into_inner`](Self::into_inner) return `None`. A clone of a failed `Fallback` is failed too,
/// with the same error; a clone made before the failure keeps its own inner service. Each service
/// that keeps such an error reports it once, when `poll_ready` keeps it:
/// [`FallbackEvent::InnerFailed`](crate::FallbackEvent::InnerFailed) to the listeners, and a
/// `tracing` event, at `warn` at most once a minute per layer (for the first service of the
/// layer to keep one, then for the first a minute or more after the last warning) and at `debug`
/// otherwise. A service cloned per call whose clones fail to get ready reports on each call.
/// Readiness errors the layer does not handle are returned as they are.
///
/// So this layer belongs above a balancer (outermost, as in the canonical stack), never on each
/// endpoint below one. A balancer takes an endpoint's readiness error as one the endpoint may
/// recover from: it counts it against the endpoint and polls the endpoint again later. A
/// `Fallback` on the endpoint answers the call from the fallback instead, with an `Ok` that
/// outlier detection counts as a success and latency-aware picking (PeakEWMA) takes for a fast
/// answer, so an endpoint that cannot even connect draws more calls instead of being ejected. A
/// balancer that keeps each endpoint's service instead of cloning it per call (tower's
/// `p2c::Balance`) would also keep a failed `Fallback`: ready from then on, answering every call
/// it is given from the fallback.
pub struct Fallback<S, H, C, X = NoContext> {
    state: State<S>,
    shared: Arc<Shared<H, C>>,
    context: X,
}

/// The inner service, or the readiness error that ended it.
enum State<S> {
    /// Polled and called as usual.
    Running(S),
    /// The inner service failed to get ready with an error the layer handles, and was dropped:
    /// every call is answered from the fallback with this error.
    Failed(Arc<dyn Error + Send + Sync>),
}

// ===== impl Fallback =====

impl<S, H, C, X> Fallback<S, H, C, X> {
    pub(crate) fn from_parts(inner: S, shared: Arc<Shared<H, C>>, context: X) -> Self {
        Fallback {
            state: State::Running(inner),
            shared,
            context,
        }
    }

    /// The inner service; `None` once it failed to get ready and was dropped.
    pub fn get_ref(&self) -> Option<&S> {
        match &self.state {
            State::Running(inner) => Some(inner),
            State::Failed(_) => None,
        }
    }

    /// The inner service, mutably; `None` once it failed to get ready and was dropped.
    pub fn get_mut(&mut self) -> Option<&mut S> {
        match &mut self.state {
            State::Running(inner) => Some(inner),
            State::Failed(_) => None,
        }
    }

    /// Unwraps the inner service; `None` once it failed to get ready and was dropped.
    pub fn into_inner(self) -> Option<S> {
        match self.state {
            State::Running(inner) => Some(inner),
            State::Failed(_) => None,
        }
    }
}

impl<S, H, C, Req> Service<Req> for Fallback<S, H, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    H: FallbackHandler<S::Response>,
    C: Classify<S::Response, BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, H, C, S::Response>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_inner_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.call_with(req, ())
    }
}

/// A service that captures a context from each request: the closure runs here, in `call`, for
/// the inner service's calls and for those answered from the fallback after a readiness error.
///
/// A panic in the closure is caught and resumed when the call's future is first polled, in the
/// caller's task rather than wherever `call` ran (a `Buffer`'s worker, which would die with it).
/// The request is dropped without calling the inner service, and what its `poll_ready` reserved
/// for the call (a bulkhead's permit, a HalfOpen breaker's probe, a `Buffer` slot) is given back
/// at once: the ready inner service is replaced with a clone of it, which holds nothing, and
/// dropped. Kept for the next call instead, it would stay held while this service gets no call —
/// for good by a `Buffer`'s worker, which polls readiness only when it has a request — away from
/// every other service of those layers. Hence `S: Clone`.
impl<S, H, C, G, Req, Ctx> Service<Req> for Fallback<S, H, C, WithRequest<G>>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    G: Fn(&Req) -> Ctx,
    H: ContextHandler<S::Response, Captured<Ctx>>,
    C: Classify<S::Response, BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, H, C, S::Response, Captured<Ctx>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.poll_inner_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        match self.context.capture(&req) {
            Ok(context) => self.call_with(req, context),
            Err(panic) => {
                self.unreserve();
                ResponseFuture::panicked(panic, self.shared.clone())
            }
        }
    }
}

impl<S: Clone, H, C, X> Fallback<S, H, C, X> {
    /// The inner service was polled ready for a call that will not come: replaces it with a clone,
    /// which holds nothing, and drops it with what its `poll_ready` reserved.
    #[cold]
    #[inline(never)]
    fn unreserve(&mut self) {
        if let State::Running(inner) = &mut self.state {
            *inner = inner.clone();
        }
    }
}

impl<S, H, C, X> Fallback<S, H, C, X> {
    #[inline]
    fn poll_inner_ready<Req>(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        let inner = match &mut self.state {
            State::Running(inner) => inner,
            State::Failed(_) => return Poll::Ready(Ok(())),
        };
        match ready!(inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(self.hold_back(error.into())),
        }
    }

    /// Calls the inner service, or answers from the fallback with the kept readiness error; a
    /// failure hands `context` to the fallback.
    #[inline]
    fn call_with<Req, Ctx>(
        &mut self,
        req: Req,
        context: Ctx,
    ) -> ResponseFuture<S::Future, H, C, S::Response, Ctx>
    where
        S: Service<Req>,
        H: ContextHandler<S::Response, Ctx>,
        C: Classify<S::Response, BoxError>,
    {
        match &mut self.state {
            State::Running(inner) => {
                let started = self.shared.classifier.uses_elapsed().then(Instant::now);
                ResponseFuture::new(inner.call(req), self.shared.clone(), started, context)
            }
            State::Failed(error) => {
                ResponseFuture::not_ready(error.clone(), self.shared.clone(), context)
            }
        }
    }

    /// Keeps a readiness error the layer handles for every later call to answer from the
    /// fallback, dropping the failed inner service and what it reserved; returns any other.
    #[cold]
    fn hold_back(&mut self, error: BoxError) -> Result<(), BoxError> {
        if !self.shared.handles(&*error) {
            return Err(error);
        }
        let shared = &*self.shared;
        if !shared.inner_failed.warn_now() {
            tracing::debug!(
                name = %shared.name,
                error = %error,
                "seawall fallback: inner service failed readiness; answering every call from the fallback"
            );
        } else {
            tracing::warn!(
                name = %shared.name,
                error = %error,
                "seawall fallback: inner service failed readiness; answering every call from the fallback"
            );
        }
        shared
            .listeners
            .emit(&shared.name, &FallbackEvent::InnerFailed);
        self.state = State::Failed(Arc::from(error));
        Ok(())
    }
}

impl<S: Clone, H, C, X: Clone> Clone for Fallback<S, H, C, X> {
    /// A clone of a failed service is failed too, with the same error, and has no inner service.
    fn clone(&self) -> Self {
        Fallback {
            state: match &self.state {
                State::Running(inner) => State::Running(inner.clone()),
                State::Failed(error) => State::Failed(error.clone()),
            },
            shared: self.shared.clone(),
            context: self.context.clone(),
        }
    }
}

impl<S: fmt::Debug, H, C, X: fmt::Debug> fmt::Debug for Fallback<S, H, C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.get_ref())
            .field("policy", &*self.shared)
            .field("context", &self.context)
            .field("failed", &matches!(self.state, State::Failed(_)))
            .finish()
    }
}
