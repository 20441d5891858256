//! seawall's balancer next to tower's `p2c::Balance`, over 10 endpoints that answer at once:
//! the cost of picking an endpoint and making the call through the balancer.
//!
//! - `p2c_outstanding`: seawall's `Picker::p2c()` vs tower's `p2c::Balance` over
//!   `PendingRequests`;
//! - `p2c_peak_ewma`: seawall's `Picker::p2c_peak_ewma()` vs tower's over `PeakEwma`;
//! - `round_robin`: seawall's round robin (tower has none);
//! - `clone`: cloning seawall's balancer, as a layer above does to drop the readiness of a call it
//!   rejects, alone and followed by one call through the clone (tower's is not `Clone`).
//!
//! tower has no outlier detection, so the seawall rows that face tower's have it off; the rows
//! "seawall, default outlier detection" show what seawall's defaults (which time every call and
//! count its outcome per endpoint) add.
//!
//! With `--features count-allocs`, each subject's heap allocations per call are printed after
//! the timings.
//!
//! ```text
//! cargo bench --bench balance
//! ```

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use seawall::balance::{BalanceLayer, OutlierDetection, Picker};
use std::{
    convert::Infallible,
    future::{ready, Ready},
    hint::black_box,
    time::Duration,
};
use tower::{
    balance::p2c,
    discover::ServiceList,
    load::{CompleteOnResponse, PeakEwma, PendingRequests},
    service_fn, Layer, Service,
};

const ENDPOINTS: usize = 10;

type Endpoint = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, Infallible>>>;

fn endpoint() -> Endpoint {
    service_fn(|x: u64| ready(Ok::<_, Infallible>(x)))
}

fn endpoints() -> Vec<Endpoint> {
    (0..ENDPOINTS).map(|_| endpoint()).collect()
}

fn seawall(
    rt: &tokio::runtime::Runtime,
    picker: Picker,
    outliers: OutlierDetection,
) -> impl Service<u64, Response = u64, Error = seawall::BoxError> + Clone {
    let balance = BalanceLayer::builder()
        .picker(picker)
        .seed(1)
        .outlier_detection(outliers)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(ServiceList::new(endpoints()));
    // Let the background task apply the endpoint list.
    rt.block_on(async {
        while balance.endpoints().len() < ENDPOINTS {
            tokio::task::yield_now().await;
        }
    });
    balance
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let off = OutlierDetection::disabled;
    let mut seawall_p2c = seawall(&rt, Picker::p2c(), off());
    let mut seawall_ewma = seawall(&rt, Picker::p2c_peak_ewma(), off());
    let mut seawall_rr = seawall(&rt, Picker::RoundRobin, off());
    let mut seawall_p2c_default = seawall(&rt, Picker::p2c(), OutlierDetection::default());
    let mut seawall_ewma_default =
        seawall(&rt, Picker::p2c_peak_ewma(), OutlierDetection::default());
    let mut tower_p2c = p2c::Balance::new(ServiceList::new(
        endpoints()
            .into_iter()
            .map(|s| PendingRequests::new(s, CompleteOnResponse::default()))
            .collect::<Vec<_>>(),
    ));
    let mut tower_ewma = p2c::Balance::new(ServiceList::new(
        endpoints()
            .into_iter()
            .map(|s| {
                PeakEwma::new(
                    s,
                    Duration::from_millis(30),
                    10e9,
                    CompleteOnResponse::default(),
                )
            })
            .collect::<Vec<_>>(),
    ));
    // Warm up tower's balancers (they take in the endpoint list on their first poll_ready).
    support::call_ok(&mut tower_p2c, 0);
    support::call_ok(&mut tower_ewma, 0);

    let mut group = c.benchmark_group("balance/p2c_outstanding");
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_p2c, black_box(1))))
    });
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_p2c, black_box(1))))
    });
    group.bench_function("seawall, default outlier detection", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_p2c_default, black_box(1))))
    });
    group.finish();

    let mut group = c.benchmark_group("balance/p2c_peak_ewma");
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_ewma, black_box(1))))
    });
    group.bench_function("tower", |b| {
        b.iter(|| black_box(support::call_ok(&mut tower_ewma, black_box(1))))
    });
    group.bench_function("seawall, default outlier detection", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_ewma_default, black_box(1))))
    });
    group.finish();

    let mut group = c.benchmark_group("balance/round_robin");
    group.bench_function("seawall", |b| {
        b.iter(|| black_box(support::call_ok(&mut seawall_rr, black_box(1))))
    });
    group.finish();

    let mut group = c.benchmark_group("balance/clone");
    group.bench_function("seawall", |b| {
        b.iter(|| drop(black_box(seawall_ewma.clone())))
    });
    group.bench_function("seawall, then one call", |b| {
        b.iter(|| {
            let mut clone = seawall_ewma.clone();
            black_box(support::call_ok(&mut clone, black_box(1)))
        })
    });
    group.finish();

    let calls = 10_000;
    support::report_allocs("balance/p2c_outstanding", "seawall", calls, || {
        support::call_ok(&mut seawall_p2c, 1)
    });
    support::report_allocs("balance/p2c_outstanding", "tower", calls, || {
        support::call_ok(&mut tower_p2c, 1)
    });
    support::report_allocs("balance/p2c_peak_ewma", "seawall", calls, || {
        support::call_ok(&mut seawall_ewma, 1)
    });
    support::report_allocs("balance/p2c_peak_ewma", "tower", calls, || {
        support::call_ok(&mut tower_ewma, 1)
    });
    support::report_allocs(
        "balance/p2c_outstanding",
        "seawall, default outlier detection",
        calls,
        || support::call_ok(&mut seawall_p2c_default, 1),
    );
    support::report_allocs(
        "balance/p2c_peak_ewma",
        "seawall, default outlier detection",
        calls,
        || support::call_ok(&mut seawall_ewma_default, 1),
    );
    support::report_allocs("balance/round_robin", "seawall", calls, || {
        support::call_ok(&mut seawall_rr, 1)
    });
    support::report_allocs("balance/clone", "seawall", calls, || {
        drop(black_box(seawall_ewma.clone()));
    });
    support::report_allocs("balance/clone", "seawall, then one call", calls, || {
        support::call_ok(&mut seawall_ewma.clone(), 1)
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
