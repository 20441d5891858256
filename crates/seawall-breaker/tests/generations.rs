//! Generations: a result from a call admitted before a state change is dropped, so a late
//! answer cannot flip the new state.
#![cfg(not(loom))]

mod common;

use common::{dependency, send, Call};
use seawall::breaker::{BreakerLayer, SlidingWindow, State};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_late_failure_from_before_the_trip_cannot_trip_the_closed_breaker_again() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(2)
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);

    // Admitted while Closed, answers (a failure) 10 s later.
    let late = tokio::spawn(svc.ready().await.unwrap().call(Call::SlowFail(10_000)));
    tokio::task::yield_now().await;
    let generation = handle.snapshot().generation;

    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = send(&mut svc, Call::Ok).await;
    let _ = send(&mut svc, Call::Ok).await;
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().generation, generation + 3);

    // The late failure arrives: with consecutive_failures(1) it would trip if it counted.
    assert!(late.await.unwrap().is_err());
    assert_eq!(handle.state(), State::Closed);
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_outlived_its_half_open_cannot_decide_the_next_one() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .backoff(1.0, Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .max_wait_in_half_open(Duration::from_secs(2))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The probe takes 3.5 s: HalfOpen gives up on it after 2 s.
    let slow_probe = tokio::spawn(svc.ready().await.unwrap().call(Call::SlowOk(3_500)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handle.state(), State::Open);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "a new HalfOpen, its slot free"
    );

    // A new probe hangs; the old one's success arrives and must not close the breaker.
    let new_probe = tokio::spawn(svc.ready().await.unwrap().call(Call::Hang));
    assert_eq!(slow_probe.await.unwrap().unwrap(), "ok");
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().probe_results, 0);
    new_probe.abort();
}

#[tokio::test(start_paused = true)]
async fn a_result_from_before_a_manual_reset_is_dropped() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let late = svc.ready().await.unwrap().call(Call::SlowFail(100));
    handle.reset();
    assert!(late.await.is_err());
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().calls, 0);
}

/// Millions of state changes with no Open or HalfOpen among them (a breaker reset on a schedule,
/// say) must leave the next Open wait and the next HalfOpen's probes working.
#[test]
fn millions_of_manual_changes_leave_the_next_trip_and_probes_working() {
    use seawall::breaker::{
        state::{Machine, PermitKind},
        BreakerConfig,
    };
    use seawall::Outcome;
    use std::sync::{mpsc, Arc};

    const MS: u64 = 1_000_000;
    let config = BreakerConfig::builder()
        .sliding_window(SlidingWindow::count(1))
        .minimum_calls(1)
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(1))
        .jitter(0.0)
        .permitted_probes(1)
        .build_config()
        .unwrap();
    let trip = |m: &Machine| {
        let permit = m.acquire(|| 0, &()).expect("closed");
        m.complete(permit, Outcome::Failure, Duration::ZERO, || 0, &());
        assert_eq!(m.state(), State::Open);
    };
    // Asks for a call once the Open wait is over, on a thread of its own: a HalfOpen whose probe
    // slots are not tagged with its generation neither admits nor rejects, it spins.
    let ask = |m: Machine| {
        let (tx, rx) = mpsc::channel();
        let m = Arc::new(m);
        std::thread::spawn(move || {
            let _ = tx.send(m.acquire(|| 2 * MS, &()).map(|permit| permit.kind()));
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("acquire answered")
    };

    // Half of the generation tags' range in resets: the deadline and the probe slots were last
    // tagged at generation 0.
    let m = Machine::new(&config);
    for _ in 0..1 << 23 {
        m.reset(0, &());
    }
    trip(&m);
    assert_eq!(ask(m), Ok(PermitKind::Probe));

    // Trips cut short by a reset: the deadline is tagged each time, the probe slots never.
    let m = Machine::new(&config);
    for _ in 0..1 << 22 {
        trip(&m);
        m.reset(0, &());
    }
    trip(&m);
    assert_eq!(ask(m), Ok(PermitKind::Probe));
}
