//! A fair counting semaphore whose uncontended paths are one compare-and-swap each.
//!
//! The state is one word: the free permits, shifted left by one, and a `WAITERS` bit saying the
//! FIFO queue of waiting calls is not empty. Taking a permit when nobody waits is a CAS on that
//! word; so is returning one when nobody waits. Neither takes a lock. Once a call queues, the bit
//! is set (under the queue lock) and stays set until the queue empties, so:
//!
//! - a newcomer's fast path fails while anyone waits: nobody overtakes a waiter (FIFO);
//! - a returned permit goes through the queue lock and is handed straight to the oldest waiter
//!   whose deadline has not passed (its `granted` flag is set under the lock, and it is woken, if
//!   it has been polled yet, once the lock is released), never put back where a newcomer could
//!   take it.
//!
//! A waiter that gives up (its future is dropped, its `max_wait` passed) leaves the queue under the
//! lock; if a permit was handed to it in the meantime it passes it on. A waiter may carry a
//! deadline: a permit handed out after it has passed skips that waiter, which leaves the queue
//! marked expired, and goes to the next one, so a call whose future was not polled in time (no
//! timer ran for it) cannot take a permit from a call still within its wait. Only this cold path
//! reads the clock, once per hand-out and only when a waiter has a deadline.
//!
//! The calls waiting are the calls in the queue: one counter moves under the lock as a call joins
//! the queue, is handed a permit or leaves, so a call handed a permit it has not taken yet counts
//! as in flight, not as waiting. The waiting gauge follows the counter, moved just after the lock
//! is released, so that no recorder runs under it. The in-flight gauge counts a permit handed
//! over from that moment too; the caller counts the permits it takes itself (free ones,
//! with [`try_acquire`](Permits::try_acquire) or at once from
//! [`acquire_or_queue`](Permits::acquire_or_queue)) and every permit it gives back.
//!
//! The free permits are a signed count: when an adaptive limit shrinks below the permits held,
//! [`shrink`](Permits::shrink) takes them out of circulation in one atomic step and the count goes
//! negative, a debt that the next permits released pay off before any is free again or handed to a
//! waiter. Because the debt lives in the same word as the free permits, a release can never see
//! "nothing owed" and then free a permit the shrink has since claimed. So the count always equals
//! the limit minus the permits held, which the loom and proptest checks assert.

use crate::{
    limit::MAX_LIMIT,
    sync::{AtomicBool, AtomicUsize, Mutex, Ordering},
};
use std::{
    collections::VecDeque,
    future::Future,
    panic::{self, AssertUnwindSafe},
    pin::Pin,
    sync::{Arc, PoisonError},
    task::{ready, Context, Poll, Waker},
    thread,
};
use tokio::time::Instant;

const WAITERS: usize = 1;
const ONE: usize = 2;

/// The free permits in a state word: negative while permits are owed. The word is the count
/// shifted left by one, in two's complement, so adding or subtracting `ONE` steps it.
#[inline]
fn free(state: usize) -> isize {
    (state as isize) >> 1
}

/// A fair semaphore; see the module docs.
#[derive(Debug)]
#[allow(unreachable_pub)] // public to the loom tests under `--cfg loom`
pub struct Permits {
    state: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Waiter>>>,
    /// The queue's length, moved under its lock, for readers that take no lock.
    waiting: AtomicUsize,
    waiting_gauge: metrics::Gauge,
    /// Counts each permit handed to a waiter as in flight, as it is handed over.
    in_flight_gauge: metrics::Gauge,
}

/// One queued call: whether a permit has been handed to it or its deadline passed first, and how
/// to wake it.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct Waiter {
    granted: AtomicBool,
    expired: AtomicBool,
    deadline: Option<Instant>,
    waker: Mutex<Option<Waker>>,
}

/// A queued call's deadline passed before a permit was handed to it; it has left the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(unreachable_pub)]
pub struct Expired;

#[allow(unreachable_pub)]
impl Permits {
    /// A semaphore with `n` free permits, reporting to no gauge (for the model checks).
    #[cfg(any(test, loom))]
    pub fn new(n: usize) -> Self {
        Permits::with_gauges(n, metrics::Gauge::noop(), metrics::Gauge::noop())
    }

    /// A semaphore with `n` free permits that reports the calls waiting to `waiting_gauge`, and
    /// adds each permit it hands to a waiter to `in_flight_gauge`.
    pub fn with_gauges(
        n: usize,
        waiting_gauge: metrics::Gauge,
        in_flight_gauge: metrics::Gauge,
    ) -> Self {
        debug_assert!(n <= MAX_LIMIT, "{n} permits, beyond any limit");
        Permits {
            state: AtomicUsize::new(n * ONE),
            queue: Mutex::new(VecDeque::new()),
            waiting: AtomicUsize::new(0),
            waiting_gauge,
            in_flight_gauge,
        }
    }

    /// Calls in the queue right now: waiting, not yet handed a permit.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Counts `n` calls out of the queue (handed a permit, or gone), under its lock; the
    /// gauge follows with [`report_left`](Permits::report_left) once the lock is released.
    fn left_queue(&self, n: usize) {
        if n > 0 {
            self.waiting.fetch_sub(n, Ordering::AcqRel);
        }
    }

    /// Moves the gauges for `left` calls out of the queue, `handed_over` of them with a permit.
    /// Called with the queue's lock released, as are all gauge updates: a recorder may be slow,
    /// or call back into the bulkhead. Racing updates may then reach a gauge out of order (a
    /// call's leaving before its joining), but each is applied once, so the gauge settles on
    /// the count.
    fn report_left(&self, left: usize, handed_over: usize) {
        if left > 0 {
            self.waiting_gauge.decrement(left as f64);
        }
        if handed_over > 0 {
            self.in_flight_gauge.increment(handed_over as f64);
        }
    }

    /// Free permits right now.
    pub fn available(&self) -> usize {
        free(self.state.load(Ordering::Acquire)).max(0) as usize
    }

    /// Permits owed right now: taken out of circulation by [`shrink`](Permits::shrink) while
    /// held, and not yet released.
    pub fn owed(&self) -> usize {
        free(self.state.load(Ordering::Acquire))
            .min(0)
            .unsigned_abs()
    }

    /// Whether [`try_acquire`](Permits::try_acquire) would take a permit now: one is free and
    /// nobody is waiting. One load; takes nothing.
    #[inline]
    pub fn has_free(&self) -> bool {
        let state = self.state.load(Ordering::Acquire);
        state & WAITERS == 0 && free(state) >= 1
    }

    /// Takes a free permit if there is one and nobody is waiting. Never blocks.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & WAITERS != 0 || free(state) < 1 {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state - ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    /// Returns `n` permits (or adds them, when the limit grows): to what is owed first, then to
    /// the oldest waiters, the rest to the pool. `n` is at most `MAX_LIMIT`, as is any limit, so
    /// the word holds it.
    #[inline]
    pub fn release(&self, n: usize) {
        if !self.release_unqueued(n) {
            self.release_to_waiters(n);
        }
    }

    /// Returns `n` permits as [`release`](Permits::release) does, but leaves waking the calls
    /// they are handed to, and moving the gauges, to the [`Served`] it returns, which does both
    /// when dropped: a caller holding a lock of its own drops it once that lock is released, so
    /// that no foreign code runs under it.
    #[must_use = "dropping it wakes the calls served: drop it once every lock is released"]
    pub fn release_deferred(&self, n: usize) -> Served<'_> {
        if self.release_unqueued(n) {
            Served::none(self)
        } else {
            self.hand_out(n)
        }
    }

    /// Returns `n` permits without the queue's lock, while nobody waits (`true`); `false`, with
    /// nothing returned, when someone does.
    #[inline]
    fn release_unqueued(&self, n: usize) -> bool {
        debug_assert!(n <= MAX_LIMIT, "released {n} permits, beyond any limit");
        if n == 0 {
            return true;
        }
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & WAITERS != 0 {
                return false;
            }
            match self.state.compare_exchange_weak(
                state,
                state.wrapping_add(n * ONE),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
    }

    #[cold]
    fn release_to_waiters(&self, n: usize) {
        // Dropped with the lock released: wakers are foreign code, which may be slow (a syscall
        // to unpark a thread) or call back into the bulkhead (an executor that drops a task's
        // future with its last waker drops a waiting call, which leaves the queue under its
        // lock). A waiter polled in the meantime finds its permit without the wake-up, which is
        // then spurious.
        drop(self.hand_out(n));
    }

    /// Hands `n` permits out under the queue's lock, as [`release`](Permits::release) does when
    /// someone waits, and returns the calls it served (those that left the queue, with a permit
    /// or passed over), to be woken once the lock is released.
    fn hand_out(&self, mut n: usize) -> Served<'_> {
        let mut served = Served::none(self);
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        // What is owed is paid before any waiter is served.
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let pay = free(state).min(0).unsigned_abs().min(n);
            if pay == 0 {
                break;
            }
            match self.state.compare_exchange_weak(
                state,
                state.wrapping_add(pay * ONE),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    n -= pay;
                    break;
                }
                Err(now) => state = now,
            }
        }
        let mut now = None;
        while n > 0 {
            let Some(waiter) = queue.pop_front() else {
                break;
            };
            served.left += 1;
            let expired = waiter
                .deadline
                .is_some_and(|deadline| deadline <= *now.get_or_insert_with(Instant::now));
            if expired {
                // Its wait is over: the permit goes on to the next waiter.
                waiter.expired.store(true, Ordering::Release);
            } else {
                waiter.granted.store(true, Ordering::Release);
                served.handed_over += 1;
                n -= 1;
            }
            // Taken after its flag is set, under the waiter's lock: a poll that stored its
            // waker too late to be taken here finds the flag set once it has stored it, and
            // takes that waker back before it lets go of the place (see `poll_acquire`), so
            // the place is dropped at the end of this pass, perhaps last, with no waker in it.
            if let Some(waker) = waiter.take_waker() {
                served.wake.push(waker);
            }
        }
        self.left_queue(served.left);
        if queue.is_empty() {
            self.state.fetch_and(!WAITERS, Ordering::AcqRel);
        }
        if n > 0 {
            self.state.fetch_add(n * ONE, Ordering::AcqRel);
        }
        drop(queue);
        served
    }

    /// Takes `n` permits out of circulation (the limit shrank): free ones at once, and as many
    /// as are missing from the next permits released, which pay that debt instead of being
    /// freed or handed to a waiter. One atomic step, so no release can slip a permit past it.
    /// `n` is at most `MAX_LIMIT`, as is any limit.
    pub fn shrink(&self, n: usize) {
        debug_assert!(n <= MAX_LIMIT, "shrunk by {n} permits, beyond any limit");
        if n > 0 {
            self.state.fetch_sub(n * ONE, Ordering::AcqRel);
        }
    }

    /// Takes a permit, queueing (FIFO, with no deadline) when there is none. `slot` holds this
    /// caller's place in the queue between polls (taken here or by
    /// [`acquire_or_queue`](Permits::acquire_or_queue)); it is `None` again once the permit is
    /// taken, or once the place's deadline has passed ([`Expired`]). A caller that stops polling
    /// must hand its slot to [`cancel`](Permits::cancel).
    pub fn poll_acquire(
        &self,
        slot: &mut Option<Arc<Waiter>>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), Expired>> {
        if let Some(waiter) = slot {
            // Any waker a poll stored before the queue decided was taken by the hand-out that
            // decided (see `hand_out`), so the place leaves holding none.
            if let Some(outcome) = waiter.outcome() {
                *slot = None;
                return Poll::Ready(outcome);
            }
            waiter.store_waker(cx.waker());
            if let Some(outcome) = waiter.outcome() {
                // The queue decided as the waker was stored, maybe after the hand-out took the
                // one before. That hand-out, still holding the queue's lock, may drop the last
                // reference to the place once this one is gone: the waker is taken back and
                // dropped here, with no lock held, so that it finds none.
                drop(waiter.take_waker());
                *slot = None;
                return Poll::Ready(outcome);
            }
            return Poll::Pending;
        }
        match self.acquire_or_queue(Some(cx.waker()), None) {
            None => Poll::Ready(Ok(())),
            Some(waiter) => {
                *slot = Some(waiter);
                Poll::Pending
            }
        }
    }

    /// Waits at a place taken with [`acquire_or_queue`](Permits::acquire_or_queue) until a permit
    /// comes or `timer` (the call's `max_wait`) fires: polls the place as
    /// [`poll_acquire`](Permits::poll_acquire) does and, while no permit has come, the timer.
    /// Once the timer fires the place leaves the queue. A permit may have been handed to it since
    /// it was polled: the queue's lock settles whether the hand-over or the leaving came first,
    /// and a permit handed over within the wait is taken (`Ok`), never passed on while the call
    /// fails. Otherwise the wait is over without a permit ([`Expired`]), as it is when a hand-out
    /// passed over the place once its deadline had passed.
    pub fn poll_acquire_until<T: Future<Output = ()>>(
        &self,
        slot: &mut Option<Arc<Waiter>>,
        cx: &mut Context<'_>,
        timer: Pin<&mut T>,
    ) -> Poll<Result<(), Expired>> {
        if let Poll::Ready(outcome) = self.poll_acquire(slot, cx) {
            return Poll::Ready(outcome);
        }
        ready!(timer.poll(cx));
        Poll::Ready(match slot.take() {
            Some(waiter) if self.cancel(&waiter) => Ok(()),
            _ => Err(Expired),
        })
    }

    /// Takes a free permit (`None`), or joins the back of the queue (`Some`, the place to poll
    /// with [`poll_acquire`](Permits::poll_acquire) or give up with
    /// [`cancel`](Permits::cancel)). Without a `waker` the place is taken now and a permit handed
    /// to it waits until it is polled: the caller is in line from this moment. A place with a
    /// `deadline` is passed over by permits handed out once it has passed.
    pub fn acquire_or_queue(
        &self,
        waker: Option<&Waker>,
        deadline: Option<Instant>,
    ) -> Option<Arc<Waiter>> {
        if self.try_acquire() {
            return None;
        }
        // Cloned before the lock is taken, and dropped after it is released if a permit came
        // back meanwhile: wakers are foreign code (see `release_to_waiters`).
        let waker = waker.cloned();
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if free(state) >= 1 && queue.is_empty() {
                // A permit came back between the failed fast path and the lock.
                match self.state.compare_exchange(
                    state,
                    state - ONE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        drop(queue);
                        drop(waker);
                        return None;
                    }
                    Err(now) => state = now,
                }
            } else {
                match self.state.compare_exchange(
                    state,
                    state | WAITERS,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(now) => state = now,
                }
            }
        }
        let waiter = Arc::new(Waiter {
            granted: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            deadline,
            waker: Mutex::new(waker),
        });
        queue.push_back(waiter.clone());
        self.waiting.fetch_add(1, Ordering::AcqRel);
        drop(queue);
        // Outside the lock, as every gauge update (see `report_left`).
        self.waiting_gauge.increment(1.0);
        Some(waiter)
    }

    /// Gives up a place taken by [`poll_acquire`](Permits::poll_acquire): leaves the queue.
    /// `true` when a permit was handed over in the meantime: the caller now holds it (counted in
    /// flight since the hand-over), and gives it back as it would any permit (so an adaptive
    /// limit's debt is paid first).
    #[must_use = "a permit handed over must be given back"]
    pub fn cancel(&self, waiter: &Arc<Waiter>) -> bool {
        let left = {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let at = queue.iter().position(|w| Arc::ptr_eq(w, waiter));
            if let Some(at) = at {
                queue.remove(at);
                self.left_queue(1);
                if queue.is_empty() {
                    self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                }
            }
            at.is_some()
        };
        if left {
            self.report_left(1, 0);
            return false;
        }
        waiter.take_grant()
    }
}

/// The calls one release served: they left the queue, `handed_over` of them with a permit.
/// Dropped once every lock is released, it moves the gauges (see
/// [`report_left`](Permits::report_left)) and then wakes the calls, so that a waker that
/// panics leaves the gauges right; a panic that unwinds through it wakes them all the same.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct Served<'a> {
    permits: &'a Permits,
    left: usize,
    handed_over: usize,
    wake: WakeList,
}

impl<'a> Served<'a> {
    fn none(permits: &'a Permits) -> Self {
        Served {
            permits,
            left: 0,
            handed_over: 0,
            wake: WakeList::default(),
        }
    }
}

impl Drop for Served<'_> {
    fn drop(&mut self) {
        self.permits.report_left(self.left, self.handed_over);
        // The wakers are woken as `wake` drops, next.
    }
}

/// The wakers of the calls one hand-out served, woken when the list is dropped, once the
/// queue's lock is released. The first is kept inline, so serving one waiter (a permit
/// returned) allocates nothing; only a hand-out that serves several (the limit grew, or waiters
/// past their deadline were passed over) keeps the rest in a `Vec`.
#[derive(Debug, Default)]
struct WakeList {
    first: Option<Waker>,
    rest: Vec<Waker>,
}

impl WakeList {
    fn push(&mut self, waker: Waker) {
        if self.first.is_none() {
            self.first = Some(waker);
        } else {
            self.rest.push(waker);
        }
    }
}

impl Drop for WakeList {
    /// Wakes every waker, even when one panics: the calls served hold the permits handed to
    /// them, and one waiting with no timer (in `poll_ready`, with backpressure) would never
    /// learn of its own. Each wake-up's panic is caught and the first resumes once all are
    /// done (a guard that woke the rest as it unwound would abort on a second one); a panic
    /// already unwinding through the list goes on alone.
    fn drop(&mut self) {
        let mut panicked = None;
        for waker in self.first.take().into_iter().chain(self.rest.drain(..)) {
            if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                panicked.get_or_insert(panic);
            }
        }
        if let Some(panic) = panicked {
            if !thread::panicking() {
                panic::resume_unwind(panic);
            }
        }
    }
}

impl Waiter {
    /// Stores `waker` to be woken when the queue decides for this place, unless the one stored
    /// would wake the same task. The waker it replaces is dropped, and `waker` cloned, with the
    /// lock released: dropping a waker may drop the last handle to a task, and with it another
    /// call waiting here, which leaves the queue under its lock, while a hand-out holds the
    /// queue's lock as it takes this waiter's.
    fn store_waker(&self, waker: &Waker) {
        let lock = || self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if lock()
            .as_ref()
            .is_some_and(|stored| stored.will_wake(waker))
        {
            return;
        }
        let waker = waker.clone();
        let replaced = lock().replace(waker);
        drop(replaced);
    }

    /// Takes the stored waker, to be dropped or woken once every lock is released.
    fn take_waker(&self) -> Option<Waker> {
        self.waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Whether a permit was handed over; takes it (so a later `cancel` does not pass it on).
    /// Only the place's owner clears the flag, so a load that finds it set is followed by a swap
    /// that takes it; a place polled before its permit comes writes nothing. (Writing `false`
    /// there, unsynchronised with the granter's store, is also beyond loom's model of
    /// modification order, tokio-rs/loom#282: it then reports grants lost that C11 keeps.)
    fn take_grant(&self) -> bool {
        self.granted.load(Ordering::Acquire) && self.granted.swap(false, Ordering::AcqRel)
    }

    /// What the queue decided for this place, if it has left it: a permit, or its deadline passed.
    fn outcome(&self) -> Option<Result<(), Expired>> {
        if self.take_grant() {
            Some(Ok(()))
        } else if self.expired.load(Ordering::Acquire) {
            Some(Err(Expired))
        } else {
            None
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    fn poll(permits: &Permits, slot: &mut Option<Arc<Waiter>>) -> Poll<Result<(), Expired>> {
        permits.poll_acquire(slot, &mut Context::from_waker(Waker::noop()))
    }

    /// A gauge that notes each update, and each made while the queue's lock is held: a user's
    /// recorder may be slow, or call back into the bulkhead.
    #[derive(Default)]
    struct LockSpy {
        permits: std::sync::OnceLock<std::sync::Weak<Permits>>,
        updates: AtomicUsize,
        under_lock: AtomicUsize,
    }

    impl LockSpy {
        fn note(&self) {
            self.updates.fetch_add(1, Ordering::SeqCst);
            let permits = self.permits.get().and_then(std::sync::Weak::upgrade);
            if permits.is_some_and(|permits| permits.queue.try_lock().is_err()) {
                self.under_lock.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    impl metrics::GaugeFn for LockSpy {
        fn increment(&self, _: f64) {
            self.note();
        }

        fn decrement(&self, _: f64) {
            self.note();
        }

        fn set(&self, _: f64) {
            self.note();
        }
    }

    #[test]
    fn gauges_are_updated_outside_the_queue_lock() {
        let spy = Arc::new(LockSpy::default());
        let permits = Arc::new(Permits::with_gauges(
            1,
            metrics::Gauge::from_arc(spy.clone()),
            metrics::Gauge::from_arc(spy.clone()),
        ));
        spy.permits.set(Arc::downgrade(&permits)).unwrap();
        assert!(permits.try_acquire());
        // Three calls join the queue; the first's deadline passes at once.
        let mut late = permits.acquire_or_queue(None, Some(Instant::now()));
        let gone = permits.acquire_or_queue(None, None);
        let mut served = permits.acquire_or_queue(None, None);
        // One leaves; the permit returned passes over the late one to the last.
        assert!(!permits.cancel(gone.as_ref().unwrap()));
        permits.release(1);
        assert_eq!(poll(&permits, &mut late), Poll::Ready(Err(Expired)));
        assert_eq!(poll(&permits, &mut served), Poll::Ready(Ok(())));
        permits.release(1);
        assert_eq!(permits.waiting(), 0);
        // Three joined, one left, two served (one passed over) and one handed a permit.
        assert_eq!(spy.updates.load(Ordering::SeqCst), 6);
        assert_eq!(spy.under_lock.load(Ordering::SeqCst), 0);
    }

    /// A waker that notes each wake-up, and each made while the queue's lock is held: a waker is
    /// foreign code, which may be slow or call back into the bulkhead.
    struct WakeSpy {
        permits: std::sync::Weak<Permits>,
        wakes: AtomicUsize,
        under_lock: AtomicUsize,
    }

    impl std::task::Wake for WakeSpy {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.wakes.fetch_add(1, Ordering::SeqCst);
            let permits = self.permits.upgrade().expect("the semaphore is alive");
            if permits.queue.try_lock().is_err() {
                self.under_lock.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn waiters_are_woken_outside_the_queue_lock() {
        let permits = Arc::new(Permits::new(1));
        let spy = Arc::new(WakeSpy {
            permits: Arc::downgrade(&permits),
            wakes: AtomicUsize::new(0),
            under_lock: AtomicUsize::new(0),
        });
        let waker = Waker::from(spy.clone());
        assert!(permits.try_acquire());
        // Three calls queue, polled; the first's deadline passes at once.
        let mut late = permits.acquire_or_queue(Some(&waker), Some(Instant::now()));
        let mut first = permits.acquire_or_queue(Some(&waker), None);
        let mut second = permits.acquire_or_queue(Some(&waker), None);
        // One hand-out wakes two: the late call, passed over, and the first, served.
        permits.release(1);
        assert_eq!(spy.wakes.load(Ordering::SeqCst), 2);
        assert_eq!(poll(&permits, &mut late), Poll::Ready(Err(Expired)));
        assert_eq!(poll(&permits, &mut first), Poll::Ready(Ok(())));
        // The next wakes one.
        permits.release(1);
        assert_eq!(spy.wakes.load(Ordering::SeqCst), 3);
        assert_eq!(poll(&permits, &mut second), Poll::Ready(Ok(())));
        permits.release(1);
        assert_eq!(spy.under_lock.load(Ordering::SeqCst), 0);
    }

    /// A waker that notes when its last handle is dropped, and whether the queue's lock or the
    /// waiter's waker lock was held then: dropping a waker may drop a task, and with it another
    /// waiting call, which leaves the queue under its lock.
    struct DropSpy {
        permits: std::sync::Weak<Permits>,
        waiter: std::sync::OnceLock<std::sync::Weak<Waiter>>,
        dropped: Arc<AtomicUsize>,
        under_lock: Arc<AtomicUsize>,
    }

    impl std::task::Wake for DropSpy {
        fn wake(self: Arc<Self>) {}
    }

    impl Drop for DropSpy {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
            let queue_held = self
                .permits
                .upgrade()
                .is_some_and(|permits| permits.queue.try_lock().is_err());
            let waker_held = self
                .waiter
                .get()
                .and_then(std::sync::Weak::upgrade)
                .is_some_and(|waiter| waiter.waker.try_lock().is_err());
            if queue_held || waker_held {
                self.under_lock.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn a_replaced_waker_is_dropped_outside_the_locks() {
        let permits = Arc::new(Permits::new(1));
        let dropped = Arc::new(AtomicUsize::new(0));
        let under_lock = Arc::new(AtomicUsize::new(0));
        let spy = || {
            Arc::new(DropSpy {
                permits: Arc::downgrade(&permits),
                waiter: std::sync::OnceLock::new(),
                dropped: dropped.clone(),
                under_lock: under_lock.clone(),
            })
        };
        let (a, b) = (spy(), spy());
        assert!(permits.try_acquire());
        let mut slot = permits.acquire_or_queue(Some(&Waker::from(a.clone())), None);
        let waiter = Arc::downgrade(slot.as_ref().expect("queued"));
        a.waiter.set(waiter.clone()).unwrap();
        b.waiter.set(waiter).unwrap();
        drop(a);
        // Polled by another task, the place drops the only handle left to the first waker.
        let b = Waker::from(b);
        let mut cx = Context::from_waker(&b);
        assert_eq!(permits.poll_acquire(&mut slot, &mut cx), Poll::Pending);
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(permits.poll_acquire(&mut slot, &mut cx), Poll::Pending);
        permits.release(1);
        assert_eq!(
            permits.poll_acquire(&mut slot, &mut cx),
            Poll::Ready(Ok(()))
        );
        drop(b);
        assert_eq!(dropped.load(Ordering::SeqCst), 2);
        assert_eq!(under_lock.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn what_is_owed_is_paid_before_a_waiter_is_served() {
        let permits = Permits::new(2);
        assert!(permits.try_acquire());
        assert!(permits.try_acquire());
        let mut slot = permits.acquire_or_queue(None, None);
        assert!(slot.is_some());
        // The limit falls to 1 with both permits held: one is owed.
        permits.shrink(1);
        assert_eq!((permits.available(), permits.owed()), (0, 1));
        // The first release pays the debt; the waiter is served by the second.
        permits.release(1);
        assert_eq!((permits.available(), permits.owed()), (0, 0));
        assert_eq!(poll(&permits, &mut slot), Poll::Pending);
        permits.release(1);
        assert_eq!(poll(&permits, &mut slot), Poll::Ready(Ok(())));
        permits.release(1);
        assert_eq!(permits.available(), 1);
        assert!(permits.try_acquire());
    }

    #[test]
    fn a_shrink_takes_free_permits_first_and_owes_the_rest() {
        let permits = Permits::new(3);
        assert!(permits.try_acquire());
        permits.shrink(3);
        assert_eq!((permits.available(), permits.owed()), (0, 1));
        assert!(!permits.try_acquire());
        // The limit grows by 2: one pays the debt, one is free.
        permits.release(2);
        assert_eq!((permits.available(), permits.owed()), (1, 0));
        permits.release(1);
        assert_eq!(permits.available(), 2);
    }
}
