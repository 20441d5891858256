//! The manual states: ForcedOpen, Disabled (forced closed), MetricsOnly, and reset.
#![cfg(not(loom))]

mod common;

use common::{dependency, rejected, send, Call};
use seawall::breaker::{BreakerHandle, BreakerLayer, State, Transition};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tower::Layer;

#[tokio::test(start_paused = true)]
async fn forced_open_rejects_everything_until_changed() {
    let layer = BreakerLayer::new();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    handle.force_open();
    assert_eq!(handle.state(), State::ForcedOpen);
    for _ in 0..3 {
        assert!(rejected(&send(&mut svc, Call::Ok).await));
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    assert_eq!(
        handle.state(),
        State::ForcedOpen,
        "no wait ends a forced open"
    );
    assert_eq!(reached.get(), 0);
    assert_eq!(handle.snapshot().rejected, 3);
    assert_eq!(handle.remaining_wait(), None);

    handle.reset();
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn disabled_passes_everything_and_records_nothing() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    handle.disable();
    assert_eq!(handle.state(), State::Disabled);
    for _ in 0..10 {
        assert!(!rejected(&send(&mut svc, Call::Fail).await));
    }
    assert_eq!(reached.get(), 10);
    assert_eq!(handle.state(), State::Disabled);
    assert_eq!(handle.snapshot().calls, 0);

    // force_closed is the same state under Hystrix's name.
    handle.force_open();
    handle.force_closed();
    assert_eq!(handle.state(), State::Disabled);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_records_and_reports_but_never_rejects() {
    let seen = Arc::new(Mutex::new(Vec::<Transition>::new()));
    let sink = seen.clone();
    let layer = BreakerLayer::builder()
        .consecutive_failures(2)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .on_transition(move |_: &seawall::Name, t: &Transition| {
            sink.lock().unwrap().push(t.clone())
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    handle.metrics_only();
    assert_eq!(handle.state(), State::MetricsOnly);

    for _ in 0..2 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, State::MetricsOnly);
    assert_eq!(snapshot.machine_state, State::Open, "it would be open");
    assert_eq!(handle.remaining_wait(), None, "but it holds back no call");

    // Would be rejected: goes through, counted as a would-be rejection.
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(reached.get(), 3);
    assert_eq!(handle.snapshot().would_have_rejected, 1);
    assert_eq!(handle.snapshot().rejected, 0);

    // Its would-be HalfOpen probe succeeds: it would close.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.snapshot().machine_state, State::Closed);

    let seen: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to, t.metrics_only))
        .collect();
    assert_eq!(
        seen,
        [
            (State::Closed, State::MetricsOnly, false),
            (State::Closed, State::Open, true),
            (State::Open, State::HalfOpen, true),
            (State::HalfOpen, State::Closed, true),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn reset_closes_with_a_fresh_window() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for _ in 0..3 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Open);
    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    let snapshot = handle.snapshot();
    assert_eq!(
        (
            snapshot.calls,
            snapshot.consecutive_failures,
            snapshot.trips
        ),
        (0, 0, 0)
    );
    // Two failures do not trip: the run started again.
    for _ in 0..2 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Closed);
}

/// A reset on a schedule, of a breaker that is Closed: the window is emptied and a new generation
/// starts, but the state does not change, so nothing reports a transition (as Resilience4j's
/// reset of a CLOSED breaker publishes none).
#[tokio::test(start_paused = true)]
async fn reset_of_a_closed_breaker_empties_the_window_without_a_transition() {
    use seawall_core::metrics::{self as names, testing::TestRecorder};

    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let seen = Arc::new(Mutex::new(Vec::<Transition>::new()));
    let sink = seen.clone();
    let layer = BreakerLayer::builder()
        .name("scheduled")
        .consecutive_failures(3)
        .on_transition(move |_: &seawall::Name, t: &Transition| {
            sink.lock().unwrap().push(t.clone())
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut states = handle.subscribe();
    let mut svc = layer.layer(dependency().0);
    for call in [Call::Ok, Call::Fail, Call::Fail] {
        let _ = send(&mut svc, call).await;
    }
    let before = handle.snapshot();
    assert_eq!((before.calls, before.consecutive_failures), (3, 2));

    handle.reset();
    assert_eq!(handle.state(), State::Closed);
    let after = handle.snapshot();
    assert_eq!(
        (after.calls, after.failures, after.consecutive_failures),
        (0, 0, 0),
        "the calls recorded before the reset are gone"
    );
    assert_eq!(after.generation, before.generation + 1, "a new generation");
    assert_eq!(*seen.lock().unwrap(), [], "no transition for listeners");
    assert_eq!(recorder.counter(names::BREAKER_TRANSITIONS, "scheduled"), 0);
    assert!(!states.has_changed().unwrap());

    // The run of failures started again: two more do not trip, a third does, and that change is
    // reported.
    for _ in 0..2 {
        let _ = send(&mut svc, Call::Fail).await;
    }
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    let seen: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to))
        .collect();
    assert_eq!(seen, [(State::Closed, State::Open)]);
    assert_eq!(recorder.counter(names::BREAKER_TRANSITIONS, "scheduled"), 1);
    assert_eq!(*states.borrow_and_update(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn metrics_only_counts_a_would_be_rejection_once_per_call_made() {
    use tower::{Service, ServiceExt};

    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, _reached) = dependency();
    let mut svc = layer.layer(inner);
    handle.metrics_only();
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().machine_state, State::Open);

    // Polled ready and dropped without a call (a balancer's spare candidate, say): no call was
    // made, so none would have been rejected.
    let mut spare = svc.clone();
    spare.ready().await.unwrap();
    drop(spare);
    assert_eq!(handle.snapshot().would_have_rejected, 0);

    // Polled ready, then the would-be state changes (closes and opens again) before the call:
    // still one call.
    let mut once = svc.clone();
    once.ready().await.unwrap();
    handle.reset();
    handle.metrics_only();
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().machine_state, State::Open);
    let _ = once.call(Call::Ok).await;
    assert_eq!(handle.snapshot().would_have_rejected, 1);
}

/// Asking for the manual state the breaker is in already changes nothing: a second
/// `metrics_only()` keeps the window and the generation (as do a second `force_open()` and
/// `disable()`); `reset()` then `metrics_only()` starts afresh.
#[tokio::test(start_paused = true)]
async fn a_repeated_manual_change_keeps_the_window_and_the_generation() {
    let seen = Arc::new(Mutex::new(Vec::<Transition>::new()));
    let sink = seen.clone();
    let layer = BreakerLayer::builder()
        .consecutive_failures(5)
        .on_transition(move |_: &seawall::Name, t: &Transition| {
            sink.lock().unwrap().push(t.clone())
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    handle.metrics_only();
    for call in [Call::Ok, Call::Fail, Call::Fail] {
        let _ = send(&mut svc, call).await;
    }
    let counts = |s: &seawall::breaker::Snapshot| {
        (s.calls, s.failures, s.consecutive_failures, s.generation)
    };
    let before = handle.snapshot();
    assert_eq!(
        (before.calls, before.failures, before.consecutive_failures),
        (3, 2, 2)
    );

    handle.metrics_only();
    let again = handle.snapshot();
    assert_eq!(again.state, State::MetricsOnly);
    assert_eq!(
        counts(&again),
        counts(&before),
        "window and generation kept"
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the first call changed state"
    );

    // A failure still counts in the kept window, so the run of failures goes on.
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().consecutive_failures, 3);

    handle.reset();
    handle.metrics_only();
    let fresh = handle.snapshot();
    assert_eq!(fresh.state, State::MetricsOnly);
    assert_eq!(
        counts(&fresh),
        (0, 0, 0, before.generation + 2),
        "reset, then MetricsOnly: a fresh window"
    );

    for change in [BreakerHandle::force_open, BreakerHandle::disable] {
        change(&handle);
        let generation = handle.snapshot().generation;
        change(&handle);
        assert_eq!(handle.snapshot().generation, generation);
    }
}
