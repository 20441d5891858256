//! Per-endpoint circuit breakers from `seawall-breaker` as the balancer's availability filter
//! (Ribbon's AvailabilityFilteringRule).

mod common;

use common::{channel, drive_keys, Behavior, Node};
use seawall::balance::{BalanceLayer, BreakerFilter, Change, OutlierDetection, Picker};
use seawall::breaker::{BreakerConfig, BreakerSet, SlidingWindow, State};
use std::{sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};
use tokio::time::sleep;
use tower::Layer;

#[tokio::test(start_paused = true)]
async fn an_endpoint_whose_breaker_is_open_takes_no_calls() {
    let breakers = BreakerSet::new(
        BreakerConfig::builder()
            .name("per-endpoint")
            .sliding_window(SlidingWindow::count(4))
            .minimum_calls(4)
            .failure_rate_threshold(0.5)
            .wait_duration(Duration::from_secs(10))
            .jitter(0.0)
            .permitted_probes(1)
            .build_config()
            .unwrap(),
        64,
    )
    .unwrap();
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .seed(1)
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection::disabled())
        .filter(BreakerFilter)
        .build()
        .unwrap()
        .layer(stream);
    let mut behaviors = Vec::new();
    for id in 0..3usize {
        let behavior = Arc::new(Behavior::default());
        behaviors.push(behavior.clone());
        // One breaker per endpoint, made when discovery makes the endpoint.
        let service = breakers.get(&id).layer(Node { id, behavior });
        tx.send(Change::Insert(id, service)).unwrap();
    }
    common::settle().await;
    behaviors[0].fail.store(true, Relaxed);

    let (_, failed) = drive_keys(&balance, 12).await;
    assert_eq!(failed, 4, "four failures open endpoint 0's breaker");
    assert_eq!(breakers.handle(&0).unwrap().state(), State::Open);
    let hits = |b: &[Arc<Behavior>]| {
        b.iter()
            .map(|b| b.hits.swap(0, Relaxed))
            .collect::<Vec<_>>()
    };
    hits(&behaviors);
    let (ok, failed) = drive_keys(&balance, 30).await;
    assert_eq!((ok, failed), (30, 0), "no call reaches the open breaker");
    assert_eq!(hits(&behaviors), vec![0, 15, 15]);

    // After the wait the breaker is half-open: endpoint 0 takes a trial call, which succeeds
    // now, and the breaker closes.
    behaviors[0].fail.store(false, Relaxed);
    sleep(Duration::from_secs(10)).await;
    let (ok, failed) = drive_keys(&balance, 30).await;
    assert_eq!((ok, failed), (30, 0));
    assert_eq!(breakers.handle(&0).unwrap().state(), State::Closed);
    assert!(hits(&behaviors)[0] > 0);
}
