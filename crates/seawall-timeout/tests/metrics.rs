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

/// A call through an outer timeout "outer" of 2 s over `inner` over a service that takes 10 s,
/// made off the millisecond tick, as every real call is: the counts of "outer" and "inner".
async fn nested_counts(inner: TimeoutLayer) -> (u64, u64) {
    tokio::time::advance(Duration::from_micros(500)).await;
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let outer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(2))
        .name("outer")
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(outer)
        .layer(inner)
        .service(service_fn(|_: http::Request<()>| async {
            sleep(Duration::from_secs(10)).await;
            Ok::<_, std::io::Error>(())
        }));
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    assert!(err.is::<seawall_timeout::Elapsed>(), "{err}");
    (
        recorder.counter(TIMEOUT_ELAPSED, "outer"),
        recorder.counter(TIMEOUT_ELAPSED, "inner"),
    )
}

fn inner(secs: u64) -> TimeoutLayer {
    TimeoutLayer::builder()
        .timeout(Duration::from_secs(secs))
        .name("inner")
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_timeout_an_inner_layer_enforces_too_is_counted_by_both() {
    // The inner layer enforces the outer deadline: on the tick after it, it cuts the call and
    // counts it, and the outer one finds that `Elapsed` after its deadline and counts it too.
    assert_eq!(nested_counts(inner(5)).await, (1, 1));
}

#[tokio::test(start_paused = true)]
async fn a_per_try_inner_layer_leaves_the_count_to_the_outer_one() {
    // A per-try layer leaves the outer deadline to the outer layer, which cuts the call from
    // above: only the outer layer counts it.
    assert_eq!(nested_counts(inner(5).per_try()).await, (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_late_elapsed_from_further_in_is_counted_as_this_layers_cut() {
    // Off the millisecond tick: the deadline is 100.5 ms, and the service gives up with a bare
    // `Elapsed` of its own (as a retry's per-attempt timeout timed at the call's deadline does)
    // at 100.7 ms, after the layer's deadline, before its timer's 101 ms tick. Nothing reported
    // that one: the layer cuts the call when it finds it, and counts it.
    tokio::time::advance(Duration::from_micros(500)).await;
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let (service, mut handle) = tower_test::mock::pair::<http::Request<()>, ()>();
    let svc = TimeoutLayer::new(Duration::from_millis(100)).layer(service);
    let mut call = tokio_test::task::spawn(svc.oneshot(http::Request::new(())));
    tokio_test::assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.expect("the call is sent");
    tokio::time::advance(Duration::from_micros(100_200)).await;
    send.send_error(seawall_timeout::Elapsed::new());
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<seawall_timeout::Elapsed>(), "{err}");
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "timeout"), 1);
}
