//! The log line of a change to Open or ForcedOpen names its reason, and the rate and threshold of
//! a trip on a rate. Alone in its file: `tracing` caches whether a callsite is enabled, and an
//! event emitted on another test's thread with no subscriber could leave this test's subscriber
//! deaf to it.
#![cfg(not(loom))]

mod common;

use common::{dependency, send, Call};
use seawall::breaker::{BreakerLayer, SlidingWindow};
use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};
use tower::Layer;

/// The fields of each "circuit breaker changed state" event, by name, as `Debug` renders them.
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
        let message = (
            "message".to_owned(),
            "circuit breaker changed state".to_owned(),
        );
        if fields.0.contains(&message) {
            fields.0.retain(|(name, _)| name != "message");
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
        .failure_rate_threshold(0.5)
        .consecutive_failures(2)
        .permitted_probes(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .build()
        .unwrap();
    let mut svc = layer.layer(dependency().0);
    for call in [Call::Ok, Call::Fail].repeat(5) {
        let _ = send(&mut svc, call).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = send(&mut svc, Call::Fail).await;
    layer.handle().force_open();

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
            assert_eq!(field(e, "name").as_deref(), Some("logged"));
            (
                field(e, "to").unwrap(),
                field(e, "reason"),
                field(e, "rate"),
                field(e, "threshold"),
            )
        })
        .collect();
    let s = |s: &str| Some(s.to_owned());
    assert_eq!(
        logged,
        [
            ("open".to_owned(), s("\"failure_rate\""), s("0.5"), s("0.5")),
            ("half_open".to_owned(), None, None, None),
            ("open".to_owned(), s("\"probes_failed\""), None, None),
            ("forced_open".to_owned(), s("\"forced\""), None, None),
        ]
    );
}
