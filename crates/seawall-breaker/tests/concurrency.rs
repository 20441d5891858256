//! On a multi-thread runtime, callers racing for a HalfOpen's probe slots take every slot and
//! never more: `permitted_probes` calls reach the inner service at once, and the callers that
//! come while they are out are rejected.
//!
//! The run is bounded by a count of HalfOpen rounds, not by a clock. (The same bound on one
//! thread, in paused time, is `half_open_probes.rs`'s
//! `n_concurrent_probes_then_closed_with_a_fresh_window`.) A probe whose round never fills gives
//! up after a count of rejections and a generous wait, so a failing run ends too.
#![cfg(not(loom))]

mod common;

use common::rejected;
use seawall::{breaker::BreakerLayer, BoxError};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tower::{service_fn, Layer, Service, ServiceExt};

const PROBES: usize = 3;
/// Tasks calling the breaker in a loop, on four worker threads.
const CALLERS: usize = 16;
/// HalfOpen rounds to run.
const ROUNDS: usize = 20;
/// Rejections a probe waits for, once every probe of its round is at the dependency, before it
/// fails. A caller has one call at a time, so at most `CALLERS - 1` of them were asked before
/// the round's slots were all out: the others were turned away by a HalfOpen whose slots were
/// all taken.
const CONTESTED: usize = 2 * CALLERS;
/// Rejections after which a probe still waiting for the rest of its round gives up, if it has
/// also waited [`STARVED_FOR`]: only a HalfOpen that admits fewer than `PROBES` calls while it
/// rejects others gets there. The count alone is not enough: the other callers reject this many
/// in well under a second on a fast machine, and a loaded one can keep a worker thread that took
/// a slot from reaching the dependency about as long.
const STARVED: usize = 1_000_000;
/// The least time a probe waits for the rest of its round before it gives up: far longer than a
/// loaded machine keeps a runnable worker thread off every core.
const STARVED_FOR: Duration = Duration::from_secs(10);

/// What the callers and the dependency count.
#[derive(Default)]
struct Counts {
    /// Calls that reached the dependency.
    reached: AtomicUsize,
    /// Probes at the dependency now, and the most there at once.
    in_flight: AtomicUsize,
    most: AtomicUsize,
    /// Rounds in which `PROBES` probes were at the dependency at once.
    full_rounds: AtomicUsize,
    /// Probes that left after waiting out `CONTESTED` rejections.
    contested: AtomicUsize,
    /// Calls the breaker rejected.
    rejected: AtomicUsize,
    /// A probe gave up waiting for the rest of its round.
    starved: AtomicBool,
}

impl Counts {
    fn done(&self) -> bool {
        self.contested.load(Ordering::SeqCst) >= ROUNDS * PROBES
            || self.starved.load(Ordering::SeqCst)
    }

    /// A probe: waits until every probe of its round is at the dependency and `CONTESTED`
    /// callers have been rejected since, then fails. The first probe of a round to leave has
    /// had all of them beside it throughout. Gives up (starved) after `STARVED` rejections and
    /// `STARVED_FOR` without its round filling.
    async fn probe(&self) {
        let arrived = self.rejected.load(Ordering::SeqCst);
        let arrived_at = tokio::time::Instant::now();
        let round = self.full_rounds.load(Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        if now == PROBES {
            self.full_rounds.fetch_add(1, Ordering::SeqCst);
        }
        let mut full_since = None;
        loop {
            if self.done() {
                // A round begun after the last one, with too few callers left to fill it.
                break;
            }
            let rejected = self.rejected.load(Ordering::SeqCst);
            if full_since.is_none() && self.full_rounds.load(Ordering::SeqCst) > round {
                full_since = Some(rejected);
            }
            match full_since {
                Some(since) if rejected >= since + CONTESTED => {
                    self.contested.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                None if rejected >= arrived + STARVED && arrived_at.elapsed() >= STARVED_FOR => {
                    self.starved.store(true, Ordering::SeqCst);
                    break;
                }
                _ => tokio::task::yield_now().await,
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_callers_take_every_probe_slot_and_never_more() {
    // The dependency always fails, so after the first trip the breaker only ever moves between
    // Open and HalfOpen: every call that reaches it is a probe, and each round's probes reopen it.
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(1))
        .backoff(1.0, Duration::from_millis(1))
        .jitter(0.0)
        .permitted_probes(PROBES as u32)
        // Probes wait for each other for as long as it takes; a HalfOpen that gave up on them
        // would let the next round's probes in beside them.
        .max_wait_in_half_open(Duration::from_secs(24 * 60 * 60))
        .build()
        .unwrap();
    let counts = Arc::new(Counts::default());
    let inner = {
        let counts = counts.clone();
        service_fn(move |_: ()| {
            let counts = counts.clone();
            async move {
                if counts.reached.fetch_add(1, Ordering::SeqCst) > 0 {
                    counts.probe().await;
                }
                Err::<(), BoxError>("down".into())
            }
        })
    };
    let svc = layer.layer(inner);
    let _ = svc.clone().oneshot(()).await; // trips

    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let mut svc = svc.clone();
            let counts = counts.clone();
            tokio::spawn(async move {
                while !counts.done() {
                    if rejected(&svc.ready().await.unwrap().call(()).await) {
                        counts.rejected.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let most = counts.most.load(Ordering::SeqCst);
    assert!(
        most <= PROBES,
        "{most} calls reached the dependency at once"
    );
    assert!(
        !counts.starved.load(Ordering::SeqCst),
        "a HalfOpen rejected {STARVED} calls over {STARVED_FOR:?} with fewer than {PROBES} probes \
         at the dependency"
    );
    assert_eq!(most, PROBES);
    assert!(counts.full_rounds.load(Ordering::SeqCst) >= ROUNDS);
}
