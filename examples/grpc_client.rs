//! A gRPC client over three tonic servers on loopback: a seawall balancer over tonic `Channel`s,
//! each behind its own circuit breaker from one `BreakerSet` keyed by address (`BreakerFilter`
//! keeps calls off an endpoint whose breaker is open), with retries above. Statuses are
//! classified with `GrpcClassifier`, which reads `grpc-status` from trailers-only responses (HTTP
//! 200 with a failing gRPC status).
//! `StatusLayer`, directly below the generated client, turns an endpoint's open breaker into
//! `UNAVAILABLE` (tonic would report it as `UNKNOWN`), so the retry policy above needs to know
//! only gRPC codes.
//!
//! The stack splits at the generated client, as `docs/composition.md` lays it out: the total
//! timeout and the retry go above it, on messages, and each attempt is called with the total
//! timeout's deadline in the `tonic::Request`'s extensions; `SendDeadlineLayer` on each `Channel`
//! sends the time left to the server in `grpc-timeout`.
//!
//! One server answers every call UNAVAILABLE; halfway through another shuts down. Every call
//! still succeeds; the log shows the breakers opening, the ejections and the retries.
//!
//! ```text
//! cargo run --example grpc_client
//! ```
//!
//! The servers run the standard gRPC health service (`tonic-health`), so no `.proto` compiling
//! is needed; a real service's generated client takes a balancer the same way.

use seawall::{
    balance::{BalanceEvent, BalanceLayer, BreakerFilter, OutlierDetection, Picker},
    breaker::{BreakerConfig, BreakerSet, SlidingWindow, Transition},
    core::{
        classify::GrpcClassifier,
        deadline::{Deadline, RequestDeadline, WithDeadline},
        error::find,
    },
    discover,
    grpc::{SendDeadlineLayer, StatusLayer},
    retry::{Backoff, RetryEvent, RetryLayer},
    BoxError, Name, Outcome, ServiceBuilderExt,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    service::interceptor::InterceptedService,
    transport::{server::TcpIncoming, Endpoint, Server},
    Code, Status,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest, HealthCheckResponse};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};

struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU32>,
    stop: oneshot::Sender<()>,
}

/// A health server; with `unavailable` set it answers every call UNAVAILABLE, trailers-only.
async fn backend(unavailable: bool) -> Result<Backend, BoxError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let hits = Arc::new(AtomicU32::new(0));
    let h = hits.clone();
    let flag = Arc::new(AtomicBool::new(unavailable));
    let svc = InterceptedService::new(health, move |req: tonic::Request<()>| {
        h.fetch_add(1, Relaxed);
        if flag.load(Relaxed) {
            Err(Status::unavailable("draining"))
        } else {
            Ok(req)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _reporter = reporter;
        let signal = async move {
            let _ = stopped.await;
        };
        let _ = Server::builder()
            .add_service(svc)
            .serve_with_incoming_shutdown(TcpIncoming::from(listener), signal)
            .await;
    });
    Ok(Backend { addr, hits, stop })
}

/// Retry UNAVAILABLE (which includes an endpoint's open breaker: another endpoint may answer) and
/// transport errors; any other status is the answer.
fn retryable(result: Result<&HealthCheckResponse, &BoxError>, _: Duration) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(err) => match find::<Status>(&**err) {
            Some(status) if status.code() != Code::Unavailable => Outcome::Success,
            _ => Outcome::Failure,
        },
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut backends = Vec::new();
    for unavailable in [true, false, false] {
        backends.push(backend(unavailable).await?);
    }
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    println!("backends: {addrs:?} (the first answers UNAVAILABLE)");

    // One breaker per address, all under one name: a breaker's name labels its metrics and is
    // kept for the life of the process, so it must not be built from the address (under DNS
    // discovery every new address would add a name and a metric series for good). The set keeps
    // one breaker per address under the shared name, bounded, and tells the listener which
    // address's breaker changed.
    let breakers = BreakerSet::with_classifier(
        BreakerConfig::builder()
            .name("grpc-endpoint")
            .sliding_window(SlidingWindow::count(10))
            .minimum_calls(2)
            .wait_duration(Duration::from_secs(30))
            .build_config()?,
        64,
        GrpcClassifier::new(),
    )?
    .on_transition(|addr: &SocketAddr, t: &Transition| {
        println!("  [breaker grpc-endpoint {addr}] {} -> {}", t.from, t.to);
    });

    // One tonic Channel per address, each behind its address's breaker, telling its server the
    // deadline.
    let endpoint = |addr: &SocketAddr| {
        let breaker = breakers.get(addr);
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        ServiceBuilder::new()
            .with_breaker(breaker)
            .layer(SendDeadlineLayer::new())
            .service(channel)
    };
    let balance = BalanceLayer::builder()
        .name("grpc-health")
        .picker(Picker::RoundRobin)
        .classifier(GrpcClassifier::new())
        .outlier_detection(OutlierDetection {
            consecutive_failures: Some(3),
            max_ejection_percent: 0.67,
            ..OutlierDetection::default()
        })
        .panic_threshold(0.3)
        // An endpoint whose breaker would reject the call takes none.
        .filter(BreakerFilter)
        .on_event(|name: &Name, event: &BalanceEvent| {
            if let BalanceEvent::Ejected { key, reason, .. } = event {
                println!("  [balance {name}] ejected {key} ({reason:?})");
            }
        })
        .build()?
        .layer(discover::from_list(addrs.clone(), endpoint));
    let grpc = HealthClient::new(StatusLayer::new().layer(balance));

    let retry = RetryLayer::builder()
        .name("grpc-retry")
        .classify(retryable)
        .max_attempts(3)
        .backoff(Backoff::exponential(Duration::from_millis(5)))
        .on_event(|name: &Name, event: &RetryEvent| {
            if let RetryEvent::Retry { attempt, .. } = event {
                println!("  [retry {name}] attempt {attempt}");
            }
        })
        .build()?;
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(2))
        .with_retry(retry)
        .service(service_fn(move |req: WithDeadline<HealthCheckRequest>| {
            let mut grpc = grpc.clone();
            // The attempt's deadline (the total timeout's) goes down to `SendDeadlineLayer`.
            let deadline = req.deadline();
            let mut request = tonic::Request::new(req.into_inner());
            if let Some(deadline) = deadline {
                request.extensions_mut().insert(Deadline(deadline));
            }
            async move { Ok::<_, BoxError>(grpc.check(request).await?.into_inner()) }
        }));

    let mut ok = 0;
    let mut stop = Some(backends.remove(1).stop);
    for i in 0..40 {
        if i == 20 {
            println!("call {i}: shutting the second backend down");
            let _ = stop.take().map(|s| s.send(()));
        }
        let request = WithDeadline::new(HealthCheckRequest {
            service: String::new(),
        });
        match client.clone().oneshot(request).await {
            Ok(res) => {
                ok += 1;
                if i % 10 == 0 {
                    println!("call {i}: {:?}", res.status());
                }
            }
            Err(err) => println!("call {i}: failed: {err}"),
        }
    }
    println!("{ok}/40 calls succeeded");
    println!(
        "calls that reached the UNAVAILABLE backend: {}; the healthy third backend: {}",
        backends[0].hits.load(Relaxed),
        backends[1].hits.load(Relaxed),
    );
    Ok(())
}
