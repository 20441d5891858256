//! The active health check hook (Ribbon's IPing) and the availability filter.

mod common;

use common::cluster;
use seawall::balance::{
    Balance, BalanceEvent, BalanceLayer, HealthCheck, OutlierDetection, Picker,
};
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

/// Three endpoints probed every 5 s with a 1 s timeout; endpoint 0's probe hangs, or panics (an
/// `unwrap` on a refused connection).
async fn probed_with_a_faulty_probe(hang: bool) -> (Balance<usize, common::Node>, common::Cluster) {
    cluster(
        3,
        BalanceLayer::builder()
            .outlier_detection(OutlierDetection::disabled())
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(1),
                },
                move |key: &usize, _svc: common::Node| {
                    let faulty = *key == 0;
                    async move {
                        if faulty && hang {
                            std::future::pending::<()>().await;
                        }
                        if faulty {
                            panic!("connection refused");
                        }
                        true
                    }
                },
            ),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_hangs_counts_as_failed() {
    let (balance, _cluster) = probed_with_a_faulty_probe(true).await;
    // Probed at 5 s; the hung probe times out at 6 s.
    sleep(Duration::from_millis(5500)).await;
    assert!(balance.unhealthy().is_empty());
    sleep(Duration::from_millis(1000)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
}

/// A probe that panics before it returns its future (an `unwrap` while building the request)
/// fails as one that panics in its future does, and leaves the balancer's background task
/// running: discovery changes still apply.
#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_before_its_future_counts_as_failed() {
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .outlier_detection(OutlierDetection::disabled())
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(5),
                    timeout: Duration::from_secs(1),
                },
                |key: &usize, _svc: common::Node| {
                    assert_ne!(*key, 0, "connection refused");
                    async { true }
                },
            ),
    )
    .await;
    sleep(Duration::from_millis(5500)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    cluster
        .tx
        .send(seawall::balance::Change::Insert(3, common::Node::new(3)))
        .unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints(), vec![0, 1, 2, 3]);
    // Probed again at the next interval, the new endpoint included.
    sleep(Duration::from_secs(5)).await;
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

/// Endpoint 0 fails its health check; endpoint 1, the only one left, is busy (one call at a time),
/// so a call waits for it. Then endpoint 1 fails its health check too: no endpoint is healthy,
/// panic mode ignores health, and endpoint 0, idle, can take the waiting call at once.
#[tokio::test(start_paused = true)]
async fn a_failed_probe_that_starts_panic_mode_wakes_waiting_calls() {
    use seawall::balance::Change;
    use tower::{limit::ConcurrencyLimit, Layer, ServiceExt};

    let down: Arc<[AtomicBool; 2]> = Arc::new(Default::default());
    let probe_down = down.clone();
    let (tx, stream) = common::channel();
    let balance = BalanceLayer::builder()
        .seed(3)
        .picker(Picker::RoundRobin)
        .max_wait(Duration::from_secs(30))
        .outlier_detection(OutlierDetection {
            interval: Duration::from_secs(3600),
            ..OutlierDetection::disabled()
        })
        .health_check(
            HealthCheck {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
            },
            move |key: &usize, _svc: ConcurrencyLimit<common::Node>| {
                let fail = probe_down[*key].load(Relaxed);
                async move { !fail }
            },
        )
        .build()
        .unwrap()
        .layer(stream);
    let mut hits = Vec::new();
    for id in 0..2usize {
        let behavior = Arc::new(common::Behavior::default());
        behavior
            .delay_ms
            .store(if id == 1 { 1_000_000 } else { 0 }, Relaxed);
        hits.push(behavior.clone());
        let node = common::Node { id, behavior };
        tx.send(Change::Insert(id, ConcurrencyLimit::new(node, 1)))
            .unwrap();
    }
    common::settle().await;

    // Probed at 5 s: endpoint 0 is out, 1 of 2 healthy is not yet panic.
    down[0].store(true, Relaxed);
    sleep(Duration::from_secs(6)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    assert!(!balance.is_panicking());

    // Endpoint 1 takes a long call; the next call waits for it.
    let busy = tokio::spawn(balance.clone().oneshot(1));
    common::settle().await;
    assert_eq!(hits[1].hits.load(Relaxed), 1);
    let waiting = tokio::spawn(balance.clone().oneshot(2));
    common::settle().await;
    assert!(!waiting.is_finished());

    // Probed at 10 s: endpoint 1 fails too, panic mode lets endpoint 0 take the waiting call.
    down[1].store(true, Relaxed);
    sleep(Duration::from_millis(4_500)).await;
    assert!(balance.is_panicking());
    assert!(
        waiting.is_finished(),
        "the waiting call was not woken when endpoint 0 became available"
    );
    assert_eq!(waiting.await.unwrap().unwrap(), 0);
    busy.abort();
}

/// Endpoints 0 and 1 take one call at a time, and the health probe makes a call of its own
/// (50 ms on endpoint 1). Endpoint 0 is busy with a long call; endpoint 1's probe holds its permit
/// when a call comes, so the call holds endpoint 0 and waits. The probe passes, the verdict is
/// unchanged, and endpoint 1 is free: the waiting call is woken and takes it, well before
/// `max_wait`.
#[tokio::test(start_paused = true)]
async fn a_probe_that_ends_with_an_unchanged_verdict_wakes_waiting_calls() {
    use seawall::balance::Change;
    use tokio::time::Instant;
    use tower::{limit::ConcurrencyLimit, Layer, ServiceExt};

    let start = Instant::now();
    let (tx, stream) = common::channel();
    let balance = BalanceLayer::builder()
        .seed(3)
        .picker(Picker::RoundRobin)
        .max_wait(Duration::from_secs(2))
        .outlier_detection(OutlierDetection {
            interval: Duration::from_secs(3600),
            ..OutlierDetection::disabled()
        })
        .health_check(
            HealthCheck {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(3),
            },
            |_key: &usize, svc: ConcurrencyLimit<common::Node>| async move {
                svc.oneshot(u64::MAX).await.is_ok()
            },
        )
        .build()
        .unwrap()
        .layer(stream);
    let mut hits = Vec::new();
    for (id, delay_ms) in [(0usize, 10_000), (1, 50)] {
        let behavior = Arc::new(common::Behavior::default());
        behavior.delay_ms.store(delay_ms, Relaxed);
        hits.push(behavior.clone());
        let node = common::Node { id, behavior };
        tx.send(Change::Insert(id, ConcurrencyLimit::new(node, 1)))
            .unwrap();
    }
    common::settle().await;

    // Endpoint 0 takes a long call, and endpoint 1 the call after it: the next turn is 0's.
    let mut busy = None;
    for i in 0..10 {
        let call = tokio::spawn(balance.clone().oneshot(i));
        common::settle().await;
        if hits[0].hits.load(Relaxed) == 1 {
            busy = Some(call);
            break;
        }
        call.await.unwrap().unwrap();
    }
    let busy = busy.expect("endpoint 0 took a call");
    assert_eq!(balance.clone().oneshot(20).await.unwrap(), 1);

    // Probed at 5 s: endpoint 1's probe holds its permit for 50 ms, endpoint 0's waits for it.
    tokio::time::sleep_until(start + Duration::from_secs(5)).await;
    common::settle().await;
    let before = hits[1].hits.load(Relaxed);
    let waiting = tokio::spawn(balance.clone().oneshot(30));
    common::settle().await;
    assert!(!waiting.is_finished());
    assert_eq!(
        hits[1].hits.load(Relaxed),
        before,
        "the probe held endpoint 1"
    );

    // The probe passes at 5.05 s; the waiting call takes endpoint 1 and is answered at 5.1 s.
    let answer = tokio::time::timeout(Duration::from_millis(200), waiting)
        .await
        .expect("the waiting call was not woken when the probe let go of endpoint 1");
    assert_eq!(answer.unwrap().unwrap(), 1);
    assert!(balance.unhealthy().is_empty());
    busy.abort();
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_panics_counts_as_failed() {
    let (balance, _cluster) = probed_with_a_faulty_probe(false).await;
    // Probed at 5 s; the probe of endpoint 0 panics.
    sleep(Duration::from_secs(6)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
}

/// A probe still running when the next interval comes is not started again: endpoint 0's first
/// probe hangs past four intervals, times out, and the next probe puts it back.
#[tokio::test(start_paused = true)]
async fn a_probe_still_running_is_not_started_again() {
    use std::sync::atomic::AtomicU32;

    let started: Arc<[AtomicU32; 2]> = Arc::new(Default::default());
    let counts = started.clone();
    let rec = common::Recorder::default();
    let (balance, _cluster) = cluster(
        2,
        BalanceLayer::builder()
            .on_event(rec.listener(tokio::time::Instant::now()))
            .outlier_detection(OutlierDetection::disabled())
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(5),
                },
                move |key: &usize, _svc: common::Node| {
                    let n = counts[*key].fetch_add(1, Relaxed) + 1;
                    let hang = *key == 0 && n == 1;
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
    // Probes start at 1, 2, 3, 4 and 5 s; endpoint 0's first is still running at each.
    sleep(Duration::from_millis(5500)).await;
    assert_eq!(started[0].load(Relaxed), 1);
    assert_eq!(started[1].load(Relaxed), 5);
    assert!(balance.unhealthy().is_empty());
    // It times out at 6 s; the probe of 6 or 7 s passes.
    sleep(Duration::from_secs(2)).await;
    assert!(balance.unhealthy().is_empty());
    let probes: Vec<_> = rec
        .take()
        .into_iter()
        .filter(|(_, e)| {
            matches!(
                e,
                BalanceEvent::ProbeFailed { .. } | BalanceEvent::ProbePassed { .. }
            )
        })
        .collect();
    assert_eq!(probes.len(), 2, "{probes:?}");
    assert_eq!(probes[0].0, Duration::from_secs(6), "{probes:?}");
    assert!(
        matches!(&probes[0].1, BalanceEvent::ProbeFailed { key } if key == "0"),
        "{probes:?}"
    );
    assert!(probes[1].0 <= Duration::from_secs(7), "{probes:?}");
    assert!(
        matches!(&probes[1].1, BalanceEvent::ProbePassed { key } if key == "0"),
        "{probes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_probe_releases_its_service() {
    use seawall::balance::Change;

    let (balance, cluster) = cluster(
        2,
        BalanceLayer::builder()
            .outlier_detection(OutlierDetection::disabled())
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(30),
                },
                |_key: &usize, svc: common::Node| async move {
                    let _held = svc;
                    std::future::pending::<bool>().await
                },
            ),
    )
    .await;
    // The probes started at 1 s hold a clone of each service.
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(Arc::strong_count(&cluster.behaviors[0]), 3);
    cluster.tx.send(Change::Remove(0)).unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints().len(), 1);
    assert_eq!(
        Arc::strong_count(&cluster.behaviors[0]),
        1,
        "the removed endpoint's probe still holds its service"
    );
}

/// Endpoint 0 is removed while its first probe runs and inserted again; that probe's late failure
/// belongs to the endpoint that was removed and is not applied to the new one.
#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_probe_verdict_is_not_applied_after_it_returns() {
    use seawall::balance::Change;
    use std::sync::atomic::AtomicU32;

    let started = Arc::new(AtomicU32::new(0));
    let counts = started.clone();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .outlier_detection(OutlierDetection::disabled())
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(5),
                },
                move |key: &usize, _svc: common::Node| {
                    let first = *key == 0 && counts.fetch_add(1, Relaxed) == 0;
                    async move {
                        if first {
                            sleep(Duration::from_millis(2500)).await;
                            return false;
                        }
                        true
                    }
                },
            ),
    )
    .await;
    // Endpoint 0's first probe starts at 1 s and would fail at 3.5 s, between two probes.
    sleep(Duration::from_millis(1500)).await;
    cluster.tx.send(Change::Remove(0)).unwrap();
    common::settle().await;
    let node = common::Node {
        id: 0,
        behavior: cluster.behaviors[0].clone(),
    };
    cluster.tx.send(Change::Insert(0, node)).unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints().len(), 3);
    sleep(Duration::from_millis(2300)).await;
    assert!(balance.unhealthy().is_empty());
}

/// A probe and a filter that are not `Clone` (state of their own, a connection pool): the layer
/// holds them behind an `Arc`, so it is `Clone` all the same.
#[test]
fn a_layer_is_clone_with_a_probe_and_filter_that_are_not() {
    struct Probe;

    impl seawall::balance::Probe<usize, common::Node> for Probe {
        type Future = std::future::Ready<bool>;

        fn probe(&self, _: &usize, _: common::Node) -> Self::Future {
            std::future::ready(true)
        }
    }

    struct Filter;

    impl seawall::balance::Filter<usize, common::Node> for Filter {
        fn available(&self, _: &usize, _: &common::Node) -> bool {
            true
        }
    }

    fn assert_clone<T: Clone>(_: &T) {}

    let layer = BalanceLayer::builder()
        .health_check(
            HealthCheck {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
            },
            Probe,
        )
        .filter(Filter)
        .build()
        .unwrap();
    assert_clone(&layer);
}

/// An ejection that ends while the endpoint's health check fails is over (`Returned`), but the
/// endpoint stays out: the failing health check still keeps it in `unhealthy()`.
#[tokio::test(start_paused = true)]
async fn an_ejection_ending_while_the_health_check_fails_leaves_the_endpoint_out() {
    let down = Arc::new(AtomicBool::new(false));
    let probe_down = down.clone();
    let rec = common::Recorder::default();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(3)
            .picker(Picker::RoundRobin)
            .on_event(rec.listener(tokio::time::Instant::now()))
            .outlier_detection(OutlierDetection {
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(5),
                max_ejection_time: Duration::from_secs(5),
                consecutive_failures: Some(1),
                max_ejection_percent: 1.0,
                ..OutlierDetection::disabled()
            })
            .health_check(
                HealthCheck {
                    interval: Duration::from_secs(1),
                    timeout: Duration::from_secs(1),
                },
                move |key: &usize, _svc: common::Node| {
                    let fail = *key == 0 && probe_down.load(Relaxed);
                    async move { !fail }
                },
            ),
    )
    .await;
    cluster.node(0).fail.store(true, Relaxed);
    common::drive(&balance, 3).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    down.store(true, Relaxed);
    sleep(Duration::from_secs(8)).await;
    let events: Vec<_> = rec.take().into_iter().map(|(_, e)| e).collect();
    let returned = BalanceEvent::Returned { key: "0".into() };
    let probe_failed = BalanceEvent::ProbeFailed { key: "0".into() };
    let at = |event: &BalanceEvent| events.iter().position(|e| e == event);
    // Returned after the health check failed, with no pass between.
    assert!(at(&probe_failed) < at(&returned), "{events:?}");
    assert!(
        at(&probe_failed).is_some() && at(&returned).is_some(),
        "{events:?}"
    );
    assert!(!events.contains(&BalanceEvent::ProbePassed { key: "0".into() }));
    assert_eq!(balance.unhealthy(), vec![0]);
    assert!(!balance.is_panicking());
}
