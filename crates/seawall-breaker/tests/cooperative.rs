//! Rejections spend tokio's cooperative budget: a caller looping on an open breaker yields, so
//! other tasks on its worker still run.

use seawall_breaker::BreakerLayer;
use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};
use tower::{service_fn, Layer, Service, ServiceExt};

#[tokio::test]
async fn a_loop_of_rejections_lets_other_tasks_run() {
    let layer = BreakerLayer::builder().build().unwrap();
    layer.handle().force_open();
    let mut svc = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));

    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    tokio::spawn(async move { flag.store(true, Ordering::SeqCst) });

    let mut ran_during_loop = false;
    for _ in 0..10_000 {
        let rejected = svc.ready().await.unwrap().call(()).await;
        assert!(rejected.is_err());
        if ran.load(Ordering::SeqCst) {
            ran_during_loop = true;
            break;
        }
    }
    assert!(
        ran_during_loop,
        "the spawned task never ran while calls were rejected"
    );
}
