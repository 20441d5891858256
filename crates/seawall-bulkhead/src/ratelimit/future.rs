use super::Limited;
use pin_project_lite::pin_project;
use seawall_core::BoxError;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

/// A reserved permit that is given back if its call never starts.
pub(crate) trait Refund: Send + Sync {
    fn refund(&self);
}

/// Refunds on drop unless disarmed.
pub(crate) struct RefundGuard(Option<Box<dyn Refund>>);

impl RefundGuard {
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for RefundGuard {
    fn drop(&mut self) {
        if let Some(refund) = self.0.take() {
            refund.refund();
        }
    }
}

pin_project! {
    /// The response future of a [`RateLimit`](super::RateLimit) or
    /// [`KeyedRateLimit`](super::KeyedRateLimit).
    ///
    /// A call that must wait for its permit waits here, with the inner service that was made ready
    /// for it; dropping the future while it waits gives the permit back, to the next call that
    /// would otherwise wait longer.
    pub struct ResponseFuture<F, S, Req> {
        #[pin]
        kind: Kind<F, S, Req>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, S, Req> {
        Running { #[pin] future: F },
        Waiting { wait: Pin<Box<Wait<S, Req>>> },
        Limited { retry_after: Duration },
        Done,
    }
}

pin_project! {
    struct Wait<S, Req> {
        #[pin]
        sleep: Sleep,
        call: Option<(S, Req)>,
        refund: RefundGuard,
    }
}

impl<F, S, Req> ResponseFuture<F, S, Req> {
    pub(crate) fn running(future: F) -> Self {
        ResponseFuture {
            kind: Kind::Running { future },
        }
    }

    pub(crate) fn limited(retry_after: Duration) -> Self {
        ResponseFuture {
            kind: Kind::Limited { retry_after },
        }
    }

    pub(crate) fn waiting(
        until: Instant,
        service: S,
        request: Req,
        refund: Box<dyn Refund>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Waiting {
                wait: Box::pin(Wait {
                    sleep: tokio::time::sleep_until(until),
                    call: Some((service, request)),
                    refund: RefundGuard(Some(refund)),
                }),
            },
        }
    }
}

impl<F, S, Req, Res, E> Future for ResponseFuture<F, S, Req>
where
    F: Future<Output = Result<Res, E>>,
    S: Service<Req, Future = F, Response = Res, Error = E>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.kind.as_mut().project() {
                KindProj::Running { future } => {
                    let result = ready!(future.poll(cx));
                    this.kind.set(Kind::Done);
                    return Poll::Ready(result.map_err(Into::into));
                }
                KindProj::Waiting { wait } => {
                    let wait = wait.as_mut().project();
                    ready!(wait.sleep.poll(cx));
                    wait.refund.disarm();
                    let (mut service, request) =
                        wait.call.take().expect("a waiting call is called once");
                    let future = service.call(request);
                    this.kind.set(Kind::Running { future });
                }
                KindProj::Limited { retry_after } => {
                    // A rejection is progress for tokio's cooperative scheduling: a caller looping
                    // on rejected calls must still yield, or it starves its worker thread.
                    ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                    let error = Limited::new(*retry_after);
                    this.kind.set(Kind::Done);
                    return Poll::Ready(Err(Box::new(error)));
                }
                KindProj::Done => panic!("rate limit ResponseFuture polled after completion"),
            }
        }
    }
}

impl<F, S, Req> fmt::Debug for ResponseFuture<F, S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Running { .. } => "running",
            Kind::Waiting { .. } => "waiting",
            Kind::Limited { .. } => "limited",
            Kind::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}
