//! When a Closed breaker trips: failure rate with minimum calls, slow-call rate, the
//! consecutive-failures rule, time windows, ignored outcomes.
#![cfg(not(loom))]

mod common;

use common::{dependency, ignoring, rejected, send, Call};
use seawall::breaker::{BreakerLayer, SlidingWindow, State};
use std::time::Duration;
use tower::Layer;

#[tokio::test(start_paused = true)]
async fn trips_on_failure_rate_once_minimum_calls_are_in() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);

    // 4 failures out of 4: a 100 % failure rate, but fewer than minimum_calls.
    for _ in 0..4 {
        assert!(send(&mut svc, Call::Fail).await.is_err());
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().failure_rate, 1.0);

    assert!(send(&mut svc, Call::Fail).await.is_err());
    assert_eq!(handle.state(), State::Open);

    // Open: rejected without reaching the dependency.
    let result = send(&mut svc, Call::Ok).await;
    assert!(rejected(&result), "{result:?}");
    assert_eq!(reached.get(), 5);
    assert_eq!(handle.snapshot().rejected, 1);
}

#[tokio::test(start_paused = true)]
async fn stays_closed_below_the_threshold_and_trips_at_it() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(6))
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for call in [Call::Fail, Call::Ok, Call::Fail, Call::Ok, Call::Ok] {
        let _ = send(&mut svc, call).await;
    }
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (5, 2));
    assert_eq!(handle.state(), State::Closed, "40 % < 50 %");
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open, "3 of 6 = 50 %");
}

#[tokio::test(start_paused = true)]
async fn old_calls_leave_a_count_window() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(4))
        .minimum_calls(4)
        .failure_rate_threshold(0.75)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for call in [
        Call::Fail,
        Call::Fail,
        Call::Ok,
        Call::Ok,
        Call::Ok,
        Call::Fail,
        Call::Fail,
    ] {
        let _ = send(&mut svc, call).await;
    }
    // The window is the last 4: ok ok fail fail.
    assert_eq!(handle.snapshot().failures, 2);
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open, "ok fail fail fail");
}

#[tokio::test(start_paused = true)]
async fn trips_on_slow_calls_whether_they_succeed_or_fail() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(4)
        .failure_rate_threshold(1.0)
        .slow_call_rate_threshold(0.6)
        .slow_call_duration(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::SlowOk(150)).await;
    let _ = send(&mut svc, Call::SlowFail(100)).await;
    let _ = send(&mut svc, Call::Ok).await;
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.calls, snapshot.slow_calls), (3, 2));
    assert_eq!(handle.state(), State::Closed);
    let _ = send(&mut svc, Call::SlowOk(99)).await;
    assert_eq!(handle.state(), State::Closed, "99 ms is not slow: 2 of 4");
    let _ = send(&mut svc, Call::SlowOk(500)).await;
    assert_eq!(handle.state(), State::Open, "3 slow of 5 = 60 %");
}

#[tokio::test(start_paused = true)]
async fn a_tiny_failure_rate_threshold_needs_a_failure_to_trip() {
    // Any threshold in (0, 1] is valid; one far below a part per million still asks for a
    // failure rate above zero.
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(1)
        .failure_rate_threshold(1e-7)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for _ in 0..10 {
        send(&mut svc, Call::Ok).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed, "tripped on successes alone");
    assert!(send(&mut svc, Call::Fail).await.is_err());
    assert_eq!(handle.state(), State::Open, "1 failure of 10 is above 1e-7");
}

#[tokio::test(start_paused = true)]
async fn a_tiny_slow_call_rate_threshold_needs_a_slow_call_to_trip() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(1)
        .without_failure_rate()
        .slow_call_rate_threshold(1e-7)
        .slow_call_duration(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for _ in 0..10 {
        send(&mut svc, Call::SlowOk(99)).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed, "tripped on fast calls alone");
    send(&mut svc, Call::SlowOk(100)).await.unwrap();
    assert_eq!(
        handle.state(),
        State::Open,
        "1 slow call of 10 is above 1e-7"
    );
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_alone() {
    let layer = BreakerLayer::builder()
        .without_failure_rate()
        .consecutive_failures(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for call in [Call::Fail, Call::Fail, Call::Ok, Call::Fail, Call::Fail] {
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(handle.state(), State::Closed, "a success resets the run");
    assert_eq!(handle.snapshot().consecutive_failures, 2);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "three in a row, well below minimum_calls"
    );
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_together_with_the_rate() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(100))
        .minimum_calls(50)
        .consecutive_failures(5)
        .build_with(ignoring)
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for call in [Call::Fail, Call::Fail, Call::Ignore, Call::Fail, Call::Fail] {
        let _ = send(&mut svc, call).await;
    }
    assert_eq!(
        handle.state(),
        State::Closed,
        "an ignored call neither counts nor resets"
    );
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_count_nothing() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(2)
        .build_with(ignoring)
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for _ in 0..20 {
        assert_eq!(send(&mut svc, Call::Ignore).await.unwrap(), "ignore");
    }
    let _ = send(&mut svc, Call::Fail).await;
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (1, 1));
    assert_eq!(
        handle.state(),
        State::Closed,
        "one counted call is below minimum_calls"
    );
}

#[tokio::test(start_paused = true)]
async fn a_time_window_forgets_old_calls() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::time(Duration::from_secs(1)))
        .minimum_calls(3)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.snapshot().calls, 2);
    // A second later the first failure has left the window.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(handle.snapshot().calls, 1);
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(
        handle.state(),
        State::Closed,
        "1 failure of 2 calls, below minimum_calls"
    );
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "2 failures of 3 calls in the last second"
    );
}
