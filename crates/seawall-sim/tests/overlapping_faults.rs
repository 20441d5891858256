//! Where faults overlap, a refused connection (`down`, the down half of `flapping`) wins over the
//! others, whatever their order in the list and whatever the backend's capacity.

use seawall_sim::{
    backend::{BackendSpec, DispatchLog, Fault, FaultKind, SimBackend, SimError, SimRequest},
    client::ClientSpec,
    dist::Latency,
    run::run,
    scenario::{Load, Scenario},
};
use std::{sync::Arc, time::Duration};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

/// Fast 503s in 100 ms from 0 to 10 s, and the backend down over `down`: in that order, or the
/// other way round.
fn faults(down: (u64, u64), reversed: bool) -> Vec<Fault> {
    let mut faults = vec![
        Fault {
            from_ms: 0,
            to_ms: 10_000,
            effect: FaultKind::Errors {
                error_rate: 1.0,
                latency_ms: 100.0,
            },
        },
        Fault {
            from_ms: down.0,
            to_ms: down.1,
            effect: FaultKind::Down,
        },
    ];
    if reversed {
        faults.reverse();
    }
    faults
}

fn backend(faults: Vec<Fault>, max_concurrency: Option<usize>) -> BackendSpec {
    let mut spec = BackendSpec::new(Latency::Uniform {
        min_ms: 5.0,
        max_ms: 15.0,
    });
    spec.max_concurrency = max_concurrency;
    spec.faults = faults;
    spec
}

/// How a call made at `at` goes: how long it takes, and whether it was refused.
async fn call_at(backend: &SimBackend, start: Instant, at: Duration) -> (Duration, bool) {
    tokio::time::sleep_until(start + at).await;
    let request = SimRequest {
        id: 0,
        key: 0,
        deadline: None,
    };
    let sent = Instant::now();
    let err = backend
        .clone()
        .ready()
        .await
        .unwrap()
        .call(request)
        .await
        .expect_err("every call fails");
    let err = err.downcast_ref::<SimError>().expect("a SimError");
    (sent.elapsed(), err.down)
}

#[tokio::test(start_paused = true)]
async fn a_down_fault_refuses_calls_during_an_errors_fault_in_either_order() {
    for max_concurrency in [None, Some(4)] {
        for reversed in [false, true] {
            let start = Instant::now();
            let spec = backend(faults((5_000, 6_000), reversed), max_concurrency);
            let log = Arc::new(DispatchLog::default());
            let backend = SimBackend::new(0, spec, 1, start, log);
            let case = format!("max_concurrency {max_concurrency:?}, reversed {reversed}");
            let ms = Duration::from_millis;
            assert_eq!(
                call_at(&backend, start, ms(1_000)).await,
                (ms(100), false),
                "{case}"
            );
            assert_eq!(
                call_at(&backend, start, ms(5_500)).await,
                (Duration::ZERO, true),
                "{case}"
            );
            assert_eq!(
                call_at(&backend, start, ms(7_000)).await,
                (ms(100), false),
                "{case}"
            );
        }
    }
}

#[test]
fn the_order_of_overlapping_faults_does_not_change_the_report() {
    // Ten requests a second for 10 s, the backend down from 2 s to 8 s: most requests are
    // refused at once, the others fail in 100 ms.
    let scenario = |reversed: bool| Scenario {
        name: "overlap".into(),
        description: String::new(),
        backends: vec![
            backend(faults((2_000, 8_000), reversed), None),
            backend(Vec::new(), None),
        ],
        load: Load::OpenLoop {
            rate_per_sec: 10.0,
            requests: 100,
        },
        clients: vec![ClientSpec::RoundRobin],
        seed: 1,
    };
    let forward = run(&scenario(false), 1).unwrap();
    let reversed = run(&scenario(true), 1).unwrap();
    let (f, r) = (&forward.clients[0], &reversed.clients[0]);
    // Half the requests go to the faulty backend, 30 of them while it is down.
    assert_eq!(f.ok, 50);
    assert!(f.p50 < Duration::from_millis(15), "{:?}", f.p50);
    assert_eq!((f.p50, f.p90, f.p99, f.max), (r.p50, r.p90, r.p99, r.max));
    assert_eq!(f.curve, r.curve);
    assert_eq!((f.ok, f.backend_calls), (r.ok, r.backend_calls));
}
