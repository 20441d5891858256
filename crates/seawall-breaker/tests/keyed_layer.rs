//! A keyed breaker layer: each call goes through the breaker of its request's key in a set.
#![cfg(not(loom))]

mod common;

use common::{dependency, rejected, Call, Host, Reached};
use seawall::{
    breaker::{
        BreakerConfig, BreakerSet, KeyedBreaker, KeyedBreakerLayer, Open, State, Transition,
    },
    core::{
        classify::Classify,
        error::{is, is_not_sent},
    },
    BoxError, Outcome,
};
use seawall_core::metrics::{self as names, testing::TestRecorder};
use std::{
    future::Future,
    panic::{self, AssertUnwindSafe},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex,
    },
    time::Duration,
};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service, ServiceExt};

/// A request to a host.
type Request = (&'static str, Call);

fn by_host((host, _): &Request) -> &'static str {
    host
}

fn config() -> seawall::breaker::BreakerConfigBuilder {
    BreakerConfig::builder()
        .name("per-host")
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
}

fn set(capacity: usize) -> BreakerSet<&'static str> {
    BreakerSet::new(config().build_config().unwrap(), capacity).unwrap()
}

/// A client for many hosts: the dependency, behind a breaker per host of `set`.
fn client(
    set: &BreakerSet<&'static str>,
) -> (
    impl Service<
            Request,
            Response = &'static str,
            Error = BoxError,
            Future = impl Future<Output = Result<&'static str, BoxError>>,
        > + Clone,
    Reached,
) {
    let (dependency, reached) = dependency();
    let layer = set.keyed_layer(by_host).unwrap();
    let service = layer.layer(dependency.map_request(|(_, call): Request| call));
    (service, reached)
}

async fn send<S>(client: &mut S, host: &'static str, call: Call) -> Result<&'static str, BoxError>
where
    S: Service<Request, Response = &'static str, Error = BoxError>,
{
    client.ready().await?.call((host, call)).await
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_breaker() {
    let set = set(8);
    let (mut client, reached) = client(&set);
    assert!(send(&mut client, "a", Call::Fail).await.is_err());
    assert_eq!(set.handle(&"a").unwrap().state(), State::Open);

    // a's breaker rejects; b's lets calls through, on the same service.
    assert!(rejected(&send(&mut client, "a", Call::Ok).await));
    assert_eq!(send(&mut client, "b", Call::Ok).await.unwrap(), "ok");
    assert_eq!(send(&mut client, "b", Call::Ok).await.unwrap(), "ok");
    assert_eq!(
        reached.get(),
        3,
        "the rejected call did not reach the dependency"
    );
    assert_eq!(set.handle(&"b").unwrap().state(), State::Closed);
    assert_eq!(set.unhealthy(), ["a"]);

    // A clone, and a service built apart from the same layer, share the key's breaker.
    assert!(rejected(&send(&mut client.clone(), "a", Call::Ok).await));
    let (mut other, _) = self::client(&set);
    assert!(rejected(&send(&mut other, "a", Call::Ok).await));
    assert_eq!(set.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rejection_is_open_and_not_sent() {
    let set = set(8);
    let (mut client, reached) = client(&set);
    let _ = send(&mut client, "a", Call::Fail).await;
    let err = send(&mut client, "a", Call::Ok).await.unwrap_err();
    assert!(is::<Open>(&*err), "{err}");
    assert!(err.downcast_ref::<Open>().is_some());
    assert!(is_not_sent(&*err));
    assert_eq!(reached.get(), 1);
    assert_eq!(
        set.handle(&"a").unwrap().snapshot().rejected,
        1,
        "the rejection is counted in the key's breaker"
    );
}

/// A half-open key's probe slot is held by the call's response future; dropped before the call
/// completes, the future hands it back, and the next call to the key is the probe.
#[tokio::test(start_paused = true)]
async fn a_dropped_probe_hands_its_slot_back() {
    let set = set(8);
    let (mut client, reached) = client(&set);
    let _ = send(&mut client, "a", Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(set.handle(&"a").unwrap().state(), State::HalfOpen);

    let mut probe = task::spawn(client.ready().await.unwrap().call(("a", Call::Hang)));
    assert_pending!(probe.poll());
    assert_eq!(reached.get(), 2);
    // The only slot is taken: the next call to a is rejected; b is not held up.
    assert!(rejected(&send(&mut client, "a", Call::Ok).await));
    assert_eq!(send(&mut client, "b", Call::Ok).await.unwrap(), "ok");

    drop(probe);
    assert_eq!(set.handle(&"a").unwrap().state(), State::HalfOpen);
    assert_eq!(send(&mut client, "a", Call::Ok).await.unwrap(), "ok");
    assert_eq!(set.handle(&"a").unwrap().state(), State::Closed);
}

/// Keys' breakers stay in the set between calls, Open ones too, until the set makes room; a key
/// with a call in flight is kept over an idle one.
#[tokio::test(start_paused = true)]
async fn keys_stay_in_the_set_until_evicted_by_its_rules() {
    let set = set(2);
    let (mut client, _) = client(&set);
    let _ = send(&mut client, "down", Call::Fail).await;
    assert_eq!(send(&mut client, "up", Call::Ok).await.unwrap(), "ok");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A third key makes room: the idle Closed breaker goes, the idle Open one (a failing key)
    // stays. No handle is taken before: a handle holds a breaker in use, which would keep it
    // whatever its state.
    assert_eq!(send(&mut client, "new", Call::Ok).await.unwrap(), "ok");
    assert_eq!(set.len(), 2);
    assert!(set.handle(&"up").is_none());
    let down = set.handle(&"down").unwrap();
    // The breaker that tripped, half-way through its wait (not a fresh one).
    assert_eq!(down.state(), State::Open);
    assert_eq!(down.remaining_wait(), Some(Duration::from_millis(500)));
    assert!(rejected(&send(&mut client, "down", Call::Ok).await));
    drop(down);

    // A call in flight keeps its key's breaker in use: the idle one goes first, Open or not.
    let mut hung = task::spawn(client.ready().await.unwrap().call(("new", Call::Hang)));
    assert_pending!(hung.poll());
    assert_eq!(send(&mut client, "other", Call::Ok).await.unwrap(), "ok");
    assert!(set.handle(&"down").is_none());
    assert!(set.handle(&"new").is_some());

    // An evicted key comes back with a fresh, Closed breaker (the old one's wait is not over).
    assert_eq!(send(&mut client, "down", Call::Ok).await.unwrap(), "ok");
    assert_eq!(set.handle(&"down").unwrap().state(), State::Closed);
    drop(hung);
}

/// A call to a key the set holds does not wait for a new key's lookup before the new key's
/// breaker is put in (only that, which makes room in a full set, holds up the calls to known
/// keys, briefly): here, the new key's lookup is held inside its key's first hash until a call
/// to a known key has completed on another thread.
#[test]
fn a_new_key_does_not_hold_up_the_calls_to_known_keys() {
    let set: BreakerSet<Host> = BreakerSet::new(config().build_config().unwrap(), 2).unwrap();
    let (dependency, _) = dependency();
    let client = set
        .keyed_layer(|(host, _): &(Host, Call)| host.clone())
        .unwrap()
        .layer(dependency.map_request(|(_, call): (Host, Call)| call));
    let send = |mut client: KeyedBreaker<_, _, _>, request: (Host, Call)| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async move { client.ready().await?.call(request).await })
    };
    for known in ["a", "b"] {
        assert_eq!(
            send(client.clone(), (Host::new(known), Call::Ok)).unwrap(),
            "ok"
        );
    }

    let (entered, has_entered) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let new = Host::held("new", entered, wait);
    let hold = new.hold.clone().unwrap();
    let looking_up = std::thread::spawn({
        let client = client.clone();
        move || send(client, (new, Call::Ok))
    });
    has_entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the new key's lookup started");
    assert_eq!(
        send(client.clone(), (Host::new("a"), Call::Ok)).unwrap(),
        "ok"
    );
    let _ = go.send(());
    assert_eq!(looking_up.join().unwrap().unwrap(), "ok");
    assert_eq!(
        *hold.let_go.lock().unwrap(),
        Some(true),
        "the call to a known key completed while the new key was looked up"
    );
    assert_eq!(set.len(), 2);
    assert!(set.handle(&Host::new("new")).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_key_from_an_http_requests_authority() {
    let set = BreakerSet::new(config().build_config().unwrap(), 8).unwrap();
    let layer = set
        .keyed_layer(|req: &http::Request<Call>| req.uri().authority().cloned())
        .unwrap();
    let (dependency, _) = dependency();
    let mut client = layer.layer(dependency.map_request(http::Request::into_body));
    async fn send<S>(
        client: &mut S,
        uri: &'static str,
        call: Call,
    ) -> Result<&'static str, BoxError>
    where
        S: Service<http::Request<Call>, Response = &'static str, Error = BoxError>,
    {
        let request = http::Request::get(uri).body(call).unwrap();
        client.ready().await?.call(request).await
    }
    let _ = send(&mut client, "http://down.example:8080/users", Call::Fail).await;
    assert!(rejected(
        &send(&mut client, "http://down.example:8080/orders", Call::Ok).await
    ));
    assert_eq!(
        send(&mut client, "http://down.example/", Call::Ok)
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(
        send(&mut client, "http://up.example/users", Call::Ok)
            .await
            .unwrap(),
        "ok"
    );

    let down = Some(http::uri::Authority::from_static("down.example:8080"));
    assert_eq!(set.handle(&down).unwrap().state(), State::Open);
    assert_eq!(set.unhealthy(), [down]);
    assert_eq!(set.len(), 3);
}

/// Listeners on the set hear the key; the log line and the metrics carry the set's name, and the
/// set counts its keys that are open, as for breakers asked for with `get`.
#[tokio::test(start_paused = true)]
async fn listeners_and_metrics_are_the_sets() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let heard = Arc::new(Mutex::new(Vec::new()));
    let by_key = heard.clone();
    let set = set(8).on_transition(move |key: &&str, t: &Transition| {
        by_key.lock().unwrap().push((*key, t.from, t.to))
    });
    let (mut client, _) = client(&set);
    let _ = send(&mut client, "a", Call::Fail).await;
    assert!(rejected(&send(&mut client, "a", Call::Ok).await));
    assert_eq!(send(&mut client, "b", Call::Ok).await.unwrap(), "ok");

    assert_eq!(*heard.lock().unwrap(), [("a", State::Closed, State::Open)]);
    assert_eq!(
        recorder.gauge(names::BREAKER_KEYS_OPEN, "per-host"),
        Some(1.0)
    );
    assert_eq!(recorder.counter(names::BREAKER_FAILURES, "per-host"), 1);
    assert_eq!(recorder.counter(names::BREAKER_SUCCESSES, "per-host"), 1);
    assert_eq!(recorder.counter(names::BREAKER_REJECTED, "per-host"), 1);
    assert_eq!(recorder.gauge(names::BREAKER_STATE, "per-host"), None);
}

/// Outcomes are classified with the set's classifier.
#[tokio::test(start_paused = true)]
async fn outcomes_are_classified_by_the_sets_classifier() {
    let inverted = |result: Result<&&'static str, &BoxError>, _: Duration| match result {
        Ok(_) => Outcome::Failure,
        Err(_) => Outcome::Success,
    };
    let set = BreakerSet::with_classifier(config().build_config().unwrap(), 8, inverted).unwrap();
    let (dependency, _) = dependency();
    let mut client = set
        .keyed_layer(by_host)
        .unwrap()
        .layer(dependency.map_request(|(_, call): Request| call));
    assert!(send(&mut client, "a", Call::Fail).await.is_err());
    assert_eq!(set.handle(&"a").unwrap().state(), State::Closed);
    assert_eq!(send(&mut client, "a", Call::Ok).await.unwrap(), "ok");
    assert_eq!(set.handle(&"a").unwrap().state(), State::Open);
}

/// A classifier whose clone panics once `armed` is on (the next clone only).
struct PanickingClone {
    armed: Arc<AtomicBool>,
}

impl Clone for PanickingClone {
    fn clone(&self) -> Self {
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("the classifier failed");
        }
        PanickingClone {
            armed: self.armed.clone(),
        }
    }
}

impl Classify<&'static str, BoxError> for PanickingClone {
    fn classify(&self, result: Result<&&'static str, &BoxError>, _: Duration) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// A call whose classifier panics as it is cloned for the call, after the key's breaker admitted
/// it, hands its permit back as the panic unwinds: a half-open key's only probe slot is not lost.
#[tokio::test(start_paused = true)]
async fn a_classifier_that_panics_in_call_does_not_keep_a_probe_slot() {
    let armed = Arc::new(AtomicBool::new(false));
    let classifier = PanickingClone {
        armed: armed.clone(),
    };
    let set = BreakerSet::with_classifier(config().build_config().unwrap(), 8, classifier).unwrap();
    let (dependency, reached) = dependency();
    let mut client = set
        .keyed_layer(by_host)
        .unwrap()
        .layer(dependency.map_request(|(_, call): Request| call));
    assert!(send(&mut client, "a", Call::Fail).await.is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let handle = set.handle(&"a").unwrap();
    assert_eq!(handle.state(), State::HalfOpen);

    let ready = client.ready().await.unwrap();
    armed.store(true, Ordering::SeqCst);
    let called = panic::catch_unwind(AssertUnwindSafe(|| ready.call(("a", Call::Ok))));
    assert!(!armed.load(Ordering::SeqCst), "the classifier panicked");
    assert!(called.is_err(), "the panic reaches the caller");
    assert_eq!(reached.get(), 1, "the call was not made");
    assert_eq!(handle.snapshot().probes_in_use, 0);
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(send(&mut client, "a", Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

/// A rejected call gives back what its inner service's readiness held (here the one place of a
/// concurrency limit below), and an admitted one calls the inner service it polled ready (a
/// fresh clone of a `ConcurrencyLimit` holds no permit, and panics when called).
#[tokio::test(start_paused = true)]
async fn a_rejected_call_gives_back_what_readiness_held() {
    let set = set(8);
    let (dependency, _) = dependency();
    let limited =
        tower::limit::ConcurrencyLimit::new(dependency.map_request(|(_, call): Request| call), 1);
    let layer = set.keyed_layer(by_host).unwrap();
    let mut first = layer.layer(limited);
    let mut second = first.clone();
    let _ = send(&mut first, "a", Call::Fail).await;

    let ready = first.ready().await.unwrap();
    let mut waiting = task::spawn(second.ready());
    assert_pending!(waiting.poll(), "the limit's one place is taken");
    assert!(rejected(&ready.call(("a", Call::Ok)).await));
    assert!(waiting.is_woken());
    assert!(assert_ready!(waiting.poll()).is_ok());
    drop(waiting);
    assert_eq!(send(&mut second, "b", Call::Ok).await.unwrap(), "ok");
}

#[test]
fn a_set_with_backpressure_is_refused() {
    let set: BreakerSet<&'static str> =
        BreakerSet::new(config().backpressure(true).build_config().unwrap(), 8).unwrap();
    let err = set.keyed_layer(by_host).unwrap_err();
    assert_eq!(err.field(), "backpressure");
}

#[test]
fn layer_and_service_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    type Key = fn(&http::Request<()>) -> String;
    type Svc = KeyedBreaker<tower_test::mock::Mock<http::Request<()>, ()>, String, Key>;
    type Future = seawall::breaker::ResponseFuture<
        tower_test::mock::future::ResponseFuture<()>,
        seawall::core::classify::DefaultClassifier,
    >;
    check::<KeyedBreakerLayer<String, Key>>();
    check::<Svc>();
    // The future is the plain breaker's (checked with it in `readiness.rs`).
    let _: fn(&mut Svc, http::Request<()>) -> Future = Service::call;
}
