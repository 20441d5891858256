//! When the fallback fails too, the error carries both failures.

use http::Response;
use seawall_core::{classify::HttpClassifier, error, BoxError, Elapsed};
use seawall_fallback::{Failed, FailedResponse, FallbackFailed, FallbackLayer};
use std::{fmt, io};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Debug)]
struct CacheMiss;
impl fmt::Display for CacheMiss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("cache miss")
    }
}
impl std::error::Error for CacheMiss {}

#[tokio::test]
async fn sync_fallback_failure_carries_both_errors() {
    let layer = FallbackLayer::builder()
        .build_fn(|_: Failed<()>| Err(Box::new(CacheMiss) as BoxError))
        .unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Elapsed::new()) }));
    let err = svc.oneshot(()).await.unwrap_err();

    let failed = err
        .downcast_ref::<FallbackFailed>()
        .expect("FallbackFailed");
    assert!(failed.original().is::<Elapsed>());
    assert!(failed.fallback_error().is::<CacheMiss>());
    assert_eq!(err.to_string(), "fallback failed: cache miss");
    // The original failure is in the source chain, where error helpers look for it.
    assert!(error::is::<Elapsed>(&*err));
    let chain: Vec<String> = error::chain(&*err).map(|e| e.to_string()).collect();
    assert_eq!(chain, ["fallback failed: cache miss", "request timed out"]);
}

#[tokio::test]
async fn async_fallback_service_failure_carries_both_errors() {
    let fallback = service_fn(|failed: Failed<String>| async move {
        assert!(failed.is::<io::Error>());
        tokio::task::yield_now().await;
        Err::<String, _>(CacheMiss)
    });
    let layer = FallbackLayer::builder().build_service(fallback).unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Err::<String, _>(io::Error::new(io::ErrorKind::ConnectionRefused, "refused"))
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert_eq!(
        failed
            .original()
            .downcast_ref::<io::Error>()
            .unwrap()
            .kind(),
        io::ErrorKind::ConnectionRefused
    );
    assert!(failed.fallback_error().is::<CacheMiss>());
}

#[tokio::test]
async fn failed_response_then_failed_fallback() {
    let layer = FallbackLayer::builder()
        .on_response(HttpClassifier::new())
        .build_fn(|_: Failed<Response<()>>| Err(Box::new(CacheMiss) as BoxError))
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Ok::<_, BoxError>(Response::builder().status(502).body(()).unwrap())
    }));
    let err = svc.oneshot(()).await.unwrap_err();
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(failed.original().is::<FailedResponse>());
    assert!(failed.fallback_error().is::<CacheMiss>());
}

#[tokio::test]
async fn async_fallback_service_answers() {
    let fallback = service_fn(|failed: Failed<String>| async move {
        tokio::task::yield_now().await;
        Ok::<_, io::Error>(format!(
            "secondary region after: {}",
            failed.error().unwrap()
        ))
    });
    let layer = FallbackLayer::builder().build_service(fallback).unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Err::<String, _>(io::Error::other("primary down"))
    }));
    assert_eq!(
        svc.oneshot(()).await.unwrap(),
        "secondary region after: primary down"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_layer_bounds_a_slow_fallback_service() {
    let slow_cache = service_fn(|_: Failed<&'static str>| async {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        Ok::<_, BoxError>("cached")
    });
    let bounded = seawall::timeout::TimeoutLayer::new(std::time::Duration::from_millis(100))
        .layer(slow_cache);
    let svc = FallbackLayer::builder()
        .build_service(bounded)
        .unwrap()
        .layer(service_fn(|()| async {
            Err::<&'static str, BoxError>("down".into())
        }));
    let started = tokio::time::Instant::now();
    let err = svc.oneshot(()).await.unwrap_err();
    assert_eq!(started.elapsed(), std::time::Duration::from_millis(100));
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(error::is::<Elapsed>(failed.fallback_error()));
}

/// A `TimeoutLayer` around a fallback service bounds the fallback's call, not its wait for
/// readiness, which comes first: behind a full bulkhead with backpressure the fallback waits in
/// `poll_ready`, past the timeout. A bulkhead's `max_wait` waits inside the call, under it.
#[tokio::test(start_paused = true)]
async fn a_timeout_around_the_fallback_bounds_its_call_not_its_wait_for_readiness() {
    use seawall_bulkhead::BulkheadLayer;
    use std::time::Duration;

    for backpressure in [true, false] {
        let builder = BulkheadLayer::builder().max_concurrent(1);
        let bulkhead = if backpressure {
            builder.backpressure(true)
        } else {
            builder.max_wait(Duration::from_secs(60))
        }
        .build()
        .unwrap();
        // Another call holds the bulkhead's only permit for good.
        let hang = service_fn(|_: Failed<&'static str>| {
            std::future::pending::<Result<&'static str, BoxError>>()
        });
        let mut holder =
            tokio_test::task::spawn(bulkhead.layer(hang).oneshot(Failed::Response("")));
        assert!(holder.poll().is_pending());

        let cache = service_fn(|_: Failed<&'static str>| async { Ok::<_, BoxError>("cached") });
        let bounded = seawall::timeout::TimeoutLayer::new(Duration::from_millis(100))
            .layer(bulkhead.layer(cache));
        let svc = FallbackLayer::builder()
            .build_service(bounded)
            .unwrap()
            .layer(service_fn(|()| async {
                Err::<&'static str, BoxError>("down".into())
            }));
        let outcome = tokio::time::timeout(Duration::from_secs(10), svc.oneshot(())).await;
        if backpressure {
            assert!(outcome.is_err(), "the wait for readiness is not bounded");
        } else {
            let err = outcome.expect("bounded by the timeout").unwrap_err();
            let failed = err.downcast_ref::<FallbackFailed>().unwrap();
            assert!(error::is::<Elapsed>(failed.fallback_error()));
        }
    }
}

/// A rejection of one's own raised before the request was handed on.
#[derive(Debug)]
struct Shed;
static NOT_SENT: error::NotSent = error::NotSent::new();
impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("load shed")
    }
}
impl std::error::Error for Shed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&NOT_SENT)
    }
}

/// A fallback service that sends the request elsewhere and fails with `kind`.
async fn call_with_fallback_failing_with(kind: io::ErrorKind) -> BoxError {
    let secondary =
        service_fn(move |_: Failed<()>| async move { Err::<(), _>(io::Error::from(kind)) });
    let layer = FallbackLayer::builder().build_service(secondary).unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Shed) }));
    svc.oneshot(()).await.unwrap_err()
}

#[tokio::test]
async fn a_fallback_that_sent_its_request_makes_the_failure_sent() {
    // The call was turned away before it was sent; the fallback sent the request to a secondary
    // region and that connection was reset: the request may have reached the server.
    let err = call_with_fallback_failing_with(io::ErrorKind::ConnectionReset).await;
    assert!(!error::is_not_sent(&*err));
    assert!(error::is::<error::SentEarlier>(&*err));
    // The original failure is still found by its type.
    assert!(error::find::<Shed>(&*err).is_some());
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(failed.original().is::<Shed>());
    assert!(error::is_not_sent(failed.original()));
    // `source()` is the mark, whose `get_ref()` is the original as the error shares it.
    let sent = std::error::Error::source(failed)
        .and_then(|s| s.downcast_ref::<error::SentEarlier>())
        .expect("SentEarlier");
    assert!(!sent.get_ref().is::<Shed>());
    assert!(sent
        .get_ref()
        .is::<std::sync::Arc<dyn std::error::Error + Send + Sync>>());
    assert!(error::is::<Shed>(sent.get_ref()));

    // A fallback whose own request was never sent either leaves the call not sent.
    let err = call_with_fallback_failing_with(io::ErrorKind::ConnectionRefused).await;
    assert!(error::is_not_sent(&*err));
    assert!(!error::is::<error::SentEarlier>(&*err));
    assert!(error::find::<Shed>(&*err).is_some());
}

/// A closure fallback sends nothing: its failure over a call never sent (a cache miss after a
/// breaker's `Open`) leaves the call never sent, so a retry above may send even a POST again.
#[tokio::test]
async fn a_closure_fallback_that_fails_leaves_the_call_never_sent() {
    let layer = FallbackLayer::builder()
        .build_fn(|_: Failed<()>| Err("cache miss".into()))
        .unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Shed) }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(error::is_not_sent(&*err), "{err}");
    assert!(!error::is::<error::SentEarlier>(&*err));
    assert!(error::find::<Shed>(&*err).is_some());
    assert_eq!(err.to_string(), "fallback failed: cache miss");

    // With the request's context too.
    let layer = FallbackLayer::builder()
        .with_request(|_: &()| "/users/7")
        .build_fn(|_: Failed<()>, _key: &str| Err("cache miss".into()))
        .unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Shed) }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(error::is_not_sent(&*err), "{err}");
    assert!(!error::is::<error::SentEarlier>(&*err));

    // A fallback service that fails so may have sent the request: the call is taken as sent.
    let err = call_with_fallback_failing_with(io::ErrorKind::ConnectionReset).await;
    assert!(!error::is_not_sent(&*err));
}

/// A closure that did send a request (a blocking client, a copy spawned off) and says so with a
/// `SentEarlier` around its error makes the call one that may have been sent.
#[tokio::test]
async fn a_closure_fallback_that_marks_its_error_sent_makes_the_failure_sent() {
    let layer = FallbackLayer::builder()
        .build_fn(
            |_: Failed<()>| Err(Box::new(error::SentEarlier::new("reset".into())) as BoxError),
        )
        .unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Shed) }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(!error::is_not_sent(&*err), "{err}");
    assert!(error::find::<Shed>(&*err).is_some());
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(error::is_not_sent(failed.original()));
    assert!(failed.fallback_error().is::<error::SentEarlier>());

    // With the request's context too.
    let layer = FallbackLayer::builder()
        .with_request(|_: &()| "/users/7")
        .build_fn(|_: Failed<()>, _key: &str| {
            Err(Box::new(error::SentEarlier::new("reset".into())) as BoxError)
        })
        .unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Shed) }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(!error::is_not_sent(&*err), "{err}");
}

/// A fallback service that never got ready.
#[derive(Clone)]
struct Closed;

impl tower::Service<Failed<()>> for Closed {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Err("closed".into()))
    }

    fn call(&mut self, _: Failed<()>) -> Self::Future {
        unreachable!("called unready")
    }
}

/// A fallback service whose `poll_ready` failed was never called and sent nothing: over a call
/// never sent, its failure leaves the call never sent.
#[tokio::test]
async fn a_fallback_service_that_failed_to_get_ready_leaves_the_call_never_sent() {
    let layer = FallbackLayer::builder().build_service(Closed).unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Shed) }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(error::is_not_sent(&*err), "{err}");
    assert!(!error::is::<error::SentEarlier>(&*err));
    let failed = err.downcast_ref::<FallbackFailed>().unwrap();
    assert!(failed.original().is::<Shed>());
    assert_eq!(failed.fallback_error().to_string(), "closed");

    // With the request's context too.
    #[derive(Clone)]
    struct ClosedWithContext;
    impl tower::Service<seawall_fallback::FailedCall<(), &'static str>> for ClosedWithContext {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), BoxError>> {
            std::task::Poll::Ready(Err("closed".into()))
        }

        fn call(&mut self, _: seawall_fallback::FailedCall<(), &'static str>) -> Self::Future {
            unreachable!("called unready")
        }
    }
    let layer = FallbackLayer::builder()
        .with_request(|_: &()| "/users/7")
        .build_service(ClosedWithContext)
        .unwrap();
    let svc = layer.layer(service_fn(|()| async { Err::<(), _>(Shed) }));
    let err = svc.oneshot(()).await.unwrap_err();
    assert!(error::is_not_sent(&*err), "{err}");

    // One that got ready and was called may have sent the request.
    let err = call_with_fallback_failing_with(io::ErrorKind::ConnectionReset).await;
    assert!(!error::is_not_sent(&*err));
}
