//! A failing SRV target whose record turns to port 0 and back. A subscriber set for one thread
//! sees events only once their callsites are registered with it, which other tests running at
//! once on other threads could race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{Logged, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

const NONE_TO_KEEP: &str =
    "seawall discover could not resolve one address family; it has no last addresses to keep";
const PORT_0: &str = "seawall discover skipped an SRV record with port 0";

/// Points `b`'s record at `port`, beside `a`'s, which serves.
fn b_port(zone: &Zone, port: u16) {
    zone.set_srv(
        SRV,
        &[(10, 1, 8001, "a.api.test."), (10, 1, port, "b.api.test.")],
    );
}

/// A target whose AAAA questions go unanswered warns once, though a resolution in between skips
/// its record for port 0 without looking it up: it has not answered since.
#[tokio::test(start_paused = true)]
async fn a_target_skipped_for_port_0_in_between_does_not_warn_again() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(1);
    b_port(&zone, 8002);
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.silence_type("b.api.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = common::discover_with_timeout(
        Dns::srv(format!("{SRV}."))
            .min_refresh(Duration::from_secs(1))
            .max_refresh(Duration::from_secs(1)),
        server,
    );
    // A resolution each second: at 0 s `b`'s AAAA question times out after 500 ms; at 1 s its
    // record has port 0 and it is not looked up; at 2 s its port is back and the AAAA question
    // times out again.
    tokio::time::sleep_until(start + Duration::from_millis(600)).await;
    b_port(&zone, 0);
    tokio::time::sleep_until(start + Duration::from_millis(1_600)).await;
    b_port(&zone, 8002);
    tokio::time::sleep_until(start + Duration::from_millis(2_600)).await;
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        (0..3).map(Duration::from_secs).collect::<Vec<_>>()
    );
    assert_eq!(
        (warnings.count(NONE_TO_KEEP), warnings.count(PORT_0)),
        (1, 1),
        "{:#?}",
        warnings.fields()
    );
}
