//! Rejections spend tokio's cooperative budget: a caller looping on a full bulkhead or an
//! exhausted rate limiter yields, so other tasks on its worker still run.

use seawall_bulkhead::{ratelimit::RateLimitLayer, BulkheadLayer};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tower::{service_fn, Layer, Service, ServiceExt};

async fn rejected_loop_yields<S>(mut svc: S)
where
    S: Service<(), Error = seawall_core::BoxError>,
{
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });
    for _ in 0..10_000 {
        let result = svc.ready().await.unwrap().call(()).await;
        if ran.load(Ordering::SeqCst) {
            return;
        }
        assert!(result.is_err(), "expected a rejection");
    }
    panic!("the spawned task never ran while calls were rejected");
}

#[tokio::test]
async fn a_loop_of_bulkhead_rejections_lets_other_tasks_run() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let held = layer.layer(service_fn(|()| {
        std::future::pending::<Result<(), std::io::Error>>()
    }));
    let holder = tokio::spawn(held.oneshot(()));
    tokio::task::yield_now().await;
    let svc = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));
    rejected_loop_yields(svc).await;
    holder.abort();
}

#[tokio::test]
async fn a_loop_of_rate_limit_rejections_lets_other_tasks_run() {
    let layer = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut svc = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));
    svc.ready().await.unwrap().call(()).await.unwrap();
    rejected_loop_yields(svc).await;
}
