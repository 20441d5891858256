use crate::{layer::Shared, FallbackHandler, ResponseFuture};
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
/// A readiness error of `S` that the layer handles is kept: from then on `poll_ready` reports
/// ready and every call is answered from the fallback with that error, without polling or calling
/// `S` again (a service whose `poll_ready` failed is gone, as tower's `Buffer` treats its worker).
/// A clone of a failed `Fallback` is failed too: it holds a clone of the same failed service. A
/// clone made before the failure does not share it. Readiness errors the layer does not handle
/// are returned as they are.
pub struct Fallback<S, H, C> {
    inner: S,
    shared: Arc<Shared<H, C>>,
    failed: Option<Arc<dyn Error + Send + Sync>>,
}

// ===== impl Fallback =====

impl<S, H, C> Fallback<S, H, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<H, C>>) -> Self {
        Fallback {
            inner,
            shared,
            failed: None,
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
        if self.failed.is_some() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(error) => Poll::Ready(self.hold_back(error.into())),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(error) = &self.failed {
            return ResponseFuture::not_ready(error.clone(), self.shared.clone());
        }
        let started = self.shared.classifier.uses_elapsed().then(Instant::now);
        ResponseFuture::new(self.inner.call(req), self.shared.clone(), started)
    }
}

impl<S, H, C> Fallback<S, H, C> {
    /// Keeps a readiness error the layer handles for every later call to answer from the
    /// fallback; returns any other.
    #[cold]
    fn hold_back(&mut self, error: BoxError) -> Result<(), BoxError> {
        if !self.shared.handles(&*error) {
            return Err(error);
        }
        self.failed = Some(Arc::from(error));
        Ok(())
    }
}

impl<S: Clone, H, C> Clone for Fallback<S, H, C> {
    /// A clone of a failed service is failed too, with the same error: its inner service is a
    /// clone of one that failed, and is not polled.
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            failed: self.failed.clone(),
        }
    }
}

impl<S: fmt::Debug, H, C> fmt::Debug for Fallback<S, H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("policy", &*self.shared)
            .field("failed", &self.failed.is_some())
            .finish()
    }
}
