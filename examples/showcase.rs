//! The seawall showcase: five HTTP backends on loopback misbehave in the ways real ones do, and two
//! clients call them at the same time, under the same faults — a plain round-robin client and a
//! seawall stack — so the difference is the client's doing.
//!
//! ```text
//! cargo run --release --example showcase
//! ```
//!
//! The backends (axum, each on its own loopback port):
//!
//! | backend | behaviour |
//! |---|---|
//! | b0, b1 | healthy: 3–7 ms |
//! | b2 | slow: 120 ms more than the others, all run long |
//! | b3 | healthy, but answers 503 at once for 1.5 s out of every 6 s |
//! | b4 | dies 8 s into the run (its process and connections are gone) and comes back at 16 s |
//!
//! The seawall stack, outer to inner: a 1 s total timeout; a retry of failures (5xx and errors), up
//! to 3 attempts, under a budget of 20% of requests plus `RetryBudget`'s default reserve of 100
//! retries per 10 s window (about 9 a second sustained, as each counts for 10 to 11 s); below it, a
//! hedge after the 95th percentile of recent latency, under a budget of its own: 10% of the calls
//! that reach it (the retry's attempts, so retries count as well as requests) plus the same reserve
//! of 100 hedges per 10 s window; a balancer (power of two choices by PeakEWMA, with outlier
//! detection and latency ejection); per endpoint a circuit breaker and a 300 ms per-try timeout.
//!
//! It prints a table (latency percentiles, success, share of calls per backend, how each client
//! dealt with each fault, and the breaker and ejection events) and writes an SVG report to
//! `target/showcase.svg`. It takes about half a minute.

use axum::{extract::State, http::StatusCode, routing::get, Router};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    service::TowerToHyperService,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use seawall::{
    balance::{
        BalanceEvent, BalanceLayer, BreakerFilter, FailurePercentage, LatencyEjection,
        OutlierDetection, Picker,
    },
    breaker::{BreakerLayer, SlidingWindow, Transition},
    core::{BoxError, Name, Outcome, RequestDeadline},
    retry::{HedgeLayer, RetryBudget, RetryLayer},
    timeout::TimeoutLayer,
    ServiceBuilderExt,
};
use seawall_sim::{
    backend::{BackendSpec, Fault, FaultKind},
    client::ClientSpec,
    dist::Latency,
    report::{bucket_ms, ClientReport, Report},
    run::RawRun,
    scenario::{Load, Scenario},
};
use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{net::TcpListener, task::JoinSet, time::Instant};
use tower::{
    discover::ServiceList,
    service_fn,
    util::{BoxCloneService, BoxCloneSyncService},
    Layer, Service, ServiceBuilder, ServiceExt,
};

const BACKENDS: usize = 5;
const RUN: Duration = Duration::from_secs(24);
const RATE_PER_SEC: f64 = 200.0;
const SLOW: usize = 2;
const BURSTS: usize = 3;
const DIES: usize = 4;
const DIES_AT: Duration = Duration::from_secs(8);
const BACK_AT: Duration = Duration::from_secs(16);

// ===== the backends =====

struct Backend {
    index: usize,
    start: Instant,
    rng: Mutex<SmallRng>,
}

async fn handle(State(b): State<Arc<Backend>>) -> (StatusCode, &'static str) {
    let t = b.start.elapsed().as_secs_f64();
    if b.index == BURSTS && t % 6.0 >= 3.0 && t % 6.0 < 4.5 {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy");
    }
    let mut ms = b.rng.lock().unwrap().random_range(3.0..7.0);
    if b.index == SLOW {
        ms += 120.0;
    }
    tokio::time::sleep(Duration::from_secs_f64(ms / 1000.0)).await;
    (StatusCode::OK, "ok")
}

/// Serves `app` until the task is aborted; aborting it drops every open connection too, as a
/// crashed process would.
async fn serve(listener: TcpListener, app: Router) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: wait rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Binds `addr` again, retrying for about a second while the old socket is let go of.
async fn bind(addr: SocketAddr) -> Option<TcpListener> {
    for _ in 0..50 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return Some(listener);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

// ===== the clients =====

/// A request: where to send it is the client's business; it carries the deadline a timeout sets.
#[derive(Debug, Clone, Default)]
struct Req {
    deadline: Option<Instant>,
}

impl RequestDeadline for Req {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
}

/// What came back: the status (the body is read to the end so the connection can be reused).
#[derive(Debug, Clone, Copy)]
struct Resp {
    status: StatusCode,
}

type Endpoint = BoxCloneSyncService<Req, Resp, BoxError>;

/// Every call a backend was sent: (milliseconds since start, backend).
type CallLog = Arc<Mutex<Vec<(u64, u16)>>>;

/// 5xx and 429 are failures, as are errors (connection refused, timeouts).
fn classify(result: Result<&Resp, &BoxError>, _elapsed: Duration) -> Outcome {
    match result {
        Ok(r) if r.status.is_server_error() || r.status == StatusCode::TOO_MANY_REQUESTS => {
            Outcome::Failure
        }
        Ok(_) => Outcome::Success,
        Err(_) => Outcome::Failure,
    }
}

/// One endpoint: an HTTP GET to `addr`, logged when sent.
fn endpoint(
    index: usize,
    addr: SocketAddr,
    http: Client<HttpConnector, Empty<Bytes>>,
    log: CallLog,
    start: Instant,
) -> Endpoint {
    let uri: http::Uri = format!("http://{addr}/").parse().expect("valid uri");
    BoxCloneSyncService::new(service_fn(move |_req: Req| {
        log.lock()
            .unwrap()
            .push((start.elapsed().as_millis() as u64, index as u16));
        let response = http.get(uri.clone());
        async move {
            let response = response.await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, BoxError>(Resp { status })
        }
    }))
}

/// The plain client: each backend in turn, no timeout, no retry.
#[derive(Clone)]
struct RoundRobin {
    endpoints: Arc<Vec<Endpoint>>,
    next: Arc<AtomicUsize>,
}

impl Service<Req> for RoundRobin {
    type Response = Resp;
    type Error = BoxError;
    type Future = tower::util::Oneshot<Endpoint, Req>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints[i].clone().oneshot(req)
    }
}

type Events = Arc<Mutex<Vec<(Duration, String)>>>;

/// The seawall stack over fresh endpoints to the same backends.
fn seawall_client(
    addrs: &[SocketAddr],
    log: &CallLog,
    start: Instant,
    events: &Events,
) -> Result<BoxCloneService<Req, Resp, BoxError>, BoxError> {
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut endpoints = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let seen = events.clone();
        let breaker = BreakerLayer::builder()
            .name(format!("showcase-b{i}"))
            .sliding_window(SlidingWindow::count(20))
            .minimum_calls(10)
            .failure_rate_threshold(0.5)
            .wait_duration(Duration::from_secs(2))
            .permitted_probes(2)
            .on_transition(move |_: &Name, t: &Transition| {
                seen.lock().unwrap().push((
                    start.elapsed(),
                    format!("breaker of b{i}: {:?} -> {:?}", t.from, t.to),
                ));
            })
            .build_with(classify)?;
        let per_try = TimeoutLayer::new(Duration::from_millis(300)).per_try();
        endpoints.push(breaker.layer(per_try.layer(endpoint(
            i,
            *addr,
            http.clone(),
            log.clone(),
            start,
        ))));
    }
    let seen = events.clone();
    let balance = BalanceLayer::builder()
        .name("showcase")
        .picker(Picker::P2cPeakEwma {
            choices: 2,
            decay: Duration::from_secs(2),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
        })
        .seed(7)
        .max_wait(Duration::from_millis(500))
        .outlier_detection(OutlierDetection {
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(3),
            max_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 0.4,
            consecutive_failures: Some(5),
            success_rate: None,
            failure_percentage: Some(FailurePercentage {
                threshold: 0.3,
                request_volume: 20,
                minimum_hosts: 3,
                ..FailurePercentage::default()
            }),
            latency: Some(LatencyEjection {
                factor: 3.0,
                duration: Duration::from_secs(2),
                minimum_hosts: 3,
                ..LatencyEjection::default()
            }),
        })
        .classifier(classify)
        .filter(BreakerFilter)
        .on_event(move |_: &Name, e: &BalanceEvent| {
            let text = match e {
                BalanceEvent::Ejected {
                    key,
                    reason,
                    duration,
                } => format!("b{key} ejected ({reason:?}) for {duration:?}"),
                BalanceEvent::Returned { key } => format!("b{key} returned"),
                _ => return,
            };
            seen.lock().unwrap().push((start.elapsed(), text));
        })
        .build()?
        .layer(ServiceList::new(endpoints));
    let retry = RetryLayer::builder()
        .name("showcase")
        .classify(classify)
        .max_attempts(3)
        .budget(RetryBudget::builder().ratio(0.2).build()?)
        .build()?;
    let hedge = HedgeLayer::builder()
        .name("showcase")
        .classify(classify)
        .percentile(0.95, 100, Duration::from_secs(2))
        .budget(RetryBudget::builder().ratio(0.1).build()?)
        .build()?;
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(1))
        .with_retry(retry)
        .with_hedge(hedge)
        .service(balance);
    Ok(BoxCloneService::new(client))
}

// ===== the load =====

struct Tally {
    latency_us: hdrhistogram::Histogram<u64>,
    ok_latency_us: hdrhistogram::Histogram<u64>,
    ok: u64,
    failed: u64,
}

/// Open loop at `RATE_PER_SEC` for `RUN`: latency counts from each request's intended send time.
async fn drive(client: BoxCloneService<Req, Resp, BoxError>, start: Instant) -> Tally {
    let histogram = hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let tally = Arc::new(Mutex::new(Tally {
        latency_us: histogram.clone(),
        ok_latency_us: histogram,
        ok: 0,
        failed: 0,
    }));
    let requests = (RUN.as_secs_f64() * RATE_PER_SEC) as u64;
    let interval = Duration::from_secs_f64(1.0 / RATE_PER_SEC);
    let mut calls = JoinSet::new();
    for n in 0..requests {
        let intended = start + interval.mul_f64(n as f64);
        tokio::time::sleep_until(intended).await;
        let client = client.clone();
        let tally = tally.clone();
        calls.spawn(async move {
            let ok = matches!(client.oneshot(Req::default()).await, Ok(r) if r.status.is_success());
            let us = intended.elapsed().as_micros().clamp(1, 60_000_000) as u64;
            let mut t = tally.lock().unwrap();
            let _ = t.latency_us.record(us);
            if ok {
                let _ = t.ok_latency_us.record(us);
                t.ok += 1;
            } else {
                t.failed += 1;
            }
        });
    }
    while calls.join_next().await.is_some() {}
    Arc::try_unwrap(tally)
        .ok()
        .expect("all calls done")
        .into_inner()
        .unwrap()
}

/// The faults of the run, as the simulator's report describes them.
fn scenario() -> Scenario {
    let mut backends: Vec<BackendSpec> = (0..BACKENDS)
        .map(|i| {
            let mut b = BackendSpec::new(Latency::Uniform {
                min_ms: 3.0,
                max_ms: 7.0,
            });
            b.name = Some(format!("b{i}"));
            b
        })
        .collect();
    backends[SLOW].faults.push(Fault {
        from_ms: 0,
        to_ms: RUN.as_millis() as u64,
        effect: FaultKind::Slow { extra_ms: 120.0 },
    });
    for k in 0..4 {
        let from_ms = 3_000 + k * 6_000;
        backends[BURSTS].faults.push(Fault {
            from_ms,
            to_ms: from_ms + 1_500,
            effect: FaultKind::Errors {
                error_rate: 1.0,
                latency_ms: 0.0,
            },
        });
    }
    backends[DIES].faults.push(Fault {
        from_ms: DIES_AT.as_millis() as u64,
        to_ms: BACK_AT.as_millis() as u64,
        effect: FaultKind::Down,
    });
    Scenario {
        name: "showcase".into(),
        description: format!(
            "5 axum backends on loopback: b2 slow (+120 ms), b3 503s 1.5 s of every 6 s, b4 dead from {}s to {}s; {} rps per client for {}s",
            DIES_AT.as_secs(),
            BACK_AT.as_secs(),
            RATE_PER_SEC,
            RUN.as_secs()
        ),
        backends,
        load: Load::OpenLoop {
            rate_per_sec: RATE_PER_SEC,
            requests: (RUN.as_secs_f64() * RATE_PER_SEC) as u64,
        },
        clients: vec![ClientSpec::RoundRobin],
        seed: 1,
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let start = Instant::now();

    // Backends.
    let mut addrs = Vec::new();
    let mut servers = Vec::new();
    let mut apps = Vec::new();
    for index in 0..BACKENDS {
        let state = Arc::new(Backend {
            index,
            start,
            rng: Mutex::new(SmallRng::seed_from_u64(index as u64)),
        });
        let app = Router::new().route("/", get(handle)).with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        servers.push(tokio::spawn(serve(listener, app.clone())));
        apps.push(app);
    }
    println!("backends on {addrs:?}");

    // b4 dies and comes back.
    let dying_addr = addrs[DIES];
    let dying_app = apps[DIES].clone();
    let dying = servers.swap_remove(DIES);
    let chaos = tokio::spawn(async move {
        tokio::time::sleep_until(start + DIES_AT).await;
        dying.abort();
        tokio::time::sleep_until(start + BACK_AT).await;
        let Some(listener) = bind(dying_addr).await else {
            eprintln!(
                "warning: cannot bind {dying_addr} again, so b4 stays down: \
                 read its readmit figures as never"
            );
            return;
        };
        serve(listener, dying_app).await;
    });

    // Clients, side by side on the same backends at the same time.
    let plain_log = CallLog::default();
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let plain = BoxCloneService::new(RoundRobin {
        endpoints: Arc::new(
            addrs
                .iter()
                .enumerate()
                .map(|(i, a)| endpoint(i, *a, http.clone(), plain_log.clone(), start))
                .collect(),
        ),
        next: Arc::new(AtomicUsize::new(0)),
    });
    let seawall_log = CallLog::default();
    let events = Events::default();
    let seawall = seawall_client(&addrs, &seawall_log, start, &events)?;

    println!(
        "sending {RATE_PER_SEC} requests a second through each client for {}s ...",
        RUN.as_secs()
    );
    let (plain_tally, seawall_tally) = tokio::join!(drive(plain, start), drive(seawall, start));
    let elapsed = start.elapsed();
    chaos.abort();
    for s in servers {
        s.abort();
    }

    let scenario = scenario();
    let raw = |client: &str, tally: Tally, log: &CallLog| RawRun {
        client: client.into(),
        latency_us: tally.latency_us,
        ok_latency_us: tally.ok_latency_us,
        ok: tally.ok,
        failed: tally.failed,
        calls: log.lock().unwrap().clone(),
        elapsed,
    };
    let report = Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed: 1,
        backends: (0..BACKENDS).map(|i| format!("b{i}")).collect(),
        clients: vec![
            ClientReport::new(
                &scenario,
                raw("plain round robin", plain_tally, &plain_log),
                bucket_ms(elapsed),
            ),
            ClientReport::new(
                &scenario,
                raw("seawall stack", seawall_tally, &seawall_log),
                bucket_ms(elapsed),
            ),
        ],
    };
    println!("\n{}", report.table());
    println!("breaker and ejection events (seawall stack)");
    for (at, text) in events.lock().unwrap().iter() {
        println!("  {:>6.2}s  {text}", at.as_secs_f64());
    }

    let out = PathBuf::from("target").join("showcase.svg");
    let out = if out.parent().is_some_and(|p| p.is_dir()) {
        out
    } else {
        std::env::temp_dir().join("seawall-showcase.svg")
    };
    seawall_sim::svg::write_svg(&report, &out)?;
    println!("\nreport written to {}", out.display());
    Ok(())
}
