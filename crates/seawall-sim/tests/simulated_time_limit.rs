//! A run still going when its simulated time reaches the limit (a closed loop of slow calls, a
//! queue still draining) is stopped with an error naming the client, rather than left to run on.

use seawall_sim::{
    client::ClientSpec,
    run::{run, run_client},
    scenario::{Load, MAX_SIMULATED_SECS, MAX_SWEEPS},
    Scenario,
};
use std::time::Duration;

/// Two hours a call: an hour's latency and an hour's `slow` fault that never ends.
const TWO_HOUR_BACKEND: &str = r#"
[[backends]]
latency = { kind = "constant", ms = 3600000.0 }
faults = [{ from_ms = 0, to_ms = 9223372036854775807, effect = { kind = "slow", extra_ms = 3600000.0 } }]
"#;

/// Calls of two hours each needed to pass `MAX_SIMULATED_SECS`, and one more.
fn calls_past_the_limit() -> u64 {
    MAX_SIMULATED_SECS / 7_200 + 1
}

#[test]
fn the_limits_are_ten_years_and_a_year_of_default_intervals() {
    assert_eq!(MAX_SIMULATED_SECS, 10 * 365 * 86_400);
    assert_eq!(MAX_SWEEPS, 3_153_600);
    let client = |text: &str| {
        let scenario = Scenario::from_toml(&format!(
            "name = \"x\"\n[load]\nkind = \"closed_loop\"\nconcurrency = 1\nrequests = 1\n\
             [[backends]]\nlatency = {{ kind = \"constant\", ms = 1.0 }}\n[[clients]]\n{text}\n"
        ))
        .unwrap();
        scenario.clients[0].clone()
    };
    let years = Duration::from_secs(MAX_SIMULATED_SECS);
    assert_eq!(ClientSpec::RoundRobin.max_simulated_time(), years);
    assert_eq!(ClientSpec::TowerP2cPending.max_simulated_time(), years);
    // A year at the default 10 s interval; 3,153.6 s at 1 ms; never more than ten years.
    let seawall = client("kind = \"seawall\"");
    assert_eq!(seawall.sweep_interval(), Some(Duration::from_secs(10)));
    assert_eq!(
        seawall.max_simulated_time(),
        Duration::from_secs(365 * 86_400)
    );
    let fast = client("kind = \"seawall\"\noutlier = { interval_ms = 1 }");
    assert_eq!(fast.max_simulated_time(), Duration::from_millis(3_153_600));
    let slow = client("kind = \"seawall\"\noutlier = { interval_ms = 3600000 }");
    assert_eq!(slow.max_simulated_time(), years);
}

/// One caller whose calls take two hours each: past the limit before its requests are done.
#[test]
fn a_closed_loop_past_the_limit_is_stopped() {
    let text = format!(
        "name = \"x\"\n[load]\nkind = \"closed_loop\"\nconcurrency = 1\nrequests = {}\n\
         {TWO_HOUR_BACKEND}\n[[clients]]\nkind = \"round_robin\"\n",
        calls_past_the_limit()
    );
    let scenario = Scenario::from_toml(&text).unwrap();
    let err = run(&scenario, 1).expect_err("stopped");
    assert!(
        err.starts_with("clients[0]: simulated time reached 315360000 s (10 years) with calls"),
        "{err}"
    );
    // Two calls fewer end two hours before it.
    let fits = scenario.with_requests(calls_past_the_limit() - 2);
    let report = run(&fits, 1).unwrap();
    assert_eq!(report.clients[0].ok, calls_past_the_limit() - 2);
}

/// Every request sent in the first seconds to a backend serving one call at a time: the open
/// loop is short, but its queue would take longer than the limit to drain.
#[test]
fn a_queue_draining_past_the_limit_is_stopped() {
    let text = format!(
        "name = \"x\"\n[load]\nkind = \"open_loop\"\nrate_per_sec = 1000.0\nrequests = {}\n\
         {TWO_HOUR_BACKEND}max_concurrency = 1\n[[clients]]\nkind = \"round_robin\"\n",
        calls_past_the_limit()
    );
    let scenario = Scenario::from_toml(&text).unwrap();
    let err = run(&scenario, 1).expect_err("stopped");
    assert!(
        err.starts_with("clients[0]: simulated time reached 315360000 s (10 years) with calls"),
        "{err}"
    );
}

/// `run_client` does not validate: an open loop built in code to send for longer than the limit
/// stops sending at it, rather than sending on (at a seawall client's cost) and being stopped
/// only once it has sent everything.
#[test]
fn an_unvalidated_open_loop_past_the_limit_is_stopped() {
    let mut scenario = Scenario::from_toml(
        "name = \"x\"\n[load]\nkind = \"open_loop\"\nrate_per_sec = 1.0\nrequests = 1\n\
         [[backends]]\nlatency = { kind = \"constant\", ms = 1.0 }\n[[clients]]\nkind = \"round_robin\"\n",
    )
    .unwrap();
    // A call every 11.6 days, past ten years at the 316th.
    scenario.load = Load::OpenLoop {
        rate_per_sec: 1e-6,
        requests: 1_000,
    };
    assert!(scenario.validate().is_err());
    let err = run_client(&scenario, &scenario.clients[0], 1).expect_err("stopped");
    assert!(
        err.starts_with(
            "simulated time reached 315360000 s (10 years) with requests still to send"
        ),
        "{err}"
    );
}
