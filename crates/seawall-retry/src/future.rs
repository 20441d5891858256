use crate::{
    backoff::Delays,
    budget::Withdrawal,
    layer::{Link, Settings},
    policy::{CloneRequest, Policy},
    timer::TIMER_RESOLUTION,
    BudgetExhausted, GiveUpReason,
};
use pin_project_lite::pin_project;
use seawall_core::{
    deadline::{deadline_after, Elapsed, RequestDeadline},
    error::{not_sent, SentEarlier},
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
    /// A call that succeeds first time allocates nothing beyond what copying its request costs,
    /// and runs inline: none of the retry's own code out of line is lent the first attempt's
    /// parts, so the compiler can see through the whole call. What later attempts need (the timer, the
    /// backoff's random generator) is allocated together with the service, the request copy and
    /// the policy, once, at the first retry (or at the call, with a per-attempt timeout).
    pub struct ResponseFuture<S, Req, P, K>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req, P, K>,
    }
}

pin_project! {
    #[project = StateProj]
    #[project_replace = StateReplace]
    enum State<S, Req, P, K>
    where
        S: Service<Req>,
    {
        // The first attempt is in flight.
        First {
            // Dropped first when a call is dropped during its first attempt: its shared state is
            // let go of without unwinding, so that drop needs no cleanup path. (A first-time
            // success drops the attempt's future in place first, then the rest by value.)
            link: Link<P, K>,
            service: S,
            template: Option<Req>,
            // The call's deadline, read at the call when it may be retried.
            deadline: Option<Instant>,
            // Whether the request is retried only when an attempt was never sent.
            unsent_only: bool,
            started: Option<Instant>,
            #[pin]
            future: S::Future,
        },
        // Past the first attempt, or timing each attempt; empty once finished, when `attempts`
        // says how many were made.
        Retrying { retrying: Boxed<Retrying<S, Req, P, K>>, attempts: u32 },
    }
}

/// The [`NotSent`](seawall_core::error::NotSent) of an attempt's error, if it proves the request
/// was never sent; a response, even a failed one, was sent.
fn unsent<Res>(result: &Result<Res, BoxError>) -> Option<seawall_core::error::NotSent> {
    match result {
        Err(error) => not_sent(&**error),
        Ok(_) => None,
    }
}

/// Marks `error`, which proves the last attempt was never sent, as following an attempt that was:
/// inside a [`BudgetExhausted`], so that it stays the error's own type.
#[cold]
fn sent_earlier(error: BoxError) -> BoxError {
    match error.downcast::<BudgetExhausted>() {
        Ok(exhausted) => Box::new(BudgetExhausted::new(Box::new(SentEarlier::new(
            exhausted.into_last_error(),
        )))),
        Err(error) => Box::new(SentEarlier::new(error)),
    }
}

/// What polling a call gives: its answer, once it has one.
type Answer<S, Req> = Poll<Result<<S as Service<Req>>::Response, BoxError>>;

/// The later attempts' pinned box, empty once the call has finished. Its drop, deallocation
/// included, is one call out of line, so dropping a [`ResponseFuture`] stays small enough to
/// inline.
struct Boxed<T>(Option<Pin<Box<T>>>);

impl<T> Boxed<T> {
    fn new(value: Pin<Box<T>>) -> Self {
        Boxed(Some(value))
    }

    const EMPTY: Self = Boxed(None);
}

impl<T> Drop for Boxed<T> {
    #[inline]
    fn drop(&mut self) {
        #[inline(never)]
        fn drop_boxed<T>(value: Pin<Box<T>>) {
            drop(value);
        }
        if let Some(value) = self.0.take() {
            drop_boxed(value);
        }
    }
}

pin_project! {
    /// A call past its first attempt, or one with a per-attempt timeout.
    struct Retrying<S, Req, P, K>
    where
        S: Service<Req>,
    {
        #[pin]
        step: Step<S::Future>,
        #[pin]
        sleep: Sleep,
        // What `sleep` times while an attempt runs.
        timed: Timed,
        delays: Option<Delays>,
        // The budget's retry for the attempt being prepared: given back if it is never handed
        // to the inner service.
        paid: Option<Withdrawal>,
        service: S,
        template: Option<Req>,
        // The call's deadline, read from the request at the call when it is retryable: the copies
        // may not carry it.
        deadline: Option<Instant>,
        // Whether the request may not be sent twice, and is retried only when an attempt proves
        // it was never sent.
        unsent_only: bool,
        // Whether an attempt made so far may have been sent: one answered, or failed with an
        // error that does not prove it was never sent.
        sent_any: bool,
        attempt: u32,
        started: Option<Instant>,
        link: Link<P, K>,
    }
}

pin_project! {
    #[project = StepProj]
    enum Step<F> {
        // An attempt is in flight.
        Calling { #[pin] future: F },
        // Waiting out the backoff before the next attempt.
        Waiting,
        // Polling the service ready for the next attempt.
        Ready,
        // Between a failed attempt and the decision on the next.
        Deciding,
    }
}

/// What a retry layer's timer times while an attempt runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Timed {
    /// Nothing: the timer is a backoff's, or the call's deadline while waiting for readiness.
    No,
    /// The attempt's own timeout: an attempt cut by it failed, and may be retried.
    Attempt,
    /// The call's deadline (or the one the attempt's request carries, when earlier), earlier
    /// than the attempt's own timeout or at most a timer tick ([`TIMER_RESOLUTION`]) after it,
    /// so that the two may fire on the same tick, or a tick apart: an attempt cut by it is cancelled and counts
    /// for nothing, as when a timeout above cancels it, and the call fails with `Elapsed`.
    Call,
}

/// What the next attempt needs to know, read once per attempt.
struct Attempt {
    /// When the attempt fails with `Elapsed`, with a per-attempt timeout.
    deadline: Option<Instant>,
    /// Whether `deadline` is the call's own (or the request's, when earlier), earlier than the
    /// attempt's timeout or within a timer tick of it.
    call_deadline: bool,
    /// When it started, if the policy looks at durations.
    started: Option<Instant>,
}

impl Attempt {
    /// What the timer times while this attempt runs.
    fn timed(&self) -> Timed {
        match (self.deadline, self.call_deadline) {
            (None, _) => Timed::No,
            (Some(_), false) => Timed::Attempt,
            (Some(_), true) => Timed::Call,
        }
    }
}

/// Prepares `request` for its attempt; `call` is the call's deadline, if read at the call.
#[inline]
fn prepare<Req: RequestDeadline>(
    settings: &Settings,
    uses_elapsed: bool,
    request: &mut Req,
    call: Option<Instant>,
) -> Attempt {
    if settings.per_attempt_timeout.is_none() && !uses_elapsed {
        return Attempt {
            deadline: None,
            call_deadline: false,
            started: None,
        };
    }
    prepare_timed(settings, uses_elapsed, request, call)
}

/// [`prepare`] for an attempt that reads the clock, out of line.
#[cold]
#[inline(never)]
fn prepare_timed<Req: RequestDeadline>(
    settings: &Settings,
    uses_elapsed: bool,
    request: &mut Req,
    call: Option<Instant>,
) -> Attempt {
    let now = Instant::now();
    let mut call_deadline = false;
    let deadline = settings.per_attempt_timeout.map(|timeout| {
        // A request's per-try override replaces the layer's timeout; it starts none of its own,
        // and a zero one is ignored, as the builder rejects a zero per-attempt timeout.
        let timeout = request
            .per_try_timeout_override()
            .filter(|t| !t.is_zero())
            .unwrap_or(timeout);
        let own = deadline_after(now, timeout);
        // The attempt's outer bound is the earlier of the call's deadline and the one its request
        // carries: a copy's own earlier deadline, or, for a call that is not retried (which read
        // none at the call), the caller's.
        let carried = request.deadline();
        let outer = match (call, carried) {
            (Some(call), Some(carried)) => Some(call.min(carried)),
            (call, carried) => call.or(carried),
        };
        match outer {
            // An outer deadline within a tick of the attempt's own would fire on that tick (or
            // the next): the attempt is then cut at the outer deadline, not by its timeout.
            Some(outer) if outer.saturating_duration_since(own) <= TIMER_RESOLUTION => {
                call_deadline = true;
                if carried != Some(outer) {
                    request.set_deadline(outer);
                }
                outer
            }
            _ => {
                request.set_deadline(own);
                own
            }
        }
    });
    Attempt {
        deadline,
        call_deadline,
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
        deadline: Option<Instant>,
        unsent_only: bool,
        link: Link<P, K>,
    ) -> Self {
        let attempt = prepare(
            link.settings(),
            link.policy.uses_elapsed(),
            &mut request,
            deadline,
        );
        let state = match attempt.deadline {
            None => {
                let future = service.call(request);
                State::First {
                    link,
                    service,
                    template,
                    deadline,
                    unsent_only,
                    started: attempt.started,
                    future,
                }
            }
            Some(timer) => State::Retrying {
                retrying: Retrying::timed(
                    service,
                    request,
                    template,
                    deadline,
                    unsent_only,
                    link,
                    timer,
                    attempt,
                ),
                attempts: 0,
            },
        };
        ResponseFuture { state }
    }
}

impl<S, Req, P, K> Retrying<S, Req, P, K>
where
    S: Service<Req>,
    P: Policy<Req, S::Response>,
    Req: RequestDeadline,
{
    /// A first attempt with a per-attempt timeout.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn timed(
        mut service: S,
        request: Req,
        template: Option<Req>,
        deadline: Option<Instant>,
        unsent_only: bool,
        link: Link<P, K>,
        timer: Instant,
        attempt: Attempt,
    ) -> Boxed<Self> {
        let future = service.call(request);
        Boxed::new(Box::pin(Retrying {
            step: Step::Calling { future },
            sleep: sleep_until(timer),
            timed: attempt.timed(),
            delays: None,
            paid: None,
            service,
            template,
            deadline,
            unsent_only,
            sent_any: false,
            attempt: 1,
            started: attempt.started,
            link,
        }))
    }

    /// Decides whether the failed first attempt is retried: `Ok` with the retry scheduled, or
    /// `Err` with what the call returns. Out of line, and given the first attempt's parts by
    /// value: a call that succeeds first time never runs it.
    #[inline(never)]
    fn after_first(
        first: StateReplace<S, Req, P, K>,
        result: Result<S::Response, BoxError>,
    ) -> Result<Boxed<Self>, Result<S::Response, BoxError>> {
        let StateReplace::First {
            link,
            service,
            template,
            deadline,
            unsent_only,
            ..
        } = first
        else {
            unreachable!("only the first attempt is replaced");
        };
        // Refusals that need no state come first, so a call that is not retried allocates
        // nothing.
        if link.settings().max_attempts <= 1
            || template.is_none()
            || (unsent_only && unsent(&result).is_none())
        {
            return Err(result);
        }
        let sent_any = unsent(&result).is_none();
        let mut retrying = Box::pin(Retrying {
            step: Step::Deciding,
            sleep: sleep_until(Instant::now()),
            timed: Timed::No,
            delays: None,
            paid: None,
            service,
            template,
            deadline,
            unsent_only,
            sent_any,
            attempt: 1,
            started: None,
            link,
        });
        retrying.as_mut().schedule(result)?;
        Ok(Boxed::new(retrying))
    }

    /// Schedules the next attempt after a failed one, if every rule allows it; else `Err` with
    /// what the call returns.
    fn schedule(
        self: Pin<&mut Self>,
        result: Result<S::Response, BoxError>,
    ) -> Result<(), Result<S::Response, BoxError>> {
        let mut this = self.project();
        let link = &*this.link;
        let settings = link.settings();
        let attempts = *this.attempt;
        let unsent = unsent(&result);
        if *this.unsent_only && unsent.is_none() {
            // A request that may not be sent twice, sent: never retryable, so no give-up.
            return Err(result);
        }
        if attempts >= settings.max_attempts {
            if attempts > 1 {
                link.on_give_up(attempts, GiveUpReason::Attempts);
            }
            return Err(result);
        }
        if this.template.is_none() {
            // Never retryable (a first attempt, timed), or the request could not be copied
            // for this attempt, which was sent as the last: only the latter gives up.
            if attempts > 1 {
                link.on_give_up(attempts, GiveUpReason::NotCopyable);
            }
            return Err(result);
        }
        let now = Instant::now();
        // A zero delay is still drawn, so a seeded sequence stays the same.
        let mut delay = this
            .delays
            .get_or_insert_with(|| settings.backoff.delays(link.next_seed()))
            .next_delay();
        // The server's pause, from a failed response or an error (a gRPC pushback): the longer
        // of it and the backoff is waited, and one over the cap, or `Duration::MAX` ("do not
        // retry"), ends the call with this attempt's result.
        let asked = match &result {
            Ok(response) => link.policy.retry_after(response),
            Err(error) => link.policy.retry_after_error(error),
        };
        if let Some(after) = asked {
            if after > settings.retry_after_cap || after == Duration::MAX {
                link.on_give_up(attempts, GiveUpReason::RetryAfter);
                return Err(result);
            }
            delay = delay.max(after);
        }
        // The server's pause is never shortened to fit a deadline, as the backoff may be below.
        let floor = asked.unwrap_or_default();
        // A rejection raised before sending may say how long until it would let the call through
        // (a rate limiter's): waited, and the backoff after it, so that the calls a limiter
        // turned away together (each told nearly the same wait) spread over the backoff rather
        // than all come back on the same tick. Capped as a server's `Retry-After` is. A call's
        // deadline with room for the `retry_after` but not for the whole backoff after it (the
        // check below would give up) shortens that backoff to what fits, up to a tick left for
        // the attempt, but not below the server's pause: one without room for the `retry_after`
        // and that pause is given up on below.
        if let Some(after) = unsent.and_then(|unsent| unsent.retry_after()) {
            if after > settings.retry_after_cap {
                link.on_give_up(attempts, GiveUpReason::RetryAfter);
                return Err(result);
            }
            if let Some(deadline) = *this.deadline {
                let remaining = deadline.saturating_duration_since(now);
                let room_for_after = remaining > after.saturating_add(TIMER_RESOLUTION);
                let whole = after.saturating_add(delay).saturating_add(TIMER_RESOLUTION);
                if room_for_after && remaining <= whole {
                    let room = remaining
                        .saturating_sub(after)
                        .saturating_sub(TIMER_RESOLUTION * 2);
                    delay = delay.min(room).max(floor);
                }
            }
            delay = delay.saturating_add(after);
        }
        if let Some(deadline) = *this.deadline {
            let remaining = deadline.saturating_duration_since(now);
            // The backoff's timer fires up to a tick after `delay`; no timer waits a zero delay.
            let backoff = if delay.is_zero() {
                delay
            } else {
                delay.saturating_add(TIMER_RESOLUTION)
            };
            if remaining <= backoff {
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
        *this.paid = Some(paid);
        link.on_retry(attempts + 1, delay);
        drop(result);
        *this.timed = Timed::No;
        if delay.is_zero() {
            this.step.set(Step::Ready);
        } else {
            this.sleep.as_mut().reset(deadline_after(now, delay));
            this.step.set(Step::Waiting);
        }
        Ok(())
    }
}

impl<S, Req, P, K> Retrying<S, Req, P, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response>,
    K: CloneRequest<Req>,
    Req: RequestDeadline,
{
    /// Decides on a failed first attempt, and drives the retry if one is scheduled: the poll's
    /// answer, the later attempts' box (empty once the call is over) and the attempts made. Out
    /// of line: a call that succeeds first time never runs it.
    #[inline(never)]
    fn retry_first(
        first: StateReplace<S, Req, P, K>,
        result: Result<S::Response, BoxError>,
        cx: &mut Context<'_>,
    ) -> (Answer<S, Req>, Boxed<Self>, u32) {
        let mut retrying = match Retrying::after_first(first, result) {
            Ok(retrying) => retrying,
            Err(result) => return (Poll::Ready(result), Boxed::EMPTY, 1),
        };
        let Some(later) = retrying.0.as_mut() else {
            unreachable!("a scheduled retry is boxed");
        };
        match later.as_mut().poll_attempts(cx) {
            Poll::Ready(result) => {
                let attempts = later.attempt;
                (Poll::Ready(result), Boxed::EMPTY, attempts)
            }
            Poll::Pending => (Poll::Pending, retrying, 0),
        }
    }

    /// Drives the attempts after the first (or every attempt, when each is timed) to the
    /// call's answer. A call that ends with an error proving its last attempt was never sent,
    /// though an earlier attempt may have been, returns it wrapped in a [`SentEarlier`]: the
    /// call as a whole may have reached the server.
    #[inline(never)]
    fn poll_attempts(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        let result = ready!(self.as_mut().drive(cx));
        Poll::Ready(match result {
            Err(error) if self.sent_any && not_sent(&*error).is_some() => Err(sent_earlier(error)),
            result => result,
        })
    }

    /// [`poll_attempts`](Self::poll_attempts) but for marking what an earlier attempt sent.
    fn drive(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, BoxError>> {
        loop {
            let mut this = self.as_mut().project();
            match this.step.as_mut().project() {
                StepProj::Calling { future } => {
                    let result = match future.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending if *this.timed != Timed::No => {
                            ready!(this.sleep.poll(cx));
                            if *this.timed == Timed::Call {
                                // The call is over; the attempt is cancelled, not failed.
                                this.step.set(Step::Deciding);
                                return Poll::Ready(Err(Box::new(Elapsed::new())));
                            }
                            Err(Box::new(Elapsed::new()) as BoxError)
                        }
                        Poll::Pending => return Poll::Pending,
                    };
                    // Drops the attempt's future (cancelling it when its timeout fired).
                    this.step.set(Step::Deciding);
                    let sent = unsent(&result).is_none();
                    if sent {
                        *this.sent_any = true;
                    }
                    let elapsed = this
                        .started
                        .map(|started| started.elapsed())
                        .unwrap_or_default();
                    let outcome = this.link.policy.classify(result.as_ref(), elapsed);
                    // A failure never sent takes no token from a token bucket (gRFC A6).
                    if sent || outcome != Outcome::Failure {
                        this.link.record(outcome);
                    }
                    if outcome != Outcome::Failure {
                        return Poll::Ready(result);
                    }
                    if let Err(result) = self.as_mut().schedule(result) {
                        return Poll::Ready(result);
                    }
                }
                StepProj::Waiting => {
                    ready!(this.sleep.poll(cx));
                    this.step.set(Step::Ready);
                }
                StepProj::Ready => ready!(self.as_mut().send(cx))?,
                StepProj::Deciding => unreachable!("a decision is made where an attempt ends"),
            }
        }
    }

    /// Polls the service ready and sends the next attempt.
    fn send(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        let mut this = self.project();
        let link = &*this.link;
        let template = this
            .template
            .as_ref()
            .expect("a retry is only scheduled with a request to copy");
        // Each attempt goes through the inner service's readiness again, and none starts once the
        // call's deadline has passed: waiting for readiness past it gives up at the deadline.
        let deadline = *this.deadline;
        let ready = match this.service.poll_ready(cx) {
            Poll::Ready(Err(error)) => {
                link.on_give_up(*this.attempt, GiveUpReason::NotReady);
                return Poll::Ready(Err(error.into()));
            }
            ready => ready,
        };
        if let Some(deadline) = deadline {
            if Instant::now() >= deadline {
                link.on_give_up(*this.attempt, GiveUpReason::Deadline);
                return Poll::Ready(Err(Box::new(Elapsed::new())));
            }
            if ready.is_pending() {
                this.sleep.as_mut().reset(deadline);
                *this.timed = Timed::No;
                if this.sleep.as_mut().poll(cx).is_ready() {
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
        // A copy made without the call's deadline (a request rebuilt without its extensions), or
        // with a later one, is given it, so the layers below see it too; one that carries an
        // earlier deadline of its own keeps it.
        if let Some(deadline) = deadline {
            if request.deadline().is_none_or(|own| own > deadline) {
                request.set_deadline(deadline);
            }
        }
        let attempt = prepare(
            link.settings(),
            link.policy.uses_elapsed(),
            &mut request,
            deadline,
        );
        if let Some(deadline) = attempt.deadline {
            this.sleep.as_mut().reset(deadline);
        }
        *this.timed = attempt.timed();
        *this.started = attempt.started;
        *this.attempt = next;
        let future = this.service.call(request);
        this.step.set(Step::Calling { future });
        if let Some(paid) = this.paid.take() {
            paid.spend();
        }
        link.on_retry_sent();
        Poll::Ready(Ok(()))
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

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // None of the retry's own code out of line is lent the state's address (as `Pin::set`
        // would, dropping the old state through its whole drop glue): the first attempt's future
        // is dropped in place and the rest is handed on by value, the first attempt's parts to
        // `retry_first`; `poll_attempts` gets a pin into the later attempts' box. A call that
        // succeeds first time then runs none of the retry's code out of line before it is
        // dropped.
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::First {
                link,
                started,
                future,
                ..
            } => {
                let result = ready!(future.poll(cx)).map_err(Into::into);
                let elapsed = started.map(|started| started.elapsed()).unwrap_or_default();
                let outcome = link.policy.classify(result.as_ref(), elapsed);
                // A failure never sent takes no token from a token bucket: gRPC leaves attempts
                // that never reached the server out of its retry throttling (gRFC A6).
                if outcome != Outcome::Failure || unsent(&result).is_none() {
                    link.record(outcome);
                }
                let first = state.as_mut().project_replace(State::Retrying {
                    retrying: Boxed::EMPTY,
                    attempts: 1,
                });
                if outcome != Outcome::Failure {
                    drop(first);
                    return Poll::Ready(result);
                }
                // The first attempt failed: retry if every rule allows it, else return it as
                // it is.
                let (poll, later, attempts) = Retrying::retry_first(first, result, cx);
                if let StateProj::Retrying {
                    retrying,
                    attempts: made,
                } = state.project()
                {
                    *retrying = later;
                    *made = attempts;
                }
                poll
            }
            StateProj::Retrying { retrying, attempts } => {
                let Some(later) = retrying.0.as_mut() else {
                    panic!("retry ResponseFuture polled after completion");
                };
                let result = ready!(later.as_mut().poll_attempts(cx));
                *attempts = later.attempt;
                *retrying = Boxed::EMPTY;
                Poll::Ready(result)
            }
        }
    }
}

impl<S, Req, P, K> fmt::Debug for ResponseFuture<S, Req, P, K>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `retryable` is `true`, `false`, or "unsent only" for a request retried only when an
        // attempt proves it was never sent.
        let retryable = |template: bool, unsent_only: bool| -> &'static dyn fmt::Debug {
            match (template, unsent_only) {
                (false, _) => &false,
                (true, false) => &true,
                (true, true) => &"unsent only",
            }
        };
        let (state, attempt, retryable, timer) = match &self.state {
            State::First {
                template,
                unsent_only,
                ..
            } => (
                "calling",
                1,
                retryable(template.is_some(), *unsent_only),
                false,
            ),
            State::Retrying {
                retrying: Boxed(Some(retrying)),
                ..
            } => {
                let step = match retrying.step {
                    Step::Calling { .. } => "calling",
                    Step::Waiting => "waiting",
                    Step::Ready => "ready",
                    Step::Deciding => "deciding",
                };
                (
                    step,
                    retrying.attempt,
                    retryable(retrying.template.is_some(), retrying.unsent_only),
                    true,
                )
            }
            State::Retrying {
                retrying: Boxed(None),
                attempts,
            } => ("done", *attempts, retryable(false, false), false),
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("attempt", &attempt)
            .field("retryable", retryable)
            .field("timer", &timer)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::{Backoff, RetryBudget, RetryLayer};
    use seawall_core::BoxError;
    use std::{
        future::{ready, Future},
        pin::pin,
        sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        },
        task::{Context, Poll},
        time::Duration,
    };
    use tower::{service_fn, Layer, Service};

    #[derive(Clone, Copy)]
    struct Req;
    impl seawall_core::deadline::RequestDeadline for Req {}

    /// Fails the first `failures` calls, then answers.
    fn failing(
        failures: u32,
    ) -> impl Service<
        Req,
        Response = u32,
        Error = BoxError,
        Future = std::future::Ready<Result<u32, BoxError>>,
    > + Clone {
        let calls = Arc::new(AtomicU32::new(0));
        service_fn(move |_: Req| {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            ready(if n < failures {
                Err::<u32, BoxError>("down".into())
            } else {
                Ok(n)
            })
        })
    }

    fn layer(backoff: Duration, per_attempt: Option<Duration>) -> RetryLayer {
        let mut builder = RetryLayer::builder()
            .max_attempts(3)
            .backoff(Backoff::constant(backoff))
            .budget(RetryBudget::unlimited());
        if let Some(timeout) = per_attempt {
            builder = builder.per_attempt_timeout(timeout);
        }
        builder.build().unwrap()
    }

    fn debug<T: std::fmt::Debug>(value: &T) -> String {
        format!("{value:?}")
    }

    #[tokio::test(start_paused = true)]
    async fn a_first_time_success_finishes_inline_and_says_so() {
        let mut svc = layer(Duration::from_millis(10), None).layer(failing(0));
        let mut future = pin!(svc.call(Req));
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "calling", attempt: 1, retryable: true, timer: false }"#
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(0))));
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "done", attempt: 1, retryable: false, timer: false }"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_first_attempt_moves_to_the_heap_and_waits_its_backoff() {
        let mut svc = layer(Duration::from_millis(10), None).layer(failing(1));
        let mut future = pin!(svc.call(Req));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(future.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "waiting", attempt: 1, retryable: true, timer: true }"#
        );
        tokio::time::advance(Duration::from_millis(10)).await;
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(1))));
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "done", attempt: 2, retryable: false, timer: false }"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_retried_only_when_never_sent_says_so() {
        #[derive(Clone)]
        struct UnsentOnly;
        impl crate::Policy<Req, u32> for UnsentOnly {
            fn is_retryable(&self, _: &Req) -> bool {
                false
            }

            fn classify(
                &self,
                result: Result<&u32, &BoxError>,
                _: Duration,
            ) -> seawall_core::Outcome {
                match result {
                    Ok(_) => seawall_core::Outcome::Success,
                    Err(_) => seawall_core::Outcome::Failure,
                }
            }
        }
        let layer = RetryLayer::builder()
            .policy(UnsentOnly)
            .max_attempts(3)
            .backoff(Backoff::constant(Duration::from_millis(10)))
            .budget(RetryBudget::unlimited())
            .build()
            .unwrap();
        let mut svc = layer.layer(failing(0));
        let future = svc.call(Req);
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "calling", attempt: 1, retryable: "unsent only", timer: false }"#
        );
        assert_eq!(future.await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_call_starts_on_the_heap() {
        let mut svc =
            layer(Duration::from_millis(10), Some(Duration::from_secs(1))).layer(failing(0));
        let future = svc.call(Req);
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "calling", attempt: 1, retryable: true, timer: true }"#
        );
        assert_eq!(future.await.unwrap(), 0);
    }

    /// A request that carries a deadline of its own.
    struct Carrying(Option<tokio::time::Instant>);

    impl seawall_core::deadline::RequestDeadline for Carrying {
        fn deadline(&self) -> Option<tokio::time::Instant> {
            self.0
        }

        fn set_deadline(&mut self, deadline: tokio::time::Instant) {
            self.0 = Some(deadline);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_attempt_is_bounded_by_the_earlier_of_the_calls_and_its_requests_deadline() {
        let settings = crate::layer::Settings {
            max_attempts: 3,
            backoff: Backoff::constant(Duration::ZERO),
            retry_after_cap: Duration::from_secs(10),
            per_attempt_timeout: Some(Duration::from_millis(100)),
            name: seawall_core::Name::new("retry").unwrap(),
        };
        let now = tokio::time::Instant::now();
        let at = |ms| Some(now + Duration::from_millis(ms));
        // (the call's deadline, the request's) -> (the attempt's, cut as the call's)
        let cases = [
            ((at(50), at(1_000)), (at(50), true)),
            ((at(1_000), at(50)), (at(50), true)),
            ((None, at(50)), (at(50), true)),
            ((at(50), None), (at(50), true)),
            ((at(1_000), at(500)), (at(100), false)),
            ((None, None), (at(100), false)),
        ];
        for ((call, carried), (expected, call_deadline)) in cases {
            let mut request = Carrying(carried);
            let attempt = super::prepare_timed(&settings, false, &mut request, call);
            let case = format!("{call:?}, {carried:?}");
            assert_eq!(attempt.deadline, expected, "{case}");
            assert_eq!(attempt.call_deadline, call_deadline, "{case}");
            assert_eq!(request.0, expected, "the request carries it: {case}");
        }
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "polled after completion")]
    async fn polling_a_finished_call_panics() {
        let mut svc = layer(Duration::ZERO, None).layer(failing(1));
        let mut future = pin!(svc.call(Req));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(1))));
        let _ = future.as_mut().poll(&mut cx);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_answering_at_once_reports_its_attempts() {
        let mut svc = layer(Duration::ZERO, None).layer(failing(1));
        let mut future = pin!(svc.call(Req));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(1))));
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "done", attempt: 2, retryable: false, timer: false }"#
        );
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "polled after completion")]
    async fn a_refused_retry_reports_one_attempt_and_panics_when_polled_again() {
        let mut svc = RetryLayer::builder()
            .max_attempts(1)
            .budget(RetryBudget::unlimited())
            .build()
            .unwrap()
            .layer(failing(1));
        let mut future = pin!(svc.call(Req));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Err(_))));
        assert_eq!(
            debug(&future),
            r#"ResponseFuture { state: "done", attempt: 1, retryable: false, timer: false }"#
        );
        let _ = future.as_mut().poll(&mut cx);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "polled after completion")]
    async fn polling_a_call_finished_first_time_panics() {
        let mut svc = layer(Duration::ZERO, None).layer(failing(0));
        let mut future = pin!(svc.call(Req));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(future.as_mut().poll(&mut cx), Poll::Ready(Ok(0))));
        let _ = future.as_mut().poll(&mut cx);
    }
}
