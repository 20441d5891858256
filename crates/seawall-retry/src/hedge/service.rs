use super::{copy_request, layer::Shared, misses, ResponseFuture};
use crate::policy::{ByClone, Classified, CloneRequest, Policy};
use seawall_core::{
    deadline::{deadline_after, RequestDeadline},
    BoxError,
};
use std::{
    fmt, mem,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::time::Instant;
use tower_service::Service;

/// Sends extra copies of slow calls to `S` and answers with the first acceptable response; see
/// the [module docs](super).
///
/// Needs `S: Clone`: each call takes the inner service that was polled ready, and its response
/// future polls that service ready again before each hedge.
pub struct Hedge<S, P = Classified, K = ByClone> {
    inner: S,
    shared: Arc<Shared<P, K>>,
}

// ===== impl Hedge =====

impl<S, P, K> Hedge<S, P, K> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared<P, K>>) -> Self {
        Hedge { inner, shared }
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

impl<S: Clone, P, K> Clone for Hedge<S, P, K> {
    fn clone(&self) -> Self {
        Hedge {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, P, K> fmt::Debug for Hedge<S, P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hedge")
            .field("inner", &self.inner)
            .field("policy", &*self.shared)
            .finish()
    }
}

impl<S, Req, P, K> Service<Req> for Hedge<S, P, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response>,
    K: CloneRequest<Req>,
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
        let clone = self.inner.clone();
        let mut service = mem::replace(&mut self.inner, clone);
        let shared = &*self.shared;
        shared.budget.deposit();
        // No copy while no delay is known yet (a percentile still being measured).
        let delay = shared.current_delay();
        let started = (shared.records_latency() || shared.policy.uses_elapsed()).then(Instant::now);
        // The deadline is read here, from the request as the caller sent it, and only here: a
        // copy may have lost it (a cloner that rebuilds the request without its extensions).
        let (template, deadline) = match delay {
            // No copy for a request whose deadline comes before its first hedge could start,
            // counted from the call. A fixed delay counts from the first poll, which may come
            // later still: the response future then drops a copy its first hedge could not send.
            Some(delay) if shared.policy.is_hedgeable(&request) => {
                let due = || deadline_after(started.unwrap_or_else(Instant::now), delay);
                match request.deadline() {
                    Some(deadline) if misses(deadline, due()) => (None, None),
                    deadline => (copy_request(&shared.cloner, &request, deadline), deadline),
                }
            }
            _ => (None, None),
        };
        let future = service.call(request);
        ResponseFuture::new(
            future,
            service,
            template,
            deadline,
            delay.unwrap_or_default(),
            started,
            self.shared.clone(),
        )
    }
}
