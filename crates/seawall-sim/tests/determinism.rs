//! The same seed gives the same report; a different seed draws different samples.

use seawall_sim::{builtin, run::run};

#[test]
fn same_seed_same_report() {
    for name in ["hard-down", "heavy-tail"] {
        let scenario = builtin::by_name(name).unwrap().with_requests(3_000);
        let a = run(&scenario, 11).unwrap();
        let b = run(&scenario, 11).unwrap();
        assert_eq!(a, b, "{name}");
        assert_eq!(a.table(), b.table());
    }
}

#[test]
fn different_seeds_draw_different_samples() {
    let scenario = builtin::by_name("heavy-tail").unwrap().with_requests(3_000);
    let a = run(&scenario, 1).unwrap();
    let b = run(&scenario, 2).unwrap();
    assert_ne!(a.clients[0].curve, b.clients[0].curve);
}
