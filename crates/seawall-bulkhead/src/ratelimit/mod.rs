//! A rate limiter: GCRA in one atomic, `Clone` and shared, with bursts, bounded waiting and a keyed
//! variant.
//!
//! [`RateLimitLayer`] lets through `permits` calls per `period`, spaced evenly, with up to `burst`
//! at once after an idle spell. It implements the generic cell rate algorithm: the state is one
//! `AtomicU64` (the theoretical arrival time of the next call), updated with one compare-and-swap
//! per call; no refill task, and no lock or allocation on the admitted path while no dropped
//! waiter's permit is set aside (below).
//!
//! A call that finds no permit is rejected with [`Limited`] (which carries how long until a permit
//! is free, for a `Retry-After` header), or, with `max_wait`, reserves the next permit due within
//! that time and waits for it inside its response future; each waiter has a permit of its own, in
//! arrival order. A waiter holds an unpolled clone of the inner service, polled ready only once
//! its permit is due (or, after it missed one, about as long before the next as getting ready
//! took), so while it sleeps it holds nothing of the services below. A dropped waiter
//! (a timeout above the limiter, a client gone) gives its permit back: the next call that would
//! otherwise wait longer takes it, and may then go before waiters that came earlier. Until that
//! permit is taken or can no longer run within the bound, calls take a lock to look at it. With
//! [`backpressure`](RateLimitConfigBuilder::backpressure) `poll_ready` waits for the next permit
//! instead, as tower's `RateLimit` does.
//!
//! Unlike tower's `RateLimit` (a fixed window that resets each period, so up to twice the rate can
//! pass around a window edge, and not `Clone`, so a service cloned per request needs a `Buffer` to
//! share one budget), every service a layer makes and every clone draws from one budget, and its bound holds over every window, aligned or not:
//! the burst plus one permit per interval `T = period / permits`, so at most `burst + ⌊w / T⌋`
//! permits in a window of length `w`. Within any span shorter than one period that is
//! `burst + permits − 1` at most: up to `2 × permits − 1` with the default burst (equal to
//! `permits`) after a quiet spell, and exactly the rate, `permits`, with
//! [`burst(1)`](RateLimitConfigBuilder::burst). A call starts by the end of its permit's span,
//! or within 10 ms of its permit's time if that is later (a busy runtime wakes waiters late), so the calls themselves keep to
//! `burst + ⌊(w + 10 ms) / T⌋`: for a quota a server enforces to the letter over a sliding
//! `period`, leave it that much headroom and no burst (`rate(permits, period + 10 ms)` with
//! `burst(1)`; with the default burst, `rate(10, 1010 ms)` lets 19 calls through in the first
//! second).
//!
//! [`KeyedRateLimitLayer`] keeps one budget per key computed from the request (a tenant, a user),
//! in a bounded table that evicts idle keys.
//!
//! [`RateLimitLayer::handle`] reads the budget without taking from it: the permits free at once
//! and how long until the next ([`KeyedRateLimitLayer::handle`] does the same for one key).
//!
//! # Defaults
//!
//! | option | default | note |
//! |---|---|---|
//! | `rate(permits, period)` | required | one permit every `period / permits` |
//! | `burst` | `permits` | calls that may go at once after an idle spell |
//! | `max_wait` | zero | reject at once |
//! | `backpressure` | `false` | reject from the response future instead of waiting in `poll_ready` |
//! | `name` | `"ratelimit"` | label for logs and metrics |
//! | `max_keys` | 10 000 | keyed limiter only |
//! | `on_event` | none | listeners for [`RateLimitEvent`]s: rejected and waiting calls |
//!
//! # Example
//!
//! ```
//! # async fn demo() -> Result<(), seawall::BoxError> {
//! use seawall::bulkhead::ratelimit::{Limited, RateLimitLayer};
//! use std::time::Duration;
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! let limit = RateLimitLayer::builder()
//!     .rate(2, Duration::from_secs(1))
//!     .build()?;
//! let svc = limit.layer(service_fn(|n: u32| async move { Ok::<_, seawall::BoxError>(n) }));
//!
//! assert_eq!(svc.clone().oneshot(1).await?, 1);
//! assert_eq!(svc.clone().oneshot(2).await?, 2);
//! let err = svc.clone().oneshot(3).await.unwrap_err();
//! let limited = seawall::core::error::find::<Limited>(&*err).unwrap();
//! assert_eq!(limited.retry_after(), Duration::from_millis(500));
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(demo()).unwrap();
//! ```

mod config;
mod error;
mod event;
mod future;
mod gcra;
mod keyed;
mod layer;
mod service;

pub use config::{RateLimitConfigBuilder, DEFAULT_MAX_KEYS};
pub use error::Limited;
pub use event::RateLimitEvent;
pub use future::ResponseFuture;
pub use keyed::{KeyedRateLimit, KeyedRateLimitHandle, KeyedRateLimitLayer};
pub use layer::{RateLimitHandle, RateLimitLayer};
pub use service::RateLimit;

#[cfg(loom)]
pub use gcra::{Gcra, Grant};
