//! Attempt counts and the delays between attempts, in paused time with a fixed seed.

mod support;

use seawall_retry::{Backoff, Jitter, RetryBudget, RetryEvent, RetryLayer};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use support::{flaky, get, ms};
use tower::{Layer, ServiceExt};

/// Paused time fires timers on whole milliseconds, so a jittered delay is seen up to 1 ms late.
fn assert_close(got: &[Duration], want: &[Duration]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!(
            *g >= *w && *g - *w <= ms(1),
            "gap {g:?} should be {w:?}: got {got:?}, want {want:?}"
        );
    }
}

fn layer(max_attempts: u32, backoff: Backoff, seed: u64) -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(max_attempts)
        .backoff(backoff)
        .budget(RetryBudget::unlimited())
        .seed(seed)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn always_failing_call_makes_max_attempts_and_returns_last_error() {
    let (svc, calls) = flaky(usize::MAX);
    let err = layer(4, Backoff::constant(ms(10)), 1)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(calls.count(), 4);
    assert_eq!(err.to_string(), "fail 3", "the last real error comes back");
}

#[tokio::test(start_paused = true)]
async fn stops_at_first_success() {
    let (svc, calls) = flaky(2);
    let ok = layer(5, Backoff::constant(ms(10)), 1)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(ok, "ok 2");
    assert_eq!(calls.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn one_attempt_means_no_retry() {
    let (svc, calls) = flaky(usize::MAX);
    layer(1, Backoff::constant(ms(10)), 1)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn constant_backoff_gaps() {
    let (svc, calls) = flaky(usize::MAX);
    layer(4, Backoff::constant(ms(250)), 1)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(calls.gaps(), [ms(250), ms(250), ms(250)]);
}

#[tokio::test(start_paused = true)]
async fn exponential_full_jitter_follows_the_seed_within_bounds() {
    let backoff = Backoff::exponential(ms(100)).with_max_delay(ms(700));
    for seed in [0, 7, 42, 1234] {
        let (svc, calls) = flaky(usize::MAX);
        layer(6, backoff, seed)
            .layer(svc)
            .oneshot(get())
            .await
            .unwrap_err();
        let want: Vec<Duration> = backoff.delays(seed).take(5).collect();
        assert_close(&calls.gaps(), &want);
        for (n, d) in want.iter().enumerate() {
            let ceiling = (ms(100) * (1 << n)).min(ms(700));
            assert!(*d <= ceiling, "retry {n}: {d:?} above {ceiling:?}");
        }
        // Same seed, same run.
        let (svc, again) = flaky(usize::MAX);
        layer(6, backoff, seed)
            .layer(svc)
            .oneshot(get())
            .await
            .unwrap_err();
        assert_eq!(calls.gaps(), again.gaps());
    }
}

#[tokio::test(start_paused = true)]
async fn exponential_without_jitter_is_capped() {
    let backoff = Backoff::exponential(ms(100))
        .with_jitter(Jitter::None)
        .with_max_delay(ms(500));
    let (svc, calls) = flaky(usize::MAX);
    layer(6, backoff, 0)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    assert_eq!(calls.gaps(), [ms(100), ms(200), ms(400), ms(500), ms(500)]);
}

#[tokio::test(start_paused = true)]
async fn decorrelated_jitter_follows_the_seed_within_bounds() {
    let backoff = Backoff::decorrelated(ms(50)).with_max_delay(ms(800));
    let (svc, calls) = flaky(usize::MAX);
    layer(8, backoff, 99)
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap_err();
    let want: Vec<Duration> = backoff.delays(99).take(7).collect();
    assert_close(&calls.gaps(), &want);
    let mut previous = ms(50);
    for d in want {
        assert!(d >= ms(50) && d <= (previous * 3).min(ms(800)), "{d:?}");
        previous = d;
    }
}

#[tokio::test(start_paused = true)]
async fn later_calls_draw_other_delays() {
    let backoff = Backoff::exponential(ms(100)).with_max_delay(ms(10_000));
    let layer = layer(4, backoff, 5);
    let (svc, first) = flaky(usize::MAX);
    layer.layer(svc).oneshot(get()).await.unwrap_err();
    let (svc, second) = flaky(usize::MAX);
    layer.layer(svc).oneshot(get()).await.unwrap_err();
    assert_close(
        &first.gaps(),
        &backoff.delays(5).take(3).collect::<Vec<_>>(),
    );
    assert_ne!(first.gaps(), second.gaps());
}

#[tokio::test(start_paused = true)]
async fn events_report_each_retry_and_giving_up() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(20)))
        .budget(RetryBudget::unlimited())
        .on_event(move |_: &seawall_core::Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let (svc, _) = flaky(usize::MAX);
    layer.layer(svc).oneshot(get()).await.unwrap_err();
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(
        events[0],
        RetryEvent::Retry {
            attempt: 2,
            delay
        } if delay == ms(20)
    ));
    assert!(matches!(events[1], RetryEvent::Retry { attempt: 3, .. }));
    assert!(matches!(
        events[2],
        RetryEvent::GaveUp {
            attempts: 3,
            reason: seawall_retry::GiveUpReason::Attempts
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn successes_and_ignored_outcomes_are_not_retried() {
    // A classifier that ignores "fail 0": neither a success nor a failure, so not retried.
    let layer = RetryLayer::builder()
        .classify(
            |r: Result<&String, &seawall_core::BoxError>, _: Duration| match r {
                Err(e) if e.to_string() == "fail 0" => seawall_core::Outcome::Ignored,
                Err(_) => seawall_core::Outcome::Failure,
                Ok(_) => seawall_core::Outcome::Success,
            },
        )
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let err = layer.layer(svc).oneshot(get()).await.unwrap_err();
    assert_eq!(err.to_string(), "fail 0");
    assert_eq!(calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn retries_outlive_the_layer_and_service() {
    // `oneshot` drops the service right after the call; the layer is gone too. The response
    // future keeps what it needs to go on retrying.
    let (svc, calls) = flaky(2);
    let service = layer(3, Backoff::constant(ms(10)), 1).layer(svc);
    let future = service.oneshot(get());
    assert_eq!(future.await.unwrap(), "ok 2");
    assert_eq!(calls.count(), 3);
}
