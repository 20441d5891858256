//! A failing lookup of a backup SRV target, which resolutions look up only while the primary
//! target does not resolve. A subscriber set for one thread sees events only once their
//! callsites are registered with it, which other tests running at once on other threads could
//! race with: this test has its binary to itself.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{Logged, Zone};
use hickory_proto::{op::ResponseCode, rr::RecordType};
use seawall::discover::Dns;
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

const FAMILY_FAILED: [&str; 2] = [
    "seawall discover could not resolve one address family; keeping its last addresses",
    "seawall discover could not resolve one address family; it has no last addresses to keep",
];

/// The family warnings logged so far (only the backup's AAAA questions go unanswered).
fn family_warnings(warnings: &Logged) -> usize {
    FAMILY_FAILED.iter().map(|m| warnings.count(m)).sum()
}

/// Offsets from the start, in whole seconds.
fn secs(secs: &[u64]) -> Vec<Duration> {
    secs.iter().copied().map(Duration::from_secs).collect()
}

/// Has the primary target `p` answer NXDOMAIN (the resolution falls back to `b`), or serve.
fn primary_absent(zone: &Zone, absent: bool) {
    let code = absent.then_some(ResponseCode::NXDomain);
    zone.respond_with("p.api.test", RecordType::A, code);
    zone.respond_with("p.api.test", RecordType::AAAA, code);
}

/// A backup target whose AAAA questions go unanswered warns the first time it is looked up, not
/// again when it is looked up at the next outage of the primary after resolutions that left it
/// alone; once it has answered in between, it warns again.
#[tokio::test(start_paused = true)]
async fn a_backup_target_warns_again_only_once_it_answered() {
    let warnings = Logged::at(tracing::Level::WARN);
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::with_ttl(1);
    zone.set_srv(
        SRV,
        &[(10, 1, 8001, "p.api.test."), (20, 1, 8002, "b.api.test.")],
    );
    zone.set_a("p.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.set_aaaa("b.api.test", &["fd00::2".parse().unwrap()]);
    zone.silence_type("b.api.test", RecordType::AAAA, true);
    primary_absent(&zone, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = common::discover_with_timeout(
        Dns::srv(format!("{SRV}."))
            .min_refresh(Duration::from_secs(1))
            .max_refresh(Duration::from_secs(1)),
        server,
    );
    // A resolution each second, each done by 500 ms into it (`b`'s AAAA question times out);
    // the zone changes 600 ms in. At 0 and 1 s the primary is absent and `b` is looked up; at
    // 2 and 3 s the primary serves and `b` is left alone; at 4 s the primary is absent again.
    tokio::time::sleep_until(start + Duration::from_millis(1_600)).await;
    primary_absent(&zone, false);
    tokio::time::sleep_until(start + Duration::from_millis(3_600)).await;
    primary_absent(&zone, true);
    tokio::time::sleep_until(start + Duration::from_millis(4_600)).await;
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        secs(&[0, 1, 2, 3, 4])
    );
    assert_eq!(
        zone.asked_at(RecordType::AAAA, start),
        secs(&[0, 0, 1, 1, 2, 3, 4, 4]),
        "`p` at each resolution, `b` at 0, 1 and 4 s"
    );
    assert_eq!(family_warnings(&warnings), 1, "{:#?}", warnings.fields());

    // At 5 s `b`'s AAAA question answers; at 6 s it times out again, and warns.
    zone.silence_type("b.api.test", RecordType::AAAA, false);
    tokio::time::sleep_until(start + Duration::from_millis(5_600)).await;
    zone.silence_type("b.api.test", RecordType::AAAA, true);
    tokio::time::sleep_until(start + Duration::from_millis(6_600)).await;
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        secs(&[0, 1, 2, 3, 4, 5, 6])
    );
    assert_eq!(
        zone.asked_at(RecordType::AAAA, start)[8..],
        secs(&[5, 5, 6, 6])
    );
    assert_eq!(family_warnings(&warnings), 2, "{:#?}", warnings.fields());
}
