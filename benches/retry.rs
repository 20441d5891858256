//! seawall's retry next to tower's `Retry` (with and without tower's backoff and budget) and
//! tower-resilience's retry on the happy path (the call succeeds first time, so nothing is
//! retried), and seawall's hedge next to tower's `Hedge` when the original call wins. With
//! `--features count-allocs`, allocations per call are printed after the timings.
//!
//! Both percentile hedges are timed in their hedging state: each has measured its percentile
//! over a full period of calls, and a call it makes is armed to send a copy should the original
//! be slow. Their periods are short ([`HEDGE_PERIOD`]), so they reach that state within a
//! fraction of a second and stay in it while calls keep coming (tower's `Hedge` forgets its
//! latencies after two periods without a call, as between criterion's runs, which is why each is
//! settled again right before its own). Before each is timed it is called for a few periods and
//! checked to answer a stalled call with a hedge.
//!
//! ```text
//! cargo bench --bench retry
//! ```

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::future::Either;
use seawall::{
    core::BoxError,
    retry::{HedgeLayer, RequestDeadline, RetryBudget, RetryLayer},
};
use std::{
    future::{pending, ready, Pending, Ready},
    hint::black_box,
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};
use tokio::{runtime::Runtime, time::Instant};
use tower::{
    retry::{
        backoff::{Backoff as _, ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff as _},
        budget::{Budget as _, TpsBudget},
    },
    service_fn,
    util::rng::HasherRng,
    Layer, Service, ServiceExt as _,
};

/// The period of both percentile hedges: how long each gathers latencies before the percentile
/// it hedges after is recomputed. Short, so that a timed run spans many periods, all alike,
/// rather than crossing the one change from "no percentile yet" to hedging.
const HEDGE_PERIOD: Duration = Duration::from_millis(50);

/// A small cloneable request that takes no part in deadline propagation.
#[derive(Clone, Copy)]
struct Req(u64);
impl RequestDeadline for Req {}

fn ready_inner(
) -> impl Service<Req, Response = u64, Error = BoxError, Future = Ready<Result<u64, BoxError>>> + Clone
{
    service_fn(|req: Req| ready(Ok::<_, BoxError>(req.0)))
}

/// Set to make the hedge benches' inner service leave its next call unanswered.
static STALL_NEXT: AtomicBool = AtomicBool::new(false);

/// The future of [`hedge_inner`]'s calls: an answer, or a call left unanswered.
type HedgeInnerFuture = Either<Ready<Result<u64, BoxError>>, Pending<Result<u64, BoxError>>>;

/// The hedge benches' inner service: answers at once, like [`ready_inner`], unless
/// [`STALL_NEXT`] is set, when it leaves that one call pending forever (to check that a hedge
/// answers it). Outside that check the flag costs one relaxed load per call, the same for every
/// hedge.
fn hedge_inner(
) -> impl Service<Req, Response = u64, Error = BoxError, Future = HedgeInnerFuture> + Clone {
    service_fn(|req: Req| {
        if STALL_NEXT.load(Relaxed) && STALL_NEXT.swap(false, Relaxed) {
            Either::Right(pending())
        } else {
            Either::Left(ready(Ok::<_, BoxError>(req.0)))
        }
    })
}

/// Brings a hedge to its steady state on the happy path and checks that it is hedging.
///
/// Calls `svc` without pause for three [`HEDGE_PERIOD`]s, so that a percentile hedge has measured
/// its percentile over a full period of calls (tower's `Hedge` hedges only once the previous
/// period holds its minimum of data points; seawall's once a period has ended with them). Then
/// makes one call whose original never answers: only a hedge can answer it.
fn settle_hedge<S>(rt: &Runtime, name: &str, svc: &mut S)
where
    S: Service<Req, Response = u64, Error = BoxError>,
{
    let until = Instant::now() + 3 * HEDGE_PERIOD;
    while Instant::now() < until {
        for _ in 0..64 {
            support::call_ok(svc, Req(1));
        }
    }
    assert_hedging(rt, name, svc);
}

/// Checks that `svc` is hedging: makes one call whose original never answers, which only a hedge
/// can answer.
fn assert_hedging<S>(rt: &Runtime, name: &str, svc: &mut S)
where
    S: Service<Req, Response = u64, Error = BoxError>,
{
    STALL_NEXT.store(true, Relaxed);
    let answer = rt.block_on(tokio::time::timeout(Duration::from_secs(1), async {
        svc.ready().await?.call(Req(2)).await
    }));
    assert!(
        !STALL_NEXT.load(Relaxed),
        "{name}: the original was not called"
    );
    assert!(
        matches!(answer, Ok(Ok(2))),
        "{name}: a call whose original stalled was not answered by a hedge"
    );
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
        tower::hedge::Hedge::new::<Req>(hedge_inner(), HedgeAll, 10, 0.95, HEDGE_PERIOD);
    let seawall_fixed_layer = HedgeLayer::builder()
        .delay(Duration::from_millis(10))
        .build()
        .unwrap();
    let mut seawall_fixed = seawall_fixed_layer.layer(hedge_inner());
    let seawall_percentile_layer = HedgeLayer::builder()
        .percentile(0.95, 10, HEDGE_PERIOD)
        .build()
        .unwrap();
    let mut seawall_percentile = seawall_percentile_layer.layer(hedge_inner());
    let percentile_known = || {
        assert!(
            seawall_percentile_layer.current_delay().is_some(),
            "seawall (p95 delay): no percentile measured"
        );
    };

    let mut group = c.benchmark_group("hedge/primary-wins");
    settle_hedge(&rt, "tower", &mut tower_hedge);
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_hedge, black_box(Req(1)))))
    });
    settle_hedge(&rt, "seawall (p95 delay)", &mut seawall_percentile);
    percentile_known();
    group.bench_function("seawall (p95 delay)", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_percentile, black_box(Req(1)))))
    });
    settle_hedge(&rt, "seawall (fixed delay)", &mut seawall_fixed);
    assert_eq!(
        seawall_fixed_layer.current_delay(),
        Some(Duration::from_millis(10))
    );
    group.bench_function("seawall (fixed delay)", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_fixed, black_box(Req(1)))))
    });
    group.finish();

    const N: u32 = 10_000;
    support::report_allocs("retry/no-retry", "tower", N, || {
        support::call_ok(&mut tower_retry, Req(1))
    });
    support::report_allocs("retry/no-retry", "tower + backoff", N, || {
        support::call_ok(&mut tower_backoff, Req(1))
    });
    support::report_allocs("retry/no-retry", "tower + TpsBudget", N, || {
        support::call_ok(&mut tower_budgeted, Req(1))
    });
    support::report_allocs("retry/no-retry", "tower-resilience", N, || {
        support::call_ok(&mut resilience, Req(1))
    });
    support::report_allocs("retry/no-retry", "seawall (budgeted)", N, || {
        support::call_ok(&mut seawall, Req(1))
    });
    support::report_allocs("retry/no-retry", "seawall (unlimited budget)", N, || {
        support::call_ok(&mut seawall_unbudgeted, Req(1))
    });
    settle_hedge(&rt, "tower", &mut tower_hedge);
    support::report_allocs("hedge/primary-wins", "tower", N, || {
        support::call_ok(&mut tower_hedge, Req(1))
    });
    settle_hedge(&rt, "seawall (p95 delay)", &mut seawall_percentile);
    percentile_known();
    support::report_allocs("hedge/primary-wins", "seawall (p95 delay)", N, || {
        support::call_ok(&mut seawall_percentile, Req(1))
    });
    settle_hedge(&rt, "seawall (fixed delay)", &mut seawall_fixed);
    support::report_allocs("hedge/primary-wins", "seawall (fixed delay)", N, || {
        support::call_ok(&mut seawall_fixed, Req(1))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
