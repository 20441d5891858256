//! Static lists and the watch channel source.

use futures_util::{FutureExt, StreamExt};
use seawall::balance::{EndpointMeta, Tagged};
use seawall::discover::{fixed, from_list, watch, Change, Discovery};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

fn keys<S>(changes: &[Change<u32, S>]) -> Vec<(char, u32)> {
    changes
        .iter()
        .map(|c| match c {
            Change::Insert(k, _) => ('+', *k),
            Change::Remove(k) => ('-', *k),
        })
        .collect()
}

async fn next_n<K, S>(d: &mut Discovery<K, S>, n: usize) -> Vec<Change<K, S>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(d.next().await.unwrap().unwrap());
    }
    out
}

#[tokio::test]
async fn fixed_and_list_insert_once_then_end() {
    let mut d = fixed([(1u32, "a"), (2, "b")]);
    let changes = next_n(&mut d, 2).await;
    assert_eq!(keys(&changes), vec![('+', 1), ('+', 2)]);
    assert!(d.next().await.is_none());

    let mut d = from_list([5u32, 6, 5], |k: &u32| k * 10);
    let changes = next_n(&mut d, 2).await;
    assert_eq!(keys(&changes), vec![('+', 5), ('+', 6)]);
    assert!(matches!(changes[1], Change::Insert(6, 60)));
    assert!(d.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn watch_sends_differences_and_makes_services_for_new_keys() {
    let (tx, rx) = tokio::sync::watch::channel(vec![1u32, 2]);
    let mut d = watch(rx, |k: &u32| format!("svc-{k}"));
    assert_eq!(keys(&next_n(&mut d, 2).await), vec![('+', 1), ('+', 2)]);
    tx.send(vec![2, 3]).unwrap();
    let mut changes = keys(&next_n(&mut d, 2).await);
    changes.sort();
    assert_eq!(changes, vec![('+', 3), ('-', 1)]);
    // Publishing the same list changes nothing.
    tx.send(vec![3, 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    tx.send(vec![3]).unwrap();
    assert_eq!(keys(&next_n(&mut d, 1).await), vec![('-', 2)]);
    // The sender going away ends the stream; a balancer keeps its last set.
    drop(tx);
    assert!(d.next().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn dropping_the_discovery_stops_its_task() {
    let (tx, rx) = tokio::sync::watch::channel(vec![1u32]);
    let d = watch(rx, |k: &u32| *k);
    tokio::time::sleep(Duration::from_millis(1)).await;
    drop(d);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(tx.is_closed(), "the receiver is dropped with the task");
}

/// `watch` spawns the task that follows the channel: outside a runtime there is none to spawn
/// it on, and it says so.
#[test]
#[should_panic(expected = "discover::watch must be called inside a Tokio runtime")]
fn watch_outside_a_runtime_panics_saying_so() {
    let (_tx, rx) = tokio::sync::watch::channel(vec![1u32]);
    drop(watch(rx, |k: &u32| *k));
}

#[test]
fn a_discovery_is_send_sync_and_unpin_whatever_its_services() {
    fn check<T: Send + Sync + Unpin + 'static>() {}
    // A service that is `Send` but neither `Sync` nor `Unpin`.
    type Service = (std::cell::Cell<u32>, std::marker::PhantomPinned);
    check::<seawall::discover::Discovery<u32, Service>>();
}

#[tokio::test(start_paused = true)]
async fn a_key_whose_make_panics_is_left_out_and_tried_with_the_next_list() {
    let (tx, rx) = tokio::sync::watch::channel(vec![1u32, 2]);
    let fail = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let failing = fail.clone();
    let mut d = watch(rx, move |k: &u32| {
        assert!(
            *k != 2 || !failing.load(std::sync::atomic::Ordering::Relaxed),
            "no service for 2"
        );
        *k
    });
    assert_eq!(keys(&next_n(&mut d, 1).await), vec![('+', 1)]);
    tx.send(vec![1, 2, 3]).unwrap();
    assert_eq!(keys(&next_n(&mut d, 1).await), vec![('+', 3)]);
    fail.store(false, std::sync::atomic::Ordering::Relaxed);
    tx.send(vec![2, 3]).unwrap();
    drop(tx);
    assert_eq!(keys(&rest(&mut d).await), vec![('+', 2), ('-', 1)]);
}

/// Every change left once the sender is gone, to the end of the stream.
async fn rest<K, S>(d: &mut Discovery<K, S>) -> Vec<Change<K, S>> {
    let mut out = Vec::new();
    while let Some(change) = d.next().await {
        out.push(change.unwrap());
    }
    out
}

/// The changes the stream yields at once, once the watch task has run.
async fn queued<K, S>(d: &mut Discovery<K, S>) -> Vec<Change<K, S>> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut out = Vec::new();
    while let Some(Some(change)) = d.next().now_or_never() {
        out.push(change.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn a_key_left_out_by_a_panic_is_not_removed_when_it_leaves_the_list() {
    let (tx, rx) = tokio::sync::watch::channel(vec![1u32, 2]);
    let mut d = watch(rx, |k: &u32| {
        assert_ne!(*k, 2, "no service for 2");
        *k
    });
    assert_eq!(keys(&next_n(&mut d, 1).await), vec![('+', 1)]);
    assert_eq!(keys(&queued(&mut d).await), []);
    // 2 was never sent: leaving the list, it has nothing to remove.
    tx.send(vec![1]).unwrap();
    assert_eq!(
        keys(&queued(&mut d).await),
        [],
        "no remove for a key never inserted"
    );
    tx.send(vec![3]).unwrap();
    drop(tx);
    assert_eq!(keys(&rest(&mut d).await), vec![('+', 3), ('-', 1)]);
}

type Meta = (char, u32, u32, Option<String>);

fn metas<S>(changes: &[Change<Tagged<u32>, S>]) -> Vec<Meta> {
    changes
        .iter()
        .map(|c| match c {
            Change::Insert(k, _) => ('+', k.key, k.weight, k.zone.as_deref().map(Into::into)),
            Change::Remove(k) => ('-', k.key, k.weight, k.zone.as_deref().map(Into::into)),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn new_metadata_whose_make_panics_leaves_the_old_and_is_tried_again() {
    let plain = || Tagged::new(7u32);
    let heavy = || Tagged::new(7u32).with_weight(5).with_zone("b");
    let (tx, rx) = tokio::sync::watch::channel(vec![plain()]);
    let fail = Arc::new(AtomicBool::new(false));
    let failing = fail.clone();
    let mut d = watch(rx, move |k: &Tagged<u32>| {
        assert!(!failing.load(Relaxed), "no service for {}", k.key);
        k.weight
    });
    assert_eq!(metas(&next_n(&mut d, 1).await), vec![('+', 7, 1, None)]);

    fail.store(true, Relaxed);
    tx.send(vec![heavy()]).unwrap();
    assert_eq!(metas(&queued(&mut d).await), [], "no service, no change");
    // The endpoint kept the metadata it was sent with: publishing that again changes nothing.
    fail.store(false, Relaxed);
    tx.send(vec![plain()]).unwrap();
    assert_eq!(
        metas(&queued(&mut d).await),
        [],
        "the old metadata is still the one sent"
    );

    // The new metadata is tried again with the next list that has it.
    fail.store(true, Relaxed);
    tx.send(vec![heavy()]).unwrap();
    assert_eq!(metas(&queued(&mut d).await), [], "no service, no change");
    fail.store(false, Relaxed);
    tx.send(vec![heavy()]).unwrap();
    assert_eq!(
        metas(&queued(&mut d).await),
        [('+', 7, 5, Some("b".into()))]
    );
    tx.send(vec![plain()]).unwrap();
    drop(tx);
    assert_eq!(metas(&rest(&mut d).await), vec![('+', 7, 1, None)]);
}

/// A key whose weight cannot be read for 13.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Unweighed(u32);

impl EndpointMeta for Unweighed {
    fn weight(&self) -> u32 {
        assert_ne!(self.0, 13, "no weight for 13");
        1
    }
}

fn ids<S>(changes: &[Change<Unweighed, S>]) -> Vec<(char, u32)> {
    changes
        .iter()
        .map(|c| match c {
            Change::Insert(k, _) => ('+', k.0),
            Change::Remove(k) => ('-', k.0),
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_list_whose_keys_panic_when_compared_is_left_and_the_next_is_read() {
    let (tx, rx) = tokio::sync::watch::channel(vec![Unweighed(13)]);
    let mut d = watch(rx, |k: &Unweighed| k.0);
    // A new key is inserted without reading its weight.
    assert_eq!(ids(&next_n(&mut d, 1).await), vec![('+', 13)]);
    // 13 again is compared by weight with the one sent: the list is left out, whole.
    tx.send(vec![Unweighed(13), Unweighed(1)]).unwrap();
    assert_eq!(ids(&queued(&mut d).await), [], "the list is left out");
    tx.send(vec![Unweighed(1)]).unwrap();
    drop(tx);
    assert_eq!(ids(&rest(&mut d).await), vec![('+', 1), ('-', 13)]);
}

#[tokio::test(start_paused = true)]
async fn a_list_that_panics_only_when_compared_has_dropped_what_it_no_longer_calls_for() {
    let list = |ids: &[u32]| ids.iter().copied().map(Unweighed).collect::<Vec<_>>();
    let (tx, rx) = tokio::sync::watch::channel(list(&[13]));
    let mut d = watch(rx, |k: &Unweighed| k.0);
    assert_eq!(ids(&next_n(&mut d, 1).await), vec![('+', 13)]);
    tx.send(list(&[1, 2])).unwrap();
    assert_eq!(ids(&next_n(&mut d, 1).await), vec![('+', 1)]);
    // Left: +2, -13. A list with 13 and without 2 is looked over without reading a weight: it
    // drops both. Compared with the endpoints sent, 13's weight panics: the list is left out, and
    // the balancer keeps 13 and 1, which no list published has, until the next list.
    tx.send(list(&[13, 3])).unwrap();
    assert_eq!(
        ids(&queued(&mut d).await),
        [],
        "nothing more until the next list"
    );
    assert_eq!(
        format!("{d:?}"),
        "Discovery { endpoints: Some(2), queued: 0, newer_list: false, live: true }"
    );
    tx.send(list(&[1])).unwrap();
    drop(tx);
    assert_eq!(ids(&rest(&mut d).await), vec![('-', 13)]);
}

/// A key that cannot be hashed for 99.
#[derive(Clone, PartialEq, Eq)]
struct Unhashable(u32);

impl std::hash::Hash for Unhashable {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        assert_ne!(self.0, 99, "no hash for 99");
        self.0.hash(state);
    }
}

impl EndpointMeta for Unhashable {}

/// The change the stream yields at once, once the watch task has run: none when it waits, or has
/// ended.
async fn one(d: &mut Discovery<Unhashable, u32>) -> Option<(char, u32)> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    match d.next().now_or_never().flatten()? {
        Ok(Change::Insert(k, _)) => Some(('+', k.0)),
        Ok(Change::Remove(k)) => Some(('-', k.0)),
    }
}

#[tokio::test(start_paused = true)]
async fn a_list_whose_keys_panic_while_changes_are_read_loses_none_of_them() {
    let list = |ids: &[u32]| ids.iter().copied().map(Unhashable).collect::<Vec<_>>();
    let (tx, rx) = tokio::sync::watch::channel(list(&[1, 2, 3, 5, 6]));
    let mut d = watch(rx, |k: &Unhashable| k.0);
    assert_eq!(one(&mut d).await, Some(('+', 1)));
    // Left: +2, +3, +5, +6. A list that cannot be looked over is left out, as if it had not
    // come: the changes left go on.
    tx.send(list(&[99])).unwrap();
    assert_eq!(one(&mut d).await, Some(('+', 2)));
    // A list without 3 and with 4 waits for the changes left; 3 drops out.
    tx.send(list(&[1, 2, 4, 5, 6])).unwrap();
    assert_eq!(one(&mut d).await, Some(('+', 5)));
    // Left: +6, and the list with 4 held aside: both still go through.
    tx.send(list(&[99])).unwrap();
    assert_eq!(one(&mut d).await, Some(('+', 6)));
    drop(tx);
    assert_eq!(one(&mut d).await, Some(('+', 4)));
    assert_eq!(one(&mut d).await, None);
    assert!(d.next().await.is_none(), "the stream ends");
}

#[tokio::test(start_paused = true)]
async fn a_list_whose_new_keys_all_fail_still_removes_the_old_ones() {
    let (tx, rx) = tokio::sync::watch::channel(vec![1u32]);
    let mut d = watch(rx, |k: &u32| {
        assert_ne!(*k, 2, "no service for 2");
        *k
    });
    assert_eq!(keys(&next_n(&mut d, 1).await), vec![('+', 1)]);
    // The whole set turns over and the new key cannot be made: the balancer is left with none.
    tx.send(vec![2]).unwrap();
    assert_eq!(keys(&queued(&mut d).await), [('-', 1)]);
}
