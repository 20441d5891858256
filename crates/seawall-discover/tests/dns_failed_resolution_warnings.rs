//! Which lookups warn in resolutions that fail outright. A subscriber set for one thread sees
//! events only once their callsites are registered with it, which other tests running at once on
//! other threads could race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{discover_with_timeout, two_targets, Logged, Zone};
use seawall::discover::Dns;
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

/// SRV targets that never resolve fail every resolution (no target gives an address): each
/// target warns when it starts to fail, once, not again at every retry.
#[tokio::test(start_paused = true)]
async fn targets_that_keep_failing_a_resolution_warn_once() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(60);
    two_targets(&zone, SRV);
    zone.silence("a.api.test", true);
    zone.silence("b.api.test", true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = discover_with_timeout(Dns::srv(format!("{SRV}.")), server);
    // Failed resolutions at 0, 1, 3, 7 and 15 s (the pauses between their starts double from
    // 1 s), each with both targets' questions unanswered.
    tokio::time::sleep_until(start + Duration::from_secs(20)).await;
    assert_eq!(
        warnings.count("seawall discover DNS resolution failed; keeping the last endpoints"),
        5
    );
    assert_eq!(
        warnings.count("seawall discover skipped an SRV target that does not resolve"),
        2,
        "{:#?}",
        warnings.fields()
    );
}
