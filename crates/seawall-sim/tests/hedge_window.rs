//! A percentile hedge measures latencies over seawall's default window unless the scenario gives
//! its own.

use seawall_sim::{builtin, client::ClientSpec, run::run};

#[test]
fn the_percentile_window_is_seawalls_default_unless_given() {
    // 5 s of the heavy-tail scenario: shorter than seawall's default 10 s period.
    let mut scenario = builtin::heavy_tail().with_requests(5_000);
    let given = scenario
        .clients
        .iter()
        .find(|c| c.label().ends_with("+ hedge"))
        .expect("a hedged client")
        .clone();
    let ClientSpec::Seawall(mut spec) = given.clone() else {
        panic!("a seawall client");
    };
    let hedge = spec.hedge.as_mut().expect("hedged");
    assert_eq!(hedge.period_ms, Some(1_000));
    hedge.period_ms = None;
    hedge.min_data_points = None;
    spec.label = Some("default window".into());
    scenario.clients = vec![given, ClientSpec::Seawall(spec)];
    let report = run(&scenario, 1).unwrap();
    let [one_second, default] = &report.clients[..] else {
        panic!("two clients");
    };
    // Measured every second, the percentile is in force after the first one and hedges go out.
    assert!(
        one_second.extra_load() > 0.005,
        "{}",
        one_second.extra_load()
    );
    // No 10 s period has ended within the run: no percentile yet, so no hedges.
    assert_eq!(default.extra_load(), 0.0);
}
