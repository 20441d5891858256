//! The Prometheus exporter installed as the global recorder, traffic through a stack of retry,
//! breaker, bulkhead and balancer, and `/metrics` served by axum on loopback and scraped over
//! HTTP with a hyper-util client: every concern's series are there, labelled with the policy
//! name, with the values the traffic implies.
//!
//! The global recorder is process-wide, so this is the only test in this file.

use axum::{routing::get, Router};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use seawall::{
    balance::{BalanceLayer, OutlierDetection, Picker},
    breaker::{BreakerLayer, Open, SlidingWindow, State},
    bulkhead::{BulkheadLayer, Full},
    core::{error::is, metrics},
    discover,
    retry::{Backoff, RetryLayer},
    BoxError, Outcome, ServiceBuilderExt,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering::SeqCst},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tower::{service_fn, ServiceBuilder, ServiceExt};

/// Local rejections (a full bulkhead, an open breaker) are not the dependency failing: neither
/// retried nor counted against it.
fn classify(result: Result<&usize, &BoxError>, _: Duration) -> Outcome {
    match result {
        Ok(_) => Outcome::Success,
        Err(e) if is::<Full>(&**e) || is::<Open>(&**e) => Outcome::Ignored,
        Err(_) => Outcome::Failure,
    }
}

async fn serve_metrics(handle: PrometheusHandle) -> SocketAddr {
    let app = Router::new().route("/metrics", get(move || async move { handle.render() }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

async fn scrape(addr: SocketAddr) -> String {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let res = client
        .get(format!("http://{addr}/metrics").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// The value of `metric{name="<policy>"}` in a Prometheus text exposition.
fn value(text: &str, metric: &str, policy: &str) -> f64 {
    let prefix = format!("{metric}{{name=\"{policy}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no series {prefix:?} in:\n{text}"));
    line[prefix.len()..].trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_show_every_concern_by_name() {
    // Install the recorder before building layers: per-call handles are registered at build.
    let handle = PrometheusBuilder::new().install_recorder().unwrap();
    metrics::describe();

    // Endpoint 0 always fails; `slow` makes every endpoint wait until `gate` is closed; `down`
    // makes every one fail.
    let slow = Arc::new(AtomicBool::new(false));
    let down = Arc::new(AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(0));
    let (s, d, g) = (slow.clone(), down.clone(), gate.clone());
    let discovery = discover::from_list(0..3usize, move |&id| {
        let (slow, down, gate) = (s.clone(), d.clone(), g.clone());
        service_fn(move |_req: http::Request<()>| {
            let (slow, down, gate) = (slow.load(SeqCst), down.load(SeqCst), gate.clone());
            async move {
                if slow {
                    // Holds until the gate is closed, which fails every acquire.
                    let _ = gate.acquire().await;
                }
                if id == 0 || down {
                    Err::<usize, BoxError>("endpoint failed".into())
                } else {
                    Ok(id)
                }
            }
        })
    });

    let breaker = BreakerLayer::builder()
        .name("obs-breaker")
        .sliding_window(SlidingWindow::count(20))
        .minimum_calls(10)
        .wait_duration(Duration::from_secs(60))
        .build_with(classify)
        .unwrap();
    let breaker_handle = breaker.handle();
    let client = ServiceBuilder::new()
        .with_retry(
            RetryLayer::builder()
                .name("obs-retry")
                .classify(classify)
                .backoff(Backoff::constant(Duration::from_millis(1)))
                .seed(1)
                .build()
                .unwrap(),
        )
        .with_breaker(breaker)
        .with_bulkhead(
            BulkheadLayer::builder()
                .name("obs-bulkhead")
                .max_concurrent(2)
                .build()
                .unwrap(),
        )
        .with_balance(
            BalanceLayer::builder()
                .name("obs-balance")
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection {
                    consecutive_failures: Some(3),
                    base_ejection_time: Duration::from_secs(60),
                    ..OutlierDetection::default()
                })
                .seed(2)
                .build()
                .unwrap(),
        )
        .service(discovery);

    // 1. Endpoint 0 fails: its calls are retried elsewhere until it is ejected.
    for _ in 0..30 {
        client
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
    }

    // 2. A burst of 6 held calls through a bulkhead of 2: 4 are rejected, none retried. The two
    // admitted calls hold their permits until the gate opens, so the first 4 results are the
    // rejections and the last 2 are successes.
    slow.store(true, SeqCst);
    let mut burst = JoinSet::new();
    for _ in 0..6 {
        burst.spawn(client.clone().oneshot(http::Request::new(())));
    }
    let mut rejected = 0;
    tokio::time::timeout(Duration::from_secs(30), async {
        while rejected < 4 {
            let result = burst.join_next().await.expect("a call is left").unwrap();
            let e = result.expect_err("an admitted call finished before the gate opened");
            assert!(is::<Full>(&*e), "{e}");
            rejected += 1;
        }
    })
    .await
    .expect("4 rejections within 30 s");
    assert_eq!(rejected, 4);
    gate.close();
    let admitted = tokio::time::timeout(Duration::from_secs(30), burst.join_all())
        .await
        .expect("the admitted calls finish within 30 s once the gate opens");
    assert_eq!(admitted.len(), 2);
    for result in admitted {
        assert!(result.is_ok(), "{:?}", result.err());
    }
    slow.store(false, SeqCst);

    // 3. Every endpoint fails: the breaker opens and rejects.
    down.store(true, SeqCst);
    for _ in 0..12 {
        let _ = client.clone().oneshot(http::Request::new(())).await;
    }
    assert_eq!(breaker_handle.state(), State::Open);

    let text = scrape(serve_metrics(handle).await).await;

    // Help texts from `describe`.
    assert!(text.contains("# HELP seawall_breaker_state "), "{text}");
    assert!(
        text.contains("# TYPE seawall_retry_retries_total counter"),
        "{text}"
    );

    // Breaker: open, after one transition, with rejections and failures counted.
    assert_eq!(value(&text, metrics::BREAKER_STATE, "obs-breaker"), 1.0);
    assert_eq!(
        value(&text, metrics::BREAKER_TRANSITIONS, "obs-breaker"),
        1.0
    );
    assert!(value(&text, metrics::BREAKER_REJECTED, "obs-breaker") >= 1.0);
    assert!(value(&text, metrics::BREAKER_FAILURES, "obs-breaker") >= 10.0);
    assert!(value(&text, metrics::BREAKER_SUCCESSES, "obs-breaker") >= 30.0);
    assert!(value(&text, metrics::BREAKER_IGNORED, "obs-breaker") >= 4.0);

    // Bulkhead: the burst's rejections; the limit; nothing left in flight.
    assert_eq!(
        value(&text, metrics::BULKHEAD_REJECTED, "obs-bulkhead"),
        4.0
    );
    assert_eq!(value(&text, metrics::BULKHEAD_LIMIT, "obs-bulkhead"), 2.0);
    assert_eq!(
        value(&text, metrics::BULKHEAD_IN_FLIGHT, "obs-bulkhead"),
        0.0
    );
    assert_eq!(value(&text, metrics::BULKHEAD_WAITING, "obs-bulkhead"), 0.0);

    // Retry: endpoint 0's three failures, plus the attempts of phase 3.
    assert!(value(&text, metrics::RETRY_RETRIES, "obs-retry") >= 3.0);
    assert!(value(&text, metrics::RETRY_GAVE_UP, "obs-retry") >= 1.0);

    // Balance: three endpoints, endpoint 0 ejected.
    assert_eq!(value(&text, metrics::BALANCE_ENDPOINTS, "obs-balance"), 3.0);
    assert_eq!(value(&text, metrics::BALANCE_EJECTIONS, "obs-balance"), 1.0);
    // One of three out: not enough for panic mode at the default threshold, 0.5.
    assert_eq!(
        value(&text, metrics::BALANCE_UNHEALTHY_ENDPOINTS, "obs-balance"),
        1.0
    );
    assert_eq!(value(&text, metrics::BALANCE_PANIC, "obs-balance"), 0.0);
}
