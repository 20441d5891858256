use crate::{
    backoff::Delays,
    budget::Withdrawal,
    layer::{Link, Settings},
    policy::{CloneRequest, Policy},
    BudgetExhausted, GiveUpReason,
};
use pin_project_lite::pin_project;
use seawall_core::{
    deadline::{self, deadline_after, Elapsed, RequestDeadline},
    BoxError, Outcome,
};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::{sleep_until, Instant, Sleep};
use tower_service::Service;

pin_project! {
    /// The response future of [`Retry`](crate::Retry).
    ///
    /// Holds the inner service taken in `call` and a copy of the request. After a failed attempt
    /// it waits out the backoff, polls the service ready, and sends the next copy.
    ///
    /// A call that succeeds first time allocates nothing. The timer and the backoff's random
    /// generator are allocated together, once, at the first retry (or at the call, with a
    /// per-attempt timeout), which keeps this future small on the happy path.
    pub struct ResponseFuture<S, Req, P, K>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        service: S,
        template: Option<Req>,
        attempt: u32,
        started: Option<Instant>,
        waits: Timer,
        // The layer's policy, settings and shared state, alive even when every service is gone.
        link: Link<P, K>,
    }
}

pin_project! {
    /// What only a retried or timed call needs.
    struct Waits {
        #[pin]
        sleep: Sleep,
        // Whether `sleep` is the running attempt's timeout (rather than a finished backoff).
        timed: bool,
        delays: Option<Delays>,
        // The budget's retry for the attempt being prepared: given back if it is never sent.
        paid: Option<Withdrawal>,
    }
}

/// The future's timer, allocated when first needed. Dropping an unused one is a null check that
/// inlines; dropping a used one (deregistering the timer) is out of line.
struct Timer(Option<Pin<Box<Waits>>>);

impl Drop for Timer {
    #[inline]
    fn drop(&mut self) {
        #[cold]
        #[inline(never)]
        fn drop_slow(waits: Pin<Box<Waits>>) {
            drop(waits);
        }
        if let Some(waits) = self.0.take() {
            drop_slow(waits);
        }
    }
}

impl std::ops::Deref for Timer {
    type Target = Option<Pin<Box<Waits>>>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Timer {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Waits {
    /// Arms the timer for `deadline`, creating it on first use.
    fn arm(waits: &mut Option<Pin<Box<Waits>>>, deadline: Instant, timed: bool) {
        match waits {
            Some(waits) => {
                let this = waits.as_mut().project();
                this.sleep.reset(deadline);
                *this.timed = timed;
            }
            None => {
                *waits = Some(Box::pin(Waits {
                    sleep: sleep_until(deadline),
                    timed,
                    delays: None,
                    paid: None,
                }))
            }
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Waiting out the backoff before the next attempt.
        Waiting,
        // Polling the service ready for the next attempt.
        Ready,
        // Finished.
        Done,
    }
}

/// What the next attempt needs to know, read once per attempt.
struct Attempt {
    /// When the attempt fails with `Elapsed`, with a per-attempt timeout.
    deadline: Option<Instant>,
    /// When it started, if the policy looks at durations.
    started: Option<Instant>,
}

#[inline]
fn prepare<Req: RequestDeadline>(
    settings: &Settings,
    uses_elapsed: bool,
    request: &mut Req,
) -> Attempt {
    if settings.per_attempt_timeout.is_none() && !uses_elapsed {
        return Attempt {
            deadline: None,
            started: None,
        };
    }
    let now = Instant::now();
    let deadline = settings.per_attempt_timeout.map(|timeout| {
        let own = deadline_after(now, timeout);
        match request.deadline() {
            Some(outer) if outer <= own => outer,
            _ => {
                request.set_deadline(own);
                own
            }
        }
    });
    Attempt {
        deadline,
        started: uses_elapsed.then_some(now),
    }
}

impl<S, Req, P, K> ResponseFuture<S, Req, P, K>
where
    S: Service<Req>,
    P: Policy<Req, S::Response>,
    Req: RequestDeadline,
{
    #[inline]
    pub(crate) fn new(
        mut service: S,
        mut request: Req,
        template: Option<Req>,
        link: Link<P, K>,
    ) -> Self {
        let attempt = prepare(link.settings(), link.policy.uses_elapsed(), &mut request);
        let mut waits = Timer(None);
        if let Some(deadline) = attempt.deadline {
            Waits::arm(&mut waits, deadline, true);
        }
        let future = service.call(request);
        ResponseFuture {
            state: State::Calling { future },
            service,
            template,
            attempt: 1,
            started: attempt.started,
            waits,
            link,
        }
    }
}

/// Decides whether a failed attempt is retried. `Ok(delay)` when it is (the timer armed for a
/// non-zero delay), or `Err` with what the call returns. Out of line: a call that succeeds first
/// time never runs it.
#[inline(never)]
fn schedule_retry<Req, Res, P, K>(
    link: &Link<P, K>,
    waits: &mut Timer,
    template: Option<&Req>,
    attempts: u32,
    result: Result<Res, BoxError>,
) -> Result<Duration, Result<Res, BoxError>>
where
    P: Policy<Req, Res>,
    Req: RequestDeadline,
{
    let settings = link.settings();
    if attempts >= settings.max_attempts {
        if attempts > 1 {
            link.on_give_up(attempts, GiveUpReason::Attempts);
        }
        return Err(result);
    }
    let Some(template) = template else {
        // Not retryable, or not copyable.
        return Err(result);
    };
    let now = Instant::now();
    // Allocates the timer and generator on the first retry; a zero delay is still drawn so a
    // seeded sequence stays the same.
    Waits::arm(waits, now, false);
    let waits = waits.as_mut().expect("just armed").as_mut().project();
    let mut delay = waits
        .delays
        .get_or_insert_with(|| settings.backoff.delays(link.next_seed()))
        .next_delay();
    if let Ok(response) = &result {
        if let Some(after) = link.policy.retry_after(response) {
            if after > settings.retry_after_cap {
                link.on_give_up(attempts, GiveUpReason::RetryAfter);
                return Err(result);
            }
            delay = delay.max(after);
        }
    }
    if let Some(remaining) = deadline::remaining(template, now) {
        if remaining <= delay {
            link.on_give_up(attempts, GiveUpReason::Deadline);
            return Err(result);
        }
    }
    let Some(paid) = link.withdraw() else {
        link.on_budget_exhausted(attempts);
        return Err(match result {
            Err(error) => Err(Box::new(BudgetExhausted::new(error)) as BoxError),
            response => response,
        });
    };
    *waits.paid = Some(paid);
    link.on_retry(attempts + 1, delay);
    drop(result);
    if !delay.is_zero() {
        waits.sleep.reset(deadline_after(now, delay));
    }
    Ok(delay)
}

/// Waits out the backoff, polls the service ready and sends the next attempt. Out of line, like
/// [`schedule_retry`].
#[inline(never)]
fn advance<S, Req, P, K>(
    future: Pin<&mut ResponseFuture<S, Req, P, K>>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), BoxError>>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response>,
    K: CloneRequest<Req>,
    Req: RequestDeadline,
{
    let mut this = future.project();
    match this.state.as_mut().project() {
        StateProj::Waiting => {
            let waits = this.waits.as_mut().expect("a backoff has a timer");
            ready!(waits.as_mut().project().sleep.poll(cx));
            this.state.set(State::Ready);
        }
        StateProj::Ready => {}
        StateProj::Calling { .. } => return Poll::Ready(Ok(())),
        StateProj::Done => panic!("retry ResponseFuture polled after completion"),
    }
    let link = &*this.link;
    let template = this
        .template
        .as_ref()
        .expect("a retry is only scheduled with a request to copy");
    // Each attempt goes through the inner service's readiness again, and none starts once the
    // call's deadline has passed: waiting for readiness past it gives up at the deadline.
    let deadline = template.deadline();
    let ready = this.service.poll_ready(cx);
    if let Some(deadline) = deadline {
        if Instant::now() >= deadline {
            link.on_give_up(*this.attempt, GiveUpReason::Deadline);
            return Poll::Ready(Err(Box::new(Elapsed::new())));
        }
        if ready.is_pending() {
            Waits::arm(this.waits, deadline, false);
            let waits = this.waits.as_mut().expect("just armed");
            if waits.as_mut().project().sleep.poll(cx).is_ready() {
                link.on_give_up(*this.attempt, GiveUpReason::Deadline);
                return Poll::Ready(Err(Box::new(Elapsed::new())));
            }
        }
    }
    ready!(ready).map_err(Into::into)?;
    let next = *this.attempt + 1;
    let copy = if next < link.settings().max_attempts {
        link.cloner.clone_request(template)
    } else {
        None
    };
    // The last attempt (or one whose copy failed) sends the template itself.
    let mut request = match copy {
        Some(copy) => copy,
        None => this.template.take().expect("checked above"),
    };
    let attempt = prepare(link.settings(), link.policy.uses_elapsed(), &mut request);
    match attempt.deadline {
        Some(deadline) => Waits::arm(this.waits, deadline, true),
        None => {
            if let Some(waits) = this.waits.as_mut() {
                *waits.as_mut().project().timed = false;
            }
        }
    }
    *this.started = attempt.started;
    *this.attempt = next;
    let future = this.service.call(request);
    this.state.set(State::Calling { future });
    if let Some(paid) = this
        .waits
        .as_mut()
        .and_then(|w| w.as_mut().project().paid.take())
    {
        paid.spend();
    }
    Poll::Ready(Ok(()))
}

impl<S, Req, P, K> Future for ResponseFuture<S, Req, P, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response>,
    K: CloneRequest<Req>,
    Req: RequestDeadline,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    let result = match future.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending => match this.waits.as_mut() {
                            Some(waits) if waits.timed => {
                                ready!(waits.as_mut().project().sleep.poll(cx));
                                Err(Box::new(Elapsed::new()) as BoxError)
                            }
                            _ => return Poll::Pending,
                        },
                    };
                    // Drops the attempt's future (cancelling it when its timeout fired).
                    this.state.set(State::Done);
                    let elapsed = this
                        .started
                        .map(|started| started.elapsed())
                        .unwrap_or_default();
                    let link = &*this.link;
                    let outcome = link.policy.classify(result.as_ref(), elapsed);
                    link.record(outcome);
                    if outcome != Outcome::Failure {
                        return Poll::Ready(result);
                    }

                    // A failure: retry if every rule allows it, else return it as it is.
                    let template = this.template.as_ref();
                    match schedule_retry(link, this.waits, template, *this.attempt, result) {
                        Ok(delay) if delay.is_zero() => this.state.set(State::Ready),
                        Ok(_) => this.state.set(State::Waiting),
                        Err(result) => return Poll::Ready(result),
                    }
                }
                _ => {
                    // Between attempts: out of line, so the first attempt's path stays short.
                    if let Err(error) = ready!(advance(self.as_mut(), cx)) {
                        self.as_mut().project().state.set(State::Done);
                        return Poll::Ready(Err(error));
                    }
                }
            }
        }
    }
}

impl<S, Req, P, K> fmt::Debug for ResponseFuture<S, Req, P, K>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Calling { .. } => "calling",
            State::Waiting => "waiting",
            State::Ready => "ready",
            State::Done => "done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &self.attempt)
            .field("retryable", &self.template.is_some())
            .field("timer", &self.waits.is_some())
            .finish()
    }
}
