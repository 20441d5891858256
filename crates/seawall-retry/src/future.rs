use crate::{
    backoff::Delays,
    layer::{Core, Shared},
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
    sync::Arc,
    task::{ready, Context, Poll},
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
        max_attempts: u32,
        started: Option<Instant>,
        waits: Option<Pin<Box<Waits>>>,
        // Holds the layer's policy alive even when every service is gone (after `oneshot`).
        shared: Arc<Shared<P, K>>,
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

fn prepare<Req: RequestDeadline>(core: &Core, uses_elapsed: bool, request: &mut Req) -> Attempt {
    if core.per_attempt_timeout.is_none() && !uses_elapsed {
        return Attempt {
            deadline: None,
            started: None,
        };
    }
    let now = Instant::now();
    let deadline = core.per_attempt_timeout.map(|timeout| {
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
    pub(crate) fn new(
        mut service: S,
        mut request: Req,
        template: Option<Req>,
        shared: Arc<Shared<P, K>>,
    ) -> Self {
        let core = &*shared.core;
        let attempt = prepare(core, shared.policy.uses_elapsed(), &mut request);
        let mut waits = None;
        if let Some(deadline) = attempt.deadline {
            Waits::arm(&mut waits, deadline, true);
        }
        let future = service.call(request);
        ResponseFuture {
            state: State::Calling { future },
            service,
            template,
            attempt: 1,
            max_attempts: core.max_attempts,
            started: attempt.started,
            waits,
            shared,
        }
    }
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

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
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
                    let shared = &**this.shared;
                    let core = &*shared.core;
                    let outcome = shared.policy.classify(result.as_ref(), elapsed);
                    core.budget.record(outcome);
                    if outcome != Outcome::Failure {
                        return Poll::Ready(result);
                    }

                    // A failure: retry if every rule allows it, else return it as it is.
                    let attempts = *this.attempt;
                    if attempts >= *this.max_attempts {
                        if attempts > 1 {
                            core.on_give_up(attempts, GiveUpReason::Attempts);
                        }
                        return Poll::Ready(result);
                    }
                    let Some(template) = this.template.as_ref() else {
                        // Not retryable, or not copyable.
                        return Poll::Ready(result);
                    };
                    let now = Instant::now();
                    // Allocates the timer and generator on the first retry; a zero delay is
                    // still drawn so a seeded sequence stays the same.
                    Waits::arm(this.waits, now, false);
                    let waits = this.waits.as_mut().expect("just armed").as_mut().project();
                    let mut delay = waits
                        .delays
                        .get_or_insert_with(|| core.backoff.delays(core.next_seed()))
                        .next_delay();
                    if let Ok(response) = &result {
                        if let Some(after) = shared.policy.retry_after(response) {
                            if after > core.retry_after_cap {
                                core.on_give_up(attempts, GiveUpReason::RetryAfter);
                                return Poll::Ready(result);
                            }
                            delay = delay.max(after);
                        }
                    }
                    if let Some(remaining) = deadline::remaining(template, now) {
                        if remaining <= delay {
                            core.on_give_up(attempts, GiveUpReason::Deadline);
                            return Poll::Ready(result);
                        }
                    }
                    if !core.budget.try_withdraw() {
                        core.on_budget_exhausted(attempts);
                        return Poll::Ready(match result {
                            Err(error) => Err(Box::new(BudgetExhausted::new(error)) as BoxError),
                            response => response,
                        });
                    }
                    core.on_retry(attempts + 1, delay);
                    drop(result);
                    if delay.is_zero() {
                        this.state.set(State::Ready);
                    } else {
                        waits.sleep.reset(deadline_after(now, delay));
                        this.state.set(State::Waiting);
                    }
                }
                StateProj::Waiting => {
                    let waits = this.waits.as_mut().expect("a backoff has a timer");
                    ready!(waits.as_mut().project().sleep.poll(cx));
                    this.state.set(State::Ready);
                }
                StateProj::Ready => {
                    // Each attempt goes through the inner service's readiness again.
                    if let Err(error) = ready!(this.service.poll_ready(cx)) {
                        this.state.set(State::Done);
                        return Poll::Ready(Err(error.into()));
                    }
                    let shared = &**this.shared;
                    let next = *this.attempt + 1;
                    let template = this
                        .template
                        .as_ref()
                        .expect("a retry is only scheduled with a request to copy");
                    let copy = if next < *this.max_attempts {
                        shared.cloner.clone_request(template)
                    } else {
                        None
                    };
                    // The last attempt (or one whose copy failed) sends the template itself.
                    let mut request = match copy {
                        Some(copy) => copy,
                        None => this.template.take().expect("checked above"),
                    };
                    let attempt = prepare(&shared.core, shared.policy.uses_elapsed(), &mut request);
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
                }
                StateProj::Done => panic!("retry ResponseFuture polled after completion"),
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
