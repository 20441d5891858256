//! When DNS discovery asks again, in paused time: after the TTL (clamped to `[min_refresh,
//! max_refresh]`) while the server answers, and after `min_refresh` doubling up to `max_refresh`
//! while it does not, each pause counted from the start of a resolution, and each resolution
//! sending one query per record type.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers: the
//! question times are exact.

mod common;

use common::{first_resolution, make, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::{Dns, DnsBuilder};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

fn secs(list: &[u64]) -> Vec<Duration> {
    list.iter().map(|&s| Duration::from_secs(s)).collect()
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_query_is_sent_once_then_retried_with_backoff_until_an_answer() {
    let zone = Zone::with_ttl(5);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.down.store(true, Relaxed);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = Dns::a("users.test.", 80)
        .nameservers([server])
        .min_refresh(Duration::from_secs(1))
        .max_refresh(Duration::from_secs(8))
        .timeout(Duration::from_secs(2))
        .build(make)
        .unwrap();

    // Each resolution: one query, unanswered for the 2 s timeout. The next starts 1, 2, 4, 8, 8 s
    // after the last one started, or as it ends when that is later: at 2 s, then 4 s.
    tokio::time::sleep(Duration::from_secs(39)).await;
    assert_eq!(
        zone.asked_at(RecordType::A, start),
        secs(&[0, 2, 4, 8, 16, 24, 32])
    );

    // The server answers again: the resolution at 40 s succeeds, and the next follow the 5 s TTL.
    zone.down.store(false, Relaxed);
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', common::addr("10.0.0.1:80"), 1)]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(40));
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        zone.asked_at(RecordType::A, start),
        secs(&[0, 2, 4, 8, 16, 24, 32, 40, 45, 50])
    );

    // A failure after a success starts again from min_refresh: 55 s unanswered until 57 s, when
    // the next, due 1 s after 55 s, starts; unanswered until 59 s, when the next, due 2 s after
    // 57 s, starts; the one after is due 4 s later, at 63 s.
    zone.down.store(true, Relaxed);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(
        zone.asked_at(RecordType::A, start)[10..],
        secs(&[55, 57, 59])
    );
}

/// The failure backoff doubles until it reaches `max_refresh`, however many doublings that
/// takes: from 1 ms, a 60 s bound is reached after 17 failures, past 2^15 × 1 ms (32.768 s).
#[tokio::test(start_paused = true)]
async fn the_failure_backoff_doubles_up_to_max_refresh_however_far_off() {
    let zone = Zone::with_ttl(5);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.down.store(true, Relaxed);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = Dns::a("users.test.", 80)
        .nameservers([server])
        .min_refresh(Duration::from_millis(1))
        .max_refresh(Duration::from_secs(60))
        .timeout(Duration::from_millis(1))
        .build(make)
        .unwrap();
    // Each resolution waits out the 1 ms timeout; the pauses between their starts are 1, 2, 4
    // ... 32 768 ms (the 16th failure), then 60 s, where 65 536 ms is cut to max_refresh.
    tokio::time::sleep(Duration::from_secs(190)).await;
    let mut expected: Vec<Duration> = (0..=16)
        .map(|i| Duration::from_millis((1 << i) - 1))
        .collect();
    expected.push(Duration::from_millis(65_535 + 60_000));
    expected.push(Duration::from_millis(65_535 + 120_000));
    assert_eq!(zone.asked_at(RecordType::A, start), expected);
}

/// The pause before the next resolution counts from when one starts, not from when its slowest
/// lookup ends: a resolution that waits out a query's timeout does not put the next one off, and
/// the endpoints are asked about again as their TTL runs out.
#[tokio::test(start_paused = true)]
async fn the_next_resolution_is_timed_from_the_start_of_the_last() {
    let zone = Zone::with_ttl(3);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    zone.silence_type("users.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = Dns::a("users.test.", 80)
        .nameservers([server])
        .min_refresh(Duration::from_secs(3))
        .max_refresh(Duration::from_secs(60))
        .timeout(Duration::from_secs(2))
        .build(make)
        .unwrap();
    // Each resolution waits 2 s for the AAAA answer, and the next starts 3 s after it started.
    assert_eq!(first_resolution(&mut discovery).await.len(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    tokio::time::sleep_until(start + Duration::from_secs(13)).await;
    assert_eq!(zone.asked_at(RecordType::A, start), secs(&[0, 3, 6, 9, 12]));
}

/// The TTL sets the pace within `[min_refresh, max_refresh]`. A TTL with its most significant
/// bit set is read as 0 (RFC 2181, section 8), so it gives `min_refresh`, not `max_refresh`.
#[tokio::test(start_paused = true)]
async fn the_ttl_is_clamped_to_min_and_max_refresh() {
    let cases = [
        (0, 2),
        (1, 2),
        (3, 3),
        (7, 7),
        (100, 10),
        (i32::MAX as u32, 10),
        (1 << 31, 2),
        (u32::MAX, 2),
    ];
    for (ttl, every) in cases {
        let zone = Zone::with_ttl(ttl);
        zone.set_a("users.test", &[[10, 0, 0, 1]]);
        let server = zone.serve().await;
        let start = tokio::time::Instant::now();
        let mut discovery = Dns::a("users.test.", 80)
            .nameservers([server])
            .min_refresh(Duration::from_secs(2))
            .max_refresh(Duration::from_secs(10))
            .build(make)
            .unwrap();
        assert_eq!(first_resolution(&mut discovery).await.len(), 1);
        tokio::time::sleep(Duration::from_secs(31)).await;
        let expected: Vec<Duration> = (0..=31 / every)
            .map(|i| Duration::from_secs(i * every))
            .collect();
        assert_eq!(zone.asked_at(RecordType::A, start), expected, "TTL {ttl}");
    }
}

/// Discovery by `dns` from `zone`, whose records have a TTL of 300 s and in which `alias` is a
/// CNAME of `from` for 2 s: when the alias moves to `to`, its addresses replace `from`'s 2 s on,
/// though `from`'s may be kept for 300.
async fn assert_the_cnames_ttl_bounds_the_refresh(
    zone: Zone,
    dns: DnsBuilder,
    alias: &str,
    [(from, from_addr), (to, to_addr)]: [(&str, &str); 2],
) {
    zone.set_cname(alias, from, 2);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = dns
        .nameservers([server])
        .min_refresh(Duration::from_secs(1))
        .max_refresh(Duration::from_secs(60))
        .build(make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', common::addr(from_addr), 1)]
    );

    zone.set_cname(alias, to, 2);
    assert_eq!(
        common::first_changes(&mut discovery, 2).await,
        vec![
            ('+', common::addr(to_addr), 1),
            ('-', common::addr(from_addr), 1)
        ]
    );
    assert_eq!(start.elapsed(), Duration::from_secs(2));
}

/// A CNAME's TTL counts like its target's records': an alias that may move within 2 s is asked
/// about again after 2 s, though the addresses it leads to may be kept for 300.
#[tokio::test(start_paused = true)]
async fn a_cnames_ttl_bounds_the_refresh() {
    let zone = Zone::with_ttl(300);
    zone.set_a("blue.test", &[[10, 0, 0, 1]]);
    zone.set_a("green.test", &[[10, 0, 0, 2]]);
    assert_the_cnames_ttl_bounds_the_refresh(
        zone,
        Dns::a("users.test.", 80),
        "users.test",
        [("blue.test", "10.0.0.1:80"), ("green.test", "10.0.0.2:80")],
    )
    .await;
}

/// The same for an SRV target that is an alias.
#[tokio::test(start_paused = true)]
async fn an_srv_targets_cname_ttl_bounds_the_refresh() {
    let zone = Zone::with_ttl(300);
    zone.set_srv("_http._tcp.api.test", &[(10, 1, 8001, "users.api.test.")]);
    zone.set_a("blue.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("green.api.test", &[[10, 1, 0, 2]]);
    assert_the_cnames_ttl_bounds_the_refresh(
        zone,
        Dns::srv("_http._tcp.api.test."),
        "users.api.test",
        [
            ("blue.api.test", "10.1.0.1:8001"),
            ("green.api.test", "10.1.0.2:8001"),
        ],
    )
    .await;
}

/// Refresh bounds as long as a `Duration` goes are accepted, and mean "hardly ever again": the
/// next resolution is put off far into the future rather than overflowing the clock, and the
/// discovery keeps running.
#[tokio::test(start_paused = true)]
async fn the_longest_refresh_bounds_put_the_next_resolution_off_without_ending_discovery() {
    let zone = Zone::with_ttl(5);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let mut discovery = Dns::a("users.test.", 80)
        .nameservers([server])
        .min_refresh(Duration::MAX)
        .max_refresh(Duration::MAX)
        .build(make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', common::addr("10.0.0.1:80"), 1)]
    );
    tokio::time::sleep(Duration::from_secs(86_400)).await;
    // No second resolution, and the stream is still open: nothing queued, not ended.
    assert_eq!(zone.asked_at(RecordType::A, start), secs(&[0]));
    assert!(
        futures_util::FutureExt::now_or_never(futures_util::StreamExt::next(&mut discovery))
            .is_none(),
        "the discovery ended or changed"
    );
}
