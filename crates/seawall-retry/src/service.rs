use crate::{
    layer::Link,
    policy::{ByClone, Classified, CloneRequest, Policy},
    ResponseFuture, RetryLayer,
};
use seawall_core::{deadline::RequestDeadline, BoxError};
use std::{
    fmt, mem,
    task::{Context, Poll},
};
use tower_service::Service;

/// Retries failed calls to `S`; see the [crate docs](crate).
///
/// Needs `S: Clone`: each call takes the inner service that was just polled ready (leaving a clone
/// behind), and its response future polls that service ready again before every retry, so a
/// balancer underneath picks an endpoint afresh and a concurrency limit is respected per attempt.
///
/// The policy `P` and cloner `K` are cloned into each response future (as tower's `Retry` clones
/// its policy): keep them cheap to clone, behind an `Arc` if they hold much.
pub struct Retry<S, P = Classified, K = ByClone> {
    inner: S,
    link: Link<P, K>,
}

// ===== impl Retry =====

impl<S> Retry<S> {
    /// Wraps `inner` with the default retry policy (a one-off; build a [`RetryLayer`] to share one
    /// policy and budget between services).
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&RetryLayer::new(), inner)
    }
}

impl<S, P, K> Retry<S, P, K> {
    pub(crate) fn from_link(inner: S, link: Link<P, K>) -> Self {
        Retry { inner, link }
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

impl<S: Clone, P: Clone, K: Clone> Clone for Retry<S, P, K> {
    fn clone(&self) -> Self {
        Retry {
            inner: self.inner.clone(),
            link: self.link.clone(),
        }
    }
}

impl<S: fmt::Debug, P, K> fmt::Debug for Retry<S, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings = self.link.settings();
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("name", &settings.name)
            .field("max_attempts", &settings.max_attempts)
            .field("policy", &std::any::type_name::<P>())
            .finish()
    }
}

impl<S, Req, P, K> Service<Req> for Retry<S, P, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response> + Clone,
    K: CloneRequest<Req> + Clone,
    Req: RequestDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, P, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        // Take the service that was polled ready; the clone left behind is polled next time.
        let clone = self.inner.clone();
        let service = mem::replace(&mut self.inner, clone);
        let link = &self.link;
        link.deposit();
        // The call's deadline is read here, from the request as the caller sent it, and only when
        // it may be retried: the copies may have lost it (a cloner that rebuilds the request
        // without its extensions). A request that may not be sent twice is copied too when it
        // may be sent again once an attempt proves it was never sent; it is then retried only
        // then (`unsent_only`).
        let (template, deadline, unsent_only) = if link.settings().max_attempts > 1 {
            let unsent_only = if link.policy.is_retryable(&request) {
                Some(false)
            } else if link.policy.retries_unsent(&request) {
                Some(true)
            } else {
                None
            };
            match unsent_only.and_then(|only| Some((link.cloner.clone_request(&request)?, only))) {
                Some((template, only)) => (Some(template), request.deadline(), only),
                None => (None, None, false),
            }
        } else {
            (None, None, false)
        };
        ResponseFuture::new(
            service,
            request,
            template,
            deadline,
            unsent_only,
            self.link.clone(),
        )
    }
}
