//! An open-loop send waits for the millisecond at or after it is due, and its latency, counted
//! from when it was due, includes the wait: the figures docs/simulator.md gives.

use seawall_sim::{run::run, Scenario};
use std::time::Duration;

/// (p50, max) of round robin over one backend answering at once, at `rate_per_sec`.
fn wait_at(rate_per_sec: f64) -> (Duration, Duration) {
    first_waits_at(rate_per_sec, 3000)
}

/// (p50, max) of the first `requests` requests, as [`wait_at`].
fn first_waits_at(rate_per_sec: f64, requests: u64) -> (Duration, Duration) {
    let text = format!(
        r#"
        name = "ticks"
        [load]
        kind = "open_loop"
        rate_per_sec = {rate_per_sec:?}
        requests = {requests}
        [[backends]]
        latency = {{ kind = "constant", ms = 0.0 }}
        [[clients]]
        kind = "round_robin"
        "#
    );
    let report = run(&Scenario::from_toml(&text).unwrap(), 1).unwrap();
    (report.clients[0].p50, report.clients[0].max)
}

#[test]
fn a_send_due_between_milliseconds_is_charged_the_wait() {
    // Whole-millisecond intervals wait for nothing (the histograms count it as their floor, 1 µs).
    let none = Duration::from_micros(1);
    for rate in [250.0, 1_000.0] {
        assert_eq!(wait_at(rate).1, none, "{rate}");
    }
    // 3⅓ ms apart: due on a tick, or ⅓ or ⅔ of a millisecond past one, in turn, so a third of
    // the requests wait nothing, a third ⅔ ms and a third ⅓ ms.
    let near = |d: Duration, us: u64| d.as_micros().abs_diff(u128::from(us)) <= 1;
    let (p50, max) = wait_at(300.0);
    assert!(near(p50, 333) && near(max, 667), "{p50:?} {max:?}");
    // The first request waits nothing, the second ⅔ ms, the third ⅓ ms.
    let (p50, max) = first_waits_at(300.0, 2);
    assert!(p50 == none && near(max, 667), "{p50:?} {max:?}");
    let (p50, max) = first_waits_at(300.0, 3);
    assert!(near(p50, 333) && near(max, 667), "{p50:?} {max:?}");
    // 2.5 ms apart: on a tick or half a millisecond before one.
    let (p50, max) = wait_at(400.0);
    assert!(p50 == none && near(max, 500), "{p50:?} {max:?}");
    // Just over 1 ms apart: up to a whole millisecond.
    let (_, max) = wait_at(999.0);
    assert!(
        max > Duration::from_micros(990) && max <= Duration::from_millis(1),
        "{max:?}"
    );
}

#[test]
fn a_send_is_due_at_its_index_over_the_rate() {
    // 1⅔ ms apart: request i is due at i / 600 s, so every third is due on a tick and waits
    // nothing, and the others wait ⅓ or ⅔ ms; none is due a hair past a tick, to wait a whole
    // millisecond, as one interval rounded to the nanosecond and then multiplied would make it.
    let near = |d: Duration, us: u64| d.as_micros().abs_diff(u128::from(us)) <= 1;
    let (p50, max) = wait_at(600.0);
    assert!(near(p50, 333) && near(max, 667), "{p50:?} {max:?}");
}
