//! Two state changes made at once on two threads: whichever publishes last leaves the current
//! state in the watch and the gauge, and listeners, which may hear the changes out of order, can
//! order them by generation.
//!
//! A test binary of its own: the change is held up in a scoped tracing subscriber, and tracing
//! caches each call site's interest process-wide. A test on another thread that reaches the same
//! call site first, while this subscriber is being set up, can leave it cached as uninterested,
//! and the event that should hold the change up never comes.
#![cfg(not(loom))]

use seawall::breaker::{BreakerLayer, State, Transition};
use seawall_core::metrics::{self as names, testing::TestRecorder};

/// A tracing subscriber that holds up the first event on its thread until told to go on.
struct Pause {
    paused: std::sync::mpsc::SyncSender<()>,
    go: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    once: std::sync::Once,
}

impl tracing::Subscriber for Pause {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {
        self.once.call_once(|| {
            self.paused.send(()).unwrap();
            self.go.lock().unwrap().recv().unwrap();
        });
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn racing_changes_leave_the_current_state_in_the_watch_and_the_gauge() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let hearing = heard.clone();
    let layer = BreakerLayer::builder()
        .name("racing")
        .on_transition(move |_: &seawall_core::Name, t: &Transition| {
            hearing.lock().unwrap().push((t.to, t.generation));
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    let states = handle.subscribe();
    let (paused_tx, paused) = std::sync::mpsc::sync_channel(1);
    let (go, go_rx) = std::sync::mpsc::sync_channel(1);
    let pause = Pause {
        paused: paused_tx,
        go: std::sync::Mutex::new(go_rx),
        once: std::sync::Once::new(),
    };
    // One thread forces the breaker open and is held up right after the change, before it
    // publishes it; meanwhile another change (a reset) is made and published.
    let forcing = handle.clone();
    let forcer = std::thread::spawn(move || {
        tracing::subscriber::with_default(pause, || forcing.force_open());
    });
    paused.recv().unwrap();
    handle.reset();
    go.send(()).unwrap();
    forcer.join().unwrap();

    assert_eq!(handle.state(), State::Closed);
    assert_eq!(*states.borrow(), State::Closed, "the watch shows the state");
    let gauge = recorder.gauge(names::BREAKER_STATE, "racing");
    assert_eq!(gauge, Some(State::Closed.as_gauge()), "the gauge too");
    // The reset was heard before the change it followed; the generations tell the order.
    let heard = heard.lock().unwrap().clone();
    assert_eq!(heard, [(State::Closed, 2), (State::ForcedOpen, 1)]);
    let newest = heard.iter().max_by_key(|(_, generation)| generation);
    assert_eq!(newest, Some(&(State::Closed, 2)));
}
