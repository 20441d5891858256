//! reqwest's `Client` (a `tower::Service<reqwest::Request>`) behind seawall layers, against axum
//! servers on loopback where one route misbehaves: 503s every other call, always 503, or hangs.
//!
//! `reqwest::Request` cannot carry a seawall deadline itself, so requests travel through the
//! stack as `WithDeadline<reqwest::Request>` and are unwrapped by `map_request` just above the
//! client. Responses are classified by status with a user-written retry policy and a closure
//! classifier for the breaker.

use axum::{
    routing::{get, post},
    Router,
};
use seawall::{
    breaker::{BreakerLayer, Open, SlidingWindow, State},
    core::{
        classify,
        deadline::{RequestDeadline, WithDeadline},
        error::is,
    },
    retry::{policy::is_idempotent, Backoff, Policy, RetryBudget, RetryEvent, RetryLayer},
    timeout::{Elapsed, TimeoutLayer},
    BoxError, Name, Outcome, ServiceBuilderExt,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};
use tokio::net::TcpListener;
use tower::{Service, ServiceBuilder, ServiceExt};

type Req = WithDeadline<reqwest::Request>;

/// Hit counters per route of the test server.
#[derive(Default)]
struct Hits {
    flaky: AtomicU32,
    down: AtomicU32,
    hang: AtomicU32,
}

/// `/ok` answers; `/flaky` (GET and POST) answers 503 on every odd call; `/down` always answers
/// 503; `/hang` never answers in time.
async fn start_server() -> (SocketAddr, Arc<Hits>) {
    let hits = Arc::new(Hits::default());
    let (h1, h2, h3, h4) = (hits.clone(), hits.clone(), hits.clone(), hits.clone());
    let flaky = move |h: Arc<Hits>| async move {
        if h.flaky.fetch_add(1, SeqCst).is_multiple_of(2) {
            (http::StatusCode::SERVICE_UNAVAILABLE, "busy")
        } else {
            (http::StatusCode::OK, "flaky ok")
        }
    };
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/flaky",
            get(move || flaky(h1.clone())).merge(post(move || flaky(h2.clone()))),
        )
        .route(
            "/down",
            get(move || {
                let h = h3.clone();
                async move {
                    h.down.fetch_add(1, SeqCst);
                    (http::StatusCode::SERVICE_UNAVAILABLE, "down")
                }
            }),
        )
        .route(
            "/hang",
            get(move || {
                let h = h4.clone();
                async move {
                    h.hang.fetch_add(1, SeqCst);
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "too late"
                }
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, hits)
}

fn reqwest_client() -> reqwest::Client {
    // No proxy from the environment may stand between the test and its loopback server. No
    // redirects followed: the retry takes a refused connection as proof that a request was never
    // sent, which holds only for a client that makes one connection attempt per call.
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn request(method: reqwest::Method, addr: SocketAddr, path: &str) -> Req {
    let url = format!("http://{addr}{path}").parse().unwrap();
    WithDeadline::new(reqwest::Request::new(method, url))
}

fn status_outcome(status: reqwest::StatusCode) -> Outcome {
    if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

/// A retry policy for reqwest: idempotent methods only, 5xx and 429 (and transport errors) are
/// failures, `Retry-After` is honoured on 429 and 503.
#[derive(Debug, Clone, Copy)]
struct ReqwestPolicy;

impl Policy<Req, reqwest::Response> for ReqwestPolicy {
    fn is_retryable(&self, request: &Req) -> bool {
        is_idempotent(request.get_ref().method())
    }

    fn classify(&self, result: Result<&reqwest::Response, &BoxError>, _: Duration) -> Outcome {
        match result {
            Ok(res) => status_outcome(res.status()),
            Err(_) => Outcome::Failure,
        }
    }

    fn retry_after(&self, response: &reqwest::Response) -> Option<Duration> {
        match response.status().as_u16() {
            429 | 503 => classify::retry_after(response.headers()),
            _ => None,
        }
    }
}

/// Copies a request for another attempt, keeping its deadline; a streamed body cannot be copied.
fn copy_request(request: &Req) -> Option<Req> {
    let mut copy = WithDeadline::new(request.get_ref().try_clone()?);
    if let Some(deadline) = request.deadline() {
        copy.set_deadline(deadline);
    }
    Some(copy)
}

fn retry_layer(retries: Arc<AtomicU32>) -> RetryLayer<ReqwestPolicy, fn(&Req) -> Option<Req>> {
    RetryLayer::builder()
        .name("reqwest-retry")
        .policy(ReqwestPolicy)
        .clone_with(copy_request as fn(&Req) -> Option<Req>)
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(RetryBudget::unlimited())
        .seed(7)
        .on_event(move |_: &Name, event: &RetryEvent| {
            if matches!(event, RetryEvent::Retry { .. }) {
                retries.fetch_add(1, SeqCst);
            }
        })
        .build()
        .unwrap()
}

async fn text(res: reqwest::Response) -> String {
    res.text().await.unwrap()
}

/// A POST the server applies and answers with a redirect to a host that refuses connections is
/// sent once: the client follows no redirect, so no refused connection of a later request makes
/// the retry take the POST for one never sent.
#[tokio::test]
async fn a_post_answered_with_a_redirect_is_sent_once() {
    // A port nothing listens on: connections to it are refused.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let orders = Arc::new(AtomicU32::new(0));
    let placed = orders.clone();
    let app = Router::new().route(
        "/orders",
        post(move || {
            let placed = placed.clone();
            async move {
                placed.fetch_add(1, SeqCst);
                (
                    http::StatusCode::SEE_OTHER,
                    [(http::header::LOCATION, format!("http://{closed}/orders/1"))],
                )
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let retries = Arc::new(AtomicU32::new(0));
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(5))
        .with_retry(retry_layer(retries.clone()))
        .map_request(WithDeadline::into_inner)
        .service(reqwest_client());
    let result = client
        .oneshot(request(reqwest::Method::POST, addr, "/orders"))
        .await;
    assert_eq!(orders.load(SeqCst), 1, "{result:?}");
    assert_eq!(retries.load(SeqCst), 0);
    assert_eq!(result.unwrap().status(), 303);
}

#[tokio::test]
async fn retries_turn_503s_into_successes_for_idempotent_requests_only() {
    let (addr, hits) = start_server().await;
    let retries = Arc::new(AtomicU32::new(0));
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(5))
        .with_retry(retry_layer(retries.clone()))
        .map_request(WithDeadline::into_inner)
        .service(reqwest_client());

    let res = client
        .clone()
        .oneshot(request(reqwest::Method::GET, addr, "/ok"))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(text(res).await, "ok");
    assert_eq!(retries.load(SeqCst), 0);

    // The first GET gets a 503, its retry a 200.
    for round in 1..=3 {
        let res = client
            .clone()
            .oneshot(request(reqwest::Method::GET, addr, "/flaky"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(text(res).await, "flaky ok");
        assert_eq!(hits.flaky.load(SeqCst), 2 * round);
        assert_eq!(retries.load(SeqCst), round);
    }

    // A POST is not idempotent: its 503 reaches the caller untouched, sent once.
    let res = client
        .clone()
        .oneshot(request(reqwest::Method::POST, addr, "/flaky"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(hits.flaky.load(SeqCst), 7);
    assert_eq!(retries.load(SeqCst), 3);

    // A server that keeps failing: three attempts, then its last 503 is the answer.
    let res = client
        .oneshot(request(reqwest::Method::GET, addr, "/down"))
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(hits.down.load(SeqCst), 3);
    assert_eq!(retries.load(SeqCst), 5);
}

#[tokio::test]
async fn breaker_opens_on_503s_and_stops_calling_the_server() {
    let (addr, hits) = start_server().await;
    // reqwest answers a 503 with `Ok`: the closure classifier makes it a failure.
    let classifier = |result: Result<&reqwest::Response, &reqwest::Error>, _: Duration| match result
    {
        Ok(res) => status_outcome(res.status()),
        Err(_) => Outcome::Failure,
    };
    let breaker = BreakerLayer::builder()
        .name("reqwest-breaker")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .wait_duration(Duration::from_secs(60))
        .build_with(classifier)
        .unwrap();
    let handle = breaker.handle();
    let mut client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(5))
        .with_breaker(breaker)
        .map_request(WithDeadline::into_inner)
        .service(reqwest_client());

    // 200s from a healthy route are successes.
    for _ in 0..4 {
        let res = client
            .ready()
            .await
            .unwrap()
            .call(request(reqwest::Method::GET, addr, "/ok"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
    assert_eq!(handle.state(), State::Closed);

    // Four 503s: the fourth makes 4 failures in 8 calls, the threshold.
    for _ in 0..4 {
        let res = client
            .ready()
            .await
            .unwrap()
            .call(request(reqwest::Method::GET, addr, "/down"))
            .await
            .unwrap();
        assert_eq!(res.status(), 503);
    }
    assert_eq!(handle.state(), State::Open);
    assert_eq!(hits.down.load(SeqCst), 4);

    // Open: calls fail fast with `Open`, and the server is not called again.
    for path in ["/down", "/ok"] {
        let err = client
            .ready()
            .await
            .unwrap()
            .call(request(reqwest::Method::GET, addr, path))
            .await
            .unwrap_err();
        assert!(is::<Open>(&*err), "{err}");
    }
    assert_eq!(hits.down.load(SeqCst), 4);
}

#[tokio::test]
async fn a_hung_server_is_bounded_per_attempt_and_in_total() {
    let (addr, hits) = start_server().await;
    // Counts the attempts handed to reqwest: an attempt cut by its timeout may end before the
    // server sees it, so the server's own count is only an upper bound.
    let attempts = Arc::new(AtomicU32::new(0));
    // One reqwest client (one connection pool) behind two stacks: the hanging route gets a short
    // per-attempt timeout, the healthy route one no loaded machine comes near.
    let reqwest = reqwest_client();
    let stack = |per_attempt: Duration| {
        let retry = RetryLayer::builder()
            .name("reqwest-hang")
            .policy(ReqwestPolicy)
            .clone_with(copy_request as fn(&Req) -> Option<Req>)
            .max_attempts(3)
            .per_attempt_timeout(per_attempt)
            .backoff(Backoff::constant(Duration::from_millis(10)))
            .budget(RetryBudget::unlimited())
            .seed(3)
            .build()
            .unwrap();
        let counted = attempts.clone();
        ServiceBuilder::new()
            .with_timeout(
                TimeoutLayer::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap(),
            )
            .with_retry(retry)
            .map_request(move |req: Req| {
                counted.fetch_add(1, SeqCst);
                req.into_inner()
            })
            .service(reqwest.clone())
    };
    let client = stack(Duration::from_millis(100));

    // Each attempt is cut after 100 ms: three attempts, then the last `Elapsed`.
    let err = client
        .clone()
        .oneshot(request(reqwest::Method::GET, addr, "/hang"))
        .await
        .unwrap_err();
    assert!(is::<Elapsed>(&*err), "{err}");
    assert_eq!(attempts.load(SeqCst), 3);
    assert!(hits.hang.load(SeqCst) <= 3);

    // A per-request timeout shorter than the per-attempt one ends the whole call after the first
    // attempt: the deadline it sets travels inline in the `WithDeadline` wrapper. The call has
    // returned, so no later attempt can follow.
    let req = request(reqwest::Method::GET, addr, "/hang").with_timeout(Duration::from_millis(50));
    let err = client.clone().oneshot(req).await.unwrap_err();
    assert!(is::<Elapsed>(&*err), "{err}");
    assert_eq!(attempts.load(SeqCst), 4, "no retry after the deadline");
    assert!(hits.hang.load(SeqCst) <= 4);

    // The connection pool still works afterwards.
    let res = stack(Duration::from_secs(10))
        .oneshot(request(reqwest::Method::GET, addr, "/ok"))
        .await
        .unwrap();
    assert_eq!(text(res).await, "ok");
}
