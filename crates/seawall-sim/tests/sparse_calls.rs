//! Eject and readmit are judged only on stretches of time holding enough calls to tell a backend
//! left alone from one that merely missed a few calls.

use seawall_sim::{run::run, Scenario};
use std::time::Duration;

/// Two backends, b0 down from 2 s to 8 s, `rate_per_sec` for `requests`, round robin.
fn down_two_to_eight(rate_per_sec: f64, requests: u64) -> Scenario {
    let text = format!(
        r#"
        name = "sparse"
        [load]
        kind = "open_loop"
        rate_per_sec = {rate_per_sec:?}
        requests = {requests}
        [[backends]]
        latency = {{ kind = "constant", ms = 2.0 }}
        faults = [{{ from_ms = 2000, to_ms = 8000, effect = {{ kind = "down" }} }}]
        [[backends]]
        latency = {{ kind = "constant", ms = 2.0 }}
        [[clients]]
        kind = "round_robin"
        "#
    );
    Scenario::from_toml(&text).unwrap()
}

#[test]
fn round_robin_is_not_ejected_by_buckets_of_one_call() {
    // 10 s at 10 rps: 50 ms buckets holding a call or none, alternating between the backends.
    let report = run(&down_two_to_eight(10.0, 100), 1).unwrap();
    let c = &report.clients[0];
    assert!(c.bucket_ms < 100, "{}", c.bucket_ms);
    let fault = &c.faults[0];
    assert!(fault.reached && fault.ended, "{fault:?}");
    assert_eq!(fault.wasted_calls, 30, "{fault:?}");
    assert!(fault.eject_judged, "{fault:?}");
    assert_eq!(fault.time_to_eject, None, "{fault:?}");
    assert!(fault.readmit_judged, "{fault:?}");
    assert_eq!(fault.time_to_readmit, Some(Duration::ZERO), "{fault:?}");
    let row = report.table().lines().last().unwrap().to_string();
    assert!(row.contains(" never "), "{row}");
}

#[test]
fn a_fault_with_too_few_calls_to_judge_reads_n_a() {
    // 10 s at 1 rps: 6 calls during the fault and 2 after it, fewer than the 8 (`MIN_CALLS_PER_BACKEND` × 2)
    // needed.
    let report = run(&down_two_to_eight(1.0, 10), 1).unwrap();
    let fault = &report.clients[0].faults[0];
    assert!(fault.reached && fault.ended, "{fault:?}");
    assert!(!fault.eject_judged && !fault.readmit_judged, "{fault:?}");
    assert_eq!(fault.time_to_eject, None, "{fault:?}");
    assert_eq!(fault.time_to_readmit, None, "{fault:?}");
    let table = report.table();
    let row = table.lines().last().unwrap();
    assert!(row.ends_with(" n/a"), "{row}");
    assert_eq!(row.matches(" n/a").count(), 2, "{row}");
}
