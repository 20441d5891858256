//! A host's address family that fails, answers, then fails again. A subscriber set for one
//! thread sees events only once their callsites are registered with it, which other tests
//! running at once on other threads could race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{Logged, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::time::Duration;

const KEEPING: &str =
    "seawall discover could not resolve one address family; keeping its last addresses";
const NONE_TO_KEEP: &str =
    "seawall discover could not resolve one address family; it has no last addresses to keep";

/// The AAAA questions of a `Dns::a` host go unanswered, then answered, then unanswered again: the
/// family warns each time it starts to fail, as it answered in between.
#[tokio::test(start_paused = true)]
async fn a_family_that_answered_in_between_warns_again() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(1);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.set_aaaa("users.test", &["fd00::1".parse().unwrap()]);
    zone.silence_type("users.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = common::discover_with_timeout(
        Dns::a("users.test.", 80)
            .min_refresh(Duration::from_secs(1))
            .max_refresh(Duration::from_secs(1)),
        server,
    );
    // A resolution each second: at 0 s the AAAA question times out after 500 ms, at 1 s it
    // answers, at 2 s it times out again.
    tokio::time::sleep_until(start + Duration::from_millis(600)).await;
    zone.silence_type("users.test", RecordType::AAAA, false);
    tokio::time::sleep_until(start + Duration::from_millis(1_600)).await;
    zone.silence_type("users.test", RecordType::AAAA, true);
    tokio::time::sleep_until(start + Duration::from_millis(2_600)).await;
    assert_eq!(
        zone.asked_at(RecordType::AAAA, start),
        (0..3).map(Duration::from_secs).collect::<Vec<_>>()
    );
    assert_eq!(
        (warnings.count(NONE_TO_KEEP), warnings.count(KEEPING)),
        (1, 1),
        "{:#?}",
        warnings.fields()
    );
}
