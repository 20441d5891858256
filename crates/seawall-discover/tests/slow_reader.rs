//! A discovery that is not read for a while (tower's balancer reads it only while polled for
//! readiness; a discovery built long before a balancer takes it) holds the latest list, not a
//! queue of every change in between: once read, it sends the differences from the set it sent
//! last to the latest one, and makes a service only for what it inserts. A list that comes while
//! the changes of the one before are being read waits until they are out, and drops those it
//! no longer calls for.
//!
//! The server is on loopback and answers at once, so virtual time only moves on timers.

mod common;

use common::{first_resolution, queued, Seen, Zone};
use futures_util::{FutureExt, StreamExt};
use hickory_proto::rr::RecordType;
use seawall::balance::Tagged;
use seawall::discover::{watch, Change, Discovery, Dns};
use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

const HOST: &str = "users.test";
const FIRST: [[u8; 4]; 2] = [[10, 0, 0, 1], [10, 0, 0, 2]];
const SECOND: [[u8; 4]; 2] = [[10, 0, 0, 3], [10, 0, 0, 4]];

/// A watch discovery of `u32` keys whose service is the key, and how many services it made.
fn counted(
    lists: tokio::sync::watch::Receiver<Vec<u32>>,
) -> (Discovery<u32, u32>, Arc<AtomicUsize>) {
    let made = Arc::new(AtomicUsize::new(0));
    let counted = made.clone();
    let discovery = watch(lists, move |key: &u32| {
        counted.fetch_add(1, Relaxed);
        *key
    });
    (discovery, made)
}

/// The changes left until the stream ends: `+` with the service, `-` with 0.
async fn rest(discovery: &mut Discovery<u32, u32>) -> Vec<(char, u32, u32)> {
    let mut changes = Vec::new();
    while let Some(Ok(change)) = discovery.next().await {
        changes.push(match change {
            Change::Insert(key, service) => ('+', key, service),
            Change::Remove(key) => ('-', key, 0),
        });
    }
    changes
}

fn set(ips: &[[u8; 4]]) -> BTreeSet<SocketAddr> {
    ips.iter().map(|ip| SocketAddr::from((*ip, 80))).collect()
}

/// `endpoints` after `changes`.
fn apply(endpoints: &mut BTreeSet<SocketAddr>, changes: &[Seen]) {
    for (sign, addr, _) in changes {
        match sign {
            '+' => endpoints.insert(*addr),
            _ => endpoints.remove(addr),
        };
    }
}

#[tokio::test(start_paused = true)]
async fn dns_answers_that_come_and_go_unread_leave_only_the_latest_set() {
    let zone = Zone::with_ttl(1);
    zone.set_a(HOST, &FIRST);
    let server = zone.serve().await;
    let made = Arc::new(AtomicUsize::new(0));
    let counted = made.clone();
    let mut discovery = Dns::a(format!("{HOST}."), 80)
        .nameservers([server])
        .min_refresh(Duration::from_secs(1))
        .build(move |key: &Tagged<SocketAddr>| {
            counted.fetch_add(1, Relaxed);
            common::make(key)
        })
        .unwrap();
    let mut endpoints = BTreeSet::new();
    apply(&mut endpoints, &first_resolution(&mut discovery).await);
    assert_eq!(endpoints, set(&FIRST));

    // The answer alternates between two sets, one resolution a second, half a second between
    // the flips and the resolutions; the discovery is not read meanwhile.
    let flipper = {
        let zone = zone.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            for i in 0.. {
                zone.set_a(HOST, if i % 2 == 0 { &SECOND } else { &FIRST });
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(100)).await;
    flipper.abort();
    assert!(zone.asked(RecordType::A) >= 90, "resolutions went on");
    // The last answer: the second set, as a whole resolution has found it.
    zone.set_a(HOST, &SECOND);
    zone.more_questions(RecordType::A, 2).await;

    let changes = queued(&mut discovery);
    assert!(
        changes.len() <= 4,
        "{} changes, from {:?}",
        changes.len(),
        &changes[..8.min(changes.len())]
    );
    apply(&mut endpoints, &changes);
    assert_eq!(endpoints, set(&SECOND), "{changes:?}");
    assert!(
        made.load(Relaxed) <= 4,
        "make called {} times",
        made.load(Relaxed)
    );
    // Inserts before removes, and the stream still open.
    assert_eq!(changes.len(), 4, "{changes:?}");
    assert!(
        changes[..2].iter().all(|(sign, ..)| *sign == '+'),
        "{changes:?}"
    );
    assert!(discovery.next().now_or_never().is_none());
}

#[tokio::test(start_paused = true)]
async fn lists_published_unread_leave_only_the_latest() {
    let (publish, lists) = tokio::sync::watch::channel(vec![1u32, 2]);
    let (mut discovery, made) = counted(lists);
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Insert(1, 1)))
    ));
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Insert(2, 2)))
    ));

    for i in 0..1_000u32 {
        publish.send(vec![i + 10, i + 11]).unwrap();
        tokio::task::yield_now().await;
    }
    publish.send(vec![2, 3]).unwrap();
    drop(publish);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let changes = rest(&mut discovery).await;
    assert!(changes.len() <= 2, "{} changes", changes.len());
    assert_eq!(changes, [('+', 3, 3), ('-', 1, 0)]);
    assert_eq!(made.load(Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn a_list_replaced_while_its_changes_are_read_gives_way_to_the_new_one() {
    let (publish, lists) = tokio::sync::watch::channel(vec![1u32, 2, 3]);
    let (mut discovery, made) = counted(lists);
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Insert(1, 1)))
    ));

    // The list goes away before the reader comes back for the rest of its inserts.
    publish.send(vec![]).unwrap();
    drop(publish);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let changes = rest(&mut discovery).await;
    assert_eq!(changes, [('-', 1, 0)]);
    assert_eq!(made.load(Relaxed), 1, "no service for 2 or 3");
}

#[tokio::test(start_paused = true)]
async fn a_list_replacing_one_half_read_is_compared_with_the_set_sent() {
    let (publish, lists) = tokio::sync::watch::channel(vec![1u32]);
    let mut discovery = watch(lists, |key: &u32| *key);
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Insert(1, 1)))
    ));
    publish.send(vec![2, 3, 4]).unwrap();
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Insert(2, 2)))
    ));

    // Sent: 1 and 2; left of the last list: +3, +4, -1. The new list keeps 3 of the last one,
    // drops 4 and brings 5.
    publish.send(vec![3, 5]).unwrap();
    drop(publish);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let changes = rest(&mut discovery).await;
    // What is left of the last list and the new one still calls for goes out first (no service
    // for 4), then the new list's own changes, against the set sent then (2 and 3): each list's
    // inserts before its removes.
    assert_eq!(
        changes,
        [('+', 3, 3), ('-', 1, 0), ('+', 5, 5), ('-', 2, 0)]
    );
}

#[tokio::test(start_paused = true)]
async fn lists_that_each_change_the_first_key_hold_back_none_of_the_rest() {
    let (publish, lists) = tokio::sync::watch::channel(vec![Tagged::new(0u32), Tagged::new(1)]);
    let mut discovery = watch(lists, |key: &Tagged<u32>| key.key);
    for _ in 0..2 {
        assert!(matches!(
            discovery.next().await,
            Some(Ok(Change::Insert(..)))
        ));
    }

    // Each list gives 0 a new weight (an insert, first in the list) and comes before the reader
    // is past it: the insert of 2 and the remove of 1 still go out.
    let mut changes = Vec::new();
    for i in 0..10u32 {
        let list = vec![Tagged::new(0).with_weight(2 + i % 2), Tagged::new(2)];
        publish.send(list).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        changes.push(match discovery.next().await {
            Some(Ok(Change::Insert(key, _))) => ('+', key.key, key.weight),
            Some(Ok(Change::Remove(key))) => ('-', key.key, key.weight),
            None => panic!("the stream ended"),
        });
    }
    assert_eq!(
        changes[..3],
        [('+', 0, 2), ('+', 2, 1), ('-', 1, 1)],
        "{changes:?}"
    );
    // Then each list's new weight for 0, the one it has when its change is read.
    for (i, change) in (3..).zip(&changes[3..]) {
        assert_eq!(*change, ('+', 0, 2 + i % 2), "{changes:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn changes_a_newer_list_undoes_are_dropped_before_they_go_out() {
    let (publish, lists) =
        tokio::sync::watch::channel(vec![Tagged::new(1u32), Tagged::new(2), Tagged::new(3)]);
    let made = Arc::new(AtomicUsize::new(0));
    let counted = made.clone();
    let mut discovery = watch(lists, move |key: &Tagged<u32>| {
        counted.fetch_add(1, Relaxed);
        key.key
    });
    let mut read = async || match discovery.next().await {
        Some(Ok(Change::Insert(key, _))) => Some(('+', key.key, key.weight)),
        Some(Ok(Change::Remove(key))) => Some(('-', key.key, key.weight)),
        None => None,
    };
    assert_eq!(read().await, Some(('+', 1, 1)));

    // Left: +2 and +3. The new list gives 2 another weight: 2 goes out once, with it.
    publish
        .send(vec![Tagged::new(2).with_weight(5), Tagged::new(3)])
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(read().await, Some(('+', 3, 1)));
    assert_eq!(read().await, Some(('+', 2, 5)));

    // Left: -1. The new list has 1 again: it stays, and needs no new service.
    publish
        .send(vec![
            Tagged::new(1),
            Tagged::new(2).with_weight(5),
            Tagged::new(3),
        ])
        .unwrap();
    drop(publish);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(read().await, None);
    assert_eq!(made.load(Relaxed), 3);
}
