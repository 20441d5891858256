//! Compile-time checks: public layers, services, futures, bodies and errors are
//! `Send + Sync + 'static`.

use seawall_bulkhead::{
    ratelimit::{self, KeyedRateLimit, KeyedRateLimitLayer, Limited, RateLimit, RateLimitLayer},
    Bulkhead, BulkheadHandle, BulkheadLayer, Full, OnBodyEnd, OnResponse, Permit, PermitBody,
    ResponseFuture,
};
use seawall_core::classify::{DefaultClassifier, HttpClassifier};
use std::future::Ready;

fn send_sync_static<T: Send + Sync + 'static>() {}

#[derive(Clone)]
struct Svc;

type Fut = Ready<Result<http::Response<String>, std::io::Error>>;

#[test]
fn public_types_are_send_sync_static() {
    send_sync_static::<BulkheadLayer>();
    send_sync_static::<BulkheadLayer<HttpClassifier, OnBodyEnd>>();
    send_sync_static::<Bulkhead<Svc>>();
    send_sync_static::<Bulkhead<Svc, HttpClassifier, OnBodyEnd>>();
    send_sync_static::<ResponseFuture<Fut, Svc, http::Request<()>, DefaultClassifier, OnResponse>>(
    );
    send_sync_static::<ResponseFuture<Fut, Svc, http::Request<()>, HttpClassifier, OnBodyEnd>>();
    send_sync_static::<PermitBody<String>>();
    send_sync_static::<Permit>();
    send_sync_static::<BulkheadHandle>();
    send_sync_static::<Full>();
    send_sync_static::<RateLimitLayer>();
    send_sync_static::<RateLimit<Svc>>();
    send_sync_static::<ratelimit::ResponseFuture<Fut, Svc, http::Request<()>>>();
    send_sync_static::<KeyedRateLimitLayer<String, fn(&http::Request<()>) -> String>>();
    send_sync_static::<KeyedRateLimit<Svc, String, fn(&http::Request<()>) -> String>>();
    send_sync_static::<Limited>();
}
