//! The backends' zones reach seawall's zone-aware picker.

use seawall_sim::{run::run, Scenario};

/// Three backends in zone a and three in zone b, every one healthy, and a zone-aware client in
/// zone a, whose outlier detection ejects for half a second at first.
fn two_zones() -> Scenario {
    zones_with_local_down(None)
}

/// [`two_zones`], with every backend of zone a down from `down.0` to `down.1` ms if given.
fn zones_with_local_down(down: Option<(u64, u64)>) -> Scenario {
    let mut text = String::from(
        r#"
        name = "zones"
        [load]
        kind = "open_loop"
        rate_per_sec = 1000.0
        requests = 5000
        [[clients]]
        kind = "seawall"
        picker = { kind = "zone_aware", local_zone = "a" }
        outlier = { interval_ms = 100, base_ejection_ms = 500 }
        "#,
    );
    for zone in ["a", "b", "a", "b", "a", "b"] {
        text.push_str(&format!(
            "[[backends]]\nlatency = {{ kind = \"constant\", ms = 5.0 }}\nzone = \"{zone}\"\n"
        ));
        if let (Some((from, to)), "a") = (down, zone) {
            text.push_str(&format!(
                "faults = [{{ from_ms = {from}, to_ms = {to}, effect = {{ kind = \"down\" }} }}]\n"
            ));
        }
    }
    Scenario::from_toml(&text).unwrap()
}

#[test]
fn a_healthy_local_zone_takes_the_calls() {
    let report = run(&two_zones(), 1).unwrap();
    let client = &report.clients[0];
    assert_eq!(client.client, "seawall zone-aware (a)");
    let local: f64 = client.total_share().iter().step_by(2).sum();
    assert!(local > 0.9, "{:?}", client.total_share());
    assert_eq!(client.success_rate(), 1.0);
}

/// The local zone goes down for two of the run's five seconds: the calls move to zone b while it
/// is down and come back once it is up, and hardly any fail. Zone a counts as unhealthy once one
/// of its three endpoints is ejected (2/3 is under the default 70 %; outlier detection ejects at
/// most 10 % of the six, so one), and its ejections, of half a second at first, are over by 4 s.
#[test]
fn calls_leave_a_local_zone_that_is_down_and_come_back() {
    let report = run(&zones_with_local_down(Some((1_000, 3_000))), 1).unwrap();
    let client = &report.clients[0];
    let local_share = |from_ms: u64, to_ms: u64| {
        let buckets: Vec<&Vec<f64>> = client
            .share
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                let at = *i as u64 * client.bucket_ms;
                at >= from_ms && at + client.bucket_ms <= to_ms
            })
            .map(|(_, share)| share)
            .collect();
        let local: f64 = buckets
            .iter()
            .map(|s| s.iter().step_by(2).sum::<f64>())
            .sum();
        local / buckets.len() as f64
    };
    let (before, during, after) = (
        local_share(0, 1_000),
        local_share(1_500, 3_000),
        local_share(4_000, 5_000),
    );
    assert!(before > 0.9, "local share before the fault {before}");
    assert!(during < 0.05, "local share while it is down {during}");
    assert!(after > 0.9, "local share after the fault {after}");
    assert!(client.success_rate() > 0.97, "{}", client.success_rate());
}

#[test]
fn a_blank_local_zone_is_rejected_naming_the_key() {
    let text = r#"
        name = "zones"
        [load]
        kind = "open_loop"
        rate_per_sec = 10.0
        requests = 10
        [[backends]]
        latency = { kind = "constant", ms = 5.0 }
        zone = "a"
        [[clients]]
        kind = "seawall"
        picker = { kind = "zone_aware", local_zone = "" }
    "#;
    let err = Scenario::from_toml(text).unwrap_err();
    assert!(err.contains("picker.local_zone"), "{err}");
}

/// A local zone that no backend is in (a typo, say) would leave the picker always falling back to
/// the other zones while the report names it: it is rejected, naming the key and the zones there
/// are.
#[test]
fn a_local_zone_no_backend_is_in_is_rejected_listing_the_zones() {
    let text = |local_zone: &str, zones: &[Option<&str>]| {
        let mut text = format!(
            r#"
            name = "zones"
            [load]
            kind = "open_loop"
            rate_per_sec = 10.0
            requests = 10
            [[clients]]
            kind = "seawall"
            [[clients]]
            kind = "seawall"
            picker = {{ kind = "zone_aware", local_zone = "{local_zone}" }}
            "#
        );
        for zone in zones {
            text.push_str("[[backends]]\nlatency = { kind = \"constant\", ms = 5.0 }\n");
            if let Some(zone) = zone {
                text.push_str(&format!("zone = \"{zone}\"\n"));
            }
        }
        text
    };
    let zones = [Some("a"), Some("b"), None, Some("a")];
    let err = Scenario::from_toml(&text("c", &zones)).unwrap_err();
    assert_eq!(
        err,
        "clients[1].picker.local_zone \"c\" is no backend's zone (a, b)"
    );
    let err = Scenario::from_toml(&text("a", &[None, None])).unwrap_err();
    assert_eq!(
        err,
        "clients[1].picker.local_zone \"a\" is no backend's zone (no backend has a zone)"
    );
    for local_zone in ["a", "b"] {
        if let Err(e) = Scenario::from_toml(&text(local_zone, &zones)) {
            panic!("rejected {local_zone}: {e}");
        }
    }
}
