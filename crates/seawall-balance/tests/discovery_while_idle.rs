//! Discovery changes are applied by the balancer's own task, with no call driving it.

mod common;

use common::{channel, Behavior, Node};
use seawall::balance::{BalanceLayer, Change, OutlierDetection, Picker};
use std::{sync::Arc, time::Duration};
use tower::{Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn inserts_and_removes_apply_without_calls() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .build()
        .unwrap()
        .layer(stream);
    for id in 0..3usize {
        tx.send(Change::Insert(id, Node::new(id))).unwrap();
    }
    // No call is made: the set follows discovery anyway.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(balance.endpoints(), vec![0, 1, 2]);
    tx.send(Change::Remove(1)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(balance.endpoints(), vec![0, 2]);

    // A clone made before the change sees the new set on its next call.
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..10 {
        seen.insert(balance.clone().oneshot(i).await.unwrap());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 2]);
}

#[tokio::test(start_paused = true)]
async fn replacing_an_endpoint_keeps_one_entry() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .outlier_detection(OutlierDetection::disabled())
        .build()
        .unwrap()
        .layer(stream);
    tx.send(Change::Insert(5usize, Node::new(1))).unwrap();
    tx.send(Change::Insert(5usize, Node::new(2))).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(balance.endpoints(), vec![5]);
    assert_eq!(balance.oneshot(0).await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_background_task_ends_with_the_last_balancer() {
    let (tx, stream) = channel::<usize, Node>();
    let balance = BalanceLayer::builder().build().unwrap().layer(stream);
    let copy = balance.clone();
    drop(balance);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(!tx.is_closed(), "a clone still uses the set");
    drop(copy);
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(
        tx.is_closed(),
        "the discovery stream is dropped with the task"
    );
}

#[tokio::test(start_paused = true)]
async fn balance_new_takes_any_discover() {
    let nodes = (0..3).map(Node::new);
    let balance = seawall::balance::Balance::new(seawall::discover::fixed(nodes.enumerate()));
    let answer = balance.clone().oneshot(1).await.unwrap();
    assert!(answer < 3);
    assert_eq!(balance.endpoints().len(), 3);
    assert_eq!(balance.name().as_str(), "balance");
}

#[tokio::test(start_paused = true)]
async fn discovery_errors_keep_the_set_and_events_report_changes() {
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = events.clone();
    let changes: Vec<Result<Change<usize, Node>, &'static str>> = vec![
        Ok(Change::Insert(0, Node::new(0))),
        Err("registry unreachable"),
        Ok(Change::Insert(1, Node::new(1))),
        Ok(Change::Remove(0)),
        Ok(Change::Remove(7)),
    ];
    let stream = futures_util::stream::iter(changes);
    let balance = BalanceLayer::builder()
        .on_event(
            move |_: &seawall::core::Name, e: &seawall::balance::BalanceEvent| {
                seen.lock().unwrap().push(e.clone())
            },
        )
        .build()
        .unwrap()
        .layer(stream);
    tokio::time::sleep(Duration::from_millis(1)).await;
    // The error is logged and skipped; the stream's end leaves the set in place.
    assert_eq!(balance.endpoints(), vec![1]);
    assert_eq!(balance.clone().oneshot(0).await.unwrap(), 1);
    use seawall::balance::BalanceEvent::*;
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            EndpointAdded { key: "0".into() },
            EndpointAdded { key: "1".into() },
            EndpointRemoved { key: "0".into() },
        ],
        "removing an unknown key is not an event"
    );
}

/// A discovery source that fails at once `errors` times, then inserts endpoint 7 and goes quiet.
struct Failing {
    errors: u32,
    polls: Arc<std::sync::atomic::AtomicU32>,
}

impl futures_util::Stream for Failing {
    type Item = Result<Change<usize, Node>, &'static str>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polls = self
            .polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if polls < self.errors {
            return std::task::Poll::Ready(Some(Err("registry down")));
        }
        if polls == self.errors {
            let node = Node::new(7);
            return std::task::Poll::Ready(Some(Ok(Change::Insert(7, node))));
        }
        std::task::Poll::Pending
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_that_keeps_failing_is_read_again_after_a_growing_pause() {
    let polls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let source = Failing {
        errors: 50_000,
        polls: polls.clone(),
    };
    let balance = BalanceLayer::builder().build().unwrap().layer(source);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let read = polls.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (2..=8).contains(&read),
        "a failing source is not read in a loop: {read} reads in 1 s"
    );
    // The pause stops growing: a source read every few seconds at most.
    tokio::time::sleep(Duration::from_secs(60)).await;
    let read_next = polls.load(std::sync::atomic::Ordering::Relaxed) - read;
    assert!((6..=60).contains(&read_next), "{read_next} reads in 60 s");
    assert!(balance.endpoints().is_empty());

    // A source that recovers is applied after its pause.
    let polls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let source = Failing {
        errors: 3,
        polls: polls.clone(),
    };
    let balance = BalanceLayer::builder().build().unwrap().layer(source);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(balance.endpoints(), vec![7]);
}

#[tokio::test(start_paused = true)]
async fn an_idle_clone_keeps_no_removed_endpoint_alive() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .build()
        .unwrap()
        .layer(stream);
    let gone = Arc::new(Behavior::default());
    let watch = Arc::downgrade(&gone);
    tx.send(Change::Insert(
        0usize,
        Node {
            id: 0,
            behavior: gone,
        },
    ))
    .unwrap();
    tx.send(Change::Insert(1, Node::new(1))).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    // A clone that has made calls, then sits idle while endpoint 0 is removed.
    let mut idle = balance.clone();
    for i in 0..2 {
        (&mut idle).oneshot(i).await.unwrap();
    }
    tx.send(Change::Remove(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(balance.endpoints(), vec![1]);
    assert!(
        watch.upgrade().is_none(),
        "the removed endpoint's service is dropped (a connection closed), idle clones or not"
    );
    // The idle clone picks from the current set when used again.
    assert_eq!(idle.oneshot(0).await.unwrap(), 1);
}

/// A discovery stream that panics (a bug in a registry client) stops being read and is dropped,
/// and the set it built is kept; the balancer's task goes on with outlier detection, so an
/// endpoint ejected after the panic still returns.
#[tokio::test(start_paused = true)]
async fn a_discovery_stream_that_panics_leaves_outlier_detection_running() {
    use futures_util::StreamExt;
    use std::sync::atomic::Ordering::Relaxed;

    let nodes: Vec<Node> = (0..3).map(Node::new).collect();
    let behaviors: Vec<Arc<Behavior>> = nodes.iter().map(|n| n.behavior.clone()).collect();
    let inserts = nodes
        .into_iter()
        .enumerate()
        .map(|(id, node)| Ok::<_, std::convert::Infallible>(Change::Insert(id, node)));
    // What feeds the stream (a registry client's task, say), let go of when the stream is dropped.
    let feed = Arc::new(());
    let held = feed.clone();
    let stream = futures_util::stream::iter(inserts).chain(futures_util::stream::poll_fn(
        move |_| -> std::task::Poll<Option<Result<Change<usize, Node>, std::convert::Infallible>>> {
            let _held = &held;
            panic!("registry client bug")
        },
    ));
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection {
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_secs(10),
            max_ejection_percent: 1.0,
            consecutive_failures: Some(1),
            ..OutlierDetection::disabled()
        })
        .build()
        .unwrap()
        .layer(stream);
    common::settle().await;
    assert_eq!(balance.endpoints(), vec![0, 1, 2]);
    assert_eq!(
        Arc::strong_count(&feed),
        1,
        "the stream that panicked is dropped"
    );

    // Endpoint 0 fails a call and is ejected for 10 s.
    behaviors[0].fail.store(true, Relaxed);
    common::drive(&balance, 3).await;
    assert_eq!(balance.unhealthy(), vec![0]);
    behaviors[0].fail.store(false, Relaxed);

    // Returned at the first pass after its ejection time.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!(balance.unhealthy().is_empty(), "endpoint 0 never returned");
    assert_eq!(balance.endpoints(), vec![0, 1, 2]);
}
