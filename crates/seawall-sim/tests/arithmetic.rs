//! On trivial clusters the simulator agrees with arithmetic.

use seawall_sim::{
    backend::{BackendSpec, DispatchLog, SimBackend, SimRequest},
    client::{ClientSpec, SeawallSpec},
    dist::Latency,
    run::run,
    scenario::{Load, Scenario},
};
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

fn scenario(backend: BackendSpec, load: Load) -> Scenario {
    Scenario {
        name: "trivial".into(),
        description: String::new(),
        backends: vec![backend],
        load,
        clients: vec![
            ClientSpec::RoundRobin,
            ClientSpec::TowerP2cPending,
            ClientSpec::TowerP2cPeakEwma {
                default_rtt_ms: 30.0,
                decay_ms: 10_000.0,
            },
        ],
        seed: 1,
    }
}

fn within(d: Duration, expected: Duration, tolerance: f64) -> bool {
    let (d, e) = (d.as_secs_f64(), expected.as_secs_f64());
    (d - e).abs() <= e * tolerance
}

#[test]
fn one_constant_backend_every_percentile_is_its_latency() {
    let s = scenario(
        BackendSpec::new(Latency::Constant { ms: 10.0 }),
        Load::OpenLoop {
            rate_per_sec: 100.0,
            requests: 2_000,
        },
    );
    let report = run(&s, 3).unwrap();
    let ten = Duration::from_millis(10);
    for c in &report.clients {
        for d in [c.p50, c.p90, c.p99, c.p999, c.max] {
            // hdrhistogram keeps 3 significant digits.
            assert!(within(d, ten, 0.001), "{}: {d:?}", c.client);
        }
        assert_eq!(c.requests, 2_000);
        assert_eq!(c.success_rate(), 1.0);
        assert_eq!(c.backend_calls, 2_000);
        assert_eq!(c.extra_load(), 0.0);
        // At 100 rps with 10 ms calls the run lasts 20 s of simulated time.
        assert!(
            within(c.elapsed, Duration::from_secs(20), 0.01),
            "{:?}",
            c.elapsed
        );
    }
}

#[test]
fn ten_percent_errors_give_ninety_percent_success() {
    let mut backend = BackendSpec::new(Latency::Constant { ms: 1.0 });
    backend.error_rate = 0.1;
    let s = scenario(
        backend,
        Load::ClosedLoop {
            concurrency: 8,
            requests: 10_000,
        },
    );
    let report = run(&s, 5).unwrap();
    for c in &report.clients {
        // Binomial(10000, 0.9): standard deviation 30 requests; allow four.
        let ok = c.ok as f64;
        assert!((8_880.0..=9_120.0).contains(&ok), "{}: {ok}", c.client);
    }
}

#[test]
fn closed_loop_concurrency_bounds_throughput() {
    let s = scenario(
        BackendSpec::new(Latency::Constant { ms: 10.0 }),
        Load::ClosedLoop {
            concurrency: 4,
            requests: 400,
        },
    );
    let report = run(&s, 1).unwrap();
    // 4 callers, 10 ms each, 400 requests: 100 rounds of 10 ms.
    assert!(within(
        report.clients[0].elapsed,
        Duration::from_secs(1),
        0.01
    ));
}

/// tower's balance example draws whole milliseconds below the maximum: an endpoint of maximum
/// 1 ms answers at once.
#[test]
fn whole_millisecond_uniform_below_one_answers_at_once() {
    let s = scenario(
        BackendSpec::new(Latency::UniformInt {
            min_ms: 0,
            max_ms: 1,
        }),
        Load::ClosedLoop {
            concurrency: 4,
            requests: 400,
        },
    );
    let report = run(&s, 1).unwrap();
    for c in &report.clients {
        assert!(
            c.p50 < Duration::from_millis(1),
            "{}: {:?}",
            c.client,
            c.p50
        );
        assert_eq!(c.success_rate(), 1.0);
    }
}

/// A backend that works on one call at a time serves 4 callers one after another: each call
/// waits for the three before it, and the wait counts in its latency.
#[test]
fn a_backend_at_its_concurrency_limit_queues_the_rest() {
    let mut backend = BackendSpec::new(Latency::Constant { ms: 10.0 });
    backend.max_concurrency = Some(1);
    let s = scenario(
        backend,
        Load::ClosedLoop {
            concurrency: 4,
            requests: 40,
        },
    );
    let report = run(&s, 1).unwrap();
    for c in &report.clients {
        // 40 calls of 10 ms, one at a time.
        assert!(
            within(c.elapsed, Duration::from_millis(400), 0.01),
            "{}: {:?}",
            c.client,
            c.elapsed
        );
        // After the first round every caller waits for the other three: 40 ms.
        assert!(
            within(c.p90, Duration::from_millis(40), 0.01),
            "{}: {:?}",
            c.client,
            c.p90
        );
        assert_eq!(c.success_rate(), 1.0);
    }
}

/// A call the client gives up on, waiting in the queue or in service, frees its place: 40
/// callers with a 205 ms timeout on a backend that serves one 10 ms call at a time, so most
/// calls time out waiting. The run takes about as long as the calls served, 10 ms each (a little
/// more: a call whose turn comes less than 10 ms before its timeout is served until it times
/// out), not the 10 s that 1,000 calls of 10 ms would take if those given up on were served all
/// the same.
#[test]
fn calls_given_up_on_do_not_delay_the_ones_after_them() {
    let mut backend = BackendSpec::new(Latency::Constant { ms: 10.0 });
    backend.max_concurrency = Some(1);
    let mut s = scenario(
        backend,
        Load::ClosedLoop {
            concurrency: 40,
            requests: 1_000,
        },
    );
    s.clients = vec![ClientSpec::Seawall(SeawallSpec {
        timeout_ms: Some(205),
        ..SeawallSpec::default()
    })];
    let report = run(&s, 1).unwrap();
    let c = &report.clients[0];
    assert!(c.ok <= 600, "most calls time out waiting: {} ok", c.ok);
    let served = Duration::from_millis(10) * c.ok as u32;
    assert!(
        c.elapsed >= served && c.elapsed <= served * 21 / 20,
        "{:?} for {} calls served",
        c.elapsed,
        c.ok
    );
}

/// A backend serves the calls beyond its workers in the order they arrived, each after the one
/// before it: 20 calls at once to one worker whose calls take 1 ms or 100 ms, each finishes one
/// of those after the call before it, whatever the calls after it take.
#[tokio::test(start_paused = true)]
async fn queued_calls_are_served_in_arrival_order() {
    let mut spec = BackendSpec::new(Latency::Bimodal {
        fast: Box::new(Latency::Constant { ms: 1.0 }),
        slow: Box::new(Latency::Constant { ms: 100.0 }),
        slow_fraction: 0.5,
    });
    spec.max_concurrency = Some(1);
    let start = Instant::now();
    let backend = SimBackend::new(0, spec, 7, start, Arc::new(DispatchLog::default()));
    let mut calls = tokio::task::JoinSet::new();
    for id in 0..20u64 {
        let mut handle = backend.clone();
        handle.ready().await.unwrap();
        let call = handle.call(SimRequest {
            id,
            key: id,
            deadline: None,
        });
        calls.spawn(async move {
            call.await.unwrap();
            (id, start.elapsed())
        });
    }
    let mut finished = calls.join_all().await;
    finished.sort_by_key(|&(_, at)| at);
    let order: Vec<u64> = finished.iter().map(|&(id, _)| id).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
    let mut gaps = vec![finished[0].1];
    gaps.extend(finished.windows(2).map(|w| w[1].1 - w[0].1));
    let ms = Duration::from_millis;
    assert!(gaps.iter().all(|&g| g == ms(1) || g == ms(100)), "{gaps:?}");
    assert!(gaps.contains(&ms(1)) && gaps.contains(&ms(100)), "{gaps:?}");
}
