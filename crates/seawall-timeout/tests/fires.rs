//! The timeout fires in virtual time and cancels the inner call at that moment.

use seawall_core::metrics::{testing::TestRecorder, TIMEOUT_ELAPSED};
use seawall_timeout::{Elapsed, RequestDeadline, TimeoutEvent, TimeoutLayer};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::Poll,
    time::Duration,
};
use tokio::time::{sleep, sleep_until, Instant};
use tower::{service_fn, Layer, ServiceExt};

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn fires_at_the_deadline_and_drops_the_inner_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let inner = service_fn(move |_: http::Request<()>| {
        let guard = SetOnDrop(flag.clone());
        async move {
            let _guard = guard;
            sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>("late")
        }
    });
    let mut svc = TimeoutLayer::new(Duration::from_millis(250)).layer(inner);

    let start = Instant::now();
    svc.ready().await.unwrap();
    let mut fut = std::pin::pin!(tower::Service::call(&mut svc, http::Request::new(())));
    let err = fut.as_mut().await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(err.to_string(), "request timed out");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    // The inner future is gone as soon as the timeout fired, while `fut` itself is still alive.
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn answers_in_time_pass_through() {
    let inner = service_fn(|_: http::Request<()>| async {
        sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>("on time")
    });
    let svc = TimeoutLayer::new(Duration::from_millis(250)).layer(inner);
    assert_eq!(
        svc.oneshot(http::Request::new(())).await.unwrap(),
        "on time"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let inner = service_fn(|_: http::Request<()>| async {
        Err::<(), _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ))
    });
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(inner);
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("inner error type kept");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_lets_only_ready_calls_through() {
    let ready = service_fn(|_: http::Request<()>| async { Ok::<_, std::io::Error>(1) });
    let svc = TimeoutLayer::new(Duration::ZERO).layer(ready);
    assert_eq!(svc.oneshot(http::Request::new(())).await.unwrap(), 1);

    let yields = service_fn(|_: http::Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, std::io::Error>(1)
    });
    let svc = TimeoutLayer::new(Duration::ZERO).layer(yields);
    assert!(svc
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err()
        .is::<Elapsed>());
}

/// The runtime's timer ticks in whole milliseconds and rounds a deadline up to the next tick; a
/// clock off the tick (always, outside paused tests) must not stretch a zero timeout.
#[tokio::test(start_paused = true)]
async fn zero_timeout_fails_a_yielding_call_off_the_timer_tick() {
    tokio::time::advance(Duration::from_micros(500)).await;
    let yields = service_fn(|_: http::Request<()>| async {
        tokio::task::yield_now().await; // not ready on the first poll
        Ok::<_, std::io::Error>(1)
    });
    let svc = TimeoutLayer::new(Duration::ZERO).layer(yields);
    let res = svc.oneshot(http::Request::new(())).await;
    assert!(
        res.as_ref().is_err_and(|e| e.is::<Elapsed>()),
        "expected Elapsed, got {res:?}"
    );
}

/// An answer that comes after the deadline but before the timer's tick is not returned.
#[tokio::test(start_paused = true)]
async fn an_answer_after_the_deadline_fails_before_the_timer_tick() {
    tokio::time::advance(Duration::from_micros(500)).await;
    let deadline = Instant::now() + Duration::from_millis(1);
    let late = service_fn(move |_: http::Request<()>| async move {
        sleep_until(deadline + Duration::from_micros(200)).await;
        Ok::<_, std::io::Error>(Instant::now())
    });
    let svc = TimeoutLayer::new(Duration::from_millis(1)).layer(late);
    match svc.oneshot(http::Request::new(())).await {
        Ok(answered_at) => panic!(
            "got Ok for an answer {:?} after the deadline",
            answered_at - deadline
        ),
        Err(e) => assert!(e.is::<Elapsed>(), "{e}"),
    }
}

/// A deadline the request brings that has already passed fails a pending call on its first poll.
#[tokio::test(start_paused = true)]
async fn a_deadline_already_past_fails_a_pending_call_at_once() {
    let past = Instant::now();
    tokio::time::advance(Duration::from_micros(300)).await;
    let yields = service_fn(|_: http::Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, std::io::Error>(1)
    });
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(yields);
    let mut req = http::Request::new(());
    req.set_deadline(past);
    let res = svc.oneshot(req).await;
    assert!(
        res.as_ref().is_err_and(|e| e.is::<Elapsed>()),
        "expected Elapsed, got {res:?}"
    );
    assert_eq!(Instant::now(), past + Duration::from_micros(300), "no wait");
}

/// A deadline the request brings that had already passed when the call is made: the inner
/// service is not called, not even one that would answer at once, and the call fails with
/// `Elapsed` on its first poll, reported as every elapsed call is (with no budget). A deadline
/// reached at that very instant, or passed by less than a timer tick (as the deadline a
/// `Duration::ZERO` timeout further out writes has, by the time a layer under it reads the
/// clock), is still called, and an answer ready at once is in time. A per-try timeout, which
/// leaves the outer deadline to the layer above, calls.
#[tokio::test(start_paused = true)]
async fn a_deadline_already_passed_calls_nothing() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let at_once = service_fn(move |_: http::Request<()>| {
        seen.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, std::io::Error>(1) }
    });
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(1))
        .name("users")
        .on_event(move |_: &seawall_core::Name, e: &TimeoutEvent| {
            sink.lock().unwrap().push(*e);
        })
        .build()
        .unwrap();
    let mut svc = layer.layer(at_once);

    let passed = Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;
    let mut req = http::Request::new(());
    req.set_deadline(passed);
    svc.ready().await.unwrap();
    let mut call = tokio_test::task::spawn(tower::Service::call(&mut svc, req));
    match call.poll() {
        Poll::Ready(Err(e)) => assert!(e.is::<Elapsed>(), "{e}"),
        other => panic!("expected Elapsed on the first poll, got {other:?}"),
    }
    drop(call);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "the inner service was called"
    );
    assert_eq!(recorder.counter(TIMEOUT_ELAPSED, "users"), 1);
    assert_eq!(
        *events.lock().unwrap(),
        vec![TimeoutEvent::Elapsed {
            budget: Duration::ZERO
        }]
    );

    let mut req = http::Request::new(());
    req.set_deadline(Instant::now());
    assert_eq!(svc.clone().oneshot(req).await.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let just = Instant::now();
    tokio::time::advance(Duration::from_micros(999)).await;
    let mut req = http::Request::new(());
    req.set_deadline(just);
    assert_eq!(svc.clone().oneshot(req).await.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    let mut req = http::Request::new(());
    req.set_deadline(passed);
    let per_try = layer.per_try().layer(svc.into_inner());
    assert_eq!(per_try.oneshot(req).await.unwrap(), 1);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn max_timeout_does_not_overflow() {
    let inner = service_fn(|_: http::Request<()>| async {
        sleep(Duration::from_secs(3600)).await;
        Ok::<_, std::io::Error>("an hour later")
    });
    let svc = TimeoutLayer::new(Duration::MAX).layer(inner);
    assert_eq!(
        svc.oneshot(http::Request::new(())).await.unwrap(),
        "an hour later"
    );
}

#[test]
fn elapsed_is_zero_sized() {
    assert_eq!(std::mem::size_of::<Elapsed>(), 0);
}

/// An answer that comes exactly at the deadline is in time, as with tower's `Timeout`: the
/// deadline is the instant by which the call must answer, and it has not passed yet.
#[tokio::test(start_paused = true)]
async fn an_answer_exactly_at_the_deadline_is_in_time() {
    let inner = service_fn(|_: http::Request<()>| async {
        sleep(Duration::from_millis(250)).await;
        Ok::<_, std::io::Error>("just in time")
    });
    let svc = TimeoutLayer::new(Duration::from_millis(250)).layer(inner);
    let start = Instant::now();
    let res = svc.oneshot(http::Request::new(())).await;
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(res.unwrap(), "just in time");
}
