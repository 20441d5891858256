//! Dropping a DNS discovery stops it at once, even in the middle of a resolution: no question is
//! sent after the drop, whether the resolution had more lookups to make or more resolutions were
//! due.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{eventually, make, Zone};
use seawall::discover::Dns;
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

const SRV: &str = "_http._tcp.api.test";

#[tokio::test(start_paused = true)]
async fn a_discovery_dropped_mid_resolution_asks_nothing_more() {
    let zone = Zone::default();
    zone.ttl.store(1, Relaxed);
    zone.set_srv(
        SRV,
        &[
            (10, 1, 8001, "a.api.test."),
            (10, 1, 8002, "b.api.test."),
            (20, 1, 8003, "c.api.test."),
        ],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.set_a("c.api.test", &[[10, 1, 0, 3]]);
    zone.silence("a.api.test", true);
    zone.silence("b.api.test", true);
    let server = zone.serve().await;
    let discovery = Dns::srv(format!("{SRV}."))
        .nameservers([server])
        .timeout(Duration::from_secs(2))
        .build(make)
        .unwrap();

    // The SRV question, then a's and b's A and AAAA questions at once, which go unanswered. c,
    // the backup, is asked about only once no target of the first priority has resolved: it is
    // yet to be when the discovery is dropped.
    eventually("a's and b's questions", || zone.queries.load(Relaxed) == 5).await;
    drop(discovery);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(zone.queries.load(Relaxed), 5);
}
