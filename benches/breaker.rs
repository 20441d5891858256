//! seawall's circuit breaker next to tower-resilience's, failsafe's and recloser's: the Closed
//! path (a call that goes through and is recorded), the same with one call in seven failing, the
//! Open path (a call rejected), a 2-thread contended Closed path on one shared breaker (and, for
//! seawall, on one key of a keyed breaker layer, which looks the key up in its set on every call),
//! and (with `--features count-allocs`) allocations per call for each. seawall's Closed path is also
//! measured with time windows of 10 s in 10, 100 and 1,000 buckets, which read the clock and
//! count every call.
//!
//! failsafe and recloser are not tower layers: they wrap the inner service's future, which is the
//! closest equivalent (their numbers do not include readiness handling). Every breaker is built
//! outside the timed loop; the inner service answers at once.
//!
//! ```text
//! cargo bench --bench breaker
//! ```

mod support;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use failsafe::futures::CircuitBreaker as _;
use seawall::breaker::{BreakerConfig, BreakerLayer, BreakerSet, SlidingWindow, State};
use std::{
    future::{ready, Ready},
    hint::black_box,
    sync::Barrier,
    time::Duration,
};
use tower::{service_fn, Layer, Service};

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The inner service's error: zero-sized, so neither making it nor boxing it (as seawall's
/// breaker does, into a `BoxError`) allocates, and every breaker handles its failures for free.
#[derive(Debug, Clone, Copy)]
struct Down;

impl std::fmt::Display for Down {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("down")
    }
}

impl std::error::Error for Down {}

/// Answers at once: `Err` for request 0, `Ok` otherwise.
fn inner() -> impl Service<u32, Response = u32, Error = Down, Future = Ready<Result<u32, Down>>>
       + Clone
       + Send
       + 'static {
    service_fn(|x: u32| {
        ready(match x {
            0 => Err(Down),
            x => Ok(x),
        })
    })
}

fn seawall_layer() -> BreakerLayer {
    BreakerLayer::builder().wait_duration(DAY).build().unwrap()
}

/// seawall's breaker over a 10 s time window in `buckets` buckets.
fn seawall_time_layer(buckets: u32) -> BreakerLayer {
    BreakerLayer::builder()
        .sliding_window(SlidingWindow::time_with_buckets(
            Duration::from_secs(10),
            buckets,
        ))
        .wait_duration(DAY)
        .build()
        .unwrap()
}

fn tower_resilience_layer() -> tower_resilience_circuitbreaker::CircuitBreakerLayer<
    tower_resilience_circuitbreaker::DefaultClassifier,
> {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .wait_duration_in_open(DAY)
        .build()
        .unwrap()
}

fn failsafe_breaker() -> impl failsafe::futures::CircuitBreaker + Clone + Send + Sync {
    let backoff = failsafe::backoff::constant(DAY);
    failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(5, backoff))
        .build()
}

fn recloser_breaker() -> recloser::AsyncRecloser {
    recloser::AsyncRecloser::from(recloser::Recloser::custom().open_wait(DAY).build())
}

fn bench(c: &mut Criterion) {
    // A runtime context on this thread, as an application's calls have: seawall's breaker
    // schedules the end of its wait on the runtime when it trips. No breaker needs one to make a
    // call while Closed (tower-resilience's takes tokio's mutex, which needs no runtime), so the
    // two-thread runs below call from plain threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    // ----- Closed path -----
    let mut bare = inner();
    let seawall = seawall_layer();
    let mut seawall_svc = seawall.layer(inner());
    let mut tr_svc = tower_resilience_layer().layer(inner());
    let failsafe = failsafe_breaker();
    let recloser = recloser_breaker();
    let mut plain = inner();

    let mut group = c.benchmark_group("breaker/closed");
    group.bench_function("no breaker", |b| {
        b.iter(|| support::call(&mut bare, black_box(1)).unwrap())
    });
    group.bench_function("seawall", |b| {
        b.iter(|| support::call(&mut seawall_svc, black_box(1)).unwrap())
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| support::call(&mut tr_svc, black_box(1)).unwrap())
    });
    group.bench_function("failsafe", |b| {
        b.iter(|| support::now_or_never(failsafe.call(plain.call(black_box(1)))).unwrap())
    });
    group.bench_function("recloser", |b| {
        b.iter(|| support::now_or_never(recloser.call(plain.call(black_box(1)))).unwrap())
    });
    group.finish();
    assert_eq!(seawall.handle().state(), State::Closed);

    // ----- Closed path, one call in seven failing: every breaker records failures too, and none
    // trips (seawall, tower-resilience and recloser open at 50%, failsafe at 5 in a row). Seven
    // does not divide the count windows' 100 calls, so a window's slot meets a success and a
    // failure in turn and its tallies move. -----
    let seawall_mixed = seawall_layer();
    let mut seawall_mixed_svc = seawall_mixed.layer(inner());
    let mut tr_mixed = tower_resilience_layer().layer(inner());
    let failsafe_mixed = failsafe_breaker();
    let recloser_mixed = recloser_breaker();
    let mut request = 0u32;
    let mut next = move || {
        request = (request + 1) % 7;
        black_box(request)
    };

    let mut group = c.benchmark_group("breaker/closed-1-in-7-failing");
    group.bench_function("no breaker", |b| {
        b.iter(|| support::call(&mut bare, next()).is_ok())
    });
    group.bench_function("seawall", |b| {
        b.iter(|| support::call(&mut seawall_mixed_svc, next()).is_ok())
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| support::call(&mut tr_mixed, next()).is_ok())
    });
    group.bench_function("failsafe", |b| {
        b.iter(|| support::now_or_never(failsafe_mixed.call(plain.call(next()))).is_ok())
    });
    group.bench_function("recloser", |b| {
        b.iter(|| support::now_or_never(recloser_mixed.call(plain.call(next()))).is_ok())
    });
    group.finish();
    assert_eq!(seawall_mixed.handle().state(), State::Closed);
    assert!(support::call(&mut tr_mixed, 1).is_ok());
    assert!(support::now_or_never(failsafe_mixed.call(plain.call(1))).is_ok());
    assert!(support::now_or_never(recloser_mixed.call(plain.call(1))).is_ok());

    // ----- Closed path, time windows: every call reads the clock and counts in its bucket; a
    // 10 s window in 1,000 buckets starts a bucket every 10 ms. -----
    let time_windows = [10, 100, 1_000].map(|buckets| (buckets, seawall_time_layer(buckets)));
    let mut time_svcs = time_windows
        .each_ref()
        .map(|(_, layer)| layer.layer(inner()));
    let mut group = c.benchmark_group("breaker/closed-time-window");
    for ((buckets, _), svc) in time_windows.iter().zip(&mut time_svcs) {
        group.bench_function(format!("seawall, {buckets} buckets"), |b| {
            b.iter(|| support::call(svc, black_box(1)).unwrap())
        });
    }
    group.finish();
    for (_, layer) in &time_windows {
        assert_eq!(layer.handle().state(), State::Closed);
    }

    // ----- Open path: trip each breaker, then measure the rejection -----
    let mut seawall_open = seawall_layer().layer(inner());
    let mut tr_open = tower_resilience_layer().layer(inner());
    let failsafe_open = failsafe_breaker();
    let recloser_open = recloser_breaker();
    for _ in 0..200 {
        let _ = support::call(&mut seawall_open, 0);
        let _ = support::call(&mut tr_open, 0);
        let _ = support::now_or_never(failsafe_open.call(plain.call(0)));
        let _ = support::now_or_never(recloser_open.call(plain.call(0)));
    }
    assert_eq!(seawall_open.handle().state(), State::Open);
    assert!(matches!(
        support::call(&mut tr_open, 1),
        Err(tower_resilience_circuitbreaker::CircuitBreakerError::OpenCircuit)
    ));
    assert!(matches!(
        support::now_or_never(failsafe_open.call(plain.call(1))),
        Err(failsafe::Error::Rejected)
    ));
    assert!(matches!(
        support::now_or_never(recloser_open.call(plain.call(1))),
        Err(recloser::Error::Rejected)
    ));

    let mut group = c.benchmark_group("breaker/open");
    group.bench_function("seawall", |b| {
        b.iter(|| support::call(&mut seawall_open, black_box(1)).unwrap_err())
    });
    group.bench_function("tower-resilience", |b| {
        b.iter(|| support::call(&mut tr_open, black_box(1)).unwrap_err())
    });
    group.bench_function("failsafe", |b| {
        b.iter(|| support::now_or_never(failsafe_open.call(plain.call(black_box(1)))).unwrap_err())
    });
    group.bench_function("recloser", |b| {
        b.iter(|| support::now_or_never(recloser_open.call(plain.call(black_box(1)))).unwrap_err())
    });
    group.finish();

    // ----- 2 threads on one shared breaker (Closed path) -----
    // The keyed layer's key is the request: both threads call key 1, which the set already holds.
    let per_key = BreakerSet::new(
        BreakerConfig::builder()
            .wait_duration(DAY)
            .build_config()
            .unwrap(),
        1_024,
    )
    .unwrap();
    let seawall_keyed = per_key.keyed_layer(|x: &u32| *x).unwrap().layer(inner());
    let mut group = c.benchmark_group("breaker/closed-2-threads");
    group.throughput(Throughput::Elements(2));
    group.bench_function(BenchmarkId::from_parameter("seawall"), |b| {
        b.iter_custom(|iters| {
            two_threads(
                iters,
                || seawall_svc.clone(),
                |svc| support::call(svc, 1).unwrap(),
            )
        })
    });
    group.bench_function(BenchmarkId::from_parameter("seawall keyed"), |b| {
        b.iter_custom(|iters| {
            two_threads(
                iters,
                || seawall_keyed.clone(),
                |svc| support::call(svc, 1).unwrap(),
            )
        })
    });
    group.bench_function(BenchmarkId::from_parameter("tower-resilience"), |b| {
        b.iter_custom(|iters| {
            two_threads(
                iters,
                || tr_svc.clone(),
                |svc| support::call(svc, 1).unwrap(),
            )
        })
    });
    group.bench_function(BenchmarkId::from_parameter("failsafe"), |b| {
        b.iter_custom(|iters| {
            two_threads(
                iters,
                || (failsafe.clone(), inner()),
                |(cb, svc)| support::now_or_never(cb.call(svc.call(1))).unwrap(),
            )
        })
    });
    group.bench_function(BenchmarkId::from_parameter("recloser"), |b| {
        b.iter_custom(|iters| {
            two_threads(iters, inner, |svc| {
                support::now_or_never(recloser.call(svc.call(1))).unwrap()
            })
        })
    });
    group.finish();
    assert_eq!(per_key.len(), 1);
    assert_eq!(per_key.handle(&1).unwrap().state(), State::Closed);

    // ----- allocations per call -----
    const CALLS: u32 = 10_000;
    support::report_allocs("breaker/closed", "no breaker", CALLS, || {
        support::call(&mut bare, 1).unwrap()
    });
    support::report_allocs("breaker/closed", "seawall", CALLS, || {
        support::call(&mut seawall_svc, 1).unwrap()
    });
    support::report_allocs("breaker/closed", "tower-resilience", CALLS, || {
        support::call(&mut tr_svc, 1).unwrap()
    });
    support::report_allocs("breaker/closed", "failsafe", CALLS, || {
        support::now_or_never(failsafe.call(plain.call(1))).unwrap()
    });
    support::report_allocs("breaker/closed", "recloser", CALLS, || {
        support::now_or_never(recloser.call(plain.call(1))).unwrap()
    });
    for ((buckets, _), svc) in time_windows.iter().zip(&mut time_svcs) {
        let subject = format!("seawall, {buckets} buckets");
        support::report_allocs("breaker/closed-time-window", &subject, CALLS, || {
            support::call(svc, 1).unwrap()
        });
    }
    support::report_allocs("breaker/closed-1-in-7-failing", "seawall", CALLS, || {
        support::call(&mut seawall_mixed_svc, next())
    });
    support::report_allocs(
        "breaker/closed-1-in-7-failing",
        "tower-resilience",
        CALLS,
        || support::call(&mut tr_mixed, next()),
    );
    support::report_allocs("breaker/closed-1-in-7-failing", "failsafe", CALLS, || {
        support::now_or_never(failsafe_mixed.call(plain.call(next())))
    });
    support::report_allocs("breaker/closed-1-in-7-failing", "recloser", CALLS, || {
        support::now_or_never(recloser_mixed.call(plain.call(next())))
    });
    support::report_allocs("breaker/open", "seawall", CALLS, || {
        support::call(&mut seawall_open, 1).unwrap_err()
    });
    support::report_allocs("breaker/open", "tower-resilience", CALLS, || {
        support::call(&mut tr_open, 1).unwrap_err()
    });
    support::report_allocs("breaker/open", "failsafe", CALLS, || {
        support::now_or_never(failsafe_open.call(plain.call(1))).unwrap_err()
    });
    support::report_allocs("breaker/open", "recloser", CALLS, || {
        support::now_or_never(recloser_open.call(plain.call(1))).unwrap_err()
    });
}

/// Runs `iters` calls on each of two threads sharing one breaker; returns the slower thread's
/// time.
fn two_threads<T: Send, R>(
    iters: u64,
    make: impl Fn() -> T,
    one_call: impl Fn(&mut T) -> R + Sync,
) -> Duration {
    let barrier = Barrier::new(2);
    let (a, b) = (make(), make());
    std::thread::scope(|scope| {
        let run = |mut state: T| {
            let (barrier, one_call) = (&barrier, &one_call);
            scope.spawn(move || {
                barrier.wait();
                let start = tokio::time::Instant::now();
                for _ in 0..iters {
                    black_box(one_call(&mut state));
                }
                start.elapsed()
            })
        };
        let (a, b) = (run(a), run(b));
        a.join().unwrap().max(b.join().unwrap())
    })
}

criterion_group!(benches, bench);
criterion_main!(benches);
