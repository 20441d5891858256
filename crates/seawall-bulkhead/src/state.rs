//! The state one bulkhead policy shares across its services: the semaphore, the adaptive limit and
//! the metric handles; and [`Permit`], the RAII guard a call holds.

use crate::{
    limit::{Limit, Sample},
    permits::{Expired, Permits, Waiter},
    sync::{AtomicUsize, Ordering},
    BulkheadEvent,
};
use seawall_core::{deadline::deadline_after, metrics, Listeners, Name, Outcome};
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;

pub(crate) struct Metrics {
    pub(crate) in_flight: ::metrics::Gauge,
    pub(crate) rejected: ::metrics::Counter,
    pub(crate) limit: ::metrics::Gauge,
}

pub(crate) struct Shared {
    permits: Permits,
    limit: AtomicUsize,
    pub(crate) max_wait: Duration,
    pub(crate) backpressure: bool,
    /// A call without a permit is rejected at once: `max_wait` is zero, without backpressure.
    pub(crate) fail_fast: bool,
    adaptive: Option<Mutex<Adaptive>>,
    pub(crate) name: Name,
    listeners: Listeners<BulkheadEvent>,
    metrics: Metrics,
}

/// An adaptive limit's algorithm, and the count of the changes it made, behind one lock.
struct Adaptive {
    algorithm: Box<dyn Limit>,
    /// The generation of the last change (0 before any): raised with the limit, under the lock,
    /// so that listeners, who hear of changes after the lock is released, can order them.
    generation: u64,
}

impl Shared {
    pub(crate) fn new(
        limit: usize,
        adaptive: Option<Box<dyn Limit>>,
        max_wait: Duration,
        backpressure: bool,
        name: Name,
        listeners: Listeners<BulkheadEvent>,
    ) -> Arc<Self> {
        let metrics = Metrics {
            in_flight: metrics::gauge(metrics::BULKHEAD_IN_FLIGHT, &name),
            rejected: metrics::counter(metrics::BULKHEAD_REJECTED, &name),
            limit: metrics::gauge(metrics::BULKHEAD_LIMIT, &name),
        };
        // The limit gauge moves by differences, as the in-flight and waiting gauges do, so that
        // bulkheads sharing a name sum their limits, and one that goes takes its limit with it
        // (see the `Drop` below).
        metrics.limit.increment(limit as f64);
        let waiting = metrics::gauge(metrics::BULKHEAD_WAITING, &name);
        Arc::new(Shared {
            // The semaphore counts the permits it hands to waiters in flight as it hands them
            // over; `Permit::assume` counts those taken free.
            permits: Permits::with_gauges(limit, waiting, metrics.in_flight.clone()),
            limit: AtomicUsize::new(limit),
            max_wait,
            backpressure,
            fail_fast: max_wait.is_zero() && !backpressure,
            adaptive: adaptive.map(|algorithm| {
                Mutex::new(Adaptive {
                    algorithm,
                    generation: 0,
                })
            }),
            name,
            listeners,
            metrics,
        })
    }

    #[inline]
    pub(crate) fn is_adaptive(&self) -> bool {
        self.adaptive.is_some()
    }

    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    pub(crate) fn available(&self) -> usize {
        self.permits.available()
    }

    /// Whether [`Permit::try_acquire`] would find a permit now; takes none.
    #[inline]
    pub(crate) fn has_free_permit(&self) -> bool {
        self.permits.has_free()
    }

    /// Permits held (calls running, calls whose inner service is getting ready after they waited,
    /// and permits reserved by ready services). Exact when the bulkhead is quiet; a close
    /// estimate while permits move.
    pub(crate) fn in_flight(&self) -> usize {
        (self.limit() + self.permits.owed()).saturating_sub(self.available())
    }

    /// Calls in the queue: not yet handed a permit.
    pub(crate) fn waiting(&self) -> usize {
        self.permits.waiting()
    }

    #[inline]
    pub(crate) fn reject(&self, waited: bool) {
        self.metrics.rejected.increment(1);
        // The event is built out of line, and only when some subscriber may take debug events.
        if tracing::Level::DEBUG <= tracing::level_filters::LevelFilter::current() {
            self.trace_reject(waited);
        }
        self.listeners
            .emit(&self.name, &BulkheadEvent::Rejected { waited });
    }

    #[cold]
    #[inline(never)]
    fn trace_reject(&self, waited: bool) {
        tracing::debug!(name = %self.name, waited, "bulkhead full, call rejected");
    }

    #[inline]
    fn release_one(&self) {
        // The gauge first: giving the permit back may wake a waiter, and a waker that panics
        // would leave it one too high.
        self.metrics.in_flight.decrement(1.0);
        self.give_back();
    }

    /// Returns one permit to the semaphore (where it pays off one the adaptive limit owes, if
    /// any).
    #[inline]
    fn give_back(&self) {
        self.permits.release(1);
    }

    /// Feeds one sample to the adaptive limit and resizes the semaphore to its answer.
    fn sample(&self, sample: Sample) {
        let Some(adaptive) = &self.adaptive else {
            return;
        };
        // The calls the added permits serve are woken once the lock is released, when `served`
        // drops: wakers are foreign code, and may call in (an executor may drop a woken task's
        // future, and a permit in it then samples the limit, on this thread). Declared before
        // the lock, it drops after it even as a panic unwinds.
        let mut served = None;
        let (from, to, generation) = {
            let mut adaptive = adaptive.lock().unwrap_or_else(PoisonError::into_inner);
            let algorithm = &mut adaptive.algorithm;
            let (min, max) = algorithm.bounds();
            // Not `clamp(min, max)`: a custom algorithm's bounds are not re-validated after the
            // build, and must not panic (min above max) nor take the limit past `MAX_LIMIT`
            // (applied last, whatever min says), which keeps the permit arithmetic in range.
            let to = algorithm
                .update(&sample)
                .min(max)
                .max(min)
                .clamp(1, crate::limit::MAX_LIMIT);
            let from = self.limit.load(Ordering::Acquire);
            if to == from {
                return;
            }
            // The semaphore, the limit and its gauge all move before any waker runs, so a
            // waker that panics leaves them agreeing.
            if to > from {
                served = Some(self.permits.release_deferred(to - from));
            } else {
                self.permits.shrink(from - to);
            }
            self.limit.store(to, Ordering::Release);
            // Under the lock, as the limit is: a recorder that does not add atomically still
            // ends on the sum of the changes. Listeners run after, unlocked: one may call in, and
            // another thread's later change may be heard first, so the generation orders them.
            adaptive.generation += 1;
            if to > from {
                self.metrics.limit.increment((to - from) as f64);
            } else {
                self.metrics.limit.decrement((from - to) as f64);
            }
            (from, to, adaptive.generation)
        };
        tracing::debug!(name = %self.name, from, to, generation, "bulkhead limit changed");
        self.listeners.emit(
            &self.name,
            &BulkheadEvent::LimitChanged {
                from,
                to,
                generation,
            },
        );
        // Last, so that a waker that panics skips nothing here.
        drop(served);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Its share of the gauge goes with it: a bulkhead built again under the same name, as
        // on a reload, then reports its own limit. No sample can run now, so the limit is final.
        self.metrics.limit.decrement(self.limit() as f64);
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Bulkhead");
        d.field("name", &self.name)
            .field("limit", &self.limit())
            .field("available", &self.available())
            .field("waiting", &self.waiting())
            .field("max_wait", &self.max_wait)
            .field("backpressure", &self.backpressure);
        if let Some(adaptive) = &self.adaptive {
            match adaptive.try_lock() {
                Ok(adaptive) => d.field("adaptive", &adaptive.algorithm),
                Err(_) => d.field("adaptive", &"<busy>"),
            };
        }
        d.field("listeners", &self.listeners).finish()
    }
}

/// One bulkhead permit, held by a call from admission until its response (or, with
/// [`OnBodyEnd`](crate::OnBodyEnd), its response body) is finished or dropped.
///
/// Dropping a permit returns it; a permit dropped before its call finished teaches an
/// adaptive limit nothing (the call counts as ignored).
pub struct Permit {
    shared: Arc<Shared>,
}

/// What a call that reserved no permit gets: a free permit, a rejection, or a place in the queue.
pub(crate) enum Unreserved {
    Acquired(Permit),
    Rejected,
    /// Queued, to wait for a permit until `deadline`.
    Wait {
        place: Place,
        deadline: Instant,
    },
}

/// When an adaptive bulkhead's call started and how many were in flight then; `None` for fixed
/// limits, which do not time their calls. Opaque: only passed between the bulkhead's own types.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    start: Instant,
    in_flight: usize,
}

impl Timing {
    /// How long since the call started: one clock read, or none (and zero) for a fixed limit.
    #[inline]
    pub(crate) fn elapsed(timing: Option<Timing>) -> Duration {
        match timing {
            Some(timing) => timing.start.elapsed(),
            None => Duration::ZERO,
        }
    }
}

impl Permit {
    /// Takes a free permit, if there is one and nobody is waiting. Never waits.
    #[inline]
    pub(crate) fn try_acquire(shared: &Arc<Shared>) -> Option<Permit> {
        if shared.permits.try_acquire() {
            Some(Permit::assume(shared))
        } else {
            None
        }
    }

    /// For a call that reserved no permit: takes a free one, or rejects the call (counted, and
    /// reported to listeners) when it may not wait, or else queues it until its `max_wait`
    /// deadline (the one clock read of a fixed limit's call), so that it is in line from the
    /// moment it is called.
    #[inline(never)]
    pub(crate) fn try_acquire_or_reject(shared: &Arc<Shared>) -> Unreserved {
        if let Some(permit) = Permit::try_acquire(shared) {
            Unreserved::Acquired(permit)
        } else if shared.max_wait.is_zero() {
            shared.reject(false);
            Unreserved::Rejected
        } else {
            let deadline = deadline_after(Instant::now(), shared.max_wait);
            match Place::join(shared, deadline) {
                Ok(permit) => Unreserved::Acquired(permit),
                Err(place) => Unreserved::Wait { place, deadline },
            }
        }
    }

    /// Wraps a free permit just taken from the semaphore, and counts it in flight.
    #[inline]
    fn assume(shared: &Arc<Shared>) -> Permit {
        shared.metrics.in_flight.increment(1.0);
        Permit::handed_over(shared)
    }

    /// Wraps a permit the semaphore handed to a queued place, which counted it in flight then.
    fn handed_over(shared: &Arc<Shared>) -> Permit {
        Permit {
            shared: shared.clone(),
        }
    }

    /// The call starts now: adaptive bulkheads read the clock and the load.
    #[inline]
    pub(crate) fn start(&self) -> Option<Timing> {
        if self.shared.is_adaptive() {
            Some(Timing {
                start: Instant::now(),
                in_flight: self.shared.in_flight(),
            })
        } else {
            None
        }
    }

    /// Finishes the call with `outcome` after holding the permit for `rtt` (measured by the
    /// caller, so the classifier and the limit see the same duration) and returns the permit.
    #[inline]
    pub(crate) fn finish(self, outcome: Outcome, timing: Option<Timing>, rtt: Duration) {
        if let Some(timing) = timing {
            if outcome != Outcome::Ignored {
                self.shared
                    .sample(Sample::new(rtt, timing.in_flight, outcome.is_failure()));
            }
        }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.shared.release_one();
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("bulkhead", &self.shared.name)
            .finish()
    }
}

/// A call's place in the FIFO queue for a permit, counted as waiting until a permit is handed to
/// it (then the permit counts as in flight, in the handle and the gauge, though the call has yet
/// to take it). Dropping
/// it (the future dropped, `max_wait` over) leaves the queue, or passes on a permit handed over in
/// the meantime.
pub(crate) struct Place {
    pub(crate) shared: Arc<Shared>,
    slot: Option<Arc<Waiter>>,
}

impl Place {
    /// No place yet: the first [`poll_acquire`](Place::poll_acquire) takes a permit or queues.
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Place { shared, slot: None }
    }

    /// Takes a free permit, or a place at the back of the queue now, before any poll: a permit
    /// that comes back before `deadline` is handed to this place and kept for it.
    pub(crate) fn join(shared: &Arc<Shared>, deadline: Instant) -> Result<Permit, Place> {
        match shared.permits.acquire_or_queue(None, Some(deadline)) {
            None => Ok(Permit::assume(shared)),
            Some(waiter) => Err(Place {
                shared: shared.clone(),
                slot: Some(waiter),
            }),
        }
    }

    /// Takes a permit, queueing for one (with no deadline) if there is none; [`Expired`] when
    /// the place was [joined](Place::join) and its deadline passed before a permit came.
    pub(crate) fn poll_acquire(&mut self, cx: &mut Context<'_>) -> Poll<Result<Permit, Expired>> {
        // Queued already, the place can only be handed its permit; otherwise it may take a free
        // one at once.
        let queued = self.slot.is_some();
        self.shared
            .permits
            .poll_acquire(&mut self.slot, cx)
            .map(|taken| taken.map(|()| self.permit(queued)))
    }

    /// Wraps the permit this place has just taken: handed to it in the queue (counted in flight
    /// by the hand-over) when it was `queued`, else free.
    fn permit(&self, queued: bool) -> Permit {
        if queued {
            Permit::handed_over(&self.shared)
        } else {
            Permit::assume(&self.shared)
        }
    }

    /// Waits at a [joined](Place::join) place until a permit comes or `timer` (the call's
    /// `max_wait`) fires, then leaves the queue: [`Expired`] when the wait is over without a
    /// permit, and a permit handed over since the place was polled, as the timer fired, is taken
    /// (see [`Permits::poll_acquire_until`]).
    pub(crate) fn poll_until<T: Future<Output = ()>>(
        &mut self,
        cx: &mut Context<'_>,
        timer: Pin<&mut T>,
    ) -> Poll<Result<Permit, Expired>> {
        let queued = self.slot.is_some();
        self.shared
            .permits
            .poll_acquire_until(&mut self.slot, cx, timer)
            .map(|taken| taken.map(|()| self.permit(queued)))
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if let Some(waiter) = self.slot.take() {
            if self.shared.permits.cancel(&waiter) {
                // Handed a permit it never used: returned, and no longer in flight.
                drop(Permit::handed_over(&self.shared));
            }
        }
    }
}

/// A view of one bulkhead's current state, for dashboards, tests and health checks.
///
/// Get one with [`BulkheadLayer::handle`](crate::BulkheadLayer::handle); it shares the layer's
/// state, so it sees every service the layer made.
#[derive(Clone)]
pub struct BulkheadHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BulkheadHandle {
    /// The current limit: fixed, or where the adaptive algorithm has moved it.
    pub fn limit(&self) -> usize {
        self.shared.limit()
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        self.shared.available()
    }

    /// Permits held: calls running (and permits reserved by services that are ready).
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Calls waiting for a permit: response futures waiting up to `max_wait`, and services waiting
    /// in `poll_ready` with backpressure. A call handed a permit waits no more, though it takes
    /// the permit only when next polled: its permit counts in [`in_flight`](Self::in_flight).
    pub fn waiting(&self) -> usize {
        self.shared.waiting()
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }
}

impl fmt::Debug for BulkheadHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::task::Waker;

    fn shared(limit: usize) -> Arc<Shared> {
        Shared::new(
            limit,
            None,
            Duration::from_secs(1),
            false,
            Name::default_for("bulkhead"),
            Listeners::new(),
        )
    }

    /// A waiting call's timer fires just as the permit it waits for is handed to it, after its
    /// poll found none: leaving the queue then finds the permit, and the call runs with it rather
    /// than being rejected while the permit goes to someone else.
    #[test]
    fn a_place_whose_timer_fires_keeps_a_permit_handed_to_it_since_its_poll() {
        let shared = shared(1);
        let mut held = Some(Permit::try_acquire(&shared).expect("a free permit"));
        let Err(mut place) = Place::join(&shared, Instant::now() + Duration::from_secs(1)) else {
            panic!("the bulkhead is full");
        };
        // The permit is handed over (within the wait) between the place's poll and its timer's.
        let timer = std::pin::pin!(std::future::poll_fn(|_| {
            drop(held.take());
            Poll::Ready(())
        }));
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(Ok(permit)) = place.poll_until(&mut cx, timer) else {
            panic!("a permit handed over within the wait is not used");
        };
        assert_eq!(
            (shared.waiting(), shared.available(), shared.in_flight()),
            (0, 0, 1)
        );
        drop(permit);
        drop(place);
        assert_eq!((shared.available(), shared.in_flight()), (1, 0));
    }

    /// A place whose timer fires before any permit comes leaves the queue with nothing, and the
    /// next permit returned goes back to the pool.
    #[test]
    fn a_place_whose_timer_fires_before_a_permit_comes_leaves_with_nothing() {
        let shared = shared(1);
        let held = Permit::try_acquire(&shared).expect("a free permit");
        let Err(mut place) = Place::join(&shared, Instant::now() + Duration::from_secs(1)) else {
            panic!("the bulkhead is full");
        };
        assert_eq!(shared.waiting(), 1);
        let timer = std::pin::pin!(std::future::ready(()));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(
            place.poll_until(&mut cx, timer),
            Poll::Ready(Err(Expired))
        ));
        assert_eq!(shared.waiting(), 0);
        drop(held);
        drop(place);
        assert_eq!((shared.available(), shared.in_flight()), (1, 0));
    }
}
