//! Integration: a balancer over four axum servers on loopback, one shut down mid-test and
//! another turned slow. Calls keep succeeding and traffic moves away within the documented
//! bounds:
//!
//! - a shut-down endpoint fails at most `consecutive_failures` calls plus the calls already in
//!   flight when it went away (here 3 + 8) before PeakEWMA's failure penalty or ejection takes it
//!   out; afterwards a stray call (at most a burst of `concurrency`) reaches it only when its
//!   penalty has decayed, until its third failure ejects it: at most 3 + 8 + 2 × 8 failed calls
//!   in all, every one of them on the dead server;
//! - a slow endpoint (100× slower than its peers) is ejected by the latency rule and takes no call
//!   while it is out. The rule ejects it at the first pass that finds it slow (its latency EWMA and
//!   the mean of its successful calls since the last pass both above `factor` × its peers' median)
//!   `duration` or more after the pass that first did; a pass at which it had no successful call
//!   can only find it not slow (when its EWMA is at or below the limit). Once its first slow answers have raised its PeakEWMA estimate, the picker
//!   sends it a call only when its peers happen to cost more, or at the latest its trial call once
//!   the estimate has gone stale, a picker decay (10 s) after its last answer. So the ejection
//!   waits for such a call: at the latest about a picker decay after `duration` (about 11 s after
//!   it turned slow), usually sooner, as its peers' costs rise under load; later only if a pass in
//!   between finds it not slow and its streak starts again. How many calls it takes before then depends on the machine's timing, so only
//!   the ejection and what follows it are checked.
//!
//! Sockets are involved, so this runs in real time with generous bounds and bounded loops. The
//! checks count calls and events rather than shares of traffic, which shift with the latencies a
//! loaded machine measures.

mod common;

use axum::{routing::get, Router};
use common::Recorder;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use seawall::balance::{
    BalanceEvent, BalanceLayer, EjectReason, LatencyEjection, OutlierDetection, Picker,
};
use seawall::discover;
use seawall::BoxError;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower::{service_fn, util::BoxCloneSyncService, Layer, ServiceExt};

struct Server {
    addr: SocketAddr,
    hits: Arc<AtomicU32>,
    slow: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn server(id: usize) -> Server {
    let hits = Arc::new(AtomicU32::new(0));
    let slow = Arc::new(AtomicBool::new(false));
    let (h, s) = (hits.clone(), slow.clone());
    let app = Router::new().route(
        "/",
        get(move || {
            let (h, s) = (h.clone(), s.clone());
            async move {
                h.fetch_add(1, Relaxed);
                if s.load(Relaxed) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                id.to_string()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    Server {
        addr,
        hits,
        slow,
        stop: Some(stop),
        task,
    }
}

type Endpoint = BoxCloneSyncService<(), usize, BoxError>;

/// An endpoint service: a hyper client bound to one address.
fn endpoint(addr: &SocketAddr) -> Endpoint {
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_millis(500))
        .build_http::<Empty<Bytes>>();
    let uri: hyper::Uri = format!("http://{addr}/").parse().unwrap();
    BoxCloneSyncService::new(service_fn(move |()| {
        let client = client.clone();
        let uri = uri.clone();
        async move {
            let res = client.get(uri).await?;
            let body = res.into_body().collect().await?.to_bytes();
            Ok::<_, BoxError>(std::str::from_utf8(&body)?.parse()?)
        }
    }))
}

fn snapshot(servers: &[Server]) -> Vec<u32> {
    servers.iter().map(|s| s.hits.load(Relaxed)).collect()
}

fn since(now: &[u32], before: &[u32]) -> Vec<u32> {
    now.iter().zip(before).map(|(a, b)| a - b).collect()
}

async fn drive(
    balance: &seawall::balance::Balance<SocketAddr, Endpoint>,
    calls: usize,
) -> (usize, usize) {
    let failed = Arc::new(AtomicU32::new(0));
    futures_util::stream::iter(0..calls)
        .for_each_concurrent(8, |_| {
            let b = balance.clone();
            let failed = failed.clone();
            async move {
                let call = tokio::time::timeout(Duration::from_secs(10), b.oneshot(()));
                match call.await {
                    Ok(Ok(_)) => {}
                    _ => {
                        failed.fetch_add(1, Relaxed);
                    }
                }
            }
        })
        .await;
    let failed = failed.load(Relaxed) as usize;
    (calls - failed, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_moves_away_from_a_dead_and_a_slow_server() {
    let mut servers = Vec::new();
    for id in 0..4 {
        servers.push(server(id).await);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let rec = Recorder::default();
    let balance = BalanceLayer::builder()
        .name("http-cluster")
        .seed(11)
        .on_event(rec.listener(tokio::time::Instant::now()))
        .picker(Picker::p2c_peak_ewma())
        .max_wait(Duration::from_secs(2))
        .outlier_detection(OutlierDetection {
            interval: Duration::from_millis(250),
            base_ejection_time: Duration::from_secs(60),
            max_ejection_percent: 0.5,
            consecutive_failures: Some(3),
            // A short decay: PeakEWMA sends the slow server only the few calls it picks before
            // its first slow answer, and at the default 10 s those few would leave its latency
            // EWMA near `factor` × its peers', where ejection comes late or not at all.
            latency: Some(LatencyEjection {
                factor: 5.0,
                duration: Duration::from_millis(500),
                decay: Duration::from_millis(250),
                ..LatencyEjection::default()
            }),
            ..OutlierDetection::default()
        })
        .build()
        .unwrap()
        .layer(discover::from_list(addrs.clone(), endpoint));

    // Healthy: every call succeeds, every server serves.
    let (ok, failed) = drive(&balance, 400).await;
    assert_eq!((ok, failed), (400, 0));
    let first = snapshot(&servers);
    assert_eq!(first.iter().sum::<u32>(), 400);

    // Server 0 shuts down.
    servers[0].stop.take().unwrap().send(()).unwrap();
    (&mut servers[0].task).await.unwrap();
    let (_, mut lost) = drive(&balance, 400).await;
    assert!(lost <= 3 + 8, "{lost} calls failed on the dead server");
    // PeakEWMA counts each failure as a 1 s call, so the dead server is avoided at once; a stray
    // call reaches it only once its penalty has decayed, and its third failure ejects it.
    let (_, failed) = drive(&balance, 400).await;
    lost += failed;

    // Server 1 turns slow: calls still succeed. The pass after its first slow answers finds it
    // slow; it is ejected at the first pass `duration` or more later that follows another of its
    // answers, which PeakEWMA sends it at the latest a picker decay (10 s) after its last one.
    // That is at the latest about 11 s after it turned slow when no pass in between finds it not
    // slow, and usually sooner. Calls keep coming meanwhile, in rounds of at least 50 ms each,
    // for up to 30 s and 600 rounds.
    servers[1].slow.store(true, Relaxed);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let slow = format!("{:?}", addrs[1]);
    let ejected_for_latency = || {
        rec.events.lock().unwrap().iter().any(|(_, e)| {
            matches!(e, BalanceEvent::Ejected { key, reason: EjectReason::Latency, .. }
                if *key == slow)
        })
    };
    let mut rounds = 0;
    while !ejected_for_latency() {
        rounds += 1;
        assert!(
            rounds <= 600 && tokio::time::Instant::now() < deadline,
            "the slow server was not ejected for its latency in {} rounds: {:?}",
            rounds - 1,
            rec.events.lock().unwrap()
        );
        let (_, failed) = drive(&balance, 50).await;
        lost += failed;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Ejected for 60 s, far longer than the calls that follow take: none of them reaches it.
    let before = snapshot(&servers);
    let (_, failed) = drive(&balance, 1000).await;
    lost += failed;
    let moved = since(&snapshot(&servers), &before);
    assert_eq!(moved[1], 0, "the ejected slow server took calls: {moved:?}");
    // Every failure is a call to the dead server: its failures before the penalty took hold,
    // plus strays in bursts of at most the concurrency, until the third ejects it.
    assert!(lost <= 3 + 8 + 2 * 8, "{lost} calls failed in all");

    for s in &mut servers[1..] {
        let _ = s.stop.take().unwrap().send(());
    }
}
