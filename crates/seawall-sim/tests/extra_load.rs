//! Extra load counts the calls beyond the first of each request: a request that never reached a
//! backend counts none, not minus one, so it cannot hide another request's retry.

use seawall_sim::{run::run, Scenario};

#[test]
fn requests_that_made_no_call_do_not_hide_retries() {
    // One backend working on one call at a time and not ready meanwhile, each call a 503 after
    // 10 s; a request a second. Most requests find it busy and give up after the balancer's
    // 2 s wait for a ready endpoint without calling it.
    let text = r#"
        name = "no-call"
        [load]
        kind = "open_loop"
        rate_per_sec = 1.0
        requests = 40
        [[backends]]
        latency = { kind = "constant", ms = 10000.0 }
        error_rate = 1.0
        max_concurrency = 1
        at_capacity = "not_ready"
        [[clients]]
        kind = "seawall"
        label = "no retry"
        picker = { kind = "round_robin" }
        outlier = { consecutive_failures = 0, failure_percentage = 0, latency_factor = 0, success_rate_factor = 0 }
        [[clients]]
        kind = "seawall"
        label = "retry"
        picker = { kind = "round_robin" }
        outlier = { consecutive_failures = 0, failure_percentage = 0, latency_factor = 0, success_rate_factor = 0 }
        retry = { max_attempts = 2, unlimited = true }
    "#;
    let report = run(&Scenario::from_toml(text).unwrap(), 1).unwrap();
    let [plain, retried] = &report.clients[..] else {
        panic!("two clients");
    };
    for c in [plain, retried] {
        assert_eq!(c.requests, 40, "{}", c.client);
        assert_eq!(c.ok, 0, "{}", c.client);
        // Fewer calls than requests: some requests made none.
        assert!(c.requests_that_called < c.requests, "{c:?}");
        assert!(c.backend_calls < c.requests, "{c:?}");
    }
    // Without retries no request made a second call.
    assert_eq!(plain.backend_calls, plain.requests_that_called, "{plain:?}");
    assert_eq!(plain.extra_load(), 0.0);
    // With them, the second calls show, though calls are still fewer than requests.
    let retries = retried.backend_calls - retried.requests_that_called;
    assert!(retries > 0, "{retried:?}");
    assert_eq!(
        retried.extra_load(),
        retries as f64 / retried.requests as f64
    );
    assert!(
        report
            .table()
            .lines()
            .any(|l| l.starts_with("no retry") && l.trim_end().ends_with(" 0.0%")),
        "{}",
        report.table()
    );
}
