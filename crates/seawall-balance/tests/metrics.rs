//! The balancer's metrics, under the policy name.

mod common;

use common::Node;
use seawall::balance::{BalanceLayer, Change};
use seawall_core::metrics::{testing::TestRecorder, BALANCE_ENDPOINTS};
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
