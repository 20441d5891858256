//! gRPC deadlines meet seawall's: a caller's `grpc-timeout` is the request's deadline, which the
//! total timeout keeps to (`HonorTimeoutLayer`), and the deadline seawall enforces goes to the
//! server in `grpc-timeout` (`SendDeadlineLayer`), while the `Channel`'s own timer on that header
//! charges no endpoint for a caller's deadline. In paused time.

use seawall::{
    balance::{BalanceEvent, BalanceLayer, OutlierDetection, Picker},
    breaker::{BreakerConfig, BreakerLayer, BreakerSet, SlidingWindow},
    core::{
        classify::GrpcClassifier, deadline::RequestDeadline, error::is, Deadline, TimeoutOverride,
    },
    discover,
    grpc::{
        parse_timeout, HonorTimeout, HonorTimeoutLayer, SendDeadline, SendDeadlineFuture,
        SendDeadlineLayer, StatusLayer,
    },
    stack::ClientStack,
    timeout::{Elapsed, TimeoutLayer},
    BoxError, ServiceBuilderExt,
};
use std::{
    future::Future,
    pin::pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::time::{advance, Instant};
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

/// What the inner service saw of a request.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    grpc_timeout: Option<String>,
    deadline: Option<Instant>,
}

fn seen(request: &http::Request<()>) -> Seen {
    Seen {
        grpc_timeout: request
            .headers()
            .get("grpc-timeout")
            .map(|v| v.to_str().unwrap().to_owned()),
        deadline: request.deadline(),
    }
}

/// Answers what it saw of the request after `delay`, or at once (ready on the first poll) when
/// `delay` is zero.
fn inner(
    delay: Duration,
) -> impl Service<http::Request<()>, Response = Seen, Error = BoxError, Future: Send> + Clone + Send + Sync
{
    service_fn(move |request: http::Request<()>| async move {
        let seen = seen(&request);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        Ok::<_, BoxError>(seen)
    })
}

fn with_grpc_timeout(value: &str) -> http::Request<()> {
    http::Request::builder()
        .header("grpc-timeout", value)
        .body(())
        .unwrap()
}

fn header(value: &str) -> Option<String> {
    Some(value.to_owned())
}

#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_shorter_than_the_total_timeout_cuts_the_call() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(30)))
        .service(inner(Duration::from_secs(1)));

    let start = Instant::now();
    let error = client.oneshot(with_grpc_timeout("100m")).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn the_inner_service_sees_the_grpc_timeout_as_the_deadline() {
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    let seen = client
        .oneshot(with_grpc_timeout("99999999u"))
        .await
        .unwrap();
    assert_eq!(
        seen,
        Seen {
            grpc_timeout: header("99999999u"),
            deadline: Some(Instant::now() + Duration::from_micros(99_999_999)),
        }
    );
}

/// As with tonic's own `Endpoint::timeout`, the shorter of the caller's timeout and the stack's
/// wins: a caller's longer timeout does not stretch the total timeout.
#[tokio::test(start_paused = true)]
async fn a_longer_grpc_timeout_does_not_stretch_the_total_timeout() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
        .service(inner(Duration::from_millis(1500)));
    let start = Instant::now();
    let error = client.oneshot(with_grpc_timeout("2S")).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_on_the_request_is_kept() {
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    let mut request = with_grpc_timeout("10S");
    let earlier = Instant::now() + Duration::from_millis(50);
    request.set_deadline(earlier);
    assert_eq!(
        client.clone().oneshot(request).await.unwrap().deadline,
        Some(earlier)
    );

    // A later one is brought forward to the caller's timeout.
    let mut request = with_grpc_timeout("10S");
    request.set_deadline(Instant::now() + Duration::from_secs(60));
    assert_eq!(
        client.oneshot(request).await.unwrap().deadline,
        Some(Instant::now() + Duration::from_secs(10))
    );
}

/// An override changes the total timeout's own duration; the caller's deadline still caps it.
#[tokio::test(start_paused = true)]
async fn an_override_and_the_grpc_timeout_the_shorter_wins() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(30)))
        .service(inner(Duration::from_secs(1)));
    for (grpc_timeout, overridden, ends_at) in [("10S", 50, 50), ("100m", 500, 100)] {
        let mut request = with_grpc_timeout(grpc_timeout);
        request
            .extensions_mut()
            .insert(TimeoutOverride(Duration::from_millis(overridden)));
        let start = Instant::now();
        let error = client.clone().oneshot(request).await.unwrap_err();
        assert!(is::<Elapsed>(&*error), "{error:?}");
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(ends_at),
            "{grpc_timeout}"
        );
    }
}

/// Without a total timeout of its own, a `ClientStack` still ends the call at the caller's
/// deadline: the layer `without_timeout()` keeps in its place enforces it (the per-try timeout,
/// 10 s by default, does not).
#[tokio::test(start_paused = true)]
async fn a_caller_deadline_is_enforced_without_a_total_timeout() {
    let stack = ClientStack::builder()
        .without_timeout()
        .without_retry()
        .build(discover::from_list(["only"], |_: &&'static str| {
            inner(Duration::from_secs(1))
        }))
        .unwrap();
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .service(stack);
    tokio::task::yield_now().await;
    let start = Instant::now();
    let error = client.oneshot(with_grpc_timeout("250m")).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
}

#[tokio::test(start_paused = true)]
async fn a_malformed_grpc_timeout_is_left_alone() {
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    for bad in ["1.5S", "123456789m", "10s", "m", "-5", "--1S", "-12345678S"] {
        let seen = client
            .clone()
            .oneshot(with_grpc_timeout(bad))
            .await
            .unwrap();
        assert_eq!(
            seen,
            Seen {
                grpc_timeout: header(bad),
                deadline: None
            },
            "{bad:?}"
        );
    }
    let seen = client.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(
        seen,
        Seen {
            grpc_timeout: None,
            deadline: None
        }
    );
}

/// A negative `grpc-timeout` that grpc-go before 1.73 reads (a `-`, one to seven digits and a
/// unit) is a deadline already past to it (grpc-go 1.73 and later reject it): like `0n`, it makes
/// the request's deadline now.
#[tokio::test(start_paused = true)]
async fn a_negative_grpc_timeout_is_a_deadline_of_now() {
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    for theirs in ["-1S", "-0S", "-1234567H", "0n"] {
        let seen = client
            .clone()
            .oneshot(with_grpc_timeout(theirs))
            .await
            .unwrap();
        assert_eq!(
            seen,
            Seen {
                grpc_timeout: header(theirs),
                deadline: Some(Instant::now())
            },
            "{theirs:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn the_sent_timeout_is_the_time_left_to_the_deadline() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    let deadline = Instant::now() + Duration::from_secs(1);
    let sent = || {
        let mut request = http::Request::new(());
        request.extensions_mut().insert(Deadline(deadline));
        let call = client.clone().oneshot(request);
        async move { call.await.unwrap().grpc_timeout }
    };

    assert_eq!(sent().await, header("1000000u"));
    advance(Duration::from_millis(300)).await;
    assert_eq!(sent().await, header("700000u"));
    advance(Duration::from_nanos(699_999_999)).await;
    assert_eq!(sent().await, header("1n"));
    // Past the deadline the server is given the least the header can say (and the answer, which
    // comes at once, before the `1n` runs out, is returned: a later one would be dropped, for the
    // timeout that enforces the deadline to cancel the attempt).
    advance(Duration::from_secs(5)).await;
    assert_eq!(sent().await, header("1n"));
}

#[tokio::test(start_paused = true)]
async fn a_shorter_grpc_timeout_on_the_request_is_kept() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    let deadline = Deadline(Instant::now() + Duration::from_secs(1));
    for (theirs, sent) in [
        ("100m", "100m"),
        ("1000000u", "1000000u"),
        ("1000001u", "1000000u"),
        ("5S", "1000000u"),
        ("+1S", "1S"),
        ("+2S", "1000000u"),
    ] {
        let mut request = with_grpc_timeout(theirs);
        request.extensions_mut().insert(deadline);
        let seen = client.clone().oneshot(request).await.unwrap();
        assert_eq!(seen.grpc_timeout, header(sent), "{theirs:?}");
    }
}

/// tonic reads a `+` before the digits, as grpc-go did before 1.73: `+1S` is one second to them. It
/// is kept under a longer deadline, never written over with the longer time left, and sent without
/// the `+`, which grpc-go 1.73 and later reject and the gRPC C core's servers cannot read (nor
/// leading zeros, which it can).
#[tokio::test(start_paused = true)]
async fn a_grpc_timeout_with_a_plus_is_not_lengthened() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    for (theirs, deadline, sent) in [
        ("+1S", 10_000, "1S"),
        ("+1000m", 10_000, "1000m"),
        ("+0001S", 10_000, "1S"),
        ("0001S", 10_000, "1S"),
        ("+0n", 10_000, "0n"),
        ("0n", 10_000, "0n"),
        ("10S", 10_000, "10S"),
        ("+1S", 500, "500000u"),
    ] {
        let mut request = with_grpc_timeout(theirs);
        request.set_deadline(Instant::now() + Duration::from_millis(deadline));
        let seen = client.clone().oneshot(request).await.unwrap();
        assert_eq!(seen.grpc_timeout, header(sent), "{theirs:?}");
    }

    // And it is the caller's deadline.
    let client = HonorTimeoutLayer::new().layer(inner(Duration::ZERO));
    let seen = client.oneshot(with_grpc_timeout("+1S")).await.unwrap();
    assert_eq!(seen.deadline, Some(Instant::now() + Duration::from_secs(1)));
}

/// A `grpc-timeout` seawall cannot read is written over with the time left to the deadline, and a
/// negative one grpc-go before 1.73 reads (a `-`, one to seven digits and a unit: `-1S`, a
/// deadline already past) is sent as `1n`. Any other `-` grpc-go rejects, as it does the rest (and
/// grpc-go 1.73 and later reject any signed timeout).
#[tokio::test(start_paused = true)]
async fn a_malformed_grpc_timeout_is_written_over() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    for (theirs, sent) in [
        ("1.5S", "10000000u"),
        ("123456789m", "10000000u"),
        ("10s", "10000000u"),
        ("", "10000000u"),
        ("-1S", "1n"),
        ("-0S", "1n"),
        ("-1234567H", "1n"),
        ("-5", "10000000u"),
        ("--1S", "10000000u"),
        ("-", "10000000u"),
        ("-S", "10000000u"),
        ("-+1S", "10000000u"),
        ("-1.5S", "10000000u"),
        ("-1s", "10000000u"),
        ("-12345678S", "10000000u"),
    ] {
        let mut request = with_grpc_timeout(theirs);
        request.set_deadline(Instant::now() + Duration::from_secs(10));
        let seen = client.clone().oneshot(request).await.unwrap();
        assert_eq!(seen.grpc_timeout, header(sent), "{theirs:?}");
    }
}

/// A server that rejects a `grpc-timeout` it cannot read, as grpc-go does (`INTERNAL`,
/// "malformed grpc-timeout"), and otherwise answers `OK` with the header it was sent.
fn strict_server(
) -> impl Service<http::Request<()>, Response = http::Response<()>, Error = BoxError, Future: Send>
       + Clone
       + Send
       + Sync {
    service_fn(|request: http::Request<()>| async move {
        let sent = request.headers().get("grpc-timeout").cloned();
        if sent
            .as_ref()
            .is_some_and(|value| parse_timeout(value).is_none())
        {
            return Ok(tonic::Status::internal("malformed grpc-timeout").into_http());
        }
        let mut response = tonic::Status::ok("").into_http();
        if let Some(sent) = sent {
            response.headers_mut().insert("sent-grpc-timeout", sent);
        }
        Ok::<_, BoxError>(response)
    })
}

/// A caller's malformed `grpc-timeout` does not get the call rejected, and charges the endpoint
/// nothing: the server is sent one it reads.
#[tokio::test(start_paused = true)]
async fn a_malformed_grpc_timeout_charges_no_endpoint() {
    for (theirs, sent) in [("1.5S", "10000000u"), ("-1S", "1n")] {
        let breaker = grpc_breaker();
        let client = ServiceBuilder::new()
            .with_breaker(breaker.clone())
            .layer(SendDeadlineLayer::new())
            .service(strict_server());
        let mut request = with_grpc_timeout(theirs);
        request.set_deadline(Instant::now() + Duration::from_secs(10));
        let response = client.oneshot(request).await.unwrap();
        assert_eq!(response.headers()["grpc-status"], "0", "{theirs:?}");
        assert_eq!(response.headers()["sent-grpc-timeout"], sent, "{theirs:?}");
        assert_eq!(breaker.handle().snapshot().failures, 0, "{theirs:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_without_a_deadline_is_sent_untouched() {
    let client = SendDeadlineLayer::new().layer(inner(Duration::ZERO));
    let seen = client
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(seen.grpc_timeout, None);
    // However it reads.
    for theirs in ["5S", "+1S", "1.5S", "-1S"] {
        let seen = client
            .clone()
            .oneshot(with_grpc_timeout(theirs))
            .await
            .unwrap();
        assert_eq!(seen.grpc_timeout, header(theirs), "{theirs:?}");
    }
}

/// The whole path: a caller's `grpc-timeout` sets the total timeout, the per-try timeout cuts
/// it shorter, and the server is told the shortest.
#[tokio::test(start_paused = true)]
async fn the_server_is_sent_the_deadline_of_the_stack() {
    let client = ServiceBuilder::new()
        .layer(HonorTimeoutLayer::new())
        .with_timeout(TimeoutLayer::new(Duration::from_secs(30)))
        .with_timeout(TimeoutLayer::new(Duration::from_secs(10)).per_try())
        .layer(SendDeadlineLayer::new())
        .service(inner(Duration::ZERO));

    // The per-try timeout is the shortest.
    let seen = client
        .clone()
        .oneshot(http::Request::new(()))
        .await
        .unwrap();
    assert_eq!(seen.grpc_timeout, header("10000000u"));
    // The caller's timeout is: no time has passed, so the caller's header says it already.
    let seen = client
        .clone()
        .oneshot(with_grpc_timeout("250m"))
        .await
        .unwrap();
    assert_eq!(seen.grpc_timeout, header("250m"));
    // The caller's timeout is longer than the per-try one.
    let seen = client.oneshot(with_grpc_timeout("1M")).await.unwrap();
    assert_eq!(seen.grpc_timeout, header("10000000u"));
}

#[test]
fn services_are_send_sync_and_static() {
    fn check<T: Send + Sync + 'static>() {}
    type Inner = tower::util::BoxCloneSyncService<http::Request<()>, (), BoxError>;
    check::<HonorTimeoutLayer>();
    check::<SendDeadlineLayer>();
    check::<HonorTimeout<Inner>>();
    check::<SendDeadline<Inner>>();
    fn future<T: Send + 'static>() {}
    future::<SendDeadlineFuture<<Inner as Service<http::Request<()>>>::Future>>();
}

/// What a tonic `Channel` fails a call with when its own timer runs out: a transport error whose
/// source is `tonic::TimeoutExpired`.
#[derive(Debug)]
struct Transport(tonic::TimeoutExpired);

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("transport error")
    }
}

impl std::error::Error for Transport {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// A stand-in for a tonic `Channel` to a server that answers after `delay`, with the `Channel`'s
/// own timer: at `call` it reads the `grpc-timeout` it sends (capped by `endpoint_timeout`, its
/// `Endpoint::timeout`) and fails the call with `tonic::TimeoutExpired` once that long has
/// passed, polling the answer first, as tonic's `GrpcTimeout` does.
fn channel(
    delay: Duration,
    endpoint_timeout: Option<Duration>,
) -> impl Service<http::Request<()>, Response = &'static str, Error = Transport, Future: Send>
       + Clone
       + Send
       + Sync {
    service_fn(move |request: http::Request<()>| {
        let header = request
            .headers()
            .get("grpc-timeout")
            .and_then(parse_timeout);
        let timeout = match (header, endpoint_timeout) {
            (Some(header), Some(endpoint)) => Some(header.min(endpoint)),
            (header, endpoint) => header.or(endpoint),
        };
        let timer = timeout.map(tokio::time::sleep);
        async move {
            let answer = tokio::time::sleep(delay);
            match timer {
                None => answer.await,
                Some(timer) => tokio::select! {
                    biased;
                    () = answer => {}
                    () = timer => return Err(Transport(tonic::TimeoutExpired(()))),
                },
            }
            Ok("answer")
        }
    })
}

/// What each layer of the stack under a generated client counted.
struct Counted {
    endpoints: BreakerSet<&'static str>,
    dependency: BreakerLayer,
    ejected: Arc<Mutex<Vec<String>>>,
}

impl Counted {
    fn new() -> Self {
        let config = |name: &str| {
            BreakerConfig::builder()
                .name(name)
                .sliding_window(SlidingWindow::count(10))
                .minimum_calls(3)
                .wait_duration(Duration::from_secs(60))
                .jitter(0.0)
        };
        Counted {
            endpoints: BreakerSet::new(config("endpoint").build_config().unwrap(), 16).unwrap(),
            dependency: config("dependency").build().unwrap(),
            ejected: Arc::default(),
        }
    }

    fn endpoint_failures(&self, key: &'static str) -> u32 {
        self.endpoints.handle(&key).unwrap().snapshot().failures
    }

    fn dependency_failures(&self) -> u32 {
        self.dependency.handle().snapshot().failures
    }
}

/// The layers under a generated client, as the `seawall::grpc` module docs lay them out: a caller's
/// `grpc-timeout` read by `HonorTimeoutLayer`, a `ClientStack` without a retry (with a total
/// timeout, or without one), and a `SendDeadlineLayer` on each of two `Channel`s to servers that
/// answer after `answer_after`. The per-try timeout is 500 ms; outlier detection ejects an
/// endpoint after 3 failures in a row.
fn grpc_stack(
    total: Option<Duration>,
    answer_after: Duration,
    counted: &Counted,
) -> impl Service<http::Request<()>, Response = &'static str, Error = BoxError, Future: Send> + Clone
{
    let ejected = counted.ejected.clone();
    let builder = ClientStack::builder().without_retry();
    let builder = match total {
        Some(total) => builder.timeout(total),
        None => builder.without_timeout(),
    };
    let stack = builder
        .breaker(counted.dependency.clone())
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection {
                    interval: Duration::from_millis(100),
                    max_ejection_percent: 1.0,
                    consecutive_failures: Some(3),
                    success_rate: None,
                    failure_percentage: None,
                    latency: None,
                    ..OutlierDetection::default()
                })
                .on_event(move |_: &seawall::Name, event: &BalanceEvent| {
                    if let BalanceEvent::Ejected { key, .. } = event {
                        ejected.lock().unwrap().push(key.clone());
                    }
                }),
        )
        .endpoint_breakers(counted.endpoints.clone())
        .per_try_timeout(Duration::from_millis(500))
        .build(discover::from_list(["a", "b"], |_: &&'static str| {
            SendDeadlineLayer::new().layer(channel(answer_after, None))
        }))
        .unwrap();
    ServiceBuilder::new()
        .layer(StatusLayer::new())
        .layer(HonorTimeoutLayer::new())
        .service(stack)
}

/// Six impatient callers in a row (three on each endpoint, which answers in 300 ms, within its
/// per-try timeout), each cut at 100 ms by `request()`'s deadline: every call fails with `Elapsed` (`DEADLINE_EXCEEDED`) at 100 ms, and no layer counts a
/// failure, though each `Channel` was told the deadline and its own timer ran out on the same tick
/// as the timeout that enforces it. A patient caller is then answered.
async fn channels_told_the_callers_deadline_charge_no_one<S>(
    client: S,
    counted: &Counted,
    request: impl Fn() -> http::Request<()>,
) where
    S: Service<http::Request<()>, Response = &'static str, Error = BoxError> + Clone,
{
    tokio::task::yield_now().await;
    let mut errors = Vec::new();
    for _ in 0..6 {
        let start = Instant::now();
        let error = client.clone().oneshot(request()).await.unwrap_err();
        errors.push((error, start.elapsed()));
    }
    // An outlier detection pass.
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(counted.endpoint_failures("a"), 0);
    assert_eq!(counted.endpoint_failures("b"), 0);
    assert_eq!(counted.dependency_failures(), 0);
    assert_eq!(*counted.ejected.lock().unwrap(), Vec::<String>::new());
    for (error, elapsed) in errors {
        let status = error.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(is::<Elapsed>(&*status), "{status:?}");
        assert_eq!(elapsed, Duration::from_millis(100));
    }
    let answer = client.oneshot(http::Request::new(())).await;
    assert!(matches!(answer, Ok("answer")), "{answer:?}");
}

/// A deadline passed down to the request (as a total timeout above the generated client passes
/// its own), enforced by the stack's total timeout and written by `SendDeadlineLayer` into the
/// `grpc-timeout` the `Channel` sends.
#[tokio::test(start_paused = true)]
async fn a_channels_timer_at_the_deadline_from_above_charges_no_endpoint() {
    let counted = Counted::new();
    let client = grpc_stack(
        Some(Duration::from_secs(1)),
        Duration::from_millis(300),
        &counted,
    );
    channels_told_the_callers_deadline_charge_no_one(client, &counted, || {
        let mut request = http::Request::new(());
        request.set_deadline(Instant::now() + Duration::from_millis(100));
        request
    })
    .await;
}

/// A caller's `grpc-timeout`, kept by `SendDeadlineLayer`, enforced in the stack without a total
/// timeout by the layer `without_timeout()` keeps.
#[tokio::test(start_paused = true)]
async fn a_channels_timer_at_the_callers_grpc_timeout_charges_no_endpoint() {
    let counted = Counted::new();
    let client = grpc_stack(None, Duration::from_millis(300), &counted);
    channels_told_the_callers_deadline_charge_no_one(client, &counted, || {
        with_grpc_timeout("100m")
    })
    .await;
}

/// The per-try timeout's own deadline, sent to the `Channel`, still charges the slow endpoint:
/// the per-try timeout ends the attempt with `Elapsed`, as without a `Channel` timer.
#[tokio::test(start_paused = true)]
async fn a_channels_timer_at_the_per_try_timeout_charges_the_endpoint() {
    let counted = Counted::new();
    let client = grpc_stack(
        Some(Duration::from_secs(1)),
        Duration::from_secs(1),
        &counted,
    );
    tokio::task::yield_now().await;
    for _ in 0..2 {
        // Patient: 100 ms past the per-try timeout.
        let start = Instant::now();
        let error = client
            .clone()
            .oneshot(with_grpc_timeout("600m"))
            .await
            .unwrap_err();
        let status = error.downcast::<tonic::Status>().unwrap();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert!(is::<Elapsed>(&*status), "{status:?}");
        assert_eq!(start.elapsed(), Duration::from_millis(500));
    }
    assert_eq!(counted.endpoint_failures("a"), 1);
    assert_eq!(counted.endpoint_failures("b"), 1);
    assert_eq!(counted.dependency_failures(), 2);
}

/// A task polled late (a busy thread), when the timers of the `Channel` and of the timeout
/// enforcing the deadline have both fired and the grace `SendDeadlineLayer` allows has run out
/// too: the timeout above still cancels the attempt, and no endpoint is charged.
#[tokio::test(start_paused = true)]
async fn a_channel_timeout_seen_late_still_charges_no_endpoint() {
    let counted = Counted::new();
    let client = grpc_stack(None, Duration::from_millis(300), &counted);
    tokio::task::yield_now().await;
    let mut cx = Context::from_waker(Waker::noop());
    // One call on each endpoint.
    for _ in 0..2 {
        let mut call = pin!(client.clone().oneshot(with_grpc_timeout("100m")));
        let first = call.as_mut().poll(&mut cx);
        assert!(first.is_pending(), "{first:?}");
        // The task is not polled until 10 ms past the deadline.
        advance(Duration::from_millis(110)).await;
        let Poll::Ready(Err(error)) = call.as_mut().poll(&mut cx) else {
            panic!("the call is still pending");
        };
        assert!(is::<Elapsed>(&*error), "{error:?}");
    }
    assert_eq!(counted.endpoint_failures("a"), 0);
    assert_eq!(counted.endpoint_failures("b"), 0);
    assert_eq!(counted.dependency_failures(), 0);
}

/// A `Channel` timer shorter than the deadline sent (its `Endpoint::timeout`) is the endpoint's
/// own: its `TimeoutExpired` is returned when it comes. Any other error is returned at once.
#[tokio::test(start_paused = true)]
async fn an_earlier_channel_timeout_is_returned_as_it_is() {
    let client = SendDeadlineLayer::new().layer(channel(
        Duration::from_secs(1),
        Some(Duration::from_millis(50)),
    ));
    let mut request = http::Request::new(());
    request.set_deadline(Instant::now() + Duration::from_millis(100));
    let start = Instant::now();
    let error = client.oneshot(request).await.unwrap_err();
    assert!(is::<tonic::TimeoutExpired>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(50));

    let failing = SendDeadlineLayer::new().layer(service_fn(|_: http::Request<()>| async {
        Err::<(), BoxError>("connection reset".into())
    }));
    let mut request = http::Request::new(());
    request.set_deadline(Instant::now() + Duration::from_millis(100));
    let start = Instant::now();
    let error = failing.oneshot(request).await.unwrap_err();
    assert_eq!(error.to_string(), "connection reset");
    assert_eq!(start.elapsed(), Duration::ZERO);
}

/// With no timeout above to cancel the attempt, the `Channel`'s `TimeoutExpired` at the deadline
/// it was told becomes `Elapsed` two milliseconds later.
#[tokio::test(start_paused = true)]
async fn a_channel_timeout_nothing_cancels_is_elapsed() {
    let client = SendDeadlineLayer::new().layer(channel(Duration::from_secs(1), None));
    let mut request = http::Request::new(());
    request.set_deadline(Instant::now() + Duration::from_millis(100));
    let start = Instant::now();
    let error = client.oneshot(request).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(102));
}

/// The header is rounded down, so a `Channel` told a deadline between two timer ticks fires a
/// tick before the timeout that enforces it. When the task is next polled only after the
/// `Channel`'s error has been held for its whole grace (a busy thread), both that timeout's timer
/// and the hold's have fired: the timeout above still cancels the attempt, and no endpoint is
/// charged.
#[tokio::test(start_paused = true)]
async fn a_channel_timeout_a_tick_early_held_until_late_charges_no_endpoint() {
    let counted = Counted::new();
    let client = grpc_stack(
        Some(Duration::from_secs(1)),
        Duration::from_millis(300),
        &counted,
    );
    tokio::task::yield_now().await;
    let mut cx = Context::from_waker(Waker::noop());
    let mut request = http::Request::new(());
    // Sent as `101000u`: the `Channel`'s timer fires at tick 101, the total timeout's at 102.
    request.set_deadline(Instant::now() + Duration::from_millis(101) + Duration::from_nanos(500));
    let mut call = pin!(client.oneshot(request));
    let first = call.as_mut().poll(&mut cx);
    assert!(first.is_pending(), "{first:?}");

    advance(Duration::from_millis(101)).await;
    let held = call.as_mut().poll(&mut cx);
    assert!(held.is_pending(), "{held:?}");
    // The task is not polled again until the hold has run out too.
    advance(Duration::from_millis(5)).await;
    let Poll::Ready(Err(error)) = call.as_mut().poll(&mut cx) else {
        panic!("the call is still pending");
    };
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(counted.endpoint_failures("a"), 0);
    assert_eq!(counted.dependency_failures(), 0);
}

/// A deadline far enough away that the header counts seconds (28 hours and 999 ms is sent as
/// `100800S`): the `Channel`'s timer runs out almost a whole second before the deadline, and its
/// `TimeoutExpired` is held back all the same, for the timeout above to cancel the attempt at the
/// deadline, and the breaker between them counts no failure.
#[tokio::test(start_paused = true)]
async fn a_channel_timeout_a_header_unit_early_is_held() {
    let counted = Counted::new();
    let told = Duration::from_secs(28 * 3600) + Duration::from_millis(999);
    let client = ServiceBuilder::new()
        .with_timeout(TimeoutLayer::new(Duration::from_secs(30 * 3600)))
        .with_breaker(counted.dependency.clone())
        .layer(SendDeadlineLayer::new())
        .service(channel(Duration::from_secs(30 * 3600), None));
    let mut request = http::Request::new(());
    request.set_deadline(Instant::now() + told);
    let start = Instant::now();
    let error = client.oneshot(request).await.unwrap_err();
    assert!(is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), told);
    assert_eq!(counted.dependency_failures(), 0);
}

/// Without `HonorTimeoutLayer` above, a caller's `grpc-timeout` shorter than the time left to the
/// request's deadline is kept as it came, and no seawall timeout enforces it: the `Channel`'s
/// `TimeoutExpired` on it is the caller's own timeout, returned as it is when it comes.
#[tokio::test(start_paused = true)]
async fn a_channel_timeout_at_a_callers_shorter_header_is_returned_as_it_is() {
    let client = SendDeadlineLayer::new().layer(channel(Duration::from_secs(1), None));
    let mut request = with_grpc_timeout("100m");
    request.set_deadline(Instant::now() + Duration::from_secs(1));
    let start = Instant::now();
    let error = client.oneshot(request).await.unwrap_err();
    assert!(is::<tonic::TimeoutExpired>(&*error), "{error:?}");
    assert!(!is::<Elapsed>(&*error), "{error:?}");
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

/// A server (behind a stand-in `Channel` without a timer of its own) that enforces the
/// `grpc-timeout` it is sent: it answers with `cut()` a round trip (100 µs) after the header runs
/// out, as grpc-go answers a trailers-only `DEADLINE_EXCEEDED`, Envoy an `UNAVAILABLE` local
/// reply, or a reset stream surfaces as an error.
fn enforcing_server(
    cut: fn() -> Result<http::Response<()>, BoxError>,
) -> impl Service<http::Request<()>, Response = http::Response<()>, Error = BoxError, Future: Send>
       + Clone
       + Send
       + Sync {
    service_fn(move |request: http::Request<()>| {
        let told = parse_timeout(&request.headers()["grpc-timeout"]).unwrap();
        async move {
            tokio::time::sleep(told + Duration::from_micros(100)).await;
            cut()
        }
    })
}

fn deadline_exceeded() -> Result<http::Response<()>, BoxError> {
    Ok(tonic::Status::deadline_exceeded("deadline exceeded").into_http())
}

fn unavailable() -> Result<http::Response<()>, BoxError> {
    Ok(tonic::Status::unavailable("upstream request timeout").into_http())
}

fn reset() -> Result<http::Response<()>, BoxError> {
    Err("stream reset: CANCEL".into())
}

fn grpc_breaker() -> BreakerLayer<GrpcClassifier> {
    BreakerLayer::builder()
        .minimum_calls(1)
        .build_with(GrpcClassifier::new())
        .unwrap()
}

/// A caller's negative `grpc-timeout` is a deadline already past, as `0n` is, not a header shorter
/// than the stack's deadline that no timeout enforces: the timeout ends the call at once, before
/// the server, told `1n`, answers `DEADLINE_EXCEEDED` a round trip later, and the breaker
/// between them counts no failure.
#[tokio::test(start_paused = true)]
async fn a_callers_negative_grpc_timeout_charges_no_endpoint() {
    for theirs in ["-1S", "0n"] {
        let breaker = grpc_breaker();
        let client = ServiceBuilder::new()
            .layer(HonorTimeoutLayer::new())
            .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
            .with_breaker(breaker.clone())
            .layer(SendDeadlineLayer::new())
            .service(enforcing_server(deadline_exceeded));
        let start = Instant::now();
        let result = client.oneshot(with_grpc_timeout(theirs)).await;
        let error = result
            .map(|response| response.headers().clone())
            .unwrap_err();
        assert!(is::<Elapsed>(&*error), "{theirs:?}: {error:?}");
        assert_eq!(start.elapsed(), Duration::ZERO, "{theirs:?}");
        assert_eq!(breaker.handle().snapshot().failures, 0, "{theirs:?}");
    }
}

/// The server's own answer to the deadline it was told comes a round trip after it, before the
/// timer of the timeout that enforces it (due on the next tick): whatever it is, it is dropped, the
/// timeout cancels the attempt, and the breaker between them counts no failure.
#[tokio::test(start_paused = true)]
async fn a_servers_answer_to_the_deadline_it_was_told_charges_no_endpoint() {
    for cut in [deadline_exceeded, unavailable, reset] {
        let breaker = grpc_breaker();
        let client = ServiceBuilder::new()
            .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
            .with_breaker(breaker.clone())
            .layer(SendDeadlineLayer::new())
            .service(enforcing_server(cut));
        let mut request = http::Request::new(());
        // Sent as `100500u`: the server's timer, due at 100.6 ms, fires on the timeout's tick,
        // 101 ms (an answer between the two is checked by
        // `a_servers_answer_between_the_header_and_the_timers_tick_charges_no_endpoint`).
        request.set_deadline(Instant::now() + Duration::from_micros(100_500));
        let start = Instant::now();
        let error = client.oneshot(request).await.unwrap_err();
        assert!(is::<Elapsed>(&*error), "{:?}: {error:?}", cut());
        assert_eq!(start.elapsed(), Duration::from_millis(101));
        assert_eq!(breaker.handle().snapshot().failures, 0, "{:?}", cut());
    }
}

/// A deadline far enough away that the header counts seconds (28 hours and 999 ms is sent as
/// `100800S`): the server's answer to it comes almost a second before the deadline, and is
/// dropped all the same, for the timeout above to cancel the attempt at the deadline.
#[tokio::test(start_paused = true)]
async fn a_servers_answer_to_a_header_a_unit_short_charges_no_endpoint() {
    for cut in [deadline_exceeded, reset] {
        let breaker = grpc_breaker();
        let told = Duration::from_secs(28 * 3600) + Duration::from_millis(999);
        let client = ServiceBuilder::new()
            .with_timeout(TimeoutLayer::new(Duration::from_secs(30 * 3600)))
            .with_breaker(breaker.clone())
            .layer(SendDeadlineLayer::new())
            .service(enforcing_server(cut));
        let mut request = http::Request::new(());
        request.set_deadline(Instant::now() + told);
        let start = Instant::now();
        let error = client.oneshot(request).await.unwrap_err();
        assert!(is::<Elapsed>(&*error), "{:?}: {error:?}", cut());
        assert_eq!(start.elapsed(), told);
        assert_eq!(breaker.handle().snapshot().failures, 0, "{:?}", cut());
    }
}

/// An answer that comes before the instant the header stands for is the server's own, returned
/// as it comes and counted.
#[tokio::test(start_paused = true)]
async fn a_servers_answer_before_the_deadline_it_was_told_is_returned() {
    let breaker = grpc_breaker();
    let client = ServiceBuilder::new()
        .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
        .with_breaker(breaker.clone())
        .layer(SendDeadlineLayer::new())
        .service(service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            unavailable()
        }));
    let mut request = http::Request::new(());
    request.set_deadline(Instant::now() + Duration::from_millis(100));
    let start = Instant::now();
    let response = client.oneshot(request).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "14");
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(breaker.handle().snapshot().failures, 1);
}

/// Where a test sends the answer of [`answered_by_hand`]'s server.
type Answer = tokio::sync::oneshot::Sender<Result<http::Response<()>, BoxError>>;

/// A server whose answer the test sends, when it likes, on the returned channel.
fn answered_by_hand() -> (
    impl Service<http::Request<()>, Response = http::Response<()>, Error = BoxError, Future: Send>
        + Clone
        + Send
        + Sync,
    Answer,
) {
    let (send, receive) = tokio::sync::oneshot::channel();
    let receive = Arc::new(Mutex::new(Some(receive)));
    let server = service_fn(move |_: http::Request<()>| {
        let receive = receive.lock().unwrap().take().expect("one call");
        async move { receive.await.expect("an answer") }
    });
    (server, send)
}

fn ok() -> Result<http::Response<()>, BoxError> {
    Ok(tonic::Status::ok("").into_http())
}

/// The server's answer to the deadline it was told comes after the instant the header stands
/// for, and before the tick on which the timer of the timeout that enforces the deadline fires:
/// whatever it is, it is dropped, the timeout cancels the attempt on that tick, and the breaker
/// between them counts no failure.
#[tokio::test(start_paused = true)]
async fn a_servers_answer_between_the_header_and_the_timers_tick_charges_no_endpoint() {
    for cut in [deadline_exceeded, unavailable, reset] {
        let breaker = grpc_breaker();
        let (server, answer) = answered_by_hand();
        let client = ServiceBuilder::new()
            .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
            .with_breaker(breaker.clone())
            .layer(SendDeadlineLayer::new())
            .service(server);
        let mut request = http::Request::new(());
        // Sent as `100500u`; the timeout's timer fires at 101 ms.
        let start = Instant::now();
        request.set_deadline(start + Duration::from_micros(100_500));
        let mut cx = Context::from_waker(Waker::noop());
        let mut call = pin!(client.oneshot(request));
        assert!(call.as_mut().poll(&mut cx).is_pending());

        advance(Duration::from_micros(100_600)).await;
        answer.send(cut()).unwrap();
        let held = call.as_mut().poll(&mut cx);
        assert!(held.is_pending(), "{:?}: {held:?}", cut());
        assert_eq!(breaker.handle().snapshot().failures, 0, "{:?}", cut());

        advance(Duration::from_micros(400)).await;
        let Poll::Ready(Err(error)) = call.as_mut().poll(&mut cx) else {
            panic!("{:?}: the call is still pending", cut());
        };
        assert!(is::<Elapsed>(&*error), "{:?}: {error:?}", cut());
        assert_eq!(start.elapsed(), Duration::from_millis(101));
        assert_eq!(breaker.handle().snapshot().failures, 0, "{:?}", cut());
    }
}

/// The server's clock starts when the request reaches it, so a successful answer, finished
/// within the time the server was told, may come after the instant the header stands for: with
/// no timeout above to cancel the attempt, it is dropped all the same, and the call fails with
/// `Elapsed` two milliseconds past the deadline, on the timer's next tick.
#[tokio::test(start_paused = true)]
async fn a_successful_answer_after_the_header_nothing_cancels_is_elapsed() {
    let (server, answer) = answered_by_hand();
    let client = SendDeadlineLayer::new().layer(server);
    let mut request = http::Request::new(());
    let start = Instant::now();
    // Sent as `100500u`.
    request.set_deadline(start + Duration::from_micros(100_500));
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = pin!(client.oneshot(request));
    assert!(call.as_mut().poll(&mut cx).is_pending());

    advance(Duration::from_micros(100_600)).await;
    answer.send(ok()).unwrap();
    let held = call.as_mut().poll(&mut cx);
    assert!(held.is_pending(), "{held:?}");

    // The hold ends two milliseconds past the deadline, 102.5 ms, which tokio's timer rounds up
    // to its tick at 103 ms; the poll that sees it end stays pending, and the next one fails.
    advance(Duration::from_micros(2_300)).await;
    let held = call.as_mut().poll(&mut cx);
    assert!(held.is_pending(), "{held:?}");
    advance(Duration::from_micros(100)).await;
    assert_eq!(start.elapsed(), Duration::from_millis(103));
    let held = call.as_mut().poll(&mut cx);
    assert!(held.is_pending(), "{held:?}");
    let Poll::Ready(Err(error)) = call.as_mut().poll(&mut cx) else {
        panic!("the call is still pending");
    };
    assert!(is::<Elapsed>(&*error), "{error:?}");
}

/// A caller's header kept that falls short of the deadline by less than a millisecond stands for
/// that deadline: a successful answer that comes after the header runs out, though before the
/// deadline, is dropped, and the caller sees `Elapsed` at its deadline (never earlier).
#[tokio::test(start_paused = true)]
async fn a_successful_answer_after_a_callers_header_kept_is_elapsed_at_the_deadline() {
    let (server, answer) = answered_by_hand();
    let client = ServiceBuilder::new()
        .with_timeout(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(SendDeadlineLayer::new())
        .service(server);
    let mut request = with_grpc_timeout("99500u");
    let start = Instant::now();
    request.set_deadline(start + Duration::from_millis(100));
    let mut cx = Context::from_waker(Waker::noop());
    let mut call = pin!(client.oneshot(request));
    assert!(call.as_mut().poll(&mut cx).is_pending());

    advance(Duration::from_micros(99_800)).await;
    answer.send(ok()).unwrap();
    let held = call.as_mut().poll(&mut cx);
    assert!(held.is_pending(), "{held:?}");

    advance(Duration::from_micros(200)).await;
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    let Poll::Ready(Err(error)) = call.as_mut().poll(&mut cx) else {
        panic!("the call is still pending");
    };
    assert!(is::<Elapsed>(&*error), "{error:?}");
}
