use super::{copy_request, layer::Shared, misses};
use crate::{
    budget::Withdrawal,
    policy::{CloneRequest, Policy},
    timer::Timer,
};
use pin_project_lite::pin_project;
use seawall_core::{
    deadline::{deadline_after, RequestDeadline},
    error::{is_not_sent, not_sent, SentEarlier},
    BoxError, Outcome,
};
use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower_service::Service;

pin_project! {
    /// The response future of [`Hedge`](super::Hedge).
    ///
    /// Polls the original call first; only when it is still pending is the hedge timer armed. When
    /// the timer fires it takes a hedge from the budget, polls the inner service ready and sends a
    /// copy; a copy whose error proves it was never sent (a bulkhead below was full) gives its
    /// hedge back. The first acceptable answer wins and every other call still running is dropped
    /// (cancelled) at once. A copy that fails while another copy is still running and another hedge
    /// may still be sent has the policy read the pause its server asked for: "do not retry" sends
    /// no further hedge, a pause holds the next one back. It allocates itself only when it sends a
    /// hedge, but the copy of the request kept for that hedge is made in `call`, for every
    /// hedgeable call once a delay is known, a hedge sent or not: it allocates whenever the
    /// request's copy does (an `http::Request`'s headers and extensions). With a percentile delay,
    /// a call that fails (a copy that may have been sent failed) is recorded as having taken as
    /// long as it ran until its last copy that may have been sent answered, and one dropped
    /// unanswered as long as it ran (each a lower bound on its latency), when that is longer than
    /// the successes' percentile.
    pub struct ResponseFuture<S, Req, P, K>
    where
        S: Service<Req>,
    {
        #[pin]
        primary: Option<S::Future>,
        #[pin]
        timer: Timer,
        hedges: Vec<InFlight<S::Future>>,
        service: S,
        template: Option<Req>,
        // The call's deadline, read from the request at the call: the copy kept in `template`
        // may not carry it.
        deadline: Option<Instant>,
        delay: Duration,
        sent: u32,
        scheduled: bool,
        due: bool,
        // The budget's hedge for the next copy, taken before the service is polled ready and
        // given back if the copy is never sent.
        withdrawn: Option<Withdrawal>,
        // Whether the service has been polled ready for the next copy and not called since: its
        // readiness may hold a reservation (a permit, or a queued claim on one) for that copy.
        readying: bool,
        // Whether the future has been polled: a call never polled never ran, however long the
        // future was kept before it was dropped.
        polled: bool,
        started: Option<Instant>,
        // What the first hedge's delay counts from: the call (`started`) with a percentile delay,
        // the first poll with a fixed one.
        counted_from: Option<Instant>,
        // The answer to return if no copy wins (see `keep`): the last of the answers that tell
        // the caller most, a failure of a copy that was sent before one never sent, and either
        // before an ignored answer.
        failure: Option<Kept<S::Response>>,
        shared: Arc<Shared<P, K>>,
    }

    impl<S, Req, P, K> PinnedDrop for ResponseFuture<S, Req, P, K>
    where
        S: Service<Req>,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // Dropped unanswered (a timeout above gave up on it): the call took at least this
            // long. A finished call has no call left running; one never polled never ran.
            if let (Some(started), true) = (*this.started, *this.polled) {
                if this.primary.is_some() || !this.hedges.is_empty() {
                    this.shared.record_unanswered(started, Instant::now());
                }
            }
        }
    }
}

struct InFlight<F> {
    future: Pin<Box<F>>,
    started: Instant,
    hedge: u32,
    paid: Paid,
}

/// A copy's hedge, held while the copy runs: spent when it ends, however it ends (it answered, or
/// it was cancelled because another copy won or the call was dropped), unless its answer proves
/// it was never sent (a bulkhead below turned it away), when it is [given back](Paid::refund).
struct Paid(Option<Withdrawal>);

impl Paid {
    /// The copy never reached the service: its hedge goes back to the budget.
    fn refund(mut self) {
        drop(self.0.take());
    }
}

impl Drop for Paid {
    fn drop(&mut self) {
        if let Some(withdrawal) = self.0.take() {
            withdrawal.spend();
        }
    }
}

/// Whether `result` is an error that proves its request was never sent
/// ([`seawall_core::error::not_sent`]). An answer costs one comparison: only an error's chain is
/// searched.
#[inline]
fn unsent<Res>(result: &Result<Res, BoxError>) -> bool {
    matches!(result, Err(error) if is_not_sent(&**error))
}

impl<S, Req, P, K> ResponseFuture<S, Req, P, K>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        future: S::Future,
        service: S,
        template: Option<Req>,
        deadline: Option<Instant>,
        delay: Duration,
        started: Option<Instant>,
        shared: Arc<Shared<P, K>>,
    ) -> Self {
        ResponseFuture {
            primary: Some(future),
            timer: Timer::Idle,
            hedges: Vec::new(),
            service,
            template,
            deadline,
            delay,
            sent: 0,
            scheduled: false,
            due: false,
            withdrawn: None,
            readying: false,
            polled: false,
            started,
            counted_from: None,
            failure: None,
            shared,
        }
    }
}

/// Classifies a finished copy by its own duration (from `sent`). Only a success is acceptable: a
/// failure or an ignored answer (a bulkhead's rejection of a copy, an open breaker's) does not
/// end the call while another copy still runs. The first acceptable answer ends the call, and the
/// call's latency (from `call_started`, when latencies are recorded) goes into the histogram.
/// Recording the winning copy's own latency instead would replace every slow call a hedge
/// rescued by a fast sample and drag the percentile, and with it the delay, below the service's
/// real one.
///
/// The outcome goes into a token-bucket budget unless `counted` is false, for a copy (the
/// original included) that was never sent: a copy a bulkhead below turned away says nothing of
/// the dependency, and would drain the bucket, and so stop hedging, for as long as the bulkhead
/// is full (gRPC likewise leaves calls that never reached the server out of its retry
/// throttling, gRFC A6).
fn classify<P, K, Req, Res>(
    shared: &Shared<P, K>,
    result: &Result<Res, BoxError>,
    sent: Option<Instant>,
    call_started: Option<Instant>,
    counted: bool,
) -> Outcome
where
    P: Policy<Req, Res>,
{
    let now = (sent.is_some() || call_started.is_some()).then(Instant::now);
    let since = |from: Option<Instant>| match (from, now) {
        (Some(from), Some(now)) => now.saturating_duration_since(from),
        _ => Duration::ZERO,
    };
    let outcome = shared.policy.classify(result.as_ref(), since(sent));
    if counted {
        shared.budget.record(outcome);
    }
    // A success says how long the dependency takes. A failure bounds it from below, and only
    // once the call has ended with it (`Shared::record_unanswered`); an ignored error (an open
    // breaker's rejection) comes back at once, and would drag the percentile delay down.
    if let (Outcome::Success, Some(_), Some(now)) = (outcome, call_started, now) {
        shared.record_latency(since(call_started), now);
    }
    outcome
}

/// An answer that did not win, kept by [`keep`] to return if no copy wins.
struct Kept<Res> {
    result: Result<Res, BoxError>,
    // The answer's [`rank`], as it came (before any `SentEarlier` wrapping).
    rank: Rank,
    // Whether any answer so far came from a copy that may have been sent.
    any_sent: bool,
    // When the last of those came, if the call's latency is recorded: the call waited on the
    // dependency until then, and only on copies never sent after.
    sent_ended: Option<Instant>,
}

/// How much an answer that did not win tells the caller: a failure more than an ignored answer,
/// and of each, one from a copy that may have been sent more than one whose error proves it was
/// never sent. Ordered: `(failure, sent)`.
type Rank = (bool, bool);

fn rank(outcome: Outcome, sent: bool) -> Rank {
    (outcome == Outcome::Failure, sent)
}

/// Keeps `result`, an answer that did not win, as the one to return if no copy wins, when it
/// [ranks](rank) at least as high as the answer kept: a failure of a copy that was sent (the
/// server's 503) is kept over a failure that proves its copy was never sent (a bulkhead's or rate
/// limiter's rejection of a hedge), and either over an ignored answer (of which, too, a sent
/// copy's is kept over one never sent); among answers of one rank the last is kept. A rejection
/// of a copy never sent says nothing of the dependency: ranked below the server's failure, it
/// leaves the caller and a retry above to see the server's error.
///
/// A copy that may have been sent makes the call one that was: an error kept that proves only its
/// own copy was never sent (every copy that was sent was ignored) is then wrapped in a
/// [`SentEarlier`], so that it is not taken for the call's.
///
/// `sent` is whether the answer's copy may have been sent (`!unsent(&result)`, which the caller
/// has found already); `timed` whether the call's latency is recorded, when the time a sent
/// copy's answer came is kept too. Out of line: a call whose first answer wins never comes here,
/// and its poll stays as small as before answers were ranked.
#[cold]
#[inline(never)]
fn keep<Res>(
    kept: &mut Option<Kept<Res>>,
    result: Result<Res, BoxError>,
    outcome: Outcome,
    sent: bool,
    timed: bool,
) {
    let rank = rank(outcome, sent);
    let any_sent = rank.1 || kept.as_ref().is_some_and(|kept| kept.any_sent);
    let sent_ended = (sent && timed)
        .then(Instant::now)
        .or_else(|| kept.as_ref().and_then(|kept| kept.sent_ended));
    match kept {
        Some(kept) if rank < kept.rank => {
            kept.any_sent = any_sent;
            kept.sent_ended = sent_ended;
        }
        _ => {
            *kept = Some(Kept {
                result,
                rank,
                any_sent,
                sent_ended,
            })
        }
    }
    if let Some(kept_now) = kept.take() {
        let result = match kept_now.result {
            // A copy that may have been sent has nothing to wrap (`not_sent` finds nothing in its
            // error): only a never-sent copy's error is searched, and found wrapped already after
            // the first time.
            Err(error) if kept_now.any_sent && !kept_now.rank.1 && not_sent(&*error).is_some() => {
                Err(Box::new(SentEarlier::new(error)) as BoxError)
            }
            result => result,
        };
        *kept = Some(Kept { result, ..kept_now });
    }
}

/// The pause the server asked for with a failed answer: [`Policy::retry_after`] of a response,
/// [`Policy::retry_after_error`] of an error (gRPC's retry pushback). Out of line: asked only when
/// a copy failed while another copy is still running and another hedge may still be sent, so a
/// call whose first answer wins, or whose last running copy fails, never comes here.
#[cold]
#[inline(never)]
fn asked_pause<P, Req, Res>(policy: &P, result: &Result<Res, BoxError>) -> Option<Duration>
where
    P: Policy<Req, Res>,
{
    match result {
        Ok(response) => policy.retry_after(response),
        Err(error) => policy.retry_after_error(error),
    }
}

/// Gives up a hedge that is due but not sent (the call has its answer, the deadline passed, the
/// service failed): the hedge goes back to the budget, and whatever the service's readiness holds
/// for it (a queued claim on a permit, which may already have been granted) is released by
/// replacing the service with a clone, which reserves nothing, now rather than when the caller
/// drops the future. Nothing to do when no hedge is pending.
fn abandon_hedge<S: Clone>(
    service: &mut S,
    withdrawn: &mut Option<Withdrawal>,
    readying: &mut bool,
) {
    *withdrawn = None;
    if mem::take(readying) {
        *service = service.clone();
    }
}

impl<S, Req, P, K> Future for ResponseFuture<S, Req, P, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    P: Policy<Req, S::Response>,
    K: CloneRequest<Req>,
    S: Clone,
    Req: RequestDeadline,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        *this.polled = true;
        loop {
            // The longest pause the copies that failed in this pass asked for.
            let mut pause = None;
            if let Some(primary) = this.primary.as_mut().as_pin_mut() {
                if let Poll::Ready(result) = primary.poll(cx) {
                    this.primary.set(None);
                    let result = result.map_err(Into::into);
                    // Counted in a token bucket only when it may have been sent, as a hedge is.
                    let sent = !unsent(&result);
                    let outcome = classify(shared, &result, *this.started, *this.started, sent);
                    if outcome == Outcome::Success {
                        // Losers are cancelled now, not when the caller drops this future.
                        this.hedges.clear();
                        abandon_hedge(this.service, this.withdrawn, this.readying);
                        return Poll::Ready(result);
                    }
                    // Asked only while a hedge may follow and a copy runs on; otherwise the
                    // call ends (or sends nothing more) and the answer would go unused.
                    if outcome == Outcome::Failure
                        && this.template.is_some()
                        && !this.hedges.is_empty()
                    {
                        pause = pause.max(asked_pause(&shared.policy, &result));
                    }
                    keep(
                        this.failure,
                        result,
                        outcome,
                        sent,
                        shared.records_latency(),
                    );
                }
            }

            let mut i = 0;
            while i < this.hedges.len() {
                let Poll::Ready(result) = this.hedges[i].future.as_mut().poll(cx) else {
                    i += 1;
                    continue;
                };
                let InFlight {
                    future,
                    started,
                    hedge,
                    paid,
                } = this.hedges.swap_remove(i);
                drop(future);
                let result = result.map_err(Into::into);
                // A copy turned away before it was sent (a full bulkhead below) gives its hedge
                // back; any other answer means it was sent, and its hedge stays spent.
                let sent = !unsent(&result);
                if sent {
                    drop(paid);
                } else {
                    paid.refund();
                }
                let outcome = classify(shared, &result, Some(started), *this.started, sent);
                if outcome == Outcome::Success {
                    this.primary.set(None);
                    this.hedges.clear();
                    abandon_hedge(this.service, this.withdrawn, this.readying);
                    shared.on_won(hedge);
                    return Poll::Ready(result);
                }
                if outcome == Outcome::Failure
                    && this.template.is_some()
                    && (this.primary.is_some() || !this.hedges.is_empty())
                {
                    pause = pause.max(asked_pause(&shared.policy, &result));
                }
                keep(
                    this.failure,
                    result,
                    outcome,
                    sent,
                    shared.records_latency(),
                );
            }

            if this.primary.is_none() && this.hedges.is_empty() {
                // Every call sent has failed: hedging is for slowness, retries are for failures.
                abandon_hedge(this.service, this.withdrawn, this.readying);
                let Kept {
                    result,
                    rank,
                    sent_ended,
                    ..
                } = this
                    .failure
                    .take()
                    .expect("a finished call left its failure");
                // A slow failure (a gateway's timeout) says the call took at least as long as
                // until its last sent copy answered; an ignored answer says nothing of the
                // dependency, nor does a failure of copies never sent, nor a copy's wait to be
                // turned away after (a bulkhead below that waited for a permit).
                if let ((true, true), Some(started), Some(ended)) =
                    (rank, *this.started, sent_ended)
                {
                    shared.record_unanswered(started, ended);
                }
                return Poll::Ready(result);
            }
            if this.template.is_none() || *this.sent >= shared.max_hedges {
                return Poll::Pending;
            }

            // A copy that failed with "do not retry" from the server stops the hedges not yet
            // sent, as gRFC A6 has it; one that asked for a pause holds the next hedge back until
            // at least then. The pause is only a floor: unlike A6, which sends the next hedge when
            // it ends, the timer only ever moves later, never before the hedge's delay. The copies
            // already out run on.
            if let Some(pause) = pause {
                let now = Instant::now();
                let not_before = deadline_after(now, pause);
                if pause == Duration::MAX
                    || this
                        .deadline
                        .is_some_and(|deadline| misses(deadline, not_before))
                {
                    tracing::debug!(name = %shared.name, ?pause, "seawall hedge: a failed copy's pause leaves no further hedge");
                    *this.template = None;
                    abandon_hedge(this.service, this.withdrawn, this.readying);
                    continue;
                }
                if *this.due {
                    // Due and waiting for the service to be ready: given up, and due again then.
                    if not_before > now {
                        abandon_hedge(this.service, this.withdrawn, this.readying);
                        *this.due = false;
                        this.timer.as_mut().arm(not_before);
                    }
                } else if this.timer.deadline().is_some_and(|due| due < not_before) {
                    this.timer.as_mut().arm(not_before);
                }
            }

            if !*this.due {
                if !*this.scheduled {
                    // A percentile delay counts from the call, as the latencies it comes from
                    // do; a fixed one from this first poll, whatever the policy, so that a call
                    // answered at once reads no clock for it.
                    let from = match *this.started {
                        Some(call) if shared.records_latency() => call,
                        _ => Instant::now(),
                    };
                    let due = deadline_after(from, *this.delay);
                    *this.scheduled = true;
                    // A first poll so late that the hedge could not start before the deadline:
                    // drop the copy now rather than keep it, and a timer, for a hedge never sent.
                    // The original call, polled above, is all that runs.
                    if this.deadline.is_some_and(|deadline| misses(deadline, due)) {
                        *this.template = None;
                        return Poll::Pending;
                    }
                    *this.counted_from = Some(from);
                    this.timer.as_mut().arm(due);
                }
                ready!(this.timer.as_mut().poll_elapsed(cx));
                *this.due = true;
            }

            // No copy starts once the call's deadline has passed: it would have no time at all.
            let deadline = *this.deadline;
            let past_deadline = || deadline.is_some_and(|deadline| Instant::now() >= deadline);
            if past_deadline() {
                *this.template = None;
                abandon_hedge(this.service, this.withdrawn, this.readying);
                continue;
            }

            // Take the budget before polling the service ready: a service made ready and then left
            // unused would hold its reservation (a `Buffer` slot, a permit) until the call ends,
            // which deadlocks when the call itself needs it (a retry underneath).
            if this.withdrawn.is_none() {
                let Some(withdrawal) = shared.budget.withdraw() else {
                    shared.on_budget_exhausted();
                    *this.template = None;
                    continue;
                };
                *this.withdrawn = Some(withdrawal);
            }
            *this.readying = true;
            let Poll::Ready(ready) = this.service.poll_ready(cx) else {
                // Waiting past the call's deadline is pointless: be woken then to give the hedge
                // up (the timer is free: the hedge is due).
                if let Some(deadline) = deadline {
                    this.timer.as_mut().arm(deadline);
                    if this.timer.as_mut().poll_elapsed(cx).is_ready() {
                        *this.template = None;
                        abandon_hedge(this.service, this.withdrawn, this.readying);
                        continue;
                    }
                }
                return Poll::Pending;
            };
            match ready {
                Ok(()) => {}
                Err(error) => {
                    // The original call may still answer; stop hedging rather than fail.
                    let error: BoxError = error.into();
                    tracing::debug!(name = %shared.name, %error, "seawall hedge: inner service failed readiness");
                    *this.template = None;
                    abandon_hedge(this.service, this.withdrawn, this.readying);
                    continue;
                }
            }
            if past_deadline() {
                // It passed while the service got ready: hand back what readiness reserved rather
                // than hold it while the calls already out run.
                *this.template = None;
                abandon_hedge(this.service, this.withdrawn, this.readying);
                continue;
            }

            let hedge = *this.sent + 1;
            let now = Instant::now();
            let next_due = deadline_after(now, *this.delay);
            // The request is kept for the next hedge only when that one could start before the
            // deadline; otherwise this hedge is the last, and sends it rather than a copy.
            let last = hedge >= shared.max_hedges
                || deadline.is_some_and(|deadline| misses(deadline, next_due));
            let copy = if last {
                None
            } else {
                this.template
                    .as_ref()
                    .and_then(|template| copy_request(&shared.cloner, template, deadline))
            };
            let request = match copy {
                Some(copy) => copy,
                None => this.template.take().expect("checked above"),
            };
            let future = this.service.call(request);
            *this.readying = false;
            // The hedge is spent when the copy ends, unless it was never sent (see `Paid`).
            let paid = Paid(this.withdrawn.take());
            this.hedges.push(InFlight {
                future: Box::pin(future),
                started: now,
                hedge,
                paid,
            });
            *this.sent = hedge;
            *this.due = false;
            if this.template.is_some() {
                this.timer.as_mut().arm(next_due);
            }
            let after = this
                .counted_from
                .map_or(Duration::ZERO, |from| now.saturating_duration_since(from));
            shared.on_sent(hedge, after);
        }
    }
}

impl<S, Req, P, K> fmt::Debug for ResponseFuture<S, Req, P, K>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("primary_running", &self.primary.is_some())
            .field("hedges_running", &self.hedges.len())
            .field("hedges_sent", &self.sent)
            .field("delay", &self.delay)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::error::{is, NotSent};

    /// Answers that did not win, in order: `"unsent"` stands for a rejection of a copy never
    /// sent; any other text, for an error of a copy that was sent.
    type Answers = &'static [(&'static str, Outcome)];

    /// `(the kept answer, whether it is wrapped in a SentEarlier)` after `answers`.
    fn kept_after(answers: Answers) -> (String, bool) {
        let mut kept = None;
        for &(answer, outcome) in answers {
            let error: BoxError = match answer {
                "unsent" => Box::new(NotSent::new()),
                sent => sent.into(),
            };
            keep(
                &mut kept,
                Err::<(), _>(error),
                outcome,
                answer != "unsent",
                false,
            );
        }
        let error = kept.expect("an answer was kept").result.unwrap_err();
        let wrapped = is::<SentEarlier>(&*error);
        let shown = match seawall_core::error::find::<NotSent>(&*error) {
            Some(_) => "unsent".to_owned(),
            None => error.to_string(),
        };
        (shown, wrapped)
    }

    #[test]
    fn a_sent_failure_outranks_a_later_failure_never_sent() {
        use Outcome::*;
        let cases: &[(Answers, (&str, bool))] = &[
            // A later answer of lower rank never replaces the one kept.
            (&[("503", Failure), ("unsent", Failure)], ("503", false)),
            (&[("503", Failure), ("ignored", Ignored)], ("503", false)),
            (
                &[("unsent", Failure), ("ignored", Ignored)],
                ("unsent", true),
            ),
            (
                &[("ignored", Ignored), ("unsent", Ignored)],
                ("ignored", false),
            ),
            // One of equal or higher rank does.
            (&[("unsent", Failure), ("503", Failure)], ("503", false)),
            (&[("502", Failure), ("503", Failure)], ("503", false)),
            (
                &[("unsent", Failure), ("unsent", Failure)],
                ("unsent", false),
            ),
            (
                &[("ignored", Ignored), ("unsent", Failure)],
                ("unsent", true),
            ),
            (
                &[("unsent", Ignored), ("ignored", Ignored)],
                ("ignored", false),
            ),
            // A failure never sent is wrapped once a copy was sent, however that copy ranks.
            (
                &[
                    ("unsent", Failure),
                    ("ignored", Ignored),
                    ("unsent", Failure),
                ],
                ("unsent", true),
            ),
        ];
        for &(answers, (shown, wrapped)) in cases {
            assert_eq!(
                kept_after(answers),
                (shown.to_owned(), wrapped),
                "{answers:?}"
            );
        }
    }
}
