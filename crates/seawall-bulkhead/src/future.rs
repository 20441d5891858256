use crate::{
    release::Release,
    state::{Permit, Place, Shared, Timing},
    Full,
};
use pin_project_lite::pin_project;
use seawall_core::{BoxError, Classify, Outcome};
use std::{
    fmt,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

pin_project! {
    /// The response future of a [`Bulkhead`](crate::Bulkhead).
    ///
    /// It holds the call's permit and releases it when the call finishes or the future is dropped.
    /// A call that must wait (no free permit, `max_wait` above zero) waits here, in FIFO order, with
    /// the inner service that was made ready for it.
    pub struct ResponseFuture<F, S, Req, C, R> {
        #[pin]
        kind: Kind<F, S, Req>,
        permit: Option<Permit>,
        timing: Option<Timing>,
        classifier: Option<Arc<C>>,
        _release: PhantomData<fn() -> R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, S, Req> {
        Running { #[pin] future: F },
        Waiting { wait: Pin<Box<Wait<S, Req>>> },
        Rejected,
        Done,
    }
}

pin_project! {
    struct Wait<S, Req> {
        #[pin]
        sleep: Sleep,
        place: Place,
        call: Option<(S, Req)>,
    }
}

impl<F, S, Req, C, R> ResponseFuture<F, S, Req, C, R> {
    pub(crate) fn running(
        future: F,
        permit: Permit,
        timing: Option<Timing>,
        classifier: Option<Arc<C>>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Running { future },
            permit: Some(permit),
            timing,
            classifier,
            _release: PhantomData,
        }
    }

    pub(crate) fn rejected() -> Self {
        ResponseFuture {
            kind: Kind::Rejected,
            permit: None,
            timing: None,
            classifier: None,
            _release: PhantomData,
        }
    }

    pub(crate) fn waiting(
        shared: Arc<Shared>,
        service: S,
        request: Req,
        classifier: Option<Arc<C>>,
    ) -> Self {
        let wait = Wait {
            sleep: tokio::time::sleep_until(seawall_core::deadline::deadline_after(
                Instant::now(),
                shared.max_wait,
            )),
            place: Place::new(shared),
            call: Some((service, request)),
        };
        ResponseFuture {
            kind: Kind::Waiting {
                wait: Box::pin(wait),
            },
            permit: None,
            timing: None,
            classifier,
            _release: PhantomData,
        }
    }
}

impl<F, S, Req, C, R, Res, E> Future for ResponseFuture<F, S, Req, C, R>
where
    F: Future<Output = Result<Res, E>>,
    S: Service<Req, Future = F, Response = Res, Error = E>,
    E: Into<BoxError>,
    C: Classify<Res, E>,
    R: Release<Res>,
{
    type Output = Result<R::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.kind.as_mut().project() {
                KindProj::Running { future } => {
                    let result = ready!(future.poll(cx));
                    let permit = this
                        .permit
                        .take()
                        .expect("a running bulkhead call holds a permit");
                    // One clock read: the classifier and the limit's sample see the same duration.
                    let rtt = Timing::elapsed(*this.timing);
                    let outcome = match this.classifier {
                        Some(classifier) => classifier.classify(result.as_ref(), rtt),
                        None => Outcome::Ignored,
                    };
                    this.kind.set(Kind::Done);
                    return Poll::Ready(match result {
                        Ok(response) => {
                            Ok(R::release(response, permit, outcome, *this.timing, rtt))
                        }
                        Err(error) => {
                            permit.finish(outcome, *this.timing, rtt);
                            Err(error.into())
                        }
                    });
                }
                KindProj::Waiting { wait } => {
                    let wait = wait.as_mut().project();
                    match wait.place.poll_acquire(cx) {
                        Poll::Ready(permit) => {
                            *this.timing = permit.start();
                            let (mut service, request) =
                                wait.call.take().expect("a waiting call is called once");
                            let future = service.call(request);
                            *this.permit = Some(permit);
                            this.kind.set(Kind::Running { future });
                        }
                        Poll::Pending => {
                            ready!(wait.sleep.poll(cx));
                            wait.place.shared.reject(true);
                            this.kind.set(Kind::Done);
                            return Poll::Ready(Err(Box::new(Full::new())));
                        }
                    }
                }
                KindProj::Rejected => {
                    // A rejection is progress for tokio's cooperative scheduling: a caller looping
                    // on rejected calls must still yield, or it starves its worker thread.
                    ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                    this.kind.set(Kind::Done);
                    return Poll::Ready(Err(Box::new(Full::new())));
                }
                KindProj::Done => panic!("bulkhead ResponseFuture polled after completion"),
            }
        }
    }
}

impl<F, S, Req, C, R> fmt::Debug for ResponseFuture<F, S, Req, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Running { .. } => "running",
            Kind::Waiting { .. } => "waiting",
            Kind::Rejected => "rejected",
            Kind::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("permit", &self.permit)
            .finish()
    }
}
