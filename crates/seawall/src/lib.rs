//! Client-side resilience and load balancing for [`tower`].
//!
//! seawall wraps an outbound client (a hyper or reqwest HTTP client, a tonic channel, any
//! `tower::Service`) in layers that keep a service healthy when what it calls is not: timeouts,
//! fallbacks, circuit breakers, bulkheads and rate limits, budgeted retries and hedging, and
//! client-side load balancing. Each concern is its own crate, re-exported here behind a cargo
//! feature of the same name (`timeout` and `fallback` are on by default; `full` turns on all of
//! them but `grpc`):
//!
//! | feature | module | what it gives |
//! |---|---|---|
//! | always | [`core`] | errors, outcome classification, deadlines, config errors, names, events, metric names |
//! | `timeout` | `timeout` | per-call timeout, per-request override, deadline propagation |
//! | `fallback` | `fallback` | answer from a closure or a service when a call fails |
//! | `breaker` | `breaker` | circuit breaker |
//! | `bulkhead` | `bulkhead` | concurrency bulkhead, adaptive limits, rate limiter |
//! | `retry` | `retry` | budgeted retries with backoff, hedging |
//! | `balance` | `balance` | client-side load balancing, outlier ejection |
//! | `discover` | `discover` | endpoint discovery: static, watch channel, DNS |
//! | `stack` | `stack` | the canonical client stack in one builder (`ClientStack`) |
//! | `grpc` | `grpc` | gRPC status codes for seawall's rejections, below tonic's generated clients; gRPC deadlines (`grpc-timeout`) read from callers and sent to servers |
//! | `http` | `http` | HTTP status codes and `Retry-After` for seawall's rejections, for a server answering its own callers |
//!
//! Every layer is an ordinary [`tower::Layer`], so it works inside [`tower::ServiceBuilder`] and
//! behind `BoxCloneService`; [`ServiceBuilderExt`] adds methods that read naturally:
//!
//! ```
//! # #[cfg(all(feature = "timeout", feature = "fallback"))]
//! # async fn demo() -> Result<(), seawall::BoxError> {
//! use seawall::{fallback::FallbackLayer, timeout::Elapsed, ServiceBuilderExt};
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let slow = service_fn(|_req: http::Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, seawall::BoxError>("fresh")
//! });
//!
//! let client = ServiceBuilder::new()
//!     .with_fallback(
//!         FallbackLayer::builder()
//!             .on_error_type::<Elapsed>()
//!             .build_fn(|_failed| Ok("cached"))?,
//!     )
//!     .with_timeout(Duration::from_millis(100))
//!     .service(slow);
//!
//! assert_eq!(client.oneshot(http::Request::new(())).await?, "cached");
//! # Ok(())
//! # }
//! # #[cfg(all(feature = "timeout", feature = "fallback"))]
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! See the [user guide](https://github.com/seawall-rs/seawall/tree/main/docs) for each policy, the
//! order to stack them in and why.
//!
//! [`tower`]: https://docs.rs/tower
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod builder;

pub use builder::ServiceBuilderExt;
pub use seawall_core as core;
pub use seawall_core::{BoxError, ConfigError, Name, Outcome};

#[cfg(feature = "timeout")]
#[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
pub use seawall_timeout as timeout;

#[cfg(feature = "fallback")]
#[cfg_attr(docsrs, doc(cfg(feature = "fallback")))]
pub use seawall_fallback as fallback;

#[cfg(feature = "breaker")]
#[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
pub use seawall_breaker as breaker;

#[cfg(feature = "bulkhead")]
#[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
pub use seawall_bulkhead as bulkhead;

#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub use seawall_retry as retry;

#[cfg(feature = "balance")]
#[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
pub use seawall_balance as balance;

#[cfg(feature = "discover")]
#[cfg_attr(docsrs, doc(cfg(feature = "discover")))]
pub use seawall_discover as discover;

#[cfg(feature = "stack")]
#[cfg_attr(docsrs, doc(cfg(feature = "stack")))]
pub mod stack;
#[cfg(feature = "stack")]
#[cfg_attr(docsrs, doc(cfg(feature = "stack")))]
pub use stack::{ClientStack, ClientStackBuilder};

#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;

#[cfg(feature = "http")]
#[cfg_attr(docsrs, doc(cfg(feature = "http")))]
pub mod http;

#[cfg(doctest)]
mod doc_pages;
