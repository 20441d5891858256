//! Scenarios can be read and run from inside a tokio runtime, as from an async `main` or test.

use seawall_sim::{run::run, Scenario};

const SEAWALL: &str = r#"
    name = "inside"
    [load]
    kind = "open_loop"
    rate_per_sec = 100.0
    requests = 200
    [[backends]]
    latency = { kind = "constant", ms = 2.0 }
    [[backends]]
    latency = { kind = "constant", ms = 2.0 }
    [[clients]]
    kind = "seawall"
    retry = { max_attempts = 2 }
    hedge = { delay_ms = 20 }
    timeout_ms = 500
"#;

#[tokio::test]
async fn a_seawall_scenario_is_read_inside_a_runtime() {
    let scenario = Scenario::from_toml(SEAWALL).unwrap();
    assert_eq!(scenario.clients.len(), 1);
    // A bad value is still found, and named.
    let bad = SEAWALL.replace("max_attempts = 2", "max_attempts = 0");
    let err = Scenario::from_toml(&bad).unwrap_err();
    assert!(err.contains("clients[0].retry.max_attempts"), "{err}");
}

#[tokio::test]
async fn a_scenario_runs_inside_a_runtime_as_outside_it() {
    let scenario = Scenario::from_toml(SEAWALL).unwrap();
    let inside = run(&scenario, 3).unwrap();
    let outside = std::thread::spawn(move || run(&scenario, 3).unwrap())
        .join()
        .unwrap();
    assert_eq!(inside, outside);
    assert_eq!(inside.clients[0].ok, 200);
}
