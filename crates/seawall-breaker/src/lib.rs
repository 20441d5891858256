//! A lock-free circuit breaker for [`tower`] services.
//!
//! A circuit breaker stops calling a dependency that is failing, so that callers fail fast instead
//! of piling up on timeouts, and the dependency gets room to recover. It watches the outcomes of
//! calls in a sliding window; when too many fail (or are too slow) it *opens* and rejects calls
//! with [`Open`] without touching the inner service; after a wait it lets a few trial calls
//! through (*half-open*) and closes again if they succeed.
//!
//! ```text
//!                 failure rate ≥ threshold, or slow-call rate ≥ threshold
//!                 (once minimum_calls are in the window), or K failures in a row
//!      ┌────────┐ ─────────────────────────────────────────────────────────────▶ ┌──────┐
//!      │ Closed │                                                                │ Open │
//!      └────────┘ ◀──────┐                                        ┌────────────▶ └──────┘
//!                        │ permitted_probes results in,           │ probes' rate ≥ threshold,   │
//!                        │ rates below the thresholds             │ or max_wait_in_half_open    │ wait over
//!                        │ (fresh window, wait back to first)     │ passed (next wait grows)    │ (lazily, or
//!                        │                              ┌──────────┐                          │ on a timer)
//!                        └───────────────────────────── │ HalfOpen │ ◀────────────────────────┘
//!                                                       └──────────┘
//!   manual, from any state: ForcedOpen (reject all) · Disabled (pass all, record nothing)
//!                           MetricsOnly (pass all, record, report what it would do) · reset → Closed
//! ```
//!
//! # What sets it apart
//!
//! - **Several probes, judged by rate.** HalfOpen has `permitted_probes` probe slots (a probe
//!   that answers keeps its slot; an ignored or cancelled one hands it back) and decides once
//!   that many results are in, by the same thresholds as Closed.
//! - **Hung probes are bounded.** A HalfOpen whose probes in flight have not answered within
//!   `max_wait_in_half_open` opens again instead of waiting forever; while no probe is in
//!   flight nothing is bounded, and the results already in are kept for the next probes.
//! - **Neither success nor failure.** The classifier may answer [`Outcome::Ignored`]; an ignored
//!   or cancelled probe hands its slot back.
//! - **Says why it opened.** A [`Transition`] to Open or ForcedOpen carries its [`OpenReason`]
//!   (the failure or slow-call rate against its threshold, a run of failures, failed, slow or hung
//!   probes, a forced open), and so does the log line.
//! - **No stale results.** Every state change starts a new generation; the result of a call
//!   admitted in an earlier generation is dropped, so a late answer cannot flip the new state.
//! - **Fast.** The Closed path takes no lock it waits on (a time window only tries the sequence
//!   lock of its cached sum; a keyed layer's lookup of the call's key is the exception, taking the
//!   set's lock for reading, see [`BreakerSet`]) and allocates nothing: one atomic load to admit; one
//!   `fetch_add` to record in a count window (two more when the outcome differs from the one it
//!   pushes out of the window), or in a time window a compare-and-swap on the call's bucket and a
//!   read of the other buckets' sum, taken once per bucket, whatever the number of buckets; no
//!   clock read unless a time window (once, at completion, for the call's bucket), a slow-call
//!   rule or a classifier that looks at durations (twice: at the start and at completion, for the
//!   call's duration) needs one; with both, three. The state machine lives in [`state`] and
//!   [`window`], free of tower types, and is checked against a reference model with proptest and
//!   for concurrency with loom.
//!
//! # Defaults
//!
//! | option | default | Resilience4j | Polly v8 | why seawall differs |
//! |---|---|---|---|---|
//! | [`sliding_window`](BreakerConfigBuilder::sliding_window) | last 100 calls | last 100 calls | 30 s sampling | |
//! | [`minimum_calls`](BreakerConfigBuilder::minimum_calls) | 20 | 100 | 100 | 100 calls at low traffic means minutes of failures before tripping |
//! | [`failure_rate_threshold`](BreakerConfigBuilder::failure_rate_threshold) | 0.5 | 50 % | 0.1 | Polly's 10 % trips on ordinary noise of a busy dependency |
//! | [`slow_call_rate_threshold`](BreakerConfigBuilder::slow_call_rate_threshold) | off | 100 % | — | what is slow depends on the dependency: opt in |
//! | [`slow_call_duration`](BreakerConfigBuilder::slow_call_duration) | 5 s | 60 s | — | 60 s is longer than most callers wait |
//! | [`consecutive_failures`](BreakerConfigBuilder::consecutive_failures) | off | — | — (v7's basic breaker) | |
//! | [`wait_duration`](BreakerConfigBuilder::wait_duration) | 5 s | 60 s | 5 s | a minute of rejections after one blip is costly; growth covers long outages |
//! | [`backoff`](BreakerConfigBuilder::backoff) | ×2, up to 60 s (or `wait_duration`, if longer) | constant | constant | Finagle-style: repeated trips wait longer, back to `wait_duration` once closed |
//! | [`jitter`](BreakerConfigBuilder::jitter) | 0.2 | none | none | many clients should not probe a recovering dependency in lockstep |
//! | [`permitted_probes`](BreakerConfigBuilder::permitted_probes) | 3 | 10 | 1 | one probe decides on a coin toss; ten is much load on a sick dependency |
//! | [`max_wait_in_half_open`](BreakerConfigBuilder::max_wait_in_half_open) | 30 s | 0 (wait forever) | — | a hung probe must not hold the breaker half-open |
//! | [`eager_half_open`](BreakerConfigBuilder::eager_half_open) | off | off | — | |
//! | [`backpressure`](BreakerConfigBuilder::backpressure) | off | — | — | rejections fail fast by default |
//! | [`name`](BreakerConfigBuilder::name) | `"breaker"` | | | |
//!
//! # Example
//!
//! ```
//! # async fn demo() -> Result<(), seawall::BoxError> {
//! use seawall::{
//!     breaker::{BreakerLayer, Open, SlidingWindow, State},
//!     core::error::is,
//!     ServiceBuilderExt,
//! };
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! let breaker = BreakerLayer::builder()
//!     .name("users-api")
//!     .sliding_window(SlidingWindow::count(20))
//!     .minimum_calls(4)
//!     .failure_rate_threshold(0.5)
//!     .wait_duration(Duration::from_secs(10))
//!     .build()?;
//! let handle = breaker.handle();
//!
//! // A dependency that fails when asked to.
//! let users = service_fn(|fail: bool| async move {
//!     if fail { Err("connection reset") } else { Ok("alice") }
//! });
//! let mut client = ServiceBuilder::new().with_breaker(breaker).service(users);
//!
//! for _ in 0..4 {
//!     let _ = client.ready().await?.call(true).await;
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Open: rejected at once, the dependency is not called.
//! let err = client.ready().await?.call(false).await.unwrap_err();
//! assert!(is::<Open>(&*err));
//!
//! // After the wait, trial calls go through and close the breaker again.
//! tokio::time::sleep(Duration::from_secs(10)).await;
//! for _ in 0..3 {
//!     assert_eq!(client.ready().await?.call(false).await?, "alice");
//! }
//! assert_eq!(handle.state(), State::Closed);
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(demo()).unwrap();
//! ```
//!
//! For one breaker per key (per host, per endpoint), see [`BreakerSet`]; its
//! [`keyed_layer`](BreakerSet::keyed_layer) sends each call through the breaker of the request's
//! key, for a client that calls many hosts through one service.
//!
//! See `docs/circuit-breaker.md` in the repository for the semantics point by point next to
//! Hystrix, Resilience4j and Polly, and the anti-patterns.
//!
//! [`tower`]: https://docs.rs/tower
//! [`Outcome::Ignored`]: seawall_core::Outcome::Ignored
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod error;
mod future;
mod handle;
mod keyed;
mod layer;
mod service;
mod set;
mod shared;
pub mod state;
mod sync;
pub mod window;

pub use config::{
    BreakerConfig, BreakerConfigBuilder, SlidingWindow, DEFAULT_FAILURE_RATE, DEFAULT_JITTER,
    DEFAULT_MAX_WAIT, DEFAULT_MAX_WAIT_IN_HALF_OPEN, DEFAULT_MINIMUM_CALLS, DEFAULT_MULTIPLIER,
    DEFAULT_PERMITTED_PROBES, DEFAULT_SLOW_CALL_DURATION, DEFAULT_WAIT, DEFAULT_WINDOW,
};
pub use error::Open;
pub use future::ResponseFuture;
pub use handle::BreakerHandle;
pub use keyed::{KeyedBreaker, KeyedBreakerLayer};
pub use layer::BreakerLayer;
pub use service::Breaker;
pub use set::BreakerSet;
pub use state::{OpenReason, Snapshot, State, Transition};
