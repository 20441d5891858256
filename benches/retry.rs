//! seawall's retry next to tower's `Retry` (with and without tower's backoff and budget) and
//! tower-resilience's retry on the happy path (the call succeeds first time, so nothing is
//! retried), and seawall's hedge next to tower's `Hedge` when the original call wins. Allocations
//! per call are printed after the timings.
//!
//! ```text
//! cargo bench --bench retry
//! ```

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::{
    core::BoxError,
    retry::{HedgeLayer, RequestDeadline, RetryBudget, RetryLayer},
};
use std::{
    future::{ready, Ready},
    hint::black_box,
    sync::Arc,
    time::Duration,
};
use tower::{
    retry::{
        backoff::{Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff as _},
        budget::{Budget as _, TpsBudget},
    },
    service_fn,
    util::rng::HasherRng,
    Layer, Service,
};

/// A small cloneable request that takes no part in deadline propagation.
#[derive(Clone, Copy)]
struct Req(u64);
impl RequestDeadline for Req {}

fn ready_inner(
) -> impl Service<Req, Response = u64, Error = BoxError, Future = Ready<Result<u64, BoxError>>> + Clone
{
    service_fn(|req: Req| ready(Ok::<_, BoxError>(req.0)))
}

/// tower's retry policy as usually written: retry errors up to 3 attempts.
#[derive(Clone)]
struct Attempts(u32);

impl<E> tower::retry::Policy<Req, u64, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.0 > 1 => {
                self.0 -= 1;
                Some(ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(*req)
    }
}

/// tower's retry policy with tower's own exponential backoff and jitter, the like of seawall's
/// default (without a budget): retry errors up to 3 attempts, sleeping between them.
#[derive(Clone)]
struct AttemptsBackoff {
    attempts: u32,
    backoff: ExponentialBackoff,
}

impl AttemptsBackoff {
    fn new() -> Self {
        let backoff = ExponentialBackoffMaker::new(
            Duration::from_millis(50),
            Duration::from_secs(10),
            1.0,
            HasherRng::default(),
        )
        .expect("valid backoff")
        .make_backoff();
        AttemptsBackoff {
            attempts: 3,
            backoff,
        }
    }
}

impl<E> tower::retry::Policy<Req, u64, E> for AttemptsBackoff {
    type Future = tokio::time::Sleep;

    fn retry(&mut self, _: &mut Req, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => None,
            Err(_) if self.attempts > 1 => {
                self.attempts -= 1;
                Some(self.backoff.next_backoff())
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(*req)
    }
}

/// The same with tower's `TpsBudget`, deposited on every success as its docs suggest.
#[derive(Clone)]
struct Budgeted(Arc<TpsBudget>);

impl<E> tower::retry::Policy<Req, u64, E> for Budgeted {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Req, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.0.deposit();
                None
            }
            Err(_) => self.0.withdraw().then(|| ready(())),
        }
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        Some(*req)
    }
}

/// tower's hedge policy: every request may be hedged.
#[derive(Clone)]
struct HedgeAll;

impl tower::hedge::Policy<Req> for HedgeAll {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(*req)
    }

    fn can_retry(&self, _: &Req) -> bool {
        true
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    // ----- retry: the call succeeds first time -----
    let mut bare = ready_inner();
    let mut tower_retry = tower::retry::RetryLayer::new(Attempts(3)).layer(ready_inner());
    let mut tower_backoff =
        tower::retry::RetryLayer::new(AttemptsBackoff::new()).layer(ready_inner());
    let tps = Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2));
    let mut tower_budgeted = tower::retry::RetryLayer::new(Budgeted(tps)).layer(ready_inner());
    let mut resilience = tower_resilience_retry::RetryLayer::<Req, u64, BoxError>::builder()
        .max_attempts(3)
        .exponential_backoff(Duration::from_millis(50))
        .build()
        .layer(ready_inner());
    let mut seawall = RetryLayer::new().layer(ready_inner());
    let mut seawall_unbudgeted = RetryLayer::builder()
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap()
        .layer(ready_inner());

    let mut group = c.benchmark_group("retry/no-retry");
    group.bench_function("no retry (baseline)", |b| {
        b.iter(|| black_box(support::call_ok(&mut bare, black_box(Req(1)))))
    });
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_retry, black_box(Req(1)))))
    });
    group.bench_function("tower + backoff", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_backoff, black_box(Req(1)))))
    });
    group.bench_function("tower + TpsBudget", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_budgeted, black_box(Req(1)))))
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| black_box(support::call_ok(&mut resilience, black_box(Req(1)))))
    });
    group.bench_function("seawall (budgeted)", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall, black_box(Req(1)))))
    });
    group.bench_function("seawall (unlimited budget)", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_unbudgeted, black_box(Req(1)))))
    });
    group.finish();

    // ----- hedge: the original call answers at once -----
    let mut tower_hedge =
        tower::hedge::Hedge::new::<Req>(ready_inner(), HedgeAll, 10, 0.95, Duration::from_secs(10));
    let mut seawall_fixed = HedgeLayer::builder()
        .delay(Duration::from_millis(10))
        .build()
        .unwrap()
        .layer(ready_inner());
    let mut seawall_percentile = HedgeLayer::builder()
        .percentile(0.95, 10, Duration::from_secs(10))
        .build()
        .unwrap()
        .layer(ready_inner());

    let mut group = c.benchmark_group("hedge/primary-wins");
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_hedge, black_box(Req(1)))))
    });
    group.bench_function("seawall (p95 delay)", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_percentile, black_box(Req(1)))))
    });
    group.bench_function("seawall (fixed delay)", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_fixed, black_box(Req(1)))))
    });
    group.finish();

    const N: u32 = 10_000;
    support::report_allocs("retry/no-retry", "tower", N, || {
        support::call_ok(&mut tower_retry, Req(1));
    });
    support::report_allocs("retry/no-retry", "tower + backoff", N, || {
        support::call_ok(&mut tower_backoff, Req(1));
    });
    support::report_allocs("retry/no-retry", "tower + TpsBudget", N, || {
        support::call_ok(&mut tower_budgeted, Req(1));
    });
    support::report_allocs("retry/no-retry", "tower-resilience", N, || {
        support::call_ok(&mut resilience, Req(1));
    });
    support::report_allocs("retry/no-retry", "seawall (budgeted)", N, || {
        support::call_ok(&mut seawall, Req(1));
    });
    support::report_allocs("retry/no-retry", "seawall (unlimited budget)", N, || {
        support::call_ok(&mut seawall_unbudgeted, Req(1));
    });
    support::report_allocs("hedge/primary-wins", "tower", N, || {
        support::call_ok(&mut tower_hedge, Req(1));
    });
    support::report_allocs("hedge/primary-wins", "seawall (p95 delay)", N, || {
        support::call_ok(&mut seawall_percentile, Req(1));
    });
    support::report_allocs("hedge/primary-wins", "seawall (fixed delay)", N, || {
        support::call_ok(&mut seawall_fixed, Req(1));
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
