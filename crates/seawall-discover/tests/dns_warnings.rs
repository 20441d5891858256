//! Which failed lookups warn. A subscriber set for one thread sees events only once their
//! callsites are registered with it, which other tests running at once on other threads could
//! race with: this test has its binary to itself.

mod common;

use common::{make, two_targets, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::{
    fmt,
    sync::{atomic::Ordering::Relaxed, Arc, Mutex},
    time::Duration,
};

const SRV: &str = "_http._tcp.api.test";

/// The warnings a subscriber saw, by message.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl Warnings {
    fn count(&self, message: &str) -> usize {
        let seen = self.0.lock().unwrap();
        seen.iter().filter(|m| m.as_str() == message).count()
    }
}

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut message = Message(String::new());
            event.record(&mut message);
            self.0.lock().unwrap().push(message.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// A lookup that keeps failing warns once; a different one that starts to fail while it does
/// warns too.
#[tokio::test(start_paused = true)]
async fn each_lookup_that_starts_failing_warns_once() {
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    let zone = Zone::default();
    zone.ttl.store(60, Relaxed);
    two_targets(&zone, SRV);
    zone.silence_type("a.api.test", RecordType::AAAA, true);
    let server = zone.serve().await;
    let start = tokio::time::Instant::now();
    let _discovery = Dns::srv(format!("{SRV}."))
        .nameservers([server])
        .timeout(Duration::from_millis(500))
        .build(make)
        .unwrap();
    // Resolutions at 0, 1, 3 and 7 s (the pauses between their starts double from 1 s), each
    // with a's AAAA question unanswered; from 5 s b's questions go unanswered too, and it keeps
    // its address.
    tokio::time::sleep_until(start + Duration::from_secs(5)).await;
    zone.silence("b.api.test", true);
    tokio::time::sleep_until(start + Duration::from_secs(25)).await;
    assert_eq!(
        warnings.count(
            "seawall discover could not resolve one address family; keeping its last addresses"
        ),
        1
    );
    assert_eq!(
        warnings
            .count("seawall discover could not resolve an SRV target; keeping its last addresses"),
        1
    );
    assert_eq!(zone.asked(RecordType::SRV), 5, "at 0, 1, 3, 7 and 15 s");
}
