//! [`ResponseFuture`]: the response of a call through a breaker.

use crate::{
    error::Open,
    shared::{self, Shared},
    state::Permit,
};
use pin_project_lite::pin_project;
use seawall_core::{classify::Classify, BoxError, Outcome};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::Instant;

pin_project! {
    /// The response future of [`Breaker`](crate::Breaker): the inner future, classified and
    /// recorded when it completes, or an immediate [`Open`] rejection.
    ///
    /// Dropping it before it completes records the call as ignored and hands back a probe slot.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F, C>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, C> {
        Admitted {
            #[pin]
            future: F,
            guard: Guard,
            classifier: C,
            start: Option<Instant>,
        },
        Rejected,
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn admitted(future: F, guard: Guard, classifier: C, start: Option<Instant>) -> Self {
        ResponseFuture {
            kind: Kind::Admitted {
                future,
                guard,
                classifier,
                start,
            },
        }
    }

    pub(crate) fn rejected() -> Self {
        ResponseFuture {
            kind: Kind::Rejected,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    // Always inlined: with a rejection out of line the admitted path is small, and a caller that
    // inlines it can keep the future out of memory.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted {
                future,
                guard,
                classifier,
                start,
            } => {
                let result = ready!(future.poll(cx));
                let elapsed = start.map_or(Duration::ZERO, |start| start.elapsed());
                let outcome = classifier.classify(result.as_ref(), elapsed);
                guard.complete(outcome, elapsed);
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected => {
                ready!(proceed(cx));
                Poll::Ready(Err(Box::new(Open::new())))
            }
        }
    }
}

/// Whether a rejected call may answer now. A rejection is progress for tokio's cooperative
/// scheduling: a caller looping on rejected calls must still yield, or it starves its worker
/// thread.
#[inline(never)]
fn proceed(cx: &mut Context<'_>) -> Poll<()> {
    ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
    Poll::Ready(())
}

impl<F, C> fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Admitted { .. } => "admitted",
            Kind::Rejected => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

/// Holds the permit of a call until its outcome is known; dropped early (the call was cancelled),
/// it hands the permit back as an ignored call (a probe slot is freed).
pub(crate) struct Guard {
    /// The breaker and the permit, until the call's outcome is recorded or it is cancelled.
    held: Option<(Arc<Shared>, Permit)>,
}

impl Guard {
    #[inline]
    pub(crate) fn new(shared: Arc<Shared>, permit: Permit) -> Self {
        Guard {
            held: Some((shared, permit)),
        }
    }

    #[inline]
    fn complete(&mut self, outcome: Outcome, elapsed: Duration) {
        if let Some((shared, permit)) = self.held.take() {
            shared.complete(permit, outcome, elapsed);
        }
    }

    /// Hands back the permit of a call dropped before its outcome was known. A change this makes
    /// (a HalfOpen past its bound reopens) may call a metrics recorder that panics: caught here,
    /// as the guard is dropped.
    #[cold]
    #[inline(never)]
    fn cancel(shared: Arc<Shared>, permit: Permit) {
        shared::in_drop(&shared.name, || {
            shared.complete(permit, Outcome::Ignored, Duration::ZERO)
        });
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        if let Some((shared, permit)) = self.held.take() {
            Guard::cancel(shared, permit);
        }
    }
}
