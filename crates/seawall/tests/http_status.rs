//! seawall's rejections become the HTTP statuses a server answers its own callers with: 503 for
//! an open breaker, no endpoint or a full bulkhead, 429 with `Retry-After` for a rate limit, 504
//! for a timeout, found through the wrappers of the layers above; anything else is not seawall's
//! to map.

use http::{header::RETRY_AFTER, Response, StatusCode};
use seawall::{
    balance::{BalanceLayer, NoEndpoints},
    breaker::{BreakerConfig, BreakerLayer, BreakerSet, Open},
    bulkhead::{
        ratelimit::{Limited, RateLimitLayer},
        BulkheadLayer, Full,
    },
    core::{
        deadline::{Elapsed, RequestDeadline},
        error::find,
    },
    discover,
    fallback::{FallbackFailed, FallbackLayer},
    http::{retry_after, status, to_response},
    retry::{BudgetExhausted, RetryBudget, RetryLayer},
    stack::{ClientStack, EndpointOpen},
    timeout::TimeoutLayer,
    BoxError, Outcome,
};
use std::{
    error::Error,
    fmt,
    future::{pending, ready, Ready},
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

#[derive(Debug, Clone)]
struct Req;
impl RequestDeadline for Req {}

fn ok() -> impl Service<Req, Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(|_: Req| async { Ok::<_, BoxError>(()) })
}

/// The error `svc` fails `Req` with.
async fn error_of<S: Service<Req, Error = BoxError>>(svc: S) -> BoxError {
    svc.oneshot(Req).await.err().expect("the call fails")
}

/// Checks `error` maps to `expected` with no `Retry-After`, through all three functions.
fn assert_maps_to(error: &(dyn Error + 'static), expected: StatusCode) {
    assert_eq!(status(error), Some(expected), "{error:?}");
    assert_eq!(retry_after(error), None, "{error:?}");
    let response: Response<()> = to_response(error).expect("a seawall rejection");
    assert_eq!(response.status(), expected);
    assert!(response.headers().get(RETRY_AFTER).is_none());
}

async fn open_breaker_error() -> BoxError {
    let breaker = BreakerLayer::new();
    breaker.handle().force_open();
    error_of(breaker.layer(ok())).await
}

/// A rate limiter of one permit per `period`, its permit already taken: the next call is
/// rejected with a `retry_after` of `period`.
async fn limited_error(period: Duration) -> BoxError {
    let limiter = RateLimitLayer::builder().rate(1, period).build().unwrap();
    let limited = limiter.layer(ok());
    limited.clone().oneshot(Req).await.unwrap();
    error_of(limited).await
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_503() {
    let error = open_breaker_error().await;
    assert!(find::<Open>(&*error).is_some());
    assert_maps_to(&*error, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_is_503() {
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let stuck = bulkhead.layer(service_fn(|_: Req| pending::<Result<(), BoxError>>()));
    let holder = tokio::spawn(stuck.clone().oneshot(Req));
    tokio::task::yield_now().await;
    let error = error_of(stuck).await;
    holder.abort();
    assert!(find::<Full>(&*error).is_some());
    assert_maps_to(&*error, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn a_balancer_with_no_endpoint_is_503() {
    let balance = BalanceLayer::builder()
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap()
        .layer(discover::from_list(Vec::<u16>::new(), |_| ok()));
    let error = error_of(balance).await;
    assert!(find::<NoEndpoints>(&*error).is_some());
    assert_maps_to(&*error, StatusCode::SERVICE_UNAVAILABLE);
}

/// The one endpoint, which opens its own breaker of `set` when the balancer polls it ready, after
/// that breaker admitted the call: the breaker then rejects the call with `EndpointOpen`.
#[derive(Clone)]
struct TripsItsBreaker {
    set: BreakerSet<&'static str>,
    tripped: Arc<AtomicBool>,
}

impl Service<Req> for TripsItsBreaker {
    type Response = ();
    type Error = BoxError;
    type Future = Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if !self.tripped.swap(true, SeqCst) {
            self.set.handle(&"a").expect("a's breaker").force_open();
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        ready(Ok(()))
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_endpoints_open_breaker_is_503() {
    let set = BreakerSet::new(
        BreakerConfig::builder()
            .name("endpoint")
            .build_config()
            .unwrap(),
        16,
    )
    .unwrap();
    let endpoint = TripsItsBreaker {
        set: set.clone(),
        tripped: Arc::new(AtomicBool::new(false)),
    };
    let stack = ClientStack::builder()
        .without_retry()
        .endpoint_breakers(set)
        .build(discover::from_list(["a"], move |_| endpoint.clone()))
        .unwrap();
    let error = error_of(stack).await;
    assert!(find::<EndpointOpen>(&*error).is_some(), "{error:?}");
    assert_maps_to(&*error, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_504() {
    let slow = service_fn(|_: Req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    });
    let error = error_of(TimeoutLayer::new(Duration::from_millis(10)).layer(slow)).await;
    assert!(find::<Elapsed>(&*error).is_some());
    assert_maps_to(&*error, StatusCode::GATEWAY_TIMEOUT);
}

/// A tonic `Channel`'s own timeout, which the grpc feature knows, wrapped as a transport error.
#[cfg(feature = "grpc")]
#[test]
fn a_channels_own_timeout_is_504() {
    let error = std::io::Error::other(tonic::TimeoutExpired(()));
    assert_maps_to(&error, StatusCode::GATEWAY_TIMEOUT);
}

#[tokio::test(start_paused = true)]
async fn a_rate_limit_is_429_with_retry_after_in_whole_seconds_rounded_up() {
    let error = limited_error(Duration::from_millis(1500)).await;
    let limited = find::<Limited>(&*error).expect("a rate limit");
    assert_eq!(limited.retry_after(), Duration::from_millis(1500));
    assert_eq!(status(&*error), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(retry_after(&*error), Some(Duration::from_millis(1500)));
    let response: Response<String> = to_response(&*error).unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()[RETRY_AFTER], "2");
    assert_eq!(response.body(), "", "the body is B::default()");

    // A wait under a second is one second, not zero.
    let error = limited_error(Duration::from_millis(200)).await;
    let response: Response<()> = to_response(&*error).unwrap();
    assert_eq!(response.headers()[RETRY_AFTER], "1");

    // A wait of whole seconds is kept.
    let error = limited_error(Duration::from_secs(30)).await;
    let response: Response<()> = to_response(&*error).unwrap();
    assert_eq!(response.headers()[RETRY_AFTER], "30");
}

/// An error wrapping another, as a layer of one's own or a body stream wraps it.
#[derive(Debug)]
struct Wrap(BoxError);

impl fmt::Display for Wrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapped")
    }
}

impl Error for Wrap {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

#[tokio::test(start_paused = true)]
async fn a_rejection_is_found_under_wrappers() {
    // In a wrapper of one's own, an `io::Error`, an `Arc` as a fallback shares it, a `Box`.
    let open = open_breaker_error().await;
    assert_maps_to(&Wrap(open), StatusCode::SERVICE_UNAVAILABLE);
    let open = open_breaker_error().await;
    assert_maps_to(
        &std::io::Error::other(Wrap(open)),
        StatusCode::SERVICE_UNAVAILABLE,
    );
    let shared: Arc<dyn Error + Send + Sync> = Arc::from(open_breaker_error().await);
    assert_maps_to(&Wrap(Box::new(shared)), StatusCode::SERVICE_UNAVAILABLE);
    let boxed: Box<Elapsed> = Box::new(Elapsed::new());
    assert_maps_to(&boxed, StatusCode::GATEWAY_TIMEOUT);

    // The wait of a rate limit comes through too.
    let limited = limited_error(Duration::from_secs(3)).await;
    let wrapped = std::io::Error::other(Wrap(limited));
    assert_eq!(status(&wrapped), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(retry_after(&wrapped), Some(Duration::from_secs(3)));
    let response: Response<()> = to_response(&wrapped).unwrap();
    assert_eq!(response.headers()[RETRY_AFTER], "3");
}

#[tokio::test(start_paused = true)]
async fn an_exhausted_retry_budget_maps_as_its_last_error() {
    // The breaker rejects the only attempt and the empty budget allows no retry: the error is a
    // `BudgetExhausted` wrapping `Open`. An earlier failure took the bucket's only token (the
    // rejection, never sent, takes none).
    let breaker = BreakerLayer::new();
    breaker.handle().force_open();
    let budget = RetryBudget::token_bucket(1.0, 0.1).unwrap();
    budget.record(Outcome::Failure);
    let retry = RetryLayer::builder().budget(budget).build().unwrap();
    let error = error_of(retry.layer(breaker.layer(ok()))).await;
    assert!(find::<BudgetExhausted>(&*error).is_some(), "{error:?}");
    assert_maps_to(&*error, StatusCode::SERVICE_UNAVAILABLE);

    // Its last attempt cut by a per-attempt timeout.
    let slow = service_fn(|_: Req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    });
    let budget = RetryBudget::token_bucket(1.0, 0.1).unwrap();
    budget.record(Outcome::Failure);
    let retry = RetryLayer::builder().budget(budget).build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(retry)
        .layer(TimeoutLayer::new(Duration::from_millis(10)).per_try())
        .service(slow);
    let error = error_of(svc).await;
    assert!(find::<BudgetExhausted>(&*error).is_some(), "{error:?}");
    assert_maps_to(&*error, StatusCode::GATEWAY_TIMEOUT);

    // Its last attempt failed by the server: not seawall's to map.
    let failing = service_fn(|_: Req| async { Err::<(), BoxError>("connection reset".into()) });
    let budget = RetryBudget::token_bucket(1.0, 0.1).unwrap();
    budget.record(Outcome::Failure);
    let retry = RetryLayer::builder().budget(budget).build().unwrap();
    let error = error_of(retry.layer(failing)).await;
    assert!(find::<BudgetExhausted>(&*error).is_some(), "{error:?}");
    assert_eq!(status(&*error), None);
    assert!(to_response::<()>(&*error).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failed_fallback_maps_as_the_original_error() {
    let breaker = BreakerLayer::new();
    breaker.handle().force_open();
    let fallback = FallbackLayer::builder()
        .build_fn(|_| Err::<(), BoxError>("no cached answer".into()))
        .unwrap();
    let error = error_of(fallback.layer(breaker.layer(ok()))).await;
    assert!(find::<FallbackFailed>(&*error).is_some(), "{error:?}");
    assert_maps_to(&*error, StatusCode::SERVICE_UNAVAILABLE);
}

/// An error that is its own source.
#[derive(Debug)]
struct Loop;

impl fmt::Display for Loop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("loop")
    }
}

impl Error for Loop {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(self)
    }
}

#[test]
fn other_errors_are_not_mapped() {
    for error in [
        Box::new(std::io::Error::other("connection reset")) as BoxError,
        "boom".into(),
        Box::new(Wrap("boom".into())),
        // A `NotSent` of one's own rejection is no seawall rejection.
        Box::new(seawall::core::error::NotSent::with_retry_after(
            Duration::from_secs(1),
        )),
        // A chain that comes back on itself ends.
        Box::new(Loop),
    ] {
        assert_eq!(status(&*error), None, "{error:?}");
        assert_eq!(retry_after(&*error), None, "{error:?}");
        assert!(to_response::<()>(&*error).is_none(), "{error:?}");
    }
}
