//! Deadline cooperation: a retry after a backoff is made only with more time left than the backoff
//! and a timer tick, and none is sent once the deadline has passed; per-attempt timeouts.

mod support;

use seawall::ServiceBuilderExt;
use seawall_core::{
    deadline::{Elapsed, RequestDeadline},
    error,
    metrics::{testing::TestRecorder, TIMEOUT_ELAPSED},
    BoxError, Name,
};
use seawall_retry::{Backoff, GiveUpReason, RetryBudget, RetryEvent, RetryLayer};
use std::sync::{Arc, Mutex};
use support::{flaky, get, http_with_per_attempt_timeout, ms, Calls, Req};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceBuilder, ServiceExt};

fn retry(max_attempts: u32, delay: std::time::Duration) -> seawall_retry::RetryConfigBuilder {
    RetryLayer::builder()
        .max_attempts(max_attempts)
        .backoff(Backoff::constant(delay))
        .budget(RetryBudget::unlimited())
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_when_the_deadline_is_closer_than_the_backoff() {
    let start = Instant::now();
    let deadline = start + ms(250);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = retry(10, ms(100))
        .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let mut req = get();
    req.set_deadline(deadline);
    let err = layer.layer(svc).oneshot(req).await.unwrap_err();
    // Attempts at 0, 100 and 200 ms; at 200 ms only 50 ms are left, less than the 100 ms backoff.
    let times: Vec<_> = calls.all().iter().map(|c| c.at - start).collect();
    assert_eq!(times, [ms(0), ms(100), ms(200)]);
    assert_eq!(err.to_string(), "fail 2");
    assert!(Instant::now() < deadline, "gave up at once, did not sleep");
    assert!(events.lock().unwrap().contains(&RetryEvent::GaveUp {
        attempts: 3,
        reason: GiveUpReason::Deadline
    }));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_exactly_at_the_end_of_the_backoff_stops_too() {
    let start = Instant::now();
    let (svc, calls) = flaky(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(100));
    let err = retry(10, ms(100))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap_err();
    assert_eq!(
        calls.count(),
        1,
        "an attempt starting at its deadline has no time at all"
    );
    // Given up at once with the attempt's own error, rather than after sleeping to the deadline.
    assert_eq!(err.to_string(), "fail 0");
    assert!(!error::is::<Elapsed>(&*err));
    assert_eq!(Instant::now(), start);
}

/// `n` microseconds.
const fn us(n: u64) -> std::time::Duration {
    std::time::Duration::from_micros(n)
}

#[tokio::test(start_paused = true)]
async fn a_backoff_whose_timer_would_fire_past_the_deadline_is_not_waited() {
    // The backoff (100.3 ms) ends before the deadline (100.6 ms), but its timer fires on the next
    // whole millisecond, at 101 ms: the attempt would start past the deadline.
    let start = Instant::now();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = retry(10, us(100_300))
        .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let mut req = get();
    req.set_deadline(start + us(100_600));
    let err = layer.layer(svc).oneshot(req).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "fail 0",
        "the attempt's own error, at once"
    );
    assert_eq!(Instant::now(), start);
    assert_eq!(calls.count(), 1);
    assert_eq!(
        *events.lock().unwrap(),
        [RetryEvent::GaveUp {
            attempts: 1,
            reason: GiveUpReason::Deadline
        }]
    );

    // A millisecond more than the backoff is enough: the retry starts before the deadline.
    let (svc, calls) = flaky(1);
    let mut req = get();
    let deadline = start + us(101_400);
    req.set_deadline(deadline);
    let ok = retry(10, us(100_300))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(ok, "ok 1");
    let retried_at = calls.all()[1].at;
    assert!(retried_at >= start + us(100_300) && retried_at < deadline);
}

#[tokio::test(start_paused = true)]
async fn the_timeout_layer_above_propagates_its_deadline() {
    let start = Instant::now();
    let (svc, calls) = flaky(usize::MAX);
    let client = ServiceBuilder::new()
        .with_timeout(ms(350))
        .with_retry(retry(10, ms(100)).build().unwrap())
        .service(svc);
    let err = client.oneshot(get()).await.unwrap_err();
    assert!(
        !error::is::<Elapsed>(&*err),
        "retry gave up before the timeout fired: {err}"
    );
    let calls = calls.all();
    assert_eq!(
        calls.len(),
        4,
        "attempts at 0, 100, 200, 300; none at 400, past the deadline"
    );
    for call in &calls {
        assert_eq!(call.deadline, Some(start + ms(350)));
        assert!(call.at < start + ms(350));
    }
}

/// Hangs on the first `hangs` calls, answers at once after.
fn hanging(
    hangs: usize,
) -> (
    impl Service<Req, Response = String, Error = BoxError> + Clone,
    Calls,
) {
    let calls = Calls::default();
    let seen = calls.clone();
    let svc = service_fn(move |req: Req| {
        let n = seen.push(&req);
        async move {
            if n < hangs {
                std::future::pending::<()>().await;
            }
            Ok::<_, BoxError>(format!("ok {n}"))
        }
    });
    (svc, calls)
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_cuts_an_attempt_and_retries() {
    let start = Instant::now();
    let (svc, calls) = hanging(1);
    let ok = retry(3, ms(10))
        .per_attempt_timeout(ms(100))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(ok, "ok 1");
    let calls = calls.all();
    assert_eq!(
        calls[0].deadline,
        Some(start + ms(100)),
        "the attempt carries its deadline"
    );
    assert_eq!(
        calls[1].at - start,
        ms(110),
        "timed out at 100 ms, backoff 10 ms"
    );
    assert_eq!(calls[1].deadline, Some(start + ms(210)));
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_fails_with_the_shared_elapsed_error() {
    let (svc, calls) = hanging(usize::MAX);
    let err = retry(3, ms(10))
        .per_attempt_timeout(ms(100))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(calls.count(), 3);
}

/// A request that is not retried, a POST under the HTTP policy or any request with one attempt
/// allowed, is still cut at the per-attempt timeout, and not sent again.
#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_bounds_a_request_that_is_not_retried() {
    let (post, events) = http_with_per_attempt_timeout();
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let svc = svc.map_response(|_| http::Response::new(()));
    // Bounded from outside too, so a missing per-attempt timeout fails rather than hangs.
    let err = tokio::time::timeout(ms(1_000), post.layer(svc).oneshot(support::post()))
        .await
        .expect("cut by the per-attempt timeout")
        .unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(100));
    let calls = calls.all();
    assert_eq!(calls.len(), 1, "a POST is sent once");
    assert_eq!(calls[0].deadline, Some(start + ms(100)));
    assert_eq!(
        *events.lock().unwrap(),
        [],
        "nothing was retried or given up"
    );

    let once = retry(1, ms(10))
        .per_attempt_timeout(ms(100))
        .build()
        .unwrap();
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let err = tokio::time::timeout(ms(1_000), once.layer(svc).oneshot(get()))
        .await
        .expect("cut by the per-attempt timeout")
        .unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(100));
    assert_eq!(calls.count(), 1, "one attempt allowed");
}

/// Checks that a call not retried was cut at its request's own deadline, 50 ms after `start`,
/// and sent once with it.
fn cut_at_its_own_deadline(err: BoxError, start: Instant, calls: &Calls, what: &str) {
    assert!(error::is::<Elapsed>(&*err), "{what}: {err}");
    assert_eq!(Instant::now() - start, ms(50), "{what}");
    let calls = calls.all();
    assert_eq!(calls.len(), 1, "{what}");
    assert_eq!(calls[0].deadline, Some(start + ms(50)), "{what}");
}

/// A request that is not retried keeps the deadline it was called with when that comes before
/// the per-attempt timeout, and is cut there.
#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_keeps_the_earlier_deadline_of_a_request_that_is_not_retried() {
    let (post, events) = http_with_per_attempt_timeout();
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let svc = svc.map_response(|_| http::Response::new(()));
    let mut req = support::post();
    req.set_deadline(start + ms(50));
    let err = post.layer(svc).oneshot(req).await.unwrap_err();
    cut_at_its_own_deadline(err, start, &calls, "a POST");
    assert_eq!(*events.lock().unwrap(), []);

    let once = retry(1, ms(10))
        .per_attempt_timeout(ms(100))
        .build()
        .unwrap();
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(50));
    let err = once.layer(svc).oneshot(req).await.unwrap_err();
    cut_at_its_own_deadline(err, start, &calls, "one attempt allowed");

    let uncopyable = retry(3, ms(10))
        .per_attempt_timeout(ms(100))
        .clone_with(|_: &Req| None)
        .build()
        .unwrap();
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(50));
    let err = uncopyable.layer(svc).oneshot(req).await.unwrap_err();
    cut_at_its_own_deadline(err, start, &calls, "a request that cannot be copied");
}

#[tokio::test(start_paused = true)]
async fn per_attempt_deadline_never_outlives_the_calls_deadline() {
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(150));
    let err = retry(5, ms(10))
        .per_attempt_timeout(ms(100))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap_err();
    assert!(error::is::<Elapsed>(&*err));
    let calls = calls.all();
    assert_eq!(
        calls.len(),
        2,
        "second attempt at 110 ms is cut at 150 ms; no third"
    );
    assert_eq!(calls[0].deadline, Some(start + ms(100)));
    assert_eq!(
        calls[1].deadline,
        Some(start + ms(150)),
        "capped by the call's deadline"
    );
    assert_eq!(Instant::now() - start, ms(150));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_cut_by_the_calls_deadline_counts_for_nothing() {
    // The call's deadline (200 ms, from the timeout above) comes before the attempt's own
    // timeout (500 ms): the attempt is cancelled then, as if the timeout above had dropped it,
    // and neither fails in the budget nor ends in a give-up.
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let budget = RetryBudget::token_bucket(2.0, 0.1).unwrap();
    let layer = RetryLayer::builder()
        .per_attempt_timeout(ms(500))
        .budget(budget.clone())
        .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let (svc, calls) = hanging(usize::MAX);
    let client = ServiceBuilder::new()
        .with_timeout(ms(200))
        .layer(layer)
        .service(svc);
    let start = Instant::now();
    let err = client.oneshot(get()).await.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(200));
    assert_eq!(calls.count(), 1);
    assert!(budget.can_retry(), "no failure was recorded");
    assert_eq!(*events.lock().unwrap(), []);

    // The attempt's own timeout, shorter than the call's, is a failure and is retried.
    let (svc, calls) = hanging(1);
    let layer = retry(3, ms(10))
        .per_attempt_timeout(ms(50))
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .with_timeout(ms(200))
        .layer(layer)
        .service(svc);
    assert_eq!(client.oneshot(get()).await.unwrap(), "ok 1");
    assert_eq!(calls.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_total_timeout_counts_a_call_cut_at_its_deadline_under_a_per_attempt_timeout() {
    // Off the millisecond tick: the call's deadline is 350.5 ms, earlier than the attempt's own
    // (1000.5 ms), so the retry times the attempt at it, and both timers fire on the 351 ms
    // tick. The retry's `Elapsed` reaches the total timeout after its deadline; it is the total
    // timeout that cut the call, and it counts it.
    tokio::time::advance(us(500)).await;
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let (svc, calls) = hanging(usize::MAX);
    let client = ServiceBuilder::new()
        .with_timeout(ms(350))
        .with_retry(
            retry(3, ms(10))
                .per_attempt_timeout(ms(1_000))
                .build()
                .unwrap(),
        )
        .service(svc);
    let err = client.oneshot(get()).await.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(calls.count(), 1);
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn a_timeout_under_the_retry_counts_an_attempt_cut_at_the_callers_deadline() {
    // Off the millisecond tick: the caller's deadline is 350.5 ms, earlier than the attempt's own
    // (1000.5 ms), so the retry times the attempt at it and writes it on the attempt's request.
    // The timeout under the retry enforces it: on the 351 ms tick, with the retry's timer, it
    // cuts the attempt and counts it. No timeout above the retry would count the call.
    tokio::time::advance(us(500)).await;
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let (svc, calls) = hanging(usize::MAX);
    let client = ServiceBuilder::new()
        .with_retry(
            retry(3, ms(10))
                .per_attempt_timeout(ms(1_000))
                .build()
                .unwrap(),
        )
        .layer(seawall::timeout::TimeoutLayer::new(ms(5_000)))
        .service(svc);
    let mut req = get();
    req.set_deadline(Instant::now() + ms(350));
    let err = client.oneshot(req).await.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(calls.count(), 1);
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "timeout"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_attempt_timeout_within_a_tick_of_the_calls_deadline_is_the_calls() {
    // The attempt's own timeout ends less than a millisecond before the call's deadline, so its
    // timer fires on the call's deadline tick (100.2 and 100.6 ms both fire at 101 ms) or the one
    // before (100 ms against 100.4 ms): either way the attempt is cut at the call's deadline and
    // counts for nothing.
    for (timeout, deadline) in [(us(100_200), us(100_600)), (ms(100), us(100_400))] {
        let start = Instant::now();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let budget = RetryBudget::token_bucket(2.0, 0.1).unwrap();
        let layer = retry(3, ms(10))
            .per_attempt_timeout(timeout)
            .budget(budget.clone())
            .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
            .build()
            .unwrap();
        let (svc, calls) = hanging(usize::MAX);
        let mut req = get();
        req.set_deadline(start + deadline);
        let err = layer.layer(svc).oneshot(req).await.unwrap_err();
        assert!(error::is::<Elapsed>(&*err), "{err}");
        assert!(
            Instant::now() >= start + deadline,
            "cut at the call's deadline"
        );
        let calls = calls.all();
        assert_eq!(calls.len(), 1);
        assert!(budget.can_retry(), "no failure was recorded");
        assert_eq!(*events.lock().unwrap(), []);
        assert_eq!(calls[0].deadline, Some(start + deadline), "the call's");
    }
}

/// Fails every call; after the first call it is not ready again until `open_at`.
#[derive(Clone)]
struct SlowToReady {
    calls: Calls,
    open_at: Instant,
    sleep: Arc<Mutex<Option<std::pin::Pin<Box<tokio::time::Sleep>>>>>,
}

impl Service<Req> for SlowToReady {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.calls.count() == 0 {
            return std::task::Poll::Ready(Ok(()));
        }
        let mut sleep = self.sleep.lock().unwrap();
        let sleep = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(self.open_at)));
        std::future::Future::poll(sleep.as_mut(), cx).map(Ok)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.push(&req);
        std::future::ready(Err("down".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_after_the_deadline_while_waiting_for_readiness() {
    let start = Instant::now();
    let calls = Calls::default();
    let inner = SlowToReady {
        calls: calls.clone(),
        open_at: start + ms(500),
        sleep: Arc::default(),
    };
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = retry(3, ms(10))
        .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let mut req = get();
    req.set_deadline(start + ms(200));
    // The backoff (10 ms) fits before the deadline, but the service is not ready until 500 ms:
    // the retry gives up at the deadline instead of sending an attempt past it.
    let err = layer.layer(inner).oneshot(req).await.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(200));
    assert_eq!(calls.count(), 1);
    assert!(events.lock().unwrap().contains(&RetryEvent::GaveUp {
        attempts: 1,
        reason: GiveUpReason::Deadline
    }));
}

/// A retry whose deadline passes while it waits for readiness is never sent, so it is given back
/// to a budget that counts it: a budget of one retry can pay for the next call's retry.
#[tokio::test(start_paused = true)]
async fn a_retry_whose_deadline_passes_while_waiting_for_readiness_gives_its_budget_back() {
    let start = Instant::now();
    let budget = support::one_retry();
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(ms(10)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    let inner = SlowToReady {
        calls: calls.clone(),
        open_at: start + ms(500),
        sleep: Arc::default(),
    };
    let mut req = get();
    req.set_deadline(start + ms(200));
    let mut call = tokio_test::task::spawn(layer.layer(inner).oneshot(req));
    tokio_test::assert_pending!(call.poll());
    assert!(
        !budget.can_retry(),
        "the retry is taken when it is scheduled"
    );
    tokio::time::advance(ms(200)).await;
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(calls.count(), 1);
    drop(call);
    assert!(budget.can_retry(), "the retry never sent is given back");

    // The next call's retry is paid for, and sent.
    let (svc, calls) = flaky(1);
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap(), "ok 1");
    assert_eq!(calls.count(), 2);
    assert!(!budget.can_retry(), "the retry sent stays spent");
}

/// A copy rebuilt from the method, URI and body, as one must for a body that is not `Clone`: the
/// extensions, and the deadline in them, are left behind.
fn rebuild(req: &Req) -> Option<Req> {
    http::Request::builder()
        .method(req.method().clone())
        .uri(req.uri().clone())
        .body(*req.body())
        .ok()
}

/// Calls `layer` over a service that fails every call at once, with a request whose deadline is
/// `timeout` from now. Returns the error, and each call's time from the start and whether it
/// carried the deadline.
async fn fail_until_given_up<K>(
    layer: RetryLayer<seawall_retry::Classified, K>,
    timeout: std::time::Duration,
) -> (String, Vec<(std::time::Duration, bool)>)
where
    K: seawall_retry::CloneRequest<Req> + Clone,
{
    let start = Instant::now();
    let deadline = start + timeout;
    let (svc, calls) = flaky(usize::MAX);
    let mut req = get();
    req.set_deadline(deadline);
    let err = layer.layer(svc).oneshot(req).await.unwrap_err();
    let calls = calls.all();
    let calls = calls
        .iter()
        .map(|c| (c.at - start, c.deadline == Some(deadline)));
    (err.to_string(), calls.collect())
}

#[tokio::test(start_paused = true)]
async fn copies_that_lose_the_deadline_are_still_bounded_by_it() {
    let cloned = fail_until_given_up(retry(5, ms(10)).build().unwrap(), ms(25)).await;
    let rebuilt = retry(5, ms(10)).clone_with(rebuild).build().unwrap();
    let rebuilt = fail_until_given_up(rebuilt, ms(25)).await;
    // Attempts at 0, 10 and 20 ms; at 20 ms only 5 ms are left, less than the backoff and a tick.
    let expected = [(ms(0), true), (ms(10), true), (ms(20), true)];
    assert_eq!(
        (cloned.0.as_str(), &cloned.1[..]),
        ("fail 2", &expected[..])
    );
    assert_eq!(rebuilt, cloned, "a rebuilt copy is bounded as a clone is");
}

#[tokio::test(start_paused = true)]
async fn copies_that_lose_the_deadline_are_cut_by_it_and_wait_for_readiness_no_longer() {
    // A per-attempt timeout never outlives the call's deadline: the second attempt, at 110 ms,
    // carries the call's 150 ms rather than its own 210 ms.
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(150));
    let err = retry(5, ms(10))
        .per_attempt_timeout(ms(100))
        .clone_with(rebuild)
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(150));
    let deadlines: Vec<_> = calls.all().iter().map(|c| c.deadline).collect();
    assert_eq!(deadlines, [Some(start + ms(100)), Some(start + ms(150))]);

    // Waiting for readiness gives up at the call's deadline, 200 ms, not when the service is
    // ready at 500 ms.
    let start = Instant::now();
    let calls = Calls::default();
    let inner = SlowToReady {
        calls: calls.clone(),
        open_at: start + ms(500),
        sleep: Arc::default(),
    };
    let mut req = get();
    req.set_deadline(start + ms(200));
    let layer = retry(3, ms(10)).clone_with(rebuild).build().unwrap();
    let err = layer.layer(inner).oneshot(req).await.unwrap_err();
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(200));
    assert_eq!(calls.count(), 1);
}

/// A cloner that gives every copy the deadline `at`.
fn stamp(at: Instant) -> impl Fn(&Req) -> Option<Req> + Clone {
    move |req: &Req| {
        let mut copy = req.clone();
        copy.set_deadline(at);
        Some(copy)
    }
}

#[tokio::test(start_paused = true)]
async fn a_copy_with_a_later_deadline_is_sent_with_the_calls() {
    let start = Instant::now();
    let (svc, calls) = hanging(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(150));
    let err = retry(5, ms(10))
        .per_attempt_timeout(ms(100))
        .clone_with(stamp(start + ms(1_000)))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap_err();
    // The second attempt, at 110 ms, is cut at the call's deadline (150 ms), before its own
    // timeout (210 ms), and carries it: the copy's later 1000 ms is not what the call has.
    assert!(error::is::<Elapsed>(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(150));
    let deadlines: Vec<_> = calls.all().iter().map(|c| c.deadline).collect();
    assert_eq!(deadlines, [Some(start + ms(100)), Some(start + ms(150))]);

    // Without a per-attempt timeout too: every attempt carries the call's deadline.
    let start = Instant::now();
    let (svc, calls) = flaky(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(150));
    let err = retry(3, ms(10))
        .clone_with(stamp(start + ms(1_000)))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "fail 2");
    let deadlines: Vec<_> = calls.all().iter().map(|c| c.deadline).collect();
    assert_eq!(deadlines, [Some(start + ms(150)); 3]);
}

#[tokio::test(start_paused = true)]
async fn a_copy_with_an_earlier_deadline_keeps_it_and_is_cut_there() {
    // The call's deadline is 1000 ms away, or there is none; the copies carry 120 ms. The second
    // attempt, at 110 ms, keeps 120 ms rather than its own timeout's 210 ms, and is cut there as
    // at the call's deadline: it counts for nothing and the call fails with `Elapsed`.
    for call in [Some(ms(1_000)), None] {
        let start = Instant::now();
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let (svc, calls) = hanging(usize::MAX);
        let mut req = get();
        if let Some(call) = call {
            req.set_deadline(start + call);
        }
        let err = retry(5, ms(10))
            .per_attempt_timeout(ms(100))
            .clone_with(stamp(start + ms(120)))
            .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
            .build()
            .unwrap()
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap_err();
        assert!(error::is::<Elapsed>(&*err), "{call:?}: {err}");
        assert_eq!(Instant::now() - start, ms(120), "{call:?}");
        let deadlines: Vec<_> = calls.all().iter().map(|c| c.deadline).collect();
        assert_eq!(
            deadlines,
            [Some(start + ms(100)), Some(start + ms(120))],
            "{call:?}"
        );
        assert_eq!(
            *events.lock().unwrap(),
            [RetryEvent::Retry {
                attempt: 2,
                delay: ms(10)
            }],
            "{call:?}"
        );
    }

    // Without a per-attempt timeout the retry times no attempt: the copy's deadline is for the
    // layers below, and whether to retry goes by the call's.
    let start = Instant::now();
    let (svc, calls) = flaky(usize::MAX);
    let mut req = get();
    req.set_deadline(start + ms(1_000));
    let err = retry(3, ms(10))
        .clone_with(stamp(start + ms(15)))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "fail 2");
    let calls: Vec<_> = calls
        .all()
        .iter()
        .map(|c| (c.at - start, c.deadline))
        .collect();
    assert_eq!(
        calls,
        [
            (ms(0), Some(start + ms(1_000))),
            (ms(10), Some(start + ms(15))),
            (ms(20), Some(start + ms(15))),
        ]
    );
}
