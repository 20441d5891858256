//! A seawall retry without budget settings gets seawall's default budget, as the retry layer
//! does; no budget at all must be asked for. tower's retry is given only a budget ratio its
//! `TpsBudget` keeps.

use seawall_sim::{run::run, Scenario};

/// Five backends failing half their calls, 1,000 requests a second for 10 s, through seawall
/// retry stacks with `retry` as given (round robin, outlier detection off).
fn storm(retries: &[&str]) -> Result<Scenario, String> {
    let mut text = String::from(
        r#"
        name = "storm"
        [load]
        kind = "open_loop"
        rate_per_sec = 1000.0
        requests = 10000
        "#,
    );
    for _ in 0..5 {
        text.push_str(
            "[[backends]]\nlatency = { kind = \"constant\", ms = 10.0 }\nerror_rate = 0.5\n",
        );
    }
    for retry in retries {
        text.push_str(&format!(
            "[[clients]]\nkind = \"seawall\"\npicker = {{ kind = \"round_robin\" }}\n\
             outlier = {{ consecutive_failures = 0, failure_percentage = 0.0, latency_factor = 0.0, success_rate_factor = 0.0 }}\n\
             retry = {retry}\n"
        ));
    }
    Scenario::from_toml(&text)
}

#[test]
fn an_absent_budget_is_seawalls_default_and_unlimited_must_be_asked_for() {
    let report = run(
        &storm(&[
            "{ max_attempts = 3 }",
            "{ max_attempts = 3, budget_ratio = 0.2, budget_min_per_second = 10 }",
            "{ max_attempts = 3, unlimited = true }",
        ])
        .unwrap(),
        1,
    )
    .unwrap();
    let [default, explicit, unlimited] = &report.clients[..] else {
        panic!("three clients");
    };
    // The default budget: 20% of requests, plus 10 a second kept for 10 s, so over a 10 s run at
    // most 0.2 × 10,000 + 100 × 2 retries.
    assert_eq!(default.backend_calls, explicit.backend_calls);
    assert!(default.extra_load() <= 0.22, "{}", default.extra_load());
    // Three attempts at 50% failure: 0.5 + 0.25 extra calls per request.
    assert!(unlimited.extra_load() > 0.7, "{}", unlimited.extra_load());
}

#[test]
fn unlimited_and_a_budget_setting_together_are_rejected() {
    for retry in [
        "{ unlimited = true, budget_ratio = 0.2 }",
        "{ unlimited = true, budget_min_per_second = 5 }",
    ] {
        let err = storm(&[retry]).expect_err(retry);
        assert!(err.contains("retry.unlimited"), "{retry}: {err}");
    }
}

/// tower's `TpsBudget` withdraws `1 / ratio` deposits per retry, rounded down: asked for 0.6 it
/// allows a retry per request, for 0.3 one per three.
#[test]
fn a_tower_budget_ratio_tps_budget_cannot_keep_is_rejected() {
    let tower = |ratio: &str| {
        let text = format!(
            "name = \"x\"\n[load]\nkind = \"open_loop\"\nrate_per_sec = 10.0\nrequests = 10\n\
             [[backends]]\nlatency = {{ kind = \"constant\", ms = 1.0 }}\n\
             [[clients]]\nkind = \"tower_retry\"\nbudget_ratio = {ratio}\n"
        );
        Scenario::from_toml(&text)
    };
    for (ratio, kept) in [
        ("0.6", "it allows 1)"),
        ("0.3", "it allows 0.3333)"),
        ("1.5", "it allows 1.5015)"),
    ] {
        let err = tower(ratio).expect_err(ratio);
        assert!(err.contains("clients[0].budget_ratio"), "{ratio}: {err}");
        assert!(err.contains(kept), "{ratio}: {err}");
    }
    for ratio in [
        "0.0",
        "0.1",
        "0.2",
        "0.25",
        "0.5",
        "1.0",
        "2.0",
        "0.3333333",
        "1000.0",
    ] {
        tower(ratio).unwrap_or_else(|e| panic!("{ratio}: {e}"));
    }
}
