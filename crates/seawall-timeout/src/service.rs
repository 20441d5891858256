use crate::{layer::Shared, ResponseFuture, TimeoutLayer};
use seawall_core::{
    deadline::{deadline_after, RequestDeadline},
    BoxError,
};
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower_service::Service;

/// Fails calls to `S` that do not answer by their deadline; see the [crate docs](crate).
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
        let timeout = match self.shared.honor_override {
            true => req.timeout_override().unwrap_or(self.shared.timeout),
            false => self.shared.timeout,
        };
        let own = deadline_after(now, timeout);
        let deadline = match req.deadline() {
            // An earlier deadline stays on the request; this layer enforces it unless a layer
            // further out does.
            Some(outer) if outer <= own => match self.shared.enforce_outer {
                true => outer,
                false => own,
            },
            _ => {
                if self.shared.propagate {
                    req.set_deadline(own);
                }
                own
            }
        };
        let listeners = (!self.shared.listeners.is_empty()).then(|| self.shared.listeners.clone());
        ResponseFuture::new(
            self.inner.call(req),
            now,
            deadline,
            self.shared.name,
            listeners,
        )
    }
}
