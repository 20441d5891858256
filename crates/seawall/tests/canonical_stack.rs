//! The canonical client stack from `ClientStack::builder()`, over in-process endpoints in paused
//! time: one endpoint fails every call, one is slow, the others are healthy.

use seawall::{
    balance::{BalanceEvent, BalanceLayer, OutlierDetection, Picker},
    breaker::{BreakerConfig, BreakerLayer, BreakerSet, Open, SlidingWindow, State},
    bulkhead::{
        ratelimit::{Limited, RateLimitLayer},
        BulkheadLayer, Full,
    },
    core::{
        classify::{ClassifyExt, HttpClassifier},
        error::{find, is},
        metrics::{self as names, testing::TestRecorder},
        BoxError, RequestDeadline,
    },
    discover,
    fallback::FallbackLayer,
    retry::{RetryBudget, RetryEvent, RetryLayer},
    stack::ClientStack,
    timeout::{Elapsed, TimeoutEvent, TimeoutLayer},
};
use std::{
    collections::HashMap,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::time::Instant;
use tower::{discover::Change, service_fn, Service, ServiceExt};

#[derive(Debug, Clone, Default)]
struct Req {
    deadline: Option<Instant>,
    /// A `TimeoutOverride`.
    timeout: Option<Duration>,
}

impl RequestDeadline for Req {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
    fn timeout_override(&self) -> Option<Duration> {
        self.timeout
    }
}

/// Calls each endpoint received, by key.
#[derive(Clone, Default)]
struct Calls(
    Arc<Mutex<HashMap<&'static str, usize>>>,
    /// Calls that reached an endpoint without a deadline on the request.
    Arc<AtomicUsize>,
);

impl Calls {
    fn get(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

type Endpoint = tower::util::BoxCloneSyncService<Req, &'static str, BoxError>;

/// `bad` fails at once, `slow` answers after 5 s, `hung` after an hour, `steady` after 300 ms,
/// every other key answers at once.
fn endpoints(keys: &[&'static str], calls: &Calls) -> discover::Discovery<&'static str, Endpoint> {
    discover::from_list(keys.to_vec(), endpoint(calls))
}

/// Makes the service of an endpoint key, as [`endpoints`] describes.
fn endpoint(calls: &Calls) -> impl FnMut(&&'static str) -> Endpoint + Send + 'static {
    let calls = calls.clone();
    move |key: &&'static str| {
        let key = *key;
        let calls = calls.clone();
        tower::util::BoxCloneSyncService::new(service_fn(move |req: Req| {
            *calls.0.lock().unwrap().entry(key).or_default() += 1;
            if req.deadline.is_none() {
                calls.1.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                match key {
                    "bad" => Err::<_, BoxError>("connection reset".into()),
                    "slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(key)
                    }
                    "hung" => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(key)
                    }
                    "steady" => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok(key)
                    }
                    _ => Ok(key),
                }
            }
        }))
    }
}

fn endpoint_breakers() -> BreakerSet<&'static str> {
    BreakerSet::new(
        BreakerConfig::builder()
            .name("endpoint")
            .sliding_window(SlidingWindow::count(10))
            .minimum_calls(3)
            .wait_duration(Duration::from_secs(60))
            .jitter(0.0)
            .build_config()
            .unwrap(),
        16,
    )
    .unwrap()
}

/// A stack of a round-robin balancer (no outlier detection) over `discover`, each endpoint under its
/// breaker from `breakers`, and nothing else.
fn breakers_stack<D>(
    breakers: &BreakerSet<&'static str>,
    discover: D,
) -> ClientStack<Req, &'static str>
where
    D: tower::discover::Discover<Key = &'static str, Service = Endpoint> + Send + 'static,
    D::Error: std::error::Error + Send + Sync + 'static,
{
    ClientStack::builder()
        .without_retry()
        .without_breaker()
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection::disabled()),
        )
        .endpoint_breakers(breakers.clone())
        .build(discover)
        .unwrap()
}

/// Lets the balancer's task apply what discovery published.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn retry_counter() -> (RetryLayer, Arc<AtomicUsize>) {
    let retries = Arc::new(AtomicUsize::new(0));
    let seen = retries.clone();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .budget(RetryBudget::unlimited())
        .seed(1)
        .on_event(move |_: &seawall::Name, event: &RetryEvent| {
            if matches!(event, RetryEvent::Retry { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    (layer, retries)
}

#[tokio::test(start_paused = true)]
async fn calls_succeed_while_one_endpoint_fails_and_one_is_slow() {
    let calls = Calls::default();
    let breakers = endpoint_breakers();
    let (retry, retries) = retry_counter();
    let dependency = BreakerLayer::new();
    let dependency_state = dependency.handle();
    let client = ClientStack::builder()
        .timeout(Duration::from_secs(2))
        .retry(retry)
        .breaker(dependency)
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection::disabled())
                .seed(3),
        )
        .endpoint_breakers(breakers.clone())
        .per_try_timeout(Duration::from_millis(200))
        .build(endpoints(&["good-1", "bad", "slow", "good-2"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    for i in 0..200 {
        let answer = client.clone().oneshot(Req::default()).await;
        assert!(
            matches!(answer, Ok("good-1" | "good-2")),
            "call {i}: {answer:?}"
        );
    }
    // The per-endpoint breakers opened on the failing endpoint and on the slow one (its per-try
    // timeouts count as failures), and the balancer skipped them from then on.
    assert_eq!(breakers.handle(&"bad").unwrap().state(), State::Open);
    assert_eq!(breakers.handle(&"slow").unwrap().state(), State::Open);
    assert_eq!(breakers.handle(&"good-1").unwrap().state(), State::Closed);
    // The retry re-picked healthy endpoints: the dependency as a whole looks healthy.
    assert_eq!(dependency_state.state(), State::Closed);
    assert!(calls.get("bad") <= 3, "bad called {}", calls.get("bad"));
    assert!(calls.get("slow") <= 3, "slow called {}", calls.get("slow"));
    // The failed attempts were retried on another endpoint.
    let r = retries.load(Ordering::SeqCst);
    assert!((1..=6).contains(&r), "{r} retries");
    assert_eq!(calls.total(), 200 + r);
    assert_eq!(
        calls.1.load(Ordering::SeqCst),
        0,
        "the total timeout writes the deadline every attempt carries"
    );
}

/// Discovery removes the endpoint whose breaker is Open: the set drops its breaker, so it no
/// longer counts in `seawall_breaker_keys_open` (nor takes a place in the set), and the endpoint
/// added again starts Closed.
#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_breaker_leaves_the_set() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let keys_open = || recorder.gauge(names::BREAKER_KEYS_OPEN, "endpoint");
    let calls = Calls::default();
    let breakers = endpoint_breakers();
    let (publish, keys) = tokio::sync::watch::channel(vec!["good-1", "bad"]);
    let client = breakers_stack(&breakers, discover::watch(keys, endpoint(&calls)));
    tokio::task::yield_now().await;
    for _ in 0..20 {
        let _ = client.clone().oneshot(Req::default()).await;
    }
    assert_eq!(breakers.handle(&"bad").unwrap().state(), State::Open);
    assert_eq!(keys_open(), Some(1.0));

    publish.send(vec!["good-1"]).unwrap();
    settle().await;
    assert!(
        breakers.handle(&"bad").is_none(),
        "the removed endpoint's breaker is still in the set"
    );
    assert_eq!(breakers.len(), 1);
    assert_eq!(keys_open(), Some(0.0));

    publish.send(vec!["good-1", "bad"]).unwrap();
    settle().await;
    assert_eq!(breakers.handle(&"bad").unwrap().state(), State::Closed);
    assert_eq!(keys_open(), Some(0.0));
}

/// An endpoint an operator drained with `force_open` keeps its breaker when discovery removes it
/// for a while: back, it is still forced open (and still counts as open), not a fresh Closed one.
#[tokio::test(start_paused = true)]
async fn a_removed_endpoints_forced_open_breaker_stays_in_the_set() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let keys_open = || recorder.gauge(names::BREAKER_KEYS_OPEN, "endpoint");
    let calls = Calls::default();
    let breakers = endpoint_breakers();
    let (publish, keys) = tokio::sync::watch::channel(vec!["good-1", "drained"]);
    let client = breakers_stack(&breakers, discover::watch(keys, endpoint(&calls)));
    tokio::task::yield_now().await;
    breakers.handle(&"drained").unwrap().force_open();
    assert_eq!(keys_open(), Some(1.0));

    publish.send(vec!["good-1"]).unwrap();
    settle().await;
    assert_eq!(
        breakers.handle(&"drained").map(|h| h.state()),
        Some(State::ForcedOpen),
        "the operator's choice was dropped with the endpoint"
    );
    assert_eq!(keys_open(), Some(1.0));

    publish.send(vec!["good-1", "drained"]).unwrap();
    settle().await;
    assert_eq!(
        breakers.handle(&"drained").unwrap().state(),
        State::ForcedOpen
    );
    for _ in 0..10 {
        assert_eq!(
            client.clone().oneshot(Req::default()).await.unwrap(),
            "good-1"
        );
    }
    assert_eq!(
        calls.get("drained"),
        0,
        "the balancer skips the drained endpoint"
    );
}

/// A discovery stream the test feeds by hand: it can remove a key it never inserted.
struct Changes(tokio::sync::mpsc::UnboundedReceiver<Change<&'static str, Endpoint>>);

impl futures_core::Stream for Changes {
    type Item = Result<Change<&'static str, Endpoint>, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|change| change.map(Ok))
    }
}

/// The stack lets go of the breakers of the endpoints its discovery inserted, and of no other:
/// a remove of a key it never inserted leaves that key's breaker (another user's) in the set.
#[tokio::test(start_paused = true)]
async fn a_remove_of_a_key_never_inserted_leaves_its_breaker() {
    let calls = Calls::default();
    let breakers = endpoint_breakers();
    let elsewhere = breakers.get(&"elsewhere");
    let (changes, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut make = endpoint(&calls);
    changes
        .send(Change::Insert("good-1", make(&"good-1")))
        .unwrap();
    changes
        .send(Change::Insert("good-2", make(&"good-2")))
        .unwrap();
    let client = breakers_stack(&breakers, Changes(rx));
    tokio::task::yield_now().await;
    assert_eq!(breakers.len(), 3);

    changes.send(Change::Remove("elsewhere")).unwrap();
    changes.send(Change::Remove("good-2")).unwrap();
    settle().await;
    assert!(
        breakers
            .handle(&"elsewhere")
            .is_some_and(|h| h.same_breaker(&elsewhere.handle())),
        "a breaker the stack never took was dropped"
    );
    assert!(breakers.handle(&"good-2").is_none());
    assert_eq!(breakers.len(), 2);
    assert_eq!(
        client.clone().oneshot(Req::default()).await.unwrap(),
        "good-1"
    );
}

#[tokio::test(start_paused = true)]
async fn outlier_detection_ejects_the_failing_endpoint() {
    let calls = Calls::default();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let client = ClientStack::builder()
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection {
                    consecutive_failures: Some(3),
                    max_ejection_percent: 0.5,
                    ..OutlierDetection::default()
                })
                .on_event(move |_: &seawall::Name, e: &BalanceEvent| {
                    seen.lock().unwrap().push(e.clone())
                })
                .seed(3),
        )
        .build(endpoints(&["good-1", "bad", "good-2"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    for i in 0..100 {
        let answer = client.clone().oneshot(Req::default()).await;
        assert!(answer.is_ok(), "call {i}: {answer:?}");
    }
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, BalanceEvent::Ejected { key, .. } if key == "\"bad\"")));
    assert_eq!(calls.get("bad"), 3, "ejected after three failures in a row");
}

type HttpEndpoint =
    tower::util::BoxCloneSyncService<http::Request<()>, http::Response<&'static str>, BoxError>;

/// HTTP endpoints by key: `unavailable` answers every call with a 503 (an `Ok` response, as hyper
/// and reqwest return one), every other key with a 200 whose body is the key.
fn http_endpoints(
    keys: &[&'static str],
    calls: &Calls,
) -> discover::Discovery<&'static str, HttpEndpoint> {
    let calls = calls.clone();
    discover::from_list(keys.to_vec(), move |key: &&'static str| {
        let key = *key;
        let calls = calls.clone();
        HttpEndpoint::new(service_fn(move |_: http::Request<()>| {
            *calls.0.lock().unwrap().entry(key).or_default() += 1;
            let status = match key {
                "unavailable" => http::StatusCode::SERVICE_UNAVAILABLE,
                _ => http::StatusCode::OK,
            };
            let mut response = http::Response::new(key);
            *response.status_mut() = status;
            std::future::ready(Ok::<_, BoxError>(response))
        }))
    })
}

/// An HTTP stack built by hand, with named pieces and per-endpoint breakers: the dependency
/// breaker, the per-endpoint breakers and the balancer classify with `HttpClassifier`, so an
/// endpoint that answers every call with a 503 (`Ok` to the client) is a failing one. Its breaker opens, outlier
/// detection ejects it, the retry sends its calls elsewhere, and the dependency stays Closed.
#[tokio::test(start_paused = true)]
async fn an_http_endpoint_answering_503_is_taken_out() {
    let calls = Calls::default();
    let ejected = Arc::new(Mutex::new(Vec::new()));
    let seen = ejected.clone();
    let breakers = BreakerSet::with_classifier(
        BreakerConfig::builder()
            .name("users-api-endpoint")
            .sliding_window(SlidingWindow::count(10))
            .minimum_calls(3)
            .wait_duration(Duration::from_secs(60))
            .jitter(0.0)
            .build_config()
            .unwrap(),
        16,
        HttpClassifier::new(),
    )
    .unwrap();
    let dependency = BreakerLayer::builder()
        .name("users-api")
        .build_with(HttpClassifier::new())
        .unwrap();
    let dependency_state = dependency.handle();
    let client = ClientStack::builder()
        .timeout(Duration::from_secs(2))
        .retry(
            RetryLayer::builder()
                .http()
                .ignore_error::<Open>()
                .budget(RetryBudget::unlimited())
                .seed(1)
                .build()
                .unwrap(),
        )
        .breaker(dependency)
        .balance(
            BalanceLayer::builder()
                .name("users-api")
                .picker(Picker::RoundRobin)
                .classifier(HttpClassifier::new())
                .outlier_detection(OutlierDetection {
                    consecutive_failures: Some(3),
                    max_ejection_percent: 0.5,
                    ..OutlierDetection::default()
                })
                .on_event(move |_: &seawall::Name, e: &BalanceEvent| {
                    if let BalanceEvent::Ejected { key, .. } = e {
                        seen.lock().unwrap().push(key.clone());
                    }
                })
                .seed(3),
        )
        .endpoint_breakers(breakers.clone())
        .per_try_timeout(Duration::from_millis(500))
        .build(http_endpoints(&["ok-1", "unavailable", "ok-2"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    for i in 0..50 {
        let answer = client
            .clone()
            .oneshot(http::Request::new(()))
            .await
            .unwrap();
        assert_eq!(answer.status(), http::StatusCode::OK, "call {i}");
    }
    assert_eq!(
        breakers.handle(&"unavailable").unwrap().state(),
        State::Open
    );
    assert_eq!(breakers.handle(&"ok-1").unwrap().state(), State::Closed);
    assert_eq!(
        *ejected.lock().unwrap(),
        vec!["\"unavailable\"".to_string()]
    );
    assert!(
        calls.get("unavailable") <= 3,
        "unavailable called {}",
        calls.get("unavailable")
    );
    // The dependency breaker counted each 503 attempt, and the retry made the calls succeed.
    assert_eq!(dependency_state.state(), State::Closed);
    assert_eq!(
        dependency_state.snapshot().failures as usize,
        calls.get("unavailable")
    );
    assert_eq!(calls.total(), 50 + calls.get("unavailable"));
}

/// One HTTP endpoint's first answer in the flaky-endpoint tests: an error, a connection reset.
fn connection_reset() -> Result<http::Response<&'static str>, BoxError> {
    Err("connection reset".into())
}

/// One HTTP endpoint whose first call answers `first()` and whose later calls answer 200;
/// `attempts` counts its calls.
fn http_endpoint_failing_once(
    attempts: &Arc<AtomicUsize>,
    first: fn() -> Result<http::Response<&'static str>, BoxError>,
) -> discover::Discovery<&'static str, HttpEndpoint> {
    let attempts = attempts.clone();
    discover::from_list(vec!["flaky"], move |_: &&'static str| {
        let attempts = attempts.clone();
        HttpEndpoint::new(service_fn(move |_: http::Request<()>| {
            let answer = match attempts.fetch_add(1, Ordering::SeqCst) {
                0 => first(),
                _ => Ok(http::Response::new("flaky")),
            };
            std::future::ready(answer)
        }))
    })
}

type HttpDiscovery = discover::Discovery<&'static str, HttpEndpoint>;
type HttpClient = ClientStack<http::Request<()>, http::Response<&'static str>>;

/// Sends `request` once through the client `build` makes over an [`http_endpoint_failing_once`]
/// with `first`: the answer, and how many attempts reached the endpoint.
async fn attempts_of<S>(
    first: fn() -> Result<http::Response<&'static str>, BoxError>,
    build: impl FnOnce(HttpDiscovery) -> S,
    request: http::Request<()>,
) -> (Result<http::Response<&'static str>, BoxError>, usize)
where
    S: Service<http::Request<()>, Response = http::Response<&'static str>, Error = BoxError>,
{
    let attempts = Arc::new(AtomicUsize::new(0));
    let client = build(http_endpoint_failing_once(&attempts, first));
    tokio::task::yield_now().await;
    let answer = client.oneshot(request).await;
    (answer, attempts.load(Ordering::SeqCst))
}

/// `ClientStack::http_builder()` over `endpoint`, with a seeded balancer.
fn http_preset(endpoint: HttpDiscovery) -> HttpClient {
    ClientStack::http_builder()
        .map_balance(|balance| balance.seed(1))
        .build(endpoint)
        .unwrap()
}

fn post() -> http::Request<()> {
    http::Request::post("/orders").body(()).unwrap()
}

/// Over the client `build` makes, a POST whose first attempt fails with an error is returned as
/// it is, after one attempt; a GET whose first attempt does is sent again, and answers.
async fn a_failed_post_is_sent_once_and_a_failed_get_again(build: fn(HttpDiscovery) -> HttpClient) {
    let (answer, attempts) = attempts_of(connection_reset, build, post()).await;
    let err = answer.unwrap_err();
    assert!(err.to_string().contains("connection reset"), "{err}");
    assert_eq!(attempts, 1);

    let (answer, attempts) = attempts_of(connection_reset, build, http::Request::new(())).await;
    assert_eq!(*answer.unwrap().body(), "flaky");
    assert_eq!(attempts, 2);
}

/// The default retry reads no method: a POST that fails with an error is sent again, as the module
/// docs and `docs/composition.md` say.
#[tokio::test(start_paused = true)]
async fn the_default_retry_sends_a_failed_post_again() {
    let default_stack = |endpoint| ClientStack::builder().build(endpoint).unwrap();
    let (answer, attempts) = attempts_of(connection_reset, default_stack, post()).await;
    assert_eq!(*answer.unwrap().body(), "flaky");
    assert_eq!(attempts, 2);
}

/// With the HTTP policy the docs recommend over HTTP, a failed POST is returned as it is, and a
/// failed GET is retried.
#[tokio::test(start_paused = true)]
async fn the_http_retry_sends_a_failed_post_once() {
    let http_retry_stack = |endpoint| {
        ClientStack::builder()
            .retry(
                RetryLayer::builder()
                    .http()
                    .ignore_error::<Open>()
                    .build()
                    .unwrap(),
            )
            .build(endpoint)
            .unwrap()
    };
    a_failed_post_is_sent_once_and_a_failed_get_again(http_retry_stack).await;
}

/// `ClientStack::http_builder()` over three endpoints, one answering every call with a 503 (an `Ok`
/// response): each 503 is retried on another endpoint, so every call answers 200; the dependency
/// breaker counts each 503 as a failure and stays Closed; and outlier detection, at its default
/// of 5 failures in a row, ejects the endpoint, which is then called no more. Round robin (kept
/// with `map_balance`, which leaves the preset's classifier) makes the picks the same every run.
#[tokio::test(start_paused = true)]
async fn the_http_preset_retries_a_503_and_counts_it_against_the_endpoint() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let calls = Calls::default();
    let client = ClientStack::http_builder()
        .map_balance(|balance| balance.picker(Picker::RoundRobin).seed(3))
        .build(http_endpoints(&["ok-1", "unavailable", "ok-2"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    for i in 0..30 {
        let answer = client
            .clone()
            .oneshot(http::Request::get("/users/7").body(()).unwrap())
            .await
            .unwrap();
        assert_eq!(answer.status(), http::StatusCode::OK, "call {i}");
    }
    // The retry: each 503 was sent again, to another endpoint.
    assert_eq!(calls.total(), 30 + calls.get("unavailable"));
    assert_eq!(
        recorder.counter(names::RETRY_RETRIES, "retry"),
        calls.get("unavailable") as u64
    );
    // Outlier detection: ejected after its fifth 503 in a row, and called no more.
    assert_eq!(recorder.counter(names::BALANCE_EJECTIONS, "balance"), 1);
    assert_eq!(calls.get("unavailable"), 5);
    // The dependency breaker: each 503 a failure, too few to open it.
    assert_eq!(recorder.counter(names::BREAKER_FAILURES, "breaker"), 5);
    assert_eq!(
        recorder.gauge(names::BREAKER_STATE, "breaker"),
        Some(State::Closed.as_gauge())
    );
}

/// `ClientStack::http_builder()`'s retry reads the method: a POST that fails with an error after
/// it was sent is sent once (the server may have applied it), a GET that does is sent again.
#[tokio::test(start_paused = true)]
async fn the_http_preset_sends_a_failed_post_once() {
    a_failed_post_is_sent_once_and_a_failed_get_again(http_preset).await;
}

/// One HTTP endpoint's first answer: a refused connection, as a connector reports it. The
/// request was never sent.
fn connection_refused() -> Result<http::Response<&'static str>, BoxError> {
    Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into())
}

/// One HTTP endpoint's first answer: a 503.
fn unavailable() -> Result<http::Response<&'static str>, BoxError> {
    let mut unavailable = http::Response::new("unavailable");
    *unavailable.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
    Ok(unavailable)
}

/// `ClientStack::http_builder()`'s retry tells a POST that was never sent from one that was: a
/// POST whose connection was refused is sent again and answered; one answered 503 is sent once.
#[tokio::test(start_paused = true)]
async fn the_http_preset_sends_a_post_that_was_never_sent_again() {
    let (answer, attempts) = attempts_of(connection_refused, http_preset, post()).await;
    assert_eq!(*answer.unwrap().body(), "flaky");
    assert_eq!(attempts, 2);

    let (answer, attempts) = attempts_of(unavailable, http_preset, post()).await;
    assert_eq!(
        answer.unwrap().status(),
        http::StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(attempts, 1);
}

/// `ClientStack::http_builder()`'s retry reads the status: a GET answered 503, then 200, returns
/// the 200.
#[tokio::test(start_paused = true)]
async fn the_http_preset_retries_a_get_answered_503() {
    let get = http::Request::get("/users/7").body(()).unwrap();
    let (answer, attempts) = attempts_of(unavailable, http_preset, get).await;
    let answer = answer.unwrap();
    assert_eq!(answer.status(), http::StatusCode::OK);
    assert_eq!(*answer.body(), "flaky");
    assert_eq!(attempts, 2);
}

/// 40 calls at once on `client`, whose rate limit lets 10 through: the answers, and the errors,
/// which are all `Limited`.
async fn forty_calls_at_once<S>(client: S) -> (Vec<http::Response<&'static str>>, usize)
where
    S: Service<http::Request<()>, Response = http::Response<&'static str>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let calls: Vec<_> = (0..40)
        .map(|_| tokio::spawn(client.clone().oneshot(http::Request::new(()))))
        .collect();
    let (mut answers, mut limited) = (Vec::new(), 0);
    for call in calls {
        match call.await.unwrap() {
            Ok(answer) => answers.push(answer),
            Err(err) => {
                let quota = find::<Limited>(&*err).unwrap_or_else(|| panic!("{err}"));
                assert!(quota.retry_after() > Duration::ZERO);
                limited += 1;
            }
        }
    }
    (answers, limited)
}

/// The client's own quota in the rate-limit tests: 10 calls a second.
fn quota_of_10_a_second() -> RateLimitLayer {
    RateLimitLayer::builder()
        .rate(10, Duration::from_secs(1))
        .name("users-api-quota")
        .build()
        .unwrap()
}

/// A client-side rate limit in the bulkhead's place, configured as `docs/composition.md` says:
/// each attempt takes a permit; the dependency breaker ignores `Limited` and the retry returns it
/// at once. 40 calls at once on a quota of 10: 30 are `Limited`, and the dependency breaker,
/// though quick to open, stays Closed with no failure.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_in_the_bulkheads_place_leaves_the_dependency_breaker_closed() {
    let calls = Calls::default();
    let retried = Arc::new(AtomicUsize::new(0));
    let seen = retried.clone();
    let quota = quota_of_10_a_second();
    // Quick to open: counted, the 30 `Limited` would open it. The classifier is
    // `docs/composition.md`'s: a `Limited` is this client's own quota, not the dependency's
    // health, so it counts as neither; every other outcome counts as `HttpClassifier` says.
    let dependency = BreakerLayer::builder()
        .name("users-api")
        .minimum_calls(10)
        .build_with(HttpClassifier::new().ignore_error::<Limited>())
        .unwrap();
    let dependency_state = dependency.handle();
    let client = ClientStack::http_builder()
        .retry(
            RetryLayer::builder()
                .http()
                .ignore_error::<Open>()
                .ignore_error::<Limited>()
                .seed(1)
                .on_event(move |_: &seawall::Name, event: &RetryEvent| {
                    if matches!(event, RetryEvent::Retry { .. }) {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .build()
                .unwrap(),
        )
        .breaker(dependency)
        .bulkhead(
            tower::ServiceBuilder::new()
                .layer(quota)
                .layer(
                    BulkheadLayer::builder()
                        .max_concurrent(100)
                        .build()
                        .unwrap(),
                )
                .into_inner(),
        )
        .map_balance(|balance| balance.name("users-api").seed(1))
        .build(http_endpoints(&["ok-1", "ok-2"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    let (answers, limited) = forty_calls_at_once(client).await;
    assert_eq!((answers.len(), limited), (10, 30));
    assert!(answers.iter().all(|a| a.status() == http::StatusCode::OK));
    assert_eq!(calls.total(), 10);
    assert_eq!(retried.load(Ordering::SeqCst), 0, "a Limited was retried");
    let snapshot = dependency_state.snapshot();
    assert_eq!(snapshot.state, State::Closed);
    assert_eq!((snapshot.calls, snapshot.failures), (10, 0));
}

/// A client-side rate limit above the retry, as `docs/composition.md` shows it: it counts calls,
/// not attempts, so the retries of the calls it admitted take no permit, and no `Limited` reaches
/// the dependency breaker. 40 calls at once on a quota of 10, on two endpoints of which one
/// answers 503: 30 are `Limited`, the 10 admitted are retried past the quota.
#[tokio::test(start_paused = true)]
async fn a_rate_limit_above_the_retry_counts_calls_not_attempts() {
    let calls = Calls::default();
    let retried = Arc::new(AtomicUsize::new(0));
    let seen = retried.clone();
    let quota = quota_of_10_a_second();
    let retry = RetryLayer::builder()
        .http()
        .ignore_error::<Open>()
        .budget(RetryBudget::unlimited())
        .seed(1)
        .on_event(move |_: &seawall::Name, event: &RetryEvent| {
            if matches!(event, RetryEvent::Retry { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let dependency = BreakerLayer::builder()
        .name("users-api")
        .build_with(HttpClassifier::new())
        .unwrap();
    let dependency_state = dependency.handle();
    let client = ClientStack::builder()
        .retry(
            tower::ServiceBuilder::new()
                .layer(quota)
                .layer(retry)
                .into_inner(),
        )
        .breaker(dependency)
        .balance(BalanceLayer::builder().picker(Picker::RoundRobin))
        .build(http_endpoints(&["ok-1", "unavailable"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    let (answers, limited) = forty_calls_at_once(client).await;
    assert_eq!((answers.len(), limited), (10, 30));
    let retried = retried.load(Ordering::SeqCst);
    assert!(retried > 0);
    assert_eq!(calls.total(), 10 + retried);
    let snapshot = dependency_state.snapshot();
    assert_eq!(snapshot.calls as usize, calls.total());
    assert_eq!(snapshot.failures as usize, calls.get("unavailable"));
}

#[tokio::test(start_paused = true)]
async fn the_fallback_sees_breaker_rejections() {
    let calls = Calls::default();
    let breaker = BreakerLayer::new();
    let handle = breaker.handle();
    let client = ClientStack::builder()
        .fallback(
            FallbackLayer::builder()
                .on_error_type::<Open>()
                .build_fn(|_failed| Ok("fallback"))
                .unwrap(),
        )
        .breaker(breaker)
        .without_retry()
        .build(endpoints(&["good-1"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    assert_eq!(
        client.clone().oneshot(Req::default()).await.unwrap(),
        "good-1"
    );
    handle.force_open();
    assert_eq!(
        client.clone().oneshot(Req::default()).await.unwrap(),
        "fallback"
    );
    assert_eq!(
        calls.total(),
        1,
        "an open breaker does not call the endpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn the_fallback_answers_after_the_total_timeout_and_the_retries() {
    let calls = Calls::default();
    let retries = Arc::new(AtomicUsize::new(0));
    let seen = retries.clone();
    let client = ClientStack::builder()
        .fallback(
            FallbackLayer::builder()
                .on_error_type::<Elapsed>()
                .build_fn(|_failed| Ok("fallback"))
                .unwrap(),
        )
        .timeout(Duration::from_secs(1))
        .retry(
            RetryLayer::builder()
                .on_event(move |_: &seawall::Name, event: &RetryEvent| {
                    if matches!(event, RetryEvent::Retry { .. }) {
                        seen.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .seed(1)
                .build()
                .unwrap(),
        )
        .per_try_timeout(Duration::from_millis(400))
        .build(endpoints(&["slow"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    // Outermost, the fallback answers only when the total timeout gives up, at 1 s, after the
    // retry has retried the attempts the per-try timeout cut (at 400 ms and, after a backoff of
    // at most 50 ms, at most 850 ms; the third is cut by the total timeout). A fallback under the
    // retry would answer the first cut attempt, at 400 ms, and nothing would be retried.
    let start = Instant::now();
    assert_eq!(client.oneshot(Req::default()).await.unwrap(), "fallback");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(retries.load(Ordering::SeqCst), 2);
    assert_eq!(calls.get("slow"), 3);
}

#[tokio::test(start_paused = true)]
async fn the_breaker_sees_every_attempt_of_the_retry_above_it() {
    let calls = Calls::default();
    let breaker = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(20))
        .minimum_calls(6)
        .failure_rate_threshold(0.5)
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = breaker.handle();
    let (retry, _) = retry_counter();
    let client = ClientStack::builder()
        .retry(retry)
        .breaker(breaker)
        .balance(BalanceLayer::builder().outlier_detection(OutlierDetection::disabled()))
        .build(endpoints(&["bad"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    for _ in 0..2 {
        assert!(client.clone().oneshot(Req::default()).await.is_err());
    }
    // Two calls of three attempts each: six failures, enough to open.
    assert_eq!(calls.get("bad"), 6);
    assert_eq!(handle.state(), State::Open);
    let err = client.clone().oneshot(Req::default()).await.unwrap_err();
    assert!(is::<Open>(&*err), "{err}");
    assert_eq!(
        calls.get("bad"),
        6,
        "open: retries fail at once, without load"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_retry_returns_an_open_breakers_rejection_at_once() {
    let calls = Calls::default();
    let breaker = BreakerLayer::new();
    let handle = breaker.handle();
    let client = ClientStack::builder()
        .breaker(breaker)
        .build(endpoints(&["good-1"], &calls))
        .unwrap();
    tokio::task::yield_now().await;
    handle.force_open();
    let start = Instant::now();
    let err = client.clone().oneshot(Req::default()).await.unwrap_err();
    assert!(is::<Open>(&*err), "{err}");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no backoff before the answer"
    );
    assert_eq!(calls.get("good-1"), 0);
    // Once it closes, calls go through.
    handle.reset();
    client.oneshot(Req::default()).await.unwrap();
    assert_eq!(calls.get("good-1"), 1);
}

#[tokio::test(start_paused = true)]
async fn the_total_timeout_bounds_the_retries() {
    let calls = Calls::default();
    let retry = RetryLayer::builder()
        .max_attempts(50)
        .budget(RetryBudget::unlimited())
        .seed(1)
        .build()
        .unwrap();
    let client = ClientStack::builder()
        .timeout(Duration::from_secs(1))
        .retry(retry)
        .without_breaker()
        .balance(BalanceLayer::builder().outlier_detection(OutlierDetection::disabled()))
        .per_try_timeout(Duration::from_millis(300))
        .build(endpoints(&["slow"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    let start = Instant::now();
    let err = client.oneshot(Req::default()).await.unwrap_err();
    assert!(is::<Elapsed>(&*err), "{err}");
    assert!(
        start.elapsed() <= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let attempts = calls.get("slow");
    assert!((2..=4).contains(&attempts), "{attempts} attempts in 1 s");
}

#[tokio::test(start_paused = true)]
async fn the_two_timeouts_report_under_different_names() {
    let calls = Calls::default();
    let fired = Arc::new(Mutex::new(Vec::new()));
    let timeout = |duration| {
        let sink = fired.clone();
        TimeoutLayer::builder()
            .timeout(duration)
            .on_event(move |name: &seawall::Name, _: &TimeoutEvent| {
                sink.lock().unwrap().push(name.to_string());
            })
            .build()
            .unwrap()
    };
    let client = ClientStack::builder()
        .timeout(timeout(Duration::from_secs(1)))
        .retry(
            RetryLayer::builder()
                .budget(RetryBudget::unlimited())
                .seed(1)
                .build()
                .unwrap(),
        )
        .without_breaker()
        .balance(BalanceLayer::builder().outlier_detection(OutlierDetection::disabled()))
        .per_try_timeout(timeout(Duration::from_millis(300)))
        .build(endpoints(&["slow"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    let err = client.oneshot(Req::default()).await.unwrap_err();
    assert!(is::<Elapsed>(&*err), "{err}");
    let fired = fired.lock().unwrap().clone();
    assert!(
        fired.iter().any(|name| name == "per_try_timeout"),
        "{fired:?}"
    );
    assert_eq!(
        fired.last().map(String::as_str),
        Some("timeout"),
        "{fired:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_timeout_override_does_not_disable_the_per_try_timeout() {
    let calls = Calls::default();
    let (retry, retries) = retry_counter();
    let client = ClientStack::builder()
        .timeout(Duration::from_secs(2))
        .retry(retry)
        .without_breaker()
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection::disabled()),
        )
        .per_try_timeout(Duration::from_millis(200))
        .build(endpoints(&["hung", "good-1"], &calls))
        .unwrap();
    tokio::task::yield_now().await;
    for i in 0..4 {
        // "This request may take a second overall": the total timeout reads the override, the
        // per-try timeout does not, so an attempt on the hung endpoint is still cut at 200 ms
        // and retried on the other one.
        let req = Req {
            timeout: Some(Duration::from_secs(1)),
            ..Req::default()
        };
        let start = Instant::now();
        let answer = client.clone().oneshot(req).await;
        assert!(matches!(answer, Ok("good-1")), "call {i}: {answer:?}");
        assert!(start.elapsed() < Duration::from_millis(300), "call {i}");
    }
    // Every attempt the hung endpoint got was cut and retried.
    assert!(calls.get("hung") >= 1);
    assert_eq!(retries.load(Ordering::SeqCst), calls.get("hung"));
}

#[tokio::test(start_paused = true)]
async fn a_callers_short_deadline_counts_against_no_endpoint() {
    let calls = Calls::default();
    let breakers = endpoint_breakers();
    let client = ClientStack::builder()
        .timeout(Duration::from_secs(2))
        .without_retry()
        .without_breaker()
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection::disabled()),
        )
        .endpoint_breakers(breakers.clone())
        // Healthy: answers in 300 ms, within its 500 ms per-try timeout.
        .per_try_timeout(Duration::from_millis(500))
        .build(endpoints(&["steady"], &calls))
        .unwrap();
    impatient_callers_charge_no_endpoint(client, &breakers, None).await;
}

#[tokio::test(start_paused = true)]
async fn without_a_total_timeout_a_callers_deadline_is_still_enforced_above_the_endpoints() {
    let calls = Calls::default();
    let breakers = endpoint_breakers();
    let client = ClientStack::builder()
        .without_timeout()
        .without_retry()
        .without_breaker()
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection::disabled()),
        )
        .endpoint_breakers(breakers.clone())
        .per_try_timeout(Duration::from_millis(500))
        .build(endpoints(&["steady"], &calls))
        .unwrap();
    // A shorter timeout override than the caller's deadline: only a total timeout could honor it.
    let shorter = Some(Duration::from_millis(10));
    impatient_callers_charge_no_endpoint(client, &breakers, shorter).await;
}

/// Three calls to a hung endpoint through a stack with a total timeout of `total` and a per-try
/// one of `per_try`, each cut after `cut`: the total timeout cuts them, and the endpoint's
/// breaker counts no failure.
async fn attempts_cut_by_the_total_timeout_charge_no_endpoint(
    total: Duration,
    per_try: Duration,
    cut: Duration,
) {
    let calls = Calls::default();
    let breakers = endpoint_breakers();
    let client = ClientStack::builder()
        .timeout(total)
        .without_retry()
        .without_breaker()
        .balance(
            BalanceLayer::builder()
                .picker(Picker::RoundRobin)
                .outlier_detection(OutlierDetection::disabled()),
        )
        .endpoint_breakers(breakers.clone())
        .per_try_timeout(per_try)
        .build(endpoints(&["hung"], &calls))
        .unwrap();
    tokio::task::yield_now().await;
    for _ in 0..3 {
        let start = Instant::now();
        let err = client.clone().oneshot(Req::default()).await.unwrap_err();
        assert!(is::<Elapsed>(&*err), "{err}");
        assert_eq!(start.elapsed(), cut);
    }
    assert_eq!(calls.get("hung"), 3);
    let breaker = breakers.handle(&"hung").unwrap();
    assert_eq!(breaker.snapshot().failures, 0);
    assert_eq!(breaker.state(), State::Closed);
}

/// A per-try timeout due half a millisecond before the total timeout fires on the same timer
/// tick: the attempt is the total timeout's to cut, and the endpoint is not charged for it.
#[tokio::test(start_paused = true)]
async fn an_attempt_cut_on_the_total_timeouts_tick_counts_against_no_endpoint() {
    attempts_cut_by_the_total_timeout_charge_no_endpoint(
        Duration::from_secs(5),
        Duration::from_micros(4_999_500),
        Duration::from_secs(5),
    )
    .await;
}

/// A total timeout due half a millisecond after the per-try timeout, on the timer's next tick:
/// the attempt is timed at the call's deadline, the total timeout cuts it, and the endpoint is
/// not charged for it.
#[tokio::test(start_paused = true)]
async fn an_attempt_cut_on_the_tick_after_its_own_counts_against_no_endpoint() {
    attempts_cut_by_the_total_timeout_charge_no_endpoint(
        Duration::from_micros(5_000_500),
        Duration::from_secs(5),
        Duration::from_millis(5001),
    )
    .await;
}

/// A call whose deadline passed a millisecond (a timer tick) before it was made fails with
/// `Elapsed` at once and sends nothing: no endpoint is called, and neither breaker nor the
/// bulkhead counts it. So in the total timeout's place without a total timeout.
#[tokio::test(start_paused = true)]
async fn a_call_whose_deadline_has_passed_sends_nothing() {
    for total in [true, false] {
        let calls = Calls::default();
        let breakers = endpoint_breakers();
        let dependency = BreakerLayer::builder().name("dependency").build().unwrap();
        let dependency_state = dependency.handle();
        let bulkhead = BulkheadLayer::builder().max_concurrent(4).build().unwrap();
        let permits = bulkhead.handle();
        let builder = ClientStack::builder();
        let builder = match total {
            true => builder.timeout(Duration::from_secs(2)),
            false => builder.without_timeout(),
        };
        let client = builder
            .breaker(dependency)
            .bulkhead(bulkhead)
            .balance(BalanceLayer::builder().picker(Picker::RoundRobin))
            .endpoint_breakers(breakers.clone())
            .per_try_timeout(Duration::from_millis(500))
            .build(endpoints(&["good-1"], &calls))
            .unwrap();
        tokio::task::yield_now().await;

        let start = Instant::now();
        let req = Req {
            deadline: Some(start - Duration::from_millis(1)),
            timeout: None,
        };
        let err = client.clone().oneshot(req).await.unwrap_err();
        assert!(is::<Elapsed>(&*err), "{err}");
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(
            calls.total(),
            0,
            "an endpoint was called (total timeout: {total})"
        );
        let dependency = dependency_state.snapshot();
        assert_eq!((dependency.calls, dependency.rejected), (0, 0));
        let endpoint = breakers.handle(&"good-1").unwrap().snapshot();
        assert_eq!((endpoint.calls, endpoint.rejected), (0, 0));
        assert_eq!((permits.in_flight(), permits.available()), (0, 4));

        let answer = client.oneshot(Req::default()).await;
        assert!(matches!(answer, Ok("good-1")), "{answer:?}");
        assert_eq!(dependency_state.snapshot().calls, 1);
    }
}

/// Five impatient callers, each with a 100 ms deadline of its own, call the healthy "steady"
/// endpoint (300 ms, within its 500 ms per-try timeout): every call fails at 100 ms with
/// `Elapsed`, the endpoint is not to blame, and a patient caller is then answered.
async fn impatient_callers_charge_no_endpoint<S>(
    client: S,
    breakers: &BreakerSet<&'static str>,
    timeout: Option<Duration>,
) where
    S: Service<Req, Response = &'static str, Error = BoxError> + Clone,
{
    tokio::task::yield_now().await;
    for _ in 0..5 {
        let start = Instant::now();
        let req = Req {
            deadline: Some(start + Duration::from_millis(100)),
            timeout,
        };
        let err = client.clone().oneshot(req).await.unwrap_err();
        assert!(is::<Elapsed>(&*err), "{err}");
        assert_eq!(start.elapsed(), Duration::from_millis(100));
    }
    let breaker = breakers.handle(&"steady").unwrap();
    assert_eq!(breaker.state(), State::Closed);
    assert_eq!(breaker.snapshot().failures, 0);
    let answer = client.clone().oneshot(Req::default()).await;
    assert!(matches!(answer, Ok("steady")), "{answer:?}");
}

#[tokio::test(start_paused = true)]
async fn the_bulkhead_bounds_attempts_in_flight() {
    let calls = Calls::default();
    let bulkhead = BulkheadLayer::builder().max_concurrent(2).build().unwrap();
    let permits = bulkhead.handle();
    let client = ClientStack::builder()
        .bulkhead(bulkhead)
        .without_retry()
        .per_try_timeout(Duration::from_secs(10))
        .build(endpoints(&["slow"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    let running: Vec<_> = (0..2)
        .map(|_| tokio::spawn(client.clone().oneshot(Req::default())))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(permits.in_flight(), 2);
    let err = client.clone().oneshot(Req::default()).await.unwrap_err();
    assert!(is::<Full>(&*err), "{err}");
    for r in running {
        assert_eq!(r.await.unwrap().unwrap(), "slow");
    }
    assert_eq!(permits.available(), 2);
}

/// The bulkhead sits below the dependency breaker: a call it rejects as `Full` is a failure the
/// breaker counts (above the breaker, the breaker would never see it).
#[tokio::test(start_paused = true)]
async fn the_dependency_breaker_counts_the_bulkheads_rejections() {
    let calls = Calls::default();
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let permits = bulkhead.handle();
    let breaker = BreakerLayer::builder()
        .name("users")
        .jitter(0.0)
        .build()
        .unwrap();
    let dependency = breaker.handle();
    let client = ClientStack::builder()
        .breaker(breaker)
        .bulkhead(bulkhead)
        .without_retry()
        .build(endpoints(&["slow"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    let running = tokio::spawn(client.clone().oneshot(Req::default()));
    tokio::task::yield_now().await;
    assert_eq!(permits.in_flight(), 1);
    let err = client.clone().oneshot(Req::default()).await.unwrap_err();
    assert!(is::<Full>(&*err), "{err}");
    let snapshot = dependency.snapshot();
    assert_eq!(snapshot.failures, 1, "{snapshot:?}");
    assert_eq!(running.await.unwrap().unwrap(), "slow");
    assert_eq!(calls.get("slow"), 1);
}

/// The bulkhead sits below the retry: each attempt takes a permit and gives it back when it ends,
/// so none is held while the retry backs off (above the retry, the call would hold one throughout).
#[tokio::test(start_paused = true)]
async fn the_retry_holds_no_permit_between_attempts() {
    let calls = Calls::default();
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let permits = bulkhead.handle();
    let in_flight_at_retry = Arc::new(Mutex::new(Vec::new()));
    let seen = in_flight_at_retry.clone();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .budget(RetryBudget::unlimited())
        .seed(1)
        .on_event(move |_: &seawall::Name, event: &RetryEvent| {
            if matches!(event, RetryEvent::Retry { .. }) {
                seen.lock().unwrap().push(permits.in_flight());
            }
        })
        .build()
        .unwrap();
    let client = ClientStack::builder()
        .retry(retry)
        .without_breaker()
        .bulkhead(bulkhead)
        .balance(BalanceLayer::builder().outlier_detection(OutlierDetection::disabled()))
        .build(endpoints(&["bad"], &calls))
        .unwrap();
    tokio::task::yield_now().await;

    let err = client.oneshot(Req::default()).await.unwrap_err();
    assert!(!is::<Full>(&*err), "{err}");
    assert_eq!(calls.get("bad"), 3);
    assert_eq!(*in_flight_at_retry.lock().unwrap(), vec![0, 0]);
}

#[tokio::test(start_paused = true)]
async fn the_standard_stack_works_unchanged() {
    let calls = Calls::default();
    let mut client = ClientStack::builder()
        .build(endpoints(&["good-1", "good-2"], &calls))
        .unwrap();
    tokio::task::yield_now().await;
    for _ in 0..10 {
        let answer = client.ready().await.unwrap().call(Req::default()).await;
        assert!(answer.is_ok());
    }
    assert_eq!(calls.total(), 10);
}

#[tokio::test(start_paused = true)]
async fn build_checks_that_the_pieces_agree() {
    let calls = Calls::default();
    let err = ClientStack::builder()
        .timeout(Duration::from_secs(1))
        .per_try_timeout(Duration::from_secs(2))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err();
    assert_eq!(err.field(), "per_try_timeout");

    // A total timeout under the default per-try one says how to resolve it.
    let err = ClientStack::builder()
        .timeout(Duration::from_secs(5))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err();
    assert_eq!(err.field(), "per_try_timeout");
    let message = err.to_string();
    assert!(
        message.contains("5s") && message.contains("10s"),
        "{message}"
    );
    assert!(message.contains("without_per_try_timeout"), "{message}");

    // A per-try timeout as long as the total timeout, or of zero, is rejected too; so is a zero
    // total timeout.
    for (total, per_try, field) in [
        (
            Duration::from_secs(2),
            Duration::from_secs(2),
            "per_try_timeout",
        ),
        (Duration::from_secs(2), Duration::ZERO, "per_try_timeout"),
        (Duration::ZERO, Duration::ZERO, "timeout"),
    ] {
        let err = ClientStack::builder()
            .timeout(total)
            .per_try_timeout(per_try)
            .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
            .unwrap_err();
        assert_eq!(err.field(), field, "{total:?} and {per_try:?}: {err}");
    }
    let err = ClientStack::builder()
        .without_timeout()
        .per_try_timeout(Duration::ZERO)
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err();
    assert_eq!(err.field(), "per_try_timeout");
    let message = ClientStack::builder()
        .timeout(Duration::from_secs(2))
        .per_try_timeout(Duration::from_secs(2))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err()
        .to_string();
    assert!(message.contains("shorter than timeout"), "{message}");
    assert!(message.contains("without_per_try_timeout"), "{message}");

    let err = ClientStack::builder()
        .balance(BalanceLayer::builder().panic_threshold(2.0))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err();
    assert_eq!(err.field(), "panic_threshold");
}

/// The total timeout is the stack's one layer that enforces a deadline the caller put on the
/// request (the per-try timeout fires only at its own): one that leaves it to a layer further out
/// would leave it to none.
#[tokio::test(start_paused = true)]
async fn a_total_timeout_that_leaves_the_callers_deadline_is_rejected() {
    let calls = Calls::default();
    let lenient = TimeoutLayer::builder()
        .timeout(Duration::from_secs(30))
        .enforce_outer_deadline(false)
        .build()
        .unwrap();
    let err = ClientStack::builder()
        .timeout(lenient)
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err();
    assert_eq!(err.field(), "timeout");
    assert!(
        err.to_string().contains("enforce_outer_deadline(false)"),
        "{err}"
    );

    // The default, a duration, and a layer that enforces it are accepted.
    let strict = TimeoutLayer::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    ClientStack::builder()
        .timeout(strict)
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    ClientStack::builder()
        .timeout(Duration::from_secs(30))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    ClientStack::builder()
        .without_timeout()
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
}

/// The total timeout writes the call's deadline on the request: the retry reads it to start no
/// attempt it cannot finish, and the per-try timeout and the endpoints see it. One that writes
/// nothing would leave the retry blind and let a per-try timeout write its own, later deadline.
#[tokio::test(start_paused = true)]
async fn a_total_timeout_that_does_not_propagate_its_deadline_is_rejected() {
    let calls = Calls::default();
    let silent = TimeoutLayer::builder()
        .timeout(Duration::from_secs(2))
        .propagate_deadline(false)
        .build()
        .unwrap();
    assert!(!silent.propagates_deadline());
    let err = ClientStack::builder()
        .timeout(silent)
        .per_try_timeout(Duration::from_secs(1))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err();
    assert_eq!(err.field(), "timeout");
    assert!(
        err.to_string().contains("propagate_deadline(false)"),
        "{err}"
    );

    let propagating = TimeoutLayer::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert!(propagating.propagates_deadline());
    ClientStack::builder()
        .timeout(propagating)
        .per_try_timeout(Duration::from_secs(1))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
}

/// Per-endpoint breakers under the dependency breaker's name would add their counters to its own:
/// one bad endpoint would look like the dependency failing. `build` rejects them under the stack's
/// default breaker, the one dependency breaker whose name the builder knows.
#[tokio::test(start_paused = true)]
async fn endpoint_breakers_named_as_the_dependency_breaker_are_rejected() {
    let calls = Calls::default();
    let unnamed_set =
        || BreakerSet::<&'static str>::new(BreakerConfig::builder().build_config().unwrap(), 16);
    let named_set = |name: &str| {
        BreakerSet::<&'static str>::new(
            BreakerConfig::builder().name(name).build_config().unwrap(),
            16,
        )
        .unwrap()
    };

    // Both left with the default name.
    let err = ClientStack::builder()
        .endpoint_breakers(unnamed_set().unwrap())
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap_err();
    assert_eq!(err.field(), "endpoint_breakers");
    let message = err.to_string();
    assert!(message.contains("\"breaker\""), "{message}");

    // Named apart from the default breaker, named dependency breaker, or none: accepted.
    ClientStack::builder()
        .endpoint_breakers(named_set("users-endpoint"))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    ClientStack::builder()
        .breaker(BreakerLayer::builder().name("users").build().unwrap())
        .endpoint_breakers(unnamed_set().unwrap())
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    ClientStack::builder()
        .without_breaker()
        .endpoint_breakers(unnamed_set().unwrap())
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
}

/// A breaker registers its name's state gauge when it is made. The builder makes its default
/// breaker only when it builds a stack with it: a builder given another breaker, or none, makes
/// no breaker of the default name, so the series is never registered, not even for a moment.
#[tokio::test(start_paused = true)]
async fn a_builder_without_the_default_breaker_leaves_its_gauge_alone() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let gauge = || recorder.gauge(names::BREAKER_STATE, "breaker");
    let calls = Calls::default();

    let _builder = ClientStack::builder();
    assert_eq!(gauge(), None);
    ClientStack::builder()
        .without_breaker()
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    assert_eq!(gauge(), None);
    ClientStack::builder()
        .breaker(BreakerLayer::builder().name("users").build().unwrap())
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    assert_eq!(gauge(), None);

    // A stack built with the default breaker has one of that name, Closed.
    let _stack = ClientStack::builder()
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    assert_eq!(gauge(), Some(State::Closed.as_gauge()));
}

/// Any layer stands in the dependency breaker's place, not only a `BreakerLayer`: a
/// `ServiceBuilder` stack, a `layer_fn`, `Identity`, `option_layer`.
#[tokio::test(start_paused = true)]
async fn any_layer_is_accepted_as_the_dependency_breaker() {
    let calls = Calls::default();
    let set = || {
        BreakerSet::<&'static str>::new(
            BreakerConfig::builder()
                .name("users-endpoint")
                .build_config()
                .unwrap(),
            16,
        )
        .unwrap()
    };

    let client = ClientStack::builder()
        .breaker(
            tower::ServiceBuilder::new()
                .layer(BreakerLayer::new())
                .into_inner(),
        )
        .endpoint_breakers(set())
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    assert_eq!(client.oneshot(Req::default()).await.unwrap(), "good-1");

    ClientStack::builder()
        .breaker(tower::layer::util::Identity::new())
        .endpoint_breakers(set())
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    ClientStack::builder()
        .breaker(tower::layer::layer_fn(|service| service))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
    ClientStack::builder()
        .breaker(tower::util::option_layer(Some(BreakerLayer::new())))
        .build::<_, Req, &'static str>(endpoints(&["good-1"], &calls))
        .unwrap();
}

/// The balancer runs a task on the runtime `build` is called in: outside one, `build` returns an
/// error rather than panicking.
#[test]
fn build_outside_a_tokio_runtime_is_an_error() {
    let calls = Calls::default();
    let discover = tower::discover::ServiceList::new(vec![endpoint(&calls)(&"good-1")]);
    let err = ClientStack::builder()
        .build::<_, Req, &'static str>(discover)
        .unwrap_err();
    assert_eq!(err.field(), "runtime");
    assert!(err.to_string().contains("Tokio runtime"), "{err}");
}

#[test]
fn stack_is_clone_send_sync() {
    fn check<T: Clone + Send + Sync + 'static>() {}
    fn future<T: Send + 'static>() {}
    check::<ClientStack<Req, &'static str>>();
    future::<<ClientStack<Req, &'static str> as Service<Req>>::Future>();
}

#[tokio::test(start_paused = true)]
async fn every_piece_but_the_balancer_can_be_left_out() {
    let calls = Calls::default();
    // Seeded: PeakEWMA breaks a tie between the two endpoints by the draw, and an unseeded
    // balancer could draw the good one for every call (about one run in a thousand).
    let client = ClientStack::builder()
        .without_timeout()
        .without_retry()
        .without_breaker()
        .without_bulkhead()
        .without_per_try_timeout()
        .balance(BalanceLayer::builder().seed(1))
        .build(endpoints(&["good-1", "bad"], &calls))
        .unwrap();
    tokio::task::yield_now().await;
    let mut failures = 0;
    for _ in 0..10 {
        if client.clone().oneshot(Req::default()).await.is_err() {
            failures += 1;
        }
    }
    // No retry: the calls the balancer sent to the failing endpoint fail.
    assert!(calls.get("bad") > 0);
    assert_eq!(failures, calls.get("bad"));
    assert_eq!(calls.total(), 10);
    assert_eq!(
        calls.1.load(Ordering::SeqCst),
        10,
        "no timeout, no deadline"
    );
}
