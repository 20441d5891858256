use crate::{
    release::Release,
    state::{Permit, Place, Timing},
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
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tower_service::Service;

pin_project! {
    /// The response future of a [`Bulkhead`](crate::Bulkhead).
    ///
    /// It holds the call's permit and releases it when the call finishes or the future is dropped.
    /// A call that must wait (no free permit, `max_wait` above zero) waits here, in FIFO order, with
    /// the inner service that was made ready for it.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<F, S, Req, C, R> {
        #[pin]
        kind: Kind<F>,
        // Beside `kind`, not in it: finishing a running call then drops only its future.
        wait: Option<Pin<Box<Wait<S, Req>>>>,
        permit: Option<Permit>,
        timing: Option<Timing>,
        classifier: Option<Arc<C>>,
        _release: PhantomData<fn() -> R>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Running { #[pin] future: F },
        // The call and its place in the queue are in `wait`.
        Waiting,
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
            wait: None,
            permit: Some(permit),
            timing,
            classifier,
            _release: PhantomData,
        }
    }

    pub(crate) fn rejected() -> Self {
        ResponseFuture {
            kind: Kind::Rejected,
            wait: None,
            permit: None,
            timing: None,
            classifier: None,
            _release: PhantomData,
        }
    }

    pub(crate) fn waiting(
        place: Place,
        deadline: Instant,
        service: S,
        request: Req,
        classifier: Option<Arc<C>>,
    ) -> Self {
        let wait = Wait {
            sleep: tokio::time::sleep_until(deadline),
            place,
            call: Some((service, request)),
        };
        ResponseFuture {
            kind: Kind::Waiting,
            wait: Some(Box::pin(wait)),
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

    // Always inlined: with every other state out of line the running path is small, and a
    // caller that inlines it can keep the future out of memory.
    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let KindProj::Running { future } = this.kind.as_mut().project() else {
                ready!(Self::poll_start(&mut this, cx))?;
                continue;
            };
            let result = ready!(future.poll(cx));
            let permit = this
                .permit
                .take()
                .expect("a running bulkhead call holds a permit");
            this.kind.set(Kind::Done);
            if let Some(classifier) = this.classifier {
                return Poll::Ready(Self::finish_classified(
                    classifier,
                    result,
                    permit,
                    *this.timing,
                ));
            }
            // A fixed limit: the outcome teaches it nothing.
            return Poll::Ready(match result {
                Ok(response) => Ok(R::release(
                    response,
                    permit,
                    Outcome::Ignored,
                    None,
                    Duration::ZERO,
                )),
                Err(error) => {
                    drop(permit);
                    Err(error.into())
                }
            });
        }
    }
}

impl<F, S, Req, C, R> ResponseFuture<F, S, Req, C, R> {
    /// An adaptive limit's finished call: classified, and sampled when its permit is released.
    #[inline(never)]
    fn finish_classified<Res, E>(
        classifier: &C,
        result: Result<Res, E>,
        permit: Permit,
        timing: Option<Timing>,
    ) -> Result<R::Response, BoxError>
    where
        E: Into<BoxError>,
        C: Classify<Res, E>,
        R: Release<Res>,
    {
        // One clock read: the classifier and the limit's sample see the same duration.
        let rtt = Timing::elapsed(timing);
        let outcome = classifier.classify(result.as_ref(), rtt);
        match result {
            Ok(response) => Ok(R::release(response, permit, outcome, timing, rtt)),
            Err(error) => {
                permit.finish(outcome, timing, rtt);
                Err(error.into())
            }
        }
    }
}

impl<F, S, Req, C, R> ResponseFuture<F, S, Req, C, R>
where
    S: Service<Req, Future = F>,
{
    /// Every state but `Running`, kept out of line so the running path stays small: a waiting
    /// call that gets its permit starts (`Ok`, and the caller polls it as running), one whose
    /// `max_wait` passes first and a rejected call end with [`Full`].
    #[inline(never)]
    fn poll_start(
        this: &mut ResponseFutureProj<'_, F, S, Req, C, R>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Full>> {
        match this.kind.as_mut().project() {
            KindProj::Waiting => {
                let wait = this
                    .wait
                    .as_mut()
                    .expect("a waiting bulkhead call has its wait")
                    .as_mut()
                    .project();
                // A permit handed over as the timer fires is taken: the call runs.
                let permit = match ready!(wait.place.poll_until(cx, wait.sleep)) {
                    Ok(permit) => permit,
                    // Its timer fired first, or a permit handed out after its deadline passed
                    // over it.
                    Err(_) => return Self::reject_waited(this),
                };
                *this.timing = permit.start();
                let (mut service, request) =
                    wait.call.take().expect("a waiting call is called once");
                let future = service.call(request);
                *this.permit = Some(permit);
                this.kind.set(Kind::Running { future });
                *this.wait = None;
                Poll::Ready(Ok(()))
            }
            KindProj::Rejected => {
                // A rejection is progress for tokio's cooperative scheduling: a caller looping
                // on rejected calls must still yield, or it starves its worker thread.
                ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                this.kind.set(Kind::Done);
                Poll::Ready(Err(Full::new()))
            }
            KindProj::Running { .. } => Poll::Ready(Ok(())),
            KindProj::Done => panic!("bulkhead ResponseFuture polled after completion"),
        }
    }

    /// A waiting call's `max_wait` passed before it got a permit: it fails with [`Full`].
    fn reject_waited(this: &mut ResponseFutureProj<'_, F, S, Req, C, R>) -> Poll<Result<(), Full>> {
        if let Some(wait) = this.wait.take() {
            wait.place.shared.reject(true);
        }
        this.kind.set(Kind::Done);
        Poll::Ready(Err(Full::new()))
    }
}

impl<F, S, Req, C, R> fmt::Debug for ResponseFuture<F, S, Req, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.kind {
            Kind::Running { .. } => "running",
            Kind::Waiting => "waiting",
            Kind::Rejected => "rejected",
            Kind::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("permit", &self.permit)
            .finish()
    }
}
