//! The bulkhead's and the rate limiter's metrics, under the policy name, and the rate limiter's
//! events.

use seawall_bulkhead::{
    limit::Aimd,
    ratelimit::{RateLimitEvent, RateLimitLayer},
    BulkheadLayer,
};
use seawall_core::{
    metrics::{
        testing::TestRecorder, BULKHEAD_IN_FLIGHT, BULKHEAD_LIMIT, BULKHEAD_REJECTED,
        BULKHEAD_WAITING, RATELIMIT_DELAYED, RATELIMIT_KEYS, RATELIMIT_LIMITED,
    },
    Name,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::oneshot;
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn bulkhead_reports_in_flight_waiting_rejected_and_limit() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BulkheadLayer::builder()
        .name("users")
        .max_concurrent(1)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|gate: oneshot::Receiver<()>| async move {
        let _ = gate.await;
        Ok::<_, std::io::Error>(())
    }));
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "users"), Some(1.0));

    let (release, gate) = oneshot::channel();
    let holder = tokio::spawn(service.clone().oneshot(gate));
    tokio::task::yield_now().await;
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "users"), Some(1.0));

    let (_tx, gate) = oneshot::channel();
    let waiter = tokio::spawn(service.clone().oneshot(gate));
    tokio::task::yield_now().await;
    assert_eq!(recorder.gauge(BULKHEAD_WAITING, "users"), Some(1.0));
    assert!(waiter.await.unwrap().is_err(), "max_wait passed");
    assert_eq!(recorder.gauge(BULKHEAD_WAITING, "users"), Some(0.0));
    assert_eq!(recorder.counter(BULKHEAD_REJECTED, "users"), 1);

    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "users"), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_gauge_follows_the_limit() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BulkheadLayer::builder()
        .name("adaptive")
        .adaptive(Aimd::builder().initial_limit(10).build().unwrap())
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err(std::io::Error::other("unavailable"))
        } else {
            Ok(())
        }
    }));
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "adaptive"), Some(10.0));
    let _ = service.clone().oneshot(true).await;
    assert_eq!(handle.limit(), 9);
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "adaptive"), Some(9.0));
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_counts_limited_and_delayed() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let echo = service_fn(|key: u32| async move { Ok::<_, std::io::Error>(key) });

    let layer = RateLimitLayer::builder()
        .name("quota")
        .rate(1, Duration::from_secs(1))
        .max_wait(Duration::from_millis(1_500))
        .build()
        .unwrap();
    let service = layer.layer(echo);
    service.clone().oneshot(1).await.unwrap();
    service.clone().oneshot(2).await.unwrap(); // waits 1 s
    let (a, b) = tokio::join!(service.clone().oneshot(3), service.clone().oneshot(4));
    assert!(
        a.is_ok() ^ b.is_ok(),
        "one waits 1 s, the other would wait 2 s"
    );
    assert_eq!(recorder.counter(RATELIMIT_DELAYED, "quota"), 2);
    assert_eq!(recorder.counter(RATELIMIT_LIMITED, "quota"), 1);

    let keyed = RateLimitLayer::builder()
        .name("tenants")
        .rate(1, Duration::from_secs(1))
        .build_keyed(|key: &u32| *key)
        .unwrap();
    let service = keyed.layer(echo);
    for key in [1, 2, 3, 1] {
        let _ = service.clone().oneshot(key).await;
    }
    assert_eq!(recorder.gauge(RATELIMIT_KEYS, "tenants"), Some(3.0));
    assert_eq!(recorder.counter(RATELIMIT_LIMITED, "tenants"), 1);
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_reports_limited_and_delayed_calls_to_listeners() {
    let echo = service_fn(|key: u32| async move { Ok::<_, std::io::Error>(key) });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |seen: &Arc<Mutex<Vec<(String, RateLimitEvent)>>>| {
        let seen = seen.clone();
        move |name: &Name, event: &RateLimitEvent| {
            seen.lock().unwrap().push((name.to_string(), *event));
        }
    };

    let layer = RateLimitLayer::builder()
        .name("quota")
        .rate(1, Duration::from_secs(1))
        .max_wait(Duration::from_millis(1_500))
        .on_event(record(&seen))
        .build()
        .unwrap();
    let service = layer.layer(echo);
    service.clone().oneshot(1).await.unwrap(); // admitted at once: no event
    service.clone().oneshot(2).await.unwrap(); // waits 1 s
    let (a, b) = tokio::join!(service.clone().oneshot(3), service.clone().oneshot(4));
    assert!(a.is_ok() && b.is_err());
    let secs = Duration::from_secs;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("quota".into(), RateLimitEvent::Delayed { delay: secs(1) }),
            ("quota".into(), RateLimitEvent::Delayed { delay: secs(1) }),
            (
                "quota".into(),
                RateLimitEvent::Limited {
                    retry_after: secs(2)
                }
            ),
        ]
    );

    seen.lock().unwrap().clear();
    let keyed = RateLimitLayer::builder()
        .name("tenants")
        .rate(1, Duration::from_secs(1))
        .on_event(record(&seen))
        .build_keyed(|key: &u32| *key)
        .unwrap();
    let service = keyed.layer(echo);
    for key in [1, 2, 3, 1] {
        let _ = service.clone().oneshot(key).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [(
            "tenants".into(),
            RateLimitEvent::Limited {
                retry_after: secs(1)
            }
        )]
    );
}
