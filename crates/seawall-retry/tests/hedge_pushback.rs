//! A hedge and the pause a server asks for with a failed answer (`Policy::retry_after`,
//! `Policy::retry_after_error`: gRPC's retry pushback for one): "do not retry" (`Duration::MAX`)
//! sends no further hedge, as gRFC A6 has it, and a pause holds the next hedge back until at
//! least then, a floor that never sends it sooner than its delay (A6 would); the copies already
//! out run on. In paused time.

mod support;

use seawall_core::{deadline::RequestDeadline, BoxError};
use seawall_retry::{HedgeLayer, RetryBudget};
use std::time::Duration;
use support::pause::{Answer, Busy, Pausing};
use support::{get, in_turn, ms, Calls, Req};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// Answers call `n` as `script[n]` says, after its latency (the last one repeats).
fn scripted(
    script: Vec<(Duration, Answer)>,
) -> (
    impl Service<Req, Response = &'static str, Error = BoxError> + Clone,
    Calls,
) {
    in_turn(script, |(latency, answer)| async move {
        tokio::time::sleep(latency).await;
        answer.result()
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

/// How a hedged call went, from its start.
struct Hedged {
    result: Result<&'static str, BoxError>,
    /// When each call came.
    at: Vec<Duration>,
    /// When the call ended.
    took: Duration,
}

/// Sends a request, due `deadline` from now if given, through [`hedge`] with `policy` and
/// `max_hedges` to a service answering as `script` says.
async fn hedged(
    policy: Pausing,
    max_hedges: u32,
    script: Vec<(Duration, Answer)>,
    deadline: Option<Duration>,
) -> Hedged {
    let (svc, calls) = scripted(script);
    let start = Instant::now();
    let mut request = get();
    if let Some(deadline) = deadline {
        request.set_deadline(start + deadline);
    }
    let result = hedge(policy, max_hedges).layer(svc).oneshot(request).await;
    Hedged {
        result,
        at: calls.since(start),
        took: start.elapsed(),
    }
}

/// The original answers `Ok` at 1 s; hedge 1 (sent at 20 ms) fails at 25 ms with `first`;
/// hedge 2 answers `Ok` at once. The answer, and when each call came.
async fn original_slow_first_hedge_fails(
    policy: Pausing,
    first: Answer,
) -> (&'static str, Vec<Duration>) {
    let script = vec![(ms(1000), Answer::Ok), (ms(5), first), (ms(0), Answer::Ok)];
    let call = hedged(policy, 2, script, None).await;
    (call.result.unwrap(), call.at)
}

#[tokio::test(start_paused = true)]
async fn do_not_retry_from_a_failed_hedge_sends_no_further_hedge() {
    let (answer, at) =
        original_slow_first_hedge_fails(Pausing::default(), Answer::Busy(Some(Duration::MAX)))
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
        original_slow_first_hedge_fails(Pausing::default(), Answer::Busy(Some(ms(500)))).await;
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
        let (answer, at) = original_slow_first_hedge_fails(Pausing::default(), first).await;
        assert_eq!(answer, "ok");
        assert_eq!(at, [ms(0), ms(20), ms(40)], "{first:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_pause_the_deadline_has_no_room_for_sends_no_further_hedge() {
    let script = vec![
        (ms(200), Answer::Ok),
        (ms(5), Answer::Busy(Some(ms(500)))),
        (ms(0), Answer::Ok),
    ];
    let call = hedged(Pausing::default(), 2, script, Some(ms(300))).await;
    assert_eq!(call.result.unwrap(), "ok");
    assert_eq!(call.at, [ms(0), ms(20)]);
    assert_eq!(call.took, ms(200), "the original answered");
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
    let call = hedged(policy.clone(), 2, vec![(ms(5), Answer::Ok)], None).await;
    assert_eq!(call.result.unwrap(), "ok");
    assert_eq!(policy.asked(), 0);

    // An ignored answer of hedge 1: not asked, and hedge 2 goes at 40 ms.
    let policy = Pausing::default();
    let (answer, at) = original_slow_first_hedge_fails(policy.clone(), Answer::Other).await;
    assert_eq!(answer, "ok");
    assert_eq!(at, [ms(0), ms(20), ms(40)]);
    assert_eq!(policy.asked(), 0);

    // A failure after the last hedge was sent: no hedge left to hold back, nothing asked.
    let policy = Pausing::default();
    let script = vec![
        (ms(100), Answer::Ok),
        (ms(5), Answer::Busy(Some(Duration::MAX))),
    ];
    let call = hedged(policy.clone(), 1, script, None).await;
    assert_eq!(call.result.unwrap(), "ok");
    assert_eq!(policy.asked(), 0);

    // A failure while hedge 2 may follow: asked once.
    let policy = Pausing::default();
    original_slow_first_hedge_fails(policy.clone(), Answer::Busy(None)).await;
    assert_eq!(policy.asked(), 1);

    // The original fails before hedge 1 is due, with no other copy running: the call ends with
    // its failure, and nothing is asked.
    let policy = Pausing::default();
    let script = vec![(ms(5), Answer::Busy(Some(ms(5))))];
    let call = hedged(policy.clone(), 2, script, None).await;
    let error = call.result.unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(call.took, ms(5));
    assert_eq!(call.at.len(), 1);
    assert_eq!(policy.asked(), 0);

    // The original fails at 22 ms while hedge 1 runs: asked. Hedge 1 fails at 25 ms, the last
    // copy running, with hedge 2 still to come: the call ends, and nothing more is asked.
    let policy = Pausing::default();
    let script = vec![
        (ms(22), Answer::Busy(None)),
        (ms(5), Answer::Busy(Some(ms(5)))),
    ];
    let call = hedged(policy.clone(), 2, script, None).await;
    let error = call.result.unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(call.took, ms(25));
    assert_eq!(call.at, [ms(0), ms(20)]);
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
