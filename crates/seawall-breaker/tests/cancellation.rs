//! A call whose future is dropped before it completes counts as ignored, and hands back the
//! probe slot it held.
#![cfg(not(loom))]

mod common;

use common::{dependency, rejected, send, Call};
use seawall::breaker::{BreakerLayer, SlidingWindow, State};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};

/// Trips on the first failure, waits 1 s, then lets one probe through.
fn one_probe_breaker() -> BreakerLayer {
    BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .permitted_probes(1)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_count_as_ignored() {
    let layer = BreakerLayer::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    for _ in 0..5 {
        // A client-side timeout drops the call before it fails.
        let call = svc.ready().await.unwrap().call(Call::SlowFail(1_000));
        assert!(tokio::time::timeout(Duration::from_millis(10), call)
            .await
            .is_err());
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().calls, 0, "no cancellation was counted");
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_hands_its_slot_back() {
    let layer = one_probe_breaker();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let probe = svc.ready().await.unwrap().call(Call::Hang);
    assert_eq!(handle.snapshot().probes_in_use, 1);
    assert!(rejected(&send(&mut svc, Call::Ok).await));
    drop(probe);
    assert_eq!(handle.snapshot().probes_in_use, 0);

    // The slot is free again: the next call is the probe, and it closes the breaker.
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_reserved_probe_slot_is_handed_back_when_the_service_is_dropped() {
    let layer = one_probe_breaker();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut reserving = svc.clone();
    reserving.ready().await.unwrap(); // reserves the only slot
    assert_eq!(handle.snapshot().probes_in_use, 1);
    drop(reserving);
    assert_eq!(handle.snapshot().probes_in_use, 0);
    assert_eq!(send(&mut svc, Call::Ok).await.unwrap(), "ok");
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_inner_call_panics_hands_its_slot_back() {
    let layer = one_probe_breaker();
    let handle = layer.handle();
    // `Some(true)` fails, `Some(false)` succeeds, `None` panics in `call`.
    let mut svc = layer.layer(tower::service_fn(|call: Option<bool>| {
        let fail = call.expect("the inner service panics in call");
        std::future::ready(match fail {
            true => Err::<&str, seawall::BoxError>("failed".into()),
            false => Ok("ok"),
        })
    }));
    let _ = svc.ready().await.unwrap().call(Some(true)).await;
    assert_eq!(handle.state(), State::Open);
    tokio::time::sleep(Duration::from_secs(1)).await;

    svc.ready().await.unwrap();
    assert_eq!(handle.snapshot().probes_in_use, 1);
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(None));
    }));
    assert!(panicked.is_err());
    assert_eq!(handle.snapshot().probes_in_use, 0, "the slot came back");
    assert_eq!(
        svc.ready().await.unwrap().call(Some(false)).await.unwrap(),
        "ok"
    );
    assert_eq!(handle.state(), State::Closed);
}
