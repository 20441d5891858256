//! Retries, exhausted budgets and give-ups are counted under the policy name, whether or not the
//! layer has any shared state (a budget, a seed, listeners).

use seawall_core::{
    metrics::{testing::TestRecorder, RETRY_BUDGET_EXHAUSTED, RETRY_GAVE_UP, RETRY_RETRIES},
    BoxError,
};
use seawall_retry::{Backoff, RequestDeadline, RetryBudget, RetryLayer};
use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Clone)]
struct Req;
impl RequestDeadline for Req {}

/// Calls a service that always fails `calls` times; returns how many attempts reached it.
async fn fail_calls(layer: RetryLayer, calls: u32) -> u32 {
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let svc = layer.layer(service_fn(move |_: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), BoxError>("down".into()) }
    }));
    for _ in 0..calls {
        assert!(svc.clone().oneshot(Req).await.is_err());
    }
    attempts.load(Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn a_layer_that_shares_nothing_still_counts_retries_and_give_ups() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = RetryLayer::builder()
        .name("no-budget")
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    assert_eq!(fail_calls(layer, 4).await, 12);
    assert_eq!(recorder.counter(RETRY_RETRIES, "no-budget"), 8);
    assert_eq!(recorder.counter(RETRY_GAVE_UP, "no-budget"), 4);
    assert_eq!(recorder.counter(RETRY_BUDGET_EXHAUSTED, "no-budget"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_budgeted_layer_counts_retries_and_exhaustion() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    // Room for 2 retries and no more: 10% of requests, no per-second allowance.
    let budget = RetryBudget::builder()
        .ratio(0.1)
        .min_per_second(0)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap();
    let layer = RetryLayer::builder()
        .name("budgeted")
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .budget(budget)
        .seed(7)
        .build()
        .unwrap();
    let attempts = fail_calls(layer, 20).await;
    let retries = recorder.counter(RETRY_RETRIES, "budgeted");
    assert_eq!(u64::from(attempts), 20 + retries);
    assert_eq!(retries, 2);
    assert_eq!(recorder.counter(RETRY_BUDGET_EXHAUSTED, "budgeted"), 18);
    assert_eq!(recorder.counter(RETRY_GAVE_UP, "budgeted"), 2);
}
