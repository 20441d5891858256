//! Bulkheads for tower: fail-fast concurrency limits, fixed or adaptive, and a shareable rate
//! limiter.
//!
//! A [`BulkheadLayer`] lets at most `limit` calls run at once, like Hystrix's and Resilience4j's
//! semaphore bulkheads: a call beyond the limit waits, in FIFO order, at most `max_wait` for a
//! permit and is then rejected with [`Full`]. With `max_wait` zero (the default) it is rejected at
//! once. The permit lives in the response future and returns when the call finishes or the future
//! is dropped; with [`release_on_body_end`](BulkheadConfigBuilder::release_on_body_end) it lives
//! on in the `http` response body until the body is read or dropped. Every service the layer makes,
//! and every clone, shares one set of permits.
//!
//! The limit can be [adaptive](limit): AIMD, Gradient2 or Vegas, after Netflix's
//! concurrency-limits, move it within bounds from the outcome (by the layer's classifier) and
//! duration of each call. The [`ratelimit`] module holds a GCRA rate limiter, plain and keyed.
//!
//! # Readiness and waiting
//!
//! tower's `ConcurrencyLimit` only queues: its `poll_ready` is `Pending` until a permit frees, so
//! a caller that wants to fail fast adds `LoadShed`, which rejects on *any* `Pending`, including
//! the inner service's own (tower#793). A bulkhead rejects only for lack of a permit, and never
//! from `poll_ready` (an error there is terminal for tower and poisons a `Buffer`):
//!
//! 1. `poll_ready` drives the inner service to readiness, then takes a free permit if there is
//!    one and keeps it for the next `call`. It never waits for a permit and never fails for lack
//!    of one. Without backpressure it first looks for a free permit: if there is none, it is
//!    ready without polling the inner service, and with `max_wait` zero the call is rejected
//!    there and then.
//! 2. `call` with a permit calls the inner service at once; the response future holds the permit.
//!    A call that `poll_ready` rejected fails with [`Full`], even if a permit has freed since: its
//!    inner service was not polled, and holds nothing for the call.
//! 3. `call` without a permit otherwise (it was taken while the inner service got ready) tries
//!    once more; if the bulkhead is still full and `max_wait` is zero, the response future fails
//!    with [`Full`], and the inner service is replaced with a clone of it: its readiness may hold
//!    something for the call (a permit of a limit below, a place in a `Buffer`) that a service
//!    kept uncalled (a `Buffer`'s worker keeps one for good) would hold up others with, such as a
//!    retry below whose call holds this bulkhead's permit, for ever. Otherwise the future waits
//!    for a permit with a clone of the inner service that was not polled (an inner service polled
//!    for the call is replaced with a clone too), so the waiting call holds nothing below: polled
//!    first, it could hold the permit of a limit below that the call holding this bulkhead's
//!    permit needs for its retry, and both would wait until `max_wait`. Once the future has its
//!    permit it polls its service ready (a readiness error ends the call with that error and
//!    returns the permit) and calls it. `max_wait` bounds the wait for the permit only; the wait
//!    for the inner service after it is unbounded, as for a call admitted at once.
//!    The call joins the FIFO queue in `call`, before its future is first polled, so a future
//!    polled later (as behind tower's `Buffer`) keeps its place. The future polls the bulkhead's
//!    semaphore directly (no task spawned) and a `max_wait` timer, and fails with [`Full`] once
//!    `max_wait` has passed without a permit: a permit returned after a queued call's `max_wait`
//!    has passed goes to the next call still within its wait, even if that call's future was
//!    never polled in time or its timer (tokio's timers tick in whole milliseconds) has yet to
//!    fire.
//!
//! With [`backpressure(true)`](BulkheadConfigBuilder::backpressure) the bulkhead behaves like
//! `ConcurrencyLimit` instead: `poll_ready` is `Pending` until a permit is free (FIFO), then
//! polls the inner service; nothing is rejected.
//!
//! A clone never carries the reserved permit of the service it was cloned from. Dropping a
//! response future at any point (waiting, running) releases everything it holds and counts as
//! *ignored* for an adaptive limit.
//!
//! # Defaults
//!
//! | option | default | note |
//! |---|---|---|
//! | `max_concurrent` | 25 | fixed limit, as Resilience4j; conflicts with `adaptive` |
//! | `max_wait` | zero | reject at once when full |
//! | `backpressure` | `false` | reject from the future; `true` waits in `poll_ready` |
//! | `adaptive` | none | [`limit::Aimd`], [`limit::Gradient2`], [`limit::Vegas`] or your [`limit::Limit`] |
//! | `classifier` | [`DefaultClassifier`](seawall_core::classify::DefaultClassifier) | what counts as a dropped call for an adaptive limit; a failure [never sent](seawall_core::error::not_sent) is no sample whatever it says |
//! | release | on response | [`release_on_body_end`](BulkheadConfigBuilder::release_on_body_end) for `http` bodies |
//! | `name` | `"bulkhead"` | label for events and metrics |
//!
//! # Observability
//!
//! Metrics (label `name`): `seawall_bulkhead_in_flight`, `seawall_bulkhead_waiting`,
//! `seawall_bulkhead_limit` (gauges, summed over bulkheads that share a name; a dropped bulkhead
//! takes its part away) and `seawall_bulkhead_rejected_total`. Listeners get each
//! [`BulkheadEvent`]: rejections and limit changes. [`BulkheadLayer::handle`] reads the current
//! limit, free permits, calls in flight and waiting.
//!
//! # Cost
//!
//! The permits are a fair semaphore of seawall's own whose uncontended paths take no lock: an
//! admitted call costs one compare-and-swap to take its permit, one to give it back, and one
//! `Arc` clone; a rejected call (with `max_wait` zero) costs no compare-and-swap: `poll_ready`
//! reads the permit word once, finds no permit free and leaves the inner service alone, and
//! `call` fails at once. Only a call whose permit went between that look and the end of the inner
//! service's readiness reads the word again in `call`, and then clones the inner service to drop
//! its readiness. The bulkhead allocates for neither: [`Full`] is zero-sized. The queue's lock is
//! taken by a call that may wait once the lock-free path finds no permit (it joins the queue, or
//! takes a permit freed in the meantime), by a queued call that leaves (dropped, or its
//! `max_wait` over, even one already handed a permit), and once for each release while a call
//! waits, however many permits it returns (a finished call's permit, or all those a growing limit
//! adds): they pay what an adaptive limit owes, then go straight to the oldest waiters, which are
//! woken once the lock is released. A release that wakes two waiters or more (a limit that grew,
//! or waiters passed over once their `max_wait` had passed) allocates a `Vec` for their wakers. A
//! call that waits in its future allocates twice: its place in the queue (an `Arc` the queue
//! shares) and its waiting state (a `Box` of its timer, request and inner service clone); a call
//! that could wait and found a permit freed between `poll_ready` and `call` allocates the latter
//! alone (with no timer), and one waiting in `poll_ready` with backpressure the former alone. Fixed
//! limits read the clock only for a call that may wait and finds no permit free in `call` (once,
//! for its `max_wait` deadline, even if a permit frees as it joins the queue; a call that finds one
//! free in `call` reads none, and its future sets no timer) and when a returned permit goes to a
//! waiter (once, to pass over waiters whose `max_wait` has passed); adaptive limits read it twice
//! per call (when it starts and when it answers: the classifier and the algorithm get the same
//! duration), once more when a body held with
//! [`release_on_body_end`](BulkheadConfigBuilder::release_on_body_end) ends later, and update
//! the algorithm under a mutex. The accounting is model-checked with loom (`tests/loom.rs`) and
//! property-tested (`tests/permits_conserved.rs`).
//!
//! # Example
//!
//! ```
//! # async fn demo() -> Result<(), seawall::BoxError> {
//! use seawall::bulkhead::{BulkheadLayer, Full};
//! use seawall::ServiceBuilderExt;
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! let bulkhead = BulkheadLayer::builder()
//!     .name("users-api")
//!     .max_concurrent(1)
//!     .max_wait(Duration::from_millis(50))
//!     .build()?;
//! let handle = bulkhead.handle();
//!
//! let client = ServiceBuilder::new()
//!     .with_bulkhead(bulkhead)
//!     .service(service_fn(|_req: ()| async {
//!         tokio::time::sleep(Duration::from_secs(1)).await;
//!         Ok::<_, seawall::BoxError>("done")
//!     }));
//!
//! // One call runs; the next waits 50 ms for a permit, then is rejected.
//! let first = tokio::spawn(client.clone().oneshot(()));
//! tokio::task::yield_now().await;
//! assert_eq!(handle.in_flight(), 1);
//! let err = client.clone().oneshot(()).await.unwrap_err();
//! assert!(seawall::core::error::is::<Full>(&*err));
//! assert_eq!(first.await.unwrap()?, "done");
//! assert_eq!(handle.available(), 1);
//! # Ok(())
//! # }
//! # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(demo()).unwrap();
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
mod error;
mod event;
mod future;
mod layer;
pub mod limit;
mod permits;
pub mod ratelimit;
mod release;
mod service;
mod state;
mod sync;

pub use config::{BulkheadConfigBuilder, DEFAULT_MAX_CONCURRENT};
pub use error::Full;
pub use event::BulkheadEvent;
pub use future::ResponseFuture;
pub use layer::BulkheadLayer;
pub use release::{OnBodyEnd, OnResponse, PermitBody, Release};
pub use service::Bulkhead;
#[doc(hidden)]
pub use state::Timing;
pub use state::{BulkheadHandle, Permit};

/// Internals exposed to the loom model checks (`--cfg loom` only).
#[cfg(loom)]
#[doc(hidden)]
pub mod __loom {
    pub use crate::permits::{Permits, Waiter};
    pub use crate::ratelimit::{Gcra, Grant};
}
