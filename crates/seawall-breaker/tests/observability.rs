//! What a breaker reports: metrics through the `metrics` facade, the snapshot, state changes to
//! subscribers and listeners, tracing-free names.
#![cfg(not(loom))]

mod common;

use common::{dependency, send, Call};
use metrics::{Key, KeyName, Metadata, SharedString, Unit};
use seawall::breaker::{
    BreakerConfig, BreakerConfigBuilder, BreakerLayer, BreakerSet, SlidingWindow, State,
};
use seawall_core::metrics::{self as names, testing::TestRecorder};
use std::{
    panic::{self, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};

/// A breaker named `name` that opens on one failure, waits 1 s, and gives its probe 1 s.
fn opens_at_once(name: &'static str) -> BreakerConfigBuilder {
    BreakerLayer::builder()
        .name(name)
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .max_wait_in_half_open(Duration::from_secs(1))
}

#[tokio::test(start_paused = true)]
async fn metrics_count_outcomes_rejections_and_transitions() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BreakerLayer::builder()
        .name("users")
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(4)
        .slow_call_rate_threshold(1.0)
        .slow_call_duration(Duration::from_millis(100))
        .build_with(common::ignoring)
        .unwrap();
    let mut svc = layer.layer(dependency().0);
    for call in [
        Call::Ok,
        Call::SlowOk(200),
        Call::Ignore,
        Call::Fail,
        Call::Fail,
        Call::Fail,
    ] {
        let _ = send(&mut svc, call).await;
    }
    // Two failures of four counted calls trip the breaker; the third failure and the last call
    // are rejected.
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(recorder.counter(names::BREAKER_SUCCESSES, "users"), 2);
    assert_eq!(recorder.counter(names::BREAKER_FAILURES, "users"), 2);
    assert_eq!(recorder.counter(names::BREAKER_IGNORED, "users"), 1);
    assert_eq!(recorder.counter(names::BREAKER_SLOW, "users"), 1);
    assert_eq!(recorder.counter(names::BREAKER_REJECTED, "users"), 2);
    assert_eq!(recorder.counter(names::BREAKER_TRANSITIONS, "users"), 1);
    assert_eq!(
        recorder.gauge(names::BREAKER_STATE, "users"),
        Some(State::Open.as_gauge())
    );
    layer.handle().force_open();
    assert_eq!(recorder.gauge(names::BREAKER_STATE, "users"), Some(4.0));
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_tells_rates_counts_and_time_in_state() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(10)
        .slow_call_rate_threshold(1.0)
        .slow_call_duration(Duration::from_millis(100))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for call in [Call::Ok, Call::Fail, Call::SlowOk(150), Call::SlowFail(150)] {
        let _ = send(&mut svc, call).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, State::Closed);
    assert_eq!(
        (snapshot.calls, snapshot.failures, snapshot.slow_calls),
        (4, 2, 2)
    );
    assert_eq!(snapshot.failure_rate, 0.5);
    assert_eq!(snapshot.slow_call_rate, 0.5);
    assert_eq!(snapshot.time_in_state, Duration::from_millis(2_300));
    assert_eq!(snapshot.rejected, 0);
    handle.force_open();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.snapshot().time_in_state, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_state_change() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut states = handle.subscribe();
    assert_eq!(*states.borrow(), State::Closed);
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    assert!(states.has_changed().unwrap());
    assert_eq!(*states.borrow_and_update(), State::Open);
    handle.disable();
    assert_eq!(*states.borrow_and_update(), State::Disabled);
    assert_eq!(handle.name().as_str(), "breaker");
    assert!(format!("{handle:?}").contains("Disabled"));
}

#[tokio::test(start_paused = true)]
async fn the_snapshot_counts_only_the_rejections_callers_get() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let build = |name: &str, backpressure: bool| {
        BreakerLayer::builder()
            .name(name)
            .consecutive_failures(1)
            .wait_duration(Duration::from_secs(5))
            .jitter(0.0)
            .permitted_probes(1)
            .backpressure(backpressure)
            .build()
            .unwrap()
    };

    // With backpressure nothing is rejected: the caller waits in `poll_ready`.
    let layer = build("waits", true);
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    let mut ready = task::spawn(svc.ready());
    assert_pending!(ready.poll());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let svc = assert_ready!(ready.poll()).unwrap();
    assert_eq!(svc.call(Call::Ok).await.unwrap(), "ok");
    assert_eq!(recorder.counter(names::BREAKER_REJECTED, "waits"), 0);
    assert_eq!(handle.snapshot().rejected, 0);

    // A call that `poll_ready` first found rejected, but that went through once the breaker had
    // recovered, was not rejected either; one that got `Open` was.
    let layer = build("rejects", false);
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    svc.ready().await.unwrap();
    handle.reset();
    assert_eq!(
        svc.ready().await.unwrap().call(Call::Ok).await.unwrap(),
        "ok"
    );
    assert_eq!(handle.snapshot().rejected, 0);
    let _ = send(&mut svc, Call::Fail).await;
    assert!(common::rejected(&send(&mut svc, Call::Ok).await));
    assert_eq!(recorder.counter(names::BREAKER_REJECTED, "rejects"), 1);
    assert_eq!(handle.snapshot().rejected, 1);
}

/// A reload builds the new breaker before it drops the old one: the two share the name's state
/// gauge, which shows the more severe of their states, and a dropped breaker's state goes with
/// it.
#[tokio::test(start_paused = true)]
async fn breakers_sharing_a_name_publish_the_most_severe_state() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let gauge = || recorder.gauge(names::BREAKER_STATE, "reloaded");
    let build = || BreakerLayer::builder().name("reloaded").build().unwrap();

    let old = build();
    old.handle().force_open();
    assert_eq!(gauge(), Some(State::ForcedOpen.as_gauge()));
    // Built next to an open breaker: the alert stays on.
    let new = build();
    assert_eq!(new.handle().state(), State::Closed);
    assert_eq!(gauge(), Some(State::ForcedOpen.as_gauge()));
    new.handle().disable();
    assert_eq!(gauge(), Some(State::ForcedOpen.as_gauge()));
    // The old one dropped: the new one's state is left.
    drop(old);
    assert_eq!(gauge(), Some(State::Disabled.as_gauge()));
    new.handle().reset();
    assert_eq!(gauge(), Some(State::Closed.as_gauge()));
}

/// An open breaker dropped on a reload takes its state off the gauge: it no longer reads open
/// with no breaker left to close it.
#[tokio::test(start_paused = true)]
async fn a_dropped_breaker_takes_its_state_off_the_gauge() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BreakerLayer::builder()
        .name("dropped")
        .consecutive_failures(1)
        .build()
        .unwrap();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(
        recorder.gauge(names::BREAKER_STATE, "dropped"),
        Some(State::Open.as_gauge())
    );
    drop(layer);
    // A service holds the breaker too.
    assert_eq!(
        recorder.gauge(names::BREAKER_STATE, "dropped"),
        Some(State::Open.as_gauge())
    );
    drop(svc);
    assert_eq!(
        recorder.gauge(names::BREAKER_STATE, "dropped"),
        Some(State::Closed.as_gauge())
    );
}

/// A call in flight holds its breaker too: dropped with its layer and services on a reload, the
/// old breaker lives until its last call ends, and that call can still trip it.
#[tokio::test(start_paused = true)]
async fn a_call_in_flight_keeps_its_breaker_and_its_state_on_the_gauge() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = {
        let (recorder, seen) = (recorder.clone(), seen.clone());
        move |_: &seawall_core::Name, transition: &seawall::breaker::Transition| {
            let gauge = recorder.gauge(names::BREAKER_STATE, "in-flight");
            seen.lock().unwrap().push((transition.to, gauge));
        }
    };
    let layer = BreakerLayer::builder()
        .name("in-flight")
        .consecutive_failures(1)
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let mut call = task::spawn(svc.ready().await.unwrap().call(Call::SlowFail(100)));
    assert_pending!(call.poll());
    drop((svc, layer, handle));
    assert_eq!(
        recorder.gauge(names::BREAKER_STATE, "in-flight"),
        Some(State::Closed.as_gauge())
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(assert_ready!(call.poll()).is_err());
    // The failure tripped the breaker its layer, services and handle had all let go of, and the
    // gauge read open until the call ended, when the breaker was dropped.
    assert_eq!(
        *seen.lock().unwrap(),
        [(State::Open, Some(State::Open.as_gauge()))]
    );
    assert_eq!(
        recorder.gauge(names::BREAKER_STATE, "in-flight"),
        Some(State::Closed.as_gauge())
    );
}

/// A recorder whose breaker state gauge and keys-open gauge panic on the next change while
/// `fail` is on; the state gauge keeps what was last set otherwise.
#[derive(Default)]
struct PanickingGauge {
    fail: AtomicBool,
    bits: AtomicU64,
}

impl PanickingGauge {
    fn fail_if_armed(&self) {
        if self.fail.swap(false, Ordering::SeqCst) {
            panic!("the recorder failed");
        }
    }
}

impl metrics::GaugeFn for PanickingGauge {
    fn increment(&self, _: f64) {
        self.fail_if_armed();
    }
    fn decrement(&self, _: f64) {
        self.fail_if_armed();
    }
    fn set(&self, value: f64) {
        if self.fail.swap(false, Ordering::SeqCst) {
            panic!("the recorder failed");
        }
        self.bits.store(value.to_bits(), Ordering::SeqCst);
    }
}

/// A recorder whose breaker state and keys-open gauges are `gauge`, whose transitions counter is
/// `transitions` (which panics while armed), and which counts the calls that failed and the calls
/// ignored (every name together).
struct PanickingRecorder {
    gauge: Arc<PanickingGauge>,
    transitions: Arc<PanickingCounter>,
    failures: Arc<AtomicU64>,
    ignored: Arc<AtomicU64>,
}

impl PanickingRecorder {
    fn new(gauge: Arc<PanickingGauge>) -> Self {
        PanickingRecorder {
            gauge,
            transitions: Arc::default(),
            failures: Arc::default(),
            ignored: Arc::default(),
        }
    }
}

impl metrics::Recorder for PanickingRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        match key.name() {
            names::BREAKER_FAILURES => metrics::Counter::from_arc(self.failures.clone()),
            names::BREAKER_IGNORED => metrics::Counter::from_arc(self.ignored.clone()),
            names::BREAKER_TRANSITIONS => metrics::Counter::from_arc(self.transitions.clone()),
            _ => metrics::Counter::noop(),
        }
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        if [names::BREAKER_STATE, names::BREAKER_KEYS_OPEN].contains(&key.name()) {
            metrics::Gauge::from_arc(self.gauge.clone())
        } else {
            metrics::Gauge::noop()
        }
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A recorder that panics while a change is published leaves the change counted and told to
/// subscribers: dropping the breaker then takes off the state it was counted in, and the gauge
/// does not read forced open for good.
#[test]
fn a_panicking_recorder_does_not_leave_a_dropped_breakers_state_behind() {
    let gauge = Arc::new(PanickingGauge::default());
    let recorder = PanickingRecorder::new(gauge.clone());
    let read = || f64::from_bits(gauge.bits.load(Ordering::SeqCst));
    let _guard = metrics::set_default_local_recorder(&recorder);
    let heard = Arc::new(AtomicBool::new(false));
    let listener = {
        let heard = heard.clone();
        move |_: &seawall_core::Name, _: &seawall::breaker::Transition| {
            heard.store(true, Ordering::SeqCst);
        }
    };
    let layer = BreakerLayer::builder()
        .name("panicking-recorder")
        .on_transition(listener)
        .build()
        .unwrap();
    assert_eq!(read(), State::Closed.as_gauge());
    gauge.fail.store(true, Ordering::SeqCst);
    let handle = layer.handle();
    let mut rx = handle.subscribe();
    let forced = panic::catch_unwind(AssertUnwindSafe(|| handle.force_open()));
    assert!(forced.is_err(), "the recorder's panic reaches the caller");
    assert!(!gauge.fail.load(Ordering::SeqCst), "the gauge was set once");
    assert_eq!(layer.handle().state(), State::ForcedOpen);
    // Subscribers and listeners hear of the change all the same.
    assert!(
        rx.has_changed().unwrap(),
        "the subscriber is told of the change"
    );
    assert!(
        heard.load(Ordering::SeqCst),
        "the listener is told of the change"
    );
    assert_eq!(*rx.borrow_and_update(), State::ForcedOpen);
    drop(handle);
    drop(layer);
    assert_eq!(read(), 0.0);
}

/// A recorder that panics while a breaker's destructor runs is caught there: a panic out of a
/// destructor aborts the process when the thread is already unwinding. The destructors that can
/// call it: a service's handing back the probe it reserved, or a call's future handing back its
/// probe, when the change that makes (a HalfOpen past its bound reopens) is published; the last
/// holder of a breaker taking its state off the gauge; a keyed set letting go of an open key.
#[tokio::test(start_paused = true)]
async fn a_panicking_recorder_does_not_escape_a_drop() {
    let gauge = Arc::new(PanickingGauge::default());
    let recorder = PanickingRecorder::new(gauge.clone());
    let _guard = metrics::set_default_local_recorder(&recorder);
    let armed = || gauge.fail.store(true, Ordering::SeqCst);
    let fired = || !gauge.fail.load(Ordering::SeqCst);
    let layer = opens_at_once("panicking-drop").build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);

    // A probe reserved and never called, handed back as the service is dropped.
    tokio::time::sleep(handle.remaining_wait().unwrap()).await;
    svc.ready().await.unwrap();
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::sleep(Duration::from_secs(1)).await;
    armed();
    let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop(svc)));
    assert!(fired(), "the recorder panicked");
    assert!(
        dropped.is_ok(),
        "the recorder's panic left the service's drop"
    );
    assert_eq!(*handle.subscribe().borrow(), State::Open);

    // A probe called and left hanging, its future dropped while the thread unwinds.
    tokio::time::sleep(handle.remaining_wait().unwrap()).await;
    let mut svc = layer.layer(dependency().0);
    let probe = svc.ready().await.unwrap().call(Call::Hang);
    drop(svc);
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::sleep(Duration::from_secs(1)).await;
    armed();
    let unwound = panic::catch_unwind(AssertUnwindSafe(move || {
        let _probe = probe;
        panic!("the caller failed");
    }));
    assert!(fired(), "the recorder panicked");
    let panic = unwound.expect_err("the caller's panic goes on");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"the caller failed"));
    assert_eq!(*handle.subscribe().borrow(), State::Open);

    // The breaker dropped by its last holder.
    armed();
    let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop((layer, handle))));
    assert!(fired(), "the recorder panicked");
    assert!(
        dropped.is_ok(),
        "the recorder's panic left the breaker's drop"
    );

    // An open key's breaker let go of by its set.
    let config = BreakerConfig::builder()
        .name("panicking-set")
        .consecutive_failures(1)
        .build_config()
        .unwrap();
    let set = BreakerSet::new(config, 8).unwrap();
    let mut a = set.get(&"a").layer(dependency().0);
    let _ = send(&mut a, Call::Fail).await;
    armed();
    let removed = panic::catch_unwind(AssertUnwindSafe(|| set.remove(&"a")));
    assert!(fired(), "the recorder panicked");
    assert!(removed.is_ok_and(|removed| removed), "the key was removed");
}

/// A transitions counter, or a `tracing` subscriber, that panics as a change is made in a
/// destructor (a service dropped with the probe it reserved, past the HalfOpen's bound) is caught
/// there, and the change is published all the same: the watch moves and listeners hear of it.
#[tokio::test(start_paused = true)]
async fn a_panicking_transitions_counter_or_subscriber_in_a_drop_leaves_the_change_told() {
    let gauge = Arc::new(PanickingGauge::default());
    let recorder = PanickingRecorder::new(gauge.clone());
    let _guard = metrics::set_default_local_recorder(&recorder);
    let counter = recorder.transitions.clone();
    let heard = Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = {
        let heard = heard.clone();
        move |_: &seawall_core::Name, t: &seawall::breaker::Transition| {
            heard.lock().unwrap().push((t.from, t.to));
        }
    };
    let layer = opens_at_once("panicking-transitions")
        .on_transition(listener)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut watched = handle.subscribe();
    let _ = send(&mut layer.layer(dependency().0), Call::Fail).await;

    for panicking in ["transitions counter", "subscriber"] {
        // A probe reserved once the wait is over, and kept past the HalfOpen's bound.
        tokio::time::sleep(handle.remaining_wait().unwrap()).await;
        let mut svc = layer.layer(dependency().0);
        svc.ready().await.unwrap();
        assert_eq!(*watched.borrow_and_update(), State::HalfOpen, "{panicking}");
        heard.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let dropped = match panicking {
            "transitions counter" => {
                counter.fail.store(true, Ordering::SeqCst);
                let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop(svc)));
                assert!(!counter.fail.load(Ordering::SeqCst), "the counter panicked");
                dropped
            }
            _ => {
                let events = Arc::new(AtomicU64::new(0));
                let _subscriber = tracing::subscriber::set_default(CountingPanics(events.clone()));
                let dropped = panic::catch_unwind(AssertUnwindSafe(|| drop(svc)));
                assert!(
                    events.load(Ordering::SeqCst) >= 1,
                    "the subscriber panicked"
                );
                dropped
            }
        };
        assert!(dropped.is_ok(), "{panicking}: the panic left the drop");
        assert_eq!(handle.snapshot().state, State::Open, "{panicking}");
        assert_eq!(*watched.borrow_and_update(), State::Open, "{panicking}");
        assert_eq!(
            *heard.lock().unwrap(),
            [(State::HalfOpen, State::Open)],
            "{panicking}"
        );
    }
}

/// A `tracing` subscriber that counts the events it is given and panics on each.
struct CountingPanics(Arc<AtomicU64>);

impl tracing::Subscriber for CountingPanics {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("subscriber broke");
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

/// A state gauge that panics as a call's outcome changes the breaker's state does not keep the
/// outcome from being counted: the failure that trips the breaker is counted, the panic reaching
/// the caller afterwards, and so is a probe dropped once the HalfOpen's bound is over, which
/// reopens the breaker as the future is dropped.
#[tokio::test(start_paused = true)]
async fn a_panicking_state_gauge_does_not_keep_the_outcome_from_being_counted() {
    let gauge = Arc::new(PanickingGauge::default());
    let recorder = PanickingRecorder::new(gauge.clone());
    let _guard = metrics::set_default_local_recorder(&recorder);
    let armed = || gauge.fail.store(true, Ordering::SeqCst);
    let fired = || !gauge.fail.load(Ordering::SeqCst);
    let layer = opens_at_once("panicking-gauge-outcome").build().unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);

    let mut call = task::spawn(svc.ready().await.unwrap().call(Call::Fail));
    armed();
    let polled = panic::catch_unwind(AssertUnwindSafe(|| call.poll()));
    assert!(fired(), "the recorder panicked");
    assert!(polled.is_err(), "the recorder's panic reaches the caller");
    assert_eq!(handle.state(), State::Open);
    assert_eq!(recorder.failures.load(Ordering::SeqCst), 1);

    tokio::time::sleep(handle.remaining_wait().unwrap()).await;
    let mut probe = task::spawn(svc.ready().await.unwrap().call(Call::Hang));
    assert_pending!(probe.poll());
    tokio::time::sleep(Duration::from_secs(1)).await;
    armed();
    drop(probe);
    assert!(fired(), "the recorder panicked");
    assert_eq!(*handle.subscribe().borrow(), State::Open);
    assert_eq!(recorder.ignored.load(Ordering::SeqCst), 1);
}

/// A counter that panics on the next increment while `fail` is on: the outcome counters of
/// [`PanickingOutcomes`], the transitions counter of [`PanickingRecorder`].
#[derive(Default)]
struct PanickingCounter {
    fail: AtomicBool,
}

impl metrics::CounterFn for PanickingCounter {
    fn increment(&self, _: u64) {
        if self.fail.swap(false, Ordering::SeqCst) {
            panic!("the recorder failed");
        }
    }
    fn absolute(&self, _: u64) {}
}

struct PanickingOutcomes(Arc<PanickingCounter>);

impl metrics::Recorder for PanickingOutcomes {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> metrics::Counter {
        let outcomes = [
            names::BREAKER_SUCCESSES,
            names::BREAKER_FAILURES,
            names::BREAKER_IGNORED,
        ];
        if outcomes.contains(&key.name()) {
            metrics::Counter::from_arc(self.0.clone())
        } else {
            metrics::Counter::noop()
        }
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A recorder that panics as a probe's outcome is counted does not cost the breaker the probe:
/// the outcome is recorded in the breaker (the slot filled, or handed back) before the counter
/// is called.
#[tokio::test(start_paused = true)]
async fn a_panicking_outcome_counter_does_not_lose_a_probe() {
    let counter = Arc::new(PanickingCounter::default());
    let recorder = PanickingOutcomes(counter.clone());
    let _guard = metrics::set_default_local_recorder(&recorder);
    let armed = || counter.fail.store(true, Ordering::SeqCst);
    let fired = || !counter.fail.load(Ordering::SeqCst);
    let layer = BreakerLayer::builder()
        .name("panicking-outcome")
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);

    // A probe that answers: the panic reaches the caller, and the answer closes the breaker.
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(handle.remaining_wait().unwrap()).await;
    let mut probe = task::spawn(svc.ready().await.unwrap().call(Call::Ok));
    assert_eq!(handle.state(), State::HalfOpen);
    armed();
    let polled = panic::catch_unwind(AssertUnwindSafe(|| probe.poll()));
    assert!(fired(), "the recorder panicked");
    assert!(polled.is_err(), "the recorder's panic reaches the caller");
    drop(probe);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().probes_in_use, 0);

    // A probe cancelled: the slot is handed back, and the next call is the probe.
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(handle.remaining_wait().unwrap()).await;
    let mut probe = task::spawn(svc.ready().await.unwrap().call(Call::Hang));
    assert_pending!(probe.poll());
    assert_eq!(handle.snapshot().probes_in_use, 1);
    armed();
    drop(probe);
    assert!(fired(), "the recorder panicked");
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probes_in_use, 0);
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}
