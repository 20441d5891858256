//! Elapsed timeouts are reported to listeners with the budget the call had.

use seawall_timeout::{RequestDeadline, TimeoutEvent, TimeoutLayer};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::sleep;
use tower::{service_fn, Layer, ServiceExt};

/// How long the inner service works on this request.
struct Work(Duration);
impl RequestDeadline for Work {}

#[tokio::test(start_paused = true)]
async fn listeners_see_each_elapsed_call() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_millis(500))
        .name("users")
        .on_event(move |name: &seawall_core::Name, e: &TimeoutEvent| {
            sink.lock().unwrap().push((name.to_string(), *e));
        })
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|Work(d): Work| async move {
        sleep(d).await;
        Ok::<_, std::io::Error>(())
    }));
    svc.clone()
        .oneshot(Work(Duration::from_millis(100)))
        .await
        .unwrap();
    svc.oneshot(Work(Duration::from_secs(1))).await.unwrap_err();
    assert_eq!(
        *events.lock().unwrap(),
        vec![(
            "users".to_string(),
            TimeoutEvent::Elapsed {
                budget: Duration::from_millis(500)
            }
        )]
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_its_deadline_reports_nothing() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let layer = TimeoutLayer::builder()
        .timeout(Duration::from_millis(500))
        .on_event(move |_: &seawall_core::Name, e: &TimeoutEvent| {
            sink.lock().unwrap().push(*e);
        })
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|Work(d): Work| async move {
        sleep(d).await;
        Ok::<_, std::io::Error>(())
    }));
    let mut call = tokio_test::task::spawn(svc.clone().oneshot(Work(Duration::from_secs(1))));
    tokio_test::assert_pending!(call.poll(), "the timer is armed");
    sleep(Duration::from_millis(499)).await;
    tokio_test::assert_pending!(call.poll());
    drop(call);
    sleep(Duration::from_secs(2)).await;
    assert!(events.lock().unwrap().is_empty());

    // The same listener does see a call that runs out of time.
    svc.oneshot(Work(Duration::from_secs(1))).await.unwrap_err();
    assert_eq!(events.lock().unwrap().len(), 1);
}

/// A policy left unnamed reports as `per_try_timeout` under a retry; one its user named keeps
/// that name, even the default's spelling.
#[test]
fn a_per_try_timeout_is_renamed_only_when_it_has_no_name() {
    let unnamed = TimeoutLayer::new(Duration::from_secs(1));
    assert_eq!(unnamed.per_try().name().to_string(), "per_try_timeout");
    assert_eq!(
        unnamed.per_try().per_try().name().to_string(),
        "per_try_timeout"
    );
    for name in ["timeout", "attempt"] {
        let named = TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .name(name)
            .build()
            .unwrap();
        assert_eq!(named.per_try().name().to_string(), name);
    }
}
