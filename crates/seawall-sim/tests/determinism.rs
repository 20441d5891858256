//! The same seed gives the same report; a different seed draws different samples.

use seawall_sim::{builtin, run::run, Report};
use std::time::Duration;

/// Whether a report shows its run got as far as it should.
type Reached = fn(&Report) -> bool;

/// Each built-in scenario that exercises a part of the simulator the others do not, cut short
/// but long enough to reach it, and what its report must show to have reached it.
#[test]
fn same_seed_same_report() {
    let covered: [(&str, u64, Reached); 5] = [
        // Outlier ejection while b1 is down from 5 s to 10 s, and its return after.
        ("hard-down", 12_000, |r| {
            let seawall = r.clients.iter().filter(|c| c.client.starts_with("seawall"));
            seawall.clone().all(|c| c.faults[0].time_to_eject.is_some())
                && seawall
                    .clone()
                    .any(|c| c.faults[0].time_to_readmit.is_some())
        }),
        // Hedging.
        ("heavy-tail", 3_000, |r| {
            r.clients.iter().any(|c| c.extra_load() > 0.0)
        }),
        // Retries: seawall's, with and without a budget, and tower's.
        ("retry-storm", 3_000, |r| {
            r.clients
                .iter()
                .filter(|c| c.client.contains("retry"))
                .all(|c| c.extra_load() > 0.0)
        }),
        // A closed loop on backends at capacity, not ready while full and queueing inside: a call
        // is served in at most 1 s, so a slower request waited for a worker.
        ("tower-balance-capacity", 5_000, |r| {
            r.clients
                .iter()
                .any(|c| c.max > Duration::from_millis(1_001))
        }),
        ("tower-balance-capacity-queue", 5_000, |r| {
            r.clients
                .iter()
                .any(|c| c.max > Duration::from_millis(1_001))
        }),
    ];
    for (name, requests, reached) in covered {
        let scenario = builtin::by_name(name).unwrap().with_requests(requests);
        let a = run(&scenario, 11).unwrap();
        let b = run(&scenario, 11).unwrap();
        assert_eq!(a, b, "{name}");
        assert_eq!(a.table(), b.table());
        assert!(reached(&a), "{name} did not get that far:\n{}", a.table());
    }
}

#[test]
fn different_seeds_draw_different_samples() {
    let scenario = builtin::by_name("heavy-tail").unwrap().with_requests(3_000);
    let a = run(&scenario, 1).unwrap();
    let b = run(&scenario, 2).unwrap();
    assert_ne!(a.clients[0].curve, b.clients[0].curve);
}
