//! A hedge and the pause a server asks for with a failed answer (`Policy::retry_after`,
//! `Policy::retry_after_error`: gRPC's retry pushback for one): "do not retry" (`Duration::MAX`)
//! sends no further hedge, as gRFC A6 has it, and a pause holds the next hedge back until at
//! least then, a floor that never sends it sooner than its delay (A6 would); the copies already
//! out run on. In paused time.

mod support;

use seawall_core::{deadline::RequestDeadline, BoxError, Outcome};
use seawall_retry::{HedgeLayer, Policy, RetryBudget};
use std::{
    error::Error,
    fmt,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};
use support::{get, in_turn, ms, Calls, Req};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// A server's "busy, come back in a while", as a client of one's own reports it.
#[derive(Debug)]
struct Busy(Option<Duration>);

impl fmt::Display for Busy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("busy")
    }
}

impl Error for Busy {}

/// An error the policy ignores (the server's own answer).
#[derive(Debug)]
struct Other;

impl fmt::Display for Other {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("other")
    }
}

impl Error for Other {}

/// Fails every error but [`Other`], and reads the wait a [`Busy`] carries; counts how often it
/// is asked.
#[derive(Clone, Default)]
struct Pausing {
    asked: Arc<AtomicU32>,
}

impl Pausing {
    fn asked(&self) -> u32 {
        self.asked.load(Ordering::Relaxed)
    }
}

impl Policy<Req, &'static str> for Pausing {
    fn classify(&self, result: Result<&&'static str, &BoxError>, _: Duration) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(error) if error.is::<Other>() => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }
    }

    fn retry_after_error(&self, error: &BoxError) -> Option<Duration> {
        self.asked.fetch_add(1, Ordering::Relaxed);
        error.downcast_ref::<Busy>().and_then(|busy| busy.0)
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// How one call of a [`scripted`] service ends.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// Busy, with the wait it asks for if any.
    Busy(Option<Duration>),
    /// An error the policy ignores.
    Other,
    Ok,
}

/// Answers call `n` as `script[n]` says, after its latency (the last one repeats).
fn scripted(
    script: Vec<(Duration, Answer)>,
) -> (
    impl Service<Req, Response = &'static str, Error = BoxError> + Clone,
    Calls,
) {
    in_turn(script, |(latency, answer)| async move {
        tokio::time::sleep(latency).await;
        match answer {
            Answer::Busy(after) => Err(Box::new(Busy(after)) as BoxError),
            Answer::Other => Err(Box::new(Other) as BoxError),
            Answer::Ok => Ok("ok"),
        }
    })
}

/// Up to `max_hedges` hedges 20 ms apart with `policy`, no budget to run out.
fn hedge(policy: Pausing, max_hedges: u32) -> HedgeLayer<Pausing> {
    HedgeLayer::builder()
        .policy(policy)
        .delay(ms(20))
        .max_hedges(max_hedges)
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap()
}

/// The original answers `Ok` at 1 s; hedge 1 (sent at 20 ms) fails at 25 ms with `first`;
/// hedge 2 answers `Ok` at once. The answer, and when each call came.
async fn original_slow_first_hedge_fails(
    policy: Pausing,
    first: Answer,
    deadline: Option<Duration>,
) -> (&'static str, Vec<Duration>) {
    let (svc, calls) = scripted(vec![
        (ms(1000), Answer::Ok),
        (ms(5), first),
        (ms(0), Answer::Ok),
    ]);
    let start = Instant::now();
    let mut request = get();
    if let Some(deadline) = deadline {
        request.set_deadline(start + deadline);
    }
    let answer = hedge(policy, 2).layer(svc).oneshot(request).await.unwrap();
    (answer, calls.since(start))
}

#[tokio::test(start_paused = true)]
async fn do_not_retry_from_a_failed_hedge_sends_no_further_hedge() {
    let (answer, at) = original_slow_first_hedge_fails(
        Pausing::default(),
        Answer::Busy(Some(Duration::MAX)),
        None,
    )
    .await;
    // Hedge 2, due at 40 ms, is never sent: the original, still running, answers.
    assert_eq!(answer, "ok");
    assert_eq!(at, [ms(0), ms(20)]);
}

#[tokio::test(start_paused = true)]
async fn do_not_retry_leaves_the_copies_already_out_running() {
    // The original hangs; hedge 1 fails at 25 ms saying not to retry. By 100 ms no hedge 2 was
    // sent, and the call still waits on the original.
    let (svc, calls) = scripted(vec![
        (Duration::from_secs(3600), Answer::Ok),
        (ms(5), Answer::Busy(Some(Duration::MAX))),
        (ms(0), Answer::Ok),
    ]);
    let call = hedge(Pausing::default(), 2).layer(svc).oneshot(get());
    assert!(tokio::time::timeout(ms(100), call).await.is_err());
    assert_eq!(calls.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_pause_from_a_failed_hedge_holds_the_next_one_back() {
    let (answer, at) =
        original_slow_first_hedge_fails(Pausing::default(), Answer::Busy(Some(ms(500))), None)
            .await;
    // Hedge 2 at 25 + 500 ms, not at 40 ms; it wins.
    assert_eq!(answer, "ok");
    assert_eq!(at, [ms(0), ms(20), ms(525)]);
}

#[tokio::test(start_paused = true)]
async fn a_pause_shorter_than_the_hedge_delay_changes_nothing() {
    for first in [
        Answer::Busy(Some(ms(5))),
        Answer::Busy(Some(Duration::ZERO)),
        Answer::Busy(None),
    ] {
        let (answer, at) = original_slow_first_hedge_fails(Pausing::default(), first, None).await;
        assert_eq!(answer, "ok");
        assert_eq!(at, [ms(0), ms(20), ms(40)], "{first:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_pause_the_deadline_has_no_room_for_sends_no_further_hedge() {
    let (svc, calls) = scripted(vec![
        (ms(200), Answer::Ok),
        (ms(5), Answer::Busy(Some(ms(500)))),
        (ms(0), Answer::Ok),
    ]);
    let start = Instant::now();
    let mut request = get();
    request.set_deadline(start + ms(300));
    let answer = hedge(Pausing::default(), 2)
        .layer(svc)
        .oneshot(request)
        .await
        .unwrap();
    assert_eq!(answer, "ok");
    assert_eq!(calls.since(start), [ms(0), ms(20)]);
    assert_eq!(start.elapsed(), ms(200), "the original answered");
}

#[tokio::test(start_paused = true)]
async fn a_pause_holds_back_a_hedge_waiting_for_the_service_to_be_ready() {
    // Two calls at a time underneath. The original hangs; hedge 1, sent at 20 ms, holds the
    // other permit until it fails at 50 ms asking for 100 ms. Hedge 2, due at 40 ms, is waiting
    // for a permit then: it does not take the one hedge 1 frees, and goes at 150 ms.
    let (svc, calls) = scripted(vec![
        (Duration::from_secs(3600), Answer::Ok),
        (ms(30), Answer::Busy(Some(ms(100)))),
        (ms(0), Answer::Ok),
    ]);
    let svc = tower::ServiceBuilder::new()
        .layer(hedge(Pausing::default(), 2))
        .concurrency_limit(2)
        .service(svc);
    let start = Instant::now();
    assert_eq!(svc.oneshot(get()).await.unwrap(), "ok");
    assert_eq!(calls.since(start), [ms(0), ms(20), ms(150)]);
}

#[tokio::test(start_paused = true)]
async fn the_pause_is_asked_only_of_a_failure_while_a_copy_runs_and_a_hedge_may_follow() {
    // The original wins: nothing asked.
    let policy = Pausing::default();
    let (svc, _) = scripted(vec![(ms(5), Answer::Ok)]);
    assert_eq!(
        hedge(policy.clone(), 2)
            .layer(svc)
            .oneshot(get())
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(policy.asked(), 0);

    // An ignored answer of hedge 1: not asked, and hedge 2 goes at 40 ms.
    let policy = Pausing::default();
    let (answer, at) = original_slow_first_hedge_fails(policy.clone(), Answer::Other, None).await;
    assert_eq!(answer, "ok");
    assert_eq!(at, [ms(0), ms(20), ms(40)]);
    assert_eq!(policy.asked(), 0);

    // A failure after the last hedge was sent: no hedge left to hold back, nothing asked.
    let policy = Pausing::default();
    let (svc, _) = scripted(vec![
        (ms(100), Answer::Ok),
        (ms(5), Answer::Busy(Some(Duration::MAX))),
    ]);
    assert_eq!(
        hedge(policy.clone(), 1)
            .layer(svc)
            .oneshot(get())
            .await
            .unwrap(),
        "ok"
    );
    assert_eq!(policy.asked(), 0);

    // A failure while hedge 2 may follow: asked once.
    let policy = Pausing::default();
    original_slow_first_hedge_fails(policy.clone(), Answer::Busy(None), None).await;
    assert_eq!(policy.asked(), 1);

    // The original fails before hedge 1 is due, with no other copy running: the call ends with
    // its failure, and nothing is asked.
    let policy = Pausing::default();
    let (svc, calls) = scripted(vec![(ms(5), Answer::Busy(Some(ms(5))))]);
    let start = Instant::now();
    let error = hedge(policy.clone(), 2)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(start.elapsed(), ms(5));
    assert_eq!(calls.count(), 1);
    assert_eq!(policy.asked(), 0);

    // The original fails at 22 ms while hedge 1 runs: asked. Hedge 1 fails at 25 ms, the last
    // copy running, with hedge 2 still to come: the call ends, and nothing more is asked.
    let policy = Pausing::default();
    let (svc, calls) = scripted(vec![
        (ms(22), Answer::Busy(None)),
        (ms(5), Answer::Busy(Some(ms(5)))),
    ]);
    let start = Instant::now();
    let error = hedge(policy.clone(), 2)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(start.elapsed(), ms(25));
    assert_eq!(calls.since(start), [ms(0), ms(20)]);
    assert_eq!(policy.asked(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_on_a_failed_response_holds_the_next_hedge_back() {
    // The HTTP policy reads `Retry-After` from a 503. The original answers at 2 s; hedge 1,
    // sent at 20 ms, answers a 503 asking for a second at once, so hedge 2 goes at 1.02 s
    // rather than at 40 ms, and wins.
    let (svc, calls) = in_turn(
        vec![
            (Duration::from_secs(2), 200, None),
            (ms(0), 503, Some("1")),
            (ms(0), 204, None),
        ],
        |(latency, status, after)| async move {
            tokio::time::sleep(latency).await;
            let mut response = http::Response::builder().status(status);
            if let Some(after) = after {
                response = response.header("retry-after", after);
            }
            Ok::<_, BoxError>(response.body(()).unwrap())
        },
    );
    let layer = HedgeLayer::builder()
        .http()
        .delay(ms(20))
        .max_hedges(2)
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let start = Instant::now();
    let response = layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(calls.since(start), [ms(0), ms(20), ms(1020)]);
}
