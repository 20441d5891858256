//! The effective deadline is the earlier of the layer's and the request's, and is written back.

mod common;

use common::{recorder, Seen};
use seawall_timeout::{Elapsed, RequestDeadline, TimeoutLayer};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tower::{Layer, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn writes_its_deadline_on_the_request() {
    let seen = Seen::default();
    let svc =
        TimeoutLayer::new(Duration::from_secs(3)).layer(recorder(seen.clone(), Duration::ZERO));
    let start = Instant::now();
    svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_secs(3))]
    );
}

#[tokio::test(start_paused = true)]
async fn an_earlier_deadline_on_the_request_wins() {
    let seen = Seen::default();
    let svc = TimeoutLayer::new(Duration::from_secs(3))
        .layer(recorder(seen.clone(), Duration::from_secs(10)));
    let start = Instant::now();
    let mut req = http::Request::new(());
    req.set_deadline(start + Duration::from_secs(1));
    assert!(svc.oneshot(req).await.unwrap_err().is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_secs(1))]
    );
}

#[tokio::test(start_paused = true)]
async fn a_later_deadline_on_the_request_is_tightened() {
    let seen = Seen::default();
    let svc = TimeoutLayer::new(Duration::from_secs(3))
        .layer(recorder(seen.clone(), Duration::from_secs(10)));
    let start = Instant::now();
    let mut req = http::Request::new(());
    req.set_deadline(start + Duration::from_secs(60));
    assert!(svc.oneshot(req).await.unwrap_err().is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_secs(3))]
    );
}

/// Puts `inner` under a 2 s timeout over a service that takes 10 s: the call fails at 2 s, and
/// the service saw the outer deadline on its request.
async fn outer_deadline_cuts_the_call(inner: TimeoutLayer) {
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(2)))
        .layer(inner)
        .service(recorder(seen.clone(), Duration::from_secs(10)));
    let start = Instant::now();
    assert!(svc
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err()
        .is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_secs(2))]
    );
}

#[tokio::test(start_paused = true)]
async fn an_inner_timeout_enforces_the_outer_deadline() {
    // total 2s outside, a default 5s timeout inside (not a per-try one, which leaves the outer
    // deadline to the outer layer: see the per-try tests below): the inner layer sees and enforces
    // the outer deadline, so it cuts the call at it and reports it under its name. Off the
    // millisecond tick, as every real deadline is, the outer layer then finds that `Elapsed`
    // after its deadline and reports the call too (on a tick it would find it in time).
    tokio::time::advance(Duration::from_micros(500)).await;
    let fired = Arc::new(Mutex::new(Vec::new()));
    let layer = |name: &'static str, timeout| {
        let sink = fired.clone();
        TimeoutLayer::builder()
            .timeout(timeout)
            .name(name)
            .on_event(
                move |name: &seawall_core::Name, _: &seawall_timeout::TimeoutEvent| {
                    sink.lock().unwrap().push(name.to_string());
                },
            )
            .build()
            .unwrap()
    };
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(layer("outer", Duration::from_secs(2)))
        .layer(layer("inner", Duration::from_secs(5)))
        .service(recorder(seen.clone(), Duration::from_secs(10)));
    let start = Instant::now();
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    // Cut on the timer's tick, within a millisecond after the deadline.
    let after = start.elapsed();
    assert!(
        after > Duration::from_secs(2) && after <= Duration::from_millis(2001),
        "{after:?}"
    );
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_secs(2))]
    );
    assert_eq!(*fired.lock().unwrap(), ["inner", "outer"]);
}

#[tokio::test(start_paused = true)]
async fn propagation_can_be_turned_off() {
    let seen = Seen::default();
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(3))
        .propagate_deadline(false)
        .build()
        .unwrap();
    let svc = layer.layer(recorder(seen.clone(), Duration::ZERO));
    svc.oneshot(http::Request::new(())).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![None]);
}

#[tokio::test(start_paused = true)]
async fn a_layer_that_leaves_the_outer_deadline_fires_only_at_its_own() {
    let seen = Seen::default();
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_secs(3))
        .enforce_outer_deadline(false)
        .build()
        .unwrap();
    let svc = layer.layer(recorder(seen.clone(), Duration::from_secs(10)));
    let start = Instant::now();
    let mut req = http::Request::new(());
    req.set_deadline(start + Duration::from_secs(1));
    assert!(svc.oneshot(req).await.unwrap_err().is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(3), "its own deadline");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![Some(start + Duration::from_secs(1))],
        "the earlier deadline stays on the request"
    );
}

#[tokio::test(start_paused = true)]
async fn a_per_try_timeout_leaves_the_outer_deadline_to_the_outer_layer() {
    // total 2s outside, per-try 5s inside: the outer layer cuts the call, the inner one never
    // fires (it is dropped with the call).
    let fired = Arc::new(Mutex::new(Vec::new()));
    let sink = fired.clone();
    let per_try = TimeoutLayer::builder()
        .timeout(Duration::from_secs(5))
        .name("per-try")
        .on_event(
            move |name: &seawall_core::Name, _: &seawall_timeout::TimeoutEvent| {
                sink.lock().unwrap().push(name.to_string());
            },
        )
        .build()
        .unwrap()
        .per_try();
    assert_eq!(per_try.name().to_string(), "per-try");
    assert!(!per_try.honors_override() && !per_try.enforces_outer_deadline());
    outer_deadline_cuts_the_call(per_try.clone()).await;
    assert!(fired.lock().unwrap().is_empty(), "{fired:?}");

    // Its own, earlier deadline it enforces, and reports under its name.
    let seen = Seen::default();
    let svc = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(20)))
        .layer(per_try)
        .service(recorder(seen.clone(), Duration::from_secs(10)));
    let start = Instant::now();
    assert!(svc
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err()
        .is::<Elapsed>());
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(*fired.lock().unwrap(), vec!["per-try".to_string()]);
}
