//! tower's balance example reproduces its known shape: round robin's p99 sits near the slow
//! endpoints' latency, tower's p2c balancers are far lower.

use seawall_sim::{
    builtin,
    report::{ClientReport, Report},
    run::run,
};
use std::time::Duration;

fn client<'a>(report: &'a Report, label: &str) -> &'a ClientReport {
    report
        .clients
        .iter()
        .find(|c| c.client == label)
        .unwrap_or_else(|| panic!("{label} missing"))
}

#[test]
fn round_robin_tail_is_the_slow_endpoints_p2c_is_far_lower() {
    let report = run(&builtin::tower_balance(), 1).unwrap();
    let by = |label: &str| client(&report, label);
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
    // 0 ms endpoint never fills up. The capacity scenario's test below carries the target.
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

/// tower's example wraps every endpoint in `ConcurrencyLimit`; here each serves 100 calls at once
/// and reports itself not ready while full, so a balancer that checks readiness passes a full
/// endpoint over. The full-scan PeakEWMA picker still sends the fastest endpoint what it can take,
/// and its tail stays far below tower's p2c PeakEwma: the documented target, p99.9 ≤ 0.5×
/// (195 ms against 777 ms with seed 1).
#[test]
fn with_the_limit_visible_the_full_scan_picker_keeps_its_tail_low() {
    let report = run(&builtin::tower_balance_capacity(), 1).unwrap();
    let by = |label: &str| client(&report, label);
    let ewma = by("tower p2c peak-ewma");
    let least = by("seawall least peak-ewma");
    assert!(
        least.p999 * 2 <= ewma.p999,
        "least p99.9 {:?} vs tower {:?}",
        least.p999,
        ewma.p999
    );
    assert!(
        least.p99 * 10 <= ewma.p99,
        "least p99 {:?} vs tower {:?}",
        least.p99,
        ewma.p99
    );
    // seawall's default p2c PeakEWMA is tower's algorithm, and measures within 10% of it.
    let p2c = by("seawall p2c peak-ewma");
    assert!(
        p2c.p999 * 10 <= ewma.p999 * 11 && p2c.p999 * 11 >= ewma.p999 * 10,
        "seawall p2c p99.9 {:?} vs tower {:?}",
        p2c.p999,
        ewma.p999
    );
    // Round robin does not check readiness before it picks, and waits at the full endpoints.
    let rr = by("round robin");
    assert!(rr.p99 >= ewma.p99 * 5, "rr p99 {:?}", rr.p99);
    for c in &report.clients {
        assert_eq!(c.success_rate(), 1.0);
    }
}

/// With the limit hidden (every endpoint always ready, the calls beyond 100 queued inside it),
/// piling onto the fastest endpoint has a price: the full-scan PeakEWMA picker's median rises
/// with the queue it builds there, while its tail stays far below tower's p2c balancers, whose
/// share of calls to the slow endpoints waits in their queues.
#[test]
fn with_the_limit_hidden_herding_shows_in_the_median_not_the_tail() {
    let report = run(&builtin::tower_balance_capacity_queue(), 1).unwrap();
    let by = |label: &str| client(&report, label);
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
    // p99.9 ≤ 0.5× tower's (0.28× with seed 1), when tower's balancers cannot see the limit.
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
