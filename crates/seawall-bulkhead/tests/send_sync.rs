//! Compile-time checks: public layers, services, futures, bodies and errors are
//! `Send + Sync + 'static`.

use seawall_bulkhead::{
    ratelimit::{
        self, KeyedRateLimit, KeyedRateLimitHandle, KeyedRateLimitLayer, Limited, RateLimit,
        RateLimitHandle, RateLimitLayer,
    },
    Bulkhead, BulkheadHandle, BulkheadLayer, Full, OnBodyEnd, OnResponse, Permit, PermitBody,
    ResponseFuture,
};
use seawall_core::classify::{DefaultClassifier, HttpClassifier};
use std::{future::Ready, hash::Hash};

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
    send_sync_static::<RateLimitHandle>();
    send_sync_static::<ratelimit::ResponseFuture<Fut, Svc, http::Request<()>>>();
    send_sync_static::<KeyedRateLimitLayer<String, fn(&http::Request<()>) -> String>>();
    send_sync_static::<KeyedRateLimit<Svc, String, fn(&http::Request<()>) -> String>>();
    send_sync_static::<Limited>();
    keyed_limiters_are_send_sync_for_any_send_sync_key::<Vec<u8>, fn(&http::Request<()>) -> Vec<u8>>(
    );
}

/// The bound `build_keyed` asks of a key, `Send + Sync`, is enough: with any such key (and key
/// function) the keyed layer and service are `Send + Sync`. Checked for every such `K` and `F`
/// at once, since this only compiles if the bound implies it.
fn keyed_limiters_are_send_sync_for_any_send_sync_key<K, F>()
where
    K: Hash + Eq + Send + Sync + 'static,
    F: Send + Sync + 'static,
{
    send_sync_static::<KeyedRateLimitLayer<K, F>>();
    send_sync_static::<KeyedRateLimit<Svc, K, F>>();
    send_sync_static::<KeyedRateLimitHandle<K>>();
}
