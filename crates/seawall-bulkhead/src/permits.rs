//! A fair counting semaphore whose uncontended paths are one compare-and-swap each.
//!
//! The state is one word: the free permits, shifted left by one, and a `WAITERS` bit saying the
//! FIFO queue of waiting calls is not empty. Taking a permit when nobody waits is a CAS on that
//! word; so is returning one when nobody waits. Neither takes a lock. Once a call queues, the bit
//! is set (under the queue lock) and stays set until the queue empties, so:
//!
//! - a newcomer's fast path fails while anyone waits: nobody overtakes a waiter (FIFO);
//! - a returned permit goes through the queue lock and is handed straight to the oldest waiter
//!   (its `granted` flag is set and it is woken, if it has been polled yet), never put back where
//!   a newcomer could take it.
//!
//! A waiter that gives up (its future is dropped, its `max_wait` passed) leaves the queue under the
//! lock; if a permit was handed to it in the meantime it passes it on. Free permits therefore
//! always equal the limit minus the permits held, which the loom and proptest checks assert.

use crate::sync::{AtomicBool, AtomicUsize, Mutex, Ordering};
use std::{
    collections::VecDeque,
    sync::{Arc, PoisonError},
    task::{Context, Poll, Waker},
};

const WAITERS: usize = 1;
const ONE: usize = 2;

/// A fair semaphore; see the module docs.
#[derive(Debug)]
#[allow(unreachable_pub)] // public to the loom tests under `--cfg loom`
pub struct Permits {
    state: AtomicUsize,
    queue: Mutex<VecDeque<Arc<Waiter>>>,
}

/// One queued call: whether a permit has been handed to it, and how to wake it.
#[derive(Debug)]
#[allow(unreachable_pub)]
pub struct Waiter {
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

#[allow(unreachable_pub)]
impl Permits {
    /// A semaphore with `n` free permits.
    pub fn new(n: usize) -> Self {
        Permits {
            state: AtomicUsize::new(n * ONE),
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Free permits right now.
    pub fn available(&self) -> usize {
        self.state.load(Ordering::Acquire) / ONE
    }

    /// Takes a free permit if there is one and nobody is waiting. Never blocks.
    #[inline]
    pub fn try_acquire(&self) -> bool {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & WAITERS != 0 || state < ONE {
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

    /// Returns `n` permits: to the oldest waiters first, the rest to the pool.
    #[inline]
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state & WAITERS != 0 {
                return self.release_to_waiters(n);
            }
            match self.state.compare_exchange_weak(
                state,
                state + n * ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }

    #[cold]
    fn release_to_waiters(&self, mut n: usize) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        while n > 0 {
            let Some(waiter) = queue.pop_front() else {
                break;
            };
            waiter.granted.store(true, Ordering::Release);
            let waker = waiter
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
            n -= 1;
        }
        if queue.is_empty() {
            self.state.fetch_and(!WAITERS, Ordering::AcqRel);
        }
        if n > 0 {
            self.state.fetch_add(n * ONE, Ordering::AcqRel);
        }
    }

    /// Takes up to `n` free permits out of circulation (the limit shrank); returns how many.
    pub fn forget(&self, n: usize) -> usize {
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            let take = (state / ONE).min(n);
            if take == 0 {
                return 0;
            }
            match self.state.compare_exchange_weak(
                state,
                state - take * ONE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return take,
                Err(now) => state = now,
            }
        }
    }

    /// Takes a permit, queueing (FIFO) when there is none. `slot` holds this caller's place in
    /// the queue between polls (taken here or by [`acquire_or_queue`](Permits::acquire_or_queue));
    /// it is `None` again once the permit is taken. A caller that stops polling must hand its slot
    /// to [`cancel`](Permits::cancel).
    pub fn poll_acquire(&self, slot: &mut Option<Arc<Waiter>>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(waiter) = slot {
            if waiter.take_grant() {
                *slot = None;
                return Poll::Ready(());
            }
            *waiter.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
            if waiter.take_grant() {
                *slot = None;
                return Poll::Ready(());
            }
            return Poll::Pending;
        }
        match self.acquire_or_queue(Some(cx.waker())) {
            None => Poll::Ready(()),
            Some(waiter) => {
                *slot = Some(waiter);
                Poll::Pending
            }
        }
    }

    /// Takes a free permit (`None`), or joins the back of the queue (`Some`, the place to poll
    /// with [`poll_acquire`](Permits::poll_acquire) or give up with
    /// [`cancel`](Permits::cancel)). Without a `waker` the place is taken now and a permit handed
    /// to it waits until it is polled: the caller is in line from this moment.
    pub fn acquire_or_queue(&self, waker: Option<&Waker>) -> Option<Arc<Waiter>> {
        if self.try_acquire() {
            return None;
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut state = self.state.load(Ordering::Acquire);
        loop {
            if state >= ONE && queue.is_empty() {
                // A permit came back between the failed fast path and the lock.
                match self.state.compare_exchange(
                    state,
                    state - ONE,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => return None,
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
            waker: Mutex::new(waker.cloned()),
        });
        queue.push_back(waiter.clone());
        Some(waiter)
    }

    /// Gives up a place taken by [`poll_acquire`](Permits::poll_acquire): leaves the queue.
    /// `true` when a permit was handed over in the meantime: the caller now holds it, and gives
    /// it back as it would any permit (so an adaptive limit's debt is paid first).
    #[must_use = "a permit handed over must be given back"]
    pub fn cancel(&self, waiter: &Arc<Waiter>) -> bool {
        {
            let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(at) = queue.iter().position(|w| Arc::ptr_eq(w, waiter)) {
                queue.remove(at);
                if queue.is_empty() {
                    self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                }
                return false;
            }
        }
        waiter.take_grant()
    }
}

impl Waiter {
    /// Whether a permit was handed over; takes it (so a later `cancel` does not pass it on).
    fn take_grant(&self) -> bool {
        self.granted.swap(false, Ordering::AcqRel)
    }
}
