//! A hyper-util HTTP client wrapped in seawall's fallback and timeout layers calls an axum server
//! on loopback that has one fast and one slow route.
//!
//! ```text
//! cargo run --example timeout_fallback
//! ```

use axum::{routing::get, Router};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use seawall::{fallback::FallbackLayer, timeout::Elapsed, BoxError, ServiceBuilderExt};
use std::time::Duration;
use tokio::{net::TcpListener, time::Instant};
use tower::{ServiceBuilder, ServiceExt};

type Body = BoxBody<Bytes, BoxError>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The dependency: /fast answers at once, /slow takes two seconds.
    let app = Router::new()
        .route("/fast", get(|| async { "fresh answer from /fast" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(2)).await;
                "fresh answer from /slow"
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("server listening on http://{addr}");

    // The client: a total deadline of 300 ms; a timed-out call is answered from a fallback.
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let fallback = FallbackLayer::builder()
        .name("demo-fallback")
        .on_error_type::<Elapsed>()
        .build_fn(|_failed| {
            Ok(http::Response::new(
                Full::new(Bytes::from_static(b"fallback answer (the call timed out)"))
                    .map_err(|never| match never {})
                    .boxed(),
            ))
        })?;
    let client = ServiceBuilder::new()
        .with_fallback(fallback)
        .with_timeout(Duration::from_millis(300))
        .map_response(|res: http::Response<hyper::body::Incoming>| {
            res.map(|body| body.map_err(BoxError::from).boxed())
        })
        .service(http);

    for path in ["/fast", "/slow", "/fast"] {
        let request = http::Request::get(format!("http://{addr}{path}")).body(Full::default())?;
        let started = Instant::now();
        let response: http::Response<Body> = client.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        println!(
            "GET {path:<6} -> {status} in {:>4} ms: {}",
            started.elapsed().as_millis(),
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}
