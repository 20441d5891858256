//! Each elapsed call increments `seawall_timeout_elapsed_total{name}`.

use seawall_core::metrics::{testing::TestRecorder, TIMEOUT_ELAPSED};
use seawall_timeout::TimeoutLayer;
use std::time::Duration;
use tokio::time::sleep;
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn elapsed_calls_are_counted_under_the_policy_name() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_millis(100))
        .name("orders")
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|req: http::Request<Duration>| async move {
        sleep(*req.body()).await;
        Ok::<_, std::io::Error>(())
    }));
    for work in [10, 500, 50, 700] {
        let _ = svc
            .clone()
            .oneshot(http::Request::new(Duration::from_millis(work)))
            .await;
    }
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "orders"), 2);
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "timeout"), 0);
}
