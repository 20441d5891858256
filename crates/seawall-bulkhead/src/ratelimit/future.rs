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

/// A permit reserved ahead of its time for a call that waits for it.
pub(crate) trait Permit: Send + Sync {
    /// Gives the permit back: its call will not start.
    fn refund(&self);

    /// Nanoseconds since the limiter's epoch, now.
    fn now(&self) -> u64;

    /// The instant `nanos` after the limiter's epoch.
    fn instant(&self, nanos: u64) -> Instant;

    /// The last time a call may start on this permit, seen due at `now`.
    fn usable_until(&self, now: u64) -> u64;

    /// Gives this permit back and reserves the next one at `now`, due within `max_wait`:
    /// `Ok(delay)` in nanoseconds, or `Err(retry_after)`, reported as a rejection, when there is
    /// none; then nothing is held.
    fn renew(&mut self, now: u64, max_wait: u64) -> Result<u64, Duration>;
}

/// Gives its permit back on drop unless disarmed.
pub(crate) struct PermitGuard(Option<Box<dyn Permit>>);

impl PermitGuard {
    fn permit(&mut self) -> &mut dyn Permit {
        &mut **self.0.as_mut().expect("a waiting call holds its permit")
    }

    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if let Some(permit) = self.0.take() {
            permit.refund();
        }
    }
}

pin_project! {
    /// The response future of a [`RateLimit`](super::RateLimit) or
    /// [`KeyedRateLimit`](super::KeyedRateLimit).
    ///
    /// A call that must wait for its permit waits here with a clone of the inner service that
    /// nothing has polled, so it holds nothing below while it sleeps, and polls it ready once
    /// the permit is due. A call whose service gets ready only after the permit's span gives the
    /// permit and the readiness back and waits for the next permit, if one is due within the
    /// call's `max_wait`, or is rejected. Dropping the future while it waits gives the permit
    /// back, to the next call that would otherwise wait longer.
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
        service: S,
        request: Option<Req>,
        permit: PermitGuard,
        // Once the permit is due: the last time the call may start on it.
        usable_until: Option<u64>,
        // The last time a permit may be due for the call: when it was made, plus `max_wait`.
        deadline: u64,
        // Whether `service` has been polled ready (and not called).
        ready: bool,
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

    /// A call that waits until `until` for `permit`, with `service`: a clone nobody polled, or,
    /// if `ready`, the service polled ready for it. A permit it renews must be due by `deadline`.
    pub(crate) fn waiting(
        until: Instant,
        deadline: u64,
        service: S,
        ready: bool,
        request: Req,
        permit: Box<dyn Permit>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Waiting {
                wait: Box::pin(Wait {
                    sleep: tokio::time::sleep_until(until),
                    service,
                    request: Some(request),
                    permit: PermitGuard(Some(permit)),
                    usable_until: None,
                    deadline,
                    ready,
                }),
            },
        }
    }
}

impl<F, S, Req, Res, E> Future for ResponseFuture<F, S, Req>
where
    F: Future<Output = Result<Res, E>>,
    S: Service<Req, Future = F, Response = Res, Error = E> + Clone,
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
                    let mut wait = wait.as_mut().project();
                    let usable_until = match *wait.usable_until {
                        Some(until) => until,
                        None => {
                            ready!(wait.sleep.as_mut().poll(cx));
                            let permit = wait.permit.permit();
                            *wait.usable_until.insert(permit.usable_until(permit.now()))
                        }
                    };
                    if !*wait.ready {
                        // Polled only now: ready while the call slept, the service would have held
                        // what its readiness takes below (a permit of a limit, a place in a
                        // `Buffer`) from calls that could run meanwhile.
                        if let Err(error) = ready!(wait.service.poll_ready(cx)) {
                            // Dropping the wait gives the permit back.
                            this.kind.set(Kind::Done);
                            return Poll::Ready(Err(error.into()));
                        }
                        let permit = wait.permit.permit();
                        let now = permit.now();
                        if now > usable_until {
                            // Ready after the permit's span: starting now could put this call
                            // next to the ones admitted since. It takes the next permit due by
                            // its deadline, and gives its readiness back while it waits again:
                            // held, it would keep the services below from every call due first.
                            match permit.renew(now, wait.deadline.saturating_sub(now)) {
                                Ok(0) => {}
                                Ok(delay) => {
                                    let until = permit.instant(now.saturating_add(delay));
                                    wait.sleep.as_mut().reset(until);
                                    *wait.usable_until = None;
                                    *wait.service = wait.service.clone();
                                    continue;
                                }
                                Err(retry_after) => {
                                    wait.permit.disarm();
                                    this.kind.set(Kind::Limited { retry_after });
                                    continue;
                                }
                            }
                        }
                        *wait.ready = true;
                    }
                    wait.permit.disarm();
                    let request = wait.request.take().expect("a waiting call is called once");
                    let future = wait.service.call(request);
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
