//! One method of a `ClientStack` given longer attempts than the stack's per-try timeout, by a
//! `PerTryTimeoutOverride` on its requests; every other method keeps the per-try timeout.

use seawall::{
    core::error::is,
    discover,
    retry::{Backoff, RetryBudget, RetryLayer},
    stack::ClientStack,
    timeout::{Elapsed, PerTryTimeoutOverride, TimeoutOverride},
    BoxError,
};
use std::time::Duration;
use tokio::time::Instant;
use tower::{service_fn, ServiceExt};

type Endpoint = tower::util::BoxCloneSyncService<http::Request<()>, &'static str, BoxError>;

/// A stack with a 10 s total timeout, three attempts and a 500 ms per-try timeout over one
/// endpoint that answers every call after 1 s.
fn client() -> ClientStack<http::Request<()>, &'static str> {
    let endpoints = discover::from_list(vec!["a"], |_: &&'static str| -> Endpoint {
        tower::util::BoxCloneSyncService::new(service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>("report")
        }))
    });
    ClientStack::builder()
        .timeout(Duration::from_secs(10))
        .retry(
            RetryLayer::builder()
                .max_attempts(3)
                .backoff(Backoff::constant(Duration::ZERO))
                .budget(RetryBudget::unlimited())
                .build()
                .unwrap(),
        )
        .without_breaker()
        .per_try_timeout(Duration::from_millis(500))
        .build(endpoints)
        .unwrap()
}

fn report() -> http::Request<()> {
    http::Request::get("/report").body(()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_per_try_override_lets_one_slow_method_through_the_stack() {
    let client = client();
    tokio::task::yield_now().await;

    let mut req = report();
    req.extensions_mut()
        .insert(PerTryTimeoutOverride(Duration::from_secs(2)));
    let start = Instant::now();
    assert_eq!(client.clone().oneshot(req).await.unwrap(), "report");
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    // A TimeoutOverride is for the total timeout: every attempt is still cut at 500 ms.
    let mut req = report();
    req.extensions_mut()
        .insert(TimeoutOverride(Duration::from_secs(10)));
    let start = Instant::now();
    let err = client.oneshot(req).await.unwrap_err();
    assert!(is::<Elapsed>(&*err), "{err}");
    assert_eq!(start.elapsed(), Duration::from_millis(1_500));
}
