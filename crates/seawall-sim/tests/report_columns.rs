//! Every client of a scenario is judged on the same time buckets, and successful requests have
//! percentiles of their own.

use seawall_sim::{report::bucket_ms, run::run, Scenario};
use std::time::Duration;

#[test]
fn every_client_gets_the_bucket_of_the_longest_run() {
    // One caller over a 1 ms and a 100 ms backend: round robin takes about 10 s for 200
    // requests, a latency-aware client far less.
    let text = r#"
        name = "buckets"
        [load]
        kind = "closed_loop"
        concurrency = 1
        requests = 200
        [[backends]]
        latency = { kind = "constant", ms = 1.0 }
        [[backends]]
        latency = { kind = "constant", ms = 100.0 }
        [[clients]]
        kind = "round_robin"
        [[clients]]
        kind = "seawall"
        picker = { kind = "least_peak_ewma" }
    "#;
    let report = run(&Scenario::from_toml(text).unwrap(), 1).unwrap();
    let [slow, fast] = &report.clients[..] else {
        panic!("two clients");
    };
    assert!(
        fast.elapsed * 4 < slow.elapsed,
        "{:?} vs {:?}",
        fast.elapsed,
        slow.elapsed
    );
    let bucket = bucket_ms(slow.elapsed);
    assert!(bucket > 10, "{bucket}");
    for c in &report.clients {
        assert_eq!(c.bucket_ms, bucket, "{}", c.client);
    }
}

#[test]
fn refused_calls_do_not_pull_the_success_percentiles_down() {
    // Round robin over a 10 ms backend and one refusing every call: half the requests fail in
    // no time.
    let text = r#"
        name = "refused"
        [load]
        kind = "open_loop"
        rate_per_sec = 100.0
        requests = 1000
        [[backends]]
        latency = { kind = "constant", ms = 10.0 }
        [[backends]]
        latency = { kind = "constant", ms = 10.0 }
        faults = [{ from_ms = 0, to_ms = 3600000, effect = { kind = "down" } }]
        [[clients]]
        kind = "round_robin"
    "#;
    let report = run(&Scenario::from_toml(text).unwrap(), 1).unwrap();
    let c = &report.clients[0];
    assert_eq!(c.ok, 500);
    // Over every request, the median is a refused call.
    assert!(c.p50 < Duration::from_millis(1), "{:?}", c.p50);
    // Over the successful ones, every percentile is the backend's 10 ms (3 significant digits).
    for p in [c.ok_p99, c.ok_p999] {
        let ms = p.expect("some succeeded").as_secs_f64() * 1000.0;
        assert!((9.99..=10.01).contains(&ms), "{ms}");
    }
    let table = report.table();
    assert!(table.contains("ok p99.9"));
    // The run ends long before the fault does: the backend was never readmitted, nor could it be.
    let fault = &c.faults[0];
    assert!(fault.reached && !fault.ended, "{fault:?}");
    let row = table.lines().last().unwrap();
    assert!(row.ends_with(" n/a"), "{row}");
}

#[test]
fn latencies_past_an_hour_are_measured_and_past_thirty_days_marked() {
    // 800 requests at once into a backend serving one call at a time, each taking an hour: the
    // k-th waits k hours, so the last 80 wait more than 30 days.
    let text = r#"
        name = "queue"
        [load]
        kind = "open_loop"
        rate_per_sec = 1000.0
        requests = 800
        [[backends]]
        latency = { kind = "constant", ms = 3600000.0 }
        max_concurrency = 1
        [[clients]]
        kind = "round_robin"
    "#;
    let report = run(&Scenario::from_toml(text).unwrap(), 1).unwrap();
    let c = &report.clients[0];
    let hours = |d: Duration| d.as_secs_f64() / 3_600.0;
    assert!((399.0..=401.0).contains(&hours(c.p50)), "{:?}", c.p50);
    assert!((719.0..=721.0).contains(&hours(c.p90)), "{:?}", c.p90);
    assert!(hours(c.max) >= 720.0, "{:?}", c.max);
    let table = report.table();
    let row = table
        .lines()
        .find(|l| l.starts_with("round robin"))
        .unwrap();
    let cells: Vec<&str> = row.split_whitespace().collect();
    // p50, p90, p99, p99.9, max, ok p99, ok p99.9 after the label's two words.
    // p90, a little under 30 days, is not marked; every figure at the ceiling is.
    assert!(!cells[2].starts_with('>'), "{row}");
    assert!(!cells[3].starts_with('>'), "{row}");
    for cell in &cells[4..9] {
        assert_eq!(*cell, ">2592012763", "{row}");
    }
}
