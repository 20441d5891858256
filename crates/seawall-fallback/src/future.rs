use crate::{
    context::Panic, layer::Shared, ContextHandler, Failed, FailedResponse, FallbackEvent,
    FallbackFailed,
};
use pin_project_lite::pin_project;
use seawall_core::{metrics, BoxError, Classify, Outcome};
use std::{
    error::Error,
    fmt,
    future::Future,
    panic::resume_unwind,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::Instant;

pin_project! {
    /// The response future of [`Fallback`](crate::Fallback).
    ///
    /// `Ctx` is the context captured from the call's request: `()` for a layer without
    /// [`with_request`](crate::FallbackBuilder::with_request), [`Captured`](crate::Captured) for
    /// a layer with it. The future holds it until the call succeeds or the fallback takes it.
    pub struct ResponseFuture<F, H, C, Res, Ctx = ()>
    where
        H: ContextHandler<Res, Ctx>,
    {
        #[pin]
        state: State<F, H::Future, Ctx>,
        shared: Arc<Shared<H, C>>,
        started: Option<Instant>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateProjReplace]
    enum State<F, G, Ctx> {
        Primary { #[pin] fut: F, context: Ctx },
        // The inner service's readiness failed with an error the layer handles; it was not called.
        NotReady { error: Arc<dyn Error + Send + Sync>, context: Ctx },
        // The `with_request` closure panicked in `call`; the inner service was not called. The
        // panic is resumed on the first poll. The lock is never taken: it makes the future `Sync`.
        Panicked { payload: Mutex<Panic> },
        // Between the failure and the fallback's call, while the context moves to the fallback;
        // after a panic is resumed.
        HandingOver,
        Fallback { #[pin] fut: G, original: Arc<dyn Error + Send + Sync> },
    }
}

impl<F, H, C, Res, Ctx> ResponseFuture<F, H, C, Res, Ctx>
where
    H: ContextHandler<Res, Ctx>,
{
    pub(crate) fn new(
        fut: F,
        shared: Arc<Shared<H, C>>,
        started: Option<Instant>,
        context: Ctx,
    ) -> Self {
        ResponseFuture {
            state: State::Primary { fut, context },
            shared,
            started,
        }
    }

    /// A call answered from the fallback with the inner service's readiness error.
    pub(crate) fn not_ready(
        error: Arc<dyn Error + Send + Sync>,
        shared: Arc<Shared<H, C>>,
        context: Ctx,
    ) -> Self {
        ResponseFuture {
            state: State::NotReady { error, context },
            shared,
            started: None,
        }
    }

    /// A call whose `with_request` closure panicked: the first poll resumes the panic.
    #[cold]
    pub(crate) fn panicked(payload: Panic, shared: Arc<Shared<H, C>>) -> Self {
        ResponseFuture {
            state: State::Panicked {
                payload: Mutex::new(payload),
            },
            shared,
            started: None,
        }
    }
}

impl<F, E, H, C, Res, Ctx> Future for ResponseFuture<F, H, C, Res, Ctx>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    H: ContextHandler<Res, Ctx>,
    C: Classify<Res, BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Primary { fut, .. } => {
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
                    // Drops the primary future and takes the context for the fallback.
                    let context = match this.state.as_mut().project_replace(State::HandingOver) {
                        StateProjReplace::Primary { context, .. } => context,
                        _ => unreachable!("the state was Primary"),
                    };
                    use_fallback(this.state.as_mut(), this.shared, failed, context, original);
                }
                StateProj::NotReady { .. } => {
                    let (err, context) =
                        match this.state.as_mut().project_replace(State::HandingOver) {
                            StateProjReplace::NotReady { error, context } => (error, context),
                            _ => unreachable!("the state was NotReady"),
                        };
                    use_fallback(
                        this.state.as_mut(),
                        this.shared,
                        Failed::Error(err.clone()),
                        context,
                        err,
                    );
                }
                StateProj::Panicked { .. } => {
                    match this.state.as_mut().project_replace(State::HandingOver) {
                        StateProjReplace::Panicked { payload } => resume_unwind(
                            payload.into_inner().unwrap_or_else(PoisonError::into_inner),
                        ),
                        _ => unreachable!("the state was Panicked"),
                    }
                }
                StateProj::HandingOver => {
                    panic!("fallback ResponseFuture polled after it panicked")
                }
                StateProj::Fallback { mut fut, original } => {
                    return Poll::Ready(match ready!(fut.as_mut().poll(cx)) {
                        Ok(res) => Ok(res),
                        Err(err) => {
                            let shared = &**this.shared;
                            let err = FallbackFailed::new(
                                original.clone(),
                                err.into(),
                                shared.handler.may_have_sent(fut.as_ref().get_ref()),
                            );
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

/// Hands a failed call, with the context captured from its request, to the fallback.
fn use_fallback<F, H, C, Res, Ctx>(
    mut state: Pin<&mut State<F, H::Future, Ctx>>,
    shared: &Shared<H, C>,
    failed: Failed<Res>,
    context: Ctx,
    original: Arc<dyn Error + Send + Sync>,
) where
    H: ContextHandler<Res, Ctx>,
{
    let event = FallbackEvent::Used {
        error: failed.error().is_some(),
    };
    metrics::counter(metrics::FALLBACK_USED, &shared.name).increment(1);
    tracing::debug!(name = %shared.name, cause = %original, "seawall fallback used");
    shared.listeners.emit(&shared.name, &event);
    let fut = shared.handler.handle(failed, context);
    state.set(State::Fallback { fut, original });
}

impl<F, H, C, Res, Ctx> fmt::Debug for ResponseFuture<F, H, C, Res, Ctx>
where
    H: ContextHandler<Res, Ctx>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Primary { .. } => "primary",
            State::NotReady { .. } => "not ready",
            State::Panicked { .. } => "panicked",
            State::HandingOver => "handing over",
            State::Fallback { .. } => "fallback",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
