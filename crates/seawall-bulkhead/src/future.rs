use crate::{
    release::Release,
    state::{Permit, Place, Timing},
    Full,
};
use pin_project_lite::pin_project;
use seawall_core::{error::not_sent, BoxError, Classify, Outcome};
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
    /// a clone of the inner service that it polls ready once it has its permit: while it waits it
    /// holds nothing below.
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
    // A call that has yet to start: it waits at `place` for a permit until `sleep` fires (no
    // place and no timer: the permit is in the future's `permit`), then for its service to be
    // ready.
    struct Wait<S, Req> {
        #[pin]
        sleep: Option<Sleep>,
        place: Option<Place>,
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
            sleep: Some(tokio::time::sleep_until(deadline)),
            place: Some(place),
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

impl<F, S, Req, C, R> ResponseFuture<F, S, Req, C, R> {
    /// A call that holds its permit and starts once `service`, not yet polled, is ready.
    pub(crate) fn starting(
        permit: Permit,
        service: S,
        request: Req,
        classifier: Option<Arc<C>>,
    ) -> Self {
        let wait = Wait {
            // The permit is taken already: no timer, and no clock read.
            sleep: None,
            place: None,
            call: Some((service, request)),
        };
        ResponseFuture {
            kind: Kind::Waiting,
            wait: Some(Box::pin(wait)),
            permit: Some(permit),
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
    /// An error that proves the request was never sent ([`not_sent`]: a rejection from below, such
    /// as the balancer's `NoEndpoints`, an inner bulkhead's `Full` or a rate limiter's `Limited`,
    /// or a refused connection) is no sample, whatever the classifier says: the dependency never
    /// saw the call, so it says nothing about its load.
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
                let error = error.into();
                let outcome = if not_sent(&*error).is_some() {
                    Outcome::Ignored
                } else {
                    outcome
                };
                permit.finish(outcome, timing, rtt);
                Err(error)
            }
        }
    }
}

impl<F, S, Req, C, R> ResponseFuture<F, S, Req, C, R>
where
    S: Service<Req, Future = F>,
{
    /// Every state but `Running`, kept out of line so the running path stays small: a waiting
    /// call that gets its permit and then a ready inner service starts (`Ok`, and the caller
    /// polls it as running); one whose `max_wait` passes first and a rejected call end with
    /// [`Full`], one whose inner service fails to get ready with that error.
    #[inline(never)]
    fn poll_start(
        this: &mut ResponseFutureProj<'_, F, S, Req, C, R>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>>
    where
        S::Error: Into<BoxError>,
    {
        match this.kind.as_mut().project() {
            KindProj::Waiting => {
                let mut wait = this
                    .wait
                    .as_mut()
                    .expect("a waiting bulkhead call has its wait")
                    .as_mut()
                    .project();
                if let Some(place) = wait.place.as_mut() {
                    let sleep = wait
                        .sleep
                        .as_mut()
                        .as_pin_mut()
                        .expect("a queued call has its max_wait timer");
                    // A permit handed over as the timer fires is taken: the call goes on.
                    match ready!(place.poll_until(cx, sleep)) {
                        Ok(permit) => *this.permit = Some(permit),
                        // Its timer fired first, or a permit handed out after its deadline
                        // passed over it.
                        Err(_) => return Self::reject_waited(this),
                    }
                    *wait.place = None;
                    // The timer is done with: it must not wake the call at the old deadline
                    // while the inner service gets ready.
                    wait.sleep.set(None);
                }
                // With the permit, the inner service is polled ready, and only now: ready while
                // the call waited, it would have held what its readiness takes below. `max_wait`
                // bounds the wait for the permit, not this one, as for a call admitted at once.
                let (service, _) = wait.call.as_mut().expect("a waiting call is called once");
                if let Err(error) = ready!(service.poll_ready(cx)) {
                    // The permit goes back; the call fails with the inner service's error.
                    *this.permit = None;
                    this.kind.set(Kind::Done);
                    *this.wait = None;
                    return Poll::Ready(Err(error.into()));
                }
                let (mut service, request) =
                    wait.call.take().expect("a waiting call is called once");
                let permit = this
                    .permit
                    .as_ref()
                    .expect("a starting call holds a permit");
                *this.timing = permit.start();
                let future = service.call(request);
                this.kind.set(Kind::Running { future });
                *this.wait = None;
                Poll::Ready(Ok(()))
            }
            KindProj::Rejected => {
                // A rejection is progress for tokio's cooperative scheduling: a caller looping
                // on rejected calls must still yield, or it starves its worker thread.
                ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                this.kind.set(Kind::Done);
                Poll::Ready(Err(Full::new().into()))
            }
            KindProj::Running { .. } => Poll::Ready(Ok(())),
            KindProj::Done => panic!("bulkhead ResponseFuture polled after completion"),
        }
    }

    /// A waiting call's `max_wait` passed before it got a permit: it fails with [`Full`].
    fn reject_waited(
        this: &mut ResponseFutureProj<'_, F, S, Req, C, R>,
    ) -> Poll<Result<(), BoxError>> {
        if let Some(place) = this
            .wait
            .take()
            .and_then(|mut wait| wait.as_mut().project().place.take())
        {
            place.shared.reject(true);
        }
        this.kind.set(Kind::Done);
        Poll::Ready(Err(Full::new().into()))
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
