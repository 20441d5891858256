//! Retries, exhausted budgets and give-ups are counted under the policy name, whether or not the
//! layer has any shared state (a budget, a seed, listeners); only a layer with none counts for a
//! recorder installed after it was built. Hedges sent, won and refused by the budget are counted
//! under the hedge policy's name.

use seawall_core::{
    metrics::{
        testing::TestRecorder, HEDGE_BUDGET_EXHAUSTED, HEDGE_SENT, HEDGE_WON,
        RETRY_BUDGET_EXHAUSTED, RETRY_GAVE_UP, RETRY_RETRIES,
    },
    BoxError,
};
use seawall_retry::{Backoff, HedgeLayer, RequestDeadline, RetryBudget, RetryLayer};
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

/// `seawall_retry_retries_total` counts retries sent: one scheduled and then never sent (the caller
/// gave up during the backoff, or the deadline passed while the service was not ready) is not a
/// retry.
#[tokio::test(start_paused = true)]
async fn a_retry_that_is_never_sent_is_not_counted() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = |name: &'static str| {
        RetryLayer::builder()
            .name(name)
            .max_attempts(3)
            .backoff(Backoff::constant(Duration::from_millis(100)))
            .budget(RetryBudget::unlimited())
            .build()
            .unwrap()
    };
    let failing = || service_fn(|_: Req| async { Err::<(), BoxError>("down".into()) });

    // The caller gives up during the first backoff.
    let call = layer("dropped").layer(failing()).oneshot(Req);
    assert!(tokio::time::timeout(Duration::from_millis(50), call)
        .await
        .is_err());
    assert_eq!(recorder.counter(RETRY_RETRIES, "dropped"), 0);

    // The service never becomes ready again before the deadline: the call gives up, once.
    #[derive(Clone)]
    struct ReadyOnce(Arc<AtomicU32>);
    impl tower::Service<seawall_core::deadline::WithDeadline<()>> for ReadyOnce {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            if self.0.load(Ordering::SeqCst) == 0 {
                std::task::Poll::Ready(Ok(()))
            } else {
                std::task::Poll::Pending
            }
        }
        fn call(&mut self, _: seawall_core::deadline::WithDeadline<()>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Err("down".into()))
        }
    }
    let sent = Arc::new(AtomicU32::new(0));
    let req = seawall_core::deadline::WithDeadline::new(())
        .with_deadline(tokio::time::Instant::now() + Duration::from_millis(300));
    let err = layer("not-ready")
        .layer(ReadyOnce(sent.clone()))
        .oneshot(req)
        .await
        .unwrap_err();
    assert!(
        seawall_core::error::is::<seawall_retry::Elapsed>(&*err),
        "{err}"
    );
    assert_eq!(sent.load(Ordering::SeqCst), 1);
    assert_eq!(recorder.counter(RETRY_RETRIES, "not-ready"), 0);
    assert_eq!(recorder.counter(RETRY_GAVE_UP, "not-ready"), 1);
}

/// A layer with shared state registers its counters when it is built, so one built before the
/// recorder counts nowhere; a layer that shares nothing looks them up at each event, and counts
/// wherever the recorder of the moment is.
#[tokio::test(start_paused = true)]
async fn only_a_layer_that_shares_nothing_counts_for_a_recorder_installed_after_it() {
    let layer = |name: &'static str, budget: RetryBudget| {
        RetryLayer::builder()
            .name(name)
            .max_attempts(3)
            .backoff(Backoff::constant(Duration::from_millis(5)))
            .budget(budget)
            .build()
            .unwrap()
    };
    let shares_nothing = layer("late-no-budget", RetryBudget::unlimited());
    let budgeted = layer("late-budgeted", RetryBudget::new());
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    assert_eq!(fail_calls(shares_nothing, 2).await, 6);
    assert_eq!(recorder.counter(RETRY_RETRIES, "late-no-budget"), 4);
    assert_eq!(recorder.counter(RETRY_GAVE_UP, "late-no-budget"), 2);
    assert_eq!(fail_calls(budgeted, 2).await, 6);
    assert_eq!(recorder.counter(RETRY_RETRIES, "late-budgeted"), 0);
    assert_eq!(recorder.counter(RETRY_GAVE_UP, "late-budgeted"), 0);
}

/// Hedges sent, won, and refused by the budget are counted under the policy name.
#[tokio::test(start_paused = true)]
async fn a_hedge_layer_counts_hedges_sent_won_and_refused() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    // Room for exactly one hedge.
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_second(1)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let layer = HedgeLayer::builder()
        .name("hedged")
        .delay(Duration::from_millis(10))
        .budget(budget)
        .build()
        .unwrap();
    // The original copy of each call takes 100 ms, the hedge of the first 10 ms.
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let svc = layer.layer(service_fn(move |_: Req| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let latency = Duration::from_millis(if n == 1 { 10 } else { 100 });
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(n)
        }
    }));
    assert_eq!(svc.clone().oneshot(Req).await.unwrap(), 1, "the hedge won");
    assert_eq!(
        svc.oneshot(Req).await.unwrap(),
        2,
        "no hedge: the budget is spent"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(recorder.counter(HEDGE_SENT, "hedged"), 1);
    assert_eq!(recorder.counter(HEDGE_WON, "hedged"), 1);
    assert_eq!(recorder.counter(HEDGE_BUDGET_EXHAUSTED, "hedged"), 1);
}
