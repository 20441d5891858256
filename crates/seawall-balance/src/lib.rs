//! Client-side load balancing for [`tower`] that routes around failing and slow endpoints.
//!
//! A [`Balance`] spreads calls over a set of endpoints that a discovery stream keeps up to date
//! (any [`tower::discover::Discover`]: a static list, a watch channel, DNS via `seawall-discover`).
//! It is the Ribbon half of seawall: a [`Picker`] chooses the endpoint, passive outlier detection
//! and an optional active health check take bad endpoints out, and a panic threshold puts them
//! back when too many are out.
//!
//! # What sets it apart from tower's `p2c::Balance`
//!
//! - **`Clone`, no `Buffer`.** Clones share one endpoint set and its statistics.
//! - **Discovery is applied while idle.** A background task applies inserts and removes (and runs
//!   health checks) as they come, not when the next call happens to drive the balancer.
//! - **Bounded waiting.** With no available endpoint a call waits at most
//!   [`max_wait`](BalanceConfigBuilder::max_wait), then fails with [`NoEndpoints`].
//! - **Readiness per call.** The response future polls the picked endpoint ready; if it is not,
//!   it picks again without it (a consistent-hash key walks on along its ring), then falls back to
//!   any other ready endpoint, so one unready endpoint never holds the balancer up. A waiting call
//!   holds one of the endpoints not ready, whose readiness wakes it, and looks at the others again
//!   every 250 ms.
//! - **Failures count as slow.** PeakEWMA records a failed call as taking at least
//!   `failure_penalty`, so an endpoint that fails fast does not attract traffic.
//! - **Latency outlier ejection**: an endpoint much slower than its peers for long enough is
//!   ejected like a failing one; a spike alone is not enough, as the endpoint must be slow in
//!   each interval it answers in.
//!
//! # Pickers
//!
//! See [`Picker`]: round robin, random, weighted round robin (EDF), least outstanding, power of
//! d choices by outstanding calls or by PeakEWMA, the cheapest of all by PeakEWMA, consistent
//! hashing (ring) and zone-aware.
//! Picking never allocates and takes no lock.
//!
//! # Health
//!
//! [`OutlierDetection`] follows gRPC's outlier detection (gRFC A50): every `interval` the
//! success-rate and failure-percentage rules run over the interval's calls, Envoy's
//! consecutive-failures rule ejects at once, and seawall's latency rule ejects an endpoint whose
//! latency EWMA and mean latency since the last pass are above `factor ×` the median of its
//! peers' EWMAs at every pass at which it had successful calls (a pass without any can only find
//! it not slow), for `duration` (see
//! [`LatencyEjection`]). An ejected endpoint is returned at the
//! first pass at or after `base_ejection_time × k` (capped) is up, where k goes up by one at each
//! ejection and down by one for each interval the endpoint ends in the set without being ejected;
//! ejection stops once the ejected share reaches `max_ejection_percent` (the last ejection may
//! pass it, as in gRFC A50, and one endpoint can always be ejected, even at 0, as with Envoy's
//! `always_eject_one_host`), and never takes the last healthy endpoint.
//! [`HealthCheck`] probes every endpoint periodically (Ribbon's `IPing`). A [`Filter`] keeps
//! endpoints out on every pick (Ribbon's `AvailabilityFilteringRule`); with the default `breaker`
//! feature, `BreakerFilter` skips endpoints whose own `seawall-breaker` circuit breaker is open.
//! When fewer than `panic_threshold` of the endpoints are healthy, health is ignored (panic mode,
//! reported by [`BalanceEvent::PanicEntered`] and [`BalanceEvent::PanicExited`] and by the
//! `seawall_balance_panic` gauge, next to `seawall_balance_unhealthy_endpoints`).
//! What counts as a failure comes from a `seawall-core` classifier.
//!
//! # Defaults
//!
//! | option | default | note |
//! |---|---|---|
//! | `picker` | [`Picker::p2c_peak_ewma`] | choices 2, decay 10 s, default latency 30 ms, failure penalty 1 s |
//! | `max_wait` | 2 s | `None` waits as long as it takes |
//! | `panic_threshold` | 0.5 | Envoy's default |
//! | `outlier_detection.interval` | 10 s | gRPC |
//! | `base_ejection_time` / `max_ejection_time` | 30 s / 300 s | gRPC |
//! | `max_ejection_percent` | 0.1 | gRPC; ejection stops once the share reaches it, so the last ejection may pass it; one endpoint can always be ejected, so 0 does not turn ejection off (`OutlierDetection::disabled()` does) |
//! | `consecutive_failures` | 5 | Envoy |
//! | `success_rate` | stdev factor 1.9, 5 hosts, 100 calls | gRPC |
//! | `failure_percentage` | 85 %, 5 hosts, 50 calls | gRPC |
//! | `latency` | 3 × peers' median for 30 s, decay 10 s, 3 hosts, 10 samples | |
//! | `health_check` | off | |
//! | `filter` | none | `BreakerFilter` for per-endpoint breakers (`breaker` feature, default on) |
//! | `classifier` | `Err` is a failure | |
//! | `seed` | from the process's hash randomness | set it for reproducible runs |
//! | `name` | `"balance"` | |
//!
//! # Example
//!
//! ```
//! use seawall::balance::{BalanceLayer, NoEndpoints, Picker};
//! use std::time::Duration;
//! use tower::{discover::ServiceList, service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! // Three endpoints; a real client would bind a hyper client to each discovered address.
//! let endpoints = (0..3).map(|i| service_fn(move |req: u32| async move {
//!     Ok::<_, seawall::BoxError>(format!("endpoint {i} answered {req}"))
//! }));
//! let balancer = BalanceLayer::builder()
//!     .name("users-api")
//!     .picker(Picker::RoundRobin)
//!     .max_wait(Duration::from_millis(100))
//!     .seed(7)
//!     .build()?
//!     .layer(ServiceList::new(endpoints.collect::<Vec<_>>()));
//! tokio::task::yield_now().await; // the background task applies the list
//!
//! let answer = balancer.clone().oneshot(1).await?;
//! assert!(answer.starts_with("endpoint"));
//!
//! // With no endpoint at all a call fails after max_wait.
//! let empty = BalanceLayer::builder()
//!     .max_wait(Duration::from_millis(100))
//!     .build()?
//!     .layer(ServiceList::new(Vec::<tower::util::BoxCloneSyncService<u32, String, seawall::BoxError>>::new()));
//! let err = empty.oneshot(1).await.unwrap_err();
//! assert!(err.is::<NoEndpoints>());
//! # Ok(())
//! # }
//! ```
//!
//! In a stack with other seawall layers, the balancer goes innermost and the stack is built on the
//! discovery stream:
//!
//! ```
//! use seawall::{balance::BalanceLayer, discover, ServiceBuilderExt};
//! use std::{net::SocketAddr, time::Duration};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let addrs: Vec<SocketAddr> = vec!["10.0.0.1:80".parse()?, "10.0.0.2:80".parse()?];
//! let client = ServiceBuilder::new()
//!     .with_timeout(Duration::from_secs(1))
//!     .with_balance(BalanceLayer::builder().name("users-api").build()?)
//!     .service(discover::from_list(addrs, |addr: &SocketAddr| {
//!         let addr = *addr;
//!         service_fn(move |_req: http::Request<()>| async move {
//!             Ok::<_, seawall::BoxError>(addr.port())
//!         })
//!     }));
//! assert_eq!(client.oneshot(http::Request::new(())).await?, 80);
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/load-balancing.md` in the repository for when to use each picker and how Ribbon's
//! rules map onto seawall's.
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

mod config;
mod endpoint;
mod error;
mod future;
mod hook;
mod layer;
pub mod picker;
mod service;
mod set;
mod shared;

pub use config::{
    BalanceConfigBuilder, FailurePercentage, HealthCheck, LatencyEjection, OutlierDetection,
    SuccessRate, DEFAULT_MAX_WAIT, DEFAULT_PANIC_THRESHOLD,
};
pub use endpoint::{EndpointMeta, Key, Tagged};
pub use error::NoEndpoints;
pub use future::ResponseFuture;
#[cfg(feature = "breaker")]
pub use hook::BreakerFilter;
pub use hook::{Filter, HashKey, NoFilter, NoKey, NoProbe, Probe};
pub use layer::BalanceLayer;
pub use picker::Picker;
pub use service::Balance;
pub use tower::discover::Change;

/// Why an endpoint was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EjectReason {
    /// Too many failed calls in a row.
    ConsecutiveFailures,
    /// Its success rate was an outlier among the endpoints'.
    SuccessRate,
    /// Its share of failed calls was above the threshold.
    FailurePercentage,
    /// Its latency was an outlier among the endpoints'.
    Latency,
}

/// What a balancer reports to its [listeners](BalanceConfigBuilder::on_event).
///
/// Endpoint keys are given in their `Debug` form. A discovery change is reported once the set
/// left by the batch of changes it came in is published (discovery's changes ready together are
/// applied as one set), so a later change in the same batch may already have undone it: after
/// `[Insert(5), Remove(5)]` the listeners hear `EndpointAdded` then `EndpointRemoved` for 5, and
/// [`Balance::endpoints`] never held 5. A change of health is reported once it is in force (an
/// ejected endpoint is in [`Balance::unhealthy`], and [`Balance::is_panicking`] counts it), and a
/// change made after it, reported after it, may already have undone it. One balancer's changes of
/// its set and health are reported in the order they were made, and a change of panic mode right
/// after the changes that made it (a discovery batch, an ejection, an outlier detection pass, a
/// health check's verdict). The listeners run under none of the balancer's locks, and may call
/// it. One thread reports a balancer's changes at a time, each after the changes before it: the
/// thread that made the change, that of another call of the balancer that was reporting at the
/// time, or the balancer's background task. A call reports at most its own changes (an ejection
/// after failures in a row) and those made before them not reported yet (a call that got its
/// response, once it has let go of the endpoint's service; a call whose endpoint's readiness
/// failed, at once during its pick, while it still holds its place: that endpoint's service and
/// any other it waits on, with what they reserved, such as a concurrency limit's permit); the
/// changes made after its own are left to the background task (or to a later call reporting up to
/// its own), so a slow listener holds up a call by no more than the changes made up to its own;
/// while a call reports, the background task applies discovery only until 1,024 changes wait, so a
/// slow listener also delays discovery. An event a listener's own call causes is reported once that
/// listener has returned.
/// [`NoEndpoints`](Self::NoEndpoints) is no change of the set or of health and is not queued with
/// them: the call that failed reports it at once on its own thread, so it may be heard before the
/// ejection or change of panic mode that left no endpoint is, and while another thread reports
/// changes. A key whose `Debug` panics loses its event (the panic is logged at `error`); the change
/// stands. A change whose key's `Hash`, `Eq` or `EndpointMeta` panics is skipped (logged at
/// `error`): it is not applied and reports nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BalanceEvent {
    /// Discovery added an endpoint, or inserted a key already in the set: then the endpoint
    /// takes the new key's weight, zone and service and keeps its statistics and health.
    EndpointAdded {
        /// The endpoint's key.
        key: String,
    },
    /// Discovery removed an endpoint.
    EndpointRemoved {
        /// The endpoint's key.
        key: String,
    },
    /// Outlier detection ejected an endpoint.
    Ejected {
        /// The endpoint's key.
        key: String,
        /// Which rule ejected it.
        reason: EjectReason,
        /// Its ejection time: it is returned at the first outlier detection pass (every
        /// `interval`) at or after this has passed, so it stays out up to one interval longer.
        duration: std::time::Duration,
    },
    /// An ejected endpoint's time was up at this outlier detection pass: its ejection is over (it
    /// takes traffic again unless its health check is failing).
    Returned {
        /// The endpoint's key.
        key: String,
    },
    /// An endpoint failed its active health check.
    ProbeFailed {
        /// The endpoint's key.
        key: String,
    },
    /// An endpoint passed its active health check after failing it.
    ProbePassed {
        /// The endpoint's key.
        key: String,
    },
    /// Too few endpoints are healthy (fewer than `panic_threshold` of them): the balancer
    /// ignores health, and unhealthy endpoints take calls again. This is the state behind Envoy's
    /// `lb_healthy_panic`, a counter of the requests balanced in panic mode; the
    /// `seawall_balance_panic` gauge holds it, so alert on `seawall_balance_panic > 0`.
    /// Each pick judges panic mode from the count of unhealthy endpoints and the set's size; this
    /// event follows the changes of that count and size (a discovery batch, an outlier detection
    /// pass, a health check's new verdict, or an ejection after failures in a row, made by the
    /// failing call as its failure is recorded and reported by that call; or, if another thread
    /// of the balancer is reporting at the time, by that thread when the change comes before
    /// that thread's own, else by the background task or by a later call reporting up to its
    /// own), reported right after the change that crossed the threshold.
    /// [`Balance::is_panicking`] holds from the change this event reports until the one
    /// [`PanicExited`](Self::PanicExited) reports.
    PanicEntered {
        /// Endpoints ejected or failing their health check.
        unhealthy: usize,
        /// Endpoints in the set.
        endpoints: usize,
    },
    /// Enough endpoints are healthy again, or none is unhealthy: health keeps unhealthy endpoints
    /// out of the pick again.
    PanicExited {
        /// Endpoints ejected or failing their health check.
        unhealthy: usize,
        /// Endpoints in the set.
        endpoints: usize,
    },
    /// A call found no available endpoint within `max_wait`.
    NoEndpoints {
        /// How long it waited.
        waited: std::time::Duration,
    },
}
