//! Fallback use and failure are counted under the policy name.

use seawall_core::{
    metrics::{testing::TestRecorder, FALLBACK_FAILED, FALLBACK_USED},
    BoxError,
};
use seawall_fallback::{Failed, FallbackLayer};
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test]
async fn use_and_failure_are_counted() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = FallbackLayer::builder()
        .name("profile-cache")
        .build_fn(|failed: Failed<&'static str>| match failed.error() {
            Some(e) if e.to_string() == "hard" => Err("cache empty".into()),
            _ => Ok("cached"),
        })
        .unwrap();
    let svc = layer.layer(service_fn(|outcome: &'static str| async move {
        match outcome {
            "ok" => Ok("fresh"),
            other => Err::<&'static str, BoxError>(other.into()),
        }
    }));
    for outcome in ["ok", "soft", "hard", "ok", "soft"] {
        let _ = svc.clone().oneshot(outcome).await;
    }
    assert_eq!(recorder.counter(FALLBACK_USED, "profile-cache"), 3);
    assert_eq!(recorder.counter(FALLBACK_FAILED, "profile-cache"), 1);
}
