use crate::{layer::Shared, FallbackHandler, ResponseFuture};
use seawall_core::{BoxError, Classify};
use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::time::Instant;
use tower_service::Service;

/// Answers failed calls to `S` from a fallback; see the [crate docs](crate).
pub struct Fallback<S, H, C> {
    inner: S,
    shared: Arc<Shared<H, C>>,
}

// ===== impl Fallback =====

impl<S, H, C> Fallback<S, H, C> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<H, C>>) -> Self {
        Fallback { inner, shared }
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
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let started = self.shared.classifier.uses_elapsed().then(Instant::now);
        ResponseFuture::new(self.inner.call(req), self.shared.clone(), started)
    }
}

impl<S: Clone, H, C> Clone for Fallback<S, H, C> {
    fn clone(&self) -> Self {
        Fallback {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, H, C> fmt::Debug for Fallback<S, H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fallback")
            .field("inner", &self.inner)
            .field("policy", &*self.shared)
            .finish()
    }
}
