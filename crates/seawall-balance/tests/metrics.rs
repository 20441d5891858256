//! The balancer's metrics, under the policy name: its endpoints, those health keeps out, and
//! whether it is in panic mode.

mod common;

use common::{drive_until_unhealthy, eject_at_once, Node};
use seawall::balance::{BalanceLayer, Change, Picker};
use seawall_core::metrics::{
    testing::TestRecorder, BALANCE_ENDPOINTS, BALANCE_PANIC, BALANCE_UNHEALTHY_ENDPOINTS,
};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};
use tokio::time::sleep;
use tower::Layer;

/// The endpoints gauge moves by the changes to each set: balancers that share a name sum their
/// sets, and a dropped balancer's set is taken off, so one built again under the name, as on a
/// reload, reports its own.
#[tokio::test(start_paused = true)]
async fn the_endpoints_gauge_sums_the_balancers_sharing_a_name() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let endpoints = || recorder.gauge(BALANCE_ENDPOINTS, "x");
    let layer = BalanceLayer::builder().name("x").build().unwrap();
    let mut balancers = Vec::new();
    let mut senders = Vec::new();
    for n in [2, 3] {
        let (tx, stream) = common::channel();
        balancers.push(layer.layer(stream));
        for id in 0..n {
            tx.send(Change::Insert(id, Node::new(id))).unwrap();
        }
        senders.push(tx);
    }
    common::settle().await;
    assert_eq!(endpoints(), Some(5.0));

    // An insert for a key already in the set changes nothing; a remove takes one off.
    senders[1].send(Change::Insert(0, Node::new(0))).unwrap();
    senders[1].send(Change::Remove(2)).unwrap();
    common::settle().await;
    assert_eq!(endpoints(), Some(4.0));

    drop(balancers.remove(0));
    assert_eq!(endpoints(), Some(2.0));
    drop(balancers);
    assert_eq!(endpoints(), Some(0.0));
}

/// The unhealthy endpoints gauge and the panic gauge follow ejections, returns and discovery
/// changes (a threshold of 0.7 puts one unhealthy endpoint of three in panic mode, and not one of
/// four); balancers that share a name sum them, and a dropped balancer's part is taken off.
#[tokio::test(start_paused = true)]
async fn the_unhealthy_and_panic_gauges_follow_ejections_returns_and_discovery() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let unhealthy = || recorder.gauge(BALANCE_UNHEALTHY_ENDPOINTS, "h");
    let panic = || recorder.gauge(BALANCE_PANIC, "h");
    let builder = || {
        BalanceLayer::builder()
            .name("h")
            .seed(5)
            .picker(Picker::RoundRobin)
            .panic_threshold(0.7)
            .outlier_detection(eject_at_once())
    };
    let (balance, cluster) = common::cluster(3, builder()).await;
    assert_eq!((unhealthy(), panic()), (Some(0.0), Some(0.0)), "registered");

    // Ejected: one of three.
    cluster.node(0).fail.store(true, Relaxed);
    drive_until_unhealthy(&balance, 1).await;
    assert_eq!((unhealthy(), panic()), (Some(1.0), Some(1.0)));
    // Returned at the pass of 10 s.
    cluster.node(0).fail.store(false, Relaxed);
    sleep(Duration::from_secs(11)).await;
    assert!(balance.unhealthy().is_empty());
    assert_eq!((unhealthy(), panic()), (Some(0.0), Some(0.0)));

    // Ejected again; an endpoint added makes it one of four, then the ejected one is removed.
    cluster.node(0).fail.store(true, Relaxed);
    drive_until_unhealthy(&balance, 1).await;
    assert_eq!((unhealthy(), panic()), (Some(1.0), Some(1.0)));
    cluster.tx.send(Change::Insert(3, Node::new(3))).unwrap();
    common::settle().await;
    assert_eq!((unhealthy(), panic()), (Some(1.0), Some(0.0)));
    cluster.tx.send(Change::Remove(0)).unwrap();
    common::settle().await;
    assert_eq!((unhealthy(), panic()), (Some(0.0), Some(0.0)));
    // One of three again.
    cluster.node(1).fail.store(true, Relaxed);
    drive_until_unhealthy(&balance, 1).await;
    assert_eq!((unhealthy(), panic()), (Some(1.0), Some(1.0)));

    // A second balancer under the name, in panic mode too: the gauges sum.
    let (other, other_cluster) = common::cluster(3, builder()).await;
    other_cluster.node(2).fail.store(true, Relaxed);
    drive_until_unhealthy(&other, 1).await;
    assert_eq!((unhealthy(), panic()), (Some(2.0), Some(2.0)));
    drop(balance);
    assert_eq!((unhealthy(), panic()), (Some(1.0), Some(1.0)));
    drop(other);
    assert_eq!((unhealthy(), panic()), (Some(0.0), Some(0.0)));
}
