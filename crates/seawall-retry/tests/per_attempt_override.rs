//! A request's `PerTryTimeoutOverride` replaces the per-attempt timeout for each of its attempts.

mod support;

use seawall_core::{
    deadline::{Elapsed, PerTryTimeoutOverride, RequestDeadline},
    error, BoxError,
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

/// One call of `req` through `layer` over an endpoint answering each attempt after `latency`:
/// the answer, how long the call took, and the deadline each attempt carried, as time from the
/// call's start.
async fn call(
    layer: &RetryLayer,
    latency: Duration,
    req: Req,
) -> (Result<String, BoxError>, Duration, Vec<Option<Duration>>) {
    let (svc, calls) = slow_flaky(0, latency);
    let start = Instant::now();
    let answer = layer.layer(svc).oneshot(req).await;
    let took = Instant::now() - start;
    let deadlines = calls
        .all()
        .iter()
        .map(|c| c.deadline.map(|d| d - start))
        .collect();
    (answer, took, deadlines)
}

#[tokio::test(start_paused = true)]
async fn a_longer_override_lets_a_slow_attempt_finish() {
    let layer = retry(Some(ms(500)));
    let (answer, took, deadlines) = call(&layer, ms(1_000), with_per_try(ms(2_000))).await;
    assert_eq!(answer.unwrap(), "ok 0");
    assert_eq!(took, ms(1_000));
    assert_eq!(deadlines, [Some(ms(2_000))]);

    // Without it every attempt is cut at 500 ms, and the call fails when they run out.
    let (answer, took, deadlines) = call(&layer, ms(1_000), get()).await;
    let err = answer.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(took, ms(1_500));
    assert_eq!(deadlines.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_shorter_override_cuts_every_attempt_earlier() {
    let layer = retry(Some(ms(500)));
    let (answer, took, deadlines) = call(&layer, ms(300), with_per_try(ms(100))).await;
    let err = answer.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(took, ms(300));
    // The copies sent again carry it too.
    assert_eq!(deadlines, [ms(100), ms(200), ms(300)].map(Some));
}

#[tokio::test(start_paused = true)]
async fn the_calls_deadline_still_bounds_an_overridden_attempt() {
    let mut req = with_per_try(ms(2_000));
    req.set_deadline(Instant::now() + ms(1_000));
    let (answer, took, deadlines) = call(&retry(Some(ms(500))), ms(1_500), req).await;
    let err = answer.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(took, ms(1_000));
    assert_eq!(
        deadlines,
        [Some(ms(1_000))],
        "cut by the call's deadline, not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn an_override_starts_no_timeout_where_none_is_configured() {
    let (answer, took, deadlines) = call(&retry(None), ms(1_000), with_per_try(ms(100))).await;
    assert_eq!(answer.unwrap(), "ok 0");
    assert_eq!(took, ms(1_000));
    assert_eq!(deadlines[0], None);
}

#[tokio::test(start_paused = true)]
async fn a_zero_override_is_ignored() {
    // The builder rejects a zero per-attempt timeout; a zero override would cut every attempt not
    // ready on its first poll, so the layer's own 500 ms applies instead.
    let layer = retry(Some(ms(500)));
    let (answer, took, deadlines) = call(&layer, ms(10), with_per_try(Duration::ZERO)).await;
    assert_eq!(answer.unwrap(), "ok 0");
    assert_eq!(took, ms(10));
    assert_eq!(deadlines, [Some(ms(500))]);
}
