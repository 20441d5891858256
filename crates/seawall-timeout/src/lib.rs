//! A timeout layer for tower with per-request overrides and deadline propagation.
//!
//! [`TimeoutLayer`] fails a call with [`Elapsed`] when it has not answered by its deadline, and
//! drops (cancels) the inner future at that moment. An answer ready on the response future's
//! first poll is returned whenever that poll happens, even after the deadline (as in tower: that
//! poll reads no clock); one found on a later poll after the deadline fails. The deadline is:
//!
//! 1. `now + timeout`, where `timeout` is the layer's own duration, or the request's
//!    [`TimeoutOverride`] when it carries one (read by every timeout layer in the stack that
//!    honors overrides, which they all do unless built with
//!    [`honor_override(false)`](TimeoutConfigBuilder::honor_override), or made with
//!    [`per_try`](TimeoutLayer::per_try), which reads a [`PerTryTimeoutOverride`] instead);
//! 2. capped by a [`Deadline`] the request already carries, from an outer timeout or from the
//!    caller; the earlier of the two wins. A layer that enforces an earlier deadline (the
//!    default) cuts the call at it and reports it under its own name; a timeout further out whose
//!    deadline it was then finds that [`Elapsed`] late and counts the call too, so nested
//!    enforcing timeouts each count it (build the inner one with
//!    [`per_try`](TimeoutLayer::per_try) to leave the count to the outer one). A layer built with
//!    [`enforce_outer_deadline(false)`](TimeoutConfigBuilder::enforce_outer_deadline) leaves an
//!    earlier deadline to the layer further out that enforces it and fires only at its own (or
//!    at the request's, when that is at most a millisecond later, so both timers fire on one
//!    tick: the call may run up to a millisecond past its timeout); when both have passed by the
//!    time its timer fires (the same tick, a late poll), it holds its cut for one poll so that
//!    layer cancels the call (in the common case: a task out of tokio's cooperative budget, or
//!    timers fired in separate batches, can let this layer's `Elapsed` through once), and fails
//!    with [`Elapsed`] on the next poll only if nothing did.
//!
//! Build a per-try timeout under a retry with [`TimeoutLayer::per_try`]: it ignores a
//! `TimeoutOverride`, leaves an earlier deadline to the layer further out, and reads a request's
//! [`PerTryTimeoutOverride`] in place of its own duration (longer or shorter, for every attempt
//! of that request), so one slow method can be given longer attempts while every other keeps the
//! per-try timeout; the call's deadline still bounds each attempt, and the total timeout ignores
//! a `PerTryTimeoutOverride`. A layer built with `honor_override(false)` ignores both overrides.
//!
//! A call whose earlier deadline had passed a millisecond (a tick of tokio's timer) or more
//! before it was made, in a layer that enforces it, is not sent: the inner service is not called,
//! and the call fails with [`Elapsed`] on its first poll, counted and reported as any elapsed call
//! (with a budget of zero). The readiness the inner service was polled to stays with it for its
//! next call (see [`Timeout`]). A deadline reached at that very instant, or passed by less (the
//! deadline a `Duration::ZERO` timeout further out has just written), is still called, and only an
//! answer ready on its first poll is in time.
//!
//! The effective deadline is written back on the request (unless
//! [`propagate_deadline(false)`](TimeoutConfigBuilder::propagate_deadline)), so layers further in
//! see it: a per-try timeout under a retry cannot outlive the total timeout above it, and the retry
//! does not start an attempt that cannot finish. Requests carry deadlines through
//! [`RequestDeadline`], implemented for [`http::Request`](https://docs.rs/http/1/http/request/struct.Request.html); other request types implement it in a
//! few lines (see [`seawall_core::deadline`]). Ordinary std request types (`u32`, `String`,
//! `Vec<T>`, …) implement it already and carry no deadline: over them a timeout applies its own
//! duration and propagates nothing; wrap them in a
//! [`WithDeadline`](seawall_core::deadline::WithDeadline) to propagate.
//!
//! # Defaults
//!
//! | option | default | note |
//! |---|---|---|
//! | `timeout` | required | any duration; `Duration::ZERO` only lets through calls that are ready on their first poll, `Duration::MAX` never fires |
//! | `name` | `"timeout"` | label for events and metrics |
//! | `propagate_deadline` | `true` | write the effective deadline on the request |
//! | `honor_override` | `true` | a request's [`TimeoutOverride`] replaces `timeout`; `false` ignores both overrides; a [`per_try`](TimeoutLayer::per_try) layer reads a [`PerTryTimeoutOverride`] instead |
//! | `enforce_outer_deadline` | `true` | fail the call at an earlier deadline the request carries |
//!
//! # Cost
//!
//! A call reads the clock once. The timer is armed only if the inner future is still pending after
//! its first poll, so a call to a service that answers at once never touches the timer wheel, and
//! nothing on the happy path allocates. A pending call reads the clock again when it answers: the
//! timer rounds the deadline up to its next millisecond tick, and an answer that arrives in between
//! is past the deadline and fails with [`Elapsed`] (on an [`http::Request`](https://docs.rs/http/1/http/request/struct.Request.html) without extensions, propagation
//! inserts the first extension, which allocates the request's extension map).
//!
//! # Example
//!
//! ```
//! use seawall::{timeout::{Elapsed, TimeoutLayer}, ServiceBuilderExt};
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let slow = service_fn(|_: http::Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(10)).await;
//!     Ok::<_, seawall::BoxError>("done")
//! });
//! let timeout = TimeoutLayer::builder()
//!     .timeout(Duration::from_secs(1))
//!     .name("users-api")
//!     .build()?;
//! let client = ServiceBuilder::new().with_timeout(timeout).service(slow);
//!
//! let err = client.oneshot(http::Request::new(())).await.unwrap_err();
//! assert!(seawall::core::error::is::<Elapsed>(&*err));
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
mod future;
mod layer;
mod service;

pub use config::TimeoutConfigBuilder;
pub use future::ResponseFuture;
pub use layer::TimeoutLayer;
pub use seawall_core::deadline::{
    Deadline, Elapsed, PerTryTimeoutOverride, RequestDeadline, TimeoutOverride,
};
pub use service::Timeout;

/// What a timeout policy reports to its [listeners](TimeoutConfigBuilder::on_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TimeoutEvent {
    /// A call ran past its deadline and was cancelled.
    Elapsed {
        /// How long the call had: from the call to its effective deadline.
        budget: std::time::Duration,
    },
}
