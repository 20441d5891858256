//! An axum route over a client wrapped in seawall, its errors answered by `HandleErrorLayer` with
//! `seawall::http::to_response`: a rate limit becomes a 429 with `Retry-After`, an open breaker
//! a 503, anything else the handler's own 502. The router is called in process, in paused time.

use axum::{body::Body, error_handling::HandleErrorLayer, Router};
use http::{header::RETRY_AFTER, Request, Response, StatusCode};
use seawall::{
    breaker::BreakerLayer, bulkhead::ratelimit::RateLimitLayer, BoxError, ServiceBuilderExt,
};
use std::time::Duration;
use tower::{service_fn, ServiceBuilder, ServiceExt};

async fn handle(error: BoxError) -> Response<Body> {
    seawall::http::to_response(&*error).unwrap_or_else(|| {
        let mut response = Response::new(Body::from(error.to_string()));
        *response.status_mut() = StatusCode::BAD_GATEWAY;
        response
    })
}

fn get() -> Request<Body> {
    Request::get("/").body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn seawall_rejections_answer_with_their_http_status() {
    let breaker = BreakerLayer::new();
    let quota = RateLimitLayer::builder()
        .rate(1, Duration::from_millis(2500))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(handle))
        .with_breaker(breaker.clone())
        .with_rate_limit(quota)
        .service(service_fn(|request: Request<Body>| async move {
            match request.uri().path() {
                "/" => Ok::<_, BoxError>("answer"),
                _ => Err("connection reset".into()),
            }
        }));
    let app = Router::new().fallback_service(client);

    let response = app.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    let response = app.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "3");

    breaker.handle().force_open();
    let response = app.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get(RETRY_AFTER).is_none());

    breaker.handle().force_closed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other = Request::get("/other").body(Body::empty()).unwrap();
    let response = app.oneshot(other).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
}
