//! Scenario files parse and validate; bad ones are rejected with the field named; the SVG report
//! is written.

use seawall_sim::{
    builtin,
    run::run,
    scenario::{Load, MAX_CONCURRENCY, MAX_REQUESTS, MAX_SIMULATED_SECS, MAX_SWEEPS},
    svg::write_svg,
    Scenario,
};
use std::path::Path;

#[test]
fn shipped_scenario_files_parse_and_run() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let scenario = Scenario::from_toml(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .with_requests(500);
        let report = run(&scenario, 1).unwrap();
        assert_eq!(report.clients.len(), scenario.clients.len());
        count += 1;
    }
    assert!(count >= 2);
}

#[test]
fn builtin_scenarios_are_valid() {
    let all = builtin::all();
    assert!(all.len() >= 5);
    for s in all {
        s.validate().unwrap_or_else(|e| panic!("{}: {e}", s.name));
    }
}

#[test]
fn bad_scenarios_name_the_field() {
    let base = r#"
        name = "x"
        [load]
        kind = "open_loop"
        rate_per_sec = 10.0
        requests = 10
        [[clients]]
        kind = "round_robin"
    "#;
    let cases = [
        ("", "backends"),
        (
            "[[backends]]\nlatency = { kind = \"constant\", ms = -1.0 }\n",
            "backends[0].latency",
        ),
        (
            "[[backends]]\nlatency = { kind = \"constant\", ms = 1.0 }\nerror_rate = 1.5\n",
            "error_rate",
        ),
        (
            "[[backends]]\nlatency = { kind = \"constant\", ms = 1.0 }\nfaults = [{ from_ms = 5, to_ms = 1, effect = { kind = \"down\" } }]\n",
            "faults[0]",
        ),
        (
            "[[backends]]\nlatency = { kind = \"constant\", ms = 1.0 }\nmax_concurrency = 0\n",
            "backends[0].max_concurrency",
        ),
        (
            "[[backends]]\nlatency = { kind = \"constant\", ms = 1.0 }\nat_capacity = \"not_ready\"\n",
            "backends[0].at_capacity",
        ),
    ];
    let fault = |effect: &str| {
        format!(
            "[[backends]]\nlatency = {{ kind = \"constant\", ms = 1.0 }}\nfaults = [{{ from_ms = 0, to_ms = 100, effect = {effect} }}]\n"
        )
    };
    let more = [
        (
            fault("{ kind = \"errors\", error_rate = 1.0, latency_ms = -5.0 }"),
            "faults[0]: latency_ms",
        ),
        (
            fault("{ kind = \"slow\", extra_ms = 1e30 }"),
            "faults[0]: extra_ms",
        ),
        (
            fault("{ kind = \"flapping\", period_ms = 1 }"),
            "faults[0]: period_ms",
        ),
        (
            "[[backends]]\nlatency = { kind = \"constant\", ms = 1e30 }\n".to_string(),
            "backends[0].latency: ms",
        ),
        (
            "[[backends]]\nlatency = { kind = \"log_normal\", median_ms = 1e30, sigma = 1.0 }\n"
                .to_string(),
            "median_ms",
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(backends, field)| (backends.to_string(), field))
        .chain(more);
    for (backends, field) in cases {
        let text = format!("{base}\n{backends}");
        let err = match Scenario::from_toml(&text) {
            Err(e) => e,
            Ok(_) => panic!("accepted: {backends}"),
        };
        assert!(err.contains(field), "{err} should name {field}");
    }
    assert!(Scenario::from_toml("name = 3").is_err());
}

/// A kind without fields takes no other key: a misspelled or misplaced one is an error naming it,
/// not silently dropped (serde reads such a variant of an internally tagged enum without looking
/// at the rest of its table, whatever `deny_unknown_fields` says).
#[test]
fn keys_on_kinds_without_fields_are_rejected() {
    let scenario = |backend: &str, client: &str| {
        format!(
            "name = \"x\"\n[load]\nkind = \"open_loop\"\nrate_per_sec = 10.0\nrequests = 10\n\
             [[backends]]\nlatency = {{ kind = \"constant\", ms = 1.0 }}\n{backend}\n\
             [[clients]]\n{client}\n"
        )
    };
    let down = |effect: &str| {
        format!("faults = [{{ from_ms = 0, to_ms = 100, effect = {{ kind = \"down\"{effect} }} }}]")
    };
    let seawall = |picker: &str| format!("kind = \"seawall\"\npicker = {{ kind = \"{picker}\" }}");
    let cases = [
        (
            scenario(&down(", period_ms = 200"), "kind = \"round_robin\""),
            "period_ms",
        ),
        (
            scenario("", "kind = \"round_robin\"\nretry = { max_attempts = 3 }"),
            "retry",
        ),
        (
            scenario("", "kind = \"round_robin\"\nlabel = \"rr+retry\""),
            "label",
        ),
        (
            scenario("", "kind = \"tower_p2c_pending\"\ndefault_rtt_ms = 5"),
            "default_rtt_ms",
        ),
        (
            scenario(
                "",
                "kind = \"seawall\"\npicker = { kind = \"least_outstanding\", choices = 3 }",
            ),
            "choices",
        ),
        (
            scenario(
                "",
                "kind = \"seawall\"\npicker = { kind = \"random\", decay_ms = 100 }",
            ),
            "decay_ms",
        ),
        (
            scenario(
                "",
                "kind = \"seawall\"\npicker = { kind = \"round_robin\", choices = 2 }",
            ),
            "choices",
        ),
    ];
    for (text, key) in cases {
        let err = match Scenario::from_toml(&text) {
            Err(e) => e,
            Ok(_) => panic!("accepted:\n{text}"),
        };
        assert!(err.contains(&format!("`{key}`")), "{err} should name {key}");
    }
    // Given alone, each of these kinds still reads.
    for picker in ["round_robin", "random", "least_outstanding"] {
        let text = scenario(&down(""), &seawall(picker));
        if let Err(e) = Scenario::from_toml(&text) {
            panic!("rejected {picker}: {e}");
        }
    }
    for client in ["round_robin", "tower_p2c_pending"] {
        let text = scenario(&down(""), &format!("kind = \"{client}\""));
        if let Err(e) = Scenario::from_toml(&text) {
            panic!("rejected {client}: {e}");
        }
    }
}

/// Values that used to pass validation and then panic during the run.
#[test]
fn out_of_range_clients_and_loads_are_rejected_naming_the_field() {
    let backend = "[[backends]]\nlatency = { kind = \"constant\", ms = 1.0 }\n";
    let scenario = |load: &str, client: &str| {
        format!("name = \"x\"\n[load]\nkind = \"open_loop\"\n{load}\nrequests = 10\n{backend}[[clients]]\n{client}\n")
    };
    let cases = [
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nhedge = { delay_ms = -1.0 }",
            ),
            "hedge.delay_ms",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"tower_p2c_peak_ewma\"\ndefault_rtt_ms = 1e30",
            ),
            "default_rtt_ms",
        ),
        // tower's PeakEwma asserts that its default RTT is not zero.
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"tower_p2c_peak_ewma\"\ndefault_rtt_ms = 0.0",
            ),
            "default_rtt_ms",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"tower_p2c_peak_ewma\"\ndefault_rtt_ms = 1e-7",
            ),
            "default_rtt_ms",
        ),
        // tower's TpsBudget asserts its ranges: out of them is an error here, not a panic.
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"tower_retry\"\nbudget_ratio = 2000.0",
            ),
            "budget_ratio",
        ),
        (
            scenario("rate_per_sec = 1e-30", "kind = \"round_robin\""),
            "load.rate_per_sec",
        ),
        // Only 0 turns a rule off; anything else below it is a mistake, not "off".
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\noutlier = { failure_percentage = -0.5 }",
            ),
            "outlier.failure_percentage",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\noutlier = { latency_factor = -3.0 }",
            ),
            "outlier.latency_factor",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\noutlier = { success_rate_factor = nan }",
            ),
            "outlier.success_rate_factor",
        ),
        // Errors from the seawall builders name the scenario's keys, not the builders' fields:
        // both budgets have a `ratio`.
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nhedge = { delay_ms = 5.0, budget_ratio = -1.0 }",
            ),
            "hedge.budget_ratio",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nhedge = { percentile = 0.9, period_ms = 0 }",
            ),
            "hedge.period_ms",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nhedge = { percentile = 0.9, min_data_points = 0 }",
            ),
            "hedge.min_data_points",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nhedge = { percentile = 0.9, period_ms = 86400001 }",
            ),
            "hedge.period_ms",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nhedge = { percentile = 0.9, min_data_points = 1000000001 }",
            ),
            "hedge.min_data_points",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nhedge = { delay_ms = 3600001.0 }",
            ),
            "hedge.delay_ms",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\nretry = { budget_ratio = 5000.0 }",
            ),
            "retry.budget_ratio",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\noutlier = { interval_ms = 0 }",
            ),
            "outlier.interval_ms",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\noutlier = { max_ejection_percent = 2.0 }",
            ),
            "outlier.max_ejection_percent",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\noutlier = { failure_percentage = 50.0 }",
            ),
            "outlier.failure_percentage",
        ),
        (
            scenario(
                "rate_per_sec = 10.0",
                "kind = \"seawall\"\noutlier = { latency_factor = 0.5 }",
            ),
            "outlier.latency_factor",
        ),
    ];
    for (text, field) in cases {
        let err = match std::panic::catch_unwind(|| Scenario::from_toml(&text)) {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => panic!("accepted:\n{text}"),
            Err(_) => panic!("panicked:\n{text}"),
        };
        assert!(err.contains(field), "{err} should name {field}");
    }
    // seawall's limits on the percentile's period and points, and the simulator's on a delay.
    for hedge in [
        "{ percentile = 0.9, period_ms = 86400000, min_data_points = 1000000000 }",
        "{ delay_ms = 3600000.0 }",
    ] {
        let text = scenario(
            "rate_per_sec = 10.0",
            &format!("kind = \"seawall\"\nhedge = {hedge}"),
        );
        if let Err(e) = Scenario::from_toml(&text) {
            panic!("rejected {hedge}: {e}");
        }
    }
}

/// A closed loop spawns one task per caller and sizes tower's `Buffer` by the callers: a huge
/// concurrency must be rejected, not hang the run or panic in a semaphore.
#[test]
fn closed_loop_concurrency_past_the_cap_is_rejected() {
    let text = |concurrency: u64, client: &str| {
        format!(
            "name = \"x\"\n[load]\nkind = \"closed_loop\"\nconcurrency = {concurrency}\nrequests = 10\n\
             [[backends]]\nlatency = {{ kind = \"constant\", ms = 1.0 }}\n[[clients]]\nkind = \"{client}\"\n"
        )
    };
    for concurrency in [MAX_CONCURRENCY as u64 + 1, 1 << 62, i64::MAX as u64] {
        for client in ["round_robin", "tower_p2c_pending"] {
            let err = Scenario::from_toml(&text(concurrency, client))
                .expect_err("a concurrency past the cap is rejected");
            assert!(err.contains("load.concurrency"), "{err}");
        }
    }
    let mut scenario = Scenario::from_toml(&text(4, "tower_p2c_pending")).unwrap();
    scenario.load = Load::ClosedLoop {
        concurrency: usize::MAX,
        requests: 10,
    };
    assert!(run(&scenario, 1).unwrap_err().contains("load.concurrency"));
    let at_cap = Scenario::from_toml(&text(MAX_CONCURRENCY as u64, "round_robin")).unwrap();
    assert_eq!(at_cap.validate(), Ok(()));
}

/// Every call is logged for the report: a request count past the cap is rejected, not left to
/// run out of memory.
#[test]
fn request_counts_past_the_cap_are_rejected() {
    for (load, extra) in [
        ("open_loop", "rate_per_sec = 10.0"),
        ("closed_loop", "concurrency = 4"),
    ] {
        let text = |requests: u64| {
            format!(
                "name = \"x\"\n[load]\nkind = \"{load}\"\n{extra}\nrequests = {requests}\n\
                 [[backends]]\nlatency = {{ kind = \"constant\", ms = 1.0 }}\n\
                 [[clients]]\nkind = \"round_robin\"\n"
            )
        };
        for requests in [0, MAX_REQUESTS + 1, u64::MAX >> 1] {
            let err = Scenario::from_toml(&text(requests)).expect_err("rejected");
            assert!(err.contains("load.requests"), "{err}");
        }
        assert!(Scenario::from_toml(&text(MAX_REQUESTS)).is_ok());
    }
    let huge = builtin::by_name("hard-down")
        .unwrap()
        .with_requests(MAX_REQUESTS + 1);
    assert!(run(&huge, 1).unwrap_err().contains("load.requests"));
}

/// Time is virtual, but a seawall balancer wakes once per outlier-detection interval of it: an
/// open loop that would span more than `MAX_SWEEPS` intervals to offer its requests is rejected,
/// naming that client's interval. Clients without such a timer may take up to
/// `MAX_SIMULATED_SECS`, and no open loop longer than that is accepted.
#[test]
fn open_loops_longer_than_the_limits_are_rejected() {
    assert_eq!(MAX_SWEEPS, 3_153_600);
    assert_eq!(MAX_SIMULATED_SECS, 10 * 365 * 86_400);
    let text = |rate: f64, requests: u64, clients: &str| {
        format!(
            "name = \"x\"\n[load]\nkind = \"open_loop\"\nrate_per_sec = {rate:?}\nrequests = {requests}\n\
             [[backends]]\nlatency = {{ kind = \"constant\", ms = 1.0 }}\n{clients}"
        )
    };
    let seawall = |interval: &str| format!("[[clients]]\nkind = \"seawall\"\n{interval}\n");
    let round_robin = "[[clients]]\nkind = \"round_robin\"\n";
    let fits = |text: String| {
        if let Err(e) = Scenario::from_toml(&text) {
            panic!("rejected {text}: {e}");
        }
    };
    let names = |text: String, key: &str| {
        let err = Scenario::from_toml(&text).expect_err("rejected");
        assert!(err.contains(key), "{err}");
    };
    // At the default 10 s, exactly a year fits and a year and 16 s does not (1/16 and 1/32 are
    // exact, as are the quotients).
    fits(text(0.0625, 1_971_000, &seawall("")));
    names(
        text(0.0625, 1_971_001, &seawall("")),
        "clients[0].outlier.interval_ms",
    );
    // At 1 ms, 3,153.6 s; at 60 s, six years.
    fits(text(1.0, 3_153, &seawall("outlier = { interval_ms = 1 }")));
    names(
        text(1.0, 1_000_000, &seawall("outlier = { interval_ms = 1 }")),
        "clients[0].outlier.interval_ms",
    );
    fits(text(
        0.03125,
        5_913_000,
        &seawall("outlier = { interval_ms = 60000 }"),
    ));
    names(
        text(
            0.03125,
            5_913_001,
            &seawall("outlier = { interval_ms = 60000 }"),
        ),
        "clients[0].outlier.interval_ms",
    );
    // Without a seawall client, three years fit, and exactly ten (1/64 is exact);
    // the seawall client beside them is named.
    fits(text(0.01, 1_000_000, round_robin));
    fits(text(0.015625, 4_927_500, round_robin));
    names(
        text(0.01, 1_000_000, &format!("{round_robin}{}", seawall(""))),
        "clients[1].outlier.interval_ms",
    );
    // Past them, the load is named whatever the clients: 64 s more, and about 317 years.
    names(
        text(0.001953125, 6_159_376, round_robin),
        "load.rate_per_sec",
    );
    names(text(0.001, MAX_REQUESTS, round_robin), "load.rate_per_sec");
    // The slowest rate that fits the most requests in a year of default intervals is about
    // 0.317/s; 0.5/s fits them.
    fits(text(0.5, MAX_REQUESTS, &seawall("")));
    // A scenario built in code is held to it too.
    let mut slow = builtin::by_name("hard-down").unwrap();
    slow.load = Load::OpenLoop {
        rate_per_sec: 0.1,
        requests: MAX_REQUESTS,
    };
    assert!(slow
        .validate()
        .unwrap_err()
        .contains(".outlier.interval_ms"));
}

#[test]
fn svg_report_is_written() {
    let scenario = builtin::by_name("hard-down").unwrap().with_requests(1_000);
    let report = run(&scenario, 1).unwrap();
    let path = std::env::temp_dir().join(format!("seawall-sim-test-{}.svg", std::process::id()));
    write_svg(&report, &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    std::fs::remove_file(&path).ok();
    assert!(svg.starts_with("<svg"));
    assert!(svg.contains("tower p2c pending"));
}

#[test]
fn calls_past_seven_weeks_land_in_their_fault() {
    // One call an hour for 1,300 hours; the backend is down for the last 50 of them.
    let hour_ms: u64 = 3_600_000;
    let text = format!(
        r#"
        name = "long"
        [load]
        kind = "open_loop"
        rate_per_sec = {rate}
        requests = 1300
        [[backends]]
        latency = {{ kind = "constant", ms = 1.0 }}
        faults = [{{ from_ms = {from}, to_ms = {to}, effect = {{ kind = "down" }} }}]
        [[clients]]
        kind = "round_robin"
        "#,
        rate = 1.0 / 3600.0,
        from = 1250 * hour_ms,
        to = 1300 * hour_ms,
    );
    let scenario = Scenario::from_toml(&text).unwrap();
    let report = run(&scenario, 1).unwrap();
    let fault = &report.clients[0].faults[0];
    assert!(
        (49..=51).contains(&fault.wasted_calls),
        "{} calls in the last 50 hours",
        fault.wasted_calls
    );
}
