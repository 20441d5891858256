use crate::{
    layer::Shared, Failed, FailedResponse, FallbackEvent, FallbackFailed, FallbackHandler,
};
use pin_project_lite::pin_project;
use seawall_core::{metrics, BoxError, Classify, Outcome};
use std::{
    error::Error,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::Instant;

pin_project! {
    /// The response future of [`Fallback`](crate::Fallback).
    pub struct ResponseFuture<F, H, C, Res>
    where
        H: FallbackHandler<Res>,
    {
        #[pin]
        state: State<F, H::Future>,
        shared: Arc<Shared<H, C>>,
        started: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, G> {
        Primary { #[pin] fut: F },
        // The inner service's readiness failed with an error the layer handles; it was not called.
        NotReady { error: Option<Arc<dyn Error + Send + Sync>> },
        Fallback { #[pin] fut: G, original: Arc<dyn Error + Send + Sync> },
    }
}

impl<F, H, C, Res> ResponseFuture<F, H, C, Res>
where
    H: FallbackHandler<Res>,
{
    pub(crate) fn new(fut: F, shared: Arc<Shared<H, C>>, started: Option<Instant>) -> Self {
        ResponseFuture {
            state: State::Primary { fut },
            shared,
            started,
        }
    }

    /// A call answered from the fallback with the inner service's readiness error.
    pub(crate) fn not_ready(
        error: Arc<dyn Error + Send + Sync>,
        shared: Arc<Shared<H, C>>,
    ) -> Self {
        ResponseFuture {
            state: State::NotReady { error: Some(error) },
            shared,
            started: None,
        }
    }
}

impl<F, E, H, C, Res> Future for ResponseFuture<F, H, C, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    H: FallbackHandler<Res>,
    C: Classify<Res, BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { fut } => {
                    let shared = &**this.shared;
                    let (failed, original): (Failed<Res>, Arc<dyn Error + Send + Sync>) =
                        match ready!(fut.poll(cx)) {
                            Ok(res) => {
                                let elapsed = this.started.map_or(Duration::ZERO, |s| s.elapsed());
                                if shared.classifier.classify(Ok(&res), elapsed) != Outcome::Failure
                                {
                                    return Poll::Ready(Ok(res));
                                }
                                (Failed::Response(res), Arc::new(FailedResponse::new()))
                            }
                            Err(err) => {
                                let err: BoxError = err.into();
                                if !shared.handles(&*err) {
                                    return Poll::Ready(Err(err));
                                }
                                let err: Arc<dyn Error + Send + Sync> = Arc::from(err);
                                (Failed::Error(err.clone()), err)
                            }
                        };
                    use_fallback(this.state.as_mut(), this.shared, failed, original);
                }
                StateProj::NotReady { error } => {
                    let err = error
                        .take()
                        .expect("fallback ResponseFuture polled after completion");
                    use_fallback(
                        this.state.as_mut(),
                        this.shared,
                        Failed::Error(err.clone()),
                        err,
                    );
                }
                StateProj::Fallback { fut, original } => {
                    return Poll::Ready(match ready!(fut.poll(cx)) {
                        Ok(res) => Ok(res),
                        Err(err) => {
                            let shared = &**this.shared;
                            let err = FallbackFailed::new(original.clone(), err.into());
                            metrics::counter(metrics::FALLBACK_FAILED, &shared.name).increment(1);
                            tracing::debug!(name = %shared.name, error = %err, "seawall fallback failed");
                            shared.listeners.emit(&shared.name, &FallbackEvent::Failed);
                            Err(Box::new(err))
                        }
                    });
                }
            }
        }
    }
}

/// Hands a failed call to the fallback.
fn use_fallback<F, H, C, Res>(
    mut state: Pin<&mut State<F, H::Future>>,
    shared: &Shared<H, C>,
    failed: Failed<Res>,
    original: Arc<dyn Error + Send + Sync>,
) where
    H: FallbackHandler<Res>,
{
    let event = FallbackEvent::Used {
        error: failed.error().is_some(),
    };
    metrics::counter(metrics::FALLBACK_USED, &shared.name).increment(1);
    tracing::debug!(name = %shared.name, cause = %original, "seawall fallback used");
    shared.listeners.emit(&shared.name, &event);
    let fut = shared.handler.handle(failed);
    state.set(State::Fallback { fut, original });
}

impl<F, H, C, Res> fmt::Debug for ResponseFuture<F, H, C, Res>
where
    H: FallbackHandler<Res>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Primary { .. } => "primary",
            State::NotReady { .. } => "not ready",
            State::Fallback { .. } => "fallback",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
