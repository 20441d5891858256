//! Readiness contract, tower compatibility, events and config errors.

use seawall_core::{BoxError, Name};
use seawall_fallback::{Fallback, FallbackEvent, FallbackLayer, FromFn, ResponseFuture};
use std::sync::{Arc, Mutex};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{buffer::Buffer, limit::ConcurrencyLimit, util::BoxCloneService, Layer, ServiceExt};
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
