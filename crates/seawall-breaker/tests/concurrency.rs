//! On a multi-thread runtime, never more than `permitted_probes` calls reach the inner service
//! at once while the breaker is HalfOpen.
#![cfg(not(loom))]

use seawall::{breaker::BreakerLayer, BoxError};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tower::{service_fn, Layer, Service, ServiceExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_never_lets_more_than_its_probes_through() {
    const PROBES: usize = 3;
    // The dependency always fails, so after the first trip the breaker only ever moves between
    // Open and HalfOpen: every call that reaches it is a probe.
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(1))
        .backoff(1.0, Duration::from_millis(1))
        .permitted_probes(PROBES as u32)
        .build()
        .unwrap();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let reached = Arc::new(AtomicUsize::new(0));
    let inner = {
        let (in_flight, most, reached) = (in_flight.clone(), most.clone(), reached.clone());
        service_fn(move |_: ()| {
            let (in_flight, most, reached) = (in_flight.clone(), most.clone(), reached.clone());
            async move {
                reached.fetch_add(1, Ordering::SeqCst);
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                for _ in 0..3 {
                    tokio::task::yield_now().await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Err::<(), BoxError>("down".into())
            }
        })
    };
    let svc = layer.layer(inner);
    let _ = svc.clone().oneshot(()).await; // trips
    assert_eq!(reached.load(Ordering::SeqCst), 1);

    // Callers keep calling until enough probes have gone through (each Open wait is a millisecond
    // of real time), or a deadline generous for a loaded machine passes.
    const ENOUGH: usize = 1 + 20 * PROBES;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let mut svc = svc.clone();
            let reached = reached.clone();
            tokio::spawn(async move {
                while reached.load(Ordering::SeqCst) < ENOUGH
                    && tokio::time::Instant::now() < deadline
                {
                    let _ = svc.ready().await.unwrap().call(()).await;
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let reached = reached.load(Ordering::SeqCst);
    assert!(
        reached >= ENOUGH,
        "only {reached} calls reached the dependency within 10 s"
    );
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= PROBES,
        "{most} calls reached the dependency at once"
    );
}
