//! A per-try timeout takes a request's `PerTryTimeoutOverride` in place of its own duration; the
//! total timeout does not.

mod common;

use common::{elapsed_after, recorder, request_with, Seen};
use seawall_timeout::{PerTryTimeoutOverride, TimeoutLayer, TimeoutOverride};
use std::time::Duration;
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};

fn per_try(ms: u64) -> TimeoutLayer {
    TimeoutLayer::new(Duration::from_millis(ms)).per_try()
}

fn with_per_try(timeout: Duration) -> http::Request<()> {
    request_with(PerTryTimeoutOverride(timeout))
}

#[tokio::test(start_paused = true)]
async fn a_longer_per_try_override_lets_a_slow_attempt_finish() {
    let layer = per_try(500);
    assert!(layer.honors_per_try_override() && !layer.honors_override());
    let seen = Seen::default();
    let svc = layer.layer(recorder(seen.clone(), Duration::from_secs(1)));

    let start = Instant::now();
    let req = with_per_try(Duration::from_secs(2));
    assert_eq!(svc.clone().oneshot(req).await.unwrap(), "done");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // The attempt carries the deadline the override puts.
    assert_eq!(
        seen.lock().unwrap().pop(),
        Some(Some(start + Duration::from_secs(2)))
    );

    // Without it, the layer's own 500 ms.
    let elapsed = elapsed_after(svc, http::Request::new(())).await;
    assert_eq!(elapsed, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_shorter_per_try_override_cuts_the_attempt_earlier() {
    let svc = per_try(500).layer(recorder(Seen::default(), Duration::from_millis(300)));
    let elapsed = elapsed_after(svc.clone(), with_per_try(Duration::from_millis(100))).await;
    assert_eq!(elapsed, Duration::from_millis(100));
    // The same call without it is in time.
    assert_eq!(svc.oneshot(http::Request::new(())).await.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_still_ignores_a_total_override() {
    let svc = per_try(500).layer(recorder(Seen::default(), Duration::from_secs(1)));
    let req = request_with(TimeoutOverride(Duration::from_secs(10)));
    assert_eq!(elapsed_after(svc, req).await, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn the_calls_deadline_still_bounds_an_overridden_attempt() {
    // total 1 s above a per-try 500 ms stretched to 2 s: the attempt is cut at 1 s, by the total
    // timeout, and carries the call's deadline, not its own later one.
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(per_try(500))
        .service(recorder(seen.clone(), Duration::from_millis(1_500)));
    let start = Instant::now();
    let elapsed = elapsed_after(svc, with_per_try(Duration::from_secs(2))).await;
    assert_eq!(elapsed, Duration::from_secs(1));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_secs(1))]
    );
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_ignores_a_per_try_override() {
    let total = TimeoutLayer::new(Duration::from_millis(500));
    assert!(!total.honors_per_try_override());
    let svc = total.layer(recorder(Seen::default(), Duration::from_secs(1)));
    let elapsed = elapsed_after(svc, with_per_try(Duration::from_secs(2))).await;
    assert_eq!(elapsed, Duration::from_millis(500));

    // Nor does a shorter one cut it.
    let svc = TimeoutLayer::new(Duration::from_millis(500))
        .layer(recorder(Seen::default(), Duration::from_millis(300)));
    let req = with_per_try(Duration::from_millis(100));
    assert_eq!(svc.oneshot(req).await.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn one_path_is_given_longer_attempts_by_map_request() {
    // As docs/timeout.md sets it: every request to /report gets 2 s attempts, the rest 500 ms.
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .map_request(|mut req: http::Request<()>| {
            if req.uri().path() == "/report" {
                req.extensions_mut()
                    .insert(PerTryTimeoutOverride(Duration::from_secs(2)));
            }
            req
        })
        .layer(per_try(500))
        .service(recorder(Seen::default(), Duration::from_secs(1)));
    let get = |path: &str| http::Request::get(path).body(()).unwrap();

    let start = Instant::now();
    assert_eq!(svc.clone().oneshot(get("/report")).await.unwrap(), "done");
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    let elapsed = elapsed_after(svc, get("/users")).await;
    assert_eq!(elapsed, Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn a_zero_per_try_override_is_ignored() {
    // A zero override would cut every attempt not ready on its first poll; the layer's own 500 ms
    // applies instead.
    let seen = Seen::default();
    let svc = per_try(500).layer(recorder(seen.clone(), Duration::from_millis(10)));
    let start = Instant::now();
    let req = with_per_try(Duration::ZERO);
    assert_eq!(svc.oneshot(req).await.unwrap(), "done");
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_millis(500))]
    );
}
