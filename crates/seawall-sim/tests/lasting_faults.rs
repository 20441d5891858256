//! A fault may last past the end of the run, however far: it is judged within the run.

use seawall_sim::{run::run, Scenario};
use std::time::Duration;

/// Two backends, b0 down for good from 1 s (`to_ms` as far as TOML's integers go), open loop of
/// 1,000 rps for 3 s.
const DOWN_FOR_GOOD: &str = r#"
    name = "down-for-good"
    [load]
    kind = "open_loop"
    rate_per_sec = 1000.0
    requests = 3000
    [[backends]]
    latency = { kind = "constant", ms = 2.0 }
    faults = [{ from_ms = 1000, to_ms = 9223372036854775807, effect = { kind = "down" } }]
    [[backends]]
    latency = { kind = "constant", ms = 2.0 }
    [[clients]]
    kind = "round_robin"
    [[clients]]
    kind = "seawall"
    picker = { kind = "p2c_peak_ewma" }
"#;

#[test]
fn a_fault_that_outlasts_the_run_is_judged_within_the_run() {
    let mut scenario = Scenario::from_toml(DOWN_FOR_GOOD).unwrap();
    for to_ms in [i64::MAX as u64, u64::MAX] {
        scenario.backends[0].faults[0].to_ms = to_ms;
        let report = run(&scenario, 1).unwrap();
        let [round_robin, seawall] = &report.clients[..] else {
            panic!("two clients");
        };
        // Round robin keeps sending to b0 to the end; nothing could readmit it.
        let fault = &round_robin.faults[0];
        assert!(fault.reached && !fault.ended, "{fault:?}");
        assert_eq!(fault.time_to_eject, None, "{fault:?}");
        assert_eq!(fault.time_to_readmit, None, "{fault:?}");
        assert_eq!(fault.wasted_calls, 1_000, "{fault:?}");
        // seawall leaves it within the run, and the search for that stops where the run does.
        let fault = &seawall.faults[0];
        assert!(
            fault
                .time_to_eject
                .is_some_and(|t| t <= Duration::from_millis(500)),
            "{fault:?}"
        );
        assert_eq!(fault.time_to_readmit, None, "{fault:?}");
    }
}
