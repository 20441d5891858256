//! A record with port 0 that stays in the SRV answer. A subscriber set for one thread sees
//! events only once their callsites are registered with it, which other tests running at once
//! on other threads could race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{Logged, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

const PORT_0: &str = "seawall discover skipped an SRV record with port 0";

/// A record with port 0 beside one that serves warns the first time it is seen, and logs at
/// debug level while it stays (a TTL of 0 has the name resolved every `min_refresh`).
#[tokio::test(start_paused = true)]
async fn a_record_with_port_0_that_stays_warns_once() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(0);
    zone.set_srv(
        SRV,
        &[(10, 1, 8001, "a.api.test."), (10, 1, 0, "b.api.test.")],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_aaaa("a.api.test", &["fd00::1".parse().unwrap()]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = common::discover_with_timeout(Dns::srv(format!("{SRV}.")), server);
    // Resolutions at 0, 1, 2, 3 and 4 s (`min_refresh` of 1 s).
    tokio::time::sleep_until(start + Duration::from_millis(4_500)).await;
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        (0..5).map(Duration::from_secs).collect::<Vec<_>>()
    );
    assert_eq!(warnings.count(PORT_0), 1, "{:#?}", warnings.fields());
}
