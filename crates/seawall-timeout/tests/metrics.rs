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

#[tokio::test(start_paused = true)]
async fn a_timeout_an_inner_layer_enforces_is_counted_once() {
    // Deadlines off the millisecond tick: the inner layer, which enforces the outer deadline,
    // finds it passed on the tick after it, with the outer one's timer, and leaves the cut to the
    // outer layer, whose deadline it is.
    tokio::time::advance(Duration::from_micros(500)).await;
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = |name: &str, secs| {
        TimeoutLayer::builder()
            .timeout(Duration::from_secs(secs))
            .name(name)
            .build()
            .unwrap()
    };
    let svc = tower::ServiceBuilder::new()
        .layer(layer("outer", 2))
        .layer(layer("inner", 5))
        .service(service_fn(|_: http::Request<()>| async {
            sleep(Duration::from_secs(10)).await;
            Ok::<_, std::io::Error>(())
        }));
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    assert!(err.is::<seawall_timeout::Elapsed>(), "{err}");
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "outer"), 1);
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "inner"), 0);
}

#[tokio::test(start_paused = true)]
async fn a_late_elapsed_from_further_in_is_counted_as_this_layers_cut() {
    // Off the millisecond tick: the service gives up with a bare `Elapsed` of its own (as a
    // retry's per-attempt timeout timed at the call's deadline does) after the layer's deadline,
    // before its timer's tick. Nothing reported that one: the layer cuts the call and counts it.
    tokio::time::advance(Duration::from_micros(500)).await;
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let svc = TimeoutLayer::new(Duration::from_millis(100)).layer(service_fn(
        |_: http::Request<()>| async {
            sleep(Duration::from_micros(100_200)).await;
            Err::<(), _>(seawall_timeout::Elapsed::new())
        },
    ));
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    assert!(err.is::<seawall_timeout::Elapsed>(), "{err}");
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "timeout"), 1);
}
