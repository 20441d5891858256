//! Services that record when they were called, for the retry and hedge tests.
#![allow(dead_code, unreachable_pub)]

pub mod pause;

use seawall_core::{deadline::RequestDeadline, BoxError, Name};
use seawall_retry::{Backoff, HttpPolicy, RetryBudget, RetryEvent, RetryLayer};
use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tower::{service_fn, Service};

pub type Req = http::Request<&'static str>;

pub const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A budget of exactly one retry: no ratio, a reserve of one a second over one second.
pub fn one_retry() -> seawall_retry::RetryBudget {
    seawall_retry::RetryBudget::builder()
        .ratio(0.0)
        .min_per_second(1)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap()
}

pub fn get() -> Req {
    http::Request::get("/things/1").body("x").unwrap()
}

pub fn post() -> Req {
    http::Request::post("/things").body("x").unwrap()
}

/// One call seen by a recording service.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    pub at: Instant,
    pub deadline: Option<Instant>,
}

/// The calls a recording service saw.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    pub fn push(&self, req: &Req) -> usize {
        let mut calls = self.0.lock().unwrap();
        calls.push(Call {
            at: Instant::now(),
            deadline: req.deadline(),
        });
        calls.len() - 1
    }

    pub fn all(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    /// When each call came, from `start`.
    pub fn since(&self, start: Instant) -> Vec<Duration> {
        self.all().iter().map(|c| c.at - start).collect()
    }

    /// The gaps between consecutive calls.
    pub fn gaps(&self) -> Vec<Duration> {
        self.all().windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}

/// The events a retry reports, as its listener keeps them.
pub type Events = Arc<Mutex<Vec<RetryEvent>>>;

/// A listener that keeps every event it is told of, and the events it keeps.
pub fn recording() -> (impl Fn(&Name, &RetryEvent) + Send + Sync + 'static, Events) {
    let events = Events::default();
    let seen = events.clone();
    let listener = move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e);
    (listener, events)
}

/// The HTTP policy (a POST is not retried) with a 100 ms per-attempt timeout, and the events it
/// reports.
pub fn http_with_per_attempt_timeout() -> (RetryLayer<HttpPolicy>, Events) {
    let (listener, events) = recording();
    let layer = RetryLayer::builder()
        .http()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .per_attempt_timeout(ms(100))
        .budget(RetryBudget::unlimited())
        .on_event(listener)
        .build()
        .unwrap();
    (layer, events)
}

/// Fails the first `failures` calls with the error `"fail {n}"`, then answers `"ok {n}"`.
pub fn flaky(
    failures: usize,
) -> (
    impl Service<Req, Response = String, Error = BoxError, Future = impl Send> + Clone + Send,
    Calls,
) {
    slow_flaky(failures, Duration::ZERO)
}

/// Like [`flaky`], answering each call after `latency` (at once when it is zero).
pub fn slow_flaky(
    failures: usize,
    latency: Duration,
) -> (
    impl Service<Req, Response = String, Error = BoxError, Future = impl Send> + Clone + Send,
    Calls,
) {
    let calls = Calls::default();
    let seen = calls.clone();
    let svc = service_fn(move |req: Req| {
        let n = seen.push(&req);
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if n < failures {
                Err::<String, BoxError>(format!("fail {n}").into())
            } else {
                Ok(format!("ok {n}"))
            }
        }
    });
    (svc, calls)
}

/// Answers each call with `answer` of the next entry of `script` in turn (the last one repeats).
pub fn in_turn<A, T, F, Fut>(
    script: Vec<A>,
    answer: F,
) -> (
    impl Service<Req, Response = T, Error = BoxError, Future = Fut> + Clone,
    Calls,
)
where
    A: Copy,
    F: Fn(A) -> Fut + Clone,
    Fut: Future<Output = Result<T, BoxError>>,
{
    let calls = Calls::default();
    let seen = calls.clone();
    let script = Arc::new(script);
    let svc = service_fn(move |req: Req| {
        let n = seen.push(&req);
        answer(script[n.min(script.len() - 1)])
    });
    (svc, calls)
}

/// Answers with the HTTP statuses in `script` in turn (the last one repeats), each with the
/// given `Retry-After` header if any.
pub fn statuses(
    script: Vec<(u16, Option<&'static str>)>,
) -> (
    impl Service<Req, Response = http::Response<()>, Error = BoxError> + Clone,
    Calls,
) {
    in_turn(script, |(status, after)| async move {
        let mut res = http::Response::builder().status(status);
        if let Some(after) = after {
            res = res.header("retry-after", after);
        }
        Ok::<_, BoxError>(res.body(()).unwrap())
    })
}
