//! What the warning for an address family that goes unanswered says becomes of the family's
//! last addresses: kept, or none to keep. A subscriber set for one thread sees events only once
//! their callsites are registered with it, which other tests running at once on other threads
//! could race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{addr, discover_with_timeout, first_resolution, queued, Logged, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::time::Duration;

const KEEPING: &str =
    "seawall discover could not resolve one address family; keeping its last addresses";
const NONE_TO_KEEP: &str =
    "seawall discover could not resolve one address family; it has no last addresses to keep";

/// A family that has not answered yet has nothing to keep, and its warning says so; one that
/// answered before keeps its addresses, and its warning says that.
#[tokio::test(start_paused = true)]
async fn a_failed_familys_warning_says_whether_it_keeps_addresses() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(60);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.set_aaaa("users.test", &["fd00::1".parse().unwrap()]);
    zone.silence_type("users.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = discover_with_timeout(Dns::a("users.test.", 80), server);
    // At 0 s the AAAA question goes unanswered: there is no IPv6 address to keep.
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.0.0.1:80"), 1)]
    );
    assert_eq!(
        (warnings.count(NONE_TO_KEEP), warnings.count(KEEPING)),
        (1, 0),
        "{:?}",
        warnings.fields()
    );

    // At 1 s (the failure backoff) both families answer; the next resolution is due when the
    // 60 s TTL runs out, and its A question goes unanswered: 10.0.0.1 is kept.
    zone.silence_type("users.test", RecordType::AAAA, false);
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("[fd00::1]:80"), 1)]
    );
    zone.silence_type("users.test", RecordType::A, true);
    tokio::time::sleep_until(start + Duration::from_millis(61_600)).await;
    assert_eq!(zone.asked(RecordType::A), 3, "at 0, 1 and 61 s");
    assert_eq!(queued(&mut discovery), vec![]);
    assert_eq!(
        (warnings.count(NONE_TO_KEEP), warnings.count(KEEPING)),
        (1, 1),
        "{:?}",
        warnings.fields()
    );
}
