//! A resolution that succeeds only in part: some lookup went unanswered (a timeout, a server
//! failure), and the endpoints stand on the other answers and on what the failed lookups gave
//! last time. It is published, yet counted as a failed resolution, and the next one follows the
//! failure backoff rather than waiting out the TTL, so what the lost answer would have said
//! arrives soon.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{
    addr, discover_with_timeout, first_changes, first_resolution, make, queued, seen, two_targets,
    Zone,
};
use futures_util::StreamExt;
use hickory_proto::{op::ResponseCode, rr::RecordType};
use seawall::discover::Dns;
use seawall_core::metrics::{testing::TestRecorder, DISCOVER_DNS_ERRORS};
use std::time::Duration;

const SRV: &str = "_http._tcp.api.test";

/// A target whose lookup times out, with no addresses from before, is left out; the others are
/// published. It is tried again after `min_refresh`, not after the 60 s TTL.
#[tokio::test(start_paused = true)]
async fn a_target_left_out_for_a_timeout_is_tried_again_soon() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let zone = Zone::with_ttl(60);
    two_targets(&zone, SRV);
    zone.silence("b.api.test", true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = discover_with_timeout(Dns::srv(format!("{SRV}.")).name("users"), server);
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.1:8001"), 1)]
    );
    assert_eq!(recorder.counter(DISCOVER_DNS_ERRORS, "users"), 1);

    zone.silence("b.api.test", false);
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.1.0.2:8002"), 1)]
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(recorder.counter(DISCOVER_DNS_ERRORS, "users"), 1);

    // Every answer arrives again: the TTL sets the pace once more.
    let asked = zone.asked(RecordType::SRV);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(zone.asked(RecordType::SRV), asked);
    assert_eq!(queued(&mut discovery), vec![]);
}

/// Targets whose lookups all time out keep their addresses, so the set stays as it was; the
/// resolution still counts as failed, and the next follows the backoff.
#[tokio::test(start_paused = true)]
async fn targets_that_keep_their_addresses_through_timeouts_count_as_a_failure() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let zone = Zone::with_ttl(60);
    two_targets(&zone, SRV);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = discover_with_timeout(Dns::srv(format!("{SRV}.")).name("users"), server);
    assert_eq!(first_resolution(&mut discovery).await.len(), 2);

    // At 60 s both targets' lookups time out, together, and both keep their addresses. The next
    // resolution starts 1 s after that one started, at 61 s, and the one after 2 s later, at
    // 63 s; the next is due at 67 s.
    zone.silence("a.api.test", true);
    zone.silence("b.api.test", true);
    tokio::time::sleep_until(start + Duration::from_millis(65_100)).await;
    assert_eq!(queued(&mut discovery), vec![]);
    assert_eq!(recorder.counter(DISCOVER_DNS_ERRORS, "users"), 3);
    let ms = |list: &[u64]| -> Vec<Duration> {
        list.iter().map(|&ms| Duration::from_millis(ms)).collect()
    };
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        ms(&[0, 60_000, 61_000, 63_000])
    );
}

/// A host whose AAAA questions go unanswered, and never were: its IPv4 addresses are published,
/// and its IPv6 ones join soon after the server answers for them.
#[tokio::test(start_paused = true)]
async fn a_family_that_never_answered_leaves_the_other_published() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let zone = Zone::with_ttl(60);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.set_aaaa("users.test", &["fd00::1".parse().unwrap()]);
    zone.silence_type("users.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = discover_with_timeout(Dns::a("users.test.", 80).name("users"), server);
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.0.0.1:80"), 1)]
    );
    assert_eq!(recorder.counter(DISCOVER_DNS_ERRORS, "users"), 1);

    zone.silence_type("users.test", RecordType::AAAA, false);
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("[fd00::1]:80"), 1)]
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

/// A server that refuses AAAA questions (some forwarders and middleboxes do) does not keep an
/// IPv4-only host from being discovered, directly or as an SRV target.
#[tokio::test(start_paused = true)]
async fn a_refused_family_leaves_the_other_published() {
    let zone = Zone::default();
    zone.set_a("v4only.test", &[[10, 0, 0, 1]]);
    zone.respond_with("v4only.test", RecordType::AAAA, Some(ResponseCode::Refused));
    zone.set_srv(SRV, &[(10, 1, 8001, "v4only.test.")]);
    let server = zone.serve().await;
    let mut a = Dns::a("v4only.test.", 80)
        .nameservers([server])
        .build(make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut a).await,
        vec![('+', addr("10.0.0.1:80"), 1)]
    );
    let mut srv = Dns::srv(format!("{SRV}."))
        .nameservers([server])
        .build(make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut srv).await,
        vec![('+', addr("10.0.0.1:8001"), 1)]
    );
}

/// A family that fails after it answered keeps the addresses it gave, while the other family
/// follows its answers; when both fail, the resolution fails and the set stays.
#[tokio::test(start_paused = true)]
async fn a_failed_family_keeps_its_last_addresses_while_the_other_follows_the_server() {
    let zone = Zone::with_ttl(2);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.set_aaaa("users.test", &["fd00::1".parse().unwrap()]);
    let server = zone.serve().await;
    let mut discovery = discover_with_timeout(Dns::a("users.test.", 80), server);
    assert_eq!(first_resolution(&mut discovery).await.len(), 2);

    zone.respond_with("users.test", RecordType::AAAA, Some(ResponseCode::ServFail));
    zone.set_a("users.test", &[[10, 0, 0, 2]]);
    assert_eq!(
        first_changes(&mut discovery, 2).await,
        vec![('+', addr("10.0.0.2:80"), 1), ('-', addr("10.0.0.1:80"), 1)]
    );

    zone.silence_type("users.test", RecordType::A, true);
    let asked = zone.asked(RecordType::A);
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(zone.asked(RecordType::A) >= asked + 3);
    assert_eq!(queued(&mut discovery), vec![]);
}

/// Resolutions that keep failing in part (AAAA questions never answered) back off on their own
/// count: a resolution that then fails outright is retried after `min_refresh`, as the first
/// failure in a row is, not after the long pause the partial failures had reached.
#[tokio::test(start_paused = true)]
async fn a_lasting_partial_failure_does_not_slow_the_retry_of_a_failed_resolution() {
    let zone = Zone::with_ttl(60);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.silence_type("users.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = discover_with_timeout(Dns::a("users.test.", 80), server);
    assert_eq!(first_resolution(&mut discovery).await.len(), 1);

    // Each resolution takes 0.5 s (the AAAA timeout) and the pauses between their starts double
    // from 1 s: they start at 0, 1, 3, 7, 15, 31 and 63 s. The one at 63 s gets no answer at all:
    // the next starts 1 s after it, and the one after 2 s later.
    tokio::time::sleep_until(start + Duration::from_secs(40)).await;
    zone.silence("users.test", true);
    tokio::time::sleep_until(start + Duration::from_secs(68)).await;
    let asked = zone.asked_at(RecordType::A, start);
    assert_eq!(
        asked[asked.len() - 3..],
        [
            Duration::from_secs(63),
            Duration::from_secs(64),
            Duration::from_secs(66)
        ],
        "{asked:?}"
    );
    assert_eq!(queued(&mut discovery), vec![]);
}

/// A target whose IPv6 address is gone (the server says it has no AAAA records) while its A
/// question goes unanswered keeps only the IPv4 addresses it had, here none: the server's answer
/// about IPv6 stands.
#[tokio::test(start_paused = true)]
async fn a_target_keeps_only_the_failed_familys_last_addresses() {
    let zone = Zone::with_ttl(2);
    zone.set_srv(
        SRV,
        &[(10, 1, 8001, "a.api.test."), (10, 1, 8002, "b.api.test.")],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_aaaa("b.api.test", &["fd00::2".parse().unwrap()]);
    let server = zone.serve().await;
    let mut discovery = discover_with_timeout(Dns::srv(format!("{SRV}.")), server);
    assert_eq!(first_resolution(&mut discovery).await.len(), 2);

    zone.set_aaaa("b.api.test", &[]);
    zone.silence_type("b.api.test", RecordType::A, true);
    assert_eq!(
        first_changes(&mut discovery, 1).await,
        vec![('-', addr("[fd00::2]:8002"), 1)]
    );
}

/// A lookup that starts to fail while another has long been failing in part (AAAA questions
/// never answered) is asked again after `min_refresh`, as the first partial failure is, not
/// after the long pause that the lasting one had reached.
#[tokio::test(start_paused = true)]
async fn a_lookup_that_starts_failing_during_a_lasting_partial_failure_is_retried_soon() {
    let zone = Zone::with_ttl(300);
    two_targets(&zone, SRV);
    zone.silence_type("a.api.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = discover_with_timeout(
        Dns::srv(format!("{SRV}."))
            .min_refresh(Duration::from_secs(1))
            .max_refresh(Duration::from_secs(60)),
        server,
    );
    assert_eq!(
        first_changes(&mut discovery, 2).await,
        vec![
            ('+', addr("10.1.0.1:8001"), 1),
            ('+', addr("10.1.0.2:8002"), 1)
        ]
    );

    // By 130 s the pauses between resolutions, each failed in part, have reached `max_refresh`.
    // A target c joins, its first A question unanswered.
    tokio::time::sleep_until(start + Duration::from_secs(130)).await;
    zone.set_srv(
        SRV,
        &[
            (10, 1, 8001, "a.api.test."),
            (10, 1, 8002, "b.api.test."),
            (10, 1, 8003, "c.api.test."),
        ],
    );
    zone.set_a("c.api.test", &[[10, 1, 0, 3]]);
    zone.silence_type("c.api.test", RecordType::A, true);
    // The next resolution asks a, b and c their A questions together.
    let before = zone.asked(RecordType::A);
    for _ in 0..1_000 {
        if zone.asked(RecordType::A) >= before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        zone.asked(RecordType::A) >= before + 3,
        "no resolution asked about c"
    );
    let asked = tokio::time::Instant::now();
    zone.silence_type("c.api.test", RecordType::A, false);
    assert_eq!(queued(&mut discovery), vec![]);

    let change = tokio::time::timeout_at(asked + Duration::from_secs(3), discovery.next())
        .await
        .unwrap_or_else(|_| panic!("c was not asked about again within 3 s"));
    match change {
        Some(Ok(change)) => assert_eq!(seen(&change), ('+', addr("10.1.0.3:8003"), 1)),
        _ => panic!("the discovery ended"),
    }
}

/// Points the SRV records of [`SRV`] at `a.api.test.`, `b.api.test.` and `c.api.test.` (10.1.0.1
/// to 10.1.0.3, ports 8001 to 8003), each with an A record alone; c's AAAA questions go
/// unanswered, so every resolution fails in part.
fn three_targets_one_half_unanswered(zone: &Zone) {
    zone.set_srv(
        SRV,
        &[
            (10, 1, 8001, "a.api.test."),
            (10, 1, 8002, "b.api.test."),
            (10, 1, 8003, "c.api.test."),
        ],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.set_a("c.api.test", &[[10, 1, 0, 3]]);
    zone.silence_type("c.api.test", RecordType::AAAA, true);
}

/// Lookups that fail by turns (a server losing questions at random) while resolutions keep
/// failing in part start the backoff over once each, the first time each fails, not at every
/// resolution in which one fails that answered at the one before: the pauses still climb to
/// `max_refresh`. Here a and b fail in alternate resolutions, beside c's AAAA question that
/// never gets an answer.
#[tokio::test(start_paused = true)]
async fn lookups_failing_by_turns_start_the_backoff_over_once_each() {
    let zone = Zone::with_ttl(300);
    three_targets_one_half_unanswered(&zone);
    let mut a_silent = true;
    zone.silence("a.api.test", a_silent);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = discover_with_timeout(
        Dns::srv(format!("{SRV}."))
            .min_refresh(Duration::from_secs(1))
            .max_refresh(Duration::from_secs(60)),
        server,
    );
    // 600 ms after each SRV question, once its resolution has timed out on the silenced
    // target's questions, the other target is silenced instead.
    let mut handled = 0;
    while start.elapsed() < Duration::from_secs(60) {
        let asked = zone.asked_at(RecordType::SRV, start);
        if asked.len() == handled {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        handled = asked.len();
        tokio::time::sleep_until(start + asked[handled - 1] + Duration::from_millis(600)).await;
        a_silent = !a_silent;
        zone.silence("a.api.test", a_silent);
        zone.silence("b.api.test", !a_silent);
    }
    // Resolutions at 0 s (a and c's AAAA fail), 1 s (b starts to fail: over from 1 s), then
    // at 2, 4, 8, 16 and 32 s.
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        [0, 1, 2, 4, 8, 16, 32].map(Duration::from_secs)
    );
}

/// An SRV target the server said did not exist, whose questions then go unanswered while
/// resolutions keep failing in part, starts the backoff over: it had not failed without an
/// answer before.
#[tokio::test(start_paused = true)]
async fn a_target_that_did_not_exist_and_then_goes_unanswered_starts_the_backoff_over() {
    let zone = Zone::with_ttl(300);
    three_targets_one_half_unanswered(&zone);
    for ty in [RecordType::A, RecordType::AAAA] {
        zone.respond_with("b.api.test", ty, Some(ResponseCode::NXDomain));
    }
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = discover_with_timeout(Dns::srv(format!("{SRV}.")), server);
    // Resolutions at 0, 1, 3, 7 and 15 s, each failing in part on c's AAAA question, with b
    // left out as the server says it does not exist; from 20 s b's questions go unanswered.
    // The resolution at 31 s starts the backoff over: the next is at 32 s, then 34 s.
    tokio::time::sleep_until(start + Duration::from_secs(20)).await;
    for ty in [RecordType::A, RecordType::AAAA] {
        zone.respond_with("b.api.test", ty, None);
    }
    zone.silence("b.api.test", true);
    tokio::time::sleep_until(start + Duration::from_secs(35)).await;
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        [0, 1, 3, 7, 15, 31, 32, 34].map(Duration::from_secs)
    );
}

/// An SRV target whose questions went unanswered, that the server then says does not exist
/// (left out, yet still a target of the answer), does not start the backoff over when its
/// questions go unanswered again while resolutions keep failing in part: it failed so in the
/// streak already.
#[tokio::test(start_paused = true)]
async fn a_target_left_out_between_two_unanswered_lookups_does_not_start_the_backoff_over() {
    let zone = Zone::with_ttl(300);
    three_targets_one_half_unanswered(&zone);
    zone.silence("b.api.test", true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = discover_with_timeout(Dns::srv(format!("{SRV}.")), server);
    // Resolutions at 0, 1, 3, 7, 15 and 31 s, each failing in part on c's AAAA question. b's
    // questions go unanswered at 0 and 1 s; from 2 s the server says b does not exist, and
    // from 10 s its questions go unanswered again.
    tokio::time::sleep_until(start + Duration::from_secs(2)).await;
    zone.silence("b.api.test", false);
    for ty in [RecordType::A, RecordType::AAAA] {
        zone.respond_with("b.api.test", ty, Some(ResponseCode::NXDomain));
    }
    tokio::time::sleep_until(start + Duration::from_secs(10)).await;
    for ty in [RecordType::A, RecordType::AAAA] {
        zone.respond_with("b.api.test", ty, None);
    }
    zone.silence("b.api.test", true);
    tokio::time::sleep_until(start + Duration::from_secs(40)).await;
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        [0, 1, 3, 7, 15, 31].map(Duration::from_secs)
    );
}
