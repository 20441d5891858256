//! seawall's metrics in Prometheus: the `metrics-exporter-prometheus` recorder, traffic through a
//! stack of retry, circuit breaker, bulkhead and balancer, and `/metrics` served by axum.
//!
//! ```text
//! cargo run --example prometheus            # run the traffic, print the seawall series, exit
//! cargo run --example prometheus -- --serve # then keep serving /metrics for a Prometheus scrape
//! ```
//!
//! The dependency is three in-process endpoints: one fails a third of its calls, and for a while
//! all of them fail, which opens the breaker.

use axum::{routing::get, Router};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use metrics_exporter_prometheus::PrometheusBuilder;
use seawall::{
    balance::{BalanceLayer, OutlierDetection, Picker},
    breaker::{BreakerLayer, Open, SlidingWindow},
    bulkhead::{BulkheadLayer, Full},
    core::{error::is, metrics},
    discover,
    retry::{Backoff, RetryLayer},
    BoxError, Outcome, ServiceBuilderExt,
};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpListener, time::MissedTickBehavior};
use tower::{service_fn, util::BoxCloneService, ServiceBuilder, ServiceExt};

/// A full bulkhead or an open breaker is a local decision, not the dependency failing: not
/// retried, not counted against the dependency.
fn classify(result: Result<&u64, &BoxError>, _: Duration) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) if is::<Full>(&**e) || is::<Open>(&**e) => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let serve = std::env::args().any(|a| a == "--serve");

    // 1. The recorder, before any layer is built: layers register their handles when built.
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    metrics::describe();

    // 2. /metrics on loopback.
    let render = prometheus.clone();
    let app = Router::new().route("/metrics", get(move || async move { render.render() }));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("metrics on http://{addr}/metrics");

    // 3. The dependency: endpoint 2 fails every third call it gets; `outage` fails them all.
    let outage = Arc::new(AtomicBool::new(false));
    let o = outage.clone();
    let discovery = discover::from_list(0..3u64, move |&id| {
        let (outage, calls) = (o.clone(), Arc::new(AtomicU64::new(0)));
        service_fn(move |_req: http::Request<()>| {
            let n = calls.fetch_add(1, Relaxed);
            let fail = outage.load(Relaxed) || (id == 2 && n % 3 == 0);
            async move {
                tokio::time::sleep(Duration::from_millis(2 + n % 5)).await;
                if fail {
                    Err::<u64, BoxError>("backend error".into())
                } else {
                    Ok(id)
                }
            }
        })
    });

    // 4. The stack, in the recommended order.
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(1))
        .with_retry(
            RetryLayer::builder()
                .name("users-retry")
                .classify(classify)
                .backoff(Backoff::exponential(Duration::from_millis(5)))
                .build()?,
        )
        .with_breaker(
            BreakerLayer::builder()
                .name("users-breaker")
                .sliding_window(SlidingWindow::count(50))
                .minimum_calls(20)
                .wait_duration(Duration::from_millis(300))
                .build_with(classify)?,
        )
        .with_bulkhead(
            BulkheadLayer::builder()
                .name("users-bulkhead")
                .max_concurrent(8)
                .build()?,
        )
        .with_balance(
            BalanceLayer::builder()
                .name("users-balance")
                .picker(Picker::p2c_peak_ewma())
                .outlier_detection(OutlierDetection {
                    interval: Duration::from_millis(200),
                    base_ejection_time: Duration::from_millis(500),
                    ..OutlierDetection::default()
                })
                .build()?,
        )
        .service(discovery);
    // Boxed: one nameable client type to hand to each caller task.
    let client = BoxCloneService::new(client);

    // 5. Traffic: 12 concurrent callers (the bulkhead admits 8) for 2 s, with an outage in the middle.
    let flip = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        outage.store(true, Relaxed);
        tokio::time::sleep(Duration::from_millis(300)).await;
        outage.store(false, Relaxed);
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let callers: Vec<_> = (0..12)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut tally = [0u32; 4];
                // Each caller sends a request every 5 ms at most (a rejected call returns at
                // once: a caller must not spin on it). After a slow call the caller goes again at
                // once and 5 ms apart from then on, rather than once for each tick it missed.
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                pace.set_missed_tick_behavior(MissedTickBehavior::Delay);
                while tokio::time::Instant::now() < deadline {
                    pace.tick().await;
                    let slot = match client.clone().oneshot(http::Request::new(())).await {
                        Ok(_) => 0,
                        Err(e) if is::<Full>(&*e) => 1,
                        Err(e) if is::<Open>(&*e) => 2,
                        Err(_) => 3,
                    };
                    tally[slot] += 1;
                }
                tally
            })
        })
        .collect();
    let mut tally = [0u32; 4];
    for caller in callers {
        for (sum, n) in tally.iter_mut().zip(caller.await?) {
            *sum += n;
        }
    }
    flip.await?;
    let [ok, full, open, failed] = tally;
    println!(
        "{ok} calls succeeded; rejected by the bulkhead: {full}, by the open breaker: {open}; \
         failed after retries: {failed}\n"
    );

    // 6. Scrape our own endpoint, as Prometheus would.
    let http = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let res = http.get(format!("http://{addr}/metrics").parse()?).await?;
    let text = String::from_utf8(res.into_body().collect().await?.to_bytes().to_vec())?;
    for line in text.lines().filter(|l| l.starts_with("seawall_")) {
        println!("{line}");
    }

    if serve {
        println!("\nserving http://{addr}/metrics; stop with Ctrl-C");
        std::future::pending::<()>().await;
    }
    Ok(())
}
