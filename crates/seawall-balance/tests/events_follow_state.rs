//! A listener that reads the balancer when it hears of a change finds the change made: an added
//! endpoint is in the set and a removed one is not, an ejected endpoint is unhealthy and counts
//! towards the panic threshold, and a returned one is healthy again and counts no more; a change of
//! panic mode is reported after the change that made it, and is in force when it is.

mod common;

use common::{cluster, drive, settle, Node};
use seawall::balance::{
    Balance, BalanceEvent, BalanceLayer, Change, EjectReason, FailurePercentage, OutlierDetection,
    Picker,
};
use seawall::core::Name;
use std::{
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};
use tokio::time::sleep;

/// What a listener found in the balancer when it heard of `event`.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    event: BalanceEvent,
    endpoints: Vec<usize>,
    unhealthy: Vec<usize>,
    panicking: bool,
}

/// A listener that reads the balancer it is given to watch each time it hears of an event.
#[derive(Clone, Default)]
struct Watcher {
    balance: Arc<Mutex<Option<Balance<usize, Node>>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Watcher {
    fn listener(&self) -> impl Fn(&Name, &BalanceEvent) + Send + Sync + 'static {
        let watcher = self.clone();
        move |_, event| {
            let balance = watcher.balance.lock().unwrap();
            if let Some(balance) = balance.as_ref() {
                watcher.seen.lock().unwrap().push(Seen {
                    event: event.clone(),
                    endpoints: balance.endpoints(),
                    unhealthy: balance.unhealthy(),
                    panicking: balance.is_panicking(),
                });
            }
        }
    }

    fn watch(&self, balance: &Balance<usize, Node>) {
        *self.balance.lock().unwrap() = Some(balance.clone());
    }

    /// What was seen so far; lets go of the balancer, so that it and its task can be dropped.
    fn stop(&self) -> Vec<Seen> {
        self.balance.lock().unwrap().take();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

fn seen(event: BalanceEvent, endpoints: &[usize], unhealthy: &[usize], panicking: bool) -> Seen {
    Seen {
        event,
        endpoints: endpoints.to_vec(),
        unhealthy: unhealthy.to_vec(),
        panicking,
    }
}

/// An endpoint discovery adds is in the set when the listeners hear of it, and one it removes is
/// gone.
#[tokio::test(start_paused = true)]
async fn discovery_changes_are_published_when_reported() {
    let watcher = Watcher::default();
    let (balance, cluster) = cluster(
        2,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .on_event(watcher.listener()),
    )
    .await;
    watcher.watch(&balance);
    cluster.tx.send(Change::Insert(2, Node::new(2))).unwrap();
    settle().await;
    cluster.tx.send(Change::Remove(0)).unwrap();
    settle().await;
    let key = |k: &str| k.to_string();
    assert_eq!(
        watcher.stop(),
        vec![
            seen(
                BalanceEvent::EndpointAdded { key: key("2") },
                &[0, 1, 2],
                &[],
                false
            ),
            seen(
                BalanceEvent::EndpointRemoved { key: key("0") },
                &[1, 2],
                &[],
                false
            ),
        ]
    );
}

/// Ejects endpoint 0 of 3 with `outlier` (a panic threshold of 0.7 makes 2 healthy of 3 too few),
/// then waits for its return, and gives what the listener found on each.
async fn eject_and_return(outlier: OutlierDetection) -> Vec<Seen> {
    let watcher = Watcher::default();
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.7)
            .outlier_detection(outlier)
            .on_event(watcher.listener()),
    )
    .await;
    watcher.watch(&balance);
    cluster.node(0).fail.store(true, Relaxed);
    // Round robin: each endpoint takes 3 calls, and endpoint 0 fails its 3.
    assert_eq!(drive(&balance, 9).await, 3);
    // Any ejection is made by the pass of 1 s.
    sleep(Duration::from_millis(1_500)).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    cluster.node(0).fail.store(false, Relaxed);
    // Ejected for 10 s, by 1 s: back at the pass of 11 s at the latest.
    sleep(Duration::from_secs(10)).await;
    assert!(balance.unhealthy().is_empty());
    watcher.stop()
}

fn outlier() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 1.0,
        consecutive_failures: None,
        success_rate: None,
        failure_percentage: None,
        latency: None,
    }
}

fn ejected(reason: EjectReason) -> BalanceEvent {
    BalanceEvent::Ejected {
        key: "0".into(),
        reason,
        duration: Duration::from_secs(10),
    }
}

/// What the listener sees as endpoint 0 of 3 is ejected for `reason`, then returns: unhealthy and
/// in panic mode at the ejection and at the panic mode it starts, healthy and out of it at the
/// return and at the end of panic mode that follows.
fn ejected_then_returned(reason: EjectReason) -> Vec<Seen> {
    vec![
        seen(ejected(reason), &[0, 1, 2], &[0], true),
        seen(
            BalanceEvent::PanicEntered {
                unhealthy: 1,
                endpoints: 3,
            },
            &[0, 1, 2],
            &[0],
            true,
        ),
        seen(
            BalanceEvent::Returned { key: "0".into() },
            &[0, 1, 2],
            &[],
            false,
        ),
        seen(
            BalanceEvent::PanicExited {
                unhealthy: 0,
                endpoints: 3,
            },
            &[0, 1, 2],
            &[],
            false,
        ),
    ]
}

/// An endpoint ejected on a call's failure is unhealthy, and counted towards the panic threshold,
/// when the listeners hear of it; returned by a pass, it is healthy and counted no more.
#[tokio::test(start_paused = true)]
async fn an_ejection_on_a_call_and_its_return_are_in_force_when_reported() {
    let seen_events = eject_and_return(OutlierDetection {
        consecutive_failures: Some(3),
        ..outlier()
    })
    .await;
    assert_eq!(
        seen_events,
        ejected_then_returned(EjectReason::ConsecutiveFailures)
    );
}

/// An endpoint ejected by an outlier detection pass is unhealthy, and counted towards the panic
/// threshold, when the listeners hear of it; returned by a later pass, it is healthy and counted
/// no more.
#[tokio::test(start_paused = true)]
async fn an_ejection_by_a_pass_and_its_return_are_in_force_when_reported() {
    let seen_events = eject_and_return(OutlierDetection {
        failure_percentage: Some(FailurePercentage {
            threshold: 0.5,
            enforcement: 1.0,
            minimum_hosts: 3,
            request_volume: 3,
        }),
        ..outlier()
    })
    .await;
    assert_eq!(
        seen_events,
        ejected_then_returned(EjectReason::FailurePercentage)
    );
}
