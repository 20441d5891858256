//! An SRV record whose weight changes, same target and port: the same endpoint with a new
//! weight. Discovery inserts it again and never removes it, so the balancer updates it in place
//! (it keeps its statistics and health) and picks follow the new weight.
//!
//! Sockets are involved, so these tests run in real time with generous, bounded waits.

mod common;

use common::{
    addr, count_answers, eventually, first_resolution, next_change, next_two_changes, queued,
    two_targets, Zone,
};
use hickory_proto::rr::RecordType;
use seawall::balance::{BalanceEvent, BalanceLayer, Picker};
use std::sync::{Arc, Mutex};
use tower::Layer;

const SRV: &str = "_http._tcp.api.test";

#[tokio::test]
async fn a_weight_change_inserts_the_endpoint_again_without_removing_it() {
    let zone = Zone::default();
    zone.set_srv(SRV, &[(10, 3, 8001, "a.api.test.")]);
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    let mut discovery = zone.srv_discovery(SRV).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.1:8001"), 3)]
    );

    zone.set_srv(SRV, &[(10, 5, 8001, "a.api.test.")]);
    assert_eq!(
        next_change(&mut discovery).await,
        ('+', addr("10.1.0.1:8001"), 5)
    );
    // Later resolutions give the same weight: nothing more.
    zone.more_questions(RecordType::SRV, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

#[tokio::test]
async fn the_balancer_follows_a_weight_change_without_losing_the_endpoint() {
    let zone = Zone::default();
    two_targets(&zone, SRV);
    let discovery = zone.srv_discovery(SRV).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let balance = BalanceLayer::builder()
        .picker(Picker::WeightedRoundRobin)
        .on_event(move |_: &seawall::core::Name, e: &BalanceEvent| {
            seen.lock().unwrap().push(e.clone())
        })
        .build()
        .unwrap()
        .layer(discovery);
    let weights = |balance: &seawall::balance::Balance<_, _>| {
        let mut w: Vec<(std::net::SocketAddr, u32)> = balance
            .endpoints()
            .into_iter()
            .map(|k: seawall::balance::Tagged<_>| (k.key, k.weight))
            .collect();
        w.sort();
        w
    };
    eventually("both endpoints", || balance.endpoints().len() == 2).await;

    zone.set_srv(
        SRV,
        &[(10, 3, 8001, "a.api.test."), (10, 1, 8002, "b.api.test.")],
    );
    eventually("the new weight", || {
        weights(&balance) == vec![(addr("10.1.0.1:8001"), 3), (addr("10.1.0.2:8002"), 1)]
    })
    .await;
    assert!(
        !events
            .lock()
            .unwrap()
            .iter()
            .any(|e| matches!(e, BalanceEvent::EndpointRemoved { .. })),
        "{events:?}"
    );
    let counts = count_answers(&balance, 40).await;
    assert_eq!(counts[&addr("10.1.0.1:8001")], 30);
    assert_eq!(counts[&addr("10.1.0.2:8002")], 10);
}

#[tokio::test]
async fn records_for_one_address_weigh_their_sum_whatever_their_order() {
    let zone = Zone::default();
    // Two targets (two names of one host) on the same port, and the same target twice.
    zone.set_srv(
        SRV,
        &[
            (10, 3, 8001, "a.api.test."),
            (10, 1, 8001, "alias.api.test."),
            (10, 2, 8002, "b.api.test."),
            (10, 5, 8002, "b.api.test."),
        ],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("alias.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    let mut discovery = zone.srv_discovery(SRV).await;
    // RFC 2782 picks a record with a chance proportional to its weight: an address named by
    // several records gets the sum of their chances.
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![
            ('+', addr("10.1.0.1:8001"), 4),
            ('+', addr("10.1.0.2:8002"), 7)
        ]
    );

    // The server hands the records out in another order (DNS servers rotate them): nothing
    // changes.
    zone.set_srv(
        SRV,
        &[
            (10, 5, 8002, "b.api.test."),
            (10, 1, 8001, "alias.api.test."),
            (10, 2, 8002, "b.api.test."),
            (10, 3, 8001, "a.api.test."),
        ],
    );
    zone.more_questions(RecordType::SRV, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

/// RFC 2782 weighs records, not addresses: a target's addresses share its record's weight, so a
/// dual-stack target, or one with several addresses, gets its record's share and no more.
#[tokio::test]
async fn a_targets_addresses_share_its_records_weight() {
    let zone = Zone::default();
    two_targets(&zone, SRV);
    zone.set_aaaa("a.api.test", &["fd00::1".parse().unwrap()]);
    let mut discovery = zone.srv_discovery(SRV).await;
    let first = first_resolution(&mut discovery).await;
    assert_eq!(
        first,
        vec![
            ('+', addr("10.1.0.1:8001"), 1),
            ('+', addr("10.1.0.2:8002"), 2),
            ('+', addr("[fd00::1]:8001"), 1)
        ]
    );
    // a's two addresses together weigh what b's one does: the records weigh alike.
    let weight = |port: u16| -> u32 {
        first
            .iter()
            .filter(|(_, at, _)| at.port() == port)
            .map(|(_, _, weight)| weight)
            .sum()
    };
    assert_eq!(weight(8001), weight(8002));

    // b gets a second address too: every address now weighs alike.
    zone.set_a("b.api.test", &[[10, 1, 0, 2], [10, 1, 0, 3]]);
    assert_eq!(
        next_two_changes(&mut discovery).await,
        vec![
            ('+', addr("10.1.0.2:8002"), 1),
            ('+', addr("10.1.0.3:8002"), 1)
        ]
    );
    zone.more_questions(RecordType::SRV, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

/// RFC 2782: a record of weight 0 has a very small chance of being picked when others of its
/// priority weigh more. Beside weighted records it weighs 1 against their weights scaled by 100;
/// when every record of the priority weighs 0, each weighs 1.
#[tokio::test]
async fn a_zero_weight_gets_a_very_small_share_beside_weighted_records() {
    let zone = Zone::default();
    zone.set_srv(
        SRV,
        &[
            (10, 0, 8001, "a.api.test."),
            (10, 3, 8002, "b.api.test."),
            (10, 1, 8003, "c.api.test."),
        ],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.set_a("c.api.test", &[[10, 1, 0, 3]]);
    let mut discovery = zone.srv_discovery(SRV).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![
            ('+', addr("10.1.0.1:8001"), 1),
            ('+', addr("10.1.0.2:8002"), 300),
            ('+', addr("10.1.0.3:8003"), 100)
        ]
    );

    // Only weight 0 left: every record weighs alike.
    zone.set_srv(
        SRV,
        &[(10, 0, 8001, "a.api.test."), (10, 0, 8002, "b.api.test.")],
    );
    assert_eq!(
        next_two_changes(&mut discovery).await,
        vec![
            ('+', addr("10.1.0.2:8002"), 1),
            ('-', addr("10.1.0.3:8003"), 100)
        ]
    );
}

/// Beside a record of weight 0, the others' weights are scaled by a factor that holds while their
/// sum stays between the same powers of two: a change in one record's weight changes that
/// record's endpoint alone, and the others are not inserted again.
#[tokio::test]
async fn a_weight_change_beside_a_zero_weight_leaves_the_other_records_alone() {
    let zone = Zone::default();
    zone.set_srv(
        SRV,
        &[
            (10, 0, 8001, "a.api.test."),
            (10, 700, 8002, "b.api.test."),
            (10, 1, 8003, "c.api.test."),
        ],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.set_a("c.api.test", &[[10, 1, 0, 3]]);
    let mut discovery = zone.srv_discovery(SRV).await;
    let first = first_resolution(&mut discovery).await;
    let [('+', _, a), ('+', _, b), ('+', _, c)] = first[..] else {
        panic!("{first:?}");
    };
    assert_eq!((a, b), (1, 700 * c));

    zone.set_srv(
        SRV,
        &[
            (10, 0, 8001, "a.api.test."),
            (10, 600, 8002, "b.api.test."),
            (10, 1, 8003, "c.api.test."),
        ],
    );
    assert_eq!(
        next_change(&mut discovery).await,
        ('+', addr("10.1.0.2:8002"), 600 * c)
    );
    zone.more_questions(RecordType::SRV, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
}
