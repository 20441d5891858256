//! reqwest's `Client` behind seawall's timeout, retry and circuit breaker, calling an axum server
//! on loopback whose `/flaky` route answers 503 on every other call.
//!
//! ```text
//! cargo run --example reqwest_client
//! ```
//!
//! `reqwest::Client` is a `tower::Service<reqwest::Request>`. A foreign request type cannot
//! implement `RequestDeadline`, so requests travel through the stack as
//! `WithDeadline<reqwest::Request>` (the deadline inline, no allocation) and are unwrapped by
//! `map_request` just above the client.

use axum::{routing::get, Router};
use seawall::{
    breaker::{BreakerLayer, Open},
    core::deadline::{RequestDeadline, WithDeadline},
    retry::{policy::is_idempotent, Backoff, Policy, RetryEvent, RetryLayer},
    BoxError, Name, Outcome, ServiceBuilderExt,
};
use std::{
    sync::{
        atomic::{AtomicU32, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};

type Req = WithDeadline<reqwest::Request>;

fn outcome(status: reqwest::StatusCode) -> Outcome {
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// Retry 5xx, 429 and transport errors of idempotent methods; a request of any other method is
/// retried only when its attempt proves it was never sent (a refused connection, or a rejection
/// raised below the retry before sending: `Policy::retries_unsent`, which this policy leaves at
/// its default, yes). (The layer is built with `ignore_error::<Open>()` besides, so the
/// breaker's rejection is not retried.)
#[derive(Debug, Clone, Copy)]
struct ReqwestPolicy;

impl Policy<Req, reqwest::Response> for ReqwestPolicy {
    fn is_retryable(&self, request: &Req) -> bool {
        is_idempotent(request.get_ref().method())
    }

    fn classify(&self, result: Result<&reqwest::Response, &BoxError>, _: Duration) -> Outcome {
        result.map_or(Outcome::Failure, |res| outcome(res.status()))
    }

    fn retry_after(&self, response: &reqwest::Response) -> Option<Duration> {
        seawall::core::classify::retry_after(response.headers())
    }

    // `classify` ignores how long an attempt took: the layer need not read the clock.
    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// A copy for another attempt, keeping the deadline; a streaming body cannot be copied.
fn copy(request: &Req) -> Option<Req> {
    let mut copy = WithDeadline::new(request.get_ref().try_clone()?);
    if let Some(deadline) = request.deadline() {
        copy.set_deadline(deadline);
    }
    Some(copy)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/flaky",
        get(move || {
            let n = h.fetch_add(1, Relaxed);
            async move {
                if n.is_multiple_of(2) {
                    (http::StatusCode::SERVICE_UNAVAILABLE, "busy, try again")
                } else {
                    (http::StatusCode::OK, "hello from /flaky")
                }
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("server listening on http://{addr}");

    let retry = RetryLayer::builder()
        .name("reqwest-retry")
        .policy(ReqwestPolicy)
        // The breaker below rejects with `Open` for seconds: retrying it after a backoff of
        // milliseconds would only be rejected again, and spend the budget.
        .ignore_error::<Open>()
        .clone_with(copy as fn(&Req) -> Option<Req>)
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(20)))
        .on_event(|name: &Name, event: &RetryEvent| println!("  [{name}] {event:?}"))
        .build()?;
    let breaker = BreakerLayer::builder().name("reqwest-breaker").build_with(
        |result: Result<&reqwest::Response, &reqwest::Error>, _: Duration| {
            result.map_or(Outcome::Failure, |res| outcome(res.status()))
        },
    )?;
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(2))
        .with_retry(retry)
        .with_breaker(breaker)
        .map_request(WithDeadline::into_inner)
        // No redirects followed: the retry takes a refused connection as proof that a request
        // was never sent (a POST included), which holds only for a client that makes one
        // connection attempt per call. Following a 303 to a host that refuses connections would
        // otherwise send a POST the server applied once more.
        .service(
            reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        );

    for i in 0..3 {
        let url = format!("http://{addr}/flaky").parse()?;
        let request = WithDeadline::new(reqwest::Request::new(reqwest::Method::GET, url));
        let response = client.clone().oneshot(request).await?;
        println!("call {i}: {} {}", response.status(), response.text().await?);
    }
    println!("the server saw {} requests", hits.load(Relaxed));
    Ok(())
}
