//! The targets of an SRV resolution are looked up at once, up to 16 at a time, a lookup that ends
//! making room for the next: targets whose server does not answer hold a resolution up for one
//! timeout together, not one each.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{addr, first_resolution, make, Endpoint, Zone};
use hickory_proto::rr::RecordType;
use seawall::{
    balance::Tagged,
    discover::{Discovery, Dns},
};
use std::{net::SocketAddr, time::Duration};

const SRV: &str = "_http._tcp.api.test";

/// A zone whose SRV records name `n` targets, `t1.` to `tn.`, on ports 8001 on, each with one
/// address (`10.1.0.i`), and where the targets `silent` picks do not answer. The names are short
/// so that the records fit a 512-byte answer, which the test server sends over UDP alone.
fn numbered_targets(n: u8, silent: impl Fn(u8) -> bool) -> Zone {
    let zone = Zone::with_ttl(60);
    let targets: Vec<String> = (1..=n).map(|i| format!("t{i}")).collect();
    let records: Vec<(u16, u16, u16, String)> = targets
        .iter()
        .zip(8001..)
        .map(|(target, port)| (10, 1, port, format!("{target}.")))
        .collect();
    let records: Vec<(u16, u16, u16, &str)> = records
        .iter()
        .map(|(priority, weight, port, target)| (*priority, *weight, *port, target.as_str()))
        .collect();
    zone.set_srv(SRV, &records);
    for (target, ip) in targets.iter().zip(1..=n) {
        zone.set_a(target, &[[10, 1, 0, ip]]);
        zone.silence(target, silent(ip));
    }
    zone
}

/// SRV discovery of `SRV` from `zone`'s server, with a 2 s timeout.
async fn discover(zone: &Zone) -> Discovery<Tagged<SocketAddr>, Endpoint> {
    let server = zone.serve().await;
    Dns::srv(format!("{SRV}."))
        .nameservers([server])
        .timeout(Duration::from_secs(2))
        .build(make)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn silent_targets_hold_a_resolution_up_for_one_timeout_together() {
    let zone = Zone::with_ttl(60);
    zone.set_srv(
        SRV,
        &[
            (10, 1, 8001, "a.api.test."),
            (10, 1, 8002, "b.api.test."),
            (10, 1, 8003, "c.api.test."),
            (10, 1, 8004, "d.api.test."),
        ],
    );
    for (host, ip) in [("a", 1), ("b", 2), ("c", 3), ("d", 4)] {
        zone.set_a(&format!("{host}.api.test"), &[[10, 1, 0, ip]]);
    }
    for host in ["a.api.test", "b.api.test", "c.api.test"] {
        zone.silence(host, true);
    }
    let start = tokio::time::Instant::now();
    let mut discovery = discover(&zone).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.4:8004"), 1)]
    );
    // Every target was asked about at once, and the three unanswered lookups timed out together.
    assert_eq!(zone.asked_at(RecordType::A, start), vec![Duration::ZERO; 4]);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn at_most_16_targets_are_looked_up_at_once() {
    let zone = numbered_targets(17, |i| i != 17);
    let start = tokio::time::Instant::now();
    let mut discovery = discover(&zone).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.17:8017"), 1)]
    );
    // The first 16 targets at once; the last once a lookup ends, at the first ones' timeout.
    let mut expected = vec![Duration::ZERO; 16];
    expected.push(Duration::from_secs(2));
    assert_eq!(zone.asked_at(RecordType::A, start), expected);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

/// A lookup that ends frees its place at once, even while one started before it is still
/// waiting: a silent target among the first 16 does not keep the 17th waiting, and two silent
/// targets, one on each side of the 16th, still hold the resolution up for one timeout.
#[tokio::test(start_paused = true)]
async fn a_silent_target_does_not_hold_up_the_lookups_after_the_first_16() {
    let zone = numbered_targets(20, |i| i == 1 || i == 17);
    let start = tokio::time::Instant::now();
    let mut discovery = discover(&zone).await;
    let expected: Vec<_> = (2..=20u16)
        .filter(|&i| i != 17)
        .map(|i| ('+', addr(&format!("10.1.0.{i}:{}", 8000 + i)), 1))
        .collect();
    let mut resolved = first_resolution(&mut discovery).await;
    resolved.sort_by_key(|(_, addr, _)| addr.port());
    assert_eq!(resolved, expected);
    // The answered lookups end at once and make room: every target was asked about at the
    // start, and the two silent ones timed out together.
    assert_eq!(
        zone.asked_at(RecordType::A, start),
        vec![Duration::ZERO; 20]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}
