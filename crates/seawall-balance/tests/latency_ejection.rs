//! Latency outlier ejection in paused time.

mod common;

use common::{cluster, Recorder};
use seawall::balance::{
    BalanceEvent, BalanceLayer, EjectReason, LatencyEjection, OutlierDetection, Picker,
};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};
use tokio::time::Instant;
use tower::ServiceExt;

fn latency_only() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 0.5,
        consecutive_failures: None,
        success_rate: None,
        failure_percentage: None,
        latency: Some(LatencyEjection {
            factor: 3.0,
            duration: Duration::from_secs(5),
            decay: Duration::from_secs(2),
            minimum_hosts: 3,
            minimum_samples: 5,
        }),
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_is_ejected_after_the_duration() {
    let rec = Recorder::default();
    let start = Instant::now();
    let (balance, cluster) = cluster(
        4,
        BalanceLayer::builder()
            .seed(4)
            .picker(Picker::RoundRobin)
            .on_event(rec.listener(start))
            .outlier_detection(latency_only()),
    )
    .await;
    for i in 0..4 {
        cluster.node(i).delay_ms.store(10, Relaxed);
    }
    cluster.node(1).delay_ms.store(100, Relaxed);
    // Calls keep coming (sequentially, about 30 ms each on average) for 12 s.
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(12) {
        balance.clone().oneshot(i).await.unwrap();
        i += 1;
    }
    let events = rec.take();
    let ejected: Vec<_> = events
        .iter()
        .filter_map(|(at, e)| match e {
            BalanceEvent::Ejected { key, reason, .. } => Some((*at, key.clone(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(ejected.len(), 1, "{events:?}");
    let (at, key, reason) = &ejected[0];
    assert_eq!(key, "1");
    assert_eq!(*reason, EjectReason::Latency);
    // Seen slow at the first sweep after enough samples (~1 s), ejected once slow for 5 s.
    assert!(
        *at >= Duration::from_secs(6) && *at <= Duration::from_secs(8),
        "ejected at {at:?}"
    );
    assert_eq!(balance.unhealthy(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_brief_slowdown_is_not_ejected() {
    let rec = Recorder::default();
    let start = Instant::now();
    let (balance, cluster) = cluster(
        4,
        BalanceLayer::builder()
            .seed(4)
            .picker(Picker::RoundRobin)
            .on_event(rec.listener(start))
            .outlier_detection(latency_only()),
    )
    .await;
    for i in 0..4 {
        cluster.node(i).delay_ms.store(10, Relaxed);
    }
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(15) {
        // Node 2 is slow for 2 s only (less than the 5 s the rule asks for).
        let slow = (3..5).contains(&start.elapsed().as_secs());
        cluster
            .node(2)
            .delay_ms
            .store(if slow { 100 } else { 10 }, Relaxed);
        balance.clone().oneshot(i).await.unwrap();
        i += 1;
    }
    assert!(balance.unhealthy().is_empty(), "{:?}", rec.take());
}

#[tokio::test(start_paused = true)]
async fn uniformly_slow_endpoints_are_not_outliers() {
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(4)
            .picker(Picker::RoundRobin)
            .outlier_detection(latency_only()),
    )
    .await;
    for i in 0..3 {
        cluster.node(i).delay_ms.store(200, Relaxed);
    }
    let start = Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(15) {
        balance.clone().oneshot(i).await.unwrap();
        i += 1;
    }
    assert!(balance.unhealthy().is_empty());
}
