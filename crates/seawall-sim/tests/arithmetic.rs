//! On trivial clusters the simulator agrees with arithmetic.

use seawall_sim::{
    backend::BackendSpec,
    client::ClientSpec,
    dist::Latency,
    run::run,
    scenario::{Load, Scenario},
};
use std::time::Duration;

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
