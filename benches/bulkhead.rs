//! seawall's bulkhead next to tower's `ConcurrencyLimit` (and `LoadShed` over it, tower's way of
//! failing fast) and tower-resilience's bulkhead; seawall's rate limiter next to tower's
//! `RateLimit` and governor. Admitted and rejected paths, then (with `--features count-allocs`)
//! allocations per call.
//!
//! ```text
//! cargo bench --bench bulkhead
//! ```

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use governor::{Quota, RateLimiter};
use seawall::bulkhead::{limit::Aimd, ratelimit::RateLimitLayer, BulkheadLayer};
use std::{
    convert::Infallible,
    future::Future,
    hint::black_box,
    num::NonZeroU32,
    pin::Pin,
    task::{Context, Poll, Waker},
    time::Duration,
};
use tower::{
    limit::{ConcurrencyLimitLayer, RateLimitLayer as TowerRateLimitLayer},
    load_shed::LoadShedLayer,
    service_fn, Layer, Service,
};

/// Ready at once for request `1`; pending forever (holding whatever permit it has) for `0`.
struct Answer(bool);
impl Future for Answer {
    type Output = Result<u64, Infallible>;
    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 {
            Poll::Ready(Ok(1))
        } else {
            Poll::Pending
        }
    }
}

fn inner() -> impl Service<u32, Response = u64, Error = Infallible, Future = Answer> + Clone {
    service_fn(|req: u32| Answer(req != 0))
}

/// As [`support::call`], awaiting the response (for futures that need the runtime to turn).
async fn call_async<S>(svc: &mut S, req: u32) -> bool
where
    S: Service<u32>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await.ok();
    svc.call(req).await.is_ok()
}

/// Starts a call that never finishes, so it holds its permit; keeps its future alive.
fn hold<S>(svc: &mut S) -> Pin<Box<S::Future>>
where
    S: Service<u32>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    let mut fut = Box::pin(svc.call(0));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    fut
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    const LIMIT: usize = 1_000;

    // ----- admitted: a free permit, a ready inner service -----
    let mut bare = inner();
    let mut tower_limit = ConcurrencyLimitLayer::new(LIMIT).layer(inner());
    let mut resilience = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(LIMIT)
        .reject_when_full()
        .build()
        .unwrap()
        .layer(inner());
    let mut seawall = BulkheadLayer::builder()
        .max_concurrent(LIMIT)
        .build()
        .unwrap()
        .layer(inner());
    let mut seawall_adaptive = BulkheadLayer::builder()
        .adaptive(
            Aimd::builder()
                .initial_limit(LIMIT)
                .max_limit(LIMIT)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap()
        .layer(inner());

    let mut group = c.benchmark_group("bulkhead/admitted");
    group.bench_function("no limit (baseline)", |b| {
        b.iter(|| black_box(support::call(&mut bare, black_box(1)).is_ok()))
    });
    group.bench_function("tower ConcurrencyLimit", |b| {
        b.iter(|| black_box(support::call(&mut tower_limit, black_box(1)).is_ok()))
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| black_box(support::call(&mut resilience, black_box(1)).is_ok()))
    });
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call(&mut seawall, black_box(1)).is_ok()))
    });
    group.bench_function("seawall adaptive (AIMD)", |b| {
        b.iter(|| black_box(support::call(&mut seawall_adaptive, black_box(1)).is_ok()))
    });
    group.finish();

    // ----- rejected: the only permit is held by a call in flight -----
    // Clones of one `ConcurrencyLimit` share its semaphore (its layer makes a new one per service).
    let tower_full = ConcurrencyLimitLayer::new(1).layer(inner());
    let mut tower_holder = tower_full.clone();
    let _tower_held = hold(&mut tower_holder);
    let mut tower_shed = LoadShedLayer::new().layer(tower_full);

    let resilience_layer = tower_resilience_bulkhead::BulkheadLayer::builder()
        .max_concurrent_calls(1)
        .reject_when_full()
        .build()
        .unwrap();
    let mut resilience_full = resilience_layer.layer(inner());
    let _resilience_held = hold(&mut resilience_full);

    let seawall_layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let mut seawall_full = seawall_layer.layer(inner());
    let _seawall_held = hold(&mut seawall_full);

    assert!(support::call(&mut tower_shed, 1).is_err());
    assert!(support::call(&mut seawall_full, 1).is_err());
    // tower-resilience rejects by racing the permit against a zero-length tokio timer, which
    // only fires when the runtime turns: its rejections need an executor, so all three are also
    // measured through `block_on`.
    assert!(!rt.block_on(call_async(&mut resilience_full, 1)));

    let mut group = c.benchmark_group("bulkhead/rejected");
    group.bench_function("tower LoadShed+ConcurrencyLimit", |b| {
        b.iter(|| black_box(support::call(&mut tower_shed, black_box(1)).is_ok()))
    });
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call(&mut seawall_full, black_box(1)).is_ok()))
    });
    group.finish();

    let mut group = c.benchmark_group("bulkhead/rejected (block_on)");
    group.bench_function("tower LoadShed+ConcurrencyLimit", |b| {
        b.iter(|| black_box(rt.block_on(call_async(&mut tower_shed, black_box(1)))))
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| black_box(rt.block_on(call_async(&mut resilience_full, black_box(1)))))
    });
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(rt.block_on(call_async(&mut seawall_full, black_box(1)))))
    });
    group.finish();

    // ----- rate limiters, admitted -----
    let mut tower_rate =
        TowerRateLimitLayer::new(u64::MAX / 2, Duration::from_secs(1)).layer(inner());
    let governor = RateLimiter::direct(Quota::per_second(NonZeroU32::MAX));
    let mut seawall_rate = RateLimitLayer::builder()
        .rate(1_000_000_000, Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(inner());
    let mut seawall_keyed = RateLimitLayer::builder()
        .rate(1_000_000_000, Duration::from_secs(1))
        .build_keyed(|req: &u32| *req)
        .unwrap()
        .layer(inner());

    let mut group = c.benchmark_group("ratelimit/admitted");
    group.bench_function("tower RateLimit", |b| {
        b.iter(|| black_box(support::call(&mut tower_rate, black_box(1)).is_ok()))
    });
    group.bench_function("governor check (no service)", |b| {
        b.iter(|| black_box(governor.check().is_ok()))
    });
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call(&mut seawall_rate, black_box(1)).is_ok()))
    });
    group.bench_function("seawall keyed (one key)", |b| {
        b.iter(|| black_box(support::call(&mut seawall_keyed, black_box(1)).is_ok()))
    });
    group.finish();

    // ----- rate limiters, rejected: the budget is spent for an hour -----
    let governor_spent = RateLimiter::direct(Quota::per_hour(NonZeroU32::MIN));
    assert!(governor_spent.check().is_ok());
    let mut seawall_spent = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(3600))
        .build()
        .unwrap()
        .layer(inner());
    assert!(support::call(&mut seawall_spent, 1).is_ok());
    assert!(support::call(&mut seawall_spent, 1).is_err());
    assert!(governor_spent.check().is_err());

    let mut group = c.benchmark_group("ratelimit/rejected");
    group.bench_function("governor check (no service)", |b| {
        b.iter(|| black_box(governor_spent.check().is_err()))
    });
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call(&mut seawall_spent, black_box(1)).is_ok()))
    });
    group.finish();

    const N: u32 = 10_000;
    support::report_allocs("bulkhead/admitted", "tower ConcurrencyLimit", N, || {
        support::call(&mut tower_limit, 1)
    });
    support::report_allocs("bulkhead/admitted", "tower-resilience", N, || {
        support::call(&mut resilience, 1)
    });
    support::report_allocs("bulkhead/admitted", "seawall", N, || {
        support::call(&mut seawall, 1)
    });
    support::report_allocs("bulkhead/admitted", "seawall adaptive (AIMD)", N, || {
        support::call(&mut seawall_adaptive, 1)
    });
    support::report_allocs(
        "bulkhead/rejected",
        "tower LoadShed+ConcurrencyLimit",
        N,
        || support::call(&mut tower_shed, 1),
    );
    support::report_allocs(
        "bulkhead/rejected (block_on)",
        "tower LoadShed+ConcurrencyLimit",
        N,
        || rt.block_on(call_async(&mut tower_shed, 1)),
    );
    support::report_allocs(
        "bulkhead/rejected (block_on)",
        "tower-resilience",
        N,
        || rt.block_on(call_async(&mut resilience_full, 1)),
    );
    support::report_allocs("bulkhead/rejected (block_on)", "seawall", N, || {
        rt.block_on(call_async(&mut seawall_full, 1))
    });
    support::report_allocs("bulkhead/rejected", "seawall", N, || {
        support::call(&mut seawall_full, 1)
    });
    support::report_allocs("ratelimit/admitted", "tower RateLimit", N, || {
        support::call(&mut tower_rate, 1)
    });
    support::report_allocs("ratelimit/admitted", "governor check", N, || {
        governor.check()
    });
    support::report_allocs("ratelimit/admitted", "seawall", N, || {
        support::call(&mut seawall_rate, 1)
    });
    support::report_allocs("ratelimit/admitted", "seawall keyed (one key)", N, || {
        support::call(&mut seawall_keyed, 1)
    });
    support::report_allocs("ratelimit/rejected", "governor check", N, || {
        governor_spent.check()
    });
    support::report_allocs("ratelimit/rejected", "seawall", N, || {
        support::call(&mut seawall_spent, 1)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
