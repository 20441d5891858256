//! A pause read from a failed attempt's error (`Policy::retry_after_error`, gRPC's retry pushback
//! for one): waited as a server's `Retry-After` is, under the same cap and deadline rules, and
//! asked only after a failed attempt. In paused time.

mod support;

use seawall_core::{deadline::RequestDeadline, BoxError};
use seawall_retry::{Backoff, GiveUpReason, RetryBudget, RetryEvent, RetryLayer};
use std::time::Duration;
use support::pause::{Answer, Busy, Other, Pausing};
use support::{get, in_turn, ms, recording, Calls, Events, Req};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// Answers each call as `script` says in turn (the last one repeats).
fn scripted(
    script: Vec<Answer>,
) -> (
    impl Service<Req, Response = &'static str, Error = BoxError> + Clone,
    Calls,
) {
    in_turn(script, |answer| async move { answer.result() })
}

/// A retry of three attempts with `policy`, a 10 ms backoff, no budget to run out, the default
/// `retry_after_cap` unless `cap` is given; and its events.
fn retry(policy: Pausing, cap: Option<Duration>) -> (RetryLayer<Pausing>, Events) {
    let (listener, events) = recording();
    let mut builder = RetryLayer::builder()
        .policy(policy)
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
        .on_event(listener);
    if let Some(cap) = cap {
        builder = builder.retry_after_cap(cap);
    }
    (builder.build().unwrap(), events)
}

fn gave_up(events: &Events) -> Vec<GiveUpReason> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|event| match event {
            RetryEvent::GaveUp { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn the_next_attempt_waits_the_pause_an_error_asks_for() {
    let policy = Pausing::default();
    let (layer, events) = retry(policy.clone(), None);
    let (svc, calls) = scripted(vec![Answer::Busy(Some(ms(300))), Answer::Ok]);
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap(), "ok");
    assert_eq!(
        calls.since(start),
        [ms(0), ms(300)],
        "300 ms, not the 10 ms backoff"
    );
    assert_eq!(policy.asked(), 1);
    assert!(gave_up(&events).is_empty());
    assert!(matches!(
        events.lock().unwrap()[0],
        RetryEvent::Retry { attempt: 2, delay } if delay == ms(300)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_pause_shorter_than_the_backoff_waits_the_backoff() {
    let (layer, _) = retry(Pausing::default(), None);
    let (svc, calls) = scripted(vec![
        Answer::Busy(Some(ms(2))),
        Answer::Busy(None),
        Answer::Ok,
    ]);
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap(), "ok");
    // The longer of the pause and the backoff; an error asking for none waits the backoff.
    assert_eq!(calls.since(start), [ms(0), ms(10), ms(20)]);
}

#[tokio::test(start_paused = true)]
async fn a_pause_over_the_cap_returns_the_error_at_once() {
    let (layer, events) = retry(Pausing::default(), None);
    let (svc, calls) = scripted(vec![
        Answer::Busy(Some(Duration::from_secs(11))),
        Answer::Ok,
    ]);
    let start = Instant::now();
    let error = layer.layer(svc).oneshot(get()).await.unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(calls.count(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(gave_up(&events), [GiveUpReason::RetryAfter]);

    // Within a cap raised for it, the same pause is waited.
    let (layer, _) = retry(Pausing::default(), Some(Duration::from_secs(20)));
    let (svc, calls) = scripted(vec![
        Answer::Busy(Some(Duration::from_secs(11))),
        Answer::Ok,
    ]);
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap(), "ok");
    assert_eq!(calls.since(start), [ms(0), Duration::from_secs(11)]);
}

#[tokio::test(start_paused = true)]
async fn a_pause_of_duration_max_is_never_retried_whatever_the_cap() {
    let (layer, events) = retry(Pausing::default(), Some(Duration::MAX));
    let (svc, calls) = scripted(vec![Answer::Busy(Some(Duration::MAX)), Answer::Ok]);
    let start = Instant::now();
    let error = layer.layer(svc).oneshot(get()).await.unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(calls.count(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(gave_up(&events), [GiveUpReason::RetryAfter]);
}

#[tokio::test(start_paused = true)]
async fn a_pause_the_deadline_has_no_room_for_gives_up_at_once() {
    let (layer, events) = retry(Pausing::default(), None);
    let (svc, calls) = scripted(vec![Answer::Busy(Some(ms(300))), Answer::Ok]);
    let start = Instant::now();
    let mut request = get();
    request.set_deadline(start + ms(250));
    let error = layer.layer(svc).oneshot(request).await.unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(calls.count(), 1);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no sleep into the deadline"
    );
    assert_eq!(gave_up(&events), [GiveUpReason::Deadline]);

    // With room for the pause and a tick, it is waited.
    let (layer, _) = retry(Pausing::default(), None);
    let (svc, calls) = scripted(vec![Answer::Busy(Some(ms(300))), Answer::Ok]);
    let start = Instant::now();
    let mut request = get();
    request.set_deadline(start + ms(302));
    assert_eq!(layer.layer(svc).oneshot(request).await.unwrap(), "ok");
    assert_eq!(calls.since(start), [ms(0), ms(300)]);
}

#[tokio::test(start_paused = true)]
async fn a_rejections_wait_does_not_let_the_deadline_cut_the_pause() {
    // The rejection's 100 ms and the policy's 300 ms after it do not fit in 200 ms: the pause is
    // not shortened to fit, the call gives up at once.
    let (layer, events) = retry(Pausing::default(), None);
    let (svc, calls) = scripted(vec![Answer::BusyUnsent(ms(300), ms(100)), Answer::Ok]);
    let start = Instant::now();
    let mut request = get();
    request.set_deadline(start + ms(200));
    let error = layer.layer(svc).oneshot(request).await.unwrap_err();
    assert!(error.is::<Busy>(), "{error}");
    assert_eq!(calls.count(), 1);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(gave_up(&events), [GiveUpReason::Deadline]);

    // With room for both and a tick, both are waited.
    let (layer, _) = retry(Pausing::default(), None);
    let (svc, calls) = scripted(vec![Answer::BusyUnsent(ms(300), ms(100)), Answer::Ok]);
    let start = Instant::now();
    let mut request = get();
    request.set_deadline(start + ms(402));
    assert_eq!(layer.layer(svc).oneshot(request).await.unwrap(), "ok");
    assert_eq!(calls.since(start), [ms(0), ms(400)]);
}

#[tokio::test(start_paused = true)]
async fn the_pause_is_asked_only_after_a_failed_attempt() {
    let policy = Pausing::default();
    let (layer, _) = retry(policy.clone(), None);
    let (svc, _) = scripted(vec![Answer::Ok]);
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap(), "ok");
    assert_eq!(policy.asked(), 0, "a first-time success");
    let (layer, _) = retry(policy.clone(), None);
    let (other, _) = scripted(vec![Answer::Other]);
    assert!(layer.layer(other).oneshot(get()).await.is_err());
    assert_eq!(policy.asked(), 0, "an error the policy does not retry");
    let (layer, _) = retry(policy.clone(), None);
    let (busy, calls) = scripted(vec![Answer::Busy(None)]);
    assert!(layer.layer(busy).oneshot(get()).await.is_err());
    assert_eq!(calls.count(), 3);
    // After the first and second failures; the third had no attempt left to wait for.
    assert_eq!(policy.asked(), 2);
}

#[tokio::test(start_paused = true)]
async fn ignoring_an_error_type_keeps_the_policys_pause() {
    let layer = RetryLayer::builder()
        .policy(Pausing::default())
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
        .ignore_error::<Other>()
        .build()
        .unwrap();
    let (svc, calls) = scripted(vec![Answer::Busy(Some(ms(300))), Answer::Ok]);
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap(), "ok");
    assert_eq!(calls.since(start), [ms(0), ms(300)]);

    use seawall_core::classify::ClassifyExt;
    let layer = RetryLayer::builder()
        .policy(Pausing::default().ignore_error::<Other>())
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let (svc, calls) = scripted(vec![Answer::Busy(Some(ms(300))), Answer::Ok]);
    let start = Instant::now();
    assert_eq!(layer.layer(svc).oneshot(get()).await.unwrap(), "ok");
    assert_eq!(calls.since(start), [ms(0), ms(300)]);
}
