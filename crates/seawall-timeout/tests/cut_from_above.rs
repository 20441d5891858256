//! A per-try timeout whose timer fires together with (or after) that of the total timeout above
//! it leaves the call to the total timeout: the attempt is cancelled from above, and the per-try
//! layer reports nothing. A default timeout that enforces the total timeout's deadline cuts the
//! call at it itself, and reports it.

mod common;

use common::{recorder, Seen};
use seawall_core::{
    metrics::{testing::TestRecorder, TIMEOUT_ELAPSED},
    BoxError, Name,
};
use seawall_timeout::{Elapsed, RequestDeadline, TimeoutEvent, TimeoutLayer};
use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::Notify, time::Instant};
use tokio_test::task::Spawn;
use tower::{limit::ConcurrencyLimit, service_fn, Layer, ServiceBuilder, ServiceExt};
use tower_test::mock::SendResponse;

type Events = Arc<Mutex<Vec<TimeoutEvent>>>;

/// A per-try timeout of `timeout` whose events go to the returned list.
fn per_try(timeout: Duration) -> (TimeoutLayer, Events) {
    let (layer, events) = enforcing(timeout);
    (layer.per_try(), events)
}

/// A default timeout of `timeout`, which enforces an earlier deadline on the request, whose
/// events go to the returned list.
fn enforcing(timeout: Duration) -> (TimeoutLayer, Events) {
    let events = Events::default();
    let sink = events.clone();
    let layer = TimeoutLayer::builder()
        .timeout(timeout)
        .name("inner")
        .on_event(move |_: &Name, e: &TimeoutEvent| sink.lock().unwrap().push(*e))
        .build()
        .unwrap();
    (layer, events)
}

/// What a layer reports when it cuts a call it gave `budget`.
fn reported(budget: Duration) -> [TimeoutEvent; 1] {
    [TimeoutEvent::Elapsed { budget }]
}

/// A call that is late: from 0.5 ms on, off the millisecond tick, a request (due `deadline` from
/// then, if given) goes through a total timeout of `total` (if given) over `inner` to a service
/// that answers when told. At 5.7 ms the pending call, and the means to answer its attempt.
async fn late(
    total: Option<Duration>,
    inner: TimeoutLayer,
    deadline: Option<Duration>,
) -> (
    Spawn<impl Future<Output = Result<&'static str, BoxError>>>,
    SendResponse<&'static str>,
) {
    tokio::time::advance(Duration::from_micros(500)).await;
    let (service, mut handle) = tower_test::mock::pair::<http::Request<()>, &'static str>();
    let svc = ServiceBuilder::new()
        .option_layer(total.map(TimeoutLayer::new))
        .layer(inner)
        .service(service);
    let mut req = http::Request::new(());
    if let Some(deadline) = deadline {
        req.set_deadline(Instant::now() + deadline);
    }
    let mut call = tokio_test::task::spawn(svc.oneshot(req));
    tokio_test::assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.expect("the attempt is sent");
    tokio::time::advance(Duration::from_micros(5_200)).await;
    (call, send)
}

/// A [`late`] call through a total timeout of 5 ms over a per-try one of 5 ms, its attempt ended
/// by `end` at 5.7 ms, past both deadlines and before either timer has fired: what it found is
/// dropped, the call waits for the timers, and the total timeout cuts it on the 6 ms tick with
/// the per-try layer reporting nothing.
async fn dropped_for_the_total_timeout(end: impl FnOnce(SendResponse<&'static str>)) {
    let (per_try, events) = per_try(Duration::from_millis(5));
    let (mut call, send) = late(Some(Duration::from_millis(5)), per_try, None).await;
    end(send);
    tokio_test::assert_pending!(call.poll(), "what the attempt found is dropped");
    tokio_test::assert_pending!(call.poll(), "and the cut waits for the timers");
    tokio::time::advance(Duration::from_micros(300)).await;
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
    assert!(events.lock().unwrap().is_empty(), "{events:?}");
}

/// What a call to a hung service through a total timeout of `total` over a per-try one of
/// `per_try` saw: how long it took to fail with `Elapsed`, the per-try layer's events and the
/// deadline the request carried to the service.
struct Cut {
    after: Duration,
    events: Vec<TimeoutEvent>,
    sent: Option<Duration>,
}

async fn cut(total: Duration, per_try_timeout: Duration) -> Cut {
    let (per_try, events) = per_try(per_try_timeout);
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(total))
        .layer(per_try)
        .service(recorder(seen.clone(), Duration::from_secs(10)));
    let start = Instant::now();
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let events = events.lock().unwrap().clone();
    Cut {
        after: start.elapsed(),
        events,
        sent: seen[0].map(|deadline| deadline - start),
    }
}

#[tokio::test(start_paused = true)]
async fn a_total_timeout_on_the_same_tick_cuts_the_attempt() {
    // 4999.5 ms and 5 s: both timers are due on the 5000 ms tick.
    let cut = cut(Duration::from_micros(4_999_500), Duration::from_secs(5)).await;
    assert_eq!(cut.after, Duration::from_secs(5));
    assert!(cut.events.is_empty(), "{:?}", cut.events);
}

#[tokio::test(start_paused = true)]
async fn a_total_timeout_due_just_after_on_the_same_tick_cuts_the_attempt() {
    // 4999.2 ms and 4999.7 ms: the per-try deadline is the earlier, but both timers are due on
    // the 5000 ms tick, and the call's deadline has passed when either fires.
    let cut = cut(
        Duration::from_micros(4_999_700),
        Duration::from_micros(4_999_200),
    )
    .await;
    assert_eq!(cut.after, Duration::from_secs(5));
    assert!(cut.events.is_empty(), "{:?}", cut.events);
}

#[tokio::test(start_paused = true)]
async fn a_total_timeout_due_on_the_next_tick_cuts_the_attempt() {
    // 5000 ms and 5000.5 ms: on their own the timers would be due on the 5000 and 5001 ms ticks.
    // The attempt is timed at the call's deadline, due within a tick of its own, so the total
    // timeout cuts it on the 5001 ms tick, and the request carries the call's deadline.
    let cut = cut(Duration::from_micros(5_000_500), Duration::from_secs(5)).await;
    assert_eq!(cut.after, Duration::from_millis(5001));
    assert!(cut.events.is_empty(), "{:?}", cut.events);
    assert_eq!(cut.sent, Some(Duration::from_micros(5_000_500)));
}

#[tokio::test(start_paused = true)]
async fn a_total_timeout_due_exactly_a_tick_later_cuts_the_attempt() {
    // 5000 ms and 5001 ms: a tick apart at most, so the attempt is timed at the call's deadline.
    let cut = cut(Duration::from_millis(5001), Duration::from_secs(5)).await;
    assert_eq!(cut.after, Duration::from_millis(5001));
    assert!(cut.events.is_empty(), "{:?}", cut.events);
    assert_eq!(cut.sent, Some(Duration::from_millis(5001)));
}

#[tokio::test(start_paused = true)]
async fn a_total_timeout_due_more_than_a_tick_later_leaves_the_attempt_to_the_per_try_timeout() {
    // 5000 ms and 5001.5 ms: the per-try timeout fires first, and reports it.
    let cut = cut(Duration::from_micros(5_001_500), Duration::from_secs(5)).await;
    assert_eq!(cut.after, Duration::from_secs(5));
    assert_eq!(cut.events, reported(Duration::from_secs(5)));
    assert_eq!(cut.sent, Some(Duration::from_secs(5)));
}

#[tokio::test(start_paused = true)]
async fn a_late_poll_past_both_deadlines_leaves_the_cut_to_the_total_timeout() {
    let (per_try, events) = per_try(Duration::from_millis(2500));
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .layer(per_try)
        .service(recorder(Seen::default(), Duration::from_secs(10)));
    let mut call = tokio_test::task::spawn(svc.oneshot(http::Request::new(())));
    tokio_test::assert_pending!(call.poll());
    // Woken at the total timeout's deadline, polled only after the per-try one's.
    tokio::time::advance(Duration::from_secs(3)).await;
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
    assert!(events.lock().unwrap().is_empty(), "{events:?}");
}

#[tokio::test(start_paused = true)]
async fn with_no_layer_above_an_earlier_deadline_still_ends_in_elapsed() {
    // The request carries an earlier deadline that no layer enforces: the per-try timeout fires
    // at its own, one poll later than it would without that deadline, and reports it.
    let (per_try, events) = per_try(Duration::from_secs(2));
    let svc = per_try.layer(recorder(Seen::default(), Duration::from_secs(10)));
    let start = Instant::now();
    let mut req = http::Request::new(());
    req.set_deadline(start + Duration::from_secs(1));
    let mut call = tokio_test::task::spawn(svc.oneshot(req));
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(Duration::from_secs(2)).await;
    tokio_test::assert_pending!(call.poll(), "held for one poll");
    assert!(call.is_woken(), "and woken to end");
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(*events.lock().unwrap(), reported(Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_before_the_tick_leaves_the_cut_to_the_total_timeout() {
    // Deadlines at 5.5 ms, off the millisecond tick: both timers fire on the 6 ms one.
    dropped_for_the_total_timeout(|send| send.send_response("late")).await;
}

#[tokio::test(start_paused = true)]
async fn a_late_error_before_the_tick_leaves_the_cut_to_the_total_timeout() {
    // As a late answer: deadlines at 5.5 ms, off the millisecond tick, and an error found at
    // 5.7 ms is dropped too, whatever it is, and the total timeout cuts the call on the 6 ms tick.
    dropped_for_the_total_timeout(|send| send.send_error(std::io::Error::other("reset"))).await;
}

#[tokio::test(start_paused = true)]
async fn with_no_layer_above_a_late_answer_ends_in_elapsed_after_the_tick() {
    // The request carries an earlier deadline that no layer enforces, off the millisecond tick.
    let (per_try, events) = per_try(Duration::from_millis(5));
    let (mut call, send) = late(None, per_try, Some(Duration::from_millis(4))).await;
    send.send_response("late");
    tokio_test::assert_pending!(call.poll(), "the late answer is dropped");
    tokio::time::advance(Duration::from_micros(300)).await;
    assert!(call.is_woken(), "by the timer");
    tokio_test::assert_pending!(call.poll(), "held for one poll");
    assert!(call.is_woken(), "and woken to end");
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(*events.lock().unwrap(), reported(Duration::from_millis(5)));
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_and_its_attempt_are_released_when_found() {
    // Deadlines at 5.5 ms, off the millisecond tick: the answer found at 5.7 ms is dropped then,
    // with the attempt's future and the concurrency permit it holds, not at the 6 ms tick.
    tokio::time::advance(Duration::from_micros(500)).await;
    let (per_try, _) = per_try(Duration::from_millis(5));
    let (service, mut handle) = tower_test::mock::pair::<http::Request<()>, Arc<()>>();
    let limited = ConcurrencyLimit::new(service, 1);
    let mut other = tower_test::mock::Spawn::new(limited.clone());
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_millis(5)))
        .layer(per_try)
        .service(limited);
    let mut call = tokio_test::task::spawn(svc.oneshot(http::Request::new(())));
    tokio_test::assert_pending!(call.poll());
    let (_, send) = handle.next_request().await.expect("the attempt is sent");
    tokio_test::assert_pending!(other.poll_ready(), "the attempt holds the permit");
    tokio::time::advance(Duration::from_micros(5_200)).await;
    let answer = Arc::new(());
    send.send_response(answer.clone());
    tokio_test::assert_pending!(call.poll(), "the late answer is dropped");
    assert_eq!(Arc::strong_count(&answer), 1, "the answer is released");
    tokio_test::assert_ready_ok!(other.poll_ready(), "and the attempt's permit");
    tokio::time::advance(Duration::from_micros(300)).await;
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_timeout_that_enforces_the_total_deadline_cuts_at_it_and_reports_it() {
    // Off the millisecond tick, as every real deadline is: both layers time the call at 2000.5
    // ms, and their timers fire on one tick. The inner layer, polled first, cuts the call and
    // reports it.
    tokio::time::advance(Duration::from_micros(500)).await;
    let (inner, events) = enforcing(Duration::from_secs(5));
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .layer(inner)
        .service(recorder(Seen::default(), Duration::from_secs(10)));
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(*events.lock().unwrap(), reported(Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn a_late_answer_under_a_total_deadline_it_enforces_is_cut_when_found() {
    // Deadlines at 5.5 ms, off the millisecond tick: both timers fire on the 6 ms one, but the
    // layer that enforces the total deadline cuts a late answer when it finds it, and reports it.
    let (inner, events) = enforcing(Duration::from_millis(50));
    // 5.7 ms: past the deadline, before either timer has fired.
    let (mut call, send) = late(Some(Duration::from_millis(5)), inner, None).await;
    send.send_response("late");
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(*events.lock().unwrap(), reported(Duration::from_millis(5)));
}

#[tokio::test(start_paused = true)]
async fn a_deadline_the_caller_set_ends_in_elapsed_when_the_timer_fires() {
    // The layer enforces the caller's earlier deadline (1.5 ms, off the millisecond tick): it
    // fails the call when its timer fires, and reports it.
    tokio::time::advance(Duration::from_micros(500)).await;
    let (layer, events) = enforcing(Duration::from_secs(2));
    let svc = layer.layer(recorder(Seen::default(), Duration::from_secs(10)));
    let mut req = http::Request::new(());
    req.set_deadline(Instant::now() + Duration::from_millis(1));
    let mut call = tokio_test::task::spawn(svc.oneshot(req));
    tokio_test::assert_pending!(call.poll());
    tokio::time::advance(Duration::from_micros(1_500)).await;
    assert!(call.is_woken(), "by the timer");
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(*events.lock().unwrap(), reported(Duration::from_millis(1)));
}

#[tokio::test(start_paused = true)]
async fn a_zero_per_try_timeout_called_past_the_total_deadline_leaves_the_cut_to_the_total_timeout()
{
    // The total deadline is 5.5 ms, off the millisecond tick: its timer fires on the 6 ms one. A
    // queue between the layers (a `Buffer`, a bulkhead's wait) holds the call until 5.7 ms, and
    // the per-try layer's zero timeout ends when it is called, with the total deadline passed.
    // It waits for the tick its deadline rounds up to, the total timer's, before it holds its
    // cut, so the total timeout cuts the call and counts it.
    tokio::time::advance(Duration::from_micros(500)).await;
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let per_try = TimeoutLayer::builder()
        .timeout(Duration::ZERO)
        .name("inner")
        .build()
        .unwrap()
        .per_try()
        .layer(service_fn(|_: http::Request<()>| {
            std::future::pending::<Result<(), std::io::Error>>()
        }));
    let gate = Arc::new(Notify::new());
    let opened = gate.clone();
    let queued = service_fn(move |req: http::Request<()>| {
        let (gate, per_try) = (gate.clone(), per_try.clone());
        async move {
            gate.notified().await;
            per_try.oneshot(req).await
        }
    });
    let total = TimeoutLayer::builder()
        .timeout(Duration::from_millis(5))
        .name("outer")
        .build()
        .unwrap();
    let mut call = tokio_test::task::spawn(total.layer(queued).oneshot(http::Request::new(())));
    tokio_test::assert_pending!(call.poll(), "queued");
    // 5.7 ms: past the total deadline, before its timer has fired.
    tokio::time::advance(Duration::from_micros(5_200)).await;
    opened.notify_one();
    tokio_test::assert_pending!(call.poll(), "called past the deadline");
    tokio_test::assert_pending!(call.poll(), "and the cut waits for the timers");
    tokio::time::advance(Duration::from_micros(300)).await;
    let err = tokio_test::assert_ready_err!(call.poll());
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "outer"), 1);
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "inner"), 0);
}
