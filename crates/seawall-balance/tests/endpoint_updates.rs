//! Discovery inserting a key that is already in the set: the same endpoint with a new weight,
//! zone or service. It is updated in place: it keeps its load, latency and health (an ejection
//! runs its course), and picks follow the new weight and use the new service.

mod common;

use common::{channel, settle, Behavior, Node};
use seawall::balance::{Balance, BalanceLayer, Change, EndpointMeta, OutlierDetection, Picker};
use std::{
    hash::{Hash, Hasher},
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};
use tokio::time::sleep;
use tower::{Layer, ServiceExt};

/// An endpoint key whose identity is `id`; `weight` is metadata, as discovery's keys carry it.
#[derive(Debug, Clone)]
struct Key {
    id: usize,
    weight: u32,
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl EndpointMeta for Key {
    fn weight(&self) -> u32 {
        self.weight
    }
}

fn key(id: usize, weight: u32) -> Key {
    Key { id, weight }
}

fn node(id: usize) -> (Node, Arc<Behavior>) {
    let behavior = Arc::new(Behavior::default());
    (
        Node {
            id,
            behavior: behavior.clone(),
        },
        behavior,
    )
}

fn consecutive(n: u32) -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(10),
        max_ejection_time: Duration::from_secs(30),
        max_ejection_percent: 1.0,
        consecutive_failures: Some(n),
        success_rate: None,
        failure_percentage: None,
        latency: None,
    }
}

/// Makes `calls` sequential calls and returns how many failed.
async fn drive(balance: &Balance<Key, Node>, calls: u64) -> usize {
    let mut failed = 0;
    for i in 0..calls {
        if balance.clone().oneshot(i).await.is_err() {
            failed += 1;
        }
    }
    failed
}

fn ids(keys: Vec<Key>) -> Vec<(usize, u32)> {
    keys.into_iter().map(|k| (k.id, k.weight)).collect()
}

#[tokio::test(start_paused = true)]
async fn an_insert_for_a_present_key_keeps_its_health_and_takes_the_new_weight() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .seed(7)
        .picker(Picker::WeightedRoundRobin)
        .outlier_detection(consecutive(3))
        .build()
        .unwrap()
        .layer(stream);
    let mut old = Vec::new();
    for id in 0..3 {
        let (node, behavior) = node(id);
        old.push(behavior);
        tx.send(Change::Insert(key(id, 1), node)).unwrap();
    }
    settle().await;

    // Endpoint 0 fails: equal weights take turns, so its third failure, in nine calls, ejects
    // it for 10 s.
    old[0].fail.store(true, Relaxed);
    assert_eq!(drive(&balance, 9).await, 3);
    assert_eq!(ids(balance.unhealthy()), vec![(0, 1)]);

    // 5 s later discovery inserts endpoint 0 again, with a new service: still the same
    // endpoint, still ejected, in its place.
    sleep(Duration::from_secs(5)).await;
    let (node0, new0) = node(0);
    tx.send(Change::Insert(key(0, 1), node0)).unwrap();
    settle().await;
    assert_eq!(ids(balance.endpoints()), vec![(0, 1), (1, 1), (2, 1)]);
    assert_eq!(ids(balance.unhealthy()), vec![(0, 1)]);
    for behavior in &old {
        behavior.hits.store(0, Relaxed);
    }
    assert_eq!(drive(&balance, 10).await, 0);
    assert_eq!(
        new0.hits.load(Relaxed),
        0,
        "an ejected endpoint takes no calls"
    );

    // The ejection ends 10 s after it began, not after the insert.
    sleep(Duration::from_millis(5_500)).await;
    assert!(balance.unhealthy().is_empty());

    // Endpoint 1 now weighs 3: picks follow, on its new service.
    let (node1, new1) = node(1);
    tx.send(Change::Insert(key(1, 3), node1)).unwrap();
    settle().await;
    assert_eq!(ids(balance.endpoints()), vec![(0, 1), (1, 3), (2, 1)]);
    for behavior in &old {
        behavior.hits.store(0, Relaxed);
    }
    assert_eq!(drive(&balance, 50).await, 0);
    assert_eq!(
        [
            new0.hits.load(Relaxed),
            new1.hits.load(Relaxed),
            old[2].hits.load(Relaxed)
        ],
        [10, 30, 10]
    );
    assert_eq!(old[0].hits.load(Relaxed) + old[1].hits.load(Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn an_insert_for_a_present_key_keeps_the_calls_in_flight() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .seed(7)
        .picker(Picker::LeastOutstanding)
        .outlier_detection(consecutive(3))
        .build()
        .unwrap()
        .layer(stream);
    let (node0, slow) = node(0);
    slow.delay_ms.store(100, Relaxed);
    tx.send(Change::Insert(key(0, 1), node0)).unwrap();
    settle().await;
    let call = tokio::spawn(balance.clone().oneshot(1));
    settle().await;
    assert_eq!(balance.outstanding(&key(0, 1)), Some(1));

    // A new weight and service for endpoint 0 while its call is in flight: the call still counts.
    let (node0, _) = node(0);
    tx.send(Change::Insert(key(0, 4), node0)).unwrap();
    settle().await;
    assert_eq!(ids(balance.endpoints()), vec![(0, 4)]);
    assert_eq!(balance.outstanding(&key(0, 4)), Some(1));

    // It finishes on the old service, and is counted off the updated endpoint.
    assert_eq!(call.await.unwrap().unwrap(), 0);
    assert_eq!(balance.outstanding(&key(0, 4)), Some(0));
    assert_eq!(slow.hits.load(Relaxed), 1);
}
