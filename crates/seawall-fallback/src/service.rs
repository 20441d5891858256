use crate::{layer::Shared, FallbackHandler, ResponseFuture};
use seawall_core::{BoxError, Classify};
use std::{
    fmt,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::time::Instant;
use tower_service::Service;

/// Answers failed calls to `S` from a fallback; see the [crate docs](crate).
///
/// A readiness error of `S` that the layer handles is held back: `poll_ready` reports ready, and
/// the next call is answered from the fallback with that error, without calling `S`. The call
/// after it polls `S` ready again. Readiness errors the layer does not handle are returned as
/// they are.
pub struct Fallback<S, H, C> {
    inner: S,
    shared: Arc<Shared<H, C>>,
    not_ready: Option<BoxError>,
}

// ===== impl Fallback =====

impl<S, H, C> Fallback<S, H, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<H, C>>) -> Self {
        Fallback {
            inner,
            shared,
            not_ready: None,
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

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
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
        if self.not_ready.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(self.hold_back(error.into())),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(error) = self.not_ready.take() {
            return ResponseFuture::not_ready(error, self.shared.clone());
        }
        let started = self.shared.classifier.uses_elapsed().then(Instant::now);
        ResponseFuture::new(self.inner.call(req), self.shared.clone(), started)
    }
}

impl<S, H, C> Fallback<S, H, C> {
    /// Keeps a readiness error the layer handles for the next call to answer from the fallback;
    /// returns any other.
    #[cold]
    fn hold_back(&mut self, error: BoxError) -> Result<(), BoxError> {
        if !self.shared.handles(&*error) {
            return Err(error);
        }
        self.not_ready = Some(error);
        Ok(())
    }
}

impl<S: Clone, H, C> Clone for Fallback<S, H, C> {
    /// A clone does not inherit a held-back readiness error.
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug, H, C> fmt::Debug for Fallback<S, H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("policy", &*self.shared)
            .field("not_ready", &self.not_ready.is_some())
            .finish()
    }
}
