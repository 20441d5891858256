//! Compile-time checks: services, layers and futures are `Send + Sync + 'static` when what they
//! hold is, so they work behind `BoxCloneService` and across tokio tasks.

use seawall_core::BoxError;
use seawall_retry::{hedge, policy::HttpPolicy, Hedge, HedgeLayer, Retry, RetryBudget, RetryLayer};
use std::{future::Ready, task::Poll};
use tower::{util::BoxCloneService, Layer, Service, ServiceBuilder};

fn send_sync_static<T: Send + Sync + 'static>() {}
fn send_static<T: Send + 'static>() {}

type Req = http::Request<String>;
type Res = http::Response<String>;

#[derive(Clone)]
struct Inner;

impl Service<Req> for Inner {
    type Response = Res;
    type Error = BoxError;
    type Future = Ready<Result<Res, BoxError>>;
    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Req) -> Self::Future {
        std::future::ready(Ok(http::Response::new(String::new())))
    }
}

#[test]
fn public_types_are_send_sync_static() {
    send_sync_static::<RetryLayer>();
    send_sync_static::<RetryLayer<HttpPolicy>>();
    send_sync_static::<HedgeLayer<HttpPolicy>>();
    send_sync_static::<RetryBudget>();
    send_sync_static::<Retry<Inner, HttpPolicy>>();
    send_sync_static::<Hedge<Inner, HttpPolicy>>();
    send_sync_static::<<Retry<Inner, HttpPolicy> as Service<Req>>::Future>();
    send_static::<<Hedge<Inner, HttpPolicy> as Service<Req>>::Future>();
    send_static::<seawall_retry::ResponseFuture<Inner, Req, HttpPolicy, seawall_retry::ByClone>>();
    send_static::<hedge::ResponseFuture<Inner, Req, HttpPolicy, seawall_retry::ByClone>>();
}

#[test]
fn works_behind_box_clone_service() {
    let retry = RetryLayer::builder().http().build().unwrap();
    let hedge = HedgeLayer::builder().http().build().unwrap();
    let svc = ServiceBuilder::new()
        .layer(retry)
        .layer(hedge)
        .service(Inner);
    let _boxed: BoxCloneService<Req, Res, BoxError> = BoxCloneService::new(svc);
    let _ = RetryLayer::new().layer(Inner);
}
