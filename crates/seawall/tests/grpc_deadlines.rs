//! gRPC deadlines meet seawall's: a caller's `grpc-timeout` is the request's deadline, which the
//! total timeout keeps to (`HonorTimeoutLayer`), and the deadline seawall enforces goes to the server in `grpc-timeout`
//! (`SendDeadlineLayer`). In paused time.

use seawall::{
    core::{deadline::RequestDeadline, error::is, Deadline, TimeoutOverride},
    grpc::{HonorTimeout, HonorTimeoutLayer, SendDeadline, SendDeadlineLayer},
    timeout::{Elapsed, TimeoutLayer},
    BoxError, ServiceBuilderExt,
};
use std::time::Duration;
use tokio::time::{advance, Instant};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// What the inner service saw of a request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    grpc_timeout: Option<String>,
    deadline: Option<Instant>,
}

fn seen(request: &http::Request<()>) -> Seen {
    Seen {
        grpc_timeout: request
            .headers()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_owned()),
        deadline: request.deadline(),
    }
}

/// Answers what it saw of the request after `delay`.
fn inner(
    delay: Duration,
) -> impl Service<http::Request<()>, Response = Seen, Error = BoxError, Future: Send> + Clone {
    service_fn(move |request: http::Request<()>| async move {
        let seen = seen(&request);
        tokio::time::sleep(delay).await;
        Ok::<_, BoxError>(seen)
    })
}

fn with_grpc_timeout(value: &str) -> http::Request<()> {
    http::Request::builder()
        .header("grpc-timeout", value)
        .body(())
        .unwrap()
}

fn header(value: &str) -> Option<String> {
    Some(value.to_owned())
}

#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_shorter_than_the_total_timeout_cuts_the_call() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(30)))
        .service(inner(Duration::from_secs(1)));

    let start = Instant::now();
    let error = client.oneshot(with_grpc_timeout("100m")).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_sees_the_grpc_timeout_as_the_deadline() {
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    let seen = client
        .oneshot(with_grpc_timeout("99999999u"))
        .await
        .unwrap();
    assert_eq!(
        seen,
        Seen {
            grpc_timeout: header("99999999u"),
            deadline: Some(Instant::now() + Duration::from_micros(99_999_999)),
        }
    );
}

/// As with tonic's own `Endpoint::timeout`, the shorter of the caller's timeout and the stack's
/// wins: a caller's longer timeout does not stretch the total timeout.
#[tokio::test(start_paused = true)]
async fn a_longer_grpc_timeout_does_not_stretch_the_total_timeout() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
        .service(inner(Duration::from_millis(1500)));
    let start = Instant::now();
    let error = client.oneshot(with_grpc_timeout("2S")).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_on_the_request_is_kept() {
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    let mut request = with_grpc_timeout("10S");
    let earlier = Instant::now() + Duration::from_millis(50);
    request.set_deadline(earlier);
    assert_eq!(
        client.clone().oneshot(request).await.unwrap().deadline,
        Some(earlier)
    );

    // A later one is brought forward to the caller's timeout.
    let mut request = with_grpc_timeout("10S");
    request.set_deadline(Instant::now() + Duration::from_secs(60));
    assert_eq!(
        client.oneshot(request).await.unwrap().deadline,
        Some(Instant::now() + Duration::from_secs(10))
    );
}

/// An override changes the total timeout's own duration; the caller's deadline still caps it.
#[tokio::test(start_paused = true)]
async fn an_override_and_the_grpc_timeout_the_shorter_wins() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(30)))
        .service(inner(Duration::from_secs(1)));
    for (grpc_timeout, overridden, ends_at) in [("10S", 50, 50), ("100m", 500, 100)] {
        let mut request = with_grpc_timeout(grpc_timeout);
        request
            .extensions_mut()
            .insert(TimeoutOverride(Duration::from_millis(overridden)));
        let start = Instant::now();
        let error = client.clone().oneshot(request).await.unwrap_err();
        assert!(is::<Elapsed>(&*error), "{error:?}");
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(ends_at),
            "{grpc_timeout}"
        );
    }
}

/// Without a total timeout of its own, a `ClientStack`-like stack still ends the call at the
/// caller's deadline: the stand-in that enforces only a caller's deadline sees it.
#[tokio::test(start_paused = true)]
async fn a_caller_deadline_is_enforced_without_a_total_timeout() {
    let callers_deadline_only = TimeoutLayer::builder()
        .timeout(Duration::MAX)
        .propagate_deadline(false)
        .honor_override(false)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(callers_deadline_only)
        .service(inner(Duration::from_secs(1)));
    let start = Instant::now();
    let error = client.oneshot(with_grpc_timeout("250m")).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_grpc_timeout_is_left_alone() {
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    for bad in ["1.5S", "123456789m", "10s", "m", "-1S"] {
        let seen = client
            .clone()
            .oneshot(with_grpc_timeout(bad))
            .await
            .unwrap();
        assert_eq!(
            seen,
            Seen {
                grpc_timeout: header(bad),
                deadline: None
            },
            "{bad:?}"
        );
    }
    let seen = client.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(
        seen,
        Seen {
            grpc_timeout: None,
            deadline: None
        }
    );
}

#[tokio::test(start_paused = true)]
async fn the_sent_timeout_is_the_time_left_to_the_deadline() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    let deadline = Instant::now() + Duration::from_secs(1);
    let sent = || {
        let mut request = http::Request::new(());
        request.extensions_mut().insert(Deadline(deadline));
        let call = client.clone().oneshot(request);
        async move { call.await.unwrap().grpc_timeout }
    };

    assert_eq!(sent().await, header("1000000u"));
    advance(Duration::from_millis(300)).await;
    assert_eq!(sent().await, header("700000u"));
    advance(Duration::from_nanos(699_999_999)).await;
    assert_eq!(sent().await, header("1n"));
    // Past the deadline the server is given the least the header can say.
    advance(Duration::from_secs(5)).await;
    assert_eq!(sent().await, header("1n"));
}

#[tokio::test(start_paused = true)]
async fn a_shorter_grpc_timeout_on_the_request_is_kept() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    let deadline = Deadline(Instant::now() + Duration::from_secs(1));
    for (theirs, sent) in [
        ("100m", "100m"),
        ("1000000u", "1000000u"),
        ("1000001u", "1000000u"),
        ("5S", "1000000u"),
        ("1.5S", "1000000u"),
    ] {
        let mut request = with_grpc_timeout(theirs);
        request.extensions_mut().insert(deadline);
        let seen = client.clone().oneshot(request).await.unwrap();
        assert_eq!(seen.grpc_timeout, header(sent), "{theirs:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_deadline_is_sent_untouched() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    let seen = client
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(seen.grpc_timeout, None);
    let seen = client.oneshot(with_grpc_timeout("5S")).await.unwrap();
    assert_eq!(seen.grpc_timeout, header("5S"));
}

/// The whole path: a caller's `grpc-timeout` sets the total timeout, the per-try timeout cuts
/// it shorter, and the server is told the shortest.
#[tokio::test(start_paused = true)]
async fn the_server_is_sent_the_deadline_of_the_stack() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(30)))
        .with_timeout(TimeoutLayer::new(Duration::from_secs(10)).per_try())
        .layer(SendDeadlineLayer::new())
        .service(inner(Duration::ZERO));

    // The per-try timeout is the shortest.
    let seen = client
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(seen.grpc_timeout, header("10000000u"));
    // The caller's timeout is: no time has passed, so the caller's header says it already.
    let seen = client
        .clone()
        .oneshot(with_grpc_timeout("250m"))
        .await
        .unwrap();
    assert_eq!(seen.grpc_timeout, header("250m"));
    // The caller's timeout is longer than the per-try one.
    let seen = client.oneshot(with_grpc_timeout("1M")).await.unwrap();
    assert_eq!(seen.grpc_timeout, header("10000000u"));
}

#[test]
fn services_are_send_sync_and_static() {
    fn check<T: Send + Sync + 'static>() {}
    type Inner = tower::util::BoxCloneSyncService<http::Request<()>, (), BoxError>;
    check::<HonorTimeoutLayer>();
    check::<SendDeadlineLayer>();
    check::<HonorTimeout<Inner>>();
    check::<SendDeadline<Inner>>();
}
