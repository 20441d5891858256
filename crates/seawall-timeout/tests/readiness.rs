//! Readiness contract: the timeout calls the inner service it polled ready, never a clone, and
//! works under tower's `Buffer` and `BoxCloneService`.

use seawall_timeout::{ResponseFuture, Timeout, TimeoutLayer};
use std::time::Duration;
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

#[tokio::test(start_paused = true)]
async fn layer_instances_share_one_policy() {
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(1))
        .name("users")
        .build()
        .unwrap();
    let a = layer.layer(tower::service_fn(|_: Req| async {
        Ok::<_, std::io::Error>(())
    }));
    let b = a.clone();
    assert_eq!(layer.name().as_str(), "users");
    assert!(format!("{a:?}").contains("users"));
    drop((a, b));
}

#[test]
fn services_and_futures_are_send_sync_static() {
    fn assert_send_sync_static<T: Send + Sync + 'static>() {}
    assert_send_sync_static::<TimeoutLayer>();
    assert_send_sync_static::<Timeout<mock::Mock<Req, ()>>>();
    assert_send_sync_static::<ResponseFuture<mock::future::ResponseFuture<()>>>();
}
