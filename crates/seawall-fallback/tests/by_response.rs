//! Responses a classifier calls failures go to the fallback, which sees the failed response.

use http::{Response, StatusCode};
use seawall_core::{classify::HttpClassifier, BoxError, Outcome};
use seawall_fallback::{Failed, FallbackLayer};
use std::time::Duration;
use tower::{service_fn, Layer, ServiceExt};

fn upstream(
    status: u16,
) -> impl tower::Service<(), Response = Response<String>, Error = BoxError, Future = impl Send> + Clone
{
    service_fn(move |()| async move {
        Ok::<_, BoxError>(
            Response::builder()
                .status(status)
                .body(format!("upstream {status}"))
                .unwrap(),
        )
    })
}

fn from_cache(failed: Failed<Response<String>>) -> Result<Response<String>, BoxError> {
    let status = failed.response().expect("a failed response").status();
    Ok(Response::new(format!(
        "cached (upstream said {})",
        status.as_u16()
    )))
}

#[tokio::test]
async fn http_503_is_answered_from_cache() {
    let layer = FallbackLayer::builder()
        .on_response(HttpClassifier::new())
        .build_fn(from_cache)
        .unwrap();
    let res = layer.layer(upstream(503)).oneshot(()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.body(), "cached (upstream said 503)");

    let res = layer.layer(upstream(429)).oneshot(()).await.unwrap();
    assert_eq!(res.body(), "cached (upstream said 429)");
}

#[tokio::test]
async fn successes_and_client_errors_pass_through() {
    let layer = FallbackLayer::builder()
        .on_response(HttpClassifier::new())
        .build_fn(from_cache)
        .unwrap();
    for status in [200, 204, 404] {
        let res = layer.layer(upstream(status)).oneshot(()).await.unwrap();
        assert_eq!(res.status().as_u16(), status);
        assert_eq!(res.body(), &format!("upstream {status}"));
    }
}

#[tokio::test]
async fn without_a_classifier_responses_are_never_replaced() {
    let layer = FallbackLayer::builder().build_fn(from_cache).unwrap();
    let res = layer.layer(upstream(503)).oneshot(()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn closure_classifiers_see_the_duration() {
    // Responses slower than 1s count as failures.
    let slow = |r: Result<&Response<String>, &BoxError>, elapsed: Duration| match r {
        Ok(_) if elapsed >= Duration::from_secs(1) => Outcome::Failure,
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    };
    let layer = FallbackLayer::builder()
        .on_response(slow)
        .build_fn(|_| Ok(Response::new("too slow".to_string())))
        .unwrap();
    let svc = layer.layer(service_fn(|d: Duration| async move {
        tokio::time::sleep(d).await;
        Ok::<_, BoxError>(Response::new("primary".to_string()))
    }));
    assert_eq!(
        svc.clone()
            .oneshot(Duration::from_millis(10))
            .await
            .unwrap()
            .body(),
        "primary"
    );
    assert_eq!(
        svc.oneshot(Duration::from_secs(2)).await.unwrap().body(),
        "too slow"
    );
}
