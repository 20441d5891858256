//! tonic `Channel`s calling tonic servers (the standard gRPC health service) on loopback, behind
//! seawall layers that classify gRPC statuses with `GrpcClassifier`.
//!
//! A misbehaving server answers every call trailers-only with `grpc-status: 14` (UNAVAILABLE):
//! HTTP 200, so only the gRPC status tells the call failed. Another is shut down mid-test. The
//! servers record the `grpc-timeout` each call arrives with.

use seawall::{
    balance::{BalanceEvent, EjectReason, OutlierDetection, Picker},
    breaker::{BreakerConfig, BreakerLayer, BreakerSet, Open, SlidingWindow, State},
    core::{
        classify::{ClassifyExt, GrpcClassifier, GrpcCode},
        deadline::{Deadline, RequestDeadline, WithDeadline},
        error::is,
    },
    discover,
    grpc::{parse_timeout, HonorTimeoutLayer, RetryClassifier, SendDeadlineLayer, StatusLayer},
    retry::{Backoff, RetryBudget, RetryEvent, RetryLayer},
    stack::{ClientStack, EndpointOpen},
    BoxError, Name, Outcome, ServiceBuilderExt,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{server::TcpIncoming, Channel, Endpoint, Server},
    Code, Status,
};
use tonic_health::{
    pb::{health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest},
    server::HealthReporter,
};
use tower::{service_fn, util::BoxCloneService, Layer, ServiceBuilder, ServiceExt};

struct GrpcServer {
    addr: SocketAddr,
    /// Calls that reached the server.
    hits: Arc<AtomicU32>,
    /// When set, every call is answered UNAVAILABLE.
    unavailable: Arc<AtomicBool>,
    /// The `grpc-timeout` of each call that reached the server, in order.
    timeouts: Arc<Mutex<Vec<Option<String>>>>,
    stop: Option<oneshot::Sender<()>>,
    _reporter: HealthReporter,
}

async fn grpc_server() -> GrpcServer {
    let (reporter, health) = tonic_health::server::health_reporter();
    let hits = Arc::new(AtomicU32::new(0));
    let unavailable = Arc::new(AtomicBool::new(false));
    let timeouts = Arc::new(Mutex::new(Vec::new()));
    let (h, u, t) = (hits.clone(), unavailable.clone(), timeouts.clone());
    // A failing interceptor answers trailers-only: `grpc-status` in the response headers.
    let svc = InterceptedService::new(health, move |req: tonic::Request<()>| {
        h.fetch_add(1, SeqCst);
        let timeout = req.metadata().get("grpc-timeout");
        t.lock()
            .unwrap()
            .push(timeout.map(|v| v.to_str().unwrap().to_owned()));
        if u.load(SeqCst) {
            Err(Status::unavailable("draining"))
        } else {
            Ok(req)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    GrpcServer {
        addr,
        hits,
        unavailable,
        timeouts,
        stop: Some(stop),
        _reporter: reporter,
    }
}

fn channel(addr: &SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_millis(500))
        .connect_lazy()
}

fn check() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

#[test]
fn grpc_classifier_reads_trailers_only_status() {
    use seawall::core::Classify;
    let classify = |status: Status| {
        Classify::<_, BoxError>::classify(
            &GrpcClassifier::new(),
            Ok(&status.into_http::<()>()),
            Duration::ZERO,
        )
    };
    assert_eq!(classify(Status::unavailable("x")), Outcome::Failure);
    assert_eq!(classify(Status::deadline_exceeded("x")), Outcome::Failure);
    assert_eq!(classify(Status::not_found("x")), Outcome::Success);
    assert_eq!(classify(Status::ok("")), Outcome::Success);
    assert_eq!(
        GrpcCode::from_headers(Status::unavailable("x").into_http::<()>().headers()),
        Some(GrpcCode::Unavailable)
    );
}

/// `ClientStack::grpc_builder()` over three `Channel`s, split at the generated client as
/// `docs/composition.md` lays it out: `StatusLayer` under the client, the total timeout and the
/// retry (classifying with `RetryClassifier`) above it, on messages, each attempt called with the
/// total timeout's deadline, which `SendDeadlineLayer` on each `Channel` sends to the server. One
/// server answers UNAVAILABLE, then another is shut down. Every call succeeds, the preset's
/// outlier detection (by `GrpcClassifier`) ejects both, the per-endpoint breakers count the
/// UNAVAILABLE answers, and every call reaches its server with a `grpc-timeout` within the total
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balanced_channels_route_around_unavailable_and_dead_servers() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(grpc_server().await);
    }
    servers[0].unavailable.store(true, SeqCst);
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();

    let ejected = Arc::new(Mutex::new(Vec::new()));
    let retries = Arc::new(AtomicU32::new(0));
    let (e, r) = (ejected.clone(), retries.clone());

    // Per-endpoint breakers read `grpc-status` too; `map_balance` keeps the preset's
    // `GrpcClassifier`.
    let endpoint_breakers = BreakerSet::with_classifier(
        BreakerConfig::builder()
            .name("grpc-endpoint")
            .build_config()
            .unwrap(),
        16,
        GrpcClassifier::new(),
    )
    .unwrap();
    let stack = ClientStack::grpc_builder()
        .map_balance(|balance| {
            balance
                .name("grpc-cluster")
                .picker(Picker::RoundRobin)
                .max_wait(Duration::from_secs(2))
                .panic_threshold(0.3)
                .outlier_detection(OutlierDetection {
                    interval: Duration::from_secs(1),
                    base_ejection_time: Duration::from_secs(60),
                    max_ejection_percent: 0.67,
                    consecutive_failures: Some(3),
                    latency: None,
                    success_rate: None,
                    failure_percentage: None,
                    ..OutlierDetection::default()
                })
                .on_event(move |_: &Name, event: &BalanceEvent| {
                    if let BalanceEvent::Ejected { key, reason, .. } = event {
                        e.lock().unwrap().push((key.clone(), *reason));
                    }
                })
                .seed(5)
        })
        .endpoint_breakers(endpoint_breakers.clone())
        .build(discover::from_list(addrs.clone(), |addr: &SocketAddr| {
            SendDeadlineLayer::new().layer(channel(addr))
        }))
        .unwrap();
    let grpc = HealthClient::new(StatusLayer::new().layer(stack));
    let total = Duration::from_secs(5);

    let retry = RetryLayer::builder()
        .name("grpc-retry")
        .policy(RetryClassifier::new())
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .budget(RetryBudget::unlimited())
        .seed(9)
        .on_event(move |_: &Name, event: &RetryEvent| {
            if matches!(event, RetryEvent::Retry { .. }) {
                r.fetch_add(1, SeqCst);
            }
        })
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .with_timeout(total)
        .with_retry(retry)
        .service(service_fn(move |req: WithDeadline<HealthCheckRequest>| {
            let mut grpc = grpc.clone();
            let deadline = req.deadline();
            let mut request = tonic::Request::new(req.into_inner());
            if let Some(deadline) = deadline {
                request.extensions_mut().insert(Deadline(deadline));
            }
            async move {
                let res = grpc.check(request).await?;
                Ok::<_, BoxError>(res.into_inner())
            }
        }));

    let call =
        |client: &BoxCloneService<_, _, _>| client.clone().oneshot(WithDeadline::new(check()));
    let client = BoxCloneService::new(client);

    // Server 0 answers UNAVAILABLE: each of its calls is retried on the next server, and its
    // third failure in a row ejects it.
    for _ in 0..60 {
        let res = call(&client).await.unwrap();
        assert_eq!(res.status(), ServingStatus::Serving);
    }
    assert_eq!(servers[0].hits.load(SeqCst), 3);
    assert_eq!(retries.load(SeqCst), 3);
    // Its breaker counted the three UNAVAILABLE answers, too few to open it.
    let breaker = endpoint_breakers.handle(&addrs[0]).unwrap();
    assert_eq!(breaker.snapshot().failures, 3);
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(
        *ejected.lock().unwrap(),
        vec![(format!("{:?}", addrs[0]), EjectReason::ConsecutiveFailures)]
    );

    // Server 1 shuts down: connection errors are failures too.
    servers[1].stop.take().unwrap().send(()).unwrap();
    let before = servers[2].hits.load(SeqCst);
    for _ in 0..60 {
        let res = call(&client).await.unwrap();
        assert_eq!(res.status(), ServingStatus::Serving);
    }
    let ejected = ejected.lock().unwrap().clone();
    assert_eq!(ejected.len(), 2, "{ejected:?}");
    assert_eq!(ejected[1].0, format!("{:?}", addrs[1]));
    // The dead server cost at most its three failures in a row (plus calls on the connection
    // it was draining), each retried once.
    assert!(retries.load(SeqCst) <= 3 + 3 + 1, "{retries:?}");
    assert!(servers[2].hits.load(SeqCst) - before >= 55);
    assert_eq!(servers[0].hits.load(SeqCst), 3);

    // Each attempt told its server the time the total timeout had left.
    for server in &servers {
        for sent in server.timeouts() {
            let sent = sent.expect("the total timeout's deadline is sent");
            assert!(sent > Duration::ZERO && sent <= total, "{sent:?}");
        }
    }
}

/// A breaker over one `Channel`: UNAVAILABLE (HTTP 200, `grpc-status: 14`) opens it, NOT_FOUND
/// does not, and it closes again once the server recovers.
#[tokio::test]
async fn breaker_over_a_channel_opens_on_unavailable_and_recovers() {
    let server = grpc_server().await;
    let breaker = BreakerLayer::builder()
        .name("grpc-breaker")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(4)
        .failure_rate_threshold(0.5)
        .wait_duration(Duration::from_millis(200))
        .jitter(0.0)
        .permitted_probes(1)
        .build_with(GrpcClassifier::new())
        .unwrap();
    let handle = breaker.handle();
    let channel = ServiceBuilder::new()
        .with_breaker(breaker)
        .service(channel(&server.addr));
    let mut grpc = HealthClient::new(channel);

    // NOT_FOUND is the caller's problem: four of them leave the breaker closed.
    for _ in 0..4 {
        let err = grpc
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    assert_eq!(handle.state(), State::Closed);

    // UNAVAILABLE counts as a failure: 4 of 8 opens the breaker.
    server.unavailable.store(true, SeqCst);
    for _ in 0..4 {
        let err = grpc.check(check()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
    }
    assert_eq!(handle.state(), State::Open);
    let hits = server.hits.load(SeqCst);
    assert_eq!(hits, 8);

    // Open: rejected before reaching the server; the `Open` error is the status's source.
    let err = grpc.check(check()).await.unwrap_err();
    assert!(is::<Open>(&err), "{err:?}");
    assert_eq!(server.hits.load(SeqCst), hits);

    // The server recovers; after the wait one probe closes the breaker.
    server.unavailable.store(false, SeqCst);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let res = grpc.check(check()).await.unwrap().into_inner();
    assert_eq!(res.status(), ServingStatus::Serving);
    assert_eq!(handle.state(), State::Closed);
}

/// Below a generated client, an open breaker surfaces as UNKNOWN; with `StatusLayer` above the
/// seawall layers it is UNAVAILABLE, the code gRPC clients and their retry policies act on.
#[tokio::test]
async fn status_layer_gives_generated_clients_grpc_codes() {
    let server = grpc_server().await;
    let breaker = BreakerLayer::new();
    breaker.handle().force_open();

    let mut plain = HealthClient::new(
        ServiceBuilder::new()
            .with_breaker(breaker.clone())
            .service(channel(&server.addr)),
    );
    let err = plain.check(check()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unknown);

    let mut mapped = HealthClient::new(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .with_breaker(breaker)
            .service(channel(&server.addr)),
    );
    let err = mapped.check(check()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        is::<Open>(&err),
        "the seawall error stays the source: {err:?}"
    );
    assert_eq!(server.hits.load(SeqCst), 0);

    // Answers and the server's own statuses pass through unchanged.
    let breaker = BreakerLayer::new();
    let mut mapped = HealthClient::new(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .with_breaker(breaker)
            .service(channel(&server.addr)),
    );
    let res = mapped.check(check()).await.unwrap().into_inner();
    assert_eq!(res.status(), ServingStatus::Serving);
    let err = mapped
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

impl GrpcServer {
    /// The `grpc-timeout` each call arrived with, in order, read as gRPC reads it.
    fn timeouts(&self) -> Vec<Option<Duration>> {
        self.timeouts
            .lock()
            .unwrap()
            .iter()
            .map(|value| {
                let value = value.as_deref()?;
                Some(
                    parse_timeout(&http::HeaderValue::from_str(value).unwrap())
                        .expect("a valid grpc-timeout"),
                )
            })
            .collect()
    }

    /// The `grpc-timeout` the last call arrived with, read as gRPC reads it.
    fn last_timeout(&self) -> Option<Duration> {
        let timeouts = self.timeouts.lock().unwrap();
        let value = timeouts
            .last()
            .expect("a call reached the server")
            .as_deref()?;
        Some(
            parse_timeout(&http::HeaderValue::from_str(value).unwrap())
                .expect("a valid grpc-timeout"),
        )
    }
}

/// With `SendDeadlineLayer` above the `Channel`, the server is told the deadline seawall
/// enforces: never more time than the client's total timeout leaves, a caller's longer
/// `grpc-timeout` cut down to it, and a caller's shorter one (read by `HonorTimeoutLayer`) kept.
#[tokio::test]
async fn the_server_is_told_the_clients_deadline() {
    let server = grpc_server().await;
    let total = Duration::from_secs(5);

    // Without the layer the deadline stays in the client.
    let mut plain = HealthClient::new(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .with_timeout(total)
            .service(channel(&server.addr)),
    );
    plain.check(check()).await.unwrap();
    assert_eq!(server.last_timeout(), None);

    let mut sending = HealthClient::new(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .with_timeout(total)
            .layer(SendDeadlineLayer::new())
            .service(channel(&server.addr)),
    );
    let res = sending.check(check()).await.unwrap().into_inner();
    assert_eq!(res.status(), ServingStatus::Serving);
    let sent = server.last_timeout().expect("the deadline is sent");
    assert!(sent > Duration::ZERO && sent <= total, "{sent:?}");

    // A caller's longer timeout is cut to what the total timeout leaves.
    let mut request = tonic::Request::new(check());
    request.set_timeout(Duration::from_secs(60));
    sending.check(request).await.unwrap();
    let sent = server.last_timeout().expect("the deadline is sent");
    assert!(sent > Duration::ZERO && sent <= total, "{sent:?}");

    // A caller's shorter timeout is the call's deadline, and the server's.
    let mut honoring = HealthClient::new(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .layer(HonorTimeoutLayer::new())
            .with_timeout(total)
            .layer(SendDeadlineLayer::new())
            .service(channel(&server.addr)),
    );
    let mut request = tonic::Request::new(check());
    request.set_timeout(Duration::from_millis(1500));
    honoring.check(request).await.unwrap();
    let sent = server.last_timeout().expect("the deadline is sent");
    assert!(
        sent > Duration::ZERO && sent <= Duration::from_millis(1500),
        "{sent:?}"
    );
    assert_eq!(server.hits.load(SeqCst), 4);
}

/// Answers every call `delay` after it arrives.
#[derive(Clone)]
struct Slow<S> {
    inner: S,
    delay: Duration,
}

impl<S, R> tower::Service<R> for Slow<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let answer = self.inner.call(request);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            answer.await
        })
    }
}

/// A health server that answers every call after `delay`; it stops when the sender is dropped.
async fn slow_grpc_server(delay: Duration) -> (SocketAddr, oneshot::Sender<()>, HealthReporter) {
    let (reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        Server::builder()
            .layer(tower::layer::layer_fn(move |inner| Slow { inner, delay }))
            .add_service(health)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    (addr, stop, reporter)
}

/// A `Channel` applies the `grpc-timeout` it sends on the client side too, with a timer that
/// runs out on the same tick as the seawall timeout enforcing the caller's deadline.
/// `SendDeadlineLayer` keeps its `TimeoutExpired` from the layers above: callers whose deadline
/// (100 ms) is shorter than the server's answer (500 ms) get `DEADLINE_EXCEEDED` from seawall's
/// `Elapsed`, and neither the endpoint's breaker nor the dependency's counts a failure. The stack
/// is `ClientStack::grpc_builder()` with its pieces given as its docs say: `GrpcClassifier` in
/// the per-endpoint breakers and in the dependency breaker, which ignores `EndpointOpen`.
#[tokio::test]
async fn impatient_callers_over_a_channel_charge_no_endpoint() {
    let (addr, _stop, _reporter) = slow_grpc_server(Duration::from_millis(500)).await;
    let endpoints = BreakerSet::with_classifier(
        BreakerConfig::builder()
            .name("grpc-endpoint")
            .minimum_calls(3)
            .build_config()
            .unwrap(),
        16,
        GrpcClassifier::new(),
    )
    .unwrap();
    let dependency = BreakerLayer::builder()
        .name("grpc-dependency")
        .minimum_calls(3)
        .build_with(GrpcClassifier::new().ignore_error::<EndpointOpen>())
        .unwrap();
    let stack = ClientStack::grpc_builder()
        .breaker(dependency.clone())
        .endpoint_breakers(endpoints.clone())
        .per_try_timeout(Duration::from_secs(2))
        .build(discover::from_list([addr], |addr: &SocketAddr| {
            SendDeadlineLayer::new().layer(channel(addr))
        }))
        .unwrap();
    let mut grpc = HealthClient::new(
        ServiceBuilder::new()
            .layer(StatusLayer::new())
            .layer(HonorTimeoutLayer::new())
            .service(stack),
    );

    for _ in 0..5 {
        let mut request = tonic::Request::new(check());
        request.set_timeout(Duration::from_millis(100));
        let err = grpc.check(request).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
        assert!(is::<seawall::timeout::Elapsed>(&err), "{err:?}");
    }
    assert_eq!(endpoints.handle(&addr).unwrap().snapshot().failures, 0);
    assert_eq!(dependency.handle().snapshot().failures, 0);

    let res = grpc.check(check()).await.unwrap().into_inner();
    assert_eq!(res.status(), ServingStatus::Serving);
}
