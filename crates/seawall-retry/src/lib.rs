//! Budgeted retries with backoff and jitter, and hedged requests, for tower.
//!
//! [`RetryLayer`] sends a failed call again, up to `max_attempts` times in all, waiting a
//! [backoff] between attempts. Every retry is bounded three ways:
//!
//! 1. **by a budget** ([`RetryBudget`]), shared by every service and clone that is given it, so
//!    retries add at most a share of the load (20% by default) however many callers fail at once.
//!    An exhausted budget returns the last real error wrapped in [`BudgetExhausted`];
//! 2. **by the deadline**: the request's deadline (written by a timeout layer above, read through
//!    [`RequestDeadline`] from the request as the call receives it, and given to any copy made
//!    without one or with a later one) is checked before each retry: a retry after a backoff
//!    needs more time left than the backoff and a millisecond (its timer fires on the next whole
//!    millisecond), a retry without backoff only that the deadline has not passed. An optional
//!    per-attempt timeout gives each attempt a deadline of its own, and fails it with
//!    [`Elapsed`]; the call's deadline (or a copy's own, when earlier than the call's) takes its
//!    place when it is earlier or at most a millisecond later (the two would fire a tick apart at
//!    most), so an attempt may run up to a millisecond past its timeout. A request's
//!    [`PerTryTimeoutOverride`] replaces that timeout for each of its attempts (it starts none
//!    where no per-attempt timeout is configured);
//! 3. **by the policy** ([`policy`]): only failures are retried, only requests that may be sent
//!    twice (for HTTP: idempotent methods, and once opted in a request carrying an
//!    `Idempotency-Key` or every request; see [`HttpPolicy`]) and can be copied. A request that
//!    may not be sent twice (a POST) is still sent again when an attempt proves it was never
//!    sent (a seawall rejection below the retry, a refused connection:
//!    [`seawall_core::error::not_sent`]),
//!    unless the policy says no ([`Policy::retries_unsent`]). A `Retry-After` on a 429 or 503,
//!    a wait the policy reads from an error ([`Policy::retry_after_error`]: gRPC's retry
//!    pushback), and a rejection's own wait (a rate limiter's `retry_after`), are honoured up to
//!    a cap.
//!
//! Each attempt goes back through the inner service's readiness, so a balancer underneath picks
//! an endpoint afresh and a limit underneath counts every attempt.
//!
//! [`HedgeLayer`] ([`hedge`]) fights slowness rather than failure: after a delay, fixed or a
//! latency percentile, it sends up to `max_hedges` extra copies and answers with the first
//! acceptable response, cancelling the rest.
//!
//! # Defaults
//!
//! | option | default | note |
//! |---|---|---|
//! | `max_attempts` | 3 | the first attempt included; 1 to 100 |
//! | `backoff` | exponential, full jitter, 50 ms base, ×2, 2 s cap | [`Backoff`] |
//! | `budget` | 20% of requests + 10/s over 10 s, one per layer | [`RetryBudget`]; share one per dependency |
//! | policy | `Err` is a failure; every request retryable | [`RetryConfigBuilder::http`] for 5xx/429, idempotent methods (others only when never sent: [`HttpPolicy::retry_unsent`], on; or carrying an idempotency key: [`HttpPolicy::idempotency_key`]), `Retry-After` |
//! | `retry_after_cap` | 10 s | a longer `Retry-After` (or a policy's longer wait read from an error), or a rejection's longer `retry_after`, is not retried |
//! | `per_attempt_timeout` | none | a request's [`PerTryTimeoutOverride`] replaces it for that request |
//! | request copies | `Clone` | [`RetryConfigBuilder::clone_with`] for a closure |
//! | `seed` | random | fix it in tests |
//! | `name` | `"retry"` | label for events and metrics |
//!
//! # Where it goes
//!
//! Above the circuit breaker and the bulkhead, below the total timeout: `timeout → retry → breaker
//! → bulkhead → balance`. The breaker then sees every attempt (and opens on them), an open breaker
//! fails retries at once without load, and the total timeout bounds the whole sequence. See
//! `docs/retry.md` for what goes wrong in other orders.
//!
//! # Cost
//!
//! A call that succeeds first time copies its request once when it may be sent again (with
//! `max_attempts` above 1): when it is retryable, and also when it is not but the policy's
//! [`retries_unsent`](Policy::retries_unsent) allows it, in case an attempt proves it was never
//! sent. [`HttpPolicy`] allows it unless built with
//! [`retry_unsent(false)`](HttpPolicy::retry_unsent), so under
//! [`http`](RetryConfigBuilder::http) every POST is copied too; turn that off to spare POSTs the
//! copy. The layer allocates nothing itself: the copy costs what the request's `Clone` (or the
//! [`clone_with`](RetryConfigBuilder::clone_with) closure) costs, which for an [`http::Request`]
//! with headers or extensions (a deadline from a timeout above is one) means allocating. Its
//! response future carries the policy by value and the layer's settings by an interned
//! reference; the layer's shared state (budget, seed, listeners) is reference counted into it
//! only when the layer has some. With a budget, the call takes that reference and is
//! counted with one atomic add (under load the budget reads the clock, and takes a short lock,
//! once in 32 calls); with [`RetryBudget::unlimited`] and no listeners it writes to no shared
//! memory at all. The timer is allocated only at the first retry, or at the call with a
//! per-attempt timeout.
//!
//! # Example
//!
//! ```
//! use seawall::{retry::{RetryBudget, RetryLayer}, ServiceBuilderExt};
//! use std::{sync::{atomic::{AtomicU32, Ordering}, Arc}, time::Duration};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! // One budget for everything that calls the users API.
//! let budget = RetryBudget::builder().ratio(0.1).min_per_second(5).build()?;
//! let retry = RetryLayer::builder()
//!     .http()
//!     .max_attempts(3)
//!     .budget(budget.clone())
//!     .name("users-api")
//!     .build()?;
//!
//! // A flaky server: 503 on the first call, then 200.
//! let calls = Arc::new(AtomicU32::new(0));
//! let seen = calls.clone();
//! let flaky = service_fn(move |_req: http::Request<()>| {
//!     let n = seen.fetch_add(1, Ordering::Relaxed);
//!     async move {
//!         let status = if n == 0 { 503 } else { 200 };
//!         Ok::<_, seawall::BoxError>(http::Response::builder().status(status).body(()).unwrap())
//!     }
//! });
//!
//! let client = ServiceBuilder::new()
//!     .with_timeout(Duration::from_secs(2))
//!     .with_retry(retry)
//!     .service(flaky);
//! let response = client.oneshot(http::Request::get("/users/7").body(()).unwrap()).await?;
//! assert_eq!(response.status(), 200);
//! assert_eq!(calls.load(Ordering::Relaxed), 2);
//! # Ok(())
//! # }
//! ```
//!
//! Request types other than [`http::Request`] implement [`RequestDeadline`] (one empty `impl`
//! block if they carry no deadline) to be retried or hedged. Ordinary std request types (`u32`,
//! `String`, `Vec<T>`, …) implement it already and carry no deadline, so a retry or a hedge over
//! them does not see the deadline of a timeout above it; wrap them in a
//! [`WithDeadline`](seawall_core::deadline::WithDeadline) for that.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod budget;
pub mod hedge;
pub mod policy;

mod config;
mod error;
mod future;
mod layer;
mod service;
mod sync;
mod timer;

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;
pub use config::{RetryConfigBuilder, DEFAULT_MAX_ATTEMPTS, DEFAULT_RETRY_AFTER_CAP};
pub use error::BudgetExhausted;
pub use future::ResponseFuture;
pub use hedge::{Hedge, HedgeDelay, HedgeEvent, HedgeLayer};
pub use layer::RetryLayer;
pub use policy::{ByClone, Classified, CloneRequest, HttpPolicy, Ignoring, NeverClone, Policy};
pub use seawall_core::deadline::{Elapsed, PerTryTimeoutOverride, RequestDeadline};
pub use service::Retry;

use std::time::Duration;

/// What a retry policy reports to its [listeners](RetryConfigBuilder::on_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent {
    /// A retry of a failed attempt was scheduled, and taken from the budget: it is to be sent
    /// after `delay`, once the inner service is ready.
    ///
    /// Reported when scheduled, so the retry may never be sent: the caller may drop the response
    /// future first, the call's deadline may pass during the backoff or while the service is not
    /// ready ([`GiveUpReason::Deadline`]), or the service may fail to get ready
    /// ([`GiveUpReason::NotReady`]). The `seawall_retry_retries_total` metric counts the retries
    /// handed to the inner service, one a layer below then turns away before sending counting too.
    Retry {
        /// The attempt scheduled: 2 for the first retry.
        attempt: u32,
        /// The backoff before it (or the pause the server asked for, if longer: a `Retry-After`
        /// read from a response by [`Policy::retry_after`], or a pause read from an error by
        /// [`Policy::retry_after_error`], such as gRPC's retry pushback; the `retry_after` of a
        /// rejection raised before sending is added to it); the wait for the service's readiness
        /// comes after.
        delay: Duration,
    },
    /// A failed attempt was not retried because the budget was exhausted.
    BudgetExhausted {
        /// Attempts made.
        attempts: u32,
    },
    /// A failed call was given up on for another reason.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: GiveUpReason,
    },
}

/// Why a retry layer stopped retrying a failed call; see [`RetryEvent::GaveUp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// `max_attempts` attempts were made.
    Attempts,
    /// The call's deadline left no time for another attempt: it would pass before the backoff
    /// ended (the call then returns the last attempt's result at once), or it passed after a
    /// retry was scheduled, during the backoff or while waiting for the inner service to get
    /// ready for the retry (the call then fails with [`Elapsed`]).
    Deadline,
    /// The server asked for a pause longer than `retry_after_cap` (a `Retry-After`, or a wait the
    /// policy reads from an error, gRPC's `grpc-retry-pushback-ms`), or asked not to be retried
    /// at all (a negative or malformed pushback), or a rejection raised before sending asked for
    /// a pause longer than the cap (a rate limiter's `retry_after`).
    RetryAfter,
    /// The request could not be copied for another attempt (the cloner returned `None` part way
    /// through, for a body that can no longer be replayed), so its last copy was sent as the
    /// last attempt.
    NotCopyable,
    /// The inner service failed to get ready for the next attempt: its readiness error is the
    /// call's error.
    NotReady,
}
