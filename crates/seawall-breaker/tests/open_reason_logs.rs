//! The log line of a change to Open or ForcedOpen names its reason, and the rate and threshold of
//! a trip on a rate; so does the line of a trip a breaker in MetricsOnly would make. Alone in its
//! file: `tracing` caches whether a callsite is enabled, and an event emitted on another test's
//! thread with no subscriber could leave this test's subscriber deaf to it.
#![cfg(not(loom))]

mod common;

use common::{dependency, send, Call};
use seawall::breaker::{BreakerLayer, SlidingWindow, State};
use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};
use tower::Layer;

/// A change of state, logged.
const CHANGED: &str = "circuit breaker changed state";
/// A change of state a breaker in MetricsOnly would make, logged.
const WOULD: &str = "circuit breaker would change state (metrics only)";

/// The fields of each [`CHANGED`] or [`WOULD`] event, by name, as `Debug` renders them, the
/// message with them.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Fields>>>);

/// An event's fields, `(name, value)`.
type Fields = Vec<(String, String)>;

struct Visitor(Fields);

impl tracing::field::Visit for Visitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Visitor(Vec::new());
        event.record(&mut fields);
        let message = |m: &str| ("message".to_owned(), m.to_owned());
        if fields.0.contains(&message(CHANGED)) || fields.0.contains(&message(WOULD)) {
            self.0.lock().unwrap().push(fields.0);
        }
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[tokio::test(start_paused = true)]
async fn the_log_line_names_the_reason_and_the_rate() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let layer = BreakerLayer::builder()
        .name("logged")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(10)
        .failure_rate_threshold(0.45)
        .consecutive_failures(2)
        .permitted_probes(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .build()
        .unwrap();
    let mut svc = layer.layer(dependency().0);
    // 5 failures of 10 calls, never 2 in a row: the failure rate trips, at the tenth call.
    let handle = layer.handle();
    for (i, call) in [Call::Ok, Call::Fail].repeat(5).into_iter().enumerate() {
        let _ = send(&mut svc, call).await;
        assert_eq!(handle.state() == State::Open, i == 9, "call {}", i + 1);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = send(&mut svc, Call::Fail).await;
    handle.force_open();
    // A breaker in MetricsOnly logs the trip it would make, with the same fields.
    let shadow = BreakerLayer::builder()
        .name("shadow")
        .sliding_window(SlidingWindow::count(4))
        .minimum_calls(4)
        .failure_rate_threshold(0.7)
        .build()
        .unwrap();
    shadow.handle().metrics_only();
    let mut svc = shadow.layer(dependency().0);
    for call in [Call::Fail, Call::Ok, Call::Fail, Call::Fail] {
        let _ = send(&mut svc, call).await;
    }

    let field = |event: &[(String, String)], name: &str| {
        event
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let events = capture.0.lock().unwrap().clone();
    let logged: Vec<_> = events
        .iter()
        .map(|e| {
            (
                field(e, "message").unwrap() == WOULD,
                field(e, "name").unwrap(),
                field(e, "to").unwrap(),
                field(e, "reason"),
                field(e, "rate"),
                field(e, "threshold"),
            )
        })
        .collect();
    let s = |s: &str| Some(s.to_owned());
    let changed = |to: &str, reason, rate, threshold| {
        let to = to.to_owned();
        (false, "logged".to_owned(), to, reason, rate, threshold)
    };
    let shadow = |would, to: &str, reason, rate, threshold| {
        let to = to.to_owned();
        (would, "shadow".to_owned(), to, reason, rate, threshold)
    };
    assert_eq!(
        logged,
        [
            changed("open", s("\"failure_rate\""), s("0.5"), s("0.45")),
            changed("half_open", None, None, None),
            changed("open", s("\"probes_failed\""), None, None),
            changed("forced_open", s("\"forced\""), None, None),
            shadow(false, "metrics_only", None, None, None),
            shadow(true, "open", s("\"failure_rate\""), s("0.75"), s("0.7")),
        ]
    );
}
