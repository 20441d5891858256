//! What every seawall concern shares.
//!
//! seawall is a set of client-side resilience layers for [`tower`]: timeouts, fallbacks, circuit
//! breakers, bulkheads, retries and load balancing. Each concern lives in its own crate; this crate
//! holds what they must agree on so they compose:
//!
//! | module | what it gives |
//! |---|---|
//! | [`error`] | [`BoxError`] and helpers that find a concrete error type anywhere in a `source()` chain; [`NotSent`](error::NotSent), the marker of a request that was never sent, [`not_sent`](error::not_sent), and [`SentEarlier`](error::SentEarlier), the mark of a call an earlier attempt of which was sent |
//! | [`classify`] | turning a finished call into [`Outcome::Success`], [`Outcome::Failure`] or [`Outcome::Ignored`]; HTTP and gRPC classifiers; [`ignore_error`](ClassifyExt::ignore_error) to ignore errors of a type |
//! | [`deadline`] | the request deadline that a timeout writes and inner layers (per-try timeouts, retries, hedging) read |
//! | [`config`] | [`ConfigError`], returned by every builder, naming the field and the rule broken |
//! | [`name`] | [`Name`], the policy instance name used in events, logs and metric labels |
//! | [`event`] | the listener hook shape every concern uses for its events |
//! | [`metrics`] | the metric naming scheme `seawall_<concern>_<measure>` with a `name` label |
//!
//! Most users never depend on this crate directly: the `seawall` facade re-exports it as
//! `seawall::core`.
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

pub mod classify;
pub mod config;
pub mod deadline;
pub mod error;
pub mod event;
pub mod metrics;
pub mod name;

pub use classify::{Classify, ClassifyExt, Outcome};
pub use config::ConfigError;
pub use deadline::{
    Deadline, Elapsed, PerTryTimeoutOverride, RequestDeadline, TimeoutOverride, WithDeadline,
};
pub use error::BoxError;
pub use event::{Listener, Listeners};
pub use name::Name;
