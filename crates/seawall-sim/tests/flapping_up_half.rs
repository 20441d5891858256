//! A backend is faulty only while a fault acts on its calls: not in the up half of `flapping`.

use seawall_sim::{
    backend::{BackendSpec, Fault, FaultKind},
    dist::Latency,
};

#[test]
fn a_flapping_backend_is_faulty_in_its_down_halves_only() {
    let mut spec = BackendSpec::new(Latency::Constant { ms: 1.0 });
    spec.faults.push(Fault {
        from_ms: 100,
        to_ms: 200,
        effect: FaultKind::Flapping { period_ms: 10 },
    });
    // Down for 5 ms of every 10, from the fault's start; outside it, not faulty at all.
    let faulty: Vec<u64> = (0..300).filter(|&ms| spec.faulty_at(ms)).collect();
    let down: Vec<u64> = (100..200).filter(|ms| ms % 10 < 5).collect();
    assert_eq!(faulty, down);
    // A fault that acts on every call makes the backend faulty throughout its window.
    spec.faults.push(Fault {
        from_ms: 150,
        to_ms: 160,
        effect: FaultKind::Slow { extra_ms: 5.0 },
    });
    assert!((150..160).all(|ms| spec.faulty_at(ms)));
    assert!(!spec.faulty_at(165) && !spec.faulty_at(200));
}

/// The down half is told from the up half without overflow, however long the period.
#[test]
fn the_longest_period_is_down_for_its_first_half_only() {
    let mut spec = BackendSpec::new(Latency::Constant { ms: 1.0 });
    spec.faults.push(Fault {
        from_ms: 0,
        to_ms: u64::MAX,
        effect: FaultKind::Flapping {
            period_ms: u64::MAX,
        },
    });
    assert!(spec.validate().is_ok());
    assert!(spec.faulty_at(0) && spec.faulty_at(u64::MAX / 2));
    assert!(!spec.faulty_at(u64::MAX / 2 + 1) && !spec.faulty_at(u64::MAX - 1));
}
