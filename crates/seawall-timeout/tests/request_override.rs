//! A timeout carried on the request replaces the layer's own.

mod common;

use common::{elapsed_after, request_with};
use seawall_timeout::{Elapsed, RequestDeadline, TimeoutLayer, TimeoutOverride};
use std::time::Duration;
use tokio::time::{sleep, Instant};
use tower::{service_fn, Layer, ServiceExt};

fn sleeper(
    d: Duration,
) -> impl tower::Service<
    http::Request<()>,
    Response = &'static str,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    service_fn(move |_: http::Request<()>| async move {
        sleep(d).await;
        Ok("done")
    })
}

#[tokio::test(start_paused = true)]
async fn longer_override_lets_a_slow_call_finish() {
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(sleeper(Duration::from_secs(5)));
    let req = request_with(TimeoutOverride(Duration::from_secs(10)));
    assert_eq!(svc.oneshot(req).await.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn shorter_override_cuts_a_call_early() {
    let svc = TimeoutLayer::new(Duration::from_secs(10)).layer(sleeper(Duration::from_secs(5)));
    let req = request_with(TimeoutOverride(Duration::from_millis(300)));
    assert_eq!(elapsed_after(svc, req).await, Duration::from_millis(300));
}

#[tokio::test(start_paused = true)]
async fn override_is_still_capped_by_a_deadline_on_the_request() {
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(sleeper(Duration::from_secs(5)));
    let mut req = request_with(TimeoutOverride(Duration::from_secs(10)));
    req.set_deadline(Instant::now() + Duration::from_secs(2));
    assert_eq!(elapsed_after(svc, req).await, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn a_layer_that_does_not_honor_overrides_keeps_its_own_timeout() {
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(1))
        .honor_override(false)
        .build()
        .unwrap();
    let svc = layer.layer(sleeper(Duration::from_secs(5)));
    let req = request_with(TimeoutOverride(Duration::from_secs(10)));
    assert_eq!(elapsed_after(svc, req).await, Duration::from_secs(1));
}

/// A request type of the application's own, opting in through the trait.
struct Query {
    override_timeout: Option<Duration>,
}

impl RequestDeadline for Query {
    fn timeout_override(&self) -> Option<Duration> {
        self.override_timeout
    }
}

#[tokio::test(start_paused = true)]
async fn custom_request_types_use_the_trait() {
    let inner = service_fn(|_: Query| async {
        sleep(Duration::from_secs(2)).await;
        Ok::<_, std::io::Error>(())
    });
    let layer = TimeoutLayer::new(Duration::from_secs(1));
    let svc = layer.layer(inner);
    assert!(svc
        .clone()
        .oneshot(Query {
            override_timeout: None
        })
        .await
        .unwrap_err()
        .is::<Elapsed>());
    svc.oneshot(Query {
        override_timeout: Some(Duration::from_secs(3)),
    })
    .await
    .unwrap();
}
