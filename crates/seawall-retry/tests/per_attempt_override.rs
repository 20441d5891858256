//! A request's `PerTryTimeoutOverride` replaces the per-attempt timeout for each of its attempts.

mod support;

use seawall_core::{
    deadline::{Elapsed, PerTryTimeoutOverride, RequestDeadline},
    error,
};
use seawall_retry::{Backoff, RetryBudget, RetryLayer};
use std::time::Duration;
use support::{get, ms, slow_flaky, Req};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

/// Three attempts, no backoff, each attempt timed by `per_attempt` if given.
fn retry(per_attempt: Option<Duration>) -> RetryLayer {
    let mut builder = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(RetryBudget::unlimited());
    if let Some(timeout) = per_attempt {
        builder = builder.per_attempt_timeout(timeout);
    }
    builder.build().unwrap()
}

fn with_per_try(timeout: Duration) -> Req {
    let mut req = get();
    req.extensions_mut().insert(PerTryTimeoutOverride(timeout));
    req
}

#[tokio::test(start_paused = true)]
async fn a_longer_override_lets_a_slow_attempt_finish() {
    let layer = retry(Some(ms(500)));
    let (svc, calls) = slow_flaky(0, ms(1_000));
    let start = Instant::now();
    let ok = layer
        .layer(svc)
        .oneshot(with_per_try(ms(2_000)))
        .await
        .unwrap();
    assert_eq!(ok, "ok 0");
    assert_eq!(Instant::now() - start, ms(1_000));
    let calls = calls.all();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].deadline, Some(start + ms(2_000)));

    // Without it every attempt is cut at 500 ms, and the call fails when they run out.
    let (svc, calls) = slow_flaky(0, ms(1_000));
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(get()).await.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(1_500));
    assert_eq!(calls.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_override_cuts_every_attempt_earlier() {
    let (svc, calls) = slow_flaky(0, ms(300));
    let start = Instant::now();
    let err = retry(Some(ms(500)))
        .layer(svc)
        .oneshot(with_per_try(ms(100)))
        .await
        .unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(300));
    // The copies sent again carry it too.
    let deadlines: Vec<_> = calls.all().iter().map(|c| c.deadline).collect();
    assert_eq!(
        deadlines,
        [ms(100), ms(200), ms(300)].map(|d| Some(start + d))
    );
}

#[tokio::test(start_paused = true)]
async fn the_calls_deadline_still_bounds_an_overridden_attempt() {
    let (svc, calls) = slow_flaky(0, ms(1_500));
    let start = Instant::now();
    let mut req = with_per_try(ms(2_000));
    req.set_deadline(start + ms(1_000));
    let err = retry(Some(ms(500)))
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(1_000));
    let calls = calls.all();
    assert_eq!(calls.len(), 1, "cut by the call's deadline, not retried");
    assert_eq!(calls[0].deadline, Some(start + ms(1_000)));
}

#[tokio::test(start_paused = true)]
async fn an_override_starts_no_timeout_where_none_is_configured() {
    let (svc, calls) = slow_flaky(0, ms(1_000));
    let start = Instant::now();
    let ok = retry(None)
        .layer(svc)
        .oneshot(with_per_try(ms(100)))
        .await
        .unwrap();
    assert_eq!(ok, "ok 0");
    assert_eq!(Instant::now() - start, ms(1_000));
    assert_eq!(calls.all()[0].deadline, None);
}

#[tokio::test(start_paused = true)]
async fn a_zero_override_is_ignored() {
    // The builder rejects a zero per-attempt timeout; a zero override would cut every attempt not
    // ready on its first poll, so the layer's own 500 ms applies instead.
    let (svc, calls) = slow_flaky(0, ms(10));
    let start = Instant::now();
    let ok = retry(Some(ms(500)))
        .layer(svc)
        .oneshot(with_per_try(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(ok, "ok 0");
    assert_eq!(Instant::now() - start, ms(10));
    let calls = calls.all();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].deadline, Some(start + ms(500)));
}
