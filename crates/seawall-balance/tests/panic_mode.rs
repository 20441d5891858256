//! Panic mode is reported when the balancer's health crosses the threshold: `PanicEntered` once
//! when too few endpoints become healthy, `PanicExited` once when enough are again, each right
//! after the changes that made it, whether those are ejections, returns or discovery changes.

mod common;

use common::{cluster, drive, drive_until_unhealthy, eject_at_once, settle, Node, Recorder};
use seawall::balance::{
    BalanceConfigBuilder, BalanceEvent, BalanceLayer, Change, OutlierDetection, Picker,
};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};
use tokio::time::{sleep, Instant};

/// Round robin, seeded, ejecting at the first failure, reporting its events to `rec`.
fn ejecting_round_robin(rec: &Recorder) -> BalanceConfigBuilder {
    BalanceLayer::builder()
        .seed(5)
        .picker(Picker::RoundRobin)
        .outlier_detection(eject_at_once())
        .on_event(rec.listener(Instant::now()))
}

fn entered(unhealthy: usize, endpoints: usize) -> BalanceEvent {
    BalanceEvent::PanicEntered {
        unhealthy,
        endpoints,
    }
}

fn exited(unhealthy: usize, endpoints: usize) -> BalanceEvent {
    BalanceEvent::PanicExited {
        unhealthy,
        endpoints,
    }
}

fn is_panic(event: &BalanceEvent) -> bool {
    matches!(
        event,
        BalanceEvent::PanicEntered { .. } | BalanceEvent::PanicExited { .. }
    )
}

/// A bad deploy takes 6 of 10 endpoints down (the default threshold, 0.5, needs 5 healthy):
/// panic mode is entered once, right after the sixth ejection, and not again while calls go on
/// spreading over the failing endpoints; it is left once, right after the pass that returns them.
#[tokio::test(start_paused = true)]
async fn panic_mode_is_reported_once_on_entering_and_once_on_leaving() {
    let rec = Recorder::default();
    let (balance, cluster) = cluster(10, ejecting_round_robin(&rec)).await;
    for id in 0..6 {
        cluster.node(id).fail.store(true, Relaxed);
    }
    // Each failing endpoint is ejected at its first call; round robin reaches all of them.
    drive_until_unhealthy(&balance, 6).await;
    assert_eq!(balance.unhealthy(), vec![0, 1, 2, 3, 4, 5]);
    assert!(balance.is_panicking());
    // In panic mode every endpoint takes calls: the failing ones fail again, and nothing more is
    // reported.
    cluster.reset();
    assert!(drive(&balance, 40).await > 0);
    assert!(
        cluster.hits().iter().all(|&hits| hits > 0),
        "{:?}",
        cluster.hits()
    );

    let events: Vec<BalanceEvent> = rec.take().into_iter().map(|(_, e)| e).collect();
    let ejections: Vec<usize> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, BalanceEvent::Ejected { .. }))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(ejections.len(), 6, "{events:?}");
    let panics: Vec<(usize, &BalanceEvent)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| is_panic(e))
        .collect();
    assert_eq!(
        panics,
        vec![(ejections[5] + 1, &entered(6, 10))],
        "entered once, right after the sixth ejection: {events:?}"
    );

    // The failing endpoints recover; ejected at about 0 s for 10 s, they return at the pass of
    // 10 or 11 s, all at once, and panic mode is left once, after the last return.
    for id in 0..6 {
        cluster.node(id).fail.store(false, Relaxed);
    }
    sleep(Duration::from_secs(12)).await;
    assert!(balance.unhealthy().is_empty());
    assert!(!balance.is_panicking());
    assert_eq!(drive(&balance, 20).await, 0);
    sleep(Duration::from_secs(5)).await;
    let events: Vec<BalanceEvent> = rec.take().into_iter().map(|(_, e)| e).collect();
    let returns = events
        .iter()
        .filter(|e| matches!(e, BalanceEvent::Returned { .. }))
        .count();
    assert_eq!(returns, 6, "{events:?}");
    let panics: Vec<(usize, &BalanceEvent)> = events
        .iter()
        .enumerate()
        .filter(|(_, e)| is_panic(e))
        .collect();
    assert_eq!(
        panics,
        vec![(returns, &exited(0, 10))],
        "left once, right after the returns: {events:?}"
    );
}

/// Discovery changes move the balancer in and out of panic mode too: with a threshold of 0.7, one
/// of three endpoints ejected is too many, an endpoint added makes it one of four (enough healthy),
/// and that endpoint removed again makes it one of three.
#[tokio::test(start_paused = true)]
async fn discovery_changes_enter_and_leave_panic_mode() {
    let rec = Recorder::default();
    let (balance, cluster) = cluster(3, ejecting_round_robin(&rec).panic_threshold(0.7)).await;
    rec.take();
    cluster.node(0).fail.store(true, Relaxed);
    assert_eq!(drive(&balance, 3).await, 1);
    assert_eq!(balance.unhealthy(), vec![0]);
    cluster.tx.send(Change::Insert(3, Node::new(3))).unwrap();
    settle().await;
    assert!(!balance.is_panicking());
    cluster.tx.send(Change::Remove(3)).unwrap();
    settle().await;
    assert!(balance.is_panicking());
    let events: Vec<BalanceEvent> = rec.take().into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        events,
        vec![
            BalanceEvent::Ejected {
                key: "0".into(),
                reason: seawall::balance::EjectReason::ConsecutiveFailures,
                duration: Duration::from_secs(10),
            },
            entered(1, 3),
            BalanceEvent::EndpointAdded { key: "3".into() },
            exited(1, 4),
            BalanceEvent::EndpointRemoved { key: "3".into() },
            entered(1, 3),
        ]
    );
}

/// Health checks move the balancer in and out of panic mode: with a threshold of 0.7, a failed
/// probe on one of three endpoints enters it, and the probe passing again leaves it.
#[tokio::test(start_paused = true)]
async fn health_check_verdicts_enter_and_leave_panic_mode() {
    use std::sync::{atomic::AtomicBool, Arc};
    let down = Arc::new(AtomicBool::new(false));
    let probe_down = down.clone();
    let rec = Recorder::default();
    let (balance, _cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.7)
            .outlier_detection(OutlierDetection::disabled())
            .on_event(rec.listener(Instant::now()))
            .health_check(
                seawall::balance::HealthCheck {
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(1),
                },
                move |key: &usize, _svc: Node| {
                    let fail = *key == 2 && probe_down.load(Relaxed);
                    async move { !fail }
                },
            ),
    )
    .await;
    rec.take();
    down.store(true, Relaxed);
    // Probed at 5 s and 10 s: failed both times, reported once.
    sleep(Duration::from_secs(11)).await;
    assert!(balance.is_panicking());
    down.store(false, Relaxed);
    sleep(Duration::from_secs(5)).await;
    assert!(!balance.is_panicking());
    let events: Vec<BalanceEvent> = rec.take().into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        events,
        vec![
            BalanceEvent::ProbeFailed { key: "2".into() },
            entered(1, 3),
            BalanceEvent::ProbePassed { key: "2".into() },
            exited(0, 3),
        ]
    );
}

/// `panic_threshold(0.0)` turns panic mode off: two of three endpoints ejected enter it neither in
/// the events nor in the panic gauge, and the unhealthy endpoints gauge still counts them.
#[tokio::test(start_paused = true)]
async fn a_threshold_of_zero_never_enters_panic_mode() {
    use seawall_core::metrics::{
        testing::TestRecorder, BALANCE_PANIC, BALANCE_UNHEALTHY_ENDPOINTS,
    };
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let unhealthy = || recorder.gauge(BALANCE_UNHEALTHY_ENDPOINTS, "off");
    let panic = || recorder.gauge(BALANCE_PANIC, "off");
    let rec = Recorder::default();
    let (balance, cluster) = cluster(
        3,
        ejecting_round_robin(&rec).name("off").panic_threshold(0.0),
    )
    .await;
    for id in 0..2 {
        cluster.node(id).fail.store(true, Relaxed);
    }
    drive_until_unhealthy(&balance, 2).await;
    assert_eq!(balance.unhealthy(), vec![0, 1]);
    assert!(!balance.is_panicking());
    assert_eq!((unhealthy(), panic()), (Some(2.0), Some(0.0)));

    // Returned at the pass of 10 s.
    for id in 0..2 {
        cluster.node(id).fail.store(false, Relaxed);
    }
    sleep(Duration::from_secs(11)).await;
    assert!(balance.unhealthy().is_empty());
    assert_eq!((unhealthy(), panic()), (Some(0.0), Some(0.0)));
    let events: Vec<BalanceEvent> = rec.take().into_iter().map(|(_, e)| e).collect();
    let count = |f: fn(&BalanceEvent) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(
        count(|e| matches!(e, BalanceEvent::Ejected { .. })),
        2,
        "{events:?}"
    );
    assert_eq!(
        count(|e| matches!(e, BalanceEvent::Returned { .. })),
        2,
        "{events:?}"
    );
    assert_eq!(count(is_panic), 0, "{events:?}");
}

/// One discovery batch that removes the unhealthy endpoint and adds another leaves panic mode
/// once, after both changes: the set in between (two healthy endpoints) is never published.
#[tokio::test(start_paused = true)]
async fn a_discovery_batch_leaves_panic_mode_once_after_its_changes() {
    let rec = Recorder::default();
    let (balance, cluster) = cluster(3, ejecting_round_robin(&rec).panic_threshold(0.7)).await;
    cluster.node(0).fail.store(true, Relaxed);
    assert_eq!(drive(&balance, 3).await, 1);
    assert!(balance.is_panicking());
    rec.take();
    // Sent together, so the background task finds them ready at once: one batch.
    cluster.tx.send(Change::Remove(0)).unwrap();
    cluster.tx.send(Change::Insert(3, Node::new(3))).unwrap();
    settle().await;
    assert!(!balance.is_panicking());
    assert_eq!(balance.endpoints(), vec![1, 2, 3]);
    let events: Vec<BalanceEvent> = rec.take().into_iter().map(|(_, e)| e).collect();
    assert_eq!(
        events,
        vec![
            BalanceEvent::EndpointRemoved { key: "0".into() },
            BalanceEvent::EndpointAdded { key: "3".into() },
            exited(0, 3),
        ]
    );
}
