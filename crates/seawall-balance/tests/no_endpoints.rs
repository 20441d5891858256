//! Bounded waiting: `NoEndpoints` after `max_wait`, and a waiting call taking an endpoint that
//! appears while it waits.

mod common;

use common::{channel, Behavior, Node};
use seawall::balance::{BalanceEvent, BalanceLayer, Change, NoEndpoints};
use seawall::core::error::is;
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn an_empty_set_fails_after_max_wait() {
    let (_tx, stream) = channel::<usize, Node>();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let events = seen.clone();
    let balance = BalanceLayer::builder()
        .max_wait(Duration::from_millis(250))
        .on_event(move |_: &seawall::core::Name, e: &BalanceEvent| {
            events.lock().unwrap().push(e.clone())
        })
        .build()
        .unwrap()
        .layer(stream);
    let start = Instant::now();
    let err = balance.oneshot(1).await.unwrap_err();
    assert!(is::<NoEndpoints>(&*err), "{err}");
    assert_eq!(err.to_string(), "no endpoint available");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![BalanceEvent::NoEndpoints {
            waited: Duration::from_millis(250)
        }]
    );
}

#[tokio::test(start_paused = true)]
async fn zero_wait_fails_at_once() {
    let (_tx, stream) = channel::<usize, Node>();
    let balance = BalanceLayer::builder()
        .max_wait(Duration::ZERO)
        .build()
        .unwrap()
        .layer(stream);
    let start = Instant::now();
    assert!(balance.oneshot(1).await.is_err());
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_takes_an_endpoint_discovered_while_it_waits() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap()
        .layer(stream);
    let call = tokio::spawn(balance.clone().oneshot(7));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished());
    let behavior = Arc::new(Behavior::default());
    tx.send(Change::Insert(3usize, Node { id: 3, behavior }))
        .unwrap();
    let start = Instant::now();
    assert_eq!(call.await.unwrap().unwrap(), 3);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "woken by the change, not by a timer"
    );
}

#[tokio::test(start_paused = true)]
async fn no_wait_limit_waits_as_long_as_it_takes() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .max_wait(None)
        .build()
        .unwrap()
        .layer(stream);
    let call = tokio::spawn(balance.clone().oneshot(7));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(!call.is_finished());
    let behavior = Arc::new(Behavior::default());
    tx.send(Change::Insert(1usize, Node { id: 1, behavior }))
        .unwrap();
    assert_eq!(call.await.unwrap().unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_filter_that_refuses_every_endpoint_gives_no_endpoints() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .max_wait(Duration::from_millis(100))
        .filter(|key: &usize, _: &Node| *key != 0)
        .build()
        .unwrap()
        .layer(stream);
    let behavior = Arc::new(Behavior::default());
    tx.send(Change::Insert(0usize, Node { id: 0, behavior }))
        .unwrap();
    common::settle().await;
    let err = balance.clone().oneshot(1).await.unwrap_err();
    assert!(is::<NoEndpoints>(&*err));
    let behavior = Arc::new(Behavior::default());
    tx.send(Change::Insert(1usize, Node { id: 1, behavior }))
        .unwrap();
    common::settle().await;
    assert_eq!(balance.oneshot(1).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn huge_intervals_do_not_overflow_the_background_task() {
    use seawall::balance::OutlierDetection;
    let (tx, stream) = channel::<usize, Node>();
    let balance = BalanceLayer::builder()
        .outlier_detection(OutlierDetection {
            interval: Duration::MAX,
            base_ejection_time: Duration::MAX,
            max_ejection_time: Duration::MAX,
            ..OutlierDetection::default()
        })
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(stream);
    tx.send(Change::Insert(0, Node::new(0))).unwrap();
    // The background task survived building its timers and applies discovery.
    assert_eq!(balance.oneshot(7).await.unwrap(), 0);
}

/// Intervals of `Duration::MAX` ("never"): the first tick comes about 30 years out, and the
/// task's timers work out the tick after it without overflowing.
#[tokio::test(start_paused = true)]
async fn huge_intervals_survive_their_first_tick() {
    use seawall::balance::{HealthCheck, OutlierDetection};
    let (tx, stream) = channel::<usize, Node>();
    let balance = BalanceLayer::builder()
        .outlier_detection(OutlierDetection {
            interval: Duration::MAX,
            ..OutlierDetection::default()
        })
        .health_check(
            HealthCheck {
                interval: Duration::MAX,
                timeout: Duration::from_secs(1),
            },
            |_: &usize, _: Node| async { true },
        )
        .build()
        .unwrap()
        .layer(stream);
    tx.send(Change::Insert(0, Node::new(0))).unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints().len(), 1);
    tokio::time::advance(Duration::from_secs(86_400 * 365 * 31)).await;
    common::settle().await;
    // The background task is still running: it applies discovery.
    tx.send(Change::Insert(1, Node::new(1))).unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints().len(), 2);
}

/// Ejection times of `Duration::MAX` under a short interval: the ejection and every pass after
/// it work out when the endpoint is due back without overflowing, and it stays out.
#[tokio::test(start_paused = true)]
async fn huge_ejection_times_do_not_overflow_the_passes() {
    use seawall::balance::{OutlierDetection, Picker};
    let (balance, cluster) = common::cluster(
        2,
        BalanceLayer::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(OutlierDetection {
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::MAX,
                max_ejection_time: Duration::MAX,
                consecutive_failures: Some(1),
                max_ejection_percent: 1.0,
                ..OutlierDetection::disabled()
            }),
    )
    .await;
    cluster
        .node(0)
        .fail
        .store(true, std::sync::atomic::Ordering::Relaxed);
    common::drive(&balance, 2).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    for _ in 0..10 {
        tokio::time::advance(Duration::from_secs(1)).await;
        common::settle().await;
    }
    assert_eq!(balance.unhealthy(), vec![0]);
    // The background task is still running: it applies discovery.
    cluster.tx.send(Change::Insert(2, Node::new(2))).unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints().len(), 3);
}
