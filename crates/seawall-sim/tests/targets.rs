//! What the simulator must be able to show about seawall's policies, as loose assertions on the
//! built-in scenarios (the exact figures are in docs/benchmarks.md).

use seawall_sim::{builtin, report::ClientReport, run::run, Report};
use std::time::Duration;

fn client<'a>(report: &'a Report, label: &str) -> &'a ClientReport {
    report
        .clients
        .iter()
        .find(|c| c.client == label)
        .unwrap_or_else(|| panic!("{label} missing from {}", report.scenario))
}

#[test]
fn one_of_five_failing_success_with_and_without_retries() {
    let report = run(&builtin::one_of_five_failing(), 1).unwrap();
    let naive = client(&report, "round robin");
    assert!(naive.success_rate() < 0.95);
    let seawall = client(&report, "seawall p2c peak-ewma");
    assert!(
        seawall.success_rate() >= 0.995,
        "{}",
        seawall.success_rate()
    );
    let retried = client(
        &report,
        "seawall p2c peak-ewma + ejection + retry (20% budget)",
    );
    assert!(
        retried.success_rate() >= 0.9999,
        "{}",
        retried.success_rate()
    );
    assert!(retried.extra_load() <= 0.2);
}

#[test]
fn hard_down_is_left_at_once_and_readmitted_within_an_ejection_period() {
    let report = run(&builtin::hard_down(), 1).unwrap();
    let fault = |label: &str| client(&report, label).faults[0].clone();
    // tower's balancers are drawn to the endpoint that fails fast.
    for tower in ["tower p2c pending", "tower p2c peak-ewma"] {
        assert!(
            fault(tower).wasted_calls > fault("round robin").wasted_calls * 3 / 2,
            "{tower}: {:?}",
            fault(tower)
        );
    }
    let tuned = fault("seawall p2c peak-ewma + ejection");
    // Five failures in a row would eject it; the failure penalty keeps it below that.
    assert!(tuned.wasted_calls <= 5, "{tuned:?}");
    assert!(
        tuned.time_to_eject.unwrap() <= Duration::from_millis(200),
        "{tuned:?}"
    );
    // Ejections last 2 s in this client.
    assert!(
        tuned.time_to_readmit.unwrap() <= Duration::from_secs(2),
        "{tuned:?}"
    );
    assert!(fault("seawall p2c peak-ewma").wasted_calls <= 5);
    // Round robin never leaves it, so there is nothing to wait for once it is back.
    let round_robin = fault("round robin");
    assert_eq!(round_robin.time_to_eject, None, "{round_robin:?}");
    assert_eq!(
        round_robin.time_to_readmit,
        Some(Duration::ZERO),
        "{round_robin:?}"
    );
}

#[test]
fn hedging_cuts_the_heavy_tail_for_little_extra_load() {
    let report = run(&builtin::heavy_tail(), 1).unwrap();
    let plain = client(&report, "seawall p2c peak-ewma");
    let hedged = client(&report, "seawall p2c peak-ewma + hedge");
    assert!(
        hedged.p999 * 10 <= plain.p999,
        "{:?} vs {:?}",
        hedged.p999,
        plain.p999
    );
    assert!(hedged.extra_load() <= 0.05, "{}", hedged.extra_load());
}

#[test]
fn a_retry_budget_stops_a_retry_storm() {
    let report = run(&builtin::retry_storm(), 1).unwrap();
    let unbudgeted = client(&report, "seawall retry x3, no budget");
    let budgeted = client(&report, "seawall retry x3, budget 20%");
    // Three attempts at 50% failure: 1 + 0.5 + 0.25 attempts per request without a budget.
    assert!(unbudgeted.extra_load() > 0.7, "{}", unbudgeted.extra_load());
    assert!(budgeted.extra_load() <= 0.2, "{}", budgeted.extra_load());
    // tower's TpsBudget at the same ratio holds the load as well.
    let tower = client(&report, "tower retry x3, TpsBudget 20%");
    assert!(
        (0.15..=0.2).contains(&tower.extra_load()),
        "{}",
        tower.extra_load()
    );
    assert!(tower.success_rate() > 0.55, "{}", tower.success_rate());
}
