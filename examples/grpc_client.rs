//! A gRPC client over three tonic servers on loopback: the stack `ClientStack::grpc_builder()`
//! sets up under a generated client, over tonic `Channel`s, each endpoint behind its own circuit
//! breaker from one `BreakerSet` keyed by address (the balancer keeps calls off an endpoint whose
//! breaker is open), with retries above. Every piece that counts outcomes classifies with
//! `GrpcClassifier`, which reads `grpc-status` from trailers-only responses (HTTP 200 with a
//! failing gRPC status): the preset's dependency breaker and balancer, and the per-endpoint
//! breakers given one here. `StatusLayer`, directly below the generated client, turns seawall's
//! rejections into gRPC statuses (tonic would report them as `UNKNOWN`), keeping the rejection as
//! the status's source, and `RetryClassifier` above reads both.
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
//! is needed; a real service's generated client takes the stack the same way.

use seawall::{
    balance::{BalanceEvent, OutlierDetection, Picker},
    breaker::{BreakerConfig, BreakerSet, SlidingWindow, Transition},
    core::{
        classify::GrpcClassifier,
        deadline::{Deadline, RequestDeadline, WithDeadline},
    },
    discover,
    grpc::{RetryClassifier, SendDeadlineLayer, StatusLayer},
    retry::{Backoff, RetryEvent, RetryLayer},
    stack::ClientStack,
    BoxError, Name, ServiceBuilderExt,
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
    Status,
};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
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

    // One tonic Channel per address, telling its server the deadline; the stack puts each behind
    // its address's breaker and the per-try timeout.
    let endpoint = |addr: &SocketAddr| {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid uri")
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        SendDeadlineLayer::new().layer(channel)
    };
    // Under the generated client: no retry, no total timeout of its own, `GrpcClassifier` in the
    // dependency breaker and the balancer (`map_balance` keeps it).
    let stack = ClientStack::grpc_builder()
        .map_balance(|balance| {
            balance
                .name("grpc-health")
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection {
                    consecutive_failures: Some(3),
                    max_ejection_percent: 0.67,
                    ..OutlierDetection::default()
                })
                .panic_threshold(0.3)
                .on_event(|name: &Name, event: &BalanceEvent| {
                    if let BalanceEvent::Ejected { key, reason, .. } = event {
                        println!("  [balance {name}] ejected {key} ({reason:?})");
                    }
                })
        })
        .endpoint_breakers(breakers)
        .per_try_timeout(Duration::from_secs(1))
        .build(discover::from_list(addrs.clone(), endpoint))?;
    let grpc = HealthClient::new(StatusLayer::new().layer(stack));

    let retry = RetryLayer::builder()
        .name("grpc-retry")
        // UNAVAILABLE, attempts never sent and attempts the per-try timeout cut are retried;
        // any other status is the answer. A health check may run twice; a method that must not
        // would take `RetryClassifier::unsent_only()`, which retries attempts never sent only.
        // As the policy, it also waits a server's `grpc-retry-pushback-ms`.
        .policy(RetryClassifier::new())
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
