//! A failure that proves its request was never sent (a [`NotSent`] in its chain, as every seawall
//! rejection raised below carries, or a refused connection) teaches an adaptive limit nothing: it
//! is no sample, whatever the classifier says. A failure that may have been sent is a drop.

use seawall_bulkhead::{limit::Aimd, BulkheadLayer};
use seawall_core::error::{BoxError, NotSent, SentEarlier};
use std::{error::Error, fmt, io};
use tower::{service_fn, Layer, ServiceExt};

const INITIAL: usize = 20;
const CALLS: usize = 20;

/// A rejection raised below the bulkhead before the request was handed on, as the balancer's
/// `NoEndpoints` or an inner bulkhead's `Full` is: it carries the marker as its `source()`.
#[derive(Debug)]
struct Rejected;

static NOT_SENT: NotSent = NotSent::new();

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rejected below")
    }
}

impl Error for Rejected {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&NOT_SENT)
    }
}

/// The limit of an AIMD bulkhead (starting at `INITIAL`) after `CALLS` calls that each fail with
/// `error()`.
async fn limit_after_failures(error: fn() -> BoxError) -> usize {
    let layer = BulkheadLayer::builder()
        .adaptive(Aimd::builder().initial_limit(INITIAL).build().unwrap())
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(move |()| async move { Err::<(), _>(error()) }));
    for _ in 0..CALLS {
        service.clone().oneshot(()).await.unwrap_err();
    }
    handle.limit()
}

#[tokio::test(start_paused = true)]
async fn a_rejection_from_below_leaves_the_limit_alone() {
    assert_eq!(limit_after_failures(|| Box::new(Rejected)).await, INITIAL);
    assert_eq!(
        limit_after_failures(|| Box::new(NotSent::with_retry_after(
            std::time::Duration::from_secs(1)
        )))
        .await,
        INITIAL
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_connection_leaves_the_limit_alone() {
    let refused = || -> BoxError { Box::new(io::Error::from(io::ErrorKind::ConnectionRefused)) };
    assert_eq!(limit_after_failures(refused).await, INITIAL);
}

#[tokio::test(start_paused = true)]
async fn a_failure_that_may_have_been_sent_shrinks_the_limit() {
    assert!(limit_after_failures(|| Box::new(io::Error::other("reset"))).await < INITIAL);
    // The last attempt was never sent, but an earlier one was.
    assert!(
        limit_after_failures(|| Box::new(SentEarlier::new(Box::new(Rejected)))).await < INITIAL
    );
}
