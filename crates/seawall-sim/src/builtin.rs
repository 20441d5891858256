//! The built-in scenarios (`seawall-sim list`).

use crate::{
    backend::{AtCapacity, BackendSpec, Fault, FaultKind},
    client::{ClientSpec, HedgeSpec, OutlierSpec, PickerSpec, RetrySpec, SeawallSpec},
    dist::Latency,
    scenario::{Load, Scenario},
};

/// Every built-in scenario.
pub fn all() -> Vec<Scenario> {
    vec![
        tower_balance(),
        tower_balance_capacity(),
        tower_balance_capacity_queue(),
        one_of_five_failing(),
        hard_down(),
        two_slow_of_four(),
        heavy_tail(),
        retry_storm(),
    ]
}

/// The built-in scenario called `name`.
pub fn by_name(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}

fn baseline_clients() -> Vec<ClientSpec> {
    vec![
        ClientSpec::RoundRobin,
        ClientSpec::TowerP2cPending,
        ClientSpec::TowerP2cPeakEwma {
            default_rtt_ms: 30.0,
            decay_ms: 10_000.0,
        },
    ]
}

/// seawall's balancer with every default.
fn seawall_default() -> ClientSpec {
    ClientSpec::Seawall(SeawallSpec::default())
}

/// seawall's balancer with outlier detection (and the picker's memory) tuned to a run of seconds
/// rather than minutes: 2 s ejections, 2 s PeakEWMA decay.
fn seawall_fast_ejection() -> ClientSpec {
    ClientSpec::Seawall(SeawallSpec {
        label: Some("seawall p2c peak-ewma + ejection".into()),
        picker: fast_picker(),
        outlier: Some(fast_outlier()),
        ..SeawallSpec::default()
    })
}

fn fast_picker() -> PickerSpec {
    PickerSpec::P2cPeakEwma {
        choices: 2,
        decay_ms: Some(2_000),
    }
}

fn fast_outlier() -> OutlierSpec {
    OutlierSpec {
        interval_ms: Some(1_000),
        base_ejection_ms: Some(2_000),
        max_ejection_ms: Some(10_000),
        max_ejection_percent: Some(0.5),
        consecutive_failures: Some(5),
        failure_percentage: Some(0.3),
        failure_percentage_volume: Some(20),
        latency_factor: Some(3.0),
        latency_duration_ms: Some(1_000),
        success_rate_factor: None,
    }
}

fn with_seawall(mut clients: Vec<ClientSpec>, extra: Vec<ClientSpec>) -> Vec<ClientSpec> {
    clients.extend(extra);
    clients
}

fn lognormal(median_ms: f64) -> Latency {
    Latency::LogNormal {
        median_ms,
        sigma: 0.3,
    }
}

/// tower's own balance example: 10 endpoints with latency in whole milliseconds uniform in
/// `0..max` for max [1, 5, 10, 10, 10, 100, 100, 100, 500, 1000] ms, 100k requests at concurrency
/// 500.
pub fn tower_balance() -> Scenario {
    let maxes = [1, 5, 10, 10, 10, 100, 100, 100, 500, 1000];
    Scenario {
        name: "tower-balance".into(),
        description: "tower's balance example: 10 endpoints, latency whole ms uniform in 0..max, max 1..1000 ms, 100k requests at concurrency 500".into(),
        backends: maxes
            .iter()
            .map(|&max_ms| BackendSpec::new(Latency::UniformInt { min_ms: 0, max_ms }))
            .collect(),
        load: Load::ClosedLoop {
            concurrency: 500,
            requests: 100_000,
        },
        clients: with_seawall(
            baseline_clients(),
            vec![
                seawall_default(),
                ClientSpec::Seawall(SeawallSpec {
                    picker: PickerSpec::P2cOutstanding { choices: 2 },
                    ..SeawallSpec::default()
                }),
                ClientSpec::Seawall(SeawallSpec {
                    picker: PickerSpec::LeastOutstanding,
                    ..SeawallSpec::default()
                }),
                ClientSpec::Seawall(SeawallSpec {
                    picker: PickerSpec::LeastPeakEwma { decay_ms: None },
                    ..SeawallSpec::default()
                }),
            ],
        ),
        seed: 1,
    }
}

/// tower's balance example on backends of limited capacity: each of the 10 endpoints works on
/// 100 calls at once (twice as many workers in all as there are callers) and, like tower's
/// example, which wraps each endpoint in `ConcurrencyLimit` (of 500 there, a limit the load never
/// reaches), reports itself not ready while all 100 are busy, so a balancer that checks readiness
/// skips it. With exactly as many workers as callers (50 each) every such balancer measures the
/// same: a caller's next call can only go where its last one freed a worker. Each call takes 1..=max whole
/// milliseconds (tower's draw plus 1 ms, so that every call holds a worker: a 0 ms call would
/// make an endpoint's capacity endless).
pub fn tower_balance_capacity() -> Scenario {
    capacity(
        "tower-balance-capacity",
        "tower's balance example on endpoints serving 100 calls at once each and not ready while full (tower's ConcurrencyLimit), latency 1..=max whole ms, max 1..1000 ms, 100k requests at concurrency 500",
        AtCapacity::NotReady,
    )
}

/// [`tower_balance_capacity`] with the limit hidden from the client: every endpoint is always
/// ready, takes every call and queues the ones beyond its 100 workers inside, where only the
/// latency shows them.
pub fn tower_balance_capacity_queue() -> Scenario {
    capacity(
        "tower-balance-capacity-queue",
        "tower's balance example on endpoints serving 100 calls at once each, always ready, the rest queued inside them, latency 1..=max whole ms, max 1..1000 ms, 100k requests at concurrency 500",
        AtCapacity::Queue,
    )
}

fn capacity(name: &str, description: &str, at_capacity: AtCapacity) -> Scenario {
    let maxes = [1, 5, 10, 10, 10, 100, 100, 100, 500, 1000];
    let mut scenario = tower_balance();
    scenario.name = name.into();
    scenario.description = description.into();
    scenario.backends = maxes
        .iter()
        .map(|&max| {
            let mut backend = BackendSpec::new(Latency::UniformInt {
                min_ms: 1,
                max_ms: max + 1,
            });
            backend.max_concurrency = Some(100);
            backend.at_capacity = at_capacity;
            backend
        })
        .collect();
    scenario
}

/// Five backends, one of which answers only 60% of calls successfully.
pub fn one_of_five_failing() -> Scenario {
    let mut backends: Vec<BackendSpec> =
        (0..5).map(|_| BackendSpec::new(lognormal(10.0))).collect();
    backends[2].error_rate = 0.4;
    Scenario {
        name: "one-of-five-failing".into(),
        description: "5 backends, one at 60% success (fast 503s are not modelled: its errors take normal latency), open loop 1,000 rps".into(),
        backends,
        load: Load::OpenLoop {
            rate_per_sec: 1000.0,
            requests: 20_000,
        },
        clients: with_seawall(
            baseline_clients(),
            vec![
                seawall_default(),
                seawall_fast_ejection(),
                ClientSpec::Seawall(SeawallSpec {
                    label: Some("seawall p2c peak-ewma + ejection + retry (20% budget)".into()),
                    picker: fast_picker(),
                    outlier: Some(fast_outlier()),
                    retry: Some(RetrySpec {
                        max_attempts: 3,
                        budget_ratio: Some(0.2),
                        budget_min_per_second: Some(10),
                        unlimited: false,
                        attempt_timeout_ms: None,
                    }),
                    ..SeawallSpec::default()
                }),
            ],
        ),
        seed: 1,
    }
}

/// Five backends; one is hard down (connection refused) from 5 s to 10 s, then comes back.
pub fn hard_down() -> Scenario {
    let mut backends: Vec<BackendSpec> =
        (0..5).map(|_| BackendSpec::new(lognormal(10.0))).collect();
    backends[1].faults.push(Fault {
        from_ms: 5_000,
        to_ms: 10_000,
        effect: FaultKind::Down,
    });
    Scenario {
        name: "hard-down".into(),
        description:
            "5 backends, one refuses connections from 5 s to 10 s, open loop 1,000 rps for 20 s"
                .into(),
        backends,
        load: Load::OpenLoop {
            rate_per_sec: 1000.0,
            requests: 20_000,
        },
        clients: with_seawall(
            baseline_clients(),
            vec![seawall_default(), seawall_fast_ejection()],
        ),
        seed: 1,
    }
}

/// Four backends; two get 5 ms slower from 2 s to 8 s.
pub fn two_slow_of_four() -> Scenario {
    let mut backends: Vec<BackendSpec> = (0..4).map(|_| BackendSpec::new(lognormal(5.0))).collect();
    for b in &mut backends[2..] {
        b.faults.push(Fault {
            from_ms: 2_000,
            to_ms: 8_000,
            effect: FaultKind::Slow { extra_ms: 5.0 },
        });
    }
    Scenario {
        name: "two-slow-of-four".into(),
        description:
            "4 backends, two of them 5 ms slower from 2 s to 8 s, open loop 2,000 rps for 10 s"
                .into(),
        backends,
        load: Load::OpenLoop {
            rate_per_sec: 2000.0,
            requests: 20_000,
        },
        clients: with_seawall(
            baseline_clients(),
            vec![seawall_default(), seawall_fast_ejection()],
        ),
        seed: 1,
    }
}

/// Heavy-tailed latency: 1% of calls take 100× longer than the rest.
pub fn heavy_tail() -> Scenario {
    let latency = Latency::Bimodal {
        fast: Box::new(lognormal(5.0)),
        slow: Box::new(lognormal(500.0)),
        slow_fraction: 0.01,
    };
    Scenario {
        name: "heavy-tail".into(),
        description: "5 backends, 1% of calls take ~100x longer (bimodal), open loop 1,000 rps"
            .into(),
        backends: (0..5).map(|_| BackendSpec::new(latency.clone())).collect(),
        load: Load::OpenLoop {
            rate_per_sec: 1000.0,
            requests: 20_000,
        },
        clients: with_seawall(
            baseline_clients(),
            vec![
                seawall_default(),
                ClientSpec::Seawall(SeawallSpec {
                    hedge: Some(HedgeSpec {
                        delay_ms: None,
                        percentile: Some(0.97),
                        // Recomputed every second from at least 100 calls: a window of the
                        // scenario's own scale (seawall's default is 10 s).
                        period_ms: Some(1_000),
                        min_data_points: Some(100),
                        max_hedges: 1,
                        budget_ratio: 0.05,
                    }),
                    ..SeawallSpec::default()
                }),
            ],
        ),
        seed: 1,
    }
}

/// Every backend fails half its calls: retries without a budget multiply the load; with one they
/// stay bounded.
pub fn retry_storm() -> Scenario {
    let mut backend = BackendSpec::new(lognormal(10.0));
    backend.error_rate = 0.5;
    let retry = |budget_ratio| {
        ClientSpec::Seawall(SeawallSpec {
            label: Some(match budget_ratio {
                Some(r) => format!("seawall retry x3, budget {:.0}%", r * 100.0),
                None => "seawall retry x3, no budget".into(),
            }),
            picker: PickerSpec::RoundRobin,
            outlier: Some(OutlierSpec {
                consecutive_failures: Some(0),
                failure_percentage: Some(0.0),
                latency_factor: Some(0.0),
                success_rate_factor: Some(0.0),
                ..OutlierSpec::default()
            }),
            retry: Some(RetrySpec {
                max_attempts: 3,
                budget_ratio,
                // Without a ratio, no budget at all; with one, no per-second floor.
                budget_min_per_second: budget_ratio.map(|_| 0),
                unlimited: budget_ratio.is_none(),
                attempt_timeout_ms: None,
            }),
            ..SeawallSpec::default()
        })
    };
    Scenario {
        name: "retry-storm".into(),
        description: "5 backends each failing 50% of calls, open loop 1,000 rps: retries with and without a budget, seawall's and tower's".into(),
        backends: vec![backend; 5],
        load: Load::OpenLoop {
            rate_per_sec: 1000.0,
            requests: 20_000,
        },
        clients: with_seawall(
            baseline_clients(),
            vec![
                // tower's retry with its budget at the same 20%, no per-second floor.
                ClientSpec::TowerRetry {
                    max_attempts: 3,
                    budget_ratio: 0.2,
                    budget_min_per_second: 0,
                },
                retry(None),
                retry(Some(0.2)),
            ],
        ),
        seed: 1,
    }
}
