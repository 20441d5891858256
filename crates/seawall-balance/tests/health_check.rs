//! The active health check hook (Ribbon's IPing) and the availability filter.

mod common;

use common::cluster;
use seawall::balance::{BalanceEvent, BalanceLayer, HealthCheck, OutlierDetection, Picker};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::time::sleep;

#[tokio::test(start_paused = true)]
async fn failing_probes_take_an_endpoint_out_until_it_passes() {
    let down = Arc::new(AtomicBool::new(false));
    let probe_down = down.clone();
    let rec = common::Recorder::default();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(3)
            .picker(Picker::RoundRobin)
            .on_event(rec.listener(tokio::time::Instant::now()))
            .outlier_detection(OutlierDetection::disabled())
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(1),
                },
                move |key: &usize, _svc: common::Node| {
                    let fail = *key == 2 && probe_down.load(Relaxed);
                    async move { !fail }
                },
            ),
    )
    .await;
    down.store(true, Relaxed);
    sleep(Duration::from_secs(6)).await;
    assert_eq!(balance.unhealthy(), vec![2]);
    cluster.reset();
    common::drive(&balance, 20).await;
    assert_eq!(cluster.hits(), vec![10, 10, 0]);
    down.store(false, Relaxed);
    sleep(Duration::from_secs(5)).await;
    assert!(balance.unhealthy().is_empty());
    let kinds: Vec<_> = rec
        .take()
        .into_iter()
        .filter(|(_, e)| {
            matches!(
                e,
                BalanceEvent::ProbeFailed { .. } | BalanceEvent::ProbePassed { .. }
            )
        })
        .collect();
    assert_eq!(kinds.len(), 2, "{kinds:?}");
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_counts_as_failed() {
    let (balance, _cluster) = cluster(
        3,
        BalanceLayer::builder()
            .outlier_detection(OutlierDetection::disabled())
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(1),
                },
                |key: &usize, _svc: common::Node| {
                    let hang = *key == 0;
                    async move {
                        if hang {
                            std::future::pending::<()>().await;
                        }
                        true
                    }
                },
            ),
    )
    .await;
    // Probed at 5 s; the hung probe times out at 6 s.
    sleep(Duration::from_millis(5500)).await;
    assert!(balance.unhealthy().is_empty());
    sleep(Duration::from_millis(1000)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
}

#[tokio::test(start_paused = true)]
async fn the_filter_is_consulted_on_every_pick() {
    // For example a per-endpoint circuit breaker: here a flag per endpoint.
    let open: Arc<[AtomicBool; 3]> = Arc::new(Default::default());
    let flags = open.clone();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .picker(Picker::RoundRobin)
            .filter(move |key: &usize, _: &common::Node| !flags[*key].load(Relaxed)),
    )
    .await;
    open[1].store(true, Relaxed);
    common::drive(&balance, 20).await;
    assert_eq!(cluster.hits(), vec![10, 0, 10]);
    open[1].store(false, Relaxed);
    cluster.reset();
    common::drive(&balance, 30).await;
    assert_eq!(cluster.hits(), vec![10, 10, 10]);
}
