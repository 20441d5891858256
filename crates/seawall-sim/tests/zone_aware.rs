//! The backends' zones reach seawall's zone-aware picker.

use seawall_sim::{run::run, Scenario};

/// Three backends in zone a and three in zone b, every one healthy, and a zone-aware client in
/// zone a.
fn two_zones() -> Scenario {
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
        "#,
    );
    for zone in ["a", "b", "a", "b", "a", "b"] {
        text.push_str(&format!(
            "[[backends]]\nlatency = {{ kind = \"constant\", ms = 5.0 }}\nzone = \"{zone}\"\n"
        ));
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
