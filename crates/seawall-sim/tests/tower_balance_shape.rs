//! tower's balance example reproduces its known shape: round robin's p99 sits near the slow
//! endpoints' latency, tower's p2c balancers are far lower.

use seawall_sim::{builtin, run::run};
use std::time::Duration;

#[test]
fn round_robin_tail_is_the_slow_endpoints_p2c_is_far_lower() {
    let report = run(&builtin::tower_balance(), 1).unwrap();
    let by = |label: &str| {
        report
            .clients
            .iter()
            .find(|c| c.client == label)
            .unwrap_or_else(|| panic!("{label} missing"))
    };
    let rr = by("round robin");
    let pending = by("tower p2c pending");
    let ewma = by("tower p2c peak-ewma");

    // Round robin sends 1 in 10 calls to the 1000 ms endpoint and 1 in 10 to the 500 ms one, so
    // its p99 is in the slowest endpoint's range.
    assert!(rr.p99 >= Duration::from_millis(800), "rr p99 {:?}", rr.p99);
    for p2c in [pending, ewma] {
        assert!(
            p2c.p99 * 2 <= rr.p99,
            "{} p99 {:?} vs rr {:?}",
            p2c.client,
            p2c.p99,
            rr.p99
        );
        assert!(
            p2c.p90 * 3 <= rr.p90,
            "{} p90 {:?} vs rr {:?}",
            p2c.client,
            p2c.p90,
            rr.p90
        );
        // And it sends the slowest endpoint far less than its round-robin share.
        let share = p2c.total_share();
        assert!(
            share[9] < 0.05,
            "{} share of the 1 s endpoint {}",
            p2c.client,
            share[9]
        );
    }
    // seawall's full-scan PeakEWMA keeps the slow endpoints nearly idle once measured (here it
    // sends nearly every call to the endpoint that answers in 0 ms).
    let least = by("seawall least peak-ewma");
    assert!(
        least.p99 * 10 <= ewma.p99,
        "least p99 {:?} vs tower {:?}",
        least.p99,
        ewma.p99
    );
    // p99.9 ≤ 0.5× tower's holds here, but trivially (0 ms against 829 ms with seed 1): the
    // 0 ms endpoint has unlimited capacity. The documented target is carried by the capacity
    // scenario's test below.
    assert!(
        least.p999 * 2 <= ewma.p999,
        "least p99.9 {:?} vs tower {:?}",
        least.p999,
        ewma.p999
    );
    for c in &report.clients {
        assert_eq!(c.success_rate(), 1.0);
    }
}

/// tower's example wraps every endpoint in `ConcurrencyLimit`; here each serves 50 calls at once
/// and reports itself not ready while full. The cluster then has as many workers as the load has
/// callers, so a caller whose call ends frees the one free worker in the cluster: every client
/// that checks readiness sends its next call to that endpoint, whatever its picker, and they all
/// measure the same. The documented target, p99.9 ≤ 0.5× tower's p2c PeakEwma, is not met here.
#[test]
fn with_the_limit_visible_readiness_chooses_the_endpoint_not_the_picker() {
    let report = run(&builtin::tower_balance_capacity(), 1).unwrap();
    let by = |label: &str| {
        report
            .clients
            .iter()
            .find(|c| c.client == label)
            .unwrap_or_else(|| panic!("{label} missing"))
    };
    let ewma = by("tower p2c peak-ewma");
    for c in report.clients.iter().filter(|c| c.client != "round robin") {
        let near = |d: Duration, tower: Duration| d * 20 >= tower * 19 && d * 20 <= tower * 21;
        assert!(
            near(c.p99, ewma.p99) && near(c.p999, ewma.p999),
            "{} p99 {:?}, p99.9 {:?} vs tower {:?}, {:?}",
            c.client,
            c.p99,
            c.p999,
            ewma.p99,
            ewma.p999
        );
    }
    // The target (447 ms against 447 ms with seed 1): not met.
    let least = by("seawall least peak-ewma");
    assert!(
        least.p999 * 2 > ewma.p999,
        "least p99.9 {:?} vs tower {:?}: the target is met, update docs/benchmarks.md",
        least.p999,
        ewma.p999
    );
    // Round robin does not check readiness before it picks, and waits at the full endpoints.
    let rr = by("round robin");
    assert!(rr.p99 >= ewma.p99 * 10, "rr p99 {:?}", rr.p99);
    for c in &report.clients {
        assert_eq!(c.success_rate(), 1.0);
    }
}

/// With the limit hidden (every endpoint always ready, the calls beyond 50 queued inside it),
/// piling onto the fastest endpoint has a price: the full-scan PeakEWMA picker's median rises
/// with the queue it builds there, while its tail stays far below tower's p2c balancers, whose
/// share of calls to the slow endpoints waits in their queues.
#[test]
fn with_the_limit_hidden_herding_shows_in_the_median_not_the_tail() {
    let report = run(&builtin::tower_balance_capacity_queue(), 1).unwrap();
    let by = |label: &str| {
        report
            .clients
            .iter()
            .find(|c| c.client == label)
            .unwrap_or_else(|| panic!("{label} missing"))
    };
    let least = by("seawall least peak-ewma");
    let outstanding = by("seawall least outstanding");
    let ewma = by("tower p2c peak-ewma");
    // It sends the fastest endpoint more than it can serve at once, and the calls queue there.
    assert!(least.total_share()[0] > outstanding.total_share()[0]);
    assert!(
        least.p50 > outstanding.p50,
        "least peak-ewma p50 {:?} vs least outstanding {:?}",
        least.p50,
        outstanding.p50
    );
    assert!(
        least.p99 * 10 <= ewma.p99,
        "least p99 {:?} vs tower {:?}",
        least.p99,
        ewma.p99
    );
    // p99.9 ≤ 0.5× tower's (0.29× with seed 1), when tower's balancers cannot see the limit.
    assert!(
        least.p999 * 2 <= ewma.p999,
        "least p99.9 {:?} vs tower {:?}",
        least.p999,
        ewma.p999
    );
    for c in &report.clients {
        assert_eq!(c.success_rate(), 1.0);
    }
}
