//! DNS discovery against a real DNS server on loopback, started by the test: records change
//! mid-test and the endpoint set follows; an outage keeps the last set.
//!
//! Sockets are involved, so these tests run in real time with generous, bounded waits.

mod common;

use common::{
    addr, count_answers, eventually, first_changes, first_resolution, make, queued, sorted,
    Endpoint, Zone,
};
use hickory_proto::rr::RecordType;
use seawall::balance::{BalanceLayer, Picker, Tagged};
use seawall::discover::{Discovery, Dns};
use std::{
    net::{Ipv6Addr, SocketAddr},
    sync::atomic::Ordering::Relaxed,
    time::Duration,
};
use tower::{Layer, ServiceExt};

#[tokio::test]
async fn a_records_follow_changes_and_survive_an_outage() {
    let zone = Zone::default();
    zone.ttl.store(0, Relaxed);
    zone.set_a("users.test", &[[10, 0, 0, 1], [10, 0, 0, 2]]);
    let server = zone.serve().await;
    let discovery = Dns::a("users.test.", 8080)
        .nameservers([server])
        .min_refresh(Duration::from_millis(50))
        .max_refresh(Duration::from_millis(200))
        .timeout(Duration::from_millis(200))
        .build(make)
        .unwrap();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap()
        .layer(discovery);
    let first = balance.clone().oneshot(()).await.unwrap();
    assert!(first == addr("10.0.0.1:8080") || first == addr("10.0.0.2:8080"));
    eventually("both records", || {
        sorted(balance.endpoints()) == vec![addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]
    })
    .await;

    // Records change mid-test: one goes, one comes.
    zone.set_a("users.test", &[[10, 0, 0, 2], [10, 0, 0, 3]]);
    eventually("the new records", || {
        sorted(balance.endpoints()) == vec![addr("10.0.0.2:8080"), addr("10.0.0.3:8080")]
    })
    .await;

    // DNS outage: queries go unanswered, the set stays.
    zone.down.store(true, Relaxed);
    let before = zone.queries.load(Relaxed);
    eventually("queries during the outage", || {
        zone.queries.load(Relaxed) >= before + 3
    })
    .await;
    assert_eq!(
        sorted(balance.endpoints()),
        vec![addr("10.0.0.2:8080"), addr("10.0.0.3:8080")]
    );
    assert!(balance.clone().oneshot(()).await.is_ok());

    // An answer without records is a failure too: the last good set stays.
    zone.down.store(false, Relaxed);
    zone.set_a("users.test", &[]);
    let before = zone.queries.load(Relaxed);
    eventually("answered queries", || {
        zone.queries.load(Relaxed) >= before + 3
    })
    .await;
    assert_eq!(balance.endpoints().len(), 2);

    // Back: the set follows the server again.
    zone.set_a("users.test", &[[10, 0, 0, 9]]);
    eventually("recovery", || {
        sorted(balance.endpoints()) == vec![addr("10.0.0.9:8080")]
    })
    .await;
}

#[tokio::test]
async fn a_and_aaaa_records_both_become_endpoints() {
    let zone = Zone::default();
    zone.set_a("dual.test", &[[10, 0, 0, 1]]);
    zone.set_aaaa("dual.test", &[Ipv6Addr::LOCALHOST]);
    zone.set_a("v4.test", &[[10, 0, 0, 2]]);
    zone.set_aaaa("v6.test", &["2001:db8::6".parse().unwrap()]);
    let server = zone.serve().await;
    // The default query timeout (2 s): no question goes unanswered here, and a family whose
    // answer is held up past the timeout (a stalled machine) would be left out of the first
    // resolution this test reads whole.
    let discover = |host: &str| {
        Dns::a(host, 80)
            .nameservers([server])
            .min_refresh(Duration::from_millis(50))
            .max_refresh(Duration::from_millis(200))
            .build(make)
            .unwrap()
    };

    // A dual-stack host: every address of both families, in one resolution.
    let mut dual = discover("dual.test.");
    assert_eq!(
        first_resolution(&mut dual).await,
        vec![('+', addr("10.0.0.1:80"), 1), ('+', addr("[::1]:80"), 1),]
    );
    // A host with one family only: an empty answer for the other is no failure.
    let mut v4 = discover("v4.test.");
    assert_eq!(
        first_resolution(&mut v4).await,
        vec![('+', addr("10.0.0.2:80"), 1)]
    );
    let mut v6 = discover("v6.test.");
    assert_eq!(
        first_resolution(&mut v6).await,
        vec![('+', addr("[2001:db8::6]:80"), 1)]
    );

    // Later resolutions find the same addresses: nothing changes.
    let before = zone.asked(RecordType::AAAA);
    eventually("more resolutions", || {
        zone.asked(RecordType::AAAA) >= before + 6
    })
    .await;
    assert_eq!(queued(&mut dual), vec![]);
    assert_eq!(queued(&mut v4), vec![]);
    assert_eq!(queued(&mut v6), vec![]);
}

/// A dual-stack host whose answers of one family (`lost`) stop arriving: each resolution times out
/// on that family, which keeps the addresses it had, so the endpoints of both families stay.
///
/// The timeout is short so the lost family's lookups time out quickly; an answer held up as long
/// (a stalled machine) leaves its family out of the first resolution and to the next one, so the
/// first two changes are read whichever resolutions brought them.
async fn one_lost_family_keeps_both(lost: RecordType) {
    let zone = Zone::default();
    zone.set_a("dual.test", &[[10, 0, 0, 1]]);
    zone.set_aaaa("dual.test", &["fd00::1".parse().unwrap()]);
    let server = zone.serve().await;
    let mut discovery: Discovery<Tagged<SocketAddr>, Endpoint> = Dns::a("dual.test.", 80)
        .nameservers([server])
        .min_refresh(Duration::from_millis(20))
        .max_refresh(Duration::from_millis(50))
        .timeout(Duration::from_millis(100))
        .build(make)
        .unwrap();
    assert_eq!(
        first_changes(&mut discovery, 2).await,
        vec![
            ('+', addr("10.0.0.1:80"), 1),
            ('+', addr("[fd00::1]:80"), 1)
        ]
    );

    zone.silence_type("dual.test", lost, true);
    zone.more_questions(lost, 4).await;
    assert_eq!(queued(&mut discovery), vec![]);

    // The family answers again: the same addresses, nothing to change.
    zone.silence_type("dual.test", lost, false);
    zone.more_questions(lost, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

#[tokio::test]
async fn a_lost_aaaa_answer_keeps_the_ipv6_endpoints() {
    one_lost_family_keeps_both(RecordType::AAAA).await;
}

#[tokio::test]
async fn a_lost_a_answer_keeps_the_ipv4_endpoints() {
    one_lost_family_keeps_both(RecordType::A).await;
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_of_the_lowest_priority() {
    let zone = Zone::default();
    zone.ttl.store(1, Relaxed);
    zone.set_srv(
        "_http._tcp.api.test",
        &[
            (10, 3, 8001, "a.api.test."),
            (10, 1, 8002, "b.api.test."),
            (20, 1, 8003, "backup.api.test."),
        ],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.set_a("backup.api.test", &[[10, 1, 0, 3]]);
    let server = zone.serve().await;
    let discovery = Dns::srv("_http._tcp.api.test.")
        .nameservers([server])
        .min_refresh(Duration::from_millis(50))
        .max_refresh(Duration::from_millis(100))
        .timeout(Duration::from_millis(200))
        .build(make)
        .unwrap();
    let balance = BalanceLayer::builder()
        .picker(Picker::WeightedRoundRobin)
        .build()
        .unwrap()
        .layer(discovery);
    eventually("srv endpoints", || balance.endpoints().len() == 2).await;
    let mut keys = balance.endpoints();
    keys.sort();
    // Tagged keys are equal by address alone: compare the weights too.
    let weighted = |keys: Vec<Tagged<SocketAddr>>| -> Vec<(SocketAddr, u32)> {
        keys.into_iter().map(|k| (k.key, k.weight)).collect()
    };
    assert_eq!(
        weighted(keys),
        vec![(addr("10.1.0.1:8001"), 3), (addr("10.1.0.2:8002"), 1)]
    );
    let counts = count_answers(&balance, 40).await;
    assert_eq!(counts[&addr("10.1.0.1:8001")], 30);
    assert_eq!(counts[&addr("10.1.0.2:8002")], 10);

    // The primary targets disappear: the backup priority takes over.
    zone.set_srv("_http._tcp.api.test", &[(20, 1, 8003, "backup.api.test.")]);
    eventually("backup", || {
        weighted(balance.endpoints()) == vec![(addr("10.1.0.3:8003"), 1)]
    })
    .await;
}

#[tokio::test]
async fn invalid_configuration_is_rejected() {
    let err = Dns::a("x.test", 80)
        .nameservers([addr("127.0.0.1:53")])
        .min_refresh(Duration::from_secs(10))
        .max_refresh(Duration::from_secs(1))
        .build(make)
        .unwrap_err();
    assert_eq!(err.field(), "max_refresh");
    let err = Dns::a("x.test", 80)
        .nameservers([])
        .build(make)
        .unwrap_err();
    assert_eq!(err.field(), "nameservers");
    let err = Dns::a("x.test", 80)
        .nameservers([addr("127.0.0.1:53")])
        .min_refresh(Duration::ZERO)
        .build(make)
        .unwrap_err();
    assert_eq!(err.field(), "min_refresh");
}

/// Discovery resolves on a task of the runtime `build` is called in: outside one, `build`
/// says so rather than panicking, for a name or an address alike.
#[test]
fn building_outside_a_runtime_is_rejected_naming_the_runtime() {
    let server = addr("127.0.0.1:53");
    for dns in [
        Dns::a("users.test.", 80).nameservers([server]),
        Dns::srv("_http._tcp.users.test.").nameservers([server]),
        Dns::a("10.0.0.1", 80),
    ] {
        let err = dns.build(make).map(drop).unwrap_err();
        assert_eq!(err.field(), "runtime", "{err}");
        assert!(err.to_string().contains("Tokio runtime"), "{err}");
    }
}

#[tokio::test]
async fn names_that_can_never_resolve_are_rejected() {
    let server = addr("127.0.0.1:53");
    for host in ["", ".", "a..b.test", "-bad.test", "x.test.."] {
        let err = Dns::a(host, 80)
            .nameservers([server])
            .build(make)
            .map(drop)
            .expect_err(host);
        assert_eq!(err.field(), "host", "{host:?}: {err}");
        let err = Dns::srv(host)
            .nameservers([server])
            .build(make)
            .map(drop)
            .expect_err(host);
        assert_eq!(err.field(), "srv", "{host:?}: {err}");
    }
    for host in ["users.test", "users.test.", "10.0.0.1", "::1", "localhost"] {
        assert!(
            Dns::a(host, 80).nameservers([server]).build(make).is_ok(),
            "{host:?}"
        );
    }
    assert!(Dns::srv("_http._tcp.users.test.")
        .nameservers([server])
        .build(make)
        .is_ok());
}

#[tokio::test]
async fn port_zero_is_rejected_naming_the_field() {
    let server = addr("127.0.0.1:53");
    let err = Dns::a("users.test", 0)
        .nameservers([server])
        .build(make)
        .map(drop)
        .unwrap_err();
    assert_eq!(err.field(), "port", "{err}");
    let err = Dns::a("users.test", 80)
        .nameservers([server, addr("127.0.0.1:0")])
        .build(make)
        .map(drop)
        .unwrap_err();
    assert_eq!(err.field(), "nameservers", "{err}");
    assert!(err.to_string().contains("127.0.0.1:0"), "{err}");
}

#[tokio::test]
async fn names_with_underscores_resolve() {
    // Docker's and Compose's DNS serve service names such as `user_api`; glibc, Go and gRPC
    // resolve them, and so do SRV targets named like that.
    let zone = Zone::default();
    zone.set_a("user_api", &[[10, 0, 0, 1]]);
    zone.set_srv("_http._tcp.api.test", &[(10, 1, 8001, "node_1.api.test.")]);
    zone.set_a("node_1.api.test", &[[10, 1, 0, 1]]);
    let server = zone.serve().await;
    let mut a = Dns::a("user_api", 8080)
        .nameservers([server])
        .build(make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut a).await,
        vec![('+', addr("10.0.0.1:8080"), 1)]
    );
    let mut srv = Dns::srv("_http._tcp.api.test.")
        .nameservers([server])
        .build(make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut srv).await,
        vec![('+', addr("10.1.0.1:8001"), 1)]
    );
}

/// An IP address is its own endpoint: no name server is asked, so none needs to be configured,
/// whether or not the system has a DNS configuration to read.
#[tokio::test(start_paused = true)]
async fn an_address_needs_no_name_server() {
    for (host, endpoint) in [("10.0.0.5", "10.0.0.5:80"), ("::1", "[::1]:80")] {
        let mut discovery = Dns::a(host, 80).build(make).unwrap();
        assert_eq!(
            first_resolution(&mut discovery).await,
            vec![('+', addr(endpoint), 1)]
        );
        tokio::time::sleep(Duration::from_secs(120)).await;
        assert_eq!(queued(&mut discovery), vec![]);
    }
}

/// Given name servers, an address is not asked about either, now or at any later refresh.
#[tokio::test(start_paused = true)]
async fn an_address_is_never_asked_about() {
    let zone = Zone::default();
    let server = zone.serve().await;
    let mut discovery = Dns::a("10.0.0.5", 80)
        .nameservers([server])
        .min_refresh(Duration::from_millis(10))
        .max_refresh(Duration::from_millis(10))
        .build(make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.0.0.5:80"), 1)]
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(zone.queries.load(Relaxed), 0);
    assert_eq!(queued(&mut discovery), vec![]);
}

/// A link-local IPv6 address names its interface with a numeric scope id (`fe80::1%2`): the
/// endpoint keeps it, as connecting to a link-local address needs it. A scope that is not a
/// number (an interface name) is rejected, naming the host.
#[tokio::test(start_paused = true)]
async fn a_scoped_ipv6_address_keeps_its_scope_id() {
    let mut discovery = Dns::a("fe80::1%2", 80).build(make).unwrap();
    let changes = first_resolution(&mut discovery).await;
    assert_eq!(changes, vec![('+', addr("[fe80::1%2]:80"), 1)]);
    match changes[0].1 {
        SocketAddr::V6(v6) => assert_eq!(v6.scope_id(), 2, "{v6}"),
        other => panic!("not an IPv6 endpoint: {other}"),
    }
    assert_eq!(queued(&mut discovery), vec![]);
    for host in ["fe80::1%eth0", "fe80::1%", "10.0.0.1%2", "[fe80::1%2]"] {
        let err = Dns::a(host, 80).build(make).map(drop).expect_err(host);
        assert_eq!(err.field(), "host", "{host:?}: {err}");
    }
}
