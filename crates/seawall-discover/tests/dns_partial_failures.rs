//! A resolution that succeeds only in part: some lookup went unanswered (a timeout, a server
//! failure), and the endpoints stand on the other answers and on what the failed lookups gave
//! last time. It is published, yet counted as a failed resolution, and the next one follows the
//! failure backoff rather than waiting out the TTL, so what the lost answer would have said
//! arrives soon.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{addr, first_resolution, make, queued, two_targets, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use seawall_core::metrics::{testing::TestRecorder, DISCOVER_DNS_ERRORS};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

const SRV: &str = "_http._tcp.api.test";

/// A target whose lookup times out, with no addresses from before, is left out; the others are
/// published. It is tried again after `min_refresh`, not after the 60 s TTL.
#[tokio::test(start_paused = true)]
async fn a_target_left_out_for_a_timeout_is_tried_again_soon() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let zone = Zone::default();
    zone.ttl.store(60, Relaxed);
    two_targets(&zone, SRV);
    zone.silence("b.api.test", true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = Dns::srv(format!("{SRV}."))
        .nameservers([server])
        .timeout(Duration::from_millis(500))
        .name("users")
        .build(make)
        .unwrap();
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
    let zone = Zone::default();
    zone.ttl.store(60, Relaxed);
    two_targets(&zone, SRV);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = Dns::srv(format!("{SRV}."))
        .nameservers([server])
        .timeout(Duration::from_millis(500))
        .name("users")
        .build(make)
        .unwrap();
    assert_eq!(first_resolution(&mut discovery).await.len(), 2);

    // At 60 s each target's lookup times out in turn, and both keep their addresses. That
    // resolution ends at 61 s and the next follows 1 s later, at 62 s; it ends at 63 s and the
    // next follows 2 s later, at 65 s.
    zone.silence("a.api.test", true);
    zone.silence("b.api.test", true);
    tokio::time::sleep_until(start + Duration::from_millis(65_100)).await;
    assert_eq!(queued(&mut discovery), vec![]);
    assert_eq!(recorder.counter(DISCOVER_DNS_ERRORS, "users"), 2);
    let ms = |list: &[u64]| -> Vec<Duration> {
        list.iter().map(|&ms| Duration::from_millis(ms)).collect()
    };
    assert_eq!(
        zone.asked_at(RecordType::SRV, start),
        ms(&[0, 60_000, 62_000, 65_000])
    );
}
