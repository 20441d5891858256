//! A fault applies to the calls whose service starts while it is active: a call that waited in a
//! backend's queue is judged when it gets a worker, not when it arrived.

use seawall_sim::{
    backend::{BackendSpec, Fault, FaultKind},
    client::ClientSpec,
    dist::Latency,
    run::run,
    scenario::{Load, Scenario},
};
use std::time::Duration;

/// One backend that works on one call at a time, 4 callers in a closed loop.
fn one_worker(latency_ms: f64, fault: Fault, requests: u64) -> Scenario {
    let mut backend = BackendSpec::new(Latency::Constant { ms: latency_ms });
    backend.max_concurrency = Some(1);
    backend.faults.push(fault);
    Scenario {
        name: "one-worker".into(),
        description: String::new(),
        backends: vec![backend],
        load: Load::ClosedLoop {
            concurrency: 4,
            requests,
        },
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

/// Calls of 100 ms, the backend down from 50 ms to 1 s. The first call is in service when the
/// fault begins and answers at 100 ms; the three queued behind it get the worker inside the fault
/// and are refused, and so is every later call: no call that finishes after the first succeeds.
#[test]
fn calls_queued_before_a_down_fault_are_refused_when_their_turn_comes() {
    let down = Fault {
        from_ms: 50,
        to_ms: 1_000,
        effect: FaultKind::Down,
    };
    let report = run(&one_worker(100.0, down, 40), 1).unwrap();
    for c in &report.clients {
        assert_eq!(c.requests, 40, "{}", c.client);
        assert_eq!(
            c.ok, 1,
            "{}: only the call in service at 50 ms succeeds",
            c.client
        );
        // Refusals answer at once, so the closed loop spends its requests at 100 ms.
        assert_eq!(c.elapsed, Duration::from_millis(100), "{}", c.client);
    }
}

/// Calls of 10 ms, 100 ms slower for the first 5 ms. The first call starts inside the fault and
/// takes 110 ms; the three queued behind it start after the fault and take 10 ms each.
#[test]
fn a_slow_fault_does_not_slow_calls_served_after_it_ends() {
    let slow = Fault {
        from_ms: 0,
        to_ms: 5,
        effect: FaultKind::Slow { extra_ms: 100.0 },
    };
    let report = run(&one_worker(10.0, slow, 4), 1).unwrap();
    for c in &report.clients {
        assert_eq!(c.success_rate(), 1.0, "{}", c.client);
        assert_eq!(c.elapsed, Duration::from_millis(140), "{}", c.client);
        assert!(
            c.max < Duration::from_millis(141),
            "{}: {:?}",
            c.client,
            c.max
        );
    }
}
