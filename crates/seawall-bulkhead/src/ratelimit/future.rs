use super::Limited;
use pin_project_lite::pin_project;
use seawall_core::BoxError;
use std::{
    fmt,
    future::Future,
    mem,
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

    /// The last time a call may start on this permit, which fell due at `due`.
    fn usable_until(&self, due: u64) -> u64;

    /// The limiter's emission interval `T`, in nanoseconds.
    fn interval(&self) -> u64;

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
    /// permit back and takes the next one due by the call's deadline (`max_wait` after the call)
    /// or, past that deadline, one free at once, or is rejected; it gives its readiness back too,
    /// and polls its service again as long before that permit as getting ready took (at most one
    /// interval, the first time). Dropping the future while it
    /// waits gives the permit back, to the next call that would otherwise wait longer.
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
        phase: Phase,
        // When the permit is due, in nanoseconds since the limiter's epoch.
        due: u64,
        // When the call was made, plus `max_wait`: a renewed permit is due by then, or at once.
        deadline: u64,
        // Whether the call has renewed its permit before.
        renewed: bool,
    }
}

/// Where a waiting call is.
#[derive(Clone, Copy)]
enum Phase {
    /// Sleeping until it is time to poll the service ready: when the permit is due, or earlier
    /// by the time the service took to get ready before.
    Asleep,
    /// Polling the service ready since `since`.
    Readying { since: u64 },
    /// Ready before the permit is due: sleeping until it is, then calling.
    Holding,
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

    /// A call that waits for `permit`, due at `due`, with `service`: a clone nobody polled, or,
    /// if `ready`, the service polled ready for it. A permit it renews must be due by `deadline`,
    /// or free at once: past `deadline` it still takes a permit it need not wait for.
    pub(crate) fn waiting(
        due: u64,
        deadline: u64,
        service: S,
        ready: bool,
        request: Req,
        permit: Box<dyn Permit>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Waiting {
                wait: Box::pin(Wait {
                    sleep: tokio::time::sleep_until(permit.instant(due)),
                    service,
                    request: Some(request),
                    permit: PermitGuard(Some(permit)),
                    phase: if ready { Phase::Holding } else { Phase::Asleep },
                    due,
                    deadline,
                    renewed: false,
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
                    // Once the service is ready and the permit due: since when the service was
                    // polled ready, if it was just now.
                    let since = match *wait.phase {
                        Phase::Asleep => {
                            ready!(wait.sleep.as_mut().poll(cx));
                            let since = wait.permit.permit().now();
                            *wait.phase = Phase::Readying { since };
                            continue;
                        }
                        Phase::Holding => {
                            ready!(wait.sleep.as_mut().poll(cx));
                            None
                        }
                        Phase::Readying { since } => {
                            // Polled only now: ready while the call slept, the service would
                            // have held what its readiness takes below (a permit of a limit, a
                            // place in a `Buffer`) from calls that could run meanwhile.
                            if let Err(error) = ready!(wait.service.poll_ready(cx)) {
                                // Dropping the wait gives the permit back.
                                this.kind.set(Kind::Done);
                                return Poll::Ready(Err(error.into()));
                            }
                            let permit = wait.permit.permit();
                            if permit.now() < *wait.due {
                                *wait.phase = Phase::Holding;
                                wait.sleep.as_mut().reset(permit.instant(*wait.due));
                                continue;
                            }
                            Some(since)
                        }
                    };
                    let permit = wait.permit.permit();
                    let now = permit.now();
                    if now > permit.usable_until(*wait.due) {
                        // Past the permit's span (the service got ready too late, or the future
                        // was polled late): starting now could put this call next to the ones
                        // admitted since. It takes the next permit due by its deadline or, past
                        // it, one free at once (no wait: the rate is kept whatever the time).
                        match permit.renew(now, wait.deadline.saturating_sub(now)) {
                            Ok(0) => {}
                            Ok(delay) => {
                                *wait.due = now.saturating_add(delay);
                                // Polled again as long before that permit as getting ready
                                // took: at most one interval the first time, in case a slow
                                // call below held it up once, and all of it after that. Its
                                // readiness is given back meanwhile, unless that is all the time
                                // there is.
                                let took = since.map_or(0, |since| now - since);
                                let lead = if mem::replace(wait.renewed, true) {
                                    took
                                } else {
                                    took.min(permit.interval())
                                };
                                if lead >= delay {
                                    *wait.phase = Phase::Holding;
                                    wait.sleep.as_mut().reset(permit.instant(*wait.due));
                                } else {
                                    *wait.service = wait.service.clone();
                                    *wait.phase = Phase::Asleep;
                                    wait.sleep.as_mut().reset(permit.instant(*wait.due - lead));
                                }
                                continue;
                            }
                            Err(retry_after) => {
                                wait.permit.disarm();
                                this.kind.set(Kind::Limited { retry_after });
                                continue;
                            }
                        }
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
