use crate::context::Captured;
use pin_project_lite::pin_project;
use seawall_core::{error, BoxError, RequestDeadline};
use std::{
    error::Error,
    fmt,
    future::{ready, Future, Ready},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{self, Context, Poll},
};
use tower_service::Service;

/// What failed, as handed to a fallback.
pub enum Failed<Res> {
    /// The call failed with this error.
    Error(Arc<dyn Error + Send + Sync>),
    /// The call answered with a response the classifier called a failure.
    Response(Res),
}

impl<Res> Failed<Res> {
    /// The error, if the call failed with one.
    pub fn error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match self {
            Failed::Error(e) => Some(&**e),
            Failed::Response(_) => None,
        }
    }

    /// Whether the call failed with an error of type `T` (anywhere in the source chain).
    pub fn is<T: Error + 'static>(&self) -> bool {
        self.error().is_some_and(|e| error::is::<T>(e))
    }

    /// The failed response, if the call answered with one.
    pub fn response(&self) -> Option<&Res> {
        match self {
            Failed::Response(r) => Some(r),
            Failed::Error(_) => None,
        }
    }

    /// Takes the failed response, if the call answered with one.
    pub fn into_response(self) -> Option<Res> {
        match self {
            Failed::Response(r) => Some(r),
            Failed::Error(_) => None,
        }
    }
}

/// A failed call carries no deadline: a `TimeoutLayer` around a fallback service bounds the
/// fallback's call on its own, whatever time the original call used. It does not bound the wait
/// for the fallback service's readiness, which comes before the call (see [`FromService`]).
impl<Res> RequestDeadline for Failed<Res> {}

impl<Res> fmt::Debug for Failed<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Error(e) => f.debug_tuple("Error").field(e).finish(),
            Failed::Response(_) => f.debug_tuple("Response").finish_non_exhaustive(),
        }
    }
}

/// A failed call with the context captured from its request: what a fallback service built after
/// [`with_request`](crate::FallbackBuilder::with_request) is called with.
pub struct FailedCall<Res, Ctx> {
    /// What failed: the error, or the failed response.
    pub failed: Failed<Res>,
    /// What [`with_request`](crate::FallbackBuilder::with_request) took from the call's request.
    pub context: Ctx,
}

/// A failed call carries no deadline, as [`Failed`] does not.
impl<Res, Ctx> RequestDeadline for FailedCall<Res, Ctx> {}

impl<Res, Ctx: fmt::Debug> fmt::Debug for FailedCall<Res, Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FailedCall")
            .field("failed", &self.failed)
            .field("context", &self.context)
            .finish()
    }
}

/// Produces the answer for a failed call.
///
/// Implemented by [`FromFn`] (a synchronous closure) and [`FromService`] (an async service);
/// the builder's `build_fn` and `build_service` wrap them for you. A fallback that receives the
/// request's context is a [`ContextHandler`] instead.
pub trait FallbackHandler<Res> {
    /// The fallback's error.
    type Error: Into<BoxError>;
    /// The fallback's answer.
    type Future: Future<Output = Result<Res, Self::Error>>;

    /// Answers for a failed call.
    fn handle(&self, failed: Failed<Res>) -> Self::Future;

    /// Whether the fallback may send a request: `true` unless overridden. When it is taken as
    /// one that sends nothing ([`FromFn`]), its failure leaves a call that was never sent never
    /// sent, unless the error is marked [`SentEarlier`](seawall_core::error::SentEarlier) (see
    /// [`FallbackFailed`](crate::FallbackFailed)).
    fn may_send(&self) -> bool {
        true
    }

    /// Whether the fallback may have sent a request in the call whose `future` failed:
    /// [`may_send`](Self::may_send) unless overridden. Asked only after `future` returned `Err`,
    /// never of one still running or one that answered. [`FromService`] answers `false` when its
    /// service failed to get ready, and so was never called; a handler that wraps a `FromService`
    /// asks it in turn. The other way to say that a fallback sent nothing is its error: one with a
    /// [`NotSent`](seawall_core::error::NotSent) as its source keeps a call never sent never sent,
    /// whatever this answers.
    fn may_have_sent(&self, future: &Self::Future) -> bool {
        let _ = future;
        self.may_send()
    }
}

/// Produces the answer for a failed call from what failed and the context captured from its
/// request: `Ctx` is `()` for a layer without [`with_request`](crate::FallbackBuilder::with_request)
/// (every [`FallbackHandler`] is one), [`Captured<T>`] for a layer with it.
///
/// Implemented by [`FromFn`] and [`FromService`]; the builder wraps them for you.
pub trait ContextHandler<Res, Ctx> {
    /// The fallback's error.
    type Error: Into<BoxError>;
    /// The fallback's answer.
    type Future: Future<Output = Result<Res, Self::Error>>;

    /// Answers for a failed call, given the context captured from its request.
    fn handle(&self, failed: Failed<Res>, context: Ctx) -> Self::Future;

    /// Whether the fallback may send a request: `true` unless overridden. When it is taken as
    /// one that sends nothing ([`FromFn`]), its failure leaves a call that was never sent never
    /// sent, unless the error is marked [`SentEarlier`](seawall_core::error::SentEarlier) (see
    /// [`FallbackFailed`](crate::FallbackFailed)).
    fn may_send(&self) -> bool {
        true
    }

    /// Whether the fallback may have sent a request in the call whose `future` failed:
    /// [`may_send`](Self::may_send) unless overridden. Asked only after `future` returned `Err`,
    /// never of one still running or one that answered. [`FromService`] answers `false` when its
    /// service failed to get ready, and so was never called; a handler that wraps a `FromService`
    /// asks it in turn. The other way to say that a fallback sent nothing is its error: one with a
    /// [`NotSent`](seawall_core::error::NotSent) as its source keeps a call never sent never sent,
    /// whatever this answers.
    fn may_have_sent(&self, future: &Self::Future) -> bool {
        let _ = future;
        self.may_send()
    }
}

impl<H, Res> ContextHandler<Res, ()> for H
where
    H: FallbackHandler<Res>,
{
    type Error = H::Error;
    type Future = H::Future;

    #[inline]
    fn handle(&self, failed: Failed<Res>, (): ()) -> Self::Future {
        FallbackHandler::handle(self, failed)
    }

    #[inline]
    fn may_send(&self) -> bool {
        FallbackHandler::may_send(self)
    }

    #[inline]
    fn may_have_sent(&self, future: &Self::Future) -> bool {
        FallbackHandler::may_have_sent(self, future)
    }
}

/// A fallback from a synchronous closure.
///
/// It is taken as one that sends nothing, so when it fails over a call that was never sent, the
/// call stays never sent (see [`FallbackFailed`](crate::FallbackFailed)). A closure that does send
/// (a blocking client, a copy spawned off) belongs in a service,
/// `build_service(service_fn(..))`, or marks its error with a
/// [`SentEarlier`](seawall_core::error::SentEarlier).
///
/// The closure is shared by every service of the layer, so those services are `Send` when it is
/// `Send + Sync` (a closure that captures no `Cell` or `RefCell`).
#[derive(Clone, Copy)]
pub struct FromFn<F>(pub(crate) F);

impl<F, Res> FallbackHandler<Res> for FromFn<F>
where
    F: Fn(Failed<Res>) -> Result<Res, BoxError>,
{
    type Error = BoxError;
    type Future = Ready<Result<Res, BoxError>>;

    fn handle(&self, failed: Failed<Res>) -> Self::Future {
        ready((self.0)(failed))
    }

    /// A closure is taken as one that sends nothing.
    fn may_send(&self) -> bool {
        false
    }
}

/// A closure given the context too: `Fn(Failed<Res>, Ctx)`, built after
/// [`with_request`](crate::FallbackBuilder::with_request).
impl<F, Res, Ctx> ContextHandler<Res, Captured<Ctx>> for FromFn<F>
where
    F: Fn(Failed<Res>, Ctx) -> Result<Res, BoxError>,
{
    type Error = BoxError;
    type Future = Ready<Result<Res, BoxError>>;

    fn handle(&self, failed: Failed<Res>, context: Captured<Ctx>) -> Self::Future {
        ready((self.0)(failed, context.0))
    }

    /// A closure is taken as one that sends nothing.
    fn may_send(&self) -> bool {
        false
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

/// A fallback from a service that takes [`Failed`] requests, or [`FailedCall`] requests when the
/// layer captures a context from each request.
///
/// Each fallback call clones the service and drives the clone to readiness (a [`FallbackCall`],
/// like tower's [`oneshot`](tower::ServiceExt::oneshot)), so the fallback service is never called
/// unready. A clone that fails to get ready was never called and sent nothing: over a call never
/// sent, its failure leaves the call never sent (see [`FallbackFailed`](crate::FallbackFailed)).
///
/// A `TimeoutLayer` around the fallback service does not bound that wait for readiness: its
/// deadline starts at `call`, and its `poll_ready` is the inner service's. A fallback service that
/// waits for capacity in `poll_ready` (a bulkhead or rate limiter with `backpressure`, a full
/// `Buffer`, a `ConcurrencyLimit`, tower's `Balance` with no endpoint ready) holds the call for as
/// long as that lasts. Bound such a wait where it happens: a bulkhead's or rate limiter's
/// `max_wait` instead of `backpressure` waits inside the response future, under the timeout. A
/// total timeout above the fallback layer bounds the original call and the fallback together.
///
/// The service is kept behind a lock, taken only to clone it for a fallback call: a service that
/// is `Send` but not `Sync` (a [`BoxCloneService`](tower::util::BoxCloneService)) still gives a
/// layer and services that are `Send + Sync`.
pub struct FromService<T>(Mutex<T>);

impl<T> FromService<T> {
    pub(crate) fn new(service: T) -> Self {
        FromService(Mutex::new(service))
    }

    /// A clone of the service. A panic in a clone left the lock poisoned, not the service.
    fn service(&self) -> T
    where
        T: Clone,
    {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<T, Res> FallbackHandler<Res> for FromService<T>
where
    T: Service<Failed<Res>, Response = Res> + Clone,
    T::Error: Into<BoxError>,
{
    type Error = T::Error;
    type Future = FallbackCall<T, Failed<Res>>;

    fn handle(&self, failed: Failed<Res>) -> Self::Future {
        FallbackCall::new(self.service(), failed)
    }

    /// Not when the service failed to get ready: it was never called.
    fn may_have_sent(&self, future: &Self::Future) -> bool {
        future.called()
    }
}

/// A service given the context too: a `Service<FailedCall<Res, Ctx>>`, built after
/// [`with_request`](crate::FallbackBuilder::with_request).
impl<T, Res, Ctx> ContextHandler<Res, Captured<Ctx>> for FromService<T>
where
    T: Service<FailedCall<Res, Ctx>, Response = Res> + Clone,
    T::Error: Into<BoxError>,
{
    type Error = T::Error;
    type Future = FallbackCall<T, FailedCall<Res, Ctx>>;

    fn handle(&self, failed: Failed<Res>, context: Captured<Ctx>) -> Self::Future {
        let call = FailedCall {
            failed,
            context: context.0,
        };
        FallbackCall::new(self.service(), call)
    }

    /// Not when the service failed to get ready: it was never called.
    fn may_have_sent(&self, future: &Self::Future) -> bool {
        future.called()
    }
}

impl<T: Clone> Clone for FromService<T> {
    fn clone(&self) -> Self {
        FromService::new(self.service())
    }
}

impl<T: fmt::Debug> fmt::Debug for FromService<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_tuple("FromService").field(&*service).finish()
    }
}

pin_project! {
    /// One call of a [`FromService`] fallback: drives its clone of the service to readiness, then
    /// calls it, as tower's [`Oneshot`](tower::util::Oneshot) does. Whether it got as far as the
    /// call is what `FromService` answers to
    /// [`may_have_sent`](FallbackHandler::may_have_sent).
    pub struct FallbackCall<T, Req>
    where
        T: Service<Req>,
    {
        #[pin]
        state: CallState<T, Req, T::Future>,
    }
}

pin_project! {
    #[project = CallStateProj]
    enum CallState<T, Req, F> {
        // Waiting for the service to get ready; the request is taken when it is called.
        NotReady { service: T, req: Option<Req> },
        Called { #[pin] fut: F },
    }
}

impl<T: Service<Req>, Req> FallbackCall<T, Req> {
    fn new(service: T, req: Req) -> Self {
        FallbackCall {
            state: CallState::NotReady {
                service,
                req: Some(req),
            },
        }
    }

    /// Whether the service was called: `false` while it is getting ready, and after its
    /// `poll_ready` failed.
    pub(crate) fn called(&self) -> bool {
        matches!(self.state, CallState::Called { .. })
    }
}

impl<T: Service<Req>, Req> Future for FallbackCall<T, Req> {
    type Output = Result<T::Response, T::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                CallStateProj::NotReady { service, req } => {
                    task::ready!(service.poll_ready(cx))?;
                    let req = req
                        .take()
                        .expect("FallbackCall polled after its service panicked");
                    let fut = service.call(req);
                    this.state.set(CallState::Called { fut });
                }
                CallStateProj::Called { fut } => return fut.poll(cx),
            }
        }
    }
}

impl<T: Service<Req>, Req> fmt::Debug for FallbackCall<T, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackCall")
            .field("called", &self.called())
            .finish()
    }
}
