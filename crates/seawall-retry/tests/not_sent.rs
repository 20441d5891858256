//! Requests that were never sent: a rejection raised before the request was handed on (a
//! `NotSent` in its error's chain) or a refused connection is retried even for a POST, and a
//! rejection's own `retry_after` is waited as a server's `Retry-After` is.

mod support;

use seawall_core::{deadline::RequestDeadline, error::NotSent, BoxError};
use seawall_retry::{Backoff, GiveUpReason, HttpPolicy, RetryBudget, RetryEvent, RetryLayer};
use std::{
    error::Error,
    fmt,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use support::{get, http_with_per_attempt_timeout, ms, post, recording, Calls, Events, Req};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// A rejection of a layer below the retry, raised before the request was handed on.
#[derive(Debug)]
struct Rejected(NotSent);

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected")
    }
}

impl Error for Rejected {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// How one call of a [`scripted`] service ends.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Rejected before sending, with the rejection's `retry_after` if any.
    NotSent(Option<Duration>),
    /// A refused connection, as a connector reports it, wrapped in another error.
    Refused,
    /// An error after sending (a reset).
    Reset,
    /// A response with this status.
    Status(u16),
}

/// Answers each call as `script` says in turn (the last one repeats).
fn scripted(
    script: Vec<Answer>,
) -> (
    impl Service<Req, Response = http::Response<()>, Error = BoxError> + Clone,
    Calls,
) {
    support::in_turn(script, |answer| async move {
        match answer {
            Answer::NotSent(None) => Err(Box::new(Rejected(NotSent::new())) as BoxError),
            Answer::NotSent(Some(after)) => {
                Err(Box::new(Rejected(NotSent::with_retry_after(after))) as BoxError)
            }
            Answer::Refused => Err(Box::new(std::io::Error::other(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused,
            ))) as BoxError),
            Answer::Reset => Err("connection reset".into()),
            Answer::Status(code) => Ok(http::Response::builder().status(code).body(()).unwrap()),
        }
    })
}

/// The HTTP retry with a 10 ms backoff, and the events it reports.
fn http_retry(policy: HttpPolicy) -> (RetryLayer<HttpPolicy>, Events) {
    http_retry_with(policy, Backoff::constant(ms(10)))
}

/// The HTTP retry with `backoff`, and the events it reports.
fn http_retry_with(policy: HttpPolicy, backoff: Backoff) -> (RetryLayer<HttpPolicy>, Events) {
    let (listener, events) = recording();
    let layer = RetryLayer::builder()
        .policy(policy)
        .max_attempts(3)
        .backoff(backoff)
        .retry_after_cap(Duration::from_secs(1))
        .budget(RetryBudget::unlimited())
        .on_event(listener)
        .build()
        .unwrap();
    (layer, events)
}

/// A retry's events after one retry: the second attempt, after `delay`.
fn retried(delay: Duration) -> [RetryEvent; 1] {
    [RetryEvent::Retry { attempt: 2, delay }]
}

/// A retry's event on giving up after `attempts`, for `reason`.
fn gave_up(attempts: u32, reason: GiveUpReason) -> RetryEvent {
    RetryEvent::GaveUp { attempts, reason }
}

/// A POST whose deadline is `left` from now.
fn post_due_in(left: Duration) -> Req {
    let mut req = post();
    req.set_deadline(Instant::now() + left);
    req
}

use Answer::*;

#[tokio::test(start_paused = true)]
async fn a_post_that_was_never_sent_is_sent_again() {
    for first in [NotSent(None), Refused] {
        let (layer, events) = http_retry(HttpPolicy::new());
        let (svc, calls) = scripted(vec![first, Status(200)]);
        let res = layer.layer(svc).oneshot(post()).await.unwrap();
        assert_eq!(res.status(), 200, "{first:?}");
        assert_eq!(calls.count(), 2, "{first:?}");
        assert_eq!(*events.lock().unwrap(), retried(ms(10)), "{first:?}");
    }
}

/// A POST whose server answered, or that failed after it was sent, is sent once: returned as it
/// is, with no retry and no give-up reported (it was never retryable).
#[tokio::test(start_paused = true)]
async fn a_post_that_was_sent_is_sent_once() {
    let (layer, events) = http_retry(HttpPolicy::new());
    let (svc, calls) = scripted(vec![Status(503), Status(200)]);
    let res = layer.layer(svc).oneshot(post()).await.unwrap();
    assert_eq!((res.status().as_u16(), calls.count()), (503, 1));

    let (svc, calls) = scripted(vec![Reset, Status(200)]);
    let err = http_retry(HttpPolicy::new())
        .0
        .layer(svc)
        .oneshot(post())
        .await
        .unwrap_err();
    assert_eq!(
        (err.to_string().as_str(), calls.count()),
        ("connection reset", 1)
    );

    // Never sent, then sent and failed: the failure after sending is returned as it is.
    let (svc, calls) = scripted(vec![NotSent(None), Status(503), Status(200)]);
    let res = layer.layer(svc).oneshot(post()).await.unwrap();
    assert_eq!((res.status().as_u16(), calls.count()), (503, 2));
    assert_eq!(*events.lock().unwrap(), retried(ms(10)), "no give-up");
}

#[tokio::test(start_paused = true)]
async fn a_post_that_was_never_sent_is_sent_once_when_turned_off() {
    for first in [NotSent(None), Refused] {
        let (layer, events) = http_retry(HttpPolicy::new().retry_unsent(false));
        let (svc, calls) = scripted(vec![first, Status(200)]);
        let err = layer.layer(svc).oneshot(post()).await.unwrap_err();
        assert!(seawall_core::error::is_not_sent(&*err), "{err}");
        assert_eq!(calls.count(), 1, "{first:?}");
        assert!(events.lock().unwrap().is_empty());
    }
}

/// A never-sent POST is retried up to `max_attempts`, as any retry is.
#[tokio::test(start_paused = true)]
async fn a_post_that_is_never_sent_gives_up_after_max_attempts() {
    let (layer, events) = http_retry(HttpPolicy::new());
    let (svc, calls) = scripted(vec![NotSent(None)]);
    let err = layer.layer(svc).oneshot(post()).await.unwrap_err();
    assert_eq!(err.to_string(), "rejected");
    assert_eq!(calls.count(), 3);
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&gave_up(3, GiveUpReason::Attempts))
    );
}

/// A GET is retried after any failure, as before.
#[tokio::test(start_paused = true)]
async fn a_get_is_retried_whether_sent_or_not() {
    let (layer, _) = http_retry(HttpPolicy::new().retry_unsent(false));
    let (svc, calls) = scripted(vec![NotSent(None), Reset, Status(503), Status(200)]);
    let svc = layer.layer(svc);
    assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 503);
    assert_eq!(calls.count(), 3);
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
}

/// Sends `req` through `layer` to a service that rejects it before it was sent with a
/// `retry_after` of 300 ms, then answers 200, and checks it is answered: the calls the service saw.
async fn answered_after_a_300_ms_retry_after(layer: &RetryLayer<HttpPolicy>, req: Req) -> Calls {
    let (svc, calls) = scripted(vec![NotSent(Some(ms(300))), Status(200)]);
    let res = layer.layer(svc).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    calls
}

/// A rejection's `retry_after` is waited, and then the backoff, before the next attempt, for a
/// POST retried because it was never sent and for a GET alike.
#[tokio::test(start_paused = true)]
async fn a_rejections_retry_after_is_waited() {
    for request in [post(), get()] {
        let (layer, events) = http_retry(HttpPolicy::new());
        let start = Instant::now();
        let method = request.method().clone();
        let calls = answered_after_a_300_ms_retry_after(&layer, request).await;
        let times = calls.since(start);
        assert_eq!(times.len(), 2, "{method}");
        assert!(times[1] >= ms(310), "{method}: {times:?}");
        assert!(times[1] <= ms(312), "{method}: {times:?}");
        assert_eq!(*events.lock().unwrap(), retried(ms(310)));
    }
    // A shorter one too.
    let (layer, events) = http_retry(HttpPolicy::new());
    let (svc, _) = scripted(vec![NotSent(Some(ms(1))), Status(200)]);
    layer.layer(svc).oneshot(post()).await.unwrap();
    assert_eq!(*events.lock().unwrap(), retried(ms(11)));
}

/// Calls turned away together by a limiter below, each told the same `retry_after`, come back
/// spread over the backoff's jitter after it, not all on the same tick.
#[tokio::test(start_paused = true)]
async fn calls_turned_away_together_come_back_spread_after_the_retry_after() {
    let layer = RetryLayer::builder()
        .backoff(Backoff::exponential(ms(100)))
        .budget(RetryBudget::unlimited())
        .seed(7)
        .build()
        .unwrap();
    let retried = Arc::new(Mutex::new(Vec::new()));
    let seen = retried.clone();
    /// A call's number, and how many attempts of it were made.
    #[derive(Clone)]
    struct Numbered(u32, Arc<Mutex<u32>>);
    impl RequestDeadline for Numbered {}

    let svc = layer.layer(service_fn(move |Numbered(n, attempt): Numbered| {
        let mut attempt = attempt.lock().unwrap();
        *attempt += 1;
        let result = if *attempt == 1 {
            Err(Box::new(Rejected(NotSent::with_retry_after(ms(300)))) as BoxError)
        } else {
            seen.lock().unwrap().push((n, Instant::now()));
            Ok(())
        };
        std::future::ready(result)
    }));
    let start = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|n| tokio::spawn(svc.clone().oneshot(Numbered(n, Arc::default()))))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let retried = retried.lock().unwrap().clone();
    assert_eq!(retried.len(), 20);
    let waits: Vec<_> = retried.iter().map(|(_, at)| *at - start).collect();
    assert!(waits.iter().all(|w| *w >= ms(300)), "{waits:?}");
    assert!(waits.iter().all(|w| *w <= ms(401)), "{waits:?}");
    assert!(waits.iter().any(|w| *w != waits[0]), "{waits:?}");
}

/// Sends `req` through the HTTP retry to a service that rejects it with a `retry_after` of `after`
/// before it was sent, then answers 200, and checks the rejection is returned with no retry: how
/// long that took, and the events reported.
async fn given_up(after: Duration, req: Req) -> (Duration, Vec<RetryEvent>) {
    let (layer, events) = http_retry(HttpPolicy::new());
    let (svc, calls) = scripted(vec![NotSent(Some(after)), Status(200)]);
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(req).await.unwrap_err();
    assert_eq!(err.to_string(), "rejected");
    assert_eq!(calls.count(), 1);
    let events = events.lock().unwrap().clone();
    (start.elapsed(), events)
}

/// A rejection's `retry_after` beyond `retry_after_cap` is given up on at once, as a server's
/// `Retry-After` is.
#[tokio::test(start_paused = true)]
async fn a_rejections_retry_after_beyond_the_cap_gives_up() {
    let (waited, events) = given_up(Duration::from_secs(2), post()).await;
    assert_eq!(waited, Duration::ZERO);
    assert_eq!(events, [gave_up(1, GiveUpReason::RetryAfter)]);
}

/// A call's deadline closer than a rejection's `retry_after` is given up on at once.
#[tokio::test(start_paused = true)]
async fn a_rejections_retry_after_past_the_deadline_gives_up() {
    let (waited, events) = given_up(ms(300), post_due_in(ms(200))).await;
    assert_eq!(waited, Duration::ZERO);
    assert_eq!(events, [gave_up(1, GiveUpReason::Deadline)]);
}

/// A never-sent retry of a POST takes from the budget as any retry does.
#[tokio::test(start_paused = true)]
async fn a_never_sent_post_is_retried_within_the_budget() {
    let layer = RetryLayer::builder()
        .http()
        .backoff(Backoff::constant(ms(10)))
        .budget(support::one_retry())
        .build()
        .unwrap();
    let (svc, calls) = scripted(vec![NotSent(None)]);
    let err = layer.layer(svc).oneshot(post()).await.unwrap_err();
    assert!(
        seawall_core::error::is::<seawall_retry::BudgetExhausted>(&*err),
        "{err}"
    );
    assert_eq!(calls.count(), 2, "one retry, then the budget is spent");
}

/// Attempts turned away before they were sent take no token from a token bucket (gRPC leaves
/// them out of its retry throttling, gRFC A6): retries against a full bulkhead below are bounded
/// by `max_attempts`, the backoff and the deadline, not by the bucket.
#[tokio::test(start_paused = true)]
async fn attempts_never_sent_do_not_drain_a_token_bucket() {
    // Four tokens: retries stop once failures take two more than successes give back.
    let budget = RetryBudget::token_bucket(4.0, 0.1).unwrap();
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(ms(10)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let (svc, calls) = scripted(vec![NotSent(None)]);
    let mut svc = layer.layer(svc);
    for i in 0..5 {
        let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
        assert!(seawall_core::error::is_not_sent(&*err), "call {i}: {err}");
        assert_eq!(calls.count(), 2 * i + 2, "call {i} was retried");
    }
    assert_eq!(calls.count(), 10);
    assert!(budget.can_retry());
    // Full: four tokens of four (not merely `max_tokens: 4.0`).
    assert_eq!(
        format!("{budget:?}"),
        "RetryBudget::TokenBucket { max_tokens: 4.0, token_ratio: 0.1, tokens: 4.0 }"
    );
}

/// A recording service that answers 200, after `latency` on its first call.
fn answering(
    latency: Duration,
) -> (
    impl Service<Req, Response = http::Response<()>, Error = BoxError, Future = impl Send>
        + Clone
        + Send
        + 'static,
    Calls,
) {
    support::in_turn(vec![Some(latency), None], |wait| async move {
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
        Ok::<_, BoxError>(http::Response::new(()))
    })
}

/// A real rate limiter below the retry: a POST it rejects is sent again once the limiter's
/// `retry_after` has passed, and answered.
#[tokio::test(start_paused = true)]
async fn a_post_rejected_by_a_rate_limit_below_is_sent_again_after_its_retry_after() {
    use seawall::bulkhead::ratelimit::RateLimitLayer;

    let limit = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let (layer, events) = http_retry(HttpPolicy::new());
    let (svc, calls) = answering(Duration::ZERO);
    let client = layer.layer(limit.layer(svc));

    client.clone().oneshot(post()).await.unwrap();
    let start = Instant::now();
    let res = client.clone().oneshot(post()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        calls.count(),
        2,
        "the second POST was sent once, when let through"
    );
    let waited = start.elapsed();
    assert!(waited >= ms(990), "{waited:?}");
    let events = events.lock().unwrap().clone();
    let [RetryEvent::Retry { attempt: 2, delay }] = events[..] else {
        panic!("{events:?}");
    };
    assert!(delay > ms(10) && delay <= waited, "{delay:?}");

    // Turned off, the rejection is the POST's answer.
    let (layer, _) = http_retry(HttpPolicy::new().retry_unsent(false));
    let (svc, calls) = answering(Duration::ZERO);
    let limit = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let client = layer.layer(limit.layer(svc));
    client.clone().oneshot(post()).await.unwrap();
    let err = client.oneshot(post()).await.unwrap_err();
    assert!(seawall_core::error::is::<
        seawall::bulkhead::ratelimit::Limited,
    >(&*err));
    assert_eq!(calls.count(), 1);
}

/// A real bulkhead below the retry: a POST it rejects while full is sent again after the
/// backoff, once the call holding its permit has finished, and answered.
#[tokio::test(start_paused = true)]
async fn a_post_rejected_by_a_full_bulkhead_below_is_sent_again() {
    use seawall::bulkhead::BulkheadLayer;

    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let (layer, events) = http_retry(HttpPolicy::new());
    let (svc, calls) = answering(ms(5));
    let client = layer.layer(bulkhead.layer(svc));

    let holding = tokio::spawn(client.clone().oneshot(post()));
    tokio::task::yield_now().await;
    assert_eq!(calls.count(), 1, "the first POST holds the permit");
    let res = client.oneshot(post()).await.unwrap();
    assert_eq!(res.status(), 200);
    holding.await.unwrap().unwrap();
    assert_eq!(calls.count(), 2);
    assert_eq!(*events.lock().unwrap(), retried(ms(10)));
}

/// A request that can be copied, for the layer's defaults (every request retried).
#[derive(Debug, Clone)]
struct Plain;

impl RequestDeadline for Plain {}

/// Answers each call of a [`Plain`] request with `answer` of its number, from 1, and counts the
/// calls.
fn counted<F, Fut>(
    answer: F,
) -> (
    impl Service<Plain, Response = (), Error = BoxError, Future = Fut> + Clone,
    Arc<Mutex<u32>>,
)
where
    F: Fn(u32) -> Fut + Clone,
    Fut: Future<Output = Result<(), BoxError>>,
{
    let calls = Arc::new(Mutex::new(0u32));
    let seen = calls.clone();
    let svc = service_fn(move |_: Plain| {
        let n = {
            let mut n = seen.lock().unwrap();
            *n += 1;
            *n
        };
        answer(n)
    });
    (svc, calls)
}

/// Answers each call of a [`Plain`] request as `script` says in turn (the last one repeats); a
/// status is an answer.
fn plain(
    script: Vec<Answer>,
) -> (
    impl Service<Plain, Response = (), Error = BoxError> + Clone,
    Arc<Mutex<u32>>,
) {
    counted(move |n| {
        std::future::ready(match script[(n as usize - 1).min(script.len() - 1)] {
            NotSent(None) => Err(Box::new(Rejected(NotSent::new())) as BoxError),
            NotSent(Some(after)) => Err(Box::new(Rejected(NotSent::with_retry_after(after))) as _),
            Refused => {
                Err(Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)) as _)
            }
            Reset => Err("connection reset".into()),
            Status(_) => Ok(()),
        })
    })
}

/// A call whose first attempt was sent and failed, and whose later ones were rejected before
/// sending, may have reached the server: its error is not taken for one never sent, though the
/// rejection is still found in it.
#[tokio::test(start_paused = true)]
async fn a_call_an_earlier_attempt_of_which_was_sent_is_not_taken_for_never_sent() {
    use seawall_core::error::{find, is, is_not_sent, SentEarlier};

    for last in [NotSent(None), Refused] {
        let (svc, calls) = plain(vec![Reset, last, last]);
        let err = RetryLayer::new()
            .layer(svc)
            .oneshot(Plain)
            .await
            .unwrap_err();
        assert_eq!(*calls.lock().unwrap(), 3, "{last:?}");
        assert!(!is_not_sent(&*err), "{last:?}: {err}");
        assert!(is::<SentEarlier>(&*err), "{last:?}");
        assert_eq!(
            err.to_string(),
            "an earlier attempt of the request was sent"
        );
        if let NotSent(_) = last {
            assert!(find::<Rejected>(&*err).is_some());
        }
    }

    // A call none of whose attempts was sent still is.
    let (svc, calls) = plain(vec![NotSent(None), Refused, NotSent(None)]);
    let err = RetryLayer::new()
        .layer(svc)
        .oneshot(Plain)
        .await
        .unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 3);
    assert!(is_not_sent(&*err), "{err}");
    assert_eq!(err.to_string(), "rejected");

    // Given up on for the budget: still a `BudgetExhausted`, around the mark.
    let layer = RetryLayer::builder()
        .budget(support::one_retry())
        .build()
        .unwrap();
    let (svc, calls) = plain(vec![Reset, NotSent(None)]);
    let err = layer.layer(svc).oneshot(Plain).await.unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 2);
    assert!(!is_not_sent(&*err), "{err}");
    assert!(find::<Rejected>(&*err).is_some());
    let exhausted = err.downcast::<seawall_retry::BudgetExhausted>().unwrap();
    assert!(exhausted.last_error().is::<SentEarlier>());
}

/// A hedge of one copy, sent 10 ms into a call, on an unlimited budget.
fn one_hedge_after_10_ms() -> seawall_retry::hedge::HedgeConfigBuilder {
    seawall_retry::HedgeLayer::builder()
        .delay(ms(10))
        .max_hedges(1)
        .budget(RetryBudget::unlimited())
}

/// A [`counted`] service whose first call fails with `first()` after 15 ms, and whose later calls
/// are rejected before sending 10 ms after they came.
fn first_fails_then_rejected(
    first: impl Fn() -> BoxError + Clone,
) -> (
    impl Service<Plain, Response = (), Error = BoxError> + Clone,
    Arc<Mutex<u32>>,
) {
    counted(move |n| {
        let first = (n == 1).then(&first);
        async move {
            match first {
                Some(first) => {
                    tokio::time::sleep(ms(15)).await;
                    Err(first)
                }
                None => {
                    tokio::time::sleep(ms(10)).await;
                    Err(Box::new(Rejected(NotSent::new())) as BoxError)
                }
            }
        }
    })
}

/// A hedged call whose last copy to fail was never sent, while another copy was sent and failed,
/// returns the sent copy's failure, not taken for never sent; one none of whose copies was sent
/// returns the last rejection, never sent.
#[tokio::test(start_paused = true)]
async fn a_hedged_call_another_copy_of_which_was_sent_is_not_taken_for_never_sent() {
    use seawall_core::error::{find, is_not_sent};

    for (first, expected, shown) in [
        (Reset, false, "connection reset"),
        (NotSent(None), true, "rejected"),
    ] {
        // The first copy fails after 15 ms; the hedge, sent at 10 ms, is rejected 10 ms later.
        let (svc, calls) = first_fails_then_rejected(move || match first {
            Reset => "connection reset".into(),
            _ => Box::new(Rejected(NotSent::new())),
        });
        let layer = one_hedge_after_10_ms().build().unwrap();
        let err = layer.layer(svc).oneshot(Plain).await.unwrap_err();
        assert_eq!(*calls.lock().unwrap(), 2, "{first:?}");
        assert_eq!(is_not_sent(&*err), expected, "{first:?}: {err}");
        assert_eq!(err.to_string(), shown, "{first:?}");
        assert_eq!(find::<Rejected>(&*err).is_some(), expected, "{first:?}");
    }
}

/// An answer of a copy that was sent, which the hedge's policy ignores (a server draining its
/// connections, say).
#[derive(Debug)]
struct Draining;

impl fmt::Display for Draining {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("draining")
    }
}

impl Error for Draining {}

/// A hedged call whose failure was never sent, while another copy was sent and its answer
/// ignored, returns that failure wrapped in a `SentEarlier`: the call's request may have reached
/// the server, and is not taken for one never sent.
#[tokio::test(start_paused = true)]
async fn a_hedged_calls_failure_never_sent_after_an_ignored_copy_was_sent_is_marked_sent_earlier() {
    use seawall_core::error::{find, is, is_not_sent, SentEarlier};
    use seawall_retry::policy::{Classified, Ignoring};

    // The first copy is sent, and answers `Draining` after 15 ms; the hedge, sent at 10 ms, is
    // rejected before it is sent 10 ms later.
    let (svc, calls) = first_fails_then_rejected(|| Box::new(Draining));
    let layer = one_hedge_after_10_ms()
        .policy(Ignoring::<Classified, Draining>::new(Classified::default()))
        .build()
        .unwrap();
    let err = layer.layer(svc).oneshot(Plain).await.unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 2);
    // The rejection, a failure, is returned rather than the ignored answer...
    assert!(find::<Rejected>(&*err).is_some(), "{err}");
    // ...but marked as following a copy that was sent.
    assert!(is::<SentEarlier>(&*err), "{err}");
    assert!(!is_not_sent(&*err), "{err}");
}

/// A POST that was sent and failed is returned as it is when the budget is spent, too: it was
/// never retryable, so the budget is not asked and nothing is reported.
#[tokio::test(start_paused = true)]
async fn a_sent_post_is_returned_as_it_is_with_the_budget_spent() {
    let (listener, events) = recording();
    let layer = RetryLayer::builder()
        .http()
        .backoff(Backoff::constant(ms(10)))
        .budget(support::one_retry())
        .on_event(listener)
        .build()
        .unwrap();
    // A GET spends the one retry.
    let (svc, _) = scripted(vec![Reset, Status(200)]);
    layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(events.lock().unwrap().len(), 1);

    let (svc, calls) = scripted(vec![Reset, Status(200)]);
    let err = layer.layer(svc).oneshot(post()).await.unwrap_err();
    assert_eq!(err.to_string(), "connection reset");
    assert!(!seawall_core::error::is::<seawall_retry::BudgetExhausted>(
        &*err
    ));
    assert_eq!(calls.count(), 1);
    assert_eq!(events.lock().unwrap().len(), 1, "no budget-exhausted event");

    // A never-sent one is refused its retry by the spent budget.
    let (svc, calls) = scripted(vec![NotSent(None), Status(200)]);
    let err = layer.layer(svc).oneshot(post()).await.unwrap_err();
    assert!(seawall_core::error::is::<seawall_retry::BudgetExhausted>(
        &*err
    ));
    assert_eq!(calls.count(), 1);
}

/// A rejection's `retry_after` is waited with a per-attempt timeout too, whose attempts are all
/// timed.
#[tokio::test(start_paused = true)]
async fn a_rejections_retry_after_is_waited_with_a_per_attempt_timeout() {
    let (layer, events) = http_with_per_attempt_timeout();
    let start = Instant::now();
    let calls = answered_after_a_300_ms_retry_after(&layer, post()).await;
    let times = calls.since(start);
    assert_eq!(times.len(), 2);
    assert!(times[1] >= ms(310) && times[1] <= ms(312), "{times:?}");
    assert_eq!(*events.lock().unwrap(), retried(ms(310)));
    // The second attempt carries its own timeout, from when it was sent.
    let second = calls.all()[1];
    assert_eq!(second.deadline, Some(second.at + ms(100)));
}

/// A call's deadline that leaves room for a rejection's `retry_after` but not for the whole
/// backoff after it: the backoff is shortened to what fits, up to a tick left for the attempt,
/// rather than the call given up on.
#[tokio::test(start_paused = true)]
async fn a_rejections_retry_after_within_the_deadline_shortens_the_backoff_after_it() {
    let (layer, events) = http_retry(HttpPolicy::new());
    let start = Instant::now();
    let calls = answered_after_a_300_ms_retry_after(&layer, post_due_in(ms(305))).await;
    let times = calls.since(start);
    assert_eq!(times.len(), 2);
    assert!(times[1] >= ms(300) && times[1] < ms(305), "{times:?}");
    assert_eq!(*events.lock().unwrap(), retried(ms(303)));

    // With no room for the backoff, the `retry_after` alone is waited.
    let (layer, events) = http_retry(HttpPolicy::new());
    let (svc, calls) = scripted(vec![NotSent(Some(ms(300))), Status(200)]);
    layer
        .layer(svc)
        .oneshot(post_due_in(ms(302)))
        .await
        .unwrap();
    assert_eq!(calls.count(), 2);
    assert_eq!(*events.lock().unwrap(), retried(ms(300)));
}

/// An error `ignore_error` returns at once, never sent, after an attempt that was sent, comes back
/// wrapped in a `SentEarlier`: not an `E` at the top, but found by its type.
#[tokio::test(start_paused = true)]
async fn an_ignored_error_after_a_sent_attempt_is_found_inside_sent_earlier() {
    use seawall_core::error::{find, is, is_not_sent, SentEarlier};

    let layer = RetryLayer::builder()
        .budget(RetryBudget::unlimited())
        .ignore_error::<Rejected>()
        .build()
        .unwrap();
    let (svc, calls) = plain(vec![Reset, NotSent(None), Status(200)]);
    let err = layer.layer(svc).oneshot(Plain).await.unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 2);
    assert!(find::<Rejected>(&*err).is_some());
    assert!(is::<SentEarlier>(&*err));
    assert!(!err.is::<Rejected>());
    assert!(!is_not_sent(&*err));
}

/// A service whose first attempt is sent and reset, and which then fails its readiness with a
/// rejection raised before sending (a breaker below that opened).
#[derive(Clone)]
struct OpensAfterReset {
    polled: Arc<Mutex<u32>>,
}

impl Service<Plain> for OpensAfterReset {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let mut polled = self.polled.lock().unwrap();
        *polled += 1;
        std::task::Poll::Ready(if *polled == 1 {
            Ok(())
        } else {
            Err(Box::new(Rejected(NotSent::new())))
        })
    }

    fn call(&mut self, _: Plain) -> Self::Future {
        std::future::ready(Err("connection reset".into()))
    }
}

/// A readiness error proving the next attempt was never sent, after an attempt that was sent,
/// is not taken for never sent either.
#[tokio::test(start_paused = true)]
async fn a_readiness_error_after_a_sent_attempt_is_not_taken_for_never_sent() {
    use seawall_core::error::{find, is, is_not_sent, SentEarlier};

    let (listener, events) = recording();
    let layer = RetryLayer::builder()
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
        .on_event(listener)
        .build()
        .unwrap();
    let polled = Arc::new(Mutex::new(0));
    let svc = OpensAfterReset {
        polled: polled.clone(),
    };
    let err = layer.layer(svc).oneshot(Plain).await.unwrap_err();
    assert_eq!(*polled.lock().unwrap(), 2);
    assert!(is::<SentEarlier>(&*err), "{err}");
    assert!(!is_not_sent(&*err));
    assert!(find::<Rejected>(&*err).is_some());
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&gave_up(1, GiveUpReason::NotReady))
    );
}

/// With a per-attempt timeout, a first attempt cut by it (it may have been sent) and a second
/// rejected before sending end as a call that was sent.
#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_then_one_never_sent_is_not_taken_for_never_sent() {
    use seawall_core::{
        deadline::Elapsed,
        error::{find, is, is_not_sent, SentEarlier},
    };

    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(ms(10)))
        .per_attempt_timeout(ms(100))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let (svc, calls) = counted(move |n| async move {
        if n == 1 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok(())
        } else {
            Err(Box::new(Rejected(NotSent::new())) as BoxError)
        }
    });
    let start = Instant::now();
    let err = layer.layer(svc).oneshot(Plain).await.unwrap_err();
    assert_eq!(*calls.lock().unwrap(), 2);
    assert_eq!(start.elapsed(), ms(110));
    assert!(is::<SentEarlier>(&*err), "{err}");
    assert!(!is_not_sent(&*err));
    assert!(find::<Rejected>(&*err).is_some());
    assert!(!is::<Elapsed>(&*err));
}

/// A backoff after a rejection's `retry_after` that fits in the deadline's room, a tick left for
/// the attempt, is waited whole, not shortened; a deadline with no room beyond the `retry_after`
/// and a tick is given up on.
#[tokio::test(start_paused = true)]
async fn a_backoff_that_fits_after_a_rejections_retry_after_is_not_shortened() {
    // 300 ms + 3.5 ms + a tick is less than the 305 ms left.
    let (layer, events) = http_retry_with(
        HttpPolicy::new(),
        Backoff::constant(Duration::from_micros(3500)),
    );
    let calls = answered_after_a_300_ms_retry_after(&layer, post_due_in(ms(305))).await;
    assert_eq!(calls.count(), 2);
    assert_eq!(
        *events.lock().unwrap(),
        retried(Duration::from_micros(303_500))
    );

    // 301 ms left: the `retry_after`'s timer may fire at the deadline, with nothing left.
    let (_, events) = given_up(ms(300), post_due_in(ms(301))).await;
    assert_eq!(events, [gave_up(1, GiveUpReason::Deadline)]);
}

/// A backoff after a rejection's `retry_after` that with a tick fills the deadline's room exactly
/// (300 ms + 4 ms + a tick, 305 ms left) does not fit, a tick being left for the attempt: it is
/// shortened to 3 ms, not waited whole and the call given up on.
#[tokio::test(start_paused = true)]
async fn a_backoff_that_fills_the_room_after_a_rejections_retry_after_is_shortened() {
    let (layer, events) = http_retry_with(HttpPolicy::new(), Backoff::constant(ms(4)));
    let (svc, calls) = scripted(vec![NotSent(Some(ms(300))), Status(200)]);
    let start = Instant::now();
    let mut req = post();
    req.set_deadline(start + ms(305));
    let res = layer.layer(svc).oneshot(req).await.unwrap();
    assert_eq!(res.status(), 200);
    let times: Vec<_> = calls.all().iter().map(|c| c.at - start).collect();
    assert_eq!(times.len(), 2);
    assert!(times[1] >= ms(303) && times[1] < ms(305), "{times:?}");
    assert_eq!(
        *events.lock().unwrap(),
        [RetryEvent::Retry {
            attempt: 2,
            delay: ms(303)
        }]
    );
}
