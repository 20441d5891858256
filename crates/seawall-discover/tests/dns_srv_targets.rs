//! SRV discovery when some targets do not resolve: each target is resolved on its own, so one
//! target without addresses, or one whose server does not answer, does not hide the others; a
//! target of "." (RFC 2782: not available) is skipped, and so is a record with port 0; a backup
//! priority serves while no target of a lower one resolves; only when no target resolves is the
//! resolution a failure, which keeps the last set.
//!
//! Sockets are involved, so these tests run in real time with generous, bounded waits.

mod common;

use common::{
    addr, first_changes, first_resolution, next_change, next_two_changes, queued, two_targets, Zone,
};
use hickory_proto::rr::RecordType;
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

#[tokio::test]
async fn a_target_without_addresses_does_not_hide_the_others() {
    let zone = Zone::default();
    zone.set_srv(
        SRV,
        &[
            (10, 1, 8001, "good.api.test."),
            (10, 1, 8002, "gone.api.test."),
        ],
    );
    zone.set_a("good.api.test", &[[10, 1, 0, 1]]); // gone.api.test has no records: NXDOMAIN
    let mut discovery = zone.srv_discovery(SRV).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.1:8001"), 1)]
    );

    // The missing target appears: it joins at a later resolution.
    zone.set_a("gone.api.test", &[[10, 1, 0, 2]]);
    assert_eq!(
        next_change(&mut discovery).await,
        ('+', addr("10.1.0.2:8002"), 1)
    );
    // Its addresses go again (the name still exists, with no A record): it leaves, the other stays.
    zone.set_a("gone.api.test", &[]);
    assert_eq!(
        next_change(&mut discovery).await,
        ('-', addr("10.1.0.2:8002"), 1)
    );
    zone.more_questions(RecordType::A, 6).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

#[tokio::test]
async fn a_dot_target_is_skipped_and_alone_keeps_the_last_set() {
    let zone = Zone::default();
    zone.set_srv(SRV, &[(10, 1, 8001, "a.api.test."), (10, 1, 8002, ".")]);
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    let mut discovery = zone.srv_discovery(SRV).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.1:8001"), 1)]
    );

    // Only "." left: the service says it is not available, an answer without endpoints, which
    // keeps the last set like any failed resolution.
    zone.set_srv(SRV, &[(10, 1, 8001, ".")]);
    zone.more_questions(RecordType::SRV, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

/// Port 0 is no port a client can connect to: such a record is skipped like a "." target.
#[tokio::test]
async fn a_record_with_port_zero_is_skipped() {
    let zone = Zone::default();
    zone.set_srv(
        SRV,
        &[(10, 1, 0, "a.api.test."), (10, 1, 8002, "b.api.test.")],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    let mut discovery = zone.srv_discovery(SRV).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.2:8002"), 1)]
    );

    // Only port 0 left: no endpoint, a failed resolution that keeps the last set.
    zone.set_srv(SRV, &[(10, 1, 0, "a.api.test."), (10, 1, 0, "b.api.test.")]);
    zone.more_questions(RecordType::SRV, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

#[tokio::test]
async fn a_target_whose_server_stops_answering_keeps_its_addresses() {
    let zone = Zone::default();
    two_targets(&zone, SRV);
    // Silenced lookups time out after 300 ms, so a resolution takes 300 ms, not the 2 s default.
    let mut discovery = zone
        .srv_discovery_with_timeout(SRV, Duration::from_millis(300))
        .await;
    assert_eq!(
        first_changes(&mut discovery, 2).await,
        vec![
            ('+', addr("10.1.0.1:8001"), 1),
            ('+', addr("10.1.0.2:8002"), 1)
        ]
    );

    // Questions about b time out: b keeps the addresses it had, a follows its records.
    zone.silence("b.api.test", true);
    zone.more_questions(RecordType::A, 3).await;
    assert_eq!(queued(&mut discovery), vec![]);
    zone.set_a("a.api.test", &[[10, 1, 0, 3]]);
    assert_eq!(
        next_two_changes(&mut discovery).await,
        vec![
            ('+', addr("10.1.0.3:8001"), 1),
            ('-', addr("10.1.0.1:8001"), 1)
        ]
    );

    // b answers again, with no addresses: now it leaves.
    zone.silence("b.api.test", false);
    zone.set_a("b.api.test", &[]);
    assert_eq!(
        next_change(&mut discovery).await,
        ('-', addr("10.1.0.2:8002"), 1)
    );
}

#[tokio::test]
async fn a_target_whose_a_answer_is_lost_keeps_its_addresses() {
    let zone = Zone::default();
    two_targets(&zone, SRV);
    // Silenced lookups time out after 300 ms, so a resolution takes 300 ms, not the 2 s default.
    let mut discovery = zone
        .srv_discovery_with_timeout(SRV, Duration::from_millis(300))
        .await;
    assert_eq!(first_changes(&mut discovery, 2).await.len(), 2);

    // b has no AAAA records, and that empty answer arrives; its A answer does not. Not knowing
    // b's IPv4 addresses is no answer that it has none: b keeps them.
    zone.silence_type("b.api.test", RecordType::A, true);
    zone.more_questions(RecordType::AAAA, 6).await;
    assert_eq!(queued(&mut discovery), vec![]);

    zone.silence_type("b.api.test", RecordType::A, false);
    zone.more_questions(RecordType::A, 4).await;
    assert_eq!(queued(&mut discovery), vec![]);
}

#[tokio::test]
async fn when_no_target_resolves_the_last_set_stays() {
    let zone = Zone::default();
    two_targets(&zone, SRV);
    let mut discovery = zone.srv_discovery(SRV).await;
    assert_eq!(first_resolution(&mut discovery).await.len(), 2);

    // Every target's addresses are gone: a failed resolution, the set stays.
    zone.set_a("a.api.test", &[]);
    zone.set_a("b.api.test", &[]);
    zone.more_questions(RecordType::A, 6).await;
    assert_eq!(queued(&mut discovery), vec![]);

    // One comes back: the set follows the server again.
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    assert_eq!(
        next_change(&mut discovery).await,
        ('-', addr("10.1.0.1:8001"), 1)
    );
    assert_eq!(queued(&mut discovery), vec![]);
}

/// RFC 2782: a client uses the lowest priority it can reach. Primary targets that are listed but
/// have no addresses (or are ".") hand over to the backup priority, and take over again once
/// they resolve.
#[tokio::test]
async fn the_backup_priority_serves_while_no_primary_target_resolves() {
    let zone = Zone::default();
    zone.set_srv(
        SRV,
        &[
            (10, 1, 8001, "primary.api.test."),
            (10, 1, 8002, "."),
            (20, 1, 8003, "backup.api.test."),
        ],
    );
    zone.set_a("backup.api.test", &[[10, 1, 0, 3]]); // primary.api.test: NXDOMAIN
    let mut discovery = zone.srv_discovery(SRV).await;
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.3:8003"), 1)]
    );

    // The primary resolves: it serves, and the backup leaves.
    zone.set_a("primary.api.test", &[[10, 1, 0, 1]]);
    assert_eq!(
        next_two_changes(&mut discovery).await,
        vec![
            ('+', addr("10.1.0.1:8001"), 1),
            ('-', addr("10.1.0.3:8003"), 1)
        ]
    );
}
