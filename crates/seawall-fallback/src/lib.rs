//! A fallback layer for tower: answer from a closure or a service when a call fails.
//!
//! [`FallbackLayer`] watches each call's result. When it matches — an error the layer is told to
//! handle, or a response its classifier calls a failure — the call is answered by the fallback
//! instead: a synchronous closure ([`build_fn`](FallbackBuilder::build_fn)) or a service
//! ([`build_service`](FallbackBuilder::build_service), for a fallback that itself does I/O, like
//! reading a cache or calling a secondary region). The fallback receives what failed, a
//! [`Failed`]: the error, or the failed response; and, when the layer is built with
//! [`with_request`](FallbackBuilder::with_request), a context taken from the call's request: the
//! key to read the cache by, or a copy of the request for the secondary region, where requests are
//! cheap to copy (see [The request's context](#the-requests-context)).
//!
//! What matches:
//!
//! * errors: every error by default; or only those of given types anywhere in the source chain
//!   ([`on_error_type`](FallbackBuilder::on_error_type)), e.g. `timeout::Elapsed`,
//!   `breaker::Open`, `bulkhead::Full`; or those a predicate picks
//!   ([`on_error`](FallbackBuilder::on_error)); or none ([`ignore_errors`](FallbackBuilder::ignore_errors));
//! * responses: none by default; with [`on_response`](FallbackBuilder::on_response), every
//!   response a [`Classify`](seawall_core::Classify) classifier calls a failure (an HTTP 503, a gRPC
//!   UNAVAILABLE).
//!
//! Anything else passes through untouched. If the fallback fails too, the call fails with
//! [`FallbackFailed`], which carries both failures: [`FallbackFailed::original`] is the original
//! error and [`FallbackFailed::fallback_error`] the fallback's. The original is in the source
//! chain, where [`find`](seawall_core::error::find) finds it by type; `source()` is the original
//! itself, or a [`SentEarlier`](seawall_core::error::SentEarlier) around it when the original
//! error proves the call was never sent and the fallback's does not (the fallback may have sent
//! the request), so that the call is not taken for one never sent. That `SentEarlier`'s
//! `get_ref()` is the shared `Arc` of the original, so reach the original with `find` or
//! `original()`, not by downcasting `source()`. A [`build_fn`](FallbackBuilder::build_fn)
//! closure is taken as one that sends nothing: its failure (a cache miss) leaves a call never
//! sent never sent, unless its error is a `SentEarlier` (or has one in its chain). A closure that
//! sends the request belongs in [`build_service`](FallbackBuilder::build_service).
//!
//! A readiness error of the inner service that the layer handles is kept: every later call is
//! answered from the fallback, and the failed service is dropped (see [`Fallback`]). The service
//! that keeps it reports it with [`FallbackEvent::InnerFailed`] and a `tracing` event, at `warn`
//! at most once a minute per layer (the first time a service of the layer keeps such an error,
//! then the first time a minute or more after the last warning) and at `debug` otherwise. A
//! service cloned per call (`client.clone().oneshot(req)`) keeps the error, and reports it, on
//! each call.
//!
//! # Where it goes
//!
//! Outermost: above the total timeout, retry, breaker and bulkhead, so it sees every way a call
//! can fail, and above any balancer. Never on each endpoint below a balancer: the balancer takes
//! an endpoint's readiness error as one the endpoint may recover from and counts it against the
//! endpoint, while a fallback there turns it into a successful answer, so outlier detection never
//! ejects an endpoint that cannot even connect and latency-aware picking favours its quick answers
//! (see [`Fallback`]).
//!
//! # Defaults
//!
//! | option | default |
//! |---|---|
//! | errors handled | all |
//! | responses handled | none |
//! | `name` | `"fallback"` |
//! | context from the request | none ([`with_request`](FallbackBuilder::with_request)) |
//!
//! # Example
//!
//! ```
//! use seawall::{fallback::FallbackLayer, timeout::Elapsed, ServiceBuilderExt};
//! use seawall::core::classify::HttpClassifier;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let upstream = service_fn(|_: http::Request<()>| async {
//!     Ok::<_, seawall::BoxError>(http::Response::builder().status(503).body("busy").unwrap())
//! });
//! // Timeouts and 5xx/429 responses are answered from a cache.
//! let fallback = FallbackLayer::builder()
//!     .name("users-cache")
//!     .on_error_type::<Elapsed>()
//!     .on_response(HttpClassifier::new())
//!     .build_fn(|_failed| Ok(http::Response::new("cached")))?;
//! let client = ServiceBuilder::new()
//!     .with_fallback(fallback)
//!     .with_timeout(Duration::from_secs(1))
//!     .service(upstream);
//!
//! let res = client.oneshot(http::Request::new(())).await?;
//! assert_eq!(*res.body(), "cached");
//! # Ok(())
//! # }
//! ```
//!
//! # The request's context
//!
//! A fallback that answers per request needs something from the request, which the inner service
//! consumed. [`with_request`](FallbackBuilder::with_request) takes it in `call`, with a closure
//! `Fn(&Req) -> Ctx` run once per call (for every call: whether it will fail is not known yet, so
//! it should be cheap, like cloning the `Uri`). On a failure the fallback receives it with what
//! failed: [`build_fn`](FallbackBuilder::build_fn) then takes `Fn(Failed<Res>, Ctx)`, and
//! [`build_service`](FallbackBuilder::build_service) a service of [`FailedCall<Res, Ctx>`]
//! requests (`failed` and `context`). Calls answered from the fallback after a readiness error take
//! the context from their own requests too. Without `with_request` nothing is captured, and the
//! layer costs nothing more.
//!
//! Sending the request again, to a secondary region, takes a copy of it on every call. That suits
//! a stack on messages, whose requests are `Clone` (a gRPC stack above the generated client, on
//! `WithDeadline<HelloRequest>`: `|req: &WithDeadline<HelloRequest>| req.get_ref().clone()`), or
//! on bodies that clone cheaply (`http::Request<Full<Bytes>>`, whose body is a shared buffer).
//! A streaming body (hyper's `Incoming`, a tonic body, a streaming reqwest body) cannot be copied
//! from `&Req`: over those the context carries the method, URI and headers, enough for a cache key
//! or to send a bodiless request again.
//!
//! A cache keyed by the request's URI, answering each request that times out with its own entry:
//!
//! ```
//! use http::{Request, Response, Uri};
//! use seawall::{fallback::{Failed, FallbackLayer}, timeout::Elapsed, BoxError, ServiceBuilderExt};
//! use std::{collections::HashMap, time::Duration};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! let upstream = service_fn(|_: Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, BoxError>(Response::new("fresh".to_string()))
//! });
//! let cache = HashMap::from([("/users/7", "cached user 7"), ("/users/8", "cached user 8")]);
//! let fallback = FallbackLayer::builder()
//!     .name("users-cache")
//!     .on_error_type::<Elapsed>()
//!     .with_request(|req: &Request<()>| req.uri().clone())
//!     .build_fn(move |_failed: Failed<Response<String>>, uri: Uri| {
//!         let body = cache.get(uri.path()).ok_or("cache miss")?;
//!         Ok(Response::new(body.to_string()))
//!     })?;
//! let client = ServiceBuilder::new()
//!     .with_fallback(fallback)
//!     .with_timeout(Duration::from_secs(1))
//!     .service(upstream);
//!
//! for id in [7, 8] {
//!     let req = Request::get(format!("/users/{id}")).body(())?;
//!     let res = client.clone().oneshot(req).await?;
//!     assert_eq!(*res.body(), format!("cached user {id}"));
//! }
//! # Ok(())
//! # }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod context;
mod error;
mod future;
mod handler;
mod layer;
mod service;

pub use config::FallbackBuilder;
pub use context::{Captured, NoContext, WithRequest};
pub use error::{FailedResponse, FallbackFailed};
pub use future::ResponseFuture;
pub use handler::{
    ContextHandler, Failed, FailedCall, FallbackCall, FallbackHandler, FromFn, FromService,
};
pub use layer::FallbackLayer;
pub use service::Fallback;

/// What a fallback policy reports to its [listeners](FallbackBuilder::on_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FallbackEvent {
    /// A failed call was handed to the fallback.
    Used {
        /// Whether the call failed with an error (`true`) or a failed response (`false`).
        error: bool,
    },
    /// The fallback failed too.
    Failed,
    /// The inner service failed to get ready with an error the layer handles and was dropped:
    /// this service, and the clones made of it from now on, answer every call from the fallback
    /// (see [`Fallback`]). Reported once per service, when `poll_ready` keeps the error: a service
    /// cloned per call, each clone failing to get ready, reports on each call.
    InnerFailed,
}
