//! Model checks of the lock-free accounting: the bulkhead's fair semaphore (fast paths racing the
//! FIFO hand-off and its wake-ups, cancellation, a waiter's `max_wait` timer and its deadline),
//! its debt of permits owed after an adaptive limit shrinks, and the GCRA compare-and-swap with
//! its refunds and holes.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p seawall-bulkhead --release --test loom`
#![cfg(loom)]

use loom::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
};
use seawall_bulkhead::__loom::{Gcra, Grant, Permits};
use std::task::{Context, Poll, Waker};
use tokio::time::Instant;

/// Explores every interleaving with up to three preemptions, which covers each compare-and-swap
/// losing a race to each other thread.
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Three callers race for a burst of two at one instant: exactly two win, and the TAT records
/// exactly two grants.
#[test]
fn gcra_grants_exactly_the_burst() {
    model(|| {
        let gcra = Arc::new(Gcra::new(100, 2));
        let granted = Arc::new(AtomicUsize::new(0));
        let racer = || {
            let gcra = gcra.clone();
            let granted = granted.clone();
            move || {
                if gcra.acquire(0, 0).is_ok() {
                    granted.fetch_add(1, Ordering::SeqCst);
                }
            }
        };
        let a = thread::spawn(racer());
        let b = thread::spawn(racer());
        racer()();
        a.join().unwrap();
        b.join().unwrap();
        assert_eq!(granted.load(Ordering::SeqCst), 2);
        assert_eq!(gcra.tat(), 200);
    });
}

/// A waiter racing with the refund of the grant before it: the refund either moves the TAT back
/// before the waiter's grant, which then takes that slot, or leaves a hole the next request takes.
/// Either way the two slots are each given once.
#[test]
fn gcra_waiter_and_refund() {
    model(|| {
        let gcra = Arc::new(Gcra::new(100, 1));
        let first = gcra.acquire(0, 1_000).unwrap();
        let waiter = {
            let gcra = gcra.clone();
            thread::spawn(move || gcra.acquire(0, 1_000).unwrap())
        };
        gcra.refund(first);
        let second = waiter.join().unwrap();
        let third = gcra.acquire(0, 1_000).unwrap();
        let mut tats = [second.tat, third.tat];
        tats.sort_unstable();
        assert_eq!(tats, [100, 200]);
        assert_eq!(gcra.tat(), 200);
    });
}

/// Two waiters given back at once, the earlier one (a hole unless the later one's refund comes
/// first) and the latest, while a request arrives: afterwards every slot within `max_wait` is
/// given exactly once, none lost and none shared.
#[test]
fn gcra_refunds_race_a_request() {
    model(|| {
        let gcra = Arc::new(Gcra::new(100, 1));
        let _running = gcra.acquire(0, 1_000).unwrap();
        let earlier = gcra.acquire(0, 1_000).unwrap();
        let latest = gcra.acquire(0, 1_000).unwrap();
        let refund = |grant: Grant| {
            let gcra = gcra.clone();
            thread::spawn(move || gcra.refund(grant))
        };
        let a = refund(earlier);
        let b = refund(latest);
        let arrived = gcra.acquire(0, 1_000).unwrap();
        a.join().unwrap();
        b.join().unwrap();
        let mut tats = vec![100, arrived.tat];
        while let Ok(grant) = gcra.acquire(0, 1_000) {
            tats.push(grant.tat);
        }
        tats.sort_unstable();
        assert_eq!(tats, (1..=11).map(|n| n * 100).collect::<Vec<u64>>());
    });
}

/// A call is queued while, with every permit held, the limit falls from 3 to 1 (nothing free to
/// forget, so 2 owed) racing a holder's release and a growth back to 2, both of which go through
/// the queue's lock to the hand-off, since someone waits. Whatever
/// the order, free permits plus held permits (the waiter's, if it was served) minus the debt is
/// the limit, and releases that both come after the shrink pay the debt rather than serve the
/// waiter; once every holder is done the limit is free again, nothing is owed and nobody waits.
#[test]
fn debt_conserves_permits() {
    model(|| {
        let shrunk = Arc::new(AtomicBool::new(false));
        let permits = Arc::new(Permits::new(3));
        for _ in 0..3 {
            assert!(permits.try_acquire());
        }
        let mut slot = permits.acquire_or_queue(None, None);
        assert!(slot.is_some(), "queued behind the holders");
        // Each returns whether the shrink was done before it released.
        let release_after_shrink = || {
            let (permits, shrunk) = (permits.clone(), shrunk.clone());
            thread::spawn(move || {
                let after = shrunk.load(Ordering::SeqCst);
                permits.release(1);
                after
            })
        };
        let releaser = release_after_shrink();
        // The limit grows by one.
        let grower = release_after_shrink();
        // The limit falls by two, racing both.
        permits.shrink(2);
        shrunk.store(true, Ordering::SeqCst);
        let both_after = releaser.join().unwrap() & grower.join().unwrap();

        // The limit is 2 now; two holders are left, and the waiter if it was served.
        let mut cx = Context::from_waker(Waker::noop());
        let mut served = permits.poll_acquire(&mut slot, &mut cx).is_ready();
        assert!(
            !(served && both_after),
            "a waiter served before the debt was paid"
        );
        let held = 2 + usize::from(served);
        assert_eq!(permits.available() + held - permits.owed(), 2);
        // The holders finish one by one; the waiter is served once what is owed is paid.
        for _ in 0..2 {
            permits.release(1);
            if !served {
                served = permits.poll_acquire(&mut slot, &mut cx).is_ready();
            }
        }
        assert!(served, "the waiter is served before the limit is all free");
        permits.release(1);
        assert_eq!(permits.owed(), 0);
        assert_eq!(permits.available(), 2);
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}

/// One permit; a holder releases it while a queued waiter and a fast-path newcomer race for it.
/// Never two holders at once, and the permit is back in the pool at the end.
#[test]
fn permits_hand_off_without_loss_or_overlap() {
    model(|| {
        let permits = Arc::new(Permits::new(1));
        let holders = Arc::new(AtomicUsize::new(0));
        assert!(permits.try_acquire());
        holders.fetch_add(1, Ordering::SeqCst);

        let waiter = {
            let permits = permits.clone();
            let holders = holders.clone();
            thread::spawn(move || {
                // One poll: either the permit at once, or a place in the queue, handed back.
                let mut cx = Context::from_waker(Waker::noop());
                let mut slot = None;
                if permits.poll_acquire(&mut slot, &mut cx).is_ready() {
                    assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    holders.fetch_sub(1, Ordering::SeqCst);
                    permits.release(1);
                }
                slot
            })
        };
        let newcomer = {
            let permits = permits.clone();
            let holders = holders.clone();
            thread::spawn(move || {
                if permits.try_acquire() {
                    assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    holders.fetch_sub(1, Ordering::SeqCst);
                    permits.release(1);
                }
            })
        };
        holders.fetch_sub(1, Ordering::SeqCst);
        permits.release(1);
        let mut slot = waiter.join().unwrap();
        newcomer.join().unwrap();
        if slot.is_some() {
            // Queued: every other holder is done, so the permit has been handed over.
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(
                permits.poll_acquire(&mut slot, &mut cx),
                Poll::Ready(Ok(()))
            );
            assert_eq!(holders.load(Ordering::SeqCst), 0, "two holders");
            permits.release(1);
        }
        assert_eq!(permits.available(), 1);
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}

/// A queued waiter gives up while the holder releases: whether the permit was already handed to
/// it or not, it ends up back in the pool.
#[test]
fn permits_cancelled_waiter_passes_the_permit_on() {
    model(|| {
        let permits = Arc::new(Permits::new(1));
        assert!(permits.try_acquire());
        let mut cx = Context::from_waker(Waker::noop());
        let mut slot = None;
        assert_eq!(permits.poll_acquire(&mut slot, &mut cx), Poll::Pending);
        let waiter = slot.take().unwrap();

        let releaser = {
            let permits = permits.clone();
            thread::spawn(move || permits.release(1))
        };
        if permits.cancel(&waiter) {
            permits.release(1);
        }
        releaser.join().unwrap();
        assert_eq!(permits.available(), 1);
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}

/// A waker that unparks a model thread.
struct Unpark(thread::Thread);

impl std::task::Wake for Unpark {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
}

/// Two waiters park until they are woken (loom reports a deadlock if a wake-up is lost) while
/// the limit grows from 1 to 3 with its permit held: A joined the queue before it was first
/// polled, as a call that waits does, and B queues as it is first polled. However a waiter's
/// poll (storing its waker, or queueing with it) interleaves with the hand-out (setting its flag
/// under the queue's lock and taking its waker, then waking it once the lock is released, one
/// waiter or both at once), each is woken to take its permit.
#[test]
fn permits_waiters_woken_after_the_hand_out_are_never_lost() {
    model(|| {
        let permits = Arc::new(Permits::new(1));
        assert!(permits.try_acquire());
        let a = permits.acquire_or_queue(None, None);
        assert!(a.is_some(), "queued behind the holder");
        let waiters: Vec<_> = [a, None]
            .into_iter()
            .map(|mut slot| {
                let permits = permits.clone();
                thread::spawn(move || {
                    let waker = Waker::from(std::sync::Arc::new(Unpark(thread::current())));
                    let mut cx = Context::from_waker(&waker);
                    let taken = loop {
                        match permits.poll_acquire(&mut slot, &mut cx) {
                            Poll::Ready(taken) => break taken,
                            Poll::Pending => thread::park(),
                        }
                    };
                    assert_eq!(taken, Ok(()));
                })
            })
            .collect();
        permits.release(2);
        for waiter in waiters {
            waiter.join().unwrap();
        }
        // The holder and both waiters hold the limit of 3.
        assert_eq!((permits.available(), permits.waiting()), (0, 0));
        permits.release(3);
        assert_eq!(permits.available(), 3);
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}

/// A waker that notes when its last handle is dropped.
struct NoteDrop(Arc<AtomicBool>);

impl std::task::Wake for NoteDrop {
    fn wake(self: std::sync::Arc<Self>) {}
}

impl Drop for NoteDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// A place polled with a new waker as the holder releases the one permit: the hand-out may take
/// the old waker just before the poll stores the new one, and the poll then finds the permit.
/// Whatever the order, a place that leaves with its permit keeps no waker of the poll: whoever
/// drops the last reference to it (a hand-out still holding the queue's lock, once the poll has
/// let go of its own) would otherwise drop that waker, the last handle to a task perhaps, under
/// the lock.
#[test]
fn a_place_that_leaves_as_its_waker_is_stored_keeps_no_waker() {
    model(|| {
        let permits = Arc::new(Permits::new(1));
        assert!(permits.try_acquire());
        let mut slot = permits.acquire_or_queue(Some(Waker::noop()), None);
        // A reference the hand-out or the poll would otherwise drop last.
        let place = slot.clone().expect("queued behind the holder");

        let releaser = {
            let permits = permits.clone();
            thread::spawn(move || permits.release(1))
        };
        let dropped = Arc::new(AtomicBool::new(false));
        let outcome = {
            let waker = Waker::from(std::sync::Arc::new(NoteDrop(dropped.clone())));
            permits.poll_acquire(&mut slot, &mut Context::from_waker(&waker))
        };
        releaser.join().unwrap();
        if outcome.is_pending() {
            // The hand-out came after the waker was stored, and took it.
            assert_eq!(
                permits.poll_acquire(&mut slot, &mut Context::from_waker(Waker::noop())),
                Poll::Ready(Ok(()))
            );
        } else {
            assert_eq!(outcome, Poll::Ready(Ok(())));
        }
        assert!(slot.is_none(), "the place has left with its permit");
        assert!(
            dropped.load(Ordering::SeqCst),
            "the place kept the waker it was polled with"
        );
        drop(place);
        permits.release(1);
        assert_eq!((permits.available(), permits.waiting()), (1, 0));
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}

/// A call queued before its first poll (no waker yet) keeps its turn: a release hands the permit
/// to it, never to a newcomer racing on the fast path, and its first poll finds the permit.
#[test]
fn permits_unpolled_place_keeps_its_turn() {
    model(|| {
        let permits = Arc::new(Permits::new(1));
        assert!(permits.try_acquire());
        let mut slot = permits.acquire_or_queue(None, None);
        assert!(slot.is_some(), "queued behind the holder");

        let releaser = {
            let permits = permits.clone();
            thread::spawn(move || permits.release(1))
        };
        let newcomer = {
            let permits = permits.clone();
            thread::spawn(move || permits.try_acquire())
        };
        releaser.join().unwrap();
        assert!(!newcomer.join().unwrap(), "the newcomer overtook the queue");
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            permits.poll_acquire(&mut slot, &mut cx),
            Poll::Ready(Ok(()))
        );
        assert!(slot.is_none());
        permits.release(1);
        assert_eq!(permits.available(), 1);
    });
}

/// The limit falls from 2 to 1 while both permits are held, racing one holder's release: once
/// the shrink is done, the other holder still running, no newcomer gets a permit, whether the
/// release came before the shrink, during it or after. When the last holder is done, the limit
/// of 1 is free and nothing is owed.
#[test]
fn shrink_racing_a_release_admits_nothing_beyond_the_new_limit() {
    model(|| {
        let permits = Arc::new(Permits::new(2));
        assert!(permits.try_acquire()); // the holder that stays
        assert!(permits.try_acquire()); // the holder that releases
        let shrinker = {
            let permits = permits.clone();
            thread::spawn(move || {
                permits.shrink(1);
                assert!(!permits.try_acquire(), "admitted beyond the new limit");
            })
        };
        let releaser = {
            let permits = permits.clone();
            thread::spawn(move || permits.release(1))
        };
        shrinker.join().unwrap();
        releaser.join().unwrap();
        assert!(!permits.try_acquire(), "admitted beyond the new limit");
        permits.release(1);
        assert_eq!(permits.owed(), 0);
        assert_eq!(permits.available(), 1);
    });
}

/// The limit falls from 2 to 1 while both permits are held and a call is queued, racing one
/// holder's release: the release pays the debt or, if it came first, goes to the waiter; never
/// both. Once every holder is done, the limit of 1 is free, nothing is owed and nobody waits.
#[test]
fn shrink_racing_a_release_to_a_waiter_conserves_permits() {
    model(|| {
        let permits = Arc::new(Permits::new(2));
        assert!(permits.try_acquire());
        assert!(permits.try_acquire());
        let mut slot = permits.acquire_or_queue(None, None);
        assert!(slot.is_some());
        let shrinker = {
            let permits = permits.clone();
            thread::spawn(move || permits.shrink(1))
        };
        let releaser = {
            let permits = permits.clone();
            thread::spawn(move || permits.release(1))
        };
        shrinker.join().unwrap();
        releaser.join().unwrap();
        let mut cx = Context::from_waker(Waker::noop());
        let granted = permits.poll_acquire(&mut slot, &mut cx).is_ready();
        // Held: the holder that stays, and the waiter if it was served.
        let held = 1 + usize::from(granted);
        assert_eq!(permits.available() + held - permits.owed(), 1);
        if !granted {
            // The holder that stays finishes: its permit goes to the waiter.
            permits.release(1);
            assert_eq!(
                permits.poll_acquire(&mut slot, &mut cx),
                Poll::Ready(Ok(()))
            );
        } else {
            permits.release(1);
        }
        // The last holder finishes.
        permits.release(1);
        assert_eq!(permits.owed(), 0);
        assert_eq!(permits.available(), 1);
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}

/// A waiting call's timer fires as the holder releases the one permit: the call waits as the
/// bulkhead's future does (`poll_acquire_until`: its place, then its timer, which fires at once,
/// then it leaves the queue). Whenever the release was done before the timer fired, even after the
/// place was polled, the call runs: a permit handed over is used, never passed on while the call
/// is rejected; a newcomer on the fast path never takes it; and the permit is held once at a time.
#[test]
fn a_timed_out_waiter_uses_a_permit_handed_over_as_it_leaves() {
    model(|| {
        let permits = Arc::new(Permits::new(1));
        let holders = Arc::new(AtomicUsize::new(1));
        let released = Arc::new(AtomicBool::new(false));
        assert!(permits.try_acquire());
        let mut slot = permits.acquire_or_queue(None, None);
        assert!(slot.is_some());

        let releaser = {
            let (permits, holders, released) = (permits.clone(), holders.clone(), released.clone());
            thread::spawn(move || {
                holders.fetch_sub(1, Ordering::SeqCst);
                permits.release(1);
                released.store(true, Ordering::SeqCst);
            })
        };
        let newcomer = {
            let (permits, holders) = (permits.clone(), holders.clone());
            thread::spawn(move || {
                if permits.try_acquire() {
                    assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    holders.fetch_sub(1, Ordering::SeqCst);
                    permits.release(1);
                }
            })
        };

        // The timer fires when polled, and notes whether the release was done by then.
        let released_at_timer = std::cell::Cell::new(false);
        let timer = std::pin::pin!(std::future::poll_fn(|_| {
            released_at_timer.set(released.load(Ordering::SeqCst));
            Poll::Ready(())
        }));
        let mut cx = Context::from_waker(Waker::noop());
        let Poll::Ready(outcome) = permits.poll_acquire_until(&mut slot, &mut cx, timer) else {
            panic!("the timer has fired");
        };
        assert!(slot.is_none(), "the call has left the queue");
        let ran = outcome.is_ok();
        assert!(
            ran || !released_at_timer.get(),
            "a permit handed over within the wait was not used"
        );
        if ran {
            assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
            holders.fetch_sub(1, Ordering::SeqCst);
            permits.release(1);
        }
        releaser.join().unwrap();
        newcomer.join().unwrap();
        assert_eq!(holders.load(Ordering::SeqCst), 0);
        assert_eq!((permits.available(), permits.waiting()), (1, 0));
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}

/// Behind the holder of the one permit wait B, whose deadline has already passed, and C, with
/// none. The holder releases while B's owner polls it once and then drops it, and C polls: the
/// permit passes over B (expired, or gone) to C, never to B; it is held once at a time; and
/// afterwards nobody waits, the permit is free and no waiter flag is left.
#[test]
fn an_expired_waiter_racing_its_cancel_is_never_handed_the_permit() {
    model(|| {
        let permits = Arc::new(Permits::new(1));
        let holders = Arc::new(AtomicUsize::new(1));
        assert!(permits.try_acquire());
        // B's deadline is now: it has passed by the time any permit is handed out.
        let mut b = permits.acquire_or_queue(None, Some(Instant::now()));
        let mut c = permits.acquire_or_queue(None, None);
        assert!(b.is_some() && c.is_some(), "queued behind the holder");
        assert_eq!(permits.waiting(), 2);

        let releaser = {
            let (permits, holders) = (permits.clone(), holders.clone());
            thread::spawn(move || {
                holders.fetch_sub(1, Ordering::SeqCst);
                permits.release(1);
            })
        };
        let canceller = {
            let permits = permits.clone();
            thread::spawn(move || {
                let mut cx = Context::from_waker(Waker::noop());
                if let Poll::Ready(outcome) = permits.poll_acquire(&mut b, &mut cx) {
                    assert!(outcome.is_err(), "an expired waiter was handed the permit");
                }
                if let Some(waiter) = b.take() {
                    assert!(
                        !permits.cancel(&waiter),
                        "an expired waiter was handed the permit"
                    );
                }
            })
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut take = |c: &mut _| match permits.poll_acquire(c, &mut cx) {
            Poll::Ready(outcome) => {
                assert_eq!(outcome, Ok(()));
                assert_eq!(holders.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                true
            }
            Poll::Pending => false,
        };
        let mut served = take(&mut c);
        releaser.join().unwrap();
        canceller.join().unwrap();
        if !served {
            served = take(&mut c);
        }
        assert!(served, "the permit went past C");
        holders.fetch_sub(1, Ordering::SeqCst);
        permits.release(1);
        assert_eq!((permits.available(), permits.waiting()), (1, 0));
        assert!(permits.try_acquire(), "no waiter flag left behind");
    });
}
