use crate::TimeoutEvent;
use pin_project_lite::pin_project;
use seawall_core::{deadline::Elapsed, metrics, BoxError, Listeners, Name};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};
use tokio::time::{sleep_until, Instant, Sleep};

pin_project! {
    /// The response future of [`Timeout`](crate::Timeout).
    ///
    /// An answer ready on the first poll wins, whenever that poll happens (even after the
    /// deadline: a caller that polls late), and costs no clock read and no timer. Otherwise
    /// the timer is armed for the deadline computed when the call was made (or the call fails at
    /// once if that deadline was reached when the call was made, unless the cut is left to a
    /// layer further out, below), and an answer on a later poll
    /// is checked against the clock: one that comes at the deadline is in time, one that comes
    /// after it is not returned, even before the timer's next tick. When the deadline passes the
    /// inner future is dropped at once and the call fails with [`Elapsed`]. A call whose deadline
    /// had already passed when it was made has no inner future (the inner service was not
    /// called) and fails with [`Elapsed`] on its first poll.
    ///
    /// A layer that enforces a deadline the request brings (the default) times a call at it when
    /// it is earlier than its own and cuts the call there as at its own deadline: it fails with
    /// [`Elapsed`] and reports it, under its own name. A timeout further out whose deadline it was
    /// then finds that `Elapsed` after its deadline and counts the call too (see
    /// [`enforce_outer_deadline`](crate::TimeoutConfigBuilder::enforce_outer_deadline)).
    ///
    /// A layer that leaves the call's deadline to a layer further out (a per-try timeout) times a
    /// call whose deadline is at most a millisecond (a tick of tokio's timer) after its own at
    /// that deadline, so both timers fire on one tick: the call may run up to a millisecond past
    /// the layer's timeout. Given a call's deadline at or before the one it times the call at, it
    /// cuts the call one poll late: it drops the inner future, wakes the task and stays pending,
    /// so the layer further out, whose timer has fired too and which polls this future before its
    /// timer, cancels the call and reports it in the common case. Only if nothing does (no such
    /// layer, or, once, a task out of tokio's cooperative budget or timers fired in separate
    /// batches: see
    /// [`enforce_outer_deadline`](crate::TimeoutConfigBuilder::enforce_outer_deadline)) is the
    /// call failed with [`Elapsed`], and reported, on the next poll. An answer that comes after
    /// the deadline but before this layer's timer has fired is dropped, and the call waits for
    /// that timer as if still pending before it is cut so: the layer further out, whose timer is
    /// due on the same tick or an earlier one, may not have fired yet either. So does a call
    /// whose deadline was reached when it was made (a zero timeout, called after the request's
    /// deadline by a queue between the layers): its timer is armed all the same.
    #[project = ResponseFutureProj]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Inner<F>,
        #[pin]
        sleep: Option<Sleep>,
        started: Instant,
        deadline: Instant,
        name: Name,
        // `None` unless a listener is registered, so the common case copies no reference count.
        listeners: Option<Listeners<TimeoutEvent>>,
        // Whether the call's deadline, left to a layer further out, is due with this one's or
        // before it: a cut is then held for one poll (see `cut`).
        outer_first: bool,
    }
}

pin_project! {
    /// Where a call is: waiting for the inner future, never made, or over.
    #[project = InnerProj]
    enum Inner<F> {
        /// The inner service was called; its future, until it answers or the deadline passes.
        Called { #[pin] future: F },
        /// The deadline had passed when the call was made: the inner service was not called.
        NotCalled,
        /// An answer came after the deadline, before this layer's timer fired, and was dropped;
        /// the call is cut when the timer fires, as if the inner future were still pending.
        Late,
        /// The deadline passed and the inner future was dropped; the call fails with `Elapsed`
        /// on its next poll, unless a layer further out cancels it first.
        Cut,
        /// The call has answered, or failed with `Elapsed`; `called` says whether the inner
        /// service was called.
        Done { called: bool },
    }
}

impl<F> ResponseFuture<F> {
    /// A call made at `started`, with the inner service's future, or `None` when the inner
    /// service was not called (its `deadline` had already passed): that call fails with
    /// [`Elapsed`] on its first poll. `outer_first` says that a layer further out enforces a
    /// deadline due no later than `deadline`, and should be left to cut the call when both have
    /// passed.
    #[inline]
    pub(crate) fn new(
        inner: Option<F>,
        started: Instant,
        deadline: Instant,
        name: Name,
        listeners: Option<Listeners<TimeoutEvent>>,
        outer_first: bool,
    ) -> Self {
        // Only a layer that enforces the request's deadline skips the call, and it cuts the call
        // itself: nothing further out is left to.
        debug_assert!(inner.is_some() || !outer_first);
        ResponseFuture {
            inner: match inner {
                Some(future) => Inner::Called { future },
                None => Inner::NotCalled,
            },
            sleep: None,
            started,
            deadline,
            name,
            listeners,
            outer_first,
        }
    }

    /// The instant this call is cut if it has not answered: it fails with [`Elapsed`] then, or,
    /// for a layer that leaves an earlier (or at most a tick later) deadline to a layer further
    /// out, a poll later unless that layer cancels it first.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let polled = match this.inner.as_mut().project() {
            InnerProj::Called { future } => future.poll(cx),
            // A late answer was dropped: wait for this layer's timer (see `poll_late`).
            InnerProj::Late => Poll::Pending,
            InnerProj::NotCalled | InnerProj::Cut => return elapsed(this),
            InnerProj::Done { .. } => panic!("timeout ResponseFuture polled after completion"),
        };
        match polled {
            // Ready on the first poll: in time, without a look at the clock or a timer.
            Poll::Ready(result) if this.sleep.is_none() => {
                this.inner.set(Inner::Done { called: true });
                Poll::Ready(result.map_err(Into::into))
            }
            polled => poll_late(this, polled, cx),
        }
    }
}

/// Every poll but a first one that found the answer ready: out of line, so that one stays short.
#[inline(never)]
fn poll_late<F, T, E>(
    mut this: ResponseFutureProj<'_, F>,
    polled: Poll<Result<T, E>>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    let wait = match polled {
        // An answer on a later poll: the clock decides, since the timer rounds the deadline up
        // to its next tick and an answer can come after the deadline and before the timer fires.
        // An answer at the deadline itself is in time.
        Poll::Ready(result) => {
            if Instant::now() <= *this.deadline {
                this.inner.set(Inner::Done { called: true });
                return Poll::Ready(result.map_err(Into::into));
            }
            if *this.outer_first {
                // The layer further out cuts the call when its timer fires, on this one's tick
                // or an earlier one, and that may not have happened yet: the answer is dropped
                // and the call waits for this layer's timer, as if still pending.
                this.inner.set(Inner::Late);
            }
            *this.outer_first
        }
        // Pending: arm the timer on the first poll. A deadline reached when the call was made (a
        // zero timeout, an outer deadline of that very instant) skips this and fires now, unless
        // the cut is left to a layer further out: its timer is due on the tick this deadline
        // rounds up to or an earlier one, which may not have come yet (a call queued past the
        // request's deadline), and a timer for a tick already processed fires at once.
        Poll::Pending => {
            this.sleep.is_some() || *this.deadline > *this.started || *this.outer_first
        }
    };
    if wait {
        if this.sleep.is_none() {
            this.sleep.set(Some(sleep_until(*this.deadline)));
        }
        if let Some(sleep) = this.sleep.as_mut().as_pin_mut() {
            ready!(sleep.poll(cx));
        }
    }
    cut(this, cx)
}

/// Fails the call with [`Elapsed`], or, when the call's deadline is a layer's further out and due
/// no later than this one's tick, drops the inner future and stays pending for one poll.
///
/// That layer's timer is due on the same tick as this one's or an earlier one, and it polls this
/// future before its timer, in the same pass: it usually cancels the call, and the layers in
/// between (a breaker, outlier detection, a retry) see no `Elapsed` to count against the
/// endpoint. A late answer comes here only once this layer's timer has fired too (see
/// `poll_late`): before that, the layer further out may not have fired. The task is woken so
/// that, with no such layer, the call fails on the next poll; so
/// it does when that layer's timer was seen pending (a task out of tokio's cooperative budget,
/// timers fired in separate batches by the multi-thread runtime).
#[cold]
#[inline(never)]
fn cut<F, T>(
    mut this: ResponseFutureProj<'_, F>,
    cx: &mut Context<'_>,
) -> Poll<Result<T, BoxError>> {
    if !*this.outer_first {
        return elapsed(this);
    }
    this.inner.set(Inner::Cut);
    cx.waker().wake_by_ref();
    Poll::Pending
}

/// Fails the call with [`Elapsed`], and reports it.
#[cold]
#[inline(never)]
fn elapsed<F, T>(mut this: ResponseFutureProj<'_, F>) -> Poll<Result<T, BoxError>> {
    // Cancel the call now rather than whenever the caller drops this future.
    let called = !matches!(*this.inner, Inner::NotCalled);
    this.inner.set(Inner::Done { called });
    let budget = this.deadline.saturating_duration_since(*this.started);
    let name = *this.name;
    metrics::counter(metrics::TIMEOUT_ELAPSED, &name).increment(1);
    tracing::debug!(name = %name, ?budget, "seawall timeout elapsed");
    if let Some(listeners) = this.listeners {
        listeners.emit(&name, &TimeoutEvent::Elapsed { budget });
    }
    Poll::Ready(Err(Box::new(Elapsed::new())))
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("deadline", &self.deadline)
            .field("armed", &self.sleep.is_some())
            .field(
                "called",
                &!matches!(self.inner, Inner::NotCalled | Inner::Done { called: false }),
            )
            .field("cut", &matches!(self.inner, Inner::Late | Inner::Cut))
            .field("done", &matches!(self.inner, Inner::Done { .. }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{future::pending, pin::pin, task::Waker, time::Duration};

    /// Pending on its first poll, `value` on the next.
    fn pending_once<T>(value: T) -> impl Future<Output = Result<T, BoxError>> {
        let mut first = true;
        let mut value = Some(value);
        std::future::poll_fn(move |_| {
            if std::mem::take(&mut first) {
                return Poll::Pending;
            }
            Poll::Ready(Ok(value.take().expect("polled after completion")))
        })
    }

    fn future<F>(inner: F, now: Instant) -> ResponseFuture<F> {
        let deadline = now + Duration::from_secs(1);
        ResponseFuture::new(
            Some(inner),
            now,
            deadline,
            Name::default_for("timeout"),
            None,
            false,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn ready_inner_never_arms_the_timer() {
        let now = Instant::now();
        let inner = std::future::ready(Ok::<_, BoxError>(7));
        let mut fut = pin!(future(inner, now));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(7))));
        assert!(
            fut.sleep.is_none(),
            "timer must not be armed for a ready call"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_not_made_says_so_before_and_after_it_fails() {
        let now = Instant::now();
        let mut fut = pin!(
            ResponseFuture::<std::future::Ready<Result<(), BoxError>>>::new(
                None,
                now,
                now - Duration::from_millis(1),
                Name::default_for("timeout"),
                None,
                false,
            )
        );
        let debug = |fut: &ResponseFuture<_>| format!("{fut:?}");
        assert!(debug(&fut).ends_with("armed: false, called: false, cut: false, done: false }"));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Err(e)) if e.is::<Elapsed>()));
        assert!(debug(&fut).ends_with("armed: false, called: false, cut: false, done: true }"));
    }

    #[tokio::test(start_paused = true)]
    async fn pending_inner_arms_the_timer_once() {
        let now = Instant::now();
        let inner = pending::<Result<(), BoxError>>();
        let mut fut = pin!(future(inner, now));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.sleep.is_some());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(Duration::from_secs(1)).await;
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.is::<Elapsed>()),
            other => panic!("expected Elapsed, got {other:?}"),
        }
        assert!(
            matches!(fut.inner, Inner::Done { called: true }),
            "inner future is dropped when the timeout fires"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_past_deadline_fires_on_the_first_pending_poll_without_a_timer() {
        let now = Instant::now();
        let inner = pending::<Result<(), BoxError>>();
        let mut fut = pin!(ResponseFuture::new(
            Some(inner),
            now,
            now,
            Name::default_for("timeout"),
            None,
            false,
        ));
        let mut cx = Context::from_waker(Waker::noop());
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.is::<Elapsed>()),
            other => panic!("expected Elapsed, got {other:?}"),
        }
        assert!(fut.sleep.is_none(), "no timer for a deadline already past");
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_after_the_deadline_on_a_later_poll_is_elapsed() {
        let now = Instant::now();
        let mut fut = pin!(future(pending_once(()), now));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        // Past the deadline, before the timer's next tick.
        tokio::time::advance(Duration::from_millis(1000) + Duration::from_micros(1)).await;
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(Err(e)) => assert!(e.is::<Elapsed>()),
            other => panic!("expected Elapsed, got {other:?}"),
        }
        assert!(
            matches!(fut.inner, Inner::Done { called: true }),
            "the late answer is dropped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_before_the_deadline_on_a_later_poll_wins() {
        let now = Instant::now();
        let mut fut = pin!(future(pending_once(5), now));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        tokio::time::advance(Duration::from_millis(999) + Duration::from_micros(999)).await;
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(5))));
    }
}
