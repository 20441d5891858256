//! Why a breaker opened: every change to Open or ForcedOpen carries its [`OpenReason`], with the
//! rate and threshold or the counts it tripped on, in the transition listeners get and in the
//! log line; changes to other states carry none.
#![cfg(not(loom))]

mod common;

use common::{dependency, send, Call};
use seawall::{
    breaker::{BreakerConfigBuilder, BreakerLayer, OpenReason, SlidingWindow, State, Transition},
    BoxError,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tower::{Layer, Service, ServiceExt};

type Seen = Arc<Mutex<Vec<Transition>>>;

/// A reason as its name and its fields (the variants with fields are `#[non_exhaustive]`: a user
/// matches them, and cannot build one to compare with).
type Reason = (&'static str, Vec<f64>);

fn parts(reason: OpenReason) -> Reason {
    let fields = match reason {
        OpenReason::FailureRate {
            rate, threshold, ..
        }
        | OpenReason::SlowCallRate {
            rate, threshold, ..
        } => vec![rate, threshold],
        OpenReason::ConsecutiveFailures { failures, .. } => vec![failures.into()],
        OpenReason::ProbesFailed {
            failures, probes, ..
        } => vec![failures.into(), probes.into()],
        OpenReason::ProbesSlow {
            slow_calls, probes, ..
        } => vec![slow_calls.into(), probes.into()],
        _ => vec![],
    };
    (reason.as_str(), fields)
}

/// `Some` reason named `name` with `fields`, to compare with [`parts`].
fn reason(name: &'static str, fields: &[f64]) -> Option<Reason> {
    Some((name, fields.to_vec()))
}

/// `builder` with a listener that keeps every transition, and no jitter.
fn recording(builder: BreakerConfigBuilder) -> (Seen, BreakerLayer) {
    let seen = Seen::default();
    let sink = seen.clone();
    let layer = builder
        .jitter(0.0)
        .wait_duration(Duration::from_secs(1))
        .on_transition(move |_: &seawall::Name, t: &Transition| {
            sink.lock().unwrap().push(t.clone())
        })
        .build()
        .unwrap();
    (seen, layer)
}

/// Each transition as `(from, to, reason)`, checking that a reason comes exactly with a change to
/// Open or ForcedOpen.
fn reasons(seen: &Seen) -> Vec<(State, State, Option<Reason>)> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(
                t.reason.is_some(),
                matches!(t.to, State::Open | State::ForcedOpen),
                "{t:?}"
            );
            (t.from, t.to, t.reason.map(parts))
        })
        .collect()
}

/// Sends each of `calls` in turn, their results unread.
async fn send_all<S>(svc: &mut S, calls: impl IntoIterator<Item = Call>)
where
    S: Service<Call, Response = &'static str, Error = BoxError>,
{
    for call in calls {
        let _ = send(svc, call).await;
    }
}

/// The change from Closed to Open, for the reason named `name` with `fields`.
fn opened(name: &'static str, fields: &[f64]) -> (State, State, Option<Reason>) {
    (State::Closed, State::Open, reason(name, fields))
}

/// The change from HalfOpen back to Open, for the reason named `name` with `fields`.
fn reopened(name: &'static str, fields: &[f64]) -> (State, State, Option<Reason>) {
    (State::HalfOpen, State::Open, reason(name, fields))
}

#[tokio::test(start_paused = true)]
async fn a_failure_rate_trip_gives_the_rate_and_threshold() {
    let (seen, layer) = recording(
        BreakerLayer::builder()
            .sliding_window(SlidingWindow::count(10))
            .minimum_calls(10)
            .failure_rate_threshold(0.5),
    );
    let mut svc = layer.layer(dependency().0);
    send_all(&mut svc, [Call::Ok; 4]).await;
    send_all(&mut svc, [Call::Fail; 6]).await;
    assert_eq!(layer.handle().state(), State::Open);
    assert_eq!(reasons(&seen), [opened("failure_rate", &[0.6, 0.5])]);
}

#[tokio::test(start_paused = true)]
async fn a_time_window_trip_gives_the_rate_of_the_calls_in_the_window() {
    let (seen, layer) = recording(
        BreakerLayer::builder()
            .sliding_window(SlidingWindow::time(Duration::from_secs(10)))
            .minimum_calls(5)
            .failure_rate_threshold(0.5),
    );
    let mut svc = layer.layer(dependency().0);
    send_all(&mut svc, [Call::Fail; 4]).await;
    // The 4 failures leave the window before the next calls.
    tokio::time::sleep(Duration::from_secs(11)).await;
    send_all(&mut svc, [Call::Ok, Call::Ok, Call::Fail, Call::Fail]).await;
    assert_eq!(layer.handle().state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(layer.handle().state(), State::Open);
    assert_eq!(reasons(&seen), [opened("failure_rate", &[0.6, 0.5])]);
}

#[tokio::test(start_paused = true)]
async fn a_slow_call_rate_trip_gives_the_rate_and_threshold() {
    let (seen, layer) = recording(
        BreakerLayer::builder()
            .sliding_window(SlidingWindow::count(10))
            .minimum_calls(5)
            .failure_rate_threshold(1.0)
            .slow_call_rate_threshold(0.55)
            .slow_call_duration(Duration::from_millis(100)),
    );
    let mut svc = layer.layer(dependency().0);
    send_all(
        &mut svc,
        [Call::Ok, Call::Fail, Call::SlowOk(150), Call::SlowOk(150)],
    )
    .await;
    // 2 slow calls of 4: too few calls yet.
    assert_eq!(layer.handle().state(), State::Closed);
    let _ = send(&mut svc, Call::SlowOk(150)).await;
    assert_eq!(layer.handle().state(), State::Open);
    assert_eq!(reasons(&seen), [opened("slow_call_rate", &[0.6, 0.55])]);
}

#[tokio::test(start_paused = true)]
async fn the_failure_rate_comes_first_when_both_rates_trip() {
    let (seen, layer) = recording(
        BreakerLayer::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_calls(4)
            .failure_rate_threshold(0.45)
            .slow_call_rate_threshold(0.25)
            .slow_call_duration(Duration::from_millis(100)),
    );
    let mut svc = layer.layer(dependency().0);
    send_all(
        &mut svc,
        [Call::Ok, Call::Fail, Call::SlowFail(100), Call::SlowOk(100)],
    )
    .await;
    assert_eq!(layer.handle().state(), State::Open);
    // Both rates are 0.5 and over their thresholds, from the fourth call.
    assert_eq!(reasons(&seen), [opened("failure_rate", &[0.5, 0.45])]);
}

#[tokio::test(start_paused = true)]
async fn a_run_of_failures_gives_its_length() {
    // The failure-rate rule is on too, but the window holds fewer than minimum_calls.
    let (seen, layer) = recording(BreakerLayer::builder().consecutive_failures(3));
    let mut svc = layer.layer(dependency().0);
    send_all(
        &mut svc,
        [Call::Fail, Call::Ok, Call::Fail, Call::Fail, Call::Fail],
    )
    .await;
    assert_eq!(layer.handle().state(), State::Open);
    assert_eq!(reasons(&seen), [opened("consecutive_failures", &[3.0])]);
}

/// Trips a [`probing`] breaker with one failure, and waits out its 1 s in Open.
async fn trip_and_wait<S>(svc: &mut S)
where
    S: Service<Call, Response = &'static str, Error = BoxError>,
{
    let _ = send(svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Trips on the first failure, waits 1 s, then `probes` probes.
fn probing(probes: u32) -> BreakerConfigBuilder {
    BreakerLayer::builder()
        .consecutive_failures(1)
        .permitted_probes(probes)
}

#[tokio::test(start_paused = true)]
async fn failed_probes_reopen_with_their_counts() {
    let (seen, layer) = recording(probing(3).failure_rate_threshold(0.5));
    let mut svc = layer.layer(dependency().0);
    trip_and_wait(&mut svc).await;
    send_all(&mut svc, [Call::Fail, Call::Ok, Call::Fail]).await;
    assert_eq!(layer.handle().state(), State::Open);
    assert_eq!(
        reasons(&seen),
        [
            opened("consecutive_failures", &[1.0]),
            (State::Open, State::HalfOpen, None),
            reopened("probes_failed", &[2.0, 3.0]),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn one_failed_probe_reopens_under_the_consecutive_failures_rule_alone() {
    let (seen, layer) = recording(probing(3).without_failure_rate());
    let mut svc = layer.layer(dependency().0);
    trip_and_wait(&mut svc).await;
    send_all(&mut svc, [Call::Ok, Call::Fail, Call::Ok]).await;
    assert_eq!(
        reasons(&seen).last().unwrap().2,
        reason("probes_failed", &[1.0, 3.0])
    );
}

#[tokio::test(start_paused = true)]
async fn slow_probes_reopen_with_their_counts() {
    let (seen, layer) = recording(
        probing(2)
            .failure_rate_threshold(1.0)
            .slow_call_rate_threshold(0.5)
            .slow_call_duration(Duration::from_millis(100)),
    );
    let mut svc = layer.layer(dependency().0);
    trip_and_wait(&mut svc).await;
    send_all(&mut svc, [Call::Ok, Call::SlowOk(150)]).await;
    assert_eq!(layer.handle().state(), State::Open);
    assert_eq!(
        reasons(&seen).last().unwrap().2,
        reason("probes_slow", &[1.0, 2.0])
    );
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_outlives_the_half_open_wait_reopens_as_timed_out() {
    let (seen, layer) = recording(probing(1).max_wait_in_half_open(Duration::from_secs(2)));
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    trip_and_wait(&mut svc).await;
    let hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        reasons(&seen)[1..],
        [
            (State::Open, State::HalfOpen, None),
            reopened("probes_timed_out", &[]),
        ]
    );
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn a_call_after_the_half_open_wait_reopens_as_timed_out() {
    let (seen, layer) = recording(probing(1).max_wait_in_half_open(Duration::from_secs(2)));
    let mut svc = layer.layer(dependency().0);
    trip_and_wait(&mut svc).await;
    let hung = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The next call finds the bound run out, before anything else looks at the breaker.
    assert!(common::rejected(&send(&mut svc, Call::Ok).await));
    assert_eq!(
        reasons(&seen).last().unwrap(),
        &reopened("probes_timed_out", &[])
    );
    hung.abort();
}

#[tokio::test(start_paused = true)]
async fn a_late_probe_result_reopens_as_timed_out() {
    let (seen, layer) = recording(probing(1).max_wait_in_half_open(Duration::from_secs(2)));
    let mut svc = layer.layer(dependency().0);
    trip_and_wait(&mut svc).await;
    // Answers after the bound; nothing else looks at the breaker before it does.
    let _ = send(&mut svc, Call::SlowOk(3_000)).await;
    assert_eq!(
        reasons(&seen).last().unwrap(),
        &reopened("probes_timed_out", &[])
    );
}

#[tokio::test(start_paused = true)]
async fn force_open_is_forced_and_other_manual_changes_give_no_reason() {
    let (seen, layer) = recording(BreakerLayer::builder());
    let handle = layer.handle();
    handle.force_open();
    handle.disable();
    handle.force_open();
    handle.metrics_only();
    handle.reset();
    assert_eq!(
        reasons(&seen),
        [
            (State::Closed, State::ForcedOpen, reason("forced", &[])),
            (State::ForcedOpen, State::Disabled, None),
            (State::Disabled, State::ForcedOpen, reason("forced", &[])),
            (State::ForcedOpen, State::MetricsOnly, None),
            (State::MetricsOnly, State::Closed, None),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn metrics_only_reports_the_reason_it_would_open_for() {
    let (seen, layer) = recording(
        BreakerLayer::builder()
            .sliding_window(SlidingWindow::count(4))
            .minimum_calls(4)
            .failure_rate_threshold(0.7)
            .permitted_probes(1),
    );
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    handle.metrics_only();
    send_all(&mut svc, [Call::Fail, Call::Ok, Call::Fail]).await;
    assert_eq!(handle.snapshot().machine_state, State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().machine_state, State::Open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = send(&mut svc, Call::Fail).await;
    let seen: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|t| (t.from, t.to, t.metrics_only, t.reason.map(parts)))
        .collect();
    let would = |(from, to, reason)| (from, to, true, reason);
    assert_eq!(
        seen,
        [
            (State::Closed, State::MetricsOnly, false, None),
            would(opened("failure_rate", &[0.75, 0.7])),
            would((State::Open, State::HalfOpen, None)),
            would(reopened("probes_failed", &[1.0, 1.0])),
        ]
    );
}
