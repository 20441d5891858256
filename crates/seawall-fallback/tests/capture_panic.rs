//! A `with_request` closure that panics on one request fails that call only: the panic reaches
//! the caller's task when it polls the call's future, as a panic in the fallback does.

use http::{Request, Response};
use seawall_bulkhead::BulkheadLayer;
use seawall_core::classify::DefaultClassifier;
use seawall_core::BoxError;
use seawall_fallback::{Failed, FallbackLayer, FromFn, WithRequest};
use std::{
    future::Future,
    panic::{catch_unwind, AssertUnwindSafe},
    pin::pin,
    task::{Context, Waker},
};
use tokio_test::assert_ready_ok;
use tower::{buffer::Buffer, limit::ConcurrencyLimit, service_fn, Layer, Service, ServiceExt};
use tower_test::mock;

type Res = Response<String>;

/// A GET of `path` with an `x-user-id` header, except for `/boom`, a malformed request.
fn get(path: &str) -> Request<()> {
    let req = Request::get(path);
    let req = match path {
        "/boom" => req,
        _ => req.header("x-user-id", "7"),
    };
    req.body(()).unwrap()
}

/// Takes the `x-user-id` header, and panics without it.
fn user_id(req: &Request<()>) -> String {
    let Some(id) = req.headers().get("x-user-id") else {
        panic!("no x-user-id header");
    };
    id.to_str().unwrap().to_owned()
}

type Capture = fn(&Request<()>) -> String;
type Answer = fn(Failed<Res>, String) -> Result<Res, BoxError>;

fn answer(_: Failed<Res>, id: String) -> Result<Res, BoxError> {
    Ok(Response::new(format!("fallback for {id}")))
}

fn layer() -> FallbackLayer<FromFn<Answer>, DefaultClassifier, WithRequest<Capture>> {
    FallbackLayer::builder()
        .with_request(user_id as Capture)
        .build_fn(answer as Answer)
        .unwrap()
}

/// Behind a `Buffer`, the capture runs in the buffer's worker. Its panic reaches the task that
/// awaits `/boom`, and the worker lives on to answer `/fresh`.
#[tokio::test]
async fn a_panicking_capture_behind_a_buffer_fails_only_its_own_call() {
    let upstream = service_fn(|req: Request<()>| async move {
        Ok::<_, BoxError>(Response::new(format!("fresh {}", req.uri().path())))
    });
    let buffer = Buffer::new(layer().layer(upstream), 8);

    let boom = tokio::spawn(buffer.clone().oneshot(get("/boom")));
    let joined = boom.await;
    let err = joined.expect_err("the call to /boom panics");
    assert!(err.is_panic(), "{err}");
    let payload = err.into_panic();
    assert_eq!(
        payload.downcast_ref::<&str>(),
        Some(&"no x-user-id header"),
        "the capture's own panic payload"
    );

    let res = buffer.clone().oneshot(get("/fresh")).await.unwrap();
    assert_eq!(res.body(), "fresh /fresh");
    let res = buffer.oneshot(get("/fresh")).await.unwrap();
    assert_eq!(res.body(), "fresh /fresh");
}

/// Behind a `Buffer`, the worker polls the service ready only when it has a request to call it
/// with. What the service reserved for `/boom` goes back when the capture panics, not whenever the
/// buffer gets its next request: here the one permit of a bulkhead that another route shares.
#[tokio::test]
async fn a_panicking_capture_behind_a_buffer_gives_back_a_shared_permit() {
    let upstream = || {
        service_fn(|req: Request<()>| async move {
            Ok::<_, BoxError>(Response::new(format!("fresh {}", req.uri().path())))
        })
    };
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let buffer = Buffer::new(layer().layer(bulkhead.layer(upstream())), 8);
    let other_route = bulkhead.layer(upstream());

    let boom = tokio::spawn(buffer.clone().oneshot(get("/boom")));
    let err = boom.await.expect_err("the call to /boom panics");
    assert!(err.is_panic(), "{err}");

    // The buffer stays open (`buffer` is alive) and idle; the bulkhead's permit is free.
    let res = other_route
        .oneshot(get("/other"))
        .await
        .expect("the bulkhead has a free permit");
    assert_eq!(res.body(), "fresh /other");
    drop(buffer);
}

/// The panic leaves `call` as a future, and the request is dropped without calling the inner
/// service. What the inner service reserved for the call goes back in `call`: here the one
/// permit of a concurrency limit, which another clone gets at once.
#[tokio::test]
async fn a_panicking_capture_panics_in_the_future_and_gives_back_the_reservation() {
    let (inner, mut handle) = mock::pair::<Request<()>, Res>();
    let mut svc = layer().layer(ConcurrencyLimit::new(inner, 1));
    let mut other = svc.clone();
    handle.allow(1);

    let fut = svc.ready().await.unwrap().call(get("/boom"));
    assert!(
        handle.poll_request().is_pending(),
        "the inner service is not called"
    );

    // The limit's one permit is free before the future is even polled.
    let mut ready = tokio_test::task::spawn(other.ready());
    assert_ready_ok!(ready.poll());
    drop(ready);

    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    let polled = catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(&mut cx)));
    let payload = polled.expect_err("polling the future panics");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"no x-user-id header"));

    let answer = other.call(get("/fresh"));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri().path(), "/fresh");
    send.send_response(Response::new("fresh".to_string()));
    assert_eq!(answer.await.unwrap().body(), "fresh");

    // The service whose capture panicked gets ready again and calls its inner service.
    handle.allow(1);
    let answer = svc.ready().await.unwrap().call(get("/again"));
    let (req, send) = handle.next_request().await.unwrap();
    assert_eq!(req.uri().path(), "/again");
    send.send_response(Response::new("again".to_string()));
    assert_eq!(answer.await.unwrap().body(), "again");
}
