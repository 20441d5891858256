//! A real axum server on loopback, called through a hyper-util client wrapped in fallback and
//! timeout: the slow route times out and the fallback answers; the fast route answers normally.

use axum::{routing::get, Router};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use seawall::{
    fallback::{FallbackEvent, FallbackLayer},
    timeout::{Elapsed, TimeoutEvent, TimeoutLayer},
    BoxError, Name, ServiceBuilderExt,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::net::{TcpListener, TcpSocket};
use tower::{ServiceBuilder, ServiceExt};

type Body = BoxBody<Bytes, BoxError>;

async fn start_server() -> SocketAddr {
    let app = Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(|| async {
                // Far longer than the client's timeout; the test never waits for it.
                tokio::time::sleep(Duration::from_secs(30)).await;
                "slow"
            }),
        )
        .route(
            "/unavailable",
            get(|| async { (http::StatusCode::SERVICE_UNAVAILABLE, "try later") }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn text(s: &'static str) -> http::Response<Body> {
    http::Response::new(
        Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    )
}

async fn body_text(res: http::Response<Body>) -> String {
    String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
}

#[tokio::test]
async fn slow_route_times_out_and_fallback_answers() {
    let addr = start_server().await;
    let timeouts = Arc::new(AtomicUsize::new(0));
    let fallbacks = Arc::new(AtomicUsize::new(0));
    let (t, f) = (timeouts.clone(), fallbacks.clone());

    let fallback = FallbackLayer::builder()
        .on_error_type::<Elapsed>()
        .on_event(move |_: &Name, _: &FallbackEvent| {
            f.fetch_add(1, Ordering::SeqCst);
        })
        .build_fn(|_| Ok(text("from fallback")))
        .unwrap();
    let timeout = |budget: Duration| {
        let t = t.clone();
        TimeoutLayer::builder()
            .timeout(budget)
            .on_event(move |_: &Name, _: &TimeoutEvent| {
                t.fetch_add(1, Ordering::SeqCst);
            })
            .build()
            .unwrap()
    };
    // One connection pool behind two stacks: the slow route gets a short timeout, the healthy
    // routes one no loaded machine comes near, so only the slow route can time out.
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let stack = |budget: Duration| {
        ServiceBuilder::new()
            .with_fallback(fallback.clone())
            .with_timeout(timeout(budget))
            .map_response(|res: http::Response<hyper::body::Incoming>| {
                res.map(|b| b.map_err(BoxError::from).boxed())
            })
            .service(http.clone())
    };
    let client = stack(Duration::from_secs(10));
    let impatient = stack(Duration::from_millis(500));

    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap()
    };

    let res = client.clone().oneshot(get("/fast")).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(body_text(res).await, "fast");

    let res = impatient.oneshot(get("/slow")).await.unwrap();
    assert_eq!(body_text(res).await, "from fallback");
    assert_eq!(timeouts.load(Ordering::SeqCst), 1);
    assert_eq!(fallbacks.load(Ordering::SeqCst), 1);

    // A 503 is not an error for this stack (no response classifier), so it passes through.
    let res = client.clone().oneshot(get("/unavailable")).await.unwrap();
    assert_eq!(res.status(), 503);

    // The server and the shared connection pool still work after the cancelled call.
    let res = client.oneshot(get("/fast")).await.unwrap();
    assert_eq!(body_text(res).await, "fast");
}

#[tokio::test]
async fn without_fallback_the_caller_sees_elapsed() {
    let addr = start_server().await;
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_millis(200))
        .service(http);
    let req = http::Request::get(format!("http://{addr}/slow"))
        .body(Full::default())
        .unwrap();
    let err = client.oneshot(req).await.unwrap_err();
    assert!(seawall::core::error::is::<Elapsed>(&*err), "{err}");
}

#[tokio::test]
async fn connection_refused_is_answered_by_a_catch_all_fallback() {
    // A port nobody listens on: bound and never listening, held for the whole test, so the
    // kernel refuses connections to it and cannot give it to another test's listener meanwhile
    // (as it could a port bound and dropped).
    let closed = TcpSocket::new_v4().unwrap();
    closed.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = closed.local_addr().unwrap();
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let fallback = FallbackLayer::builder()
        .build_fn(|failed| {
            assert!(failed.error().is_some());
            Ok(text("degraded"))
        })
        .unwrap();
    let client = ServiceBuilder::new()
        .with_fallback(fallback)
        .with_timeout(Duration::from_secs(5))
        .map_response(|res: http::Response<hyper::body::Incoming>| {
            res.map(|b| b.map_err(BoxError::from).boxed())
        })
        .service(http);
    let req = http::Request::get(format!("http://{addr}/"))
        .body(Full::default())
        .unwrap();
    assert_eq!(
        body_text(client.oneshot(req).await.unwrap()).await,
        "degraded"
    );
    drop(closed);
}
