use super::{
    future::{Permit as _, ResponseFuture},
    gcra::usable_until,
    layer::{RateLimitLayer, Reservation, Shared},
};
use seawall_core::BoxError;
use std::{
    fmt,
    future::Future,
    mem,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
};
use tokio::time::Sleep;
use tower_service::Service;

/// A GCRA rate limit around `S`. Made by [`RateLimitLayer`]; see the [module docs](super).
pub struct RateLimit<S> {
    inner: S,
    shared: Arc<Shared>,
    /// Backpressure mode: the permit reserved by `poll_ready` and, while it is not yet due, the
    /// timer for it.
    reserved: Option<Reserved>,
    /// Backpressure mode: the permit went stale while `inner` got ready (or while the caller held
    /// the ready service), so `inner` is made ready first and kept ready while the next permit
    /// is waited for. Otherwise a layer below that waits too (another rate limiter) could have
    /// gone stale in turn by the time the permit is due again, and so on for ever.
    inner_first: bool,
    /// Backpressure mode, with `inner_first`: `inner` has been polled ready.
    inner_ready: bool,
}

struct Reserved {
    /// `None` once used by `call`, or when no slot was in the clock's range (then `sleep` waits
    /// to look again); refunded if the service drops it unused.
    reservation: Option<Reservation>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The last time a call may use the permit, set once it is due.
    usable_until: Option<u64>,
    /// When the permit falls due.
    due: u64,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            reservation.refund();
        }
    }
}

impl<S> RateLimit<S> {
    /// Wraps `inner` in the rate limit `layer` (the same as `layer.layer(inner)`).
    pub fn new(inner: S, layer: &RateLimitLayer) -> Self {
        RateLimit {
            inner,
            shared: layer.shared(),
            reserved: None,
            inner_first: false,
            inner_ready: false,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn poll_reserve(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if let Some(Reserved {
                usable_until: Some(until),
                ..
            }) = self.reserved
            {
                let now = self.shared.now();
                if now <= until {
                    return Poll::Ready(());
                }
                // Due long ago (ready and not called, or looked at late): the permit can no
                // longer be used within the bound. Give it back; reserve the one due now, at once
                // if no call took a permit since.
                if let Some(reservation) =
                    self.reserved.take().and_then(|mut r| r.reservation.take())
                {
                    self.shared.gcra.refund_at(reservation.grant, now);
                }
                self.inner_first = true;
            }
            let reserved = match &mut self.reserved {
                Some(reserved) => reserved,
                None => {
                    let now = self.shared.now();
                    let reserved = match self.shared.gcra.acquire(now, u64::MAX) {
                        Ok(grant) => Reserved {
                            usable_until: None,
                            due: now + grant.delay,
                            sleep: (grant.delay > 0).then(|| {
                                self.shared.report.delayed(grant.delay);
                                Box::pin(tokio::time::sleep_until(
                                    self.shared.instant(now + grant.delay),
                                ))
                            }),
                            reservation: Some(Reservation {
                                shared: self.shared.clone(),
                                grant,
                            }),
                        },
                        // No slot within the clock's range (only with intervals of centuries):
                        // nothing is reserved; look again once `retry` has passed.
                        Err(retry) => Reserved {
                            reservation: None,
                            usable_until: None,
                            due: u64::MAX,
                            sleep: Some(Box::pin(tokio::time::sleep_until(
                                self.shared.instant(now.saturating_add(retry)),
                            ))),
                        },
                    };
                    self.reserved.insert(reserved)
                }
            };
            if let Some(sleep) = &mut reserved.sleep {
                ready!(sleep.as_mut().poll(cx));
                reserved.sleep = None;
            }
            let Some(reservation) = &reserved.reservation else {
                // The retry is due: look again on the next poll.
                self.reserved = None;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            let interval = self.shared.gcra.interval();
            reserved.usable_until = Some(usable_until(interval, reservation.grant, reserved.due));
        }
    }
}

impl<S, Req> Service<Req> for RateLimit<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.shared.backpressure {
            return self.inner.poll_ready(cx).map_err(Into::into);
        }
        if !self.inner_first {
            // The permit first, so that nothing below is held while it is waited for.
            let reserved = self.poll_reserve(cx);
            if !self.inner_first {
                ready!(reserved);
                return self.inner.poll_ready(cx).map_err(Into::into);
            }
        }
        // A permit went stale: the inner service first, kept ready (a ready service stays ready
        // until called) while the next permit is waited for.
        if !self.inner_ready {
            ready!(self.inner.poll_ready(cx)).map_err(Into::into)?;
            self.inner_ready = true;
        }
        ready!(self.poll_reserve(cx));
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        (self.inner_first, self.inner_ready) = (false, false);
        let mut max_wait = self.shared.max_wait;
        let mut late = false;
        if let Some(mut reserved) = self.reserved.take() {
            if let Some(until) = reserved.usable_until {
                let reservation = reserved.reservation.take();
                if self.shared.now() <= until {
                    return ResponseFuture::running(self.inner.call(request));
                }
                // Called after the reserved permit's span: going now could put this call next to
                // the ones admitted since. Give the permit back and take the one due now, waiting
                // for it if need be: this call was made ready.
                if let Some(reservation) = reservation {
                    self.shared
                        .gcra
                        .refund_at(reservation.grant, self.shared.now());
                }
                max_wait = u64::MAX;
                late = true;
            }
            // Called before the reserved permit was due: dropping `reserved` gives it back, and
            // the call is decided afresh.
        }
        let now = self.shared.now();
        match self.shared.gcra.acquire(now, max_wait) {
            Ok(grant) if grant.delay == 0 => ResponseFuture::running(self.inner.call(request)),
            Ok(grant) => {
                self.shared.report.delayed(grant.delay);
                let service = if late {
                    // Ready after its permit's span: it waits once more, with the service it
                    // polled ready, so it cannot miss the next permit too.
                    let clone = self.inner.clone();
                    mem::replace(&mut self.inner, clone)
                } else {
                    unpolled(&mut self.inner)
                };
                ResponseFuture::waiting(
                    now + grant.delay,
                    now.saturating_add(max_wait),
                    service,
                    late,
                    request,
                    Box::new(Reservation {
                        shared: self.shared.clone(),
                        grant,
                    }),
                )
            }
            Err(retry) => {
                drop_readiness(&mut self.inner);
                ResponseFuture::limited(self.shared.report.limited(retry))
            }
        }
    }
}

/// A call rejected with [`Limited`](super::Limited) is not made, yet `inner` was polled ready for
/// it, and its readiness may hold something for the call (a permit of a limit below, a place in
/// a `Buffer`) that only a call or a drop gives back. Kept by a service that gets no call for a
/// while (a `Buffer`'s worker keeps one for good), it would hold up whoever needs it, such as a
/// retry's next attempt. So `inner` is replaced with a clone of it, which holds nothing.
///
/// Unlike the bulkhead's, the limiters' rejections are decided in `call`, after `poll_ready`
/// polled `inner`, so every one pays this clone (one allocation for a boxed service). The plain
/// limiter could look at its budget in `poll_ready` without reserving it, but only with the
/// clock: a second clock read on every admitted call, which measured +25–28 ns on one that then
/// cost about 40 ns (`benches/bulkhead.rs`, in an earlier setup), to save the clone on a rejection that allocates its
/// [`Limited`](super::Limited) anyway. The keyed limiter knows the key only from the request.
#[cold]
#[inline(never)]
pub(super) fn drop_readiness<S: Clone>(inner: &mut S) {
    *inner = inner.clone();
}

/// A clone of `inner` for a call that waits for its permit, polled ready only once the permit is
/// due (see [`ResponseFuture`]). `inner`, polled ready for the call, is replaced with a clone too,
/// which gives back what its readiness holds (a permit of a limit below, a place in a `Buffer`)
/// rather than keeping it from calls that could run while this one sleeps.
#[cold]
#[inline(never)]
pub(super) fn unpolled<S: Clone>(inner: &mut S) -> S {
    drop_readiness(inner);
    inner.clone()
}

impl<S: Clone> Clone for RateLimit<S> {
    /// A clone shares the budget but not this service's reserved permit.
    fn clone(&self) -> Self {
        RateLimit {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            reserved: None,
            inner_first: false,
            inner_ready: false,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.report.name)
            .field("reserved", &self.reserved.is_some())
            .finish()
    }
}
