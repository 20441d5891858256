//! Which failed lookups warn. A subscriber set for one thread sees events only once their
//! callsites are registered with it, which other tests running at once on other threads could
//! race with: this test has its binary to itself.

mod common;

use common::{make, two_targets, Logged, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

const SRV: &str = "_http._tcp.api.test";

/// A lookup that keeps failing warns once; a different one that starts to fail while it does
/// warns too.
#[tokio::test(start_paused = true)]
async fn each_lookup_that_starts_failing_warns_once() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::default();
    zone.ttl.store(60, Relaxed);
    two_targets(&zone, SRV);
    zone.silence_type("a.api.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = Dns::srv(format!("{SRV}."))
        .nameservers([server])
        .timeout(Duration::from_millis(500))
        .build(make)
        .unwrap();
    // Resolutions at 0, 1, 3 and 7 s (the pauses between their starts double from 1 s), each
    // with a's AAAA question unanswered; from 5 s b's questions go unanswered too, and it keeps
    // its address. b starts to fail at 7 s, which starts the pauses over from 1 s: the next
    // resolutions are at 8, 10, 14 and 22 s.
    tokio::time::sleep_until(start + Duration::from_secs(5)).await;
    zone.silence("b.api.test", true);
    tokio::time::sleep_until(start + Duration::from_secs(25)).await;
    // a has never had an IPv6 address: its warning says there is none to keep.
    assert_eq!(
        warnings.count(
            "seawall discover could not resolve one address family; it has no last addresses to keep"
        ),
        1
    );
    assert_eq!(
        warnings
            .count("seawall discover could not resolve an SRV target; keeping its last addresses"),
        1
    );
    assert_eq!(
        zone.asked(RecordType::SRV),
        8,
        "at 0, 1, 3, 7, 8, 10, 14 and 22 s"
    );
}
