//! Outlier ejection sequences in paused time: consecutive failures, multiplier growth and decay,
//! success rate, failure percentage, max ejection percentage, at least one left, panic threshold,
//! an ejected endpoint that discovery removes and adds again, and a listener that panics.

mod common;

use common::{cluster, drive, Recorder};
use seawall::balance::{
    BalanceEvent, BalanceLayer, EjectReason, FailurePercentage, OutlierDetection, Picker,
    SuccessRate,
};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};
use tokio::time::{sleep, Instant};

fn consecutive(n: u32) -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(25),
        max_ejection_percent: 1.0,
        consecutive_failures: Some(n),
        success_rate: None,
        failure_percentage: None,
        latency: None,
    }
}

fn ejections(events: &[(Duration, BalanceEvent)]) -> Vec<(u64, String, EjectReason, Duration)> {
    events
        .iter()
        .filter_map(|(at, e)| match e {
            BalanceEvent::Ejected {
                key,
                reason,
                duration,
            } => Some((at.as_secs(), key.clone(), *reason, *duration)),
            _ => None,
        })
        .collect()
}

fn returns(events: &[(Duration, BalanceEvent)]) -> Vec<(u64, String)> {
    events
        .iter()
        .filter_map(|(at, e)| match e {
            BalanceEvent::Returned { key } => Some((at.as_secs(), key.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_eject_with_growing_then_decaying_time() {
    let rec = Recorder::default();
    let start = Instant::now();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .outlier_detection(consecutive(3))
            .on_event(rec.listener(start)),
    )
    .await;
    cluster.node(0).fail.store(true, Relaxed);
    // Round robin: node 0 gets every third call; its third failure ejects it.
    assert_eq!(drive(&balance, 9).await, 3);
    assert_eq!(balance.unhealthy(), vec![0]);
    cluster.reset();
    assert_eq!(drive(&balance, 30).await, 0);
    assert_eq!(
        cluster.hits(),
        vec![0, 15, 15],
        "an ejected endpoint takes no calls"
    );

    // Back after base_ejection_time (10 s, seen at the next 1 s sweep).
    sleep(Duration::from_millis(10_500)).await;
    assert!(balance.unhealthy().is_empty());
    // Still failing: ejected again, now for 2 × 10 s.
    assert_eq!(drive(&balance, 9).await, 3);
    assert_eq!(balance.unhealthy(), vec![0]);
    sleep(Duration::from_secs(19)).await;
    assert_eq!(balance.unhealthy(), vec![0], "second ejection lasts 20 s");
    sleep(Duration::from_secs(2)).await;
    assert!(balance.unhealthy().is_empty());
    // Third time: 3 × 10 s capped at max_ejection_time 25 s.
    drive(&balance, 9).await;
    sleep(Duration::from_secs(24)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    sleep(Duration::from_secs(2)).await;
    assert!(balance.unhealthy().is_empty());

    // Healthy for a while: each interval takes one off the multiplier (3 → 0 in 3 s).
    cluster.node(0).fail.store(false, Relaxed);
    sleep(Duration::from_secs(5)).await;
    cluster.node(0).fail.store(true, Relaxed);
    drive(&balance, 9).await;
    let events = rec.take();
    let ej = ejections(&events);
    let durations: Vec<u64> = ej.iter().map(|e| e.3.as_secs()).collect();
    assert_eq!(durations, vec![10, 20, 25, 10]);
    assert!(ej
        .iter()
        .all(|e| e.1 == "0" && e.2 == EjectReason::ConsecutiveFailures));
    assert_eq!(returns(&events).len(), 3);
}

#[tokio::test(start_paused = true)]
async fn max_ejection_percent_and_at_least_one_left() {
    let (balance, cluster) = cluster(
        10,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.0)
            .outlier_detection(OutlierDetection {
                max_ejection_percent: 0.2,
                ..consecutive(2)
            }),
    )
    .await;
    for i in 0..4 {
        cluster.node(i).fail.store(true, Relaxed);
    }
    drive(&balance, 100).await;
    assert_eq!(balance.unhealthy().len(), 2, "20 % of 10 endpoints");

    // Two endpoints, both failing, no limit: one stays in.
    let (balance, cluster) = common::cluster(
        2,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.0)
            .outlier_detection(consecutive(1)),
    )
    .await;
    cluster.node(0).fail.store(true, Relaxed);
    cluster.node(1).fail.store(true, Relaxed);
    drive(&balance, 20).await;
    assert_eq!(
        balance.unhealthy().len(),
        1,
        "never the last healthy endpoint"
    );
}

/// `max_ejection_percent` 0 does not turn ejection off: one endpoint can always be ejected (as with
/// Envoy's `always_eject_one_host`), and with one out no other is.
#[tokio::test(start_paused = true)]
async fn max_ejection_percent_zero_still_ejects_one() {
    let (balance, cluster) = cluster(
        5,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.0)
            .outlier_detection(OutlierDetection {
                max_ejection_percent: 0.0,
                ..consecutive(1)
            }),
    )
    .await;
    cluster.node(0).fail.store(true, Relaxed);
    drive(&balance, 10).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    cluster.node(1).fail.store(true, Relaxed);
    drive(&balance, 10).await;
    assert_eq!(balance.unhealthy(), vec![0], "one out at most");
}

/// A listener that panics when an endpoint returns takes neither the balancer's background task
/// nor the rest of the pass down: the listeners after it still hear of the return, discovery
/// changes are still applied, and an endpoint ejected later still returns.
#[tokio::test(start_paused = true)]
async fn a_panicking_listener_leaves_the_background_task_running() {
    use seawall::balance::Change;

    let rec = Recorder::default();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .outlier_detection(consecutive(3))
            .on_event(|_: &seawall::core::Name, event: &BalanceEvent| {
                if let BalanceEvent::Returned { key } = event {
                    panic!("listener broke on the return of {key}");
                }
            })
            .on_event(rec.listener(Instant::now())),
    )
    .await;
    cluster.node(0).fail.store(true, Relaxed);
    assert_eq!(drive(&balance, 9).await, 3);
    assert_eq!(balance.unhealthy(), vec![0]);
    // Back after base_ejection_time (10 s, seen at the next 1 s sweep): the first listener panics.
    sleep(Duration::from_millis(10_500)).await;
    assert!(balance.unhealthy().is_empty());
    let returned: Vec<String> = returns(&rec.take()).into_iter().map(|r| r.1).collect();
    assert_eq!(returned, vec!["0"], "the next listener still hears of it");
    cluster.node(0).fail.store(false, Relaxed);

    cluster
        .tx
        .send(Change::Insert(3, common::Node::new(3)))
        .unwrap();
    common::settle().await;
    assert!(
        balance.endpoints().contains(&3),
        "discovery is still applied: {:?}",
        balance.endpoints()
    );

    cluster.node(1).fail.store(true, Relaxed);
    assert_eq!(drive(&balance, 12).await, 3);
    assert_eq!(balance.unhealthy(), vec![1]);
    // Ejected at 10.5 s, back at the sweep of 21 s.
    sleep(Duration::from_secs(11)).await;
    assert!(
        balance.unhealthy().is_empty(),
        "outlier detection still runs"
    );
    let returned: Vec<String> = returns(&rec.take()).into_iter().map(|r| r.1).collect();
    assert_eq!(returned, vec!["1"]);
}

/// An endpoint that discovery removes while it is ejected and adds again is a new endpoint, as in
/// gRPC and Envoy: it takes calls at once, and its ejection multiplier starts again from zero.
#[tokio::test(start_paused = true)]
async fn an_ejected_endpoint_removed_and_added_again_starts_afresh() {
    use seawall::balance::Change;

    let rec = Recorder::default();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .outlier_detection(consecutive(3))
            .on_event(rec.listener(Instant::now())),
    )
    .await;
    cluster.node(0).fail.store(true, Relaxed);
    // Ejected for 10 s, back, and ejected again for 20 s.
    drive(&balance, 9).await;
    sleep(Duration::from_millis(10_500)).await;
    assert!(balance.unhealthy().is_empty());
    drive(&balance, 9).await;
    assert_eq!(balance.unhealthy(), vec![0]);

    cluster.tx.send(Change::Remove(0)).unwrap();
    common::settle().await;
    let node = common::Node {
        id: 0,
        behavior: cluster.behaviors[0].clone(),
    };
    cluster.tx.send(Change::Insert(0, node)).unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints(), vec![1, 2, 0]);
    assert!(balance.unhealthy().is_empty(), "added again healthy");

    // Still failing: it takes its turns, and is ejected for the base time again, not 30 s.
    cluster.reset();
    assert_eq!(drive(&balance, 9).await, 3);
    assert_eq!(cluster.hits(), vec![3, 3, 3]);
    assert_eq!(balance.unhealthy(), vec![0]);
    let durations: Vec<u64> = ejections(&rec.take())
        .iter()
        .map(|e| e.3.as_secs())
        .collect();
    assert_eq!(durations, vec![10, 20, 10]);
}

/// Twenty endpoints, four failing, at most 10 % ejected: two are ejected and two keep failing
/// past the limit. Once an ejected endpoint leaves the set there is room again, and the next
/// failing endpoint to fail is ejected within `consecutive_failures` more failures.
#[tokio::test(start_paused = true)]
async fn an_endpoint_past_the_limit_is_ejected_once_there_is_room() {
    const LIMIT: u32 = 2;
    let (balance, cluster) = cluster(
        20,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.0)
            .outlier_detection(OutlierDetection {
                max_ejection_percent: 0.1,
                ..consecutive(LIMIT)
            }),
    )
    .await;
    let failing = [0, 1, 2, 3];
    for i in failing {
        cluster.node(i).fail.store(true, Relaxed);
    }
    drive(&balance, 200).await;
    let ejected = balance.unhealthy();
    assert_eq!(ejected.len(), 2, "10 % of 20 endpoints: {ejected:?}");
    let left: Vec<usize> = failing
        .into_iter()
        .filter(|i| !ejected.contains(i))
        .collect();
    for &i in &left {
        assert!(cluster.node(i).hits.load(Relaxed) > 2 * LIMIT, "{i}");
    }

    cluster
        .tx
        .send(seawall::balance::Change::Remove(ejected[0]))
        .unwrap();
    common::settle().await;
    assert_eq!(balance.unhealthy(), vec![ejected[1]]);
    cluster.reset();
    let mut calls = 0;
    while balance.unhealthy().len() < 2 {
        assert!(calls < 200, "no endpoint ejected after {calls} calls");
        drive(&balance, 1).await;
        calls += 1;
    }
    let now = balance.unhealthy();
    let new = *now.iter().find(|&&i| i != ejected[1]).unwrap();
    assert!(left.contains(&new), "{now:?}");
    let failures = cluster.node(new).hits.load(Relaxed);
    assert!(
        (1..=LIMIT).contains(&failures),
        "ejected after {failures} more failures"
    );
}

#[tokio::test(start_paused = true)]
async fn success_rate_rule_ejects_the_outlier() {
    let rec = Recorder::default();
    let (balance, cluster) = cluster(
        6,
        BalanceLayer::builder()
            .seed(9)
            .picker(Picker::RoundRobin)
            .on_event(rec.listener(Instant::now()))
            .outlier_detection(OutlierDetection {
                consecutive_failures: None,
                success_rate: Some(SuccessRate {
                    request_volume: 20,
                    ..SuccessRate::default()
                }),
                max_ejection_percent: 0.5,
                ..consecutive(1)
            }),
    )
    .await;
    // Node 0 fails every other call; node 1 one call in 20 (within the spread).
    cluster.node(0).fail_every.store(2, Relaxed);
    cluster.node(1).fail_every.store(20, Relaxed);
    drive(&balance, 600).await;
    assert!(
        balance.unhealthy().is_empty(),
        "rules run only at the interval"
    );
    sleep(Duration::from_millis(1001)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    let ej = ejections(&rec.take());
    assert_eq!(ej.len(), 1);
    assert_eq!(ej[0].2, EjectReason::SuccessRate);

    // Too few calls in the interval: the rule does not judge.
    sleep(Duration::from_secs(11)).await;
    assert!(balance.unhealthy().is_empty());
    drive(&balance, 60).await;
    sleep(Duration::from_millis(1001)).await;
    assert!(balance.unhealthy().is_empty());
}

#[tokio::test(start_paused = true)]
async fn failure_percentage_rule_ejects_above_threshold() {
    let (balance, cluster) = cluster(
        5,
        BalanceLayer::builder()
            .seed(9)
            .picker(Picker::RoundRobin)
            .outlier_detection(OutlierDetection {
                consecutive_failures: None,
                failure_percentage: Some(FailurePercentage {
                    threshold: 0.4,
                    request_volume: 10,
                    ..FailurePercentage::default()
                }),
                max_ejection_percent: 0.5,
                ..consecutive(1)
            }),
    )
    .await;
    cluster.node(2).fail_every.store(2, Relaxed); // 50 % > 40 %
    cluster.node(3).fail_every.store(3, Relaxed); // 33 % < 40 %
    drive(&balance, 100).await;
    sleep(Duration::from_millis(1001)).await;
    assert_eq!(balance.unhealthy(), vec![2]);
}

#[tokio::test(start_paused = true)]
async fn panic_threshold_spreads_over_all_endpoints() {
    for (threshold, panics) in [(0.5, true), (0.0, false)] {
        let (balance, cluster) = cluster(
            4,
            BalanceLayer::builder()
                .seed(2)
                .picker(Picker::RoundRobin)
                .panic_threshold(threshold)
                .outlier_detection(consecutive(1)),
        )
        .await;
        for i in 0..3 {
            cluster.node(i).fail.store(true, Relaxed);
        }
        drive(&balance, 20).await;
        assert_eq!(balance.unhealthy().len(), 3);
        assert_eq!(balance.is_panicking(), panics);
        cluster.reset();
        let failed = drive(&balance, 40).await;
        if panics {
            // 1 of 4 healthy < 50 %: health is ignored and calls go everywhere.
            assert_eq!(cluster.hits(), vec![10, 10, 10, 10]);
            assert_eq!(failed, 30);
        } else {
            assert_eq!(cluster.hits(), vec![0, 0, 0, 40]);
            assert_eq!(failed, 0);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn panic_mode_ignores_health_but_not_the_filter() {
    let (balance, cluster) = cluster(
        5,
        BalanceLayer::builder()
            .seed(2)
            .picker(Picker::RoundRobin)
            .filter(|key: &usize, _: &common::Node| *key != 0)
            .outlier_detection(consecutive(1)),
    )
    .await;
    for i in 1..4 {
        cluster.node(i).fail.store(true, Relaxed);
    }
    drive(&balance, 20).await;
    assert_eq!(balance.unhealthy(), vec![1, 2, 3]);
    assert!(balance.is_panicking(), "2 of 5 healthy < 50 %");
    cluster.reset();
    drive(&balance, 40).await;
    let hits = cluster.hits();
    // Health is ignored, so the ejected endpoints take calls again; the filter still holds.
    assert_eq!(hits[0], 0, "{hits:?}");
    assert!(hits[1..4].iter().all(|&h| h > 0), "{hits:?}");
    assert_eq!(hits.iter().sum::<u32>(), 40);
}

/// gRFC A50: an endpoint the interval rules eject again soon after it returns is ejected for
/// longer each time. The multiplier comes off only for intervals the endpoint ends in the set.
#[tokio::test(start_paused = true)]
async fn interval_rules_eject_a_relapsing_endpoint_for_longer_each_time() {
    let rec = Recorder::default();
    let (balance, cluster) = cluster(
        5,
        BalanceLayer::builder()
            .seed(9)
            .picker(Picker::RoundRobin)
            .on_event(rec.listener(Instant::now()))
            .outlier_detection(OutlierDetection {
                consecutive_failures: None,
                failure_percentage: Some(FailurePercentage {
                    threshold: 0.5,
                    minimum_hosts: 3,
                    request_volume: 10,
                    ..FailurePercentage::default()
                }),
                base_ejection_time: Duration::from_secs(10),
                max_ejection_time: Duration::from_secs(100),
                max_ejection_percent: 0.5,
                ..consecutive(1)
            }),
    )
    .await;
    cluster.node(2).fail.store(true, Relaxed);
    // Calls half way through each 1 s interval, for 60 s.
    sleep(Duration::from_millis(500)).await;
    for _ in 0..60 {
        drive(&balance, 100).await;
        sleep(Duration::from_secs(1)).await;
    }
    let ej = ejections(&rec.take());
    assert!(ej
        .iter()
        .all(|e| e.1 == "2" && e.2 == EjectReason::FailurePercentage));
    let timeline: Vec<(u64, u64)> = ej.iter().map(|e| (e.0, e.3.as_secs())).collect();
    // Out at 1 s for 10 s, back at 11 s; out again at 12 s for 20 s, back at 32 s; out at 33 s
    // for 30 s.
    assert_eq!(timeline, vec![(1, 10), (12, 20), (33, 30)]);
}
