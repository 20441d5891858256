//! Readiness contract: the timeout calls the inner service it polled ready, never a clone, and
//! works under tower's `Buffer` and `BoxCloneService`.

use seawall_timeout::{ResponseFuture, Timeout, TimeoutEvent, TimeoutLayer};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{buffer::Buffer, limit::ConcurrencyLimit, util::BoxCloneService, Layer, ServiceExt};
use tower_test::mock;

type Req = http::Request<()>;

#[tokio::test(start_paused = true)]
async fn clone_resets_readiness_and_call_uses_the_ready_service() {
    let (inner, mut handle) = mock::pair::<Req, &'static str>();
    // ConcurrencyLimit's permit is taken in poll_ready and a clone starts without one.
    let limited = ConcurrencyLimit::new(inner, 1);
    let mut svc = mock::Spawn::new(TimeoutLayer::new(Duration::from_secs(1)).layer(limited));

    assert_ready_ok!(svc.poll_ready());
    let mut clone = mock::Spawn::new(svc.get_ref().clone());
    // The only permit is reserved by `svc`; the clone must wait.
    assert_pending!(clone.poll_ready());

    let fut = svc.call(http::Request::new(()));
    let (_req, send) = handle.next_request().await.expect("inner called");
    send.send_response("ok");
    assert_eq!(fut.await.unwrap(), "ok");
    // The permit went back with the completed call.
    assert_ready_ok!(clone.poll_ready());
}

/// A call whose deadline had passed is not made, and what `poll_ready` reserved below stays with
/// the service for its next call, as tower allows: the next call uses it, and a drop gives it
/// back.
#[tokio::test(start_paused = true)]
async fn a_call_not_made_leaves_the_readiness_for_the_next_call() {
    let (inner, mut handle) = mock::pair::<Req, &'static str>();
    let limited = ConcurrencyLimit::new(inner, 1);
    let mut svc = mock::Spawn::new(TimeoutLayer::new(Duration::from_secs(1)).layer(limited));
    let passed = tokio::time::Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;

    assert_ready_ok!(svc.poll_ready());
    let mut req = http::Request::new(());
    seawall_timeout::RequestDeadline::set_deadline(&mut req, passed);
    let err = svc.call(req).await.unwrap_err();
    assert!(err.is::<seawall_timeout::Elapsed>(), "{err}");
    assert_pending!(handle.poll_request(), "the inner service was called");
    // The permit is still this service's: a clone cannot take it.
    let mut clone = mock::Spawn::new(svc.get_ref().clone());
    assert_pending!(clone.poll_ready());

    assert_ready_ok!(svc.poll_ready());
    let fut = svc.call(http::Request::new(()));
    let (_req, send) = handle.next_request().await.expect("inner called");
    send.send_response("ok");
    assert_eq!(fut.await.unwrap(), "ok");
    assert_ready_ok!(clone.poll_ready());
}

#[tokio::test(start_paused = true)]
async fn works_behind_buffer_and_box_clone_service() {
    let (inner, mut handle) = mock::pair::<Req, &'static str>();
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(inner);
    let buffered = Buffer::new(svc, 8);
    let boxed: BoxCloneService<Req, &'static str, seawall_core::BoxError> =
        BoxCloneService::new(buffered);

    let call = tokio::spawn(boxed.clone().oneshot(http::Request::new(())));
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_response("ok");
    assert_eq!(call.await.unwrap().unwrap(), "ok");

    // A timeout under a Buffer surfaces as Elapsed, and the Buffer keeps working afterwards.
    let call = tokio::spawn(boxed.clone().oneshot(http::Request::new(())));
    let (_req, _send) = handle.next_request().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(
        seawall_core::error::is::<seawall_timeout::Elapsed>(&*err),
        "{err}"
    );
    handle.allow(1);
    let call = tokio::spawn(boxed.oneshot(http::Request::new(())));
    let (_req, send) = handle.next_request().await.unwrap();
    send.send_response("again");
    assert_eq!(call.await.unwrap().unwrap(), "again");
}

/// Every service one layer makes, and every clone of them, applies the layer's one policy: its
/// timeout, its name, and its listeners.
#[tokio::test(start_paused = true)]
async fn layer_instances_share_one_policy() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(1))
        .name("users")
        .on_event(move |name: &seawall_core::Name, e: &TimeoutEvent| {
            sink.lock().unwrap().push((name.to_string(), *e));
        })
        .build()
        .unwrap();
    let hang = || {
        tower::service_fn(|_: Req| async {
            std::future::pending::<Result<(), std::io::Error>>().await
        })
    };
    let a = layer.layer(hang());
    let b = layer.layer(hang());
    assert!(format!("{b:?}").contains("users"));
    for svc in [a.clone(), a, b] {
        let start = tokio::time::Instant::now();
        let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
        assert!(err.is::<seawall_timeout::Elapsed>(), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
    let elapsed = (
        "users".to_string(),
        TimeoutEvent::Elapsed {
            budget: Duration::from_secs(1),
        },
    );
    assert_eq!(*events.lock().unwrap(), vec![elapsed; 3]);
}

#[test]
fn services_and_futures_are_send_sync_static() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<TimeoutLayer>();
    assert_send_sync_static::<Timeout<mock::Mock<Req, ()>>>();
    assert_send_sync_static::<ResponseFuture<mock::future::ResponseFuture<()>>>();
}
