//! A failing lookup of an SRV target that the answer takes turns listing. A subscriber set for
//! one thread sees events only once their callsites are registered with it, which other tests
//! running at once on other threads could race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{Logged, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

/// An answer that lists `a` and `b` in turn (some of many records at a time, as Route 53
/// multivalue answers give), neither of which ever answers AAAA questions: each warns once,
/// though every resolution leaves the other out.
#[tokio::test(start_paused = true)]
async fn a_target_failing_each_time_the_answer_lists_it_warns_once() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(1);
    zone.set_srv(SRV, &[(10, 1, 8001, "a.api.test.")]);
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.silence_type("a.api.test", RecordType::AAAA, true);
    zone.silence_type("b.api.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = common::discover_with_timeout(
        Dns::srv(format!("{SRV}."))
            .min_refresh(Duration::from_secs(1))
            .max_refresh(Duration::from_secs(1)),
        server,
    );
    // A resolution each second, its AAAA question timing out after 500 ms; at 600 ms into each,
    // the answer the next one gets turns to the other target.
    for i in 0..10u64 {
        tokio::time::sleep_until(start + Duration::from_millis(i * 1000 + 600)).await;
        let next = if i % 2 == 0 {
            "b.api.test."
        } else {
            "a.api.test."
        };
        zone.set_srv(SRV, &[(10, 1, 8001, next)]);
    }
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        (0..10).map(Duration::from_secs).collect::<Vec<_>>()
    );
    assert_eq!(
        warnings.count(
            "seawall discover could not resolve one address family; it has no last addresses to keep"
        ),
        2,
        "{:#?}",
        warnings.fields()
    );
}
