//! A family that keeps failing through a resolution in which its whole SRV target fails. A
//! subscriber set for one thread sees events only once their callsites are registered with it,
//! which other tests running at once on other threads could race with: this test has its binary
//! to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{discover_with_timeout, two_targets, Logged, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

/// A target whose AAAA questions never get an answer, and whose A answer is lost once, fails
/// wholly in that resolution; its AAAA lookup goes on failing through it, so once A answers
/// again the AAAA failure neither warns again nor starts the backoff over.
#[tokio::test(start_paused = true)]
async fn a_family_failing_through_its_targets_whole_failure_warns_once() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(60);
    two_targets(&zone, SRV);
    zone.silence_type("a.api.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = discover_with_timeout(Dns::srv(format!("{SRV}.")), server);
    // Resolutions at 0, 1, 3, 7 and 15 s, each with a's AAAA question unanswered. At 15 s a's
    // A question goes unanswered too: a keeps its address, and, having started to fail
    // wholly, starts the backoff over. A answers again from 16 s: the pauses go on doubling,
    // to resolutions at 18 and 22 s.
    tokio::time::sleep_until(start + Duration::from_secs(10)).await;
    zone.silence_type("a.api.test", RecordType::A, true);
    tokio::time::sleep_until(start + Duration::from_millis(15_600)).await;
    zone.silence_type("a.api.test", RecordType::A, false);
    tokio::time::sleep_until(start + Duration::from_secs(25)).await;
    assert_eq!(
        warnings.count(
            "seawall discover could not resolve one address family; it has no last addresses to keep"
        ),
        1,
        "{:#?}",
        warnings.fields()
    );
    assert_eq!(
        warnings
            .count("seawall discover could not resolve an SRV target; keeping its last addresses"),
        1
    );
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        [0, 1, 3, 7, 15, 16, 18, 22].map(Duration::from_secs)
    );
}
