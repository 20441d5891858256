//! The generic cell rate algorithm (GCRA), lock-free in one `AtomicU64`.
//!
//! GCRA (ITU-T I.371, the "virtual scheduling" form) keeps one number per limiter: the
//! *theoretical arrival time* (TAT) of the next request if requests came exactly at the rate. With
//! an emission interval `T = period / permits` and a burst of `B` (tolerance `τ = B × T`), a request
//! at time `t` is allowed when `max(TAT, t) + T − τ <= t`, and then `TAT = max(TAT, t) + T`.
//! That is a token bucket of `B` tokens refilled one per `T`, without a refill task or a lock: one
//! compare-and-swap per request. A request that would be allowed within `max_wait` reserves its
//! slot at once (the TAT moves) and waits for it, so waiters are served in the order of their slots.
//!
//! Every grant's TAT is at least `T` from every other's, and a grant runs no earlier than its TAT
//! minus `τ` and no earlier than it was asked for; so at most `B + ⌊w / T⌋` grants fall due within
//! any window `w`. A grant whose waiter is dropped gives its slot back: the latest grant by moving the
//! TAT back one interval, any other as a *hole*, a TAT kept beside the limiter's. The next request
//! takes the earliest hole whose slot has not passed (it is earlier than any slot the TAT offers)
//! instead of moving the TAT; a hole that reaches the TAT folds back into it. Holes are kept in
//! order, so each is put aside, taken, dropped or folded back in `O(log n)` of the holes there are;
//! they sit under a mutex with a count beside it, so while there are none (the common case)
//! nothing takes the lock. Reading the budget (the handles) takes that lock too while there are
//! holes, and counts the ones free at once one by one: up to the burst of them, with calls waiting
//! on the lock meanwhile.
//!
//! Times are nanoseconds since the limiter's epoch (a `tokio::time::Instant`), so the limiter
//! follows tokio's paused clock in tests. A TAT past the end of that clock (`u64::MAX`, about 584
//! years) is never stored: the request is rejected instead, as saturating would give every later
//! request the same slot.

use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering};
use std::{collections::BTreeSet, sync::PoisonError};

/// A request admitted now (`delay == 0`) or after `delay` nanoseconds; `tat` is the theoretical
/// arrival time it stored, needed to refund it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(unreachable_pub)] // public to the loom tests under `--cfg loom`
pub struct Grant {
    /// Nanoseconds to wait before the request may go.
    pub delay: u64,
    /// The TAT this grant stored.
    pub tat: u64,
}

/// Nanoseconds from `epoch` to now on tokio's clock (saturating: 584 years fit in a `u64`).
#[inline]
pub(crate) fn nanos_since(epoch: tokio::time::Instant) -> u64 {
    to_nanos(tokio::time::Instant::now().saturating_duration_since(epoch))
}

/// `d` in whole nanoseconds, saturating at `u64::MAX`; cheaper than `as_nanos` (no `u128`).
#[inline]
pub(crate) fn to_nanos(d: std::time::Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::from(d.subsec_nanos()))
}

/// A permit of TAT `t` may run until `t − T`; a call may still use a permit reserved for it up
/// to this many nanoseconds after it fell due, if that is later. tokio's timers fire up to a
/// millisecond late, a busy runtime runs a woken task later still, and time passes between a
/// timer and the call (between `poll_ready` and `call`, or while a waiter's service gets ready).
/// A call that misses its permit takes the next one, behind every call waiting: with too short a
/// grace, waiters that a busy runtime wakes a little late would each miss theirs, and none would
/// run. It counts from when the permit fell due, not from when it was seen due: a permit looked
/// at late (a service polled ready long after its timer fired) would otherwise let a call land
/// next to the calls admitted since. So every call starts by the end of its permit's span or
/// within `LATE` of its time.
pub(crate) const LATE: u64 = 10_000_000;

/// The last time a call may use `grant`, which fell due at `due`, from a limiter of `interval`:
/// the end of its span, or [`LATE`] after `due` if that is later.
pub(crate) fn usable_until(interval: u64, grant: Grant, due: u64) -> u64 {
    (grant.tat - interval).max(due.saturating_add(LATE))
}

/// The decision for one request given the current TAT: `Ok((new_tat, delay))`, or `Err(retry)`,
/// the nanoseconds after which the request would be allowed at once; `u64::MAX` when its slot is
/// past the end of the clock (the TAT cannot move on without overflowing).
#[inline]
pub(crate) fn decide(
    tat: u64,
    now: u64,
    interval: u64,
    tolerance: u64,
    max_wait: u64,
) -> Result<(u64, u64), u64> {
    let Some(new_tat) = tat.max(now).checked_add(interval) else {
        return Err(u64::MAX);
    };
    // `tolerance >= interval`, so `allowed_at <= max(tat, now)`: `delay` never overflows.
    let allowed_at = new_tat.saturating_sub(tolerance);
    let delay = allowed_at.saturating_sub(now);
    if delay > max_wait {
        Err(delay)
    } else {
        Ok((new_tat, delay))
    }
}

/// A limiter's budget at one time, read without taking anything from it: what the handles show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Calls that would be admitted at once, one after another: at most the burst.
    pub(crate) available: u64,
    /// Nanoseconds until a call would be admitted at once: zero when one would be now, else the
    /// `retry_after` a rejected call would be given (`u64::MAX`: no slot within the clock's range).
    pub(crate) next_in: u64,
}

/// The budget at `now` of a limiter of TAT `tat` and holes `holes`, with the same arithmetic as
/// [`Gcra::acquire`]: the TAT with the holes at its end folded back (as a call folds them before
/// deciding, but without moving anything), the usable holes due by `now`, then the slots after
/// the TAT that `decide` would grant at once.
pub(crate) fn budget(
    tat: u64,
    holes: Option<&Holes>,
    now: u64,
    interval: u64,
    tolerance: u64,
) -> Budget {
    // A hole at the TAT is the latest slot reserved, and nobody holds it. Only a refund that moves
    // the TAT back onto a hole another refund is putting aside leaves one there, until the next
    // call folds it; read without folding, the reading would be low by one.
    let tat = holes.map_or(tat, |holes| holes.folded(tat, interval));
    // The `k`-th call admitted at once from the TAT stores `max(tat, now) + k·T`, and is admitted
    // while that minus `τ` is at most `now` (and it fits in a `u64`).
    let from = tat.max(now);
    let room = now
        .saturating_add(tolerance)
        .saturating_sub(from)
        .min(u64::MAX - from);
    let from_tat = room / interval;
    // Every grant's TAT is at least `T` from every other's, so at most `τ / T` fall in the span
    // free at once, holes and slots after the TAT together. The holes are counted one by one
    // under the lock every call takes while there are some: the count stops at that bound.
    let burst = tolerance / interval;
    let holes_free = holes.map_or(0, |holes| {
        holes.free_at(
            now,
            tat,
            interval,
            tolerance,
            burst.saturating_sub(from_tat),
        )
    });
    let available = from_tat + holes_free;
    if available > 0 {
        return Budget {
            available,
            next_in: 0,
        };
    }
    let tat_next = decide(tat, now, interval, tolerance, 0).err().unwrap_or(0);
    let hole_next = holes
        .and_then(|holes| holes.next_usable(now, tat, interval))
        .map_or(u64::MAX, |hole| {
            hole.saturating_sub(tolerance).saturating_sub(now)
        });
    Budget {
        available,
        next_in: tat_next.min(hole_next),
    }
}

/// The TATs of given-back grants that were not the latest, in order: the earliest is the one to
/// take, the latest the one to fold back into the TAT. No two grants outstanding share a TAT, so
/// no two holes do either (a slot given back twice would be kept once, letting fewer calls
/// through, never more). Each step of a call looks at one hole, in `O(log n)` of the holes there
/// are; a reading of the budget looks at each hole free at once, up to the burst of them. The set
/// keeps no room for more holes than it holds.
#[derive(Debug, Default)]
pub(crate) struct Holes {
    tats: BTreeSet<u64>,
    /// Holes looked at, by calls and by readings, for the tests' bound on that work.
    #[cfg(test)]
    pub(crate) visited: std::cell::Cell<usize>,
}

impl Holes {
    pub(crate) fn len(&self) -> usize {
        self.tats.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.tats.is_empty()
    }

    /// Keeps `tat`, the TAT of a grant given back, for a later request to take.
    pub(crate) fn insert(&mut self, tat: u64) {
        self.visit();
        self.tats.insert(tat);
    }

    /// Whether `tat` is a hole.
    pub(crate) fn contains(&mut self, tat: u64) -> bool {
        self.visit();
        self.tats.contains(&tat)
    }

    /// Removes the hole `tat`; whether there was one.
    pub(crate) fn remove(&mut self, tat: u64) -> bool {
        self.visit();
        self.tats.remove(&tat)
    }

    /// The TAT `tat` with the holes at its end folded back, as [`Gcra::fold`] moves it. Reads
    /// only: the holes folded stay, at or above the TAT returned.
    pub(crate) fn folded(&self, mut tat: u64, interval: u64) -> u64 {
        loop {
            self.visit();
            if !self.tats.contains(&tat) {
                return tat;
            }
            tat -= interval;
        }
    }

    /// Holes below `tat` (the TAT [`folded`](Self::folded)) a request at `now` could take at
    /// once, counted up to `most`: their slots have not passed (hole `>= now + T`) and are due
    /// (hole `− τ <= now`), as in [`take`](Self::take). Reads only, one step per hole counted.
    pub(crate) fn free_at(
        &self,
        now: u64,
        tat: u64,
        interval: u64,
        tolerance: u64,
        most: u64,
    ) -> u64 {
        let (first, last) = (now.saturating_add(interval), now.saturating_add(tolerance));
        if first >= tat {
            return 0;
        }
        self.tats
            .range(first..=last.min(tat - 1))
            .take(usize::try_from(most).unwrap_or(usize::MAX))
            .inspect(|_| self.visit())
            .count() as u64
    }

    /// The earliest hole below `tat` (the TAT [`folded`](Self::folded)) whose slot has not passed
    /// at `now`, the one [`take`](Self::take) would look at. Reads only.
    pub(crate) fn next_usable(&self, now: u64, tat: u64, interval: u64) -> Option<u64> {
        let first = now.saturating_add(interval);
        if first >= tat {
            return None;
        }
        self.visit();
        self.tats.range(first..tat).next().copied()
    }

    /// Takes the earliest hole whose slot has not passed at `now`, dropping those that have.
    /// `Err(retry)`: none within `max_wait`; the earliest is free at once after `retry`
    /// nanoseconds (`u64::MAX`: there is none).
    ///
    /// A grant of TAT `tat` may run from `tat − τ` (`tolerance`) up to `tat − T` (`interval`):
    /// every call run within its grant's span keeps any window of `w` to `burst + ⌊w/T⌋` calls.
    /// So a hole is usable until `tat − T`, and its taker waits until `tat − τ` if that is still
    /// to come.
    pub(crate) fn take(
        &mut self,
        now: u64,
        interval: u64,
        tolerance: u64,
        max_wait: u64,
    ) -> Result<Grant, u64> {
        let due = now.saturating_add(interval);
        let tat = loop {
            self.visit();
            match self.tats.first() {
                None => return Err(u64::MAX),
                Some(&tat) if tat >= due => break tat,
                Some(_) => {
                    self.tats.pop_first();
                }
            }
        };
        let delay = tat.saturating_sub(tolerance).saturating_sub(now);
        if delay > max_wait {
            return Err(delay);
        }
        self.tats.pop_first();
        Ok(Grant { delay, tat })
    }

    #[inline]
    fn visit(&self) {
        #[cfg(test)]
        {
            self.visited.set(self.visited.get() + 1);
        }
    }
}

/// GCRA state: the theoretical arrival time, in one atomic, and the holes left by given-back
/// grants that were not the latest.
#[derive(Debug)]
#[allow(unreachable_pub)] // public to the loom tests under `--cfg loom`
pub struct Gcra {
    tat: AtomicU64,
    /// `holes.len()`, read without the lock: zero means there is nothing to look at.
    hole_count: AtomicUsize,
    holes: Mutex<Holes>,
    interval: u64,
    tolerance: u64,
}

#[allow(unreachable_pub)]
impl Gcra {
    /// `interval` nanoseconds between permits, `burst` permits at once. Both at least 1, and
    /// `interval × burst` must fit in a `u64` (the builder checks).
    pub fn new(interval: u64, burst: u64) -> Self {
        Gcra {
            tat: AtomicU64::new(0),
            hole_count: AtomicUsize::new(0),
            holes: Mutex::new(Holes::default()),
            interval,
            tolerance: interval.saturating_mul(burst),
        }
    }

    /// Takes one permit at `now` if it is free or will be within `max_wait` nanoseconds: the
    /// earliest hole if there is one in time, else the slot after the TAT. `Err(retry)`: none
    /// within `max_wait`; one is free at once after `retry` nanoseconds (`u64::MAX`: none within
    /// the clock's range). A grant takes either a hole, which no other grant holds, or a TAT later
    /// than every outstanding grant's, so no two outstanding grants share a slot.
    #[inline]
    pub fn acquire(&self, now: u64, max_wait: u64) -> Result<Grant, u64> {
        let mut hole_retry = u64::MAX;
        if self.hole_count.load(Ordering::Acquire) > 0 {
            let mut holes = self.lock_holes();
            self.fold(&mut holes);
            let taken = holes.take(now, self.interval, self.tolerance, max_wait);
            self.hole_count.store(holes.len(), Ordering::Release);
            match taken {
                Ok(grant) => return Ok(grant),
                Err(retry) => hole_retry = retry,
            }
        }
        let mut tat = self.tat.load(Ordering::Acquire);
        loop {
            let (new_tat, delay) = decide(tat, now, self.interval, self.tolerance, max_wait)
                .map_err(|retry| retry.min(hole_retry))?;
            match self
                .tat
                .compare_exchange_weak(tat, new_tat, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    return Ok(Grant {
                        delay,
                        tat: new_tat,
                    })
                }
                Err(current) => tat = current,
            }
        }
    }

    /// Gives back a grant that will not be used (its waiter was dropped). The latest grant moves
    /// the TAT back one interval; any other becomes a hole for the next request to take.
    pub fn refund(&self, granted: Grant) {
        let latest = self.take_back_if_latest(granted);
        if !latest || self.hole_count.load(Ordering::Acquire) > 0 {
            let mut holes = self.lock_holes();
            if !latest {
                holes.insert(granted.tat);
            }
            self.fold(&mut holes);
            self.hole_count.store(holes.len(), Ordering::Release);
        }
    }

    /// Gives back, at `now`, a grant whose slot may have passed (its call came too late to use
    /// it): as [`refund`](Self::refund), but a grant other than the latest whose slot has passed
    /// is not kept as a hole, which nobody could take and the next request would take the lock to
    /// drop.
    pub fn refund_at(&self, granted: Grant, now: u64) {
        if granted.tat >= now.saturating_add(self.interval) {
            return self.refund(granted);
        }
        if self.take_back_if_latest(granted) && self.hole_count.load(Ordering::Acquire) > 0 {
            let mut holes = self.lock_holes();
            self.fold(&mut holes);
            self.hole_count.store(holes.len(), Ordering::Release);
        }
    }

    /// Moves the TAT back one interval if `granted` is the latest grant; whether it was.
    fn take_back_if_latest(&self, granted: Grant) -> bool {
        self.tat
            .compare_exchange(
                granted.tat,
                granted.tat - self.interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Moves the TAT back over every hole at its end: a hole equal to the TAT is the latest slot
    /// reserved, and nobody holds it.
    fn fold(&self, holes: &mut Holes) {
        let mut tat = self.tat.load(Ordering::Acquire);
        while holes.contains(tat) {
            match self.tat.compare_exchange(
                tat,
                tat - self.interval,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    holes.remove(tat);
                    tat -= self.interval;
                }
                Err(current) => tat = current,
            }
        }
    }

    fn lock_holes(&self) -> MutexGuard<'_, Holes> {
        self.holes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The budget at `now`, read without taking or moving anything: the TAT, and the holes under
    /// their lock if there are any (so that none is counted both as a hole and in the TAT while
    /// it folds back).
    pub(crate) fn budget(&self, now: u64) -> Budget {
        if self.hole_count.load(Ordering::Acquire) > 0 {
            let holes = self.lock_holes();
            budget(self.tat(), Some(&holes), now, self.interval, self.tolerance)
        } else {
            budget(self.tat(), None, now, self.interval, self.tolerance)
        }
    }

    /// The current theoretical arrival time.
    pub fn tat(&self) -> u64 {
        self.tat.load(Ordering::Acquire)
    }

    pub(crate) fn interval(&self) -> u64 {
        self.interval
    }

    pub(crate) fn tolerance(&self) -> u64 {
        self.tolerance
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_interval() {
        let g = Gcra::new(100, 3);
        for _ in 0..3 {
            assert_eq!(g.acquire(0, 0).unwrap().delay, 0);
        }
        assert_eq!(g.acquire(0, 0), Err(100));
        assert_eq!(g.acquire(99, 0), Err(1));
        assert!(g.acquire(100, 0).is_ok());
        assert_eq!(g.acquire(100, 0), Err(100));
    }

    #[test]
    fn waiting_reserves_in_order() {
        let g = Gcra::new(100, 1);
        assert_eq!(g.acquire(0, 0).unwrap().delay, 0);
        let first = g.acquire(0, 250).unwrap();
        let second = g.acquire(0, 250).unwrap();
        assert_eq!((first.delay, second.delay), (100, 200));
        assert_eq!(g.acquire(0, 250), Err(300));
    }

    #[test]
    fn the_latest_grant_given_back_moves_the_tat_back() {
        let g = Gcra::new(100, 1);
        g.acquire(0, 0).unwrap();
        let _first = g.acquire(0, 250).unwrap();
        let second = g.acquire(0, 250).unwrap();
        g.refund(second);
        assert_eq!(g.tat(), 200);
        assert_eq!(
            g.acquire(0, 250),
            Ok(Grant {
                delay: 200,
                tat: 300
            })
        );
    }

    #[test]
    fn an_earlier_grant_given_back_is_a_hole_the_next_request_takes() {
        let g = Gcra::new(100, 1);
        g.acquire(0, 0).unwrap();
        let first = g.acquire(0, 250).unwrap();
        let _second = g.acquire(0, 250).unwrap();
        g.refund(first);
        assert_eq!(g.tat(), 300, "a later grant holds the TAT");
        // Waiting for it is within `max_wait` at once, and rejected calls learn of it.
        assert_eq!(g.acquire(50, 0), Err(50));
        assert_eq!(
            g.acquire(0, 250),
            Ok(Grant {
                delay: 100,
                tat: 200
            })
        );
        assert_eq!(g.acquire(0, 250), Err(300), "one hole, taken once");
    }

    #[test]
    fn holes_fold_back_into_the_tat() {
        let g = Gcra::new(100, 1);
        g.acquire(0, 0).unwrap();
        let waiters: Vec<Grant> = (0..4).map(|_| g.acquire(0, 1_000).unwrap()).collect();
        for grant in &waiters {
            g.refund(*grant);
        }
        assert_eq!(g.tat(), 100);
        assert_eq!(g.hole_count.load(Ordering::Relaxed), 0);
        assert_eq!(
            g.acquire(0, 1_000),
            Ok(Grant {
                delay: 100,
                tat: 200
            })
        );
    }

    #[test]
    fn a_hole_whose_slot_has_passed_is_dropped() {
        let g = Gcra::new(100, 1);
        g.acquire(0, 0).unwrap();
        let first = g.acquire(0, 1_000).unwrap();
        let _second = g.acquire(0, 1_000).unwrap();
        g.refund(first);
        // The hole's slot was at 100: at 150 it is gone, and the next slot is after the TAT.
        assert_eq!(
            g.acquire(150, 1_000),
            Ok(Grant {
                delay: 150,
                tat: 400
            })
        );
        assert_eq!(g.hole_count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_grant_whose_slot_has_passed_leaves_no_hole() {
        let g = Gcra::new(100, 1);
        g.acquire(0, 0).unwrap();
        let first = g.acquire(0, 1_000).unwrap();
        let second = g.acquire(0, 1_000).unwrap();
        let third = g.acquire(0, 1_000).unwrap();
        // `first`'s slot (100) has passed at 150: nobody could take it.
        g.refund_at(first, 150);
        assert_eq!(g.hole_count.load(Ordering::Relaxed), 0);
        // `second`'s (200) has not: it is kept for the next request.
        g.refund_at(second, 150);
        assert_eq!(g.hole_count.load(Ordering::Relaxed), 1);
        // The latest moves the TAT back, and the hole at its end folds into it.
        g.refund_at(third, 350);
        assert_eq!((g.tat(), g.hole_count.load(Ordering::Relaxed)), (200, 0));
    }

    /// 10 000 waiters at 10 000 a second, all but the latest given up oldest first (a timeout
    /// above the limiter drops them so): each becomes a hole. A quarter of the holes pass, as many
    /// are taken, earliest first, and the latest waiter given up folds the rest back into the
    /// TAT. Each hole costs a bounded number of operations on the ordered set of holes (each
    /// O(log n)), not a walk over every hole.
    #[test]
    fn holes_given_back_oldest_first_cost_a_bounded_number_of_looks_each() {
        const N: u64 = 10_000;
        const T: u64 = 100_000;
        let g = Gcra::new(T, 1);
        g.acquire(0, 0).unwrap();
        let grants: Vec<Grant> = (0..N).map(|_| g.acquire(0, u64::MAX).unwrap()).collect();
        let (latest, earlier) = grants.split_last().unwrap();
        for grant in earlier {
            g.refund(*grant);
        }
        assert_eq!(g.hole_count.load(Ordering::Relaxed), N as usize - 1);
        // At `N/4 × T` the holes of TAT up to `N/4 × T` have passed; the next `N/4` are taken.
        let now = N / 4 * T;
        for n in 1..=N / 4 {
            let grant = g.acquire(now, u64::MAX).unwrap();
            assert_eq!(grant.tat, (N / 4 + n) * T);
        }
        g.refund(*latest);
        assert_eq!(
            (g.tat(), g.hole_count.load(Ordering::Relaxed)),
            (N / 2 * T, 0)
        );
        let visited = g.lock_holes().visited.get();
        assert!(visited < 20 * N as usize, "{visited} holes looked at");
    }

    /// A burst of 10 000 and 10 000 waiters given up oldest first, all but the latest kept as
    /// holes: a reading under the holes' lock looks at one hole per permit it counts, plus one
    /// for the TAT, and counts no more than the burst. Once the holes have passed (the TAT alone
    /// fills the burst), a reading looks at no hole, however many wait to be dropped.
    #[test]
    fn a_reading_looks_at_no_more_holes_than_the_burst() {
        const B: u64 = 10_000;
        const T: u64 = 1_000;
        let g = Gcra::new(T, B);
        for _ in 0..B {
            assert_eq!(g.acquire(0, 0).unwrap().delay, 0);
        }
        let grants: Vec<Grant> = (0..B).map(|_| g.acquire(0, u64::MAX).unwrap()).collect();
        let (latest, earlier) = grants.split_last().unwrap();
        for grant in earlier {
            g.refund(*grant);
        }
        assert_eq!(g.hole_count.load(Ordering::Relaxed), B as usize - 1);
        let read = |now| {
            let before = g.lock_holes().visited.get();
            let budget = g.budget(now);
            (budget, g.lock_holes().visited.get() - before)
        };
        // At `(B − 1)·T` every hole is due and none has passed; the TAT holds the latest waiter.
        let (budget, visited) = read((B - 1) * T);
        assert_eq!(budget.available, B - 1);
        assert!(
            visited as u64 <= budget.available + 1,
            "{visited} holes looked at"
        );
        // Past the TAT every hole has passed: the reading counts the burst from the TAT alone.
        let (budget, visited) = read(latest.tat + T);
        assert_eq!(budget.available, B);
        assert!(visited <= 1, "{visited} holes looked at");
    }

    proptest::proptest! {
        #![proptest_config({
            let mut config = proptest::prelude::ProptestConfig::with_cases(512);
            if config.rng_seed == proptest::test_runner::RngSeed::Random {
                config.rng_seed = proptest::test_runner::RngSeed::Fixed(0x05EA_0A11);
            }
            config
        })]

        /// After random calls, waiters given up before their time and time passing, the budget
        /// is what calls find: `available` calls are admitted at once, no more (at most the
        /// burst), and the next is rejected with `next_in` as its retry, which the budget then
        /// shows. Reading it moves nothing.
        #[test]
        fn the_budget_is_what_calls_find(
            burst in 1u64..5,
            ops in proptest::collection::vec(
                (0u64..6, proptest::bool::weighted(0.3), proptest::prelude::any::<proptest::sample::Index>()),
                0..60,
            ),
        ) {
            const T: u64 = 100;
            let g = Gcra::new(T, burst);
            let mut now = 0;
            // Grants not yet due: their waiters may still give them up.
            let mut waiting: Vec<Grant> = Vec::new();
            for (advance, give_up, index) in ops {
                now += advance * T / 4;
                waiting.retain(|grant| grant.tat - g.tolerance() > now);
                if give_up && !waiting.is_empty() {
                    g.refund(waiting.swap_remove(index.index(waiting.len())));
                } else if let Ok(grant) = g.acquire(now, 4 * T) {
                    if grant.delay > 0 {
                        waiting.push(grant);
                    }
                }
            }
            let read = g.budget(now);
            proptest::prop_assert!(read.available <= burst);
            proptest::prop_assert_eq!(read.available == 0, read.next_in > 0);
            proptest::prop_assert_eq!(g.budget(now), read, "reading moves nothing");
            for n in 0..read.available {
                proptest::prop_assert_eq!(g.acquire(now, 0).map(|grant| grant.delay), Ok(0), "call {}", n);
            }
            let retry = g.acquire(now, 0).unwrap_err();
            if read.available == 0 {
                proptest::prop_assert_eq!(retry, read.next_in);
            }
            proptest::prop_assert_eq!(g.budget(now), Budget { available: 0, next_in: retry });
        }
    }

    /// A refund that moves the TAT back onto a hole another refund has just put aside, before
    /// either folds it, leaves a hole at the TAT until the next call folds it back: the reading
    /// folds it too, without moving it, and shows the permit the call finds.
    #[test]
    fn a_hole_at_the_tat_reads_as_acquire_finds_it() {
        let g = Gcra::new(100, 1);
        g.tat.store(200, Ordering::Release);
        g.lock_holes().insert(200);
        g.hole_count.store(1, Ordering::Release);
        let read = (g.budget(50), g.budget(150));
        assert_eq!((g.tat(), g.hole_count.load(Ordering::Relaxed)), (200, 1));
        assert_eq!(
            read,
            (
                Budget {
                    available: 0,
                    next_in: 50
                },
                Budget {
                    available: 1,
                    next_in: 0
                }
            )
        );
        assert_eq!(g.acquire(50, 0), Err(50));
        assert_eq!(g.acquire(150, 0).map(|g| g.delay), Ok(0));
        // With a burst of 2 the hole folded back is due: it is counted once, in the TAT.
        let g = Gcra::new(100, 2);
        g.tat.store(300, Ordering::Release);
        g.lock_holes().insert(300);
        g.hole_count.store(1, Ordering::Release);
        assert_eq!(
            g.budget(150),
            Budget {
                available: 1,
                next_in: 0
            }
        );
        assert_eq!(g.acquire(150, 0).map(|g| g.delay), Ok(0));
        assert_eq!(g.acquire(150, 0), Err(50));
    }

    #[test]
    fn a_slot_past_the_end_of_the_clock_is_refused_not_shared() {
        let interval = u64::MAX / 4;
        let g = Gcra::new(interval, 1);
        let grants: Vec<Grant> = (0..4).map(|_| g.acquire(0, u64::MAX).unwrap()).collect();
        let delays: Vec<u64> = grants.iter().map(|g| g.delay).collect();
        assert_eq!(delays, vec![0, interval, 2 * interval, 3 * interval]);
        assert_eq!(g.tat(), 4 * interval);
        assert_eq!(g.acquire(0, u64::MAX), Err(u64::MAX));
        assert_eq!(g.acquire(u64::MAX, u64::MAX), Err(u64::MAX));
        assert_eq!(g.tat(), 4 * interval, "a refused request moves nothing");
        g.refund(grants[2]);
        g.refund(grants[3]);
        assert_eq!(g.tat(), 2 * interval);
        assert_eq!(g.acquire(0, u64::MAX).unwrap().delay, 2 * interval);
    }
}
