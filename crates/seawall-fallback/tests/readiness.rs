//! Readiness contract, tower compatibility, events and config errors.

use seawall_core::{
    metrics::{testing::TestRecorder, FALLBACK_FAILED, FALLBACK_USED},
    BoxError, Name,
};
use seawall_fallback::{Fallback, FallbackEvent, FallbackLayer, FromFn, ResponseFuture};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{
    buffer::Buffer, limit::ConcurrencyLimit, util::BoxCloneService, Layer, Service, ServiceExt,
};
use tower_test::mock;

type Fb = FromFn<fn(seawall_fallback::Failed<&'static str>) -> Result<&'static str, BoxError>>;

fn layer() -> FallbackLayer<Fb, seawall_core::classify::DefaultClassifier> {
    FallbackLayer::builder()
        .build_fn((|_| Ok("fallback")) as fn(_) -> _)
        .unwrap()
}

#[tokio::test]
async fn clone_resets_readiness_and_call_uses_the_ready_service() {
    let (inner, mut handle) = mock::pair::<(), &'static str>();
    let mut svc = mock::Spawn::new(layer().layer(ConcurrencyLimit::new(inner, 1)));
    assert_ready_ok!(svc.poll_ready());
    let mut clone = mock::Spawn::new(svc.get_ref().clone());
    assert_pending!(clone.poll_ready());

    let fut = svc.call(());
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("down"));
    assert_eq!(fut.await.unwrap(), "fallback");
    assert_ready_ok!(clone.poll_ready());
}

#[tokio::test]
async fn works_behind_buffer_and_box_clone_service() {
    let (inner, mut handle) = mock::pair::<(), &'static str>();
    let svc: BoxCloneService<(), &'static str, BoxError> =
        BoxCloneService::new(Buffer::new(layer().layer(inner), 4));
    let call = tokio::spawn(svc.clone().oneshot(()));
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_error(std::io::Error::other("down"));
    assert_eq!(call.await.unwrap().unwrap(), "fallback");
}

#[tokio::test]
async fn listeners_see_use_and_failure() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = FallbackLayer::builder()
        .name("users-cache")
        .on_event(move |name: &Name, e: &FallbackEvent| {
            sink.lock().unwrap().push((name.to_string(), *e))
        })
        .build_fn(|failed: seawall_fallback::Failed<u8>| {
            if failed.error().unwrap().to_string() == "fatal" {
                Err("cache down".into())
            } else {
                Ok(0)
            }
        })
        .unwrap();
    let svc = layer.layer(tower::service_fn(|msg: &'static str| async move {
        Err::<u8, BoxError>(msg.into())
    }));
    svc.clone().oneshot("soft").await.unwrap();
    svc.oneshot("fatal").await.unwrap_err();
    let name = "users-cache".to_string();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            (name.clone(), FallbackEvent::Used { error: true }),
            (name.clone(), FallbackEvent::Used { error: true }),
            (name, FallbackEvent::Failed),
        ]
    );
}

#[test]
fn bad_name_is_rejected_naming_the_field() {
    let err = FallbackLayer::builder()
        .name("two words")
        .build_fn(|_: seawall_fallback::Failed<()>| Ok(()))
        .unwrap_err();
    assert_eq!(err.field(), "name");
}

#[test]
fn services_and_futures_are_send_sync_static() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    type Svc =
        Fallback<mock::Mock<(), &'static str>, Fb, seawall_core::classify::DefaultClassifier>;
    assert_send_sync_static::<FallbackLayer<Fb, seawall_core::classify::DefaultClassifier>>();
    assert_send_sync_static::<Svc>();
    assert_send_sync_static::<
        ResponseFuture<
            mock::future::ResponseFuture<&'static str>,
            Fb,
            seawall_core::classify::DefaultClassifier,
            &'static str,
        >,
    >();
}

/// A fallback service that is `Send` but not `Sync`, like `BoxCloneService`, still gives a
/// service and a future that can be spawned, and a service a `ClientStack` can hold (`Sync`).
#[test]
fn a_send_fallback_service_gives_send_services_and_futures() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    fn assert_send<T: Send + 'static>() {}
    type Fs = seawall_fallback::FromService<
        BoxCloneService<seawall_fallback::Failed<&'static str>, &'static str, BoxError>,
    >;
    assert_send_sync::<FallbackLayer<Fs, seawall_core::classify::DefaultClassifier>>();
    assert_send_sync::<
        Fallback<mock::Mock<(), &'static str>, Fs, seawall_core::classify::DefaultClassifier>,
    >();
    assert_send::<
        ResponseFuture<
            mock::future::ResponseFuture<&'static str>,
            Fs,
            seawall_core::classify::DefaultClassifier,
            &'static str,
        >,
    >();
}

/// An inner service whose readiness fails `failures` times, then answers every call with "inner".
#[derive(Clone)]
struct NotReady {
    failures: Arc<Mutex<u32>>,
    calls: Arc<Mutex<u32>>,
    error: fn() -> BoxError,
}

impl tower::Service<()> for NotReady {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        let mut failures = self.failures.lock().unwrap();
        if *failures > 0 {
            *failures -= 1;
            return std::task::Poll::Ready(Err((self.error)()));
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: ()) -> Self::Future {
        *self.calls.lock().unwrap() += 1;
        std::future::ready(Ok("inner"))
    }
}

fn not_ready(failures: u32, error: fn() -> BoxError) -> NotReady {
    NotReady {
        failures: Arc::new(Mutex::new(failures)),
        calls: Arc::new(Mutex::new(0)),
        error,
    }
}

#[tokio::test]
async fn a_handled_readiness_error_is_answered_from_the_fallback() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let saw = seen.clone();
    let layer = FallbackLayer::builder()
        .on_event(move |_: &Name, e: &FallbackEvent| sink.lock().unwrap().push(*e))
        .build_fn(move |failed: seawall_fallback::Failed<&'static str>| {
            saw.lock()
                .unwrap()
                .push(failed.error().unwrap().to_string());
            Ok("fallback")
        })
        .unwrap();
    let inner = not_ready(1, || "worker gone".into());
    let calls = inner.calls.clone();
    let mut svc = layer.layer(inner);

    // The readiness error is kept and answers this call and every later one; none reaches the
    // inner service, which is not polled again (it would be ready by now).
    for _ in 0..2 {
        assert_eq!(
            svc.ready().await.unwrap().call(()).await.unwrap(),
            "fallback"
        );
    }
    assert_eq!(*calls.lock().unwrap(), 0);
    assert_eq!(*seen.lock().unwrap(), ["worker gone", "worker gone"]);
    assert_eq!(
        *events.lock().unwrap(),
        [
            FallbackEvent::InnerFailed,
            FallbackEvent::Used { error: true },
            FallbackEvent::Used { error: true },
        ]
    );
}

/// Giving up on the inner service is reported when `poll_ready` keeps the readiness error, before
/// any call, and once: later calls and clones of the failed service report only their use of the
/// fallback.
#[tokio::test]
async fn keeping_a_readiness_error_is_reported_once_before_any_call() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = FallbackLayer::builder()
        .name("users-cache")
        .on_event(move |name: &Name, e: &FallbackEvent| {
            sink.lock().unwrap().push((name.to_string(), *e))
        })
        .build_fn(|_: seawall_fallback::Failed<&'static str>| Ok("fallback"))
        .unwrap();
    let mut svc = layer.layer(not_ready(1, || "worker gone".into()));
    svc.ready().await.unwrap();
    assert_eq!(
        *events.lock().unwrap(),
        [("users-cache".to_string(), FallbackEvent::InnerFailed)]
    );

    svc.ready().await.unwrap();
    let mut clone = svc.clone();
    clone.ready().await.unwrap();
    assert_eq!(events.lock().unwrap().len(), 1, "reported once");
}

#[tokio::test]
async fn an_unhandled_readiness_error_comes_out_of_poll_ready() {
    #[derive(Debug)]
    struct Other;
    impl std::fmt::Display for Other {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("other")
        }
    }
    impl std::error::Error for Other {}

    let layer = FallbackLayer::builder()
        .on_error_type::<Other>()
        .build_fn(|_: seawall_fallback::Failed<&'static str>| Ok("fallback"))
        .unwrap();
    let mut svc = layer.layer(not_ready(1, || "worker gone".into()));
    let err = svc.ready().await.map(|_| ()).unwrap_err();
    assert_eq!(err.to_string(), "worker gone");
    // A handled one of the same service is answered from the fallback.
    let mut svc = layer.layer(not_ready(1, || Box::new(Other)));
    assert_eq!(
        svc.ready().await.unwrap().call(()).await.unwrap(),
        "fallback"
    );
}

#[tokio::test]
async fn a_clone_of_a_failed_service_is_failed_too() {
    let inner = not_ready(1, || "worker gone".into());
    let calls = inner.calls.clone();
    let mut before = layer().layer(inner);
    let mut svc = before.clone();
    svc.ready().await.unwrap();
    let mut clone = svc.clone();
    assert_eq!(
        clone.ready().await.unwrap().call(()).await.unwrap(),
        "fallback"
    );
    assert_eq!(svc.call(()).await.unwrap(), "fallback");
    assert_eq!(*calls.lock().unwrap(), 0);
    // The failed inner service was dropped; the clone never had one.
    assert!(svc.get_ref().is_none() && clone.into_inner().is_none());
    // A clone made before the failure polls its own inner service.
    assert_eq!(
        before.ready().await.unwrap().call(()).await.unwrap(),
        "inner"
    );
}

/// A fallback service is cloned for each fallback call, and a clone of tower-test's mock is not
/// ready: the fallback call waits for it to be, and never calls it before.
#[tokio::test]
async fn a_fallback_service_is_driven_ready_before_it_is_called() {
    let (fallback, mut cache) =
        mock::pair::<seawall_fallback::Failed<&'static str>, &'static str>();
    cache.allow(0);
    let layer = FallbackLayer::builder().build_service(fallback).unwrap();
    let (mut svc, mut inner) = mock::spawn_layer::<(), &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut call = tokio_test::task::spawn(svc.call(()));
    let (_, send) = inner.next_request().await.unwrap();
    send.send_error(std::io::Error::other("down"));
    assert_pending!(call.poll(), "the fallback service is not ready");
    assert_pending!(cache.poll_request(), "and was not called");

    cache.allow(1);
    assert!(call.is_woken());
    assert_pending!(call.poll());
    let (failed, send) = cache.next_request().await.unwrap();
    assert_eq!(failed.error().unwrap().to_string(), "down");
    send.send_response("cached");
    assert_eq!(call.await.unwrap(), "cached");
}

/// `Used` reports the hand-off to the fallback; a call dropped while an async fallback runs
/// cancels the fallback's call with it (nothing is left running to answer) and reports nothing
/// more, neither a second `Used` nor `Failed`.
#[tokio::test]
async fn a_call_dropped_during_an_async_fallback_reports_only_the_hand_off() {
    /// Set when the fallback's future is dropped.
    struct DropGuard(Arc<AtomicBool>);

    impl Drop for DropGuard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = dropped.clone();
    // A fallback that never answers, holding a guard for as long as its future lives.
    let fallback = tower::service_fn(move |_: seawall_fallback::Failed<&'static str>| {
        let guard = DropGuard(guard.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<&'static str, BoxError>>().await
        }
    });
    let layer = FallbackLayer::builder()
        .name("slow-cache")
        .on_event(move |_: &Name, e: &FallbackEvent| sink.lock().unwrap().push(*e))
        .build_service(fallback)
        .unwrap();
    let (mut svc, mut inner) = mock::spawn_layer::<(), &'static str, _>(layer);
    assert_ready_ok!(svc.poll_ready());
    let mut call = tokio_test::task::spawn(svc.call(()));
    let (_, send) = inner.next_request().await.unwrap();
    send.send_error(std::io::Error::other("down"));
    assert_pending!(call.poll());
    assert!(!dropped.load(Ordering::SeqCst), "the fallback is running");
    assert_eq!(
        *events.lock().unwrap(),
        [FallbackEvent::Used { error: true }]
    );

    drop(call);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the fallback's call was dropped with the call"
    );
    assert_eq!(
        *events.lock().unwrap(),
        [FallbackEvent::Used { error: true }]
    );
    assert_eq!(recorder.counter(FALLBACK_USED, "slow-cache"), 1);
    assert_eq!(recorder.counter(FALLBACK_FAILED, "slow-cache"), 0);
}

/// tower's contract: a service whose `poll_ready` failed is gone, and some panic when polled
/// again (`FutureService`, `SpawnReady`). Every later call is answered from the fallback.
#[tokio::test]
async fn a_failed_inner_service_is_never_polled_again() {
    type Svc = BoxCloneService<(), &'static str, BoxError>;
    let layer = FallbackLayer::builder()
        .build_fn(|failed: seawall_fallback::Failed<&'static str>| {
            assert_eq!(failed.error().unwrap().to_string(), "refused");
            Ok("fb")
        })
        .unwrap();
    let refused: Result<Svc, BoxError> = Err("refused".into());
    let mut svc = layer.layer(tower::util::future_service(std::future::ready(refused)));
    for _ in 0..2 {
        assert_eq!(svc.ready().await.unwrap().call(()).await.unwrap(), "fb");
    }
}

/// A failed inner service is dropped, and with it what the layers in it had reserved: a
/// bulkhead with backpressure takes its permit before it polls its own inner service, and keeps
/// it when that fails. The permit is the whole layer's, so another service of the same bulkhead
/// gets it.
#[tokio::test(start_paused = true)]
async fn a_failed_inner_service_gives_back_its_bulkhead_permit() {
    let bulkhead = seawall_bulkhead::BulkheadLayer::builder()
        .max_concurrent(1)
        .backpressure(true)
        .build()
        .unwrap();
    let mut failed = layer().layer(bulkhead.layer(not_ready(1, || "worker gone".into())));
    assert_eq!(
        failed.ready().await.unwrap().call(()).await.unwrap(),
        "fallback"
    );

    let mut other = bulkhead.layer(not_ready(0, || unreachable!()));
    tokio::time::timeout(Duration::from_secs(1), other.ready())
        .await
        .expect("the failed service's permit is back in the bulkhead")
        .unwrap();
    assert_eq!(other.call(()).await.unwrap(), "inner");
}

/// The same for a HalfOpen breaker's probe: it is not held by the failed service until HalfOpen
/// gives up on it (30 s by default), and another service's probe goes through at once.
#[tokio::test(start_paused = true)]
async fn a_failed_inner_service_gives_back_its_breaker_probe() {
    let breaker = seawall_breaker::BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .build()
        .unwrap();
    let down = tower::service_fn(|()| async { Err::<&'static str, BoxError>("down".into()) });
    breaker.layer(down).oneshot(()).await.unwrap_err();
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut failed = layer().layer(breaker.layer(not_ready(1, || "worker gone".into())));
    assert_eq!(
        failed.ready().await.unwrap().call(()).await.unwrap(),
        "fallback"
    );
    assert_eq!(breaker.handle().state(), seawall_breaker::State::HalfOpen);

    let other = breaker.layer(not_ready(0, || unreachable!()));
    assert_eq!(other.oneshot(()).await.unwrap(), "inner");
    assert_eq!(breaker.handle().state(), seawall_breaker::State::Closed);
}

/// Behind a `Buffer`, a readiness error the fallback handles does not reach the `Buffer`'s worker,
/// which would fail every call with it for good: every call is answered from the fallback, and
/// none reaches the inner service that failed.
#[tokio::test]
async fn behind_buffer_a_handled_readiness_error_answers_every_call_from_the_fallback() {
    let inner = not_ready(1, || "worker gone".into());
    let calls = inner.calls.clone();
    let svc = Buffer::new(layer().layer(inner), 4);
    for _ in 0..3 {
        assert_eq!(svc.clone().oneshot(()).await.unwrap(), "fallback");
    }
    assert_eq!(*calls.lock().unwrap(), 0);
}
