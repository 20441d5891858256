//! Which errors the fallback answers for: all by default, or those chosen by type or predicate.

use seawall_core::{BoxError, Elapsed};
use seawall_fallback::{Failed, FallbackLayer};
use std::{error::Error, fmt, io};
use tower::{service_fn, Layer, ServiceExt};

#[derive(Debug)]
struct Wrapped(BoxError);
impl fmt::Display for Wrapped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("wrapped")
    }
}
impl Error for Wrapped {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.0)
    }
}

fn failing(
    err: fn() -> BoxError,
) -> impl tower::Service<(), Response = String, Error = BoxError, Future = impl Send> + Clone {
    service_fn(move |()| async move { Err::<String, _>(err()) })
}

fn describe(failed: Failed<String>) -> Result<String, BoxError> {
    Ok(format!("fallback for: {}", failed.error().unwrap()))
}

#[tokio::test]
async fn every_error_by_default() {
    let layer = FallbackLayer::builder().build_fn(describe).unwrap();
    let svc = layer.layer(failing(|| io::Error::other("boom").into()));
    assert_eq!(svc.oneshot(()).await.unwrap(), "fallback for: boom");
}

#[tokio::test]
async fn by_type_anywhere_in_the_source_chain() {
    let layer = FallbackLayer::builder()
        .on_error_type::<Elapsed>()
        .build_fn(|failed: Failed<String>| {
            assert!(failed.is::<Elapsed>());
            Ok("stale but served".to_string())
        })
        .unwrap();

    let top = layer.layer(failing(|| Box::new(Elapsed::new())));
    assert_eq!(top.oneshot(()).await.unwrap(), "stale but served");

    let nested = layer.layer(failing(|| Box::new(Wrapped(Box::new(Elapsed::new())))));
    assert_eq!(nested.oneshot(()).await.unwrap(), "stale but served");

    // Anything else passes through untouched.
    let other = layer.layer(failing(|| {
        io::Error::new(io::ErrorKind::ConnectionReset, "reset").into()
    }));
    let err = other.oneshot(()).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionReset
    );
}

#[tokio::test]
async fn by_predicate_and_type_together() {
    let layer = FallbackLayer::builder()
        .on_error_type::<Elapsed>()
        .on_error(|e| {
            e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::ConnectionRefused)
        })
        .build_fn(|_| Ok("fallback".to_string()))
        .unwrap();
    let refused = layer.layer(failing(|| {
        io::Error::from(io::ErrorKind::ConnectionRefused).into()
    }));
    assert_eq!(refused.oneshot(()).await.unwrap(), "fallback");
    let elapsed = layer.layer(failing(|| Box::new(Elapsed::new())));
    assert_eq!(elapsed.oneshot(()).await.unwrap(), "fallback");
    let reset = layer.layer(failing(|| {
        io::Error::from(io::ErrorKind::ConnectionReset).into()
    }));
    assert!(reset.oneshot(()).await.is_err());
}

#[tokio::test]
async fn ignore_errors_lets_every_error_through() {
    let layer = FallbackLayer::builder()
        .ignore_errors()
        .build_fn(|_| Ok("never".to_string()))
        .unwrap();
    let svc = layer.layer(failing(|| Box::new(Elapsed::new())));
    assert!(svc.oneshot(()).await.unwrap_err().is::<Elapsed>());
}

#[tokio::test]
async fn successes_pass_through() {
    let layer = FallbackLayer::builder()
        .build_fn(|_| Ok("never".to_string()))
        .unwrap();
    let svc = layer.layer(service_fn(|()| async {
        Ok::<_, io::Error>("primary".to_string())
    }));
    assert_eq!(svc.oneshot(()).await.unwrap(), "primary");
}

#[tokio::test]
async fn on_any_error_restores_the_default() {
    for builder in [
        FallbackLayer::builder().ignore_errors().on_any_error(),
        FallbackLayer::builder()
            .on_error_type::<Elapsed>()
            .on_any_error(),
    ] {
        let layer = builder.build_fn(describe).unwrap();
        let svc = layer.layer(failing(|| io::Error::other("boom").into()));
        assert_eq!(svc.oneshot(()).await.unwrap(), "fallback for: boom");
    }
}
