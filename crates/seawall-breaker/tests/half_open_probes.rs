//! HalfOpen: N probes judged by rate, closing and re-opening, the bound on hung probes, growing
//! and jittered waits, the eager move to HalfOpen.
#![cfg(not(loom))]

mod common;

use common::{dependency, rejected, send, Call};
use seawall::breaker::{BreakerConfigBuilder, BreakerLayer, State, Transition};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tower::{Layer, Service, ServiceExt};

/// Trips on the first failure, waits 1 s, 3 probes, no jitter.
fn breaker() -> BreakerConfigBuilder {
    BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .backoff(2.0, Duration::from_secs(4))
        .jitter(0.0)
        .permitted_probes(3)
}

type Seen = Arc<Mutex<Vec<Transition>>>;

fn recorder() -> (Seen, impl Fn(&seawall::Name, &Transition) + Send + Sync) {
    let seen = Seen::default();
    let sink = seen.clone();
    (seen, move |_: &seawall::Name, t: &Transition| {
        sink.lock().unwrap().push(t.clone())
    })
}

#[tokio::test(start_paused = true)]
async fn n_concurrent_probes_then_closed_with_a_fresh_window() {
    let layer = breaker().build().unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    assert!(rejected(&send(&mut svc, Call::Ok).await));

    tokio::time::sleep(Duration::from_secs(1)).await;
    // Three probes in flight at once; a fourth call is rejected.
    let mut probes = Vec::new();
    for _ in 0..3 {
        probes.push(svc.ready().await.unwrap().call(Call::SlowOk(100)));
    }
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probes_in_use, 3);
    assert!(rejected(&send(&mut svc, Call::Ok).await));
    assert_eq!(
        reached.get(),
        4,
        "the rejected call did not reach the dependency"
    );

    for probe in probes {
        assert_eq!(probe.await.unwrap(), "ok");
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().calls, 0, "a fresh window");
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn the_verdict_is_taken_by_rate() {
    // Threshold 0.5: one failed probe of three closes, two re-open.
    let layer = breaker()
        .failure_rate_threshold(0.5)
        .minimum_calls(100)
        .sliding_window(seawall::breaker::SlidingWindow::count(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    for call in [Call::Fail, Call::Ok] {
        let _ = send(&mut svc, call).await;
        assert_eq!(
            handle.state(),
            State::HalfOpen,
            "no verdict before 3 results"
        );
    }
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed, "1 of 3 failed");

    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for call in [Call::Fail, Call::Ok, Call::Fail] {
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), State::Open, "2 of 3 failed");
}

#[tokio::test(start_paused = true)]
async fn a_hung_probe_is_bounded_by_max_wait_in_half_open() {
    let (seen, listener) = recorder();
    let layer = breaker()
        .permitted_probes(1)
        .max_wait_in_half_open(Duration::from_secs(2))
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(
        rejected(&send(&mut svc, Call::Ok).await),
        "the only slot is taken"
    );

    tokio::time::sleep(Duration::from_millis(1_999)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(handle.state(), State::Open, "re-opened after the bound");
    assert_eq!(
        seen.lock().unwrap().last().unwrap().wait,
        Some(Duration::from_secs(2)),
        "the next wait grew"
    );
    assert!(rejected(&send(&mut svc, Call::Ok).await));
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn the_open_wait_grows_is_capped_and_resets_on_close() {
    let (seen, listener) = recorder();
    let layer = breaker()
        .permitted_probes(1)
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    let mut waits = vec![handle.remaining_wait().unwrap()];
    for _ in 0..3 {
        tokio::time::sleep(waits.last().copied().unwrap()).await;
        let _ = send(&mut svc, Call::Fail).await; // the probe fails
        assert_eq!(handle.state(), State::Open);
        waits.push(handle.remaining_wait().unwrap());
    }
    let secs = |s| Duration::from_secs(s);
    assert_eq!(waits, [secs(1), secs(2), secs(4), secs(4)]);

    tokio::time::sleep(secs(4)).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(
        handle.remaining_wait(),
        Some(secs(1)),
        "back to the first wait"
    );

    let opened: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|t| t.to == State::Open)
        .map(|t| t.wait.unwrap())
        .collect();
    assert_eq!(opened, [secs(1), secs(2), secs(4), secs(4), secs(1)]);
}

#[tokio::test(start_paused = true)]
async fn jittered_waits_are_seeded_and_stay_in_range() {
    async fn waits(seed: u64) -> Vec<Duration> {
        let layer = breaker()
            .permitted_probes(1)
            .jitter(0.5)
            .seed(seed)
            .backoff(2.0, Duration::from_secs(8))
            .build()
            .unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(dependency().0);
        let _ = send(&mut svc, Call::Fail).await;
        let mut waits = Vec::new();
        for _ in 0..5 {
            let wait = handle.remaining_wait().unwrap();
            waits.push(wait);
            tokio::time::sleep(wait + Duration::from_millis(1)).await;
            let _ = send(&mut svc, Call::Fail).await;
        }
        waits
    }
    let a = waits(7).await;
    assert_eq!(a, waits(7).await, "same seed, same waits");
    assert_ne!(a, waits(8).await);
    for (wait, full) in a.iter().zip([1, 2, 4, 8, 8]) {
        let full = Duration::from_secs(full);
        assert!(
            *wait <= full && *wait >= full / 2,
            "{wait:?} within [{:?}, {full:?}]",
            full / 2
        );
    }
}

#[tokio::test(start_paused = true)]
async fn eager_half_open_moves_on_a_timer() {
    let (seen, listener) = recorder();
    let layer = breaker()
        .eager_half_open(true)
        .max_wait_in_half_open(Duration::from_secs(3))
        .on_transition(listener)
        .build()
        .unwrap();
    let mut svc = layer.layer(dependency().0);
    let mut states = layer.handle().subscribe();
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(*states.borrow_and_update(), State::Open);

    // No call arrives; the timer moves the breaker and listeners see it.
    states.changed().await.unwrap();
    assert_eq!(*states.borrow_and_update(), State::HalfOpen);
    // Without a probe there is nothing to give up on: no further move, however long it waits.
    let quiet = tokio::time::timeout(Duration::from_secs(60), states.changed()).await;
    assert!(quiet.is_err(), "no probe, no bound");
    // A probe that hangs starts the bound, and the timer re-opens the breaker 3 s later.
    let hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    let start = tokio::time::Instant::now();
    states.changed().await.unwrap();
    assert_eq!(
        *states.borrow_and_update(),
        State::Open,
        "no verdict within 3 s of the probe"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    let seen: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(
        seen,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Open)
        ]
    );
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn is_call_permitted_tells_whether_a_call_would_be_let_through() {
    let layer = breaker().build().unwrap();
    let handle = layer.handle();
    let (inner, _) = dependency();
    let mut svc = layer.layer(inner);
    assert!(svc.is_call_permitted());
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    assert!(!svc.is_call_permitted());

    // Once the wait is over a call would be let through (it moves the breaker to HalfOpen, as
    // asking for the state does; asking whether a call is permitted does not, see below).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(svc.is_call_permitted());
    assert_eq!(handle.state(), State::HalfOpen);
    let mut probes = Vec::new();
    for taken in 1..=3 {
        probes.push(svc.ready().await.unwrap().call(Call::SlowOk(100)));
        assert_eq!(
            svc.is_call_permitted(),
            taken < 3,
            "{taken} of 3 slots taken"
        );
    }
    assert_eq!(handle.snapshot().probes_in_use, 3);
    for probe in probes {
        probe.await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);
    assert!(svc.is_call_permitted());

    handle.force_open();
    assert!(!svc.is_call_permitted());
    handle.metrics_only();
    assert!(svc.is_call_permitted());
}

/// `is_call_permitted` answers as the next call would find the breaker, and applies no deadline
/// itself: an Open whose wait is over stays Open, a HalfOpen past its bound stays HalfOpen, and no
/// listener runs, until something that does apply them (a call, `state()`) comes along.
#[tokio::test(start_paused = true)]
async fn asking_whether_a_call_is_permitted_applies_no_deadline() {
    let (seen, listener) = recorder();
    let layer = breaker()
        .max_wait_in_half_open(Duration::from_secs(1))
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let watched = handle.subscribe();
    let changes = || {
        seen.lock()
            .unwrap()
            .iter()
            .map(|t| (t.from, t.to))
            .collect::<Vec<_>>()
    };
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(changes(), [(State::Closed, State::Open)]);

    // The wait is over: a call would be let through, and the breaker is still Open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(svc.is_call_permitted());
    assert_eq!(*watched.borrow(), State::Open);
    assert_eq!(changes(), [(State::Closed, State::Open)]);

    // A probe in flight past the bound: the breaker would reopen, and is still HalfOpen.
    let probe = svc.ready().await.unwrap().call(Call::Hang);
    assert_eq!(*watched.borrow(), State::HalfOpen);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!svc.is_call_permitted());
    assert_eq!(*watched.borrow(), State::HalfOpen);
    assert_eq!(
        changes(),
        [(State::Closed, State::Open), (State::Open, State::HalfOpen)]
    );
    assert_eq!(handle.state(), State::Open);
    drop(probe);
}

/// `holds_permit` tells whether a service polled ready holds a permit its breaker still honours:
/// in HalfOpen a service holding one of the probe slots does, though `is_call_permitted` says no
/// once every slot is taken; HalfOpen's bound running out, or any change of state, makes the
/// permit stale.
#[tokio::test(start_paused = true)]
async fn holds_permit_tells_whether_a_reserved_permit_is_still_honoured() {
    let layer = breaker()
        .max_wait_in_half_open(Duration::from_secs(2))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    assert!(!svc.holds_permit(), "not polled ready");
    svc.ready().await.unwrap();
    assert!(svc.holds_permit(), "admitted in Closed");
    assert!(!svc.clone().holds_permit(), "a clone shares no reservation");
    assert!(svc.call(Call::Fail).await.is_err());
    assert!(!svc.holds_permit(), "used by the call");
    assert_eq!(handle.state(), State::Open);
    svc.ready().await.unwrap();
    assert!(!svc.holds_permit(), "rejected while Open");

    // HalfOpen: three services each hold a probe slot; every slot is taken, so no call would be
    // let through, but each of theirs would.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut probes: Vec<_> = (0..3).map(|_| svc.clone()).collect();
    for probe in &mut probes {
        probe.ready().await.unwrap();
    }
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probes_in_use, 3);
    for probe in &probes {
        assert!(probe.holds_permit());
        assert!(!probe.is_call_permitted());
    }
    svc.ready().await.unwrap();
    assert!(!svc.holds_permit(), "rejected with every slot taken");

    // The bound runs out 2 s after the first probe: the slots are stale, though nothing has
    // applied the change yet.
    tokio::time::sleep(Duration::from_millis(1_999)).await;
    assert!(probes[0].holds_permit(), "1 ms before the bound");
    tokio::time::sleep(Duration::from_millis(1)).await;
    for probe in &probes {
        assert!(!probe.holds_permit(), "past the bound");
    }
    assert_eq!(handle.state(), State::Open);

    // A change of state makes a permit stale, even one to Closed, where a call is permitted; so
    // does a reset that changes no state.
    handle.reset();
    svc.ready().await.unwrap();
    assert!(svc.holds_permit());
    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    assert!(!svc.holds_permit(), "reserved before a reset while Closed");
    assert!(svc.is_call_permitted());
    svc.ready().await.unwrap();
    assert!(svc.holds_permit());
    handle.force_open();
    assert!(!svc.holds_permit(), "forced open");
    handle.reset();
    assert!(!svc.holds_permit(), "reserved before the reset");
    assert!(svc.is_call_permitted());
    svc.ready().await.unwrap();
    assert!(svc.holds_permit(), "admitted again");
    drop(probes);
}

/// A client that calls a healthy dependency rarely, fewer than `permitted_probes` calls per
/// `max_wait_in_half_open`, still closes the breaker: the bound only runs while a probe is in
/// flight, so successful probes far apart are not thrown away, nor counted as a trip.
#[tokio::test(start_paused = true)]
async fn a_trickle_of_successful_probes_closes_the_breaker() {
    let layer = breaker()
        .max_wait_in_half_open(Duration::from_secs(30))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_secs(20)).await;
        if i < 3 {
            assert_eq!(
                handle.snapshot().trips,
                1,
                "no trip counted before call {i}"
            );
        }
        assert!(
            !rejected(&send(&mut svc, Call::Ok).await),
            "call {i} rejected"
        );
    }
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_that_ran_out_of_time_unattended_reopens_as_of_its_bound() {
    // HalfOpen for at most 2 s, 3 probes; Open for 1 s, then 2 s.
    let layer = breaker()
        .max_wait_in_half_open(Duration::from_secs(2))
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // One probe of three succeeds and another hangs; then no other traffic (a balancer
    // skipping the endpoint, a quiet night).
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    let _hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    // The HalfOpen ran out 2 s in: it counts as Open from then, for the next wait (2 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !svc.is_call_permitted(),
        "1 s into the Open wait that began when the HalfOpen ran out"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        svc.is_call_permitted(),
        "the wait is over: a filter that skips refusing breakers must not strand this one"
    );
    let reached_before = reached.get();
    assert_eq!(
        send(&mut svc, Call::Ok).await.unwrap(),
        "ok",
        "let through as a probe"
    );
    assert_eq!(reached.get(), reached_before + 1);
    assert_eq!(handle.state(), State::HalfOpen);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_that_ran_out_unattended_is_judged_with_its_drawn_wait() {
    // As above, with the Open wait jittered: 2 s after the HalfOpen drawn from [1 s, 2 s].
    let (seen, listener) = recorder();
    let layer = breaker()
        .max_wait_in_half_open(Duration::from_secs(2))
        .jitter(0.5)
        .seed(9)
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    let _hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);

    // The HalfOpen runs out 2 s after its probes; 1.5 s later the shortest wait is over, the
    // drawn one is not.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let permitted = svc.is_call_permitted();
    let reached_before = reached.get();
    let admitted = !rejected(&send(&mut svc, Call::Ok).await);
    let drawn = seen
        .lock()
        .unwrap()
        .iter()
        .rfind(|t| t.to == State::Open)
        .and_then(|t| t.wait)
        .unwrap();
    assert!(
        drawn > Duration::from_millis(1_500),
        "the seed draws a wait longer than 1.5 s: {drawn:?}"
    );
    assert_eq!(
        permitted, admitted,
        "is_call_permitted agrees with the call, 1.5 s into a wait of {drawn:?}"
    );
    assert!(!admitted, "rejected 1.5 s into a wait of {drawn:?}");
    assert_eq!(reached.get(), reached_before);

    // Once the drawn wait is over, both say yes.
    tokio::time::sleep(drawn - Duration::from_millis(1_500)).await;
    assert!(svc.is_call_permitted());
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::HalfOpen);
}

#[test]
fn a_clock_past_the_deadline_range_does_not_spin() {
    use seawall::breaker::{state::Machine, BreakerConfig};

    // Deadlines are whole milliseconds in 40 bits (about 34.8 years from the machine's first
    // reading of its clock). A clock with any origin (a caller's Unix-epoch nanoseconds, say)
    // keeps the Open wait, and one that runs past the range must still get answers.
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .build_config()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let machine = Machine::new(&config);
        let fail_at = |now: u64| {
            let permit = machine.acquire(|| now, &()).unwrap();
            machine.complete(
                permit,
                seawall::core::Outcome::Failure,
                Duration::ZERO,
                || now,
                &(),
            );
        };
        let now = 1_765_000_000_000_000_000u64;
        fail_at(now);
        let waiting = machine.acquire(|| now + 1_000_000, &()).map(|p| p.kind());
        let later = now + 10_000_000_000;
        let first = machine.acquire(|| later, &()).map(|p| p.kind());
        // 35 years on, past the deadline range.
        let far = now + 35 * 365 * 24 * 3600 * 1_000_000_000;
        machine.reset(far, &());
        fail_at(far);
        let far_first = machine.acquire(|| far + 1, &()).map(|p| p.kind());
        tx.send((waiting.ok(), first.ok(), far_first.ok())).unwrap();
    });
    let answers = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the machine answered");
    assert_eq!(answers.0, None, "1 ms into the Open wait: {answers:?}");
    assert!(
        answers.1.is_some(),
        "past its wait, a call is let through: {answers:?}"
    );
    assert!(
        answers.2.is_some(),
        "past the deadline range, a call is let through: {answers:?}"
    );
}

#[test]
fn a_clock_with_any_origin_keeps_the_waits() {
    use seawall::breaker::{
        state::{Machine, PermitKind},
        BreakerConfig,
    };
    use seawall::core::Outcome;

    const MS: u64 = 1_000_000;
    let machine = Machine::new(
        &BreakerConfig::builder()
            .consecutive_failures(1)
            .wait_duration(Duration::from_secs(1))
            .jitter(0.0)
            .permitted_probes(1)
            .max_wait_in_half_open(Duration::from_secs(2))
            .build_config()
            .unwrap(),
    );
    // Unix-epoch nanoseconds.
    let t0 = 1_765_000_000_000_000_000u64;
    let permit = machine.acquire(|| t0, &()).unwrap();
    machine.complete(permit, Outcome::Failure, Duration::ZERO, || t0, &());
    assert_eq!(machine.state(), State::Open);
    assert_eq!(
        machine.deadline(),
        Some(t0 + 1_000 * MS),
        "on the caller's clock"
    );

    let rejected = machine.acquire(|| t0 + MS, &()).unwrap_err();
    assert_eq!(rejected.retry_at(), Some(t0 + 1_000 * MS));
    assert!(!machine.permits(|| t0 + MS));
    assert!(machine.acquire(|| t0 + 999 * MS, &()).is_err());

    // The wait is over: the next call probes, and hangs.
    assert!(machine.permits(|| t0 + 1_000 * MS));
    let probe = machine.acquire(|| t0 + 1_000 * MS, &()).unwrap();
    assert_eq!(probe.kind(), PermitKind::Probe);
    assert_eq!(
        machine.deadline(),
        Some(t0 + 3_000 * MS),
        "bounded from the probe"
    );
    assert_eq!(machine.tick(t0 + 2_999 * MS, &()), State::HalfOpen);
    // The bound runs out: open again, with the next wait (2 s) from the bound.
    assert_eq!(machine.tick(t0 + 3_000 * MS, &()), State::Open);
    assert_eq!(machine.snapshot(t0 + 3_000 * MS).trips, 2);
    assert_eq!(machine.deadline(), Some(t0 + 5_000 * MS));
    assert!(machine.acquire(|| t0 + 4_999 * MS, &()).is_err());
    machine.complete(
        probe,
        Outcome::Success,
        Duration::ZERO,
        || t0 + 5_000 * MS,
        &(),
    );
    assert_eq!(machine.state(), State::Open, "a late probe decides nothing");
    let next = machine.acquire(|| t0 + 5_000 * MS, &()).unwrap();
    assert_eq!(next.kind(), PermitKind::Probe);
}

/// One probe, trips on the first failure, waits 1 s growing to 8 s, HalfOpen bound 2 s.
/// The state changes a recorder saw, in order.
fn moves(seen: &Seen) -> Vec<(State, State)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to))
        .collect()
}

/// The next call reaches the dependency as the probe, and its success closes the breaker.
async fn the_next_call_probes_and_closes<S>(
    svc: &mut S,
    reached: &common::Reached,
    handle: &seawall::breaker::BreakerHandle,
) where
    S: Service<Call, Response = &'static str, Error = seawall::BoxError>,
{
    let before = reached.get();
    assert_eq!(send(svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(reached.get(), before + 1, "the next call is the probe");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().trips, 0);
}

fn idle_breaker() -> BreakerConfigBuilder {
    breaker()
        .permitted_probes(1)
        .backoff(2.0, Duration::from_secs(8))
        .max_wait_in_half_open(Duration::from_secs(2))
}

#[tokio::test(start_paused = true)]
async fn an_idle_eager_half_open_waits_for_its_probe_without_tripping() {
    let (seen, listener) = recorder();
    let layer = idle_breaker()
        .eager_half_open(true)
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().trips, 1);

    // No call for ten minutes: the timer moves the breaker to HalfOpen once, and there it stays.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(
        handle.snapshot().trips,
        1,
        "no probe was taken, none failed"
    );
    assert_eq!(handle.remaining_wait(), None, "no probe to bound yet");
    assert_eq!(
        moves(&seen),
        [(State::Closed, State::Open), (State::Open, State::HalfOpen)]
    );

    // The first call is the probe, and its success closes the breaker.
    the_next_call_probes_and_closes(&mut svc, &reached, &handle).await;
}

#[tokio::test(start_paused = true)]
async fn an_idle_breaker_polled_by_a_dashboard_does_not_escalate() {
    let layer = idle_breaker().build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;

    // A dashboard asks every second; each look applies a deadline that has passed.
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let snapshot = handle.snapshot();
        assert_eq!(snapshot.trips, 1, "at {:?}", snapshot.time_in_state);
    }
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(svc.is_call_permitted());
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_half_open_bound_runs_from_the_first_probe() {
    let (seen, listener) = recorder();
    let layer = breaker()
        .permitted_probes(2)
        .max_wait_in_half_open(Duration::from_secs(2))
        .eager_half_open(true)
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), State::HalfOpen);

    // Quiet for 5 s, then a probe that hangs: the bound starts with it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    assert_eq!(handle.snapshot().probes_in_use, 1);
    assert_eq!(handle.remaining_wait(), Some(Duration::from_secs(2)));
    // A second probe does not move the bound.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    assert_eq!(handle.remaining_wait(), Some(Duration::from_secs(1)));

    // The eager timer re-opens the breaker at the bound, without anyone asking.
    let mut states = handle.subscribe();
    states.borrow_and_update();
    states.changed().await.unwrap();
    assert_eq!(*states.borrow_and_update(), State::Open);
    assert_eq!(handle.snapshot().trips, 2);
    let last = seen.lock().unwrap().last().unwrap().clone();
    assert_eq!((last.from, last.to), (State::HalfOpen, State::Open));
    assert_eq!(
        last.wait,
        Some(Duration::from_secs(2)),
        "the next wait grew"
    );
    hung.abort();
    second.abort();
}

/// Trips, waits into HalfOpen, then reserves the only probe on a clone of `svc` and drops the
/// clone, as a balancer does with a candidate it did not pick: the slot is handed back without a
/// result.
async fn reserve_and_drop_the_probe<S>(svc: &S, handle: &seawall::breaker::BreakerHandle)
where
    S: Service<Call, Response = &'static str, Error = seawall::BoxError> + Clone,
{
    let mut candidate = svc.clone();
    candidate.ready().await.unwrap();
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probes_in_use, 1);
    drop(candidate);
    assert_eq!(handle.snapshot().probes_in_use, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_leaves_an_eager_half_open_without_a_bound() {
    let (seen, listener) = recorder();
    let layer = idle_breaker()
        .eager_half_open(true)
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), State::HalfOpen);

    reserve_and_drop_the_probe(&svc, &handle).await;
    assert_eq!(handle.remaining_wait(), None, "no probe in flight to bound");

    // The timer set for the bound fires and finds nothing to do; the breaker stays HalfOpen.
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(
        handle.snapshot().trips,
        1,
        "the cancelled probe did not fail"
    );
    assert_eq!(
        moves(&seen),
        [(State::Closed, State::Open), (State::Open, State::HalfOpen)]
    );

    the_next_call_probes_and_closes(&mut svc, &reached, &handle).await;
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_leaves_a_lazy_half_open_without_a_bound() {
    let layer = idle_breaker().build().unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The reservation moves the breaker to HalfOpen and takes the probe; the drop hands it back.
    reserve_and_drop_the_probe(&svc, &handle).await;
    assert_eq!(handle.remaining_wait(), None, "no probe in flight to bound");

    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(
        handle.snapshot().trips,
        1,
        "the cancelled probe did not fail"
    );
    assert!(svc.is_call_permitted());

    the_next_call_probes_and_closes(&mut svc, &reached, &handle).await;
}

#[tokio::test(start_paused = true)]
async fn an_ignored_probe_leaves_the_half_open_without_a_bound() {
    let layer = idle_breaker().build_with(common::ignoring).unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(send(&mut svc, Call::Ignore).await.unwrap(), "ignore");
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probes_in_use, 0);
    assert_eq!(handle.remaining_wait(), None, "no probe in flight to bound");

    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().trips, 1);
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn the_probe_after_a_cancelled_one_starts_a_fresh_bound() {
    let layer = idle_breaker().eager_half_open(true).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    // The timer moves the breaker to HalfOpen at 1 s; the first probe comes later.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    // A bound started 1 s before the next probe, then stopped: the timer set for it wakes
    // before the new bound and must wait on for it.
    reserve_and_drop_the_probe(&svc, &handle).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    assert_eq!(handle.remaining_wait(), Some(Duration::from_secs(2)));

    let mut states = handle.subscribe();
    states.borrow_and_update();
    tokio::time::timeout(Duration::from_secs(60), states.changed())
        .await
        .expect("the timer re-opens the breaker")
        .unwrap();
    assert_eq!(*states.borrow_and_update(), State::Open);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "2 s after the hung probe"
    );
    assert_eq!(handle.snapshot().trips, 2);
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn probes_reserved_and_handed_back_again_and_again_keep_one_timer() {
    let layer = idle_breaker().eager_half_open(true).build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), State::HalfOpen);

    // Every reservation starts a bound; every drop stops it.
    let runtime = tokio::runtime::Handle::current();
    for _ in 0..500 {
        reserve_and_drop_the_probe(&svc, &handle).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert!(
        runtime.metrics().num_alive_tasks() <= 1,
        "{} timer tasks",
        runtime.metrics().num_alive_tasks()
    );
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(runtime.metrics().num_alive_tasks(), 0, "no bound, no timer");
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().trips, 1);
}
