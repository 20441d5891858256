//! A discovery error or stream whose `Drop` panics is logged with what the balancer's task was
//! doing, and the task goes on. Alone in its file, with only tests that set a capturing
//! subscriber: `tracing` caches whether a callsite is enabled, and an event emitted on another
//! test's thread with no subscriber could leave this file's subscriber deaf to it.

mod common;

use common::{drive_until_unhealthy, eject_at_once, Node};
use seawall::balance::{BalanceLayer, Change, Picker};
use std::{
    fmt,
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};
use tower::Layer;

/// The line of a panic the balancer's task caught in the user's code.
const CAUGHT: &str = "seawall balance caught a panic in an endpoint's key or service; going on";

/// The `doing` of each [`CAUGHT`] line logged on the thread that set it as its subscriber.
#[derive(Clone, Default)]
struct Caught(Arc<Mutex<Vec<String>>>);

impl Caught {
    fn doing(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// An event's fields, `(name, value)`, as `Debug` renders them.
struct Fields(Vec<(String, String)>);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl tracing::Subscriber for Caught {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Fields(Vec::new());
        event.record(&mut fields);
        let field = |name: &str| {
            let mut values = fields.0.iter().filter(|(n, _)| n == name);
            values.next().map(|(_, v)| v.clone())
        };
        if field("message").as_deref() == Some(CAUGHT) {
            self.0.lock().unwrap().extend(field("doing"));
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// A value whose `Drop` panics, unless it is dropped while unwinding.
struct Unfreeable;

impl Drop for Unfreeable {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            panic!("cannot be dropped");
        }
    }
}

impl fmt::Display for Unfreeable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("down")
    }
}

/// A discovery error whose `Drop` panics is logged with what the task was doing, and the task
/// goes on: a change after the error is applied.
#[tokio::test(start_paused = true)]
async fn a_discovery_error_whose_drop_panics_is_logged_and_the_task_goes_on() {
    let caught = Caught::default();
    let _subscriber = tracing::subscriber::set_default(caught.clone());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .build()
        .unwrap()
        .layer(stream);
    tx.send(Err(Unfreeable)).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    tx.send(Ok(Change::Insert(1usize, Node::new(1)))).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(balance.endpoints(), vec![1]);
    assert_eq!(caught.doing(), ["dropping a discovery error"]);
}

/// A discovery stream whose `Drop` panics when it is dropped, once it has ended or once it has
/// panicked, is logged with what the task was doing, and the task goes on: an ejected endpoint
/// still returns.
#[tokio::test(start_paused = true)]
async fn a_discovery_stream_whose_drop_panics_is_logged_and_the_task_goes_on() {
    for panics in [false, true] {
        let caught = Caught::default();
        let _subscriber = tracing::subscriber::set_default(caught.clone());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let unfreeable = Unfreeable;
        let stream = futures_util::stream::poll_fn(move |cx| {
            let _held = &unfreeable;
            match rx.poll_recv(cx) {
                Poll::Ready(None) if panics => panic!("discovery broke"),
                read => read.map(|change| change.map(Ok::<_, String>)),
            }
        });
        let balance = BalanceLayer::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(eject_at_once())
            .build()
            .unwrap()
            .layer(stream);
        let failing = Node::new(0);
        failing
            .behavior
            .fail
            .store(true, std::sync::atomic::Ordering::Relaxed);
        tx.send(Change::Insert(0usize, failing)).unwrap();
        tx.send(Change::Insert(1, Node::new(1))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        drive_until_unhealthy(&balance, 1).await;
        assert_eq!(balance.unhealthy(), vec![0]);

        // The stream ends, or panics, once its sender is gone.
        drop(tx);
        // Ejected at 1 ms for 10 s: back at the pass of 11 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(balance.unhealthy().is_empty(), "panics: {panics}");
        let doing = if panics {
            "dropping the discovery stream that panicked"
        } else {
            "dropping the ended discovery stream"
        };
        assert_eq!(caught.doing(), [doing], "panics: {panics}");
    }
}
