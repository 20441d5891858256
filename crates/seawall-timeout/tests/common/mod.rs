//! Inner services and small helpers the timeout tests share.
#![allow(dead_code, unreachable_pub)]

use seawall_core::BoxError;
use seawall_timeout::{Elapsed, RequestDeadline};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{sleep, Instant};
use tower::{service_fn, Service, ServiceExt};

/// The deadlines an inner service saw on its requests, in order.
pub type Seen = Arc<Mutex<Vec<Option<Instant>>>>;

/// An inner service that records the deadline it sees, then answers `"done"` after `work`.
pub fn recorder(
    seen: Seen,
    work: Duration,
) -> impl Service<
    http::Request<()>,
    Response = &'static str,
    Error = std::io::Error,
    Future = impl Send,
> + Clone {
    service_fn(move |req: http::Request<()>| {
        seen.lock().unwrap().push(req.deadline());
        async move {
            sleep(work).await;
            Ok("done")
        }
    })
}

/// A request carrying `extension` (a `TimeoutOverride` or a `PerTryTimeoutOverride`).
pub fn request_with<T: Clone + Send + Sync + 'static>(extension: T) -> http::Request<()> {
    let mut req = http::Request::new(());
    req.extensions_mut().insert(extension);
    req
}

/// Sends `req` through `svc`, checks that the call fails with `Elapsed`, and returns how long it
/// took.
pub async fn elapsed_after<S, R>(svc: S, req: R) -> Duration
where
    S: Service<R, Error = BoxError>,
{
    let start = Instant::now();
    let Err(err) = svc.oneshot(req).await else {
        panic!("the call answered in time");
    };
    assert!(err.is::<Elapsed>(), "{err}");
    start.elapsed()
}
