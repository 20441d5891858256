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
