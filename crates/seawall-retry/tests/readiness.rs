//! Each attempt goes back through the inner service's readiness; the contract test with an inner
//! whose `Clone` resets readiness; a timed-out attempt is gone before the next is sent; behind
//! `Buffer`, budget exhaustion never poisons the buffer.

mod support;

use futures_util::future::join_all;
use seawall_core::Name;
use seawall_core::{
    deadline::{Elapsed, RequestDeadline},
    BoxError,
};
use seawall_retry::{
    Backoff, BudgetExhausted, GiveUpReason, HedgeEvent, HedgeLayer, RetryBudget, RetryEvent,
    RetryLayer,
};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use support::{flaky, get, ms, one_retry, slow_flaky, Req};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok};
use tower::{
    buffer::Buffer, service_fn, util::BoxCloneService, Layer, Service, ServiceBuilder, ServiceExt,
};
use tower_test::mock;

#[derive(Debug, Clone, PartialEq)]
struct Ping(u32);
impl RequestDeadline for Ping {}

fn retry() -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap()
}

/// [`retry`], with the events it reports.
fn retry_recording() -> (RetryLayer, Arc<Mutex<Vec<RetryEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
        .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    (layer, events)
}

#[tokio::test(start_paused = true)]
async fn each_retry_waits_for_the_inner_service_to_be_ready_again() {
    // tower-test's mock panics if called without being polled ready, and a clone of it is not
    // ready: so this also fails if the retry calls a fresh clone.
    let (mut svc, mut handle) = mock::spawn_layer::<Ping, &'static str, _>(retry());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(Ping(1)));

    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, Ping(1));
    send.send_error("boom");
    assert_pending!(fut.poll());

    // Backoff over, but the inner service is not ready: the retry waits on its readiness.
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    assert_pending!(handle.poll_request());

    handle.allow(1);
    assert_pending!(fut.poll());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, Ping(1), "the retry sends a copy of the request");
    send.send_response("pong");
    assert_eq!(assert_ready_ok!(fut.poll()), "pong");
}

#[tokio::test(start_paused = true)]
async fn readiness_error_on_a_retry_is_returned() {
    let (layer, events) = retry_recording();
    let (mut svc, mut handle) = mock::spawn_layer::<Ping, &'static str, _>(layer);
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(Ping(1)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("boom");
    assert_pending!(fut.poll());
    tokio::time::advance(ms(10)).await;
    handle.send_error("broken");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(err.to_string(), "broken");
    // The retry announced is closed by the reason it was not sent.
    assert_eq!(
        *events.lock().unwrap(),
        [
            RetryEvent::Retry {
                attempt: 2,
                delay: ms(10)
            },
            RetryEvent::GaveUp {
                attempts: 1,
                reason: GiveUpReason::NotReady
            }
        ]
    );
}

/// A retry the service fails to get ready for is never sent, so it is given back to a budget that
/// counts it: a budget of one retry can pay for the next call's retry.
#[tokio::test(start_paused = true)]
async fn a_retry_whose_service_fails_readiness_gives_its_budget_back() {
    let budget = one_retry();
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(ms(10)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<Ping, &'static str, _>(layer.clone());
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(Ping(1)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("boom");
    assert_pending!(fut.poll());
    assert!(
        !budget.can_retry(),
        "the retry is taken when it is scheduled"
    );
    tokio::time::advance(ms(10)).await;
    handle.send_error("broken");
    assert_eq!(assert_ready_err!(fut.poll()).to_string(), "broken");
    drop(fut);
    assert!(budget.can_retry(), "the retry never sent is given back");

    // The next call's retry is paid for, and sent.
    let (mut svc, mut handle) = mock::spawn_layer::<Ping, &'static str, _>(layer);
    handle.allow(2);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(Ping(2)));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("boom");
    assert_pending!(fut.poll());
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req, Ping(2), "the retry is sent");
    send.send_response("pong");
    assert_eq!(assert_ready_ok!(fut.poll()), "pong");
    assert!(!budget.can_retry(), "the retry sent stays spent");
}

/// A readiness error is the call's error even once the deadline has passed: it says more about
/// why the call failed than `Elapsed` would.
#[tokio::test(start_paused = true)]
async fn readiness_error_past_the_deadline_is_returned() {
    let (layer, events) = retry_recording();
    let (mut svc, mut handle) = mock::spawn_layer::<Req, &'static str, _>(layer);
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut req = get();
    req.set_deadline(Instant::now() + ms(15));
    let mut fut = tokio_test::task::spawn(svc.call(req));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("boom");
    assert_pending!(fut.poll());
    // The backoff ends at 10 ms; the service is not ready until after the deadline.
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    tokio::time::advance(ms(10)).await;
    handle.send_error("broken");
    let err = assert_ready_err!(fut.poll());
    assert_eq!(err.to_string(), "broken");
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&RetryEvent::GaveUp {
            attempts: 1,
            reason: GiveUpReason::NotReady
        })
    );
}

#[tokio::test(start_paused = true)]
async fn contract_with_concurrency_limit_whose_clone_resets_readiness() {
    // ConcurrencyLimit holds its permit in the instance that was polled ready; a clone has none,
    // and calling one panics. Retry must keep using the instance it took.
    let (inner, calls) = flaky(2);
    let mut client = ServiceBuilder::new()
        .layer(retry())
        .concurrency_limit(1)
        .service(inner);
    let ok = client.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(ok, "ok 2");
    assert_eq!(calls.count(), 3);

    // Four callers A, B, C, D through clones, one permit between them, each attempt at the
    // dependency taking 3 ms: callers queue on the limit's readiness, for their first attempts
    // and their retries alike, and each retry waits out its 10 ms backoff without the permit.
    // The permit goes round in turn (tokio's semaphore is fair); the first nine calls fail, so
    // A's three attempts fail, and B, C and D each succeed at their third.
    let (inner, calls) = slow_flaky(9, ms(3));
    let client = ServiceBuilder::new()
        .layer(retry())
        .concurrency_limit(1)
        .service(inner);
    let start = Instant::now();
    let results = join_all((0..4).map(|_| client.clone().oneshot(get()))).await;
    let results: Vec<_> = results
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()))
        .collect();
    assert_eq!(
        results,
        [
            Err("fail 8".to_string()),
            Ok("ok 9".to_string()),
            Ok("ok 10".to_string()),
            Ok("ok 11".to_string()),
        ]
    );
    let sent: Vec<_> = calls.all().iter().map(|call| call.at - start).collect();
    // A B C D at 0, 3, 6, 9; A's first retry at 13 (3 + 10), then each caller as its backoff
    // ends, the permit free by then.
    let expected = [0, 3, 6, 9, 13, 16, 19, 22, 26, 29, 32, 35].map(ms);
    assert_eq!(sent, expected);
}

/// One attempt alive at a dependency, from `call` until its future answers or is dropped.
struct Alive(Arc<AtomicUsize>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A retry cuts an attempt at its timeout and drops it before it sends the next one, with or
/// without a backoff between them: no two attempts of one call are ever alive at once.
#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_dropped_before_the_next_is_sent() {
    for backoff in [Duration::ZERO, ms(10)] {
        let layer = RetryLayer::builder()
            .max_attempts(3)
            .backoff(Backoff::constant(backoff))
            .per_attempt_timeout(ms(20))
            .budget(RetryBudget::unlimited())
            .build()
            .unwrap();
        let sent = Arc::new(AtomicUsize::new(0));
        let alive = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let inner = {
            let (sent, alive, most) = (sent.clone(), alive.clone(), most.clone());
            service_fn(move |_req: Req| {
                sent.fetch_add(1, Ordering::SeqCst);
                let now = alive.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let alive = Alive(alive.clone());
                async move {
                    let _alive = alive;
                    // Longer than the attempt's timeout.
                    tokio::time::sleep(ms(50)).await;
                    Ok::<_, BoxError>("late")
                }
            })
        };
        let start = Instant::now();
        let err = layer.layer(inner).oneshot(get()).await.unwrap_err();
        assert!(seawall_core::error::is::<Elapsed>(&*err), "{err}");
        assert_eq!(sent.load(Ordering::SeqCst), 3, "{backoff:?}");
        assert_eq!(most.load(Ordering::SeqCst), 1, "{backoff:?}");
        assert_eq!(alive.load(Ordering::SeqCst), 0, "{backoff:?}");
        assert_eq!(start.elapsed(), 3 * ms(20) + 2 * backoff);
    }
}

/// A dependency whose `n`th call fails when `fails(n)` and otherwise never answers.
fn failing_then_hanging(
    fails: impl Fn(usize) -> bool + Clone + Send + 'static,
) -> impl Service<support::Req, Response = (), Error = BoxError, Future = impl Send> + Clone {
    let calls = Arc::new(AtomicUsize::new(0));
    service_fn(move |_req: support::Req| {
        let fail = fails(calls.fetch_add(1, Ordering::SeqCst));
        async move {
            if fail {
                Err::<(), BoxError>("down".into())
            } else {
                std::future::pending().await
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_during_a_retry_releases_the_permit_it_holds() {
    let mut client = ServiceBuilder::new()
        .layer(retry())
        .concurrency_limit(1)
        .service(failing_then_hanging(|n| n == 0));
    let mut other = client.clone();
    let mut fut = tokio_test::task::spawn(client.ready().await.unwrap().call(get()));
    assert_pending!(fut.poll(), "first attempt failed, backing off");
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll(), "the second attempt hangs");
    {
        let mut ready = tokio_test::task::spawn(other.ready());
        assert!(
            ready.poll().is_pending(),
            "the second attempt holds the only permit"
        );
    }
    drop(fut);
    let mut ready = tokio_test::task::spawn(other.ready());
    assert_ready!(ready.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_a_call_waiting_for_readiness_gives_up_its_place() {
    let mut client = ServiceBuilder::new()
        .layer(retry())
        .concurrency_limit(1)
        .service(failing_then_hanging(|n| n == 0));
    let (mut holder, mut next) = (client.clone(), client.clone());

    // The first attempt fails and frees the permit; another call takes it and hangs.
    let mut waiting = tokio_test::task::spawn(client.ready().await.unwrap().call(get()));
    assert_pending!(waiting.poll());
    let mut holding = tokio_test::task::spawn(holder.ready().await.unwrap().call(get()));
    assert_pending!(holding.poll());

    // The retry is queued for the permit when it is dropped.
    tokio::time::advance(ms(10)).await;
    assert_pending!(waiting.poll(), "waiting for the permit");
    drop(waiting);

    let mut ready = tokio_test::task::spawn(next.ready());
    assert!(
        ready.poll().is_pending(),
        "the hanging call still holds the permit"
    );
    drop(holding);
    assert!(ready.is_woken());
    assert_ready!(ready.poll()).unwrap();
}

/// A retry taken from the budget and dropped by its caller while it waits for the inner service's
/// readiness was never handed on: the budget gets it back.
#[tokio::test(start_paused = true)]
async fn dropping_a_retry_waiting_for_readiness_gives_its_budget_back() {
    let budget = one_retry();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let mut client = ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(1)
        .service(failing_then_hanging(|n| n == 0));
    let mut holder = client.clone();

    // The first attempt fails and takes the budget's one retry; another call takes the permit.
    let mut waiting = tokio_test::task::spawn(client.ready().await.unwrap().call(get()));
    assert_pending!(waiting.poll());
    assert!(
        !budget.can_retry(),
        "the retry is taken when it is scheduled"
    );
    let mut holding = tokio_test::task::spawn(holder.ready().await.unwrap().call(get()));
    assert_pending!(holding.poll());

    // Past the backoff the retry waits for the permit, and is dropped there.
    tokio::time::advance(ms(10)).await;
    assert_pending!(waiting.poll(), "waiting for the permit");
    assert!(!budget.can_retry());
    drop(waiting);
    assert!(budget.can_retry(), "never handed on: given back");
    drop(holding);
}

#[tokio::test(start_paused = true)]
async fn hedges_also_go_through_readiness() {
    let hedge = HedgeLayer::builder()
        .delay(ms(10))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let (mut svc, mut handle) = mock::spawn_layer::<Ping, &'static str, _>(hedge);
    handle.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let mut fut = tokio_test::task::spawn(svc.call(Ping(1)));
    let (_, primary) = handle.next_request().await.unwrap();
    assert_pending!(fut.poll());
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    assert_pending!(
        handle.poll_request(),
        "no hedge until the inner service is ready"
    );
    handle.allow(1);
    assert_pending!(fut.poll());
    let (req, hedge) = handle.next_request().await.unwrap();
    assert_eq!(req, Ping(1));
    hedge.send_response("from hedge");
    assert_eq!(assert_ready_ok!(fut.poll()), "from hedge");
    drop(primary);
}

fn request(path: &str) -> Req {
    http::Request::get(path).body("x").unwrap()
}

/// Answers by path: `/down` always fails, `/once` fails the first time it is asked and then
/// answers, `/slow` answers after 100 ms; anything else answers at once. Counts every call.
fn by_path() -> (
    impl Service<Req, Response = &'static str, Error = BoxError, Future = impl Send>
        + Clone
        + Send
        + 'static,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let failed_once = Arc::new(AtomicBool::new(false));
    let counter = calls.clone();
    let svc = service_fn(move |req: Req| {
        counter.fetch_add(1, Ordering::SeqCst);
        let fail = match req.uri().path() {
            "/down" => true,
            "/once" => !failed_once.swap(true, Ordering::SeqCst),
            _ => false,
        };
        let slow = req.uri().path() == "/slow";
        async move {
            if slow {
                tokio::time::sleep(ms(100)).await;
            }
            if fail {
                Err::<&'static str, BoxError>("down".into())
            } else {
                Ok("ok")
            }
        }
    });
    (svc, calls)
}

/// An exhausted budget fails the call from its response future, so `Buffer` (whose worker fails
/// for good on an error from `poll_ready`) keeps serving, and retries again once the budget
/// refills.
#[tokio::test(start_paused = true)]
async fn behind_buffer_an_exhausted_budget_does_not_poison_the_buffer() {
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .budget(one_retry())
        .build()
        .unwrap();
    let (inner, calls) = by_path();
    let svc: BoxCloneService<Req, &'static str, BoxError> =
        BoxCloneService::new(Buffer::new(layer.layer(inner), 4));

    // One retry from the budget, then no more.
    let err = svc.clone().oneshot(request("/down")).await.unwrap_err();
    let exhausted =
        seawall_core::error::find::<BudgetExhausted>(&*err).expect("the budget is exhausted");
    assert_eq!(exhausted.last_error().to_string(), "down");
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    assert_eq!(svc.clone().oneshot(request("/ok")).await.unwrap(), "ok");

    // The budget refills with time, and a call through the same Buffer is retried again.
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(svc.oneshot(request("/once")).await.unwrap(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

/// A hedge due with the budget exhausted is skipped, not an error, and behind `Buffer` the calls
/// before and after it, failed or not, all go through the one worker.
#[tokio::test(start_paused = true)]
async fn behind_buffer_an_exhausted_hedge_budget_does_not_poison_the_buffer() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(one_retry())
        .on_event(move |_: &seawall_core::Name, e: &HedgeEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let (inner, calls) = by_path();
    let svc: BoxCloneService<Req, &'static str, BoxError> =
        BoxCloneService::new(Buffer::new(layer.layer(inner), 4));

    assert_eq!(svc.clone().oneshot(request("/slow")).await.unwrap(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the primary and one hedge");
    assert_eq!(svc.clone().oneshot(request("/slow")).await.unwrap(), "ok");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "no hedge: the budget is spent"
    );
    assert_eq!(
        svc.clone()
            .oneshot(request("/down"))
            .await
            .unwrap_err()
            .to_string(),
        "down"
    );

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.oneshot(request("/slow")).await.unwrap(), "ok");
    assert_eq!(calls.load(Ordering::SeqCst), 6, "hedged again");
    assert_eq!(
        *events.lock().unwrap(),
        [
            HedgeEvent::Sent {
                hedge: 1,
                after: ms(10)
            },
            HedgeEvent::BudgetExhausted,
            HedgeEvent::Sent {
                hedge: 1,
                after: ms(10)
            },
        ]
    );
}
