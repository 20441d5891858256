//! An endpoint's own breaker that opens between the balancer polling the endpoint ready and the
//! call (another caller's failure trips it, a half-open probe's time runs out) rejects the
//! attempt with `EndpointOpen`, not the dependency breaker's `Open`: the retry sends the attempt
//! to another endpoint, the dependency breaker counts nothing against the dependency, and the
//! balancer's outlier detection nothing against the endpoint. A
//! breaker inside the endpoint's service is not the endpoint's breaker: its `Open` reaches the
//! caller as it is, and counts against the endpoint unless the set's classifier and the
//! balancer's ignore it. In paused time, on a current-thread runtime (the metrics recorder is the
//! thread's).

use seawall::{
    balance::Picker,
    breaker::{BreakerConfig, BreakerLayer, BreakerSet, Open, State},
    core::{
        classify::{ClassifyExt, DefaultClassifier},
        error::{find, is_not_sent},
        metrics::{self as names, testing::TestRecorder},
        BoxError, RequestDeadline,
    },
    discover,
    stack::{ClientStack, EndpointOpen},
};
use std::{
    future::{ready, Ready},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::SeqCst},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// The balancer's seed, so that every run starts its round robin turns on the same endpoint
/// (from this seed, "a"). The tests' assertions hold from either start.
const SEED: u64 = 1;

#[derive(Debug, Clone, Default)]
struct Req {
    deadline: Option<Instant>,
}

impl RequestDeadline for Req {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
}

/// An endpoint answering with its key. Endpoint "a" trips its own breaker from the set on its
/// first `poll_ready`, after the breaker has admitted the call and polls it ready.
#[derive(Clone)]
struct Endpoint {
    key: &'static str,
    set: BreakerSet<&'static str>,
    tripped: Arc<AtomicBool>,
    calls: Arc<AtomicU32>,
}

impl Service<Req> for Endpoint {
    type Response = &'static str;
    type Error = BoxError;
    type Future = Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.key == "a" && !self.tripped.swap(true, SeqCst) {
            self.set.handle(&"a").expect("a's breaker").force_open();
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        ready(Ok(self.key))
    }
}

/// What the tests look at: the per-endpoint breakers, whether "a" tripped its breaker, the calls
/// "a" and "b" answered.
struct Setup {
    set: BreakerSet<&'static str>,
    tripped: Arc<AtomicBool>,
    calls: [Arc<AtomicU32>; 2],
}

impl Setup {
    fn new() -> Self {
        let set = BreakerSet::new(
            BreakerConfig::builder()
                .name("endpoint")
                .build_config()
                .unwrap(),
            16,
        )
        .unwrap();
        Setup {
            set,
            tripped: Arc::new(AtomicBool::new(false)),
            calls: [Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0))],
        }
    }

    /// Makes endpoint `key`'s service.
    fn endpoints(&self) -> impl FnMut(&&'static str) -> Endpoint {
        let (set, tripped, calls) = (self.set.clone(), self.tripped.clone(), self.calls.clone());
        move |key| Endpoint {
            key,
            set: set.clone(),
            tripped: tripped.clone(),
            calls: calls[usize::from(*key == "b")].clone(),
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_endpoint_breaker_opening_before_the_call_is_retried_elsewhere() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let setup = Setup::new();
    let stack = ClientStack::builder()
        .map_balance(|balance| balance.picker(Picker::RoundRobin).seed(SEED))
        .endpoint_breakers(setup.set.clone())
        .per_try_timeout(Duration::from_secs(1))
        .build(discover::from_list(["a", "b"], setup.endpoints()))
        .unwrap();
    let Setup {
        tripped,
        calls: [a_calls, b_calls],
        ..
    } = setup;

    // Round robin starts on one of the two (on "a" from `SEED`): within two calls one is picked
    // for "a".
    for call in 0..2 {
        let answer = stack.clone().oneshot(Req::default()).await;
        assert_eq!(answer.unwrap(), "b", "call {call}");
    }
    assert!(tripped.load(SeqCst), "a was polled ready");
    assert_eq!(a_calls.load(SeqCst), 0);
    assert_eq!(b_calls.load(SeqCst), 2);
    // The dependency breaker (the default one, named "breaker") counted no failure: the attempt
    // "a"'s breaker rejected is ignored.
    assert_eq!(recorder.counter(names::BREAKER_FAILURES, "breaker"), 0);
    assert_eq!(recorder.counter(names::BREAKER_IGNORED, "breaker"), 1);
    assert_eq!(recorder.counter(names::BREAKER_SUCCESSES, "breaker"), 2);
}

/// Without a retry the caller sees the rejection: an `EndpointOpen`, which proves the request
/// was never sent and is no `Open`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_rejection_is_endpoint_open_never_sent() {
    let setup = Setup::new();
    let stack = ClientStack::builder()
        .without_retry()
        .map_balance(|balance| balance.picker(Picker::RoundRobin).seed(SEED))
        .endpoint_breakers(setup.set.clone())
        .per_try_timeout(Duration::from_secs(1))
        .build(discover::from_list(["a", "b"], setup.endpoints()))
        .unwrap();
    let Setup {
        tripped,
        calls: [a_calls, _],
        ..
    } = setup;
    let mut rejected = Vec::new();
    for _ in 0..2 {
        if let Err(error) = stack.clone().oneshot(Req::default()).await {
            rejected.push(error);
        }
    }
    assert!(tripped.load(SeqCst));
    assert_eq!(a_calls.load(SeqCst), 0);
    let [error] = &rejected[..] else {
        panic!("one call rejected: {rejected:?}");
    };
    assert!(find::<EndpointOpen>(&**error).is_some(), "{error:?}");
    assert!(find::<Open>(&**error).is_none(), "{error:?}");
    assert!(is_not_sent(&**error));
    assert_eq!(error.to_string(), "endpoint's circuit breaker is open");
    // A retry above a generated client sends it again, even one for a method that must not run
    // twice: as it is, and as the status `StatusLayer` makes of it.
    #[cfg(feature = "grpc")]
    {
        use seawall::{
            core::classify::Classify,
            grpc::{to_status, RetryClassifier},
            Outcome,
        };
        let error = rejected.pop().unwrap();
        let classify = |error: &BoxError| {
            Classify::<(), BoxError>::classify(
                &RetryClassifier::unsent_only(),
                Err(error),
                Duration::ZERO,
            )
        };
        assert_eq!(classify(&error), Outcome::Failure);
        let status: BoxError = Box::new(to_status(error));
        assert_eq!(classify(&status), Outcome::Failure);
    }
}

/// An endpoint whose breaker rejects the attempt the balancer gave it (an operator forcing it
/// open between the pick and the call, five times, the breaker reset after each) is not charged
/// with it: the attempt was never sent, so outlier detection, which ejects after five failures
/// in a row, counts nothing against the endpoint and never ejects it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_endpoint_breaker_rejection_counts_nothing_against_the_endpoint() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let setup = Setup::new();
    let stack = ClientStack::builder()
        .without_retry()
        .map_balance(|balance| balance.picker(Picker::RoundRobin).seed(SEED))
        .endpoint_breakers(setup.set.clone())
        .per_try_timeout(Duration::from_secs(1))
        .build(discover::from_list(["a", "b"], setup.endpoints()))
        .unwrap();
    let mut rejected = 0;
    // Round robin takes turns: every other call is "a"'s, which its breaker rejects.
    for _ in 0..10 {
        match stack.clone().oneshot(Req::default()).await {
            Ok(answer) => assert_eq!(answer, "b"),
            Err(error) => {
                assert!(find::<EndpointOpen>(&*error).is_some(), "{error:?}");
                rejected += 1;
            }
        }
        setup.set.handle(&"a").expect("a's breaker").reset();
        setup.tripped.store(false, SeqCst);
    }
    assert_eq!(rejected, 5);
    assert_eq!(setup.calls[0].load(SeqCst), 0);
    assert_eq!(recorder.counter(names::BALANCE_EJECTIONS, "balance"), 0);
    assert_ne!(
        recorder.gauge(names::BALANCE_UNHEALTHY_ENDPOINTS, "balance"),
        Some(1.0)
    );
}

/// A breaker of the user's inside each endpoint's service (one breaker of a database every
/// endpoint shares, here forced open) rejects with its own `Open`, which the stack passes up as it
/// is: it is not the endpoint's breaker's `EndpointOpen`, so the retry returns it at once, as the
/// dependency's `Open`, and the dependency breaker counts it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_open_from_inside_an_endpoint_is_not_endpoint_open() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let setup = Setup::new();
    let database = BreakerLayer::builder().name("database").build().unwrap();
    database.handle().force_open();
    let attempts = Arc::new(AtomicU32::new(0));
    let counted = attempts.clone();
    let stack = ClientStack::builder()
        .map_balance(|balance| balance.picker(Picker::RoundRobin).seed(SEED))
        .endpoint_breakers(setup.set.clone())
        .per_try_timeout(Duration::from_secs(1))
        .build(discover::from_list(["a", "b"], move |_: &&str| {
            let attempts = counted.clone();
            let database =
                database.layer(service_fn(|_: Req| async { Ok::<_, BoxError>("answered") }));
            service_fn(move |req: Req| {
                attempts.fetch_add(1, SeqCst);
                database.clone().oneshot(req)
            })
        }))
        .unwrap();
    let error = stack.oneshot(Req::default()).await.unwrap_err();
    assert!(error.downcast_ref::<Open>().is_some(), "{error:?}");
    assert!(find::<EndpointOpen>(&*error).is_none(), "{error:?}");
    assert_eq!(attempts.load(SeqCst), 1);
    assert_eq!(recorder.counter(names::BREAKER_FAILURES, "breaker"), 1);
    assert_eq!(recorder.counter(names::BREAKER_IGNORED, "breaker"), 0);
}

/// The `Open` of a breaker inside every endpoint (one database breaker they share) counts
/// against each endpoint, in its breaker and in outlier detection, like any error, unless the
/// set's classifier and the balancer's ignore it: with `ignore_error::<Open>()` on both (it finds
/// the `Open` under the stack's wrapper, and an endpoint's breaker never classifies its own
/// rejection), every call ends with the database's `Open`, and the endpoints' breakers, which
/// two failures would open, stay Closed.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn an_open_from_inside_an_endpoint_counts_against_no_endpoint_once_ignored() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let ignore_open = DefaultClassifier.ignore_error::<Open>();
    let set = BreakerSet::with_classifier(
        BreakerConfig::builder()
            .name("endpoint")
            .minimum_calls(2)
            .build_config()
            .unwrap(),
        16,
        ignore_open,
    )
    .unwrap();
    let database = BreakerLayer::builder().name("database").build().unwrap();
    database.handle().force_open();
    let stack = ClientStack::builder()
        .without_breaker()
        .map_balance(|balance| {
            balance
                .classifier(ignore_open)
                .picker(Picker::RoundRobin)
                .seed(SEED)
        })
        .endpoint_breakers(set.clone())
        .per_try_timeout(Duration::from_secs(1))
        .build(discover::from_list(["a", "b"], move |_: &&str| {
            let database =
                database.layer(service_fn(|_: Req| async { Ok::<_, BoxError>("answered") }));
            service_fn(move |req: Req| database.clone().oneshot(req))
        }))
        .unwrap();
    for call in 0..10 {
        let error = stack.clone().oneshot(Req::default()).await.unwrap_err();
        assert!(
            error.downcast_ref::<Open>().is_some(),
            "call {call}: {error:?}"
        );
    }
    for key in ["a", "b"] {
        let handle = set.handle(&key).expect("a breaker per endpoint");
        assert_eq!(handle.state(), State::Closed, "{key}");
    }
    assert_eq!(recorder.counter(names::BREAKER_FAILURES, "endpoint"), 0);
    assert_eq!(recorder.counter(names::BREAKER_IGNORED, "endpoint"), 10);
    assert_eq!(recorder.counter(names::BALANCE_EJECTIONS, "balance"), 0);
}
