//! seawall's rejections become the gRPC statuses a client expects, with the seawall error kept as
//! the status's source; a readiness error comes back from every later call.

use seawall::{
    balance::{BalanceLayer, NoEndpoints},
    breaker::{BreakerLayer, Open, State},
    bulkhead::{ratelimit::RateLimitLayer, BulkheadLayer, Full},
    core::error::{find, is_not_sent, SentEarlier},
    discover,
    grpc::{code, to_status, StatusLayer, StatusService},
    retry::{BudgetExhausted, RequestDeadline, RetryBudget, RetryLayer},
    BoxError, Outcome,
};
use std::{
    future::pending,
    task::{Context, Poll},
    time::Duration,
};
use tonic::{Code, Status};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

fn ok() -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(|()| async { Ok::<_, BoxError>(()) })
}

/// Calls `svc` with `request` through a [`StatusLayer`] and returns the status it failed with.
async fn status_with<S, R>(svc: S, request: R) -> Status
where
    S: Service<R, Error = BoxError>,
{
    let error = StatusLayer::new()
        .layer(svc)
        .oneshot(request)
        .await
        .err()
        .expect("the call fails");
    *error.downcast::<Status>().expect("a tonic Status")
}

async fn status_of<S: Service<(), Error = BoxError>>(svc: S) -> Status {
    status_with(svc, ()).await
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_is_unavailable() {
    let breaker = BreakerLayer::new();
    breaker.handle().force_open();
    let status = status_of(breaker.layer(ok())).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        find::<Open>(&status).is_some(),
        "the seawall error is the source"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_bulkhead_and_a_rate_limit_are_resource_exhausted() {
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let stuck = bulkhead.layer(service_fn(|()| pending::<Result<(), BoxError>>()));
    let holder = tokio::spawn(stuck.clone().oneshot(()));
    tokio::task::yield_now().await;
    let status = status_of(stuck).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(find::<Full>(&status).is_some());
    holder.abort();

    let limiter = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let limited = limiter.layer(ok());
    limited.clone().oneshot(()).await.unwrap();
    let status = status_of(limited).await;
    assert_eq!(status.code(), Code::ResourceExhausted);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_deadline_exceeded() {
    let slow = service_fn(|_: Req| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, BoxError>(())
    });
    let svc = ServiceBuilder::new()
        .layer(seawall::timeout::TimeoutLayer::new(Duration::from_millis(
            10,
        )))
        .service(slow);
    assert_eq!(status_with(svc, Req).await.code(), Code::DeadlineExceeded);
}

#[derive(Clone)]
struct Req;
impl RequestDeadline for Req {}

/// tonic reports its `Channel`'s own timeout (`Endpoint::timeout`, the `grpc-timeout` it sends)
/// as `CANCELLED`; a client whose deadline ran out expects `DEADLINE_EXCEEDED`, also when the
/// `TimeoutExpired` comes wrapped, as the source of a transport error.
#[tokio::test(start_paused = true)]
async fn a_channels_own_timeout_is_deadline_exceeded() {
    let expired = service_fn(|()| async {
        Err::<(), BoxError>(Box::new(std::io::Error::other(tonic::TimeoutExpired(()))))
    });
    let status = status_of(expired).await;
    assert_eq!(status.code(), Code::DeadlineExceeded);
    assert!(find::<tonic::TimeoutExpired>(&status).is_some());
    assert_eq!(
        code(&tonic::TimeoutExpired(())),
        Some(Code::DeadlineExceeded)
    );
}

#[tokio::test(start_paused = true)]
async fn the_servers_status_under_an_exhausted_budget_is_kept() {
    let draining = service_fn(|_: Req| async {
        let mut status = Status::unavailable("draining");
        status
            .metadata_mut()
            .insert("x-backend", "b1".parse().unwrap());
        Err::<(), BoxError>(Box::new(status))
    });
    // One failure empties gRPC's token bucket of 1: no retry is allowed.
    let retry = RetryLayer::builder()
        .budget(RetryBudget::token_bucket(1.0, 0.1).unwrap())
        .build()
        .unwrap();
    let error = retry.layer(draining).oneshot(Req).await.unwrap_err();
    assert!(find::<BudgetExhausted>(&*error).is_some());
    assert_eq!(code(&*error), Some(Code::Unavailable));
    let status = to_status(error);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "draining");
    assert_eq!(status.metadata().get("x-backend").unwrap(), "b1");
    assert!(find::<BudgetExhausted>(&status).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_rejection_under_a_wrapper_gives_the_status_its_own_message() {
    // The breaker rejects the only attempt and the empty budget allows no retry: the error is a
    // `BudgetExhausted` wrapping `Open`, and the code comes from `Open`. An earlier failure took
    // the bucket's only token (the rejection, never sent, takes none).
    let breaker = BreakerLayer::new();
    breaker.handle().force_open();
    let budget = RetryBudget::token_bucket(1.0, 0.1).unwrap();
    budget.record(Outcome::Failure);
    let retry = RetryLayer::builder().budget(budget).build().unwrap();
    let ok = service_fn(|_: Req| async { Ok::<_, BoxError>(()) });
    let error = retry
        .layer(breaker.layer(ok))
        .oneshot(Req)
        .await
        .unwrap_err();
    assert!(find::<BudgetExhausted>(&*error).is_some());
    let status = to_status(error);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "circuit breaker is open");
    assert!(find::<BudgetExhausted>(&status).is_some());
    assert!(find::<Open>(&status).is_some());
}

#[tokio::test(start_paused = true)]
async fn other_errors_are_mapped_as_tonic_maps_them() {
    let failing = service_fn(|()| async { Err::<(), BoxError>("boom".into()) });
    let status = status_of(failing).await;
    assert_eq!(status.code(), Code::Unknown);
    assert_eq!(code(&std::io::Error::other("boom")), None);
    let status = Status::permission_denied("no");
    assert_eq!(to_status(Box::new(status)).code(), Code::PermissionDenied);
}

/// An error that is its own source.
#[derive(Debug)]
struct Loop;

impl std::fmt::Display for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("loop")
    }
}

impl std::error::Error for Loop {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self)
    }
}

/// An error whose `source()` chain comes back on itself is mapped, not walked forever.
#[test]
fn an_error_whose_chain_loops_is_mapped_to_unknown() {
    let (done, answer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let status = to_status(Box::new(Loop));
        let _ = done.send((status.code(), status.message().to_owned()));
    });
    let (code, message) = answer
        .recv_timeout(Duration::from_secs(5))
        .expect("mapping an error whose chain loops did not end");
    assert_eq!(code, Code::Unknown);
    assert_eq!(message, "loop");
}

/// Fails `poll_ready` once (a connection that could not be made), then would answer.
#[derive(Default, Clone)]
struct FailsReadyOnce {
    failed: bool,
}

impl Service<()> for FailsReadyOnce {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if std::mem::replace(&mut self.failed, true) {
            Poll::Ready(Ok(()))
        } else {
            Poll::Ready(Err(Box::new(Status::unavailable("connection refused"))))
        }
    }

    fn call(&mut self, (): ()) -> Self::Future {
        std::future::ready(Ok("answer"))
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_comes_back_from_every_later_call() {
    let mut svc = StatusLayer::new().layer(FailsReadyOnce::default());
    // tonic's generated clients map any readiness error to UNKNOWN: it is kept instead, and
    // answers this call and every later one, without polling the failed service again (it would
    // be ready by now).
    for _ in 0..2 {
        svc.ready().await.expect("readiness errors are kept");
        let status = svc
            .call(())
            .await
            .unwrap_err()
            .downcast::<Status>()
            .unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "connection refused");
    }
    assert!(svc.get_ref().is_none(), "the failed service was dropped");
}

/// tower's contract: a service whose `poll_ready` failed is gone, and some panic when polled
/// again (`FutureService`, `SpawnReady`). Every later call gets the same status.
#[tokio::test(start_paused = true)]
async fn a_failed_inner_service_is_never_polled_again() {
    type Svc = tower::util::BoxCloneService<(), (), BoxError>;
    let refused: Result<Svc, BoxError> = Err(Box::new(Status::unavailable("refused")));
    let mut svc =
        StatusLayer::new().layer(tower::util::future_service(std::future::ready(refused)));
    for _ in 0..2 {
        let status = svc
            .ready()
            .await
            .unwrap()
            .call(())
            .await
            .unwrap_err()
            .downcast::<Status>()
            .unwrap();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "refused");
    }
}

/// Calls a `StatusService` over `svc`, whose readiness fails, checks the status it keeps and
/// returns it, failed.
async fn fail_ready<S>(svc: S) -> StatusService<S>
where
    S: Service<(), Response = &'static str, Error = BoxError>,
{
    let mut failed = StatusLayer::new().layer(svc);
    let status = failed
        .ready()
        .await
        .unwrap()
        .call(())
        .await
        .unwrap_err()
        .downcast::<Status>()
        .unwrap();
    assert_eq!(status.code(), Code::Unavailable);
    failed
}

/// A failed inner service is dropped, and with it what the layers in it had reserved: a
/// bulkhead with backpressure takes its permit before it polls its own inner service, and keeps
/// it when that fails. The permit is the whole layer's, so another service of the same bulkhead
/// gets it.
#[tokio::test(start_paused = true)]
async fn a_failed_inner_service_gives_back_its_bulkhead_permit() {
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(1)
        .backpressure(true)
        .build()
        .unwrap();
    let _failed = fail_ready(bulkhead.layer(FailsReadyOnce::default())).await;

    let mut other = bulkhead.layer(FailsReadyOnce { failed: true });
    tokio::time::timeout(Duration::from_secs(1), other.ready())
        .await
        .expect("the failed service's permit is back in the bulkhead")
        .unwrap();
    assert_eq!(other.call(()).await.unwrap(), "answer");
}

/// The same for a HalfOpen breaker's probe: it is not held by the failed service until HalfOpen
/// gives up on it (30 s by default), and another service's probe goes through at once.
#[tokio::test(start_paused = true)]
async fn a_failed_inner_service_gives_back_its_breaker_probe() {
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .build()
        .unwrap();
    let down = service_fn(|()| async { Err::<(), BoxError>("down".into()) });
    breaker.layer(down).oneshot(()).await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let _failed = fail_ready(breaker.layer(FailsReadyOnce::default())).await;
    assert_eq!(breaker.handle().state(), State::HalfOpen);

    let other = breaker.layer(FailsReadyOnce { failed: true });
    assert_eq!(other.oneshot(()).await.unwrap(), "answer");
    assert_eq!(breaker.handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_balancer_with_no_endpoint_is_unavailable() {
    let balance = BalanceLayer::builder()
        .max_wait(Duration::from_millis(20))
        .build()
        .unwrap()
        .layer(discover::from_list(Vec::<u16>::new(), |_| ok()));
    let status = status_of(balance).await;
    assert_eq!(status.code(), Code::Unavailable);
    assert!(find::<NoEndpoints>(&status).is_some());
}

/// A retry whose first attempt the server answered `UNAVAILABLE`, which opened the breaker under
/// it, and whose second attempt the breaker rejected: the call's error is the rejection marked as
/// following an attempt that was sent (`SentEarlier`, under `BudgetExhausted` when the budget
/// allowed no more tries). Its status is `UNAVAILABLE`, from `Open`, and is not taken, through
/// the status's source, for a call that was never sent: the first attempt reached the server.
#[tokio::test(start_paused = true)]
async fn a_rejection_after_a_sent_attempt_is_unavailable_and_not_taken_for_never_sent() {
    let draining = service_fn(|_: Req| async {
        Err::<(), BoxError>(Box::new(Status::unavailable("draining")))
    });

    // The client stack's retry, which returns `Open` at once.
    let breaker = BreakerLayer::builder().minimum_calls(1).build().unwrap();
    let retry = RetryLayer::builder()
        .ignore_error::<Open>()
        .build()
        .unwrap();
    let error = retry
        .layer(breaker.layer(draining))
        .oneshot(Req)
        .await
        .unwrap_err();
    rejected_after_a_sent_attempt(error, &breaker, false);

    // One with a budget of a single retry, which wants to try a third time and gives up on the
    // budget.
    let breaker = BreakerLayer::builder().minimum_calls(1).build().unwrap();
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_second(1)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let retry = RetryLayer::builder().budget(budget).build().unwrap();
    let error = retry
        .layer(breaker.layer(draining))
        .oneshot(Req)
        .await
        .unwrap_err();
    rejected_after_a_sent_attempt(error, &breaker, true);
}

fn rejected_after_a_sent_attempt(error: BoxError, breaker: &BreakerLayer, exhausted: bool) {
    assert_eq!(breaker.handle().state(), State::Open);
    assert!(find::<SentEarlier>(&*error).is_some(), "{error:?}");
    assert_eq!(
        find::<BudgetExhausted>(&*error).is_some(),
        exhausted,
        "{error:?}"
    );
    assert!(!is_not_sent(&*error));
    assert_eq!(code(&*error), Some(Code::Unavailable));

    let status = to_status(error);
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.message(), "circuit breaker is open");
    assert!(find::<Open>(&status).is_some());
    assert!(find::<SentEarlier>(&status).is_some());
    assert!(!is_not_sent(&status), "{status:?}");
}
