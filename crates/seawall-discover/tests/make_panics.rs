//! A `make` that panics for an endpoint: that endpoint is left out, with an error logged naming
//! it, and discovery goes on: the other endpoints of the list are sent, later lists too, and the
//! endpoint is tried again with each. A subscriber set for one thread sees events only once their
//! callsites are registered with it, which other tests running at once on other threads could
//! race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{addr, first_resolution, next_change, queued, Endpoint, Logged, Zone};
use futures_util::{FutureExt, StreamExt};
use hickory_proto::rr::RecordType;
use seawall::balance::Tagged;
use seawall::discover::Dns;
use std::{
    net::{Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

const HOST: &str = "users.test";

#[tokio::test(start_paused = true)]
async fn a_panic_in_make_leaves_its_endpoint_out_and_discovery_goes_on() {
    let errors = Logged::at(tracing::Level::ERROR);
    let _subscriber = tracing::subscriber::set_default(errors.clone());
    // The panics are expected: keep the default hook from printing them, and only them.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if info.payload().downcast_ref::<&str>() != Some(&"no IPv6 here") {
            hook(info);
        }
    }));

    let v6 = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1);
    let zone = Zone::with_ttl(1);
    zone.set_a(HOST, &[[10, 0, 0, 1]]);
    zone.set_aaaa(HOST, &[v6]);
    let server = zone.serve().await;
    let v6_panics = Arc::new(AtomicBool::new(true));
    let panics = v6_panics.clone();
    let mut discovery = Dns::a(format!("{HOST}."), 80)
        .nameservers([server])
        .min_refresh(Duration::from_secs(1))
        .build(move |key: &Tagged<SocketAddr>| -> Endpoint {
            if key.key.is_ipv6() && panics.load(Relaxed) {
                panic!("no IPv6 here");
            }
            common::make(key)
        })
        .unwrap();

    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.0.0.1:80"), 1)]
    );
    let logged = errors.fields();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("endpoint=[fd00::1]:80"), "{logged:?}");
    assert!(logged[0].contains("panic=no IPv6 here"), "{logged:?}");

    // The IPv4 set changes: the stream follows, the IPv6 address still left out.
    zone.set_a(HOST, &[[10, 0, 0, 2]]);
    let mut changes = vec![next_change(&mut discovery).await];
    changes.extend(queued(&mut discovery));
    assert_eq!(
        changes,
        vec![('+', addr("10.0.0.2:80"), 1), ('-', addr("10.0.0.1:80"), 1)]
    );
    assert!(errors.fields().len() >= 2, "tried again");
    assert!(discovery.next().now_or_never().is_none(), "still open");

    // Once `make` serves it, the next resolution inserts the IPv6 address.
    v6_panics.store(false, Relaxed);
    zone.more_questions(RecordType::AAAA, 1).await;
    assert_eq!(
        next_change(&mut discovery).await,
        ('+', addr("[fd00::1]:80"), 1)
    );
}
