//! HTTP status codes for seawall's rejections, for a server that answers its own callers when a
//! call it made through seawall fails (axum's `HandleErrorLayer`, a hyper service).
//!
//! A seawall layer rejects a call with its own error type (`breaker::Open`, `bulkhead::Full`, …),
//! boxed, maybe wrapped by the layers above it. [`status`] walks the error's source chain and gives
//! the status that rejection stands for, [`retry_after`] the wait a rate limit asked for, and
//! [`to_response`] a response with both (a `Retry-After` header, in whole seconds rounded up, at
//! least 1):
//!
//! | seawall error (anywhere in the error's source chain) | status | `Retry-After` |
//! |---|---|---|
//! | `breaker::Open` | `503 Service Unavailable` | no |
//! | `stack::EndpointOpen` (a `ClientStack`'s per-endpoint breaker, feature `stack`) | `503 Service Unavailable` | no |
//! | `balance::NoEndpoints` | `503 Service Unavailable` | no |
//! | `bulkhead::Full` | `503 Service Unavailable` | no |
//! | `bulkhead::ratelimit::Limited` | `429 Too Many Requests` | its [`retry_after`](seawall_bulkhead::ratelimit::Limited::retry_after) |
//! | `core::deadline::Elapsed` (a timeout, total or per attempt) | `504 Gateway Timeout` | no |
//! | `tonic::TimeoutExpired` (a tonic `Channel`'s own timeout, feature `grpc`) | `504 Gateway Timeout` | no |
//! | anything else | `None`: not a seawall rejection, the caller picks (`502 Bad Gateway`, as a rule) | no |
//!
//! The table holds whichever seawall features are enabled: a rejection from `seawall-breaker`
//! used directly, without the facade's `breaker` feature, maps the same way.
//!
//! The first of these found walking the chain from the outermost error decides, as for
//! `seawall::grpc::code` (feature `grpc`): a retry that gave up on an exhausted
//! budget (`retry::BudgetExhausted`) reports the status of its last attempt's error, a fallback
//! that failed that of the call's original error, a total timeout `504` whatever the attempt was
//! doing. Like [`chain`](seawall_core::error::chain), the walk looks at no more than
//! [`MAX_CHAIN_LEN`](seawall_core::error::MAX_CHAIN_LEN) errors.
//!
//! gRPC reports a full bulkhead and a rate limit alike, as `RESOURCE_EXHAUSTED`. HTTP tells them
//! apart: a rate limit is the quota on the calls made, with a wait after which a call is let
//! through, which is what `429` and `Retry-After` say; a full bulkhead is the server being busy,
//! with no wait to give, which is `503` (as Envoy answers when a circuit's limits overflow).
//!
//! A server of one's own that fails for its own reasons is not a rejection: its error maps to
//! `None`. So does tower's own `timeout::error::Elapsed`; seawall's `TimeoutLayer` in its place
//! maps to `504`.
//!
//! ```
//! # #[cfg(feature = "breaker")]
//! # async fn demo() {
//! use seawall::{breaker::BreakerLayer, BoxError};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! // What an axum `HandleErrorLayer` is given, in a real server
//! // `.layer(HandleErrorLayer::new(handle))`, `axum::body::Body` in place of `String`.
//! async fn handle(error: BoxError) -> http::Response<String> {
//!     seawall::http::to_response(&*error).unwrap_or_else(|| {
//!         let mut response = http::Response::new(error.to_string());
//!         *response.status_mut() = http::StatusCode::BAD_GATEWAY;
//!         response
//!     })
//! }
//!
//! let breaker = BreakerLayer::new();
//! breaker.handle().force_open();
//! let client = breaker.layer(service_fn(|_: ()| async { Ok::<_, BoxError>("answer") }));
//!
//! let error = client.oneshot(()).await.unwrap_err();
//! assert_eq!(handle(error).await.status(), http::StatusCode::SERVICE_UNAVAILABLE);
//! # }
//! # #[cfg(feature = "breaker")]
//! # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(demo());
//! ```

use ::http::{header::RETRY_AFTER, HeaderValue, Response, StatusCode};
use seawall_core::deadline::Elapsed;
use seawall_core::error::downcast_ref;
use std::{error::Error, time::Duration};

/// The status of the seawall rejection in `error`'s source chain; `None` when none is there. See
/// the [module docs](self) for the table.
///
/// ```
/// use seawall::core::deadline::Elapsed;
/// use http::StatusCode;
///
/// assert_eq!(seawall::http::status(&Elapsed::new()), Some(StatusCode::GATEWAY_TIMEOUT));
/// assert_eq!(seawall::http::status(&std::io::Error::other("reset")), None);
/// ```
pub fn status(error: &(dyn Error + 'static)) -> Option<StatusCode> {
    rejection(error).map(|(status, _)| status)
}

/// How long the rejection that decides [`status`] asked the caller to wait: a rate limit's
/// [`retry_after`](seawall_bulkhead::ratelimit::Limited::retry_after); `None` for every other
/// rejection, and when `error` is not one.
pub fn retry_after(error: &(dyn Error + 'static)) -> Option<Duration> {
    rejection(error).and_then(|(_, wait)| wait)
}

/// The response to answer a caller with when a call failed with `error`: its [`status`], a
/// `Retry-After` header for its [`retry_after`] (in whole seconds, rounded up, at least 1), and
/// an empty body (`B::default()`); `None` when `error` is no seawall rejection.
///
/// ```
/// # #[cfg(feature = "bulkhead")]
/// # async fn demo() {
/// use http::{header::RETRY_AFTER, StatusCode};
/// use seawall::bulkhead::ratelimit::RateLimitLayer;
/// use std::time::Duration;
/// use tower::{service_fn, Layer, ServiceExt};
///
/// let quota = RateLimitLayer::builder().rate(1, Duration::from_secs(10)).build().unwrap();
/// let client = quota.layer(service_fn(|_: ()| async { Ok::<_, seawall::BoxError>(()) }));
/// client.clone().oneshot(()).await.unwrap();
///
/// let error = client.oneshot(()).await.unwrap_err();
/// let response = seawall::http::to_response::<()>(&*error).unwrap();
/// assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
/// assert_eq!(response.headers()[RETRY_AFTER], "10");
/// # }
/// # #[cfg(feature = "bulkhead")]
/// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(demo());
/// ```
pub fn to_response<B: Default>(error: &(dyn Error + 'static)) -> Option<Response<B>> {
    let (status, wait) = rejection(error)?;
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    if let Some(wait) = wait {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(wait)));
    }
    Some(response)
}

/// The status and the wait of the first seawall rejection in `error`'s chain.
fn rejection(error: &(dyn Error + 'static)) -> Option<(StatusCode, Option<Duration>)> {
    seawall_core::error::chain(error).find_map(rejection_of_one)
}

/// What one error of a chain says, ignoring its sources. An `Arc` or a `Box` of one of these
/// types counts as that type, as for [`find`](seawall_core::error::find).
fn rejection_of_one(error: &(dyn Error + 'static)) -> Option<(StatusCode, Option<Duration>)> {
    fn is<T: Error + 'static>(error: &(dyn Error + 'static)) -> bool {
        downcast_ref::<T>(error).is_some()
    }
    if is::<Elapsed>(error) {
        return Some((StatusCode::GATEWAY_TIMEOUT, None));
    }
    #[cfg(feature = "grpc")]
    if is::<tonic::TimeoutExpired>(error) {
        return Some((StatusCode::GATEWAY_TIMEOUT, None));
    }
    if is::<seawall_breaker::Open>(error) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, None));
    }
    #[cfg(feature = "stack")]
    if is::<crate::stack::EndpointOpen>(error) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, None));
    }
    if is::<seawall_balance::NoEndpoints>(error) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, None));
    }
    if is::<seawall_bulkhead::Full>(error) {
        return Some((StatusCode::SERVICE_UNAVAILABLE, None));
    }
    if let Some(limited) = downcast_ref::<seawall_bulkhead::ratelimit::Limited>(error) {
        return Some((StatusCode::TOO_MANY_REQUESTS, Some(limited.retry_after())));
    }
    None
}

/// `wait` in whole seconds, rounded up, at least 1: a `Retry-After` of 0 would invite the caller
/// back at once, before the wait is over.
fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait
        .as_secs()
        .saturating_add(u64::from(wait.subsec_nanos() > 0));
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(999)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }
}
