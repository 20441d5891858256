//! seawall's timeout next to tower's, on an inner service that is ready at once and on one whose
//! future is pending once before it answers (so a timer is armed).
//!
//! ```text
//! cargo bench --bench timeout
//! ```

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::timeout::{RequestDeadline, TimeoutLayer};
use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    hint::black_box,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tower::{service_fn, Layer, Service};

/// A request that takes no part in deadline propagation: measures the timeout alone.
struct Req;
impl RequestDeadline for Req {}

/// A future that is pending on its first poll and ready on the second.
struct YieldOnce(bool);
impl Future for YieldOnce {
    type Output = Result<u64, Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 {
            Poll::Ready(Ok(1))
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

fn ready_inner<R>(
) -> impl Service<R, Response = u64, Error = Infallible, Future = Ready<Result<u64, Infallible>>> {
    service_fn(|_: R| ready(Ok::<_, Infallible>(1)))
}

fn pending_once_inner() -> impl Service<Req, Response = u64, Error = Infallible, Future = YieldOnce>
{
    service_fn(|_: Req| YieldOnce(false))
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let timeout = Duration::from_secs(1);

    let mut tower_ready = tower::timeout::TimeoutLayer::new(timeout).layer(ready_inner::<Req>());
    let mut seawall_ready = TimeoutLayer::new(timeout).layer(ready_inner::<Req>());
    let mut tower_http = tower::timeout::TimeoutLayer::new(timeout).layer(ready_inner());
    let mut seawall_http = TimeoutLayer::new(timeout).layer(ready_inner());
    let mut tower_pending = tower::timeout::TimeoutLayer::new(timeout).layer(pending_once_inner());
    let mut seawall_pending = TimeoutLayer::new(timeout).layer(pending_once_inner());
    let mut bare = ready_inner::<Req>();

    let mut group = c.benchmark_group("timeout/ready");
    group.bench_function("no timeout (baseline)", |b| {
        b.iter(|| black_box(support::call_ok(&mut bare, black_box(Req))))
    });
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_ready, black_box(Req))))
    });
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_ready, black_box(Req))))
    });
    group.finish();

    let mut group = c.benchmark_group("timeout/http-request");
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_http, http::Request::new(()))))
    });
    group.bench_function("seawall (propagating)", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_http, http::Request::new(()))))
    });
    group.finish();

    let mut group = c.benchmark_group("timeout/pending-once");
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_pending, black_box(Req))))
    });
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_pending, black_box(Req))))
    });
    group.finish();

    const N: u32 = 10_000;
    support::report_allocs("timeout/ready", "tower", N, || {
        support::call_ok(&mut tower_ready, Req)
    });
    support::report_allocs("timeout/ready", "seawall", N, || {
        support::call_ok(&mut seawall_ready, Req)
    });
    support::report_allocs("timeout/http-request", "tower", N, || {
        support::call_ok(&mut tower_http, http::Request::new(()))
    });
    support::report_allocs("timeout/http-request", "seawall (propagating)", N, || {
        support::call_ok(&mut seawall_http, http::Request::new(()))
    });
    support::report_allocs("timeout/pending-once", "tower", N, || {
        support::call_ok(&mut tower_pending, Req)
    });
    support::report_allocs("timeout/pending-once", "seawall", N, || {
        support::call_ok(&mut seawall_pending, Req)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
