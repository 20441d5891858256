//! Latency outlier ejection in paused time.

mod common;

use common::{cluster, Cluster, Node, Recorder};
use seawall::balance::{
    Balance, BalanceEvent, BalanceLayer, EjectReason, LatencyEjection, OutlierDetection, Picker,
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

/// Four nodes answering in 10 ms behind a round-robin balancer with [`latency_only`] outlier
/// detection, reporting to `rec`.
async fn four_at_10_ms(rec: &Recorder, start: Instant) -> (Balance<usize, Node>, Cluster) {
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
    (balance, cluster)
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_is_ejected_after_the_duration() {
    let rec = Recorder::default();
    let start = Instant::now();
    let (balance, cluster) = four_at_10_ms(&rec, start).await;
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
    let (balance, cluster) = four_at_10_ms(&rec, start).await;
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

/// With the default rule, one 2 s stall on an endpoint answering in 5 ms, ending just before a
/// pass, lifts its latency EWMA to about 366 ms, which stays above 3 × 5 ms for about 36 s after
/// it recovered. The endpoint is slow in no interval after the stall, so it is never ejected.
#[tokio::test(start_paused = true)]
async fn one_stall_with_the_default_rule_is_not_ejected() {
    let rec = Recorder::default();
    let start = Instant::now();
    let (balance, cluster) = cluster(
        4,
        BalanceLayer::builder()
            .seed(4)
            .picker(Picker::RoundRobin)
            .on_event(rec.listener(start))
            .outlier_detection(OutlierDetection {
                consecutive_failures: None,
                success_rate: None,
                failure_percentage: None,
                latency: Some(LatencyEjection::default()),
                ..OutlierDetection::default()
            }),
    )
    .await;
    for i in 0..4 {
        cluster.node(i).delay_ms.store(5, Relaxed);
    }
    let mut stalled = None;
    let mut i = 0u64;
    // Sequential calls of 5 ms, so at most 12,000 in 60 s.
    while start.elapsed() < Duration::from_secs(60) {
        let stall = stalled.is_none() && start.elapsed() >= Duration::from_millis(17_890);
        if stall {
            cluster.node(1).delay_ms.store(2_000, Relaxed);
        }
        let node = balance.clone().oneshot(i).await.unwrap();
        if stall && node == 1 {
            cluster.node(1).delay_ms.store(5, Relaxed);
            stalled = Some(start.elapsed());
        }
        i += 1;
    }
    let stalled = stalled.expect("node 1 stalled");
    assert!(
        stalled > Duration::from_millis(19_800) && stalled < Duration::from_secs(20),
        "stall ended at {stalled:?}"
    );
    let events = rec.take();
    assert!(
        !events
            .iter()
            .any(|(_, e)| matches!(e, BalanceEvent::Ejected { .. })),
        "{events:?}"
    );
    assert!(balance.unhealthy().is_empty());
}

/// Calls come only in the first half of every other second, so every other pass sees no call at
/// all: those passes say nothing about the slow endpoint and leave it slow, and it is ejected
/// once slow for the rule's 5 s, as with steady traffic.
#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_is_ejected_through_intervals_without_calls() {
    let rec = Recorder::default();
    let start = Instant::now();
    let (balance, cluster) = four_at_10_ms(&rec, start).await;
    cluster.node(1).delay_ms.store(100, Relaxed);
    let mut i = 0u64;
    for second in (1..15).step_by(2) {
        tokio::time::sleep_until(start + Duration::from_secs(second)).await;
        while start.elapsed() < Duration::from_millis(second * 1_000 + 500) {
            balance.clone().oneshot(i).await.unwrap();
            i += 1;
        }
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
    // Four calls a window reach node 1 (130 ms a round), so it has its 5 samples at the pass of
    // 4 s: slow from then on, ejected at the first pass with calls 5 s later.
    assert_eq!(*at, Duration::from_secs(10), "{events:?}");
}
