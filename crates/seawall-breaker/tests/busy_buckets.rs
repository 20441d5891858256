//! A time window whose buckets take more calls than they count exactly: every bucket keeps its
//! weight in the window's rate, and any `minimum_calls` that validation accepts can be reached.
//! Bounds are six standard errors of the sampling wide: threads draw their own random bits, so
//! runs differ.
#![cfg(not(loom))]

mod common;

use common::{dependency, send, Call};
use seawall::breaker::{BreakerLayer, SlidingWindow, State};
use std::time::Duration;
use tower::Layer;

#[tokio::test(start_paused = true)]
async fn a_busy_bucket_keeps_its_weight_in_the_rate() {
    // 2 s in two buckets of 1 s.
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::time_with_buckets(Duration::from_secs(2), 2))
        .minimum_calls(20)
        .failure_rate_threshold(0.5)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);

    for _ in 0..100_000 {
        send(&mut svc, Call::Ok).await.unwrap();
    }

    // The next bucket: 40,000 failures make 40 / 140 ≈ 28.6 %.
    tokio::time::advance(Duration::from_secs(1)).await;
    for _ in 0..40_000 {
        assert!(send(&mut svc, Call::Fail).await.is_err());
    }
    let snapshot = handle.snapshot();
    assert_eq!(handle.state(), State::Closed, "{snapshot:?}");
    assert!(
        (snapshot.failure_rate - 40.0 / 140.0).abs() < 0.015,
        "{snapshot:?}"
    );
    assert!(snapshot.calls.abs_diff(140_000) <= 4_000, "{snapshot:?}");

    // It opens when the true rate reaches 50 % (100,000 failures), give or take the sampling
    // error of the busy buckets: still Closed at 94,000 (48.5 %), Open by 106,000 (51.5 %).
    let mut failures = 40_000;
    while handle.state() == State::Closed {
        assert!(send(&mut svc, Call::Fail).await.is_err());
        failures += 1;
        assert!(failures <= 106_000, "{:?}", handle.snapshot());
    }
    assert!(failures > 94_000, "opened at {failures} failures");
}

#[tokio::test(start_paused = true)]
async fn the_largest_minimum_calls_is_reached() {
    // The largest minimum_calls, reached in one bucket.
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::time_with_buckets(Duration::from_secs(10), 2))
        .minimum_calls(1_000_000)
        .failure_rate_threshold(1.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let mut failures = 0u32;
    while handle.state() == State::Closed {
        assert!(send(&mut svc, Call::Fail).await.is_err());
        failures += 1;
        assert!(failures <= 1_030_000, "{:?}", handle.snapshot());
    }
    assert!(failures >= 970_000, "opened at {failures} failures");
}

#[tokio::test(start_paused = true)]
async fn a_minimum_calls_spread_over_both_buckets_is_reached() {
    // 131,070 calls, 70,000 of them in the first bucket and the rest in the second.
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::time_with_buckets(Duration::from_secs(2), 2))
        .minimum_calls(131_070)
        .failure_rate_threshold(1.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for _ in 0..70_000 {
        assert!(send(&mut svc, Call::Fail).await.is_err());
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut failures = 70_000u32;
    while handle.state() == State::Closed {
        assert!(send(&mut svc, Call::Fail).await.is_err());
        failures += 1;
        assert!(failures <= 135_100, "{:?}", handle.snapshot());
    }
    assert!(failures >= 127_000, "opened at {failures} failures");
}
