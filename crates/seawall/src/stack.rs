//! The canonical client stack in one builder.
//!
//! [`ClientStack::builder`] assembles, over a discovery stream of endpoint services, the stack
//! seawall recommends for calling a dependency, outer to inner:
//!
//! ```text
//! fallback → timeout (total) → retry (budgeted) → breaker (dependency) → bulkhead (dependency)
//!   → balance → per endpoint: breaker (BreakerFilter) → timeout (per try) → endpoint service
//! ```
//!
//! - the **fallback** sees every failure of the layers under it: a timeout, an exhausted retry
//!   budget, an open breaker, a full bulkhead, no endpoint;
//! - the **total timeout** bounds the whole call, retries and backoff included, and writes the
//!   deadline on the request so the retry does not start an attempt it cannot finish; it is the
//!   one layer that enforces the call's deadline (its own, or an earlier one the caller put on the
//!   request), and it cancels an attempt still running then, which records no outcome below; a
//!   call whose deadline had passed a millisecond (a tick of tokio's timer) or more when it
//!   arrives is not sent: it fails with [`Elapsed`](crate::timeout::Elapsed), no attempt is made,
//!   no endpoint picked, and nothing below records an outcome; one passed by less is sent, and
//!   only an answer ready on its first poll is in time;
//! - the **retry** sits above the breaker and the bulkhead, so each attempt is counted by the
//!   breaker, takes a permit, and is balanced afresh (a retry usually lands on another endpoint);
//!   an open breaker rejects an attempt without load on the dependency, and its rejection is
//!   returned at once rather than retried;
//! - the **breaker** and **bulkhead** protect the dependency as a whole, over all its endpoints;
//! - the **balancer** skips endpoints that outlier detection ejected or whose own breaker is open;
//! - the **per-endpoint breaker** counts one endpoint's failures, per-try timeouts included,
//!   and takes the endpoint out of the pick while it is open;
//! - the **per-try timeout** bounds one attempt on one endpoint. It is built with
//!   [`TimeoutLayer::per_try`]: it ignores a request's
//!   [`TimeoutOverride`](crate::timeout::TimeoutOverride) (which is for the total timeout, so a
//!   longer override does not stop hung attempts being cut and retried elsewhere) and takes a
//!   [`PerTryTimeoutOverride`](crate::timeout::PerTryTimeoutOverride) instead (one method's
//!   longer attempts), and it fires
//!   only at its own deadline, so only an endpoint slower than the attempt's per-try timeout (the
//!   request's `PerTryTimeoutOverride` when it carries one) is charged a failure; an attempt cut by the call's deadline (an impatient caller, the total timeout) is
//!   cancelled from above and counts against no endpoint, even when both deadlines have passed
//!   by the time it is polled (the same timer tick, a late poll): the per-try timeout then holds
//!   its cut for one poll and leaves it to the total timeout (in the common case: a task out of
//!   tokio's cooperative budget, or timers fired in separate batches, can let the per-try
//!   timeout's `Elapsed` through once). A call's deadline at most a
//!   millisecond (a tick of tokio's timer) after the attempt's own (a total timeout of 5000.5 ms
//!   over a per-try one of 5 s) may fire on the next tick: the per-try timeout times the
//!   attempt at the call's deadline instead, so both fire on one tick and the attempt may run up
//!   to a millisecond past its per-try timeout.
//!
//! `docs/composition.md` in the repository explains what each reordering does.
//!
//! # Defaults
//!
//! The builder starts from a standard stack, after Polly's standard resilience pipeline; every
//! piece can be replaced with a layer of your own, and every piece but the balancer removed.
//! Over HTTP, start from [`ClientStack::http_builder`]: the same stack, but the retry and every
//! piece that counts outcomes read HTTP methods and statuses (the last column).
//!
//! | piece | [`builder`](ClientStack::builder) | [`http_builder`](ClientStack::http_builder) | set with | remove with |
//! |---|---|---|---|---|
//! | fallback | none | none | [`fallback`](ClientStackBuilder::fallback) | — |
//! | total timeout | 30 s | 30 s | [`timeout`](ClientStackBuilder::timeout) | [`without_timeout`](ClientStackBuilder::without_timeout) (a caller's deadline is still enforced) |
//! | retry | [`RetryLayer::new`]'s: 3 attempts, exponential backoff, 20 % budget; and [`Open`] is not retried ([`ignore_error`](crate::retry::RetryConfigBuilder::ignore_error)). It retries every request that fails with an error, whatever its method (a POST included), and no `Ok` response (a 5xx included) | the same, with the HTTP policy ([`http`](crate::retry::RetryConfigBuilder::http)): errors, 5xx and 429 of idempotent methods only (a POST is sent once, unless it was never sent: a full bulkhead or no endpoint below, a refused connection), `Retry-After` honoured | [`retry`](ClientStackBuilder::retry) | [`without_retry`](ClientStackBuilder::without_retry) |
//! | breaker | [`BreakerLayer::new`] | the same, classifying with [`HttpClassifier`]: 5xx, 429 and errors fail | [`breaker`](ClientStackBuilder::breaker) | [`without_breaker`](ClientStackBuilder::without_breaker) |
//! | bulkhead | 1000 calls at once, no wait | the same | [`bulkhead`](ClientStackBuilder::bulkhead) | [`without_bulkhead`](ClientStackBuilder::without_bulkhead) |
//! | balance | [`BalanceLayer::builder`] defaults: P2C PeakEWMA, outlier ejection (5 failures in a row; success rate, failure percentage, latency) | the same, classifying with [`HttpClassifier`] | [`balance`](ClientStackBuilder::balance), [`map_balance`](ClientStackBuilder::map_balance) | — |
//! | per-endpoint breakers | none | none | [`endpoint_breakers`](ClientStackBuilder::endpoint_breakers) | — |
//! | per-try timeout | 10 s | 10 s | [`per_try_timeout`](ClientStackBuilder::per_try_timeout) | [`without_per_try_timeout`](ClientStackBuilder::without_per_try_timeout) |
//!
//! [`builder`](ClientStack::builder)'s pieces read no HTTP: hyper and reqwest return a 5xx as
//! `Ok(response)`, which its breaker and balancer count as a success, so an endpoint that answers
//! every call with a 503 is never retried, never opens the breaker and is never ejected; and its
//! retry sends any request that failed with an error again, a POST included (the server may have
//! applied it). Use it for other protocols, or over HTTP with pieces of your own.
//! [`http_builder`](ClientStack::http_builder) counts a 5xx or a 429 as a failure everywhere, as
//! Polly's standard HTTP pipeline does (Polly counts a 408 too: add it with
//! [`HttpClassifier::with_failure`] in pieces of your own). A piece you replace is yours,
//! classifier included: see [`ClientStackBuilder::http`].
//!
//! [`build`](ClientStackBuilder::build) checks that the pieces agree (a per-try timeout that is
//! not shorter than the total one is an error, the default 10 s one under a total timeout of
//! 10 s or less included, as in Polly, and so is a zero total or per-try timeout, though not a
//! request's [`TimeoutOverride`](crate::timeout::TimeoutOverride) of `Duration::ZERO`, which the
//! total timeout honours: that call fails with [`Elapsed`](crate::timeout::Elapsed) unless it is
//! answered on its first poll; so are per-endpoint breakers named like the default dependency
//! breaker, `"breaker"`, since their metrics would add up with its own, a total timeout
//! built with `enforce_outer_deadline(false)`, which would leave a caller's deadline to no
//! layer, and one built with `propagate_deadline(false)`, which would hide the call's deadline
//! from the retry and let the per-try timeout write its own, later one) and returns a
//! [`ClientStack`]: `Clone + Send + Sync`, every clone sharing the one set of policies. The
//! builder does not read the name of a breaker passed to
//! [`breaker`](ClientStackBuilder::breaker): name it apart from the per-endpoint breakers
//! yourself. The request type implements [`RequestDeadline`] (done for `http::Request`), so the
//! timeouts and the retry agree on the deadline.
//!
//! # Example
//!
//! An HTTP client: the HTTP preset, its retry given a budget shared with the dependency's other
//! clients (and kept on the HTTP policy), its balancer named, and per-endpoint breakers that read
//! statuses too. (`GrpcClassifier` reads gRPC statuses.)
//!
//! ```
//! use seawall::{
//!     balance::Picker,
//!     breaker::{BreakerConfig, BreakerSet, Open},
//!     core::classify::HttpClassifier,
//!     fallback::FallbackLayer,
//!     retry::{RetryBudget, RetryLayer},
//!     stack::ClientStack,
//! };
//! use std::{net::SocketAddr, time::Duration};
//! use tower::{service_fn, ServiceExt};
//!
//! # #[cfg(feature = "discover")]
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! // One service per address (`discover` feature); a real client binds a hyper client to it.
//! let addrs: Vec<SocketAddr> = vec!["10.0.0.1:80".parse()?, "10.0.0.2:80".parse()?];
//! let endpoints = seawall::discover::from_list(addrs, |addr: &SocketAddr| {
//!     let port = addr.port();
//!     service_fn(move |_req: http::Request<()>| async move {
//!         Ok::<_, seawall::BoxError>(http::Response::new(format!("from {port}")))
//!     })
//! });
//! let budget = RetryBudget::builder().ratio(0.1).build()?;
//!
//! let client = ClientStack::http_builder()
//!     .fallback(
//!         FallbackLayer::builder()
//!             .on_error_type::<Open>()
//!             .build_fn(|_failed| Ok(http::Response::new("cached".to_string())))?,
//!     )
//!     .timeout(Duration::from_secs(2))
//!     // A retry of your own replaces the preset's: keep its HTTP policy.
//!     .retry(
//!         RetryLayer::builder()
//!             .http()
//!             .ignore_error::<Open>()
//!             .budget(budget.clone())
//!             .name("users-api")
//!             .build()?,
//!     )
//!     // Keeps the preset's `HttpClassifier`.
//!     .map_balance(|balance| balance.name("users-api").picker(Picker::RoundRobin))
//!     .endpoint_breakers(BreakerSet::with_classifier(
//!         BreakerConfig::builder().name("users-api-endpoint").build_config()?,
//!         1024,
//!         HttpClassifier::new(),
//!     )?)
//!     .per_try_timeout(Duration::from_millis(500))
//!     .build(endpoints)?;
//!
//! let response = client.oneshot(http::Request::get("/users/7").body(())?).await?;
//! assert!(response.body().starts_with("from 80"));
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "discover"))]
//! # fn main() {}
//! ```
//!
//! By hand, the preset is [`builder`](ClientStack::builder) with three pieces replaced; the
//! breaker given this way is made at once rather than by `build`, and its name is not checked
//! against the per-endpoint breakers'. Start from this to build an HTTP stack on other
//! classifiers: one that also fails a 408 (`HttpClassifier::new().with_failure(..)`), or one that
//! ignores a client-side rate limit's rejection
//! ([`HttpClassifier::new().ignore_error::<Limited>()`](crate::core::classify::ClassifyExt::ignore_error),
//! `Limited` from `bulkhead::ratelimit`):
//!
//! ```
//! use seawall::{
//!     balance::BalanceLayer,
//!     breaker::{BreakerLayer, Open},
//!     core::classify::HttpClassifier,
//!     retry::RetryLayer,
//!     stack::ClientStack,
//! };
//!
//! let by_hand = ClientStack::builder()
//!     .retry(RetryLayer::builder().http().ignore_error::<Open>().build()?)
//!     .breaker(BreakerLayer::builder().build_with(HttpClassifier::new())?)
//!     .balance(BalanceLayer::builder().classifier(HttpClassifier::new()));
//! # Ok::<(), seawall::ConfigError>(())
//! ```

use crate::{
    balance::{Balance, BalanceConfigBuilder, BalanceLayer, BreakerFilter, Key, Probe},
    breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerSet, Open},
    bulkhead::BulkheadLayer,
    core::{
        classify::HttpClassifier, config::check_positive_duration, BoxError, ConfigError, Name,
        RequestDeadline,
    },
    retry::{
        policy::{Classified, HttpPolicy},
        Ignoring, RetryLayer,
    },
    timeout::{Timeout, TimeoutLayer},
};
use futures_core::Stream;
use pin_project_lite::pin_project;
use std::{
    collections::HashSet,
    fmt,
    future::Future,
    hash::Hash,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};
use tower::{
    discover::{Change, Discover},
    layer::util::{Identity, Stack},
    util::{BoxCloneSyncService, Either},
    Layer, Service, ServiceBuilder,
};

/// The default total timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The default per-try timeout.
pub const DEFAULT_PER_TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// The default bulkhead limit: calls in flight to the dependency at once.
pub const DEFAULT_BULKHEAD_LIMIT: usize = 1000;

// ===== ClientStack =====

/// The canonical client stack, built by [`ClientStack::builder`].
///
/// `Clone + Send + Sync`: every clone shares the stack's policies (budget, breakers, permits,
/// endpoint set). It is ready when its outer layers are; rejections (open breaker, full bulkhead,
/// no endpoint, exhausted budget, timeout) come from the response future as errors.
pub struct ClientStack<Req, Res> {
    inner: BoxCloneSyncService<Req, Res, BoxError>,
}

impl ClientStack<(), ()> {
    /// Starts a builder with the standard stack; see the [module docs](self).
    pub fn builder() -> ClientStackBuilder {
        ClientStackBuilder::new()
    }

    /// Starts a builder with the standard stack set up for HTTP: [`builder`](Self::builder)'s,
    /// with the HTTP retry policy and [`HttpClassifier`] in every piece that counts outcomes;
    /// see [`ClientStackBuilder::http`] and the [module docs](self).
    pub fn http_builder() -> HttpClientStackBuilder {
        ClientStackBuilder::http()
    }
}

impl<Req, Res> Clone for ClientStack<Req, Res> {
    fn clone(&self) -> Self {
        ClientStack {
            inner: self.inner.clone(),
        }
    }
}

impl<Req, Res> Service<Req> for ClientStack<Req, Res> {
    type Response = Res;
    type Error = BoxError;
    type Future = <BoxCloneSyncService<Req, Res, BoxError> as Service<Req>>::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

impl<Req, Res> fmt::Debug for ClientStack<Req, Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStack").finish_non_exhaustive()
    }
}

// ===== ClientStackBuilder =====

/// Builds a [`ClientStack`]; see the [module docs](self) for the order, the defaults and an
/// example.
///
/// The type parameters are the pieces' layer types, [`Identity`] for a piece left out: the
/// fallback, the total timeout, the retry, the dependency breaker, the bulkhead, the balancer's
/// configuration and the per-endpoint breakers ([`NoEndpointBreakers`] or a [`BreakerSet`]). A
/// piece left out costs nothing: it is not in the stack's type. The total timeout is the
/// exception: without one, a [`TimeoutLayer`] in its place still enforces a deadline the caller
/// put on the request (see [`without_timeout`](ClientStackBuilder::without_timeout)).
#[must_use = "a builder does nothing until `build` is called"]
pub struct ClientStackBuilder<
    Fb = Identity,
    To = TimeoutLayer,
    Rt = RetryLayer<Ignoring<Classified, Open>>,
    Br = BreakerLayer,
    Bh = BulkheadLayer,
    Ba = BalanceConfigBuilder,
    Eb = NoEndpointBreakers,
> {
    fallback: Fb,
    timeout: To,
    /// What the builder knows of the total timeout, to check it and the per-try timeout.
    total: Total,
    retry: Rt,
    /// The default breaker is made by `build`: a breaker counts in its name's state gauge as soon
    /// as it is made, and a builder that ends up with another breaker, or none, must not count one
    /// that never runs.
    breaker: Lazy<Br>,
    /// The dependency breaker's name, to check the per-endpoint breakers' against, where the
    /// builder knows it: the default breaker's. `None` for no breaker, and for a layer passed to
    /// [`breaker`](ClientStackBuilder::breaker), whose name the builder cannot read.
    breaker_name: Option<Name>,
    bulkhead: Bh,
    balance: Ba,
    endpoint_breakers: Eb,
    per_try_timeout: Option<TimeoutLayer>,
}

impl ClientStackBuilder {
    /// The standard stack: see the defaults in the [module docs](self).
    ///
    /// The default dependency breaker is made by [`build`](ClientStackBuilder::build), as a
    /// breaker counts in its name's `seawall_breaker_state` gauge when it is made: a builder given
    /// another breaker, or none, makes none and leaves the gauge of a breaker of the default name
    /// as it is.
    pub fn new() -> Self {
        let breaker_name = *BreakerConfig::builder()
            .build_config()
            .expect("the default configuration is valid")
            .name();
        ClientStackBuilder {
            fallback: Identity::new(),
            timeout: TimeoutLayer::new(DEFAULT_TIMEOUT),
            total: Total {
                duration: Some(DEFAULT_TIMEOUT),
                enforces_callers_deadline: true,
                propagates_deadline: true,
            },
            retry: RetryLayer::builder()
                .ignore_error::<Open>()
                .build()
                .expect("the default retry is valid"),
            breaker: Lazy::Default(BreakerLayer::new),
            breaker_name: Some(breaker_name),
            bulkhead: BulkheadLayer::builder()
                .max_concurrent(DEFAULT_BULKHEAD_LIMIT)
                .build()
                .expect("the default bulkhead is valid"),
            balance: BalanceLayer::builder(),
            endpoint_breakers: NoEndpointBreakers,
            per_try_timeout: Some(TimeoutLayer::new(DEFAULT_PER_TRY_TIMEOUT)),
        }
    }
}

impl Default for ClientStackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The builder [`ClientStack::http_builder`] returns: the standard stack's pieces, with the HTTP
/// retry policy and [`HttpClassifier`] in the dependency breaker and the balancer.
pub type HttpClientStackBuilder = ClientStackBuilder<
    Identity,
    TimeoutLayer,
    RetryLayer<Ignoring<HttpPolicy, Open>>,
    BreakerLayer<HttpClassifier>,
    BulkheadLayer,
    BalanceConfigBuilder<HttpClassifier>,
    NoEndpointBreakers,
>;

impl HttpClientStackBuilder {
    /// The standard stack for HTTP endpoints (`http::Request` in, `http::Response` out): the
    /// pieces of [`new`](ClientStackBuilder::new), but
    ///
    /// - the retry is `RetryLayer::builder().http().ignore_error::<Open>()`: it retries errors,
    ///   5xx and 429 of idempotent methods only (GET, HEAD, OPTIONS, TRACE, PUT, DELETE; a POST
    ///   is sent once, unless it was never sent: a full bulkhead or no endpoint below, a refused
    ///   connection, see [`HttpPolicy::retry_unsent`](crate::retry::HttpPolicy::retry_unsent)) and
    ///   honours `Retry-After`, with [`new`](ClientStackBuilder::new)'s
    ///   attempts, backoff and budget;
    /// - the dependency breaker is `BreakerLayer::builder().build_with(HttpClassifier::new())`
    ///   (made by [`build`](ClientStackBuilder::build), as the standard one is);
    /// - the balancer's outlier detection and PeakEWMA classify with [`HttpClassifier`]
    ///   (`BalanceLayer::builder().classifier(HttpClassifier::new())`).
    ///
    /// hyper and reqwest return a 5xx as `Ok(response)`: read through [`HttpClassifier`], a 5xx
    /// or a 429 is a failure (a 408 is not: add it with
    /// [`with_failure`](HttpClassifier::with_failure) in a piece of your own), so an endpoint
    /// answering every call with a 503 is retried away from, counted by the breaker and ejected.
    ///
    /// A piece you replace is yours, classifier included. Give a retry passed to
    /// [`retry`](ClientStackBuilder::retry) the HTTP policy
    /// (`RetryLayer::builder().http().ignore_error::<Open>()`), a breaker passed to
    /// [`breaker`](ClientStackBuilder::breaker) and the per-endpoint breakers an
    /// [`HttpClassifier`] (`build_with`, [`BreakerSet::with_classifier`]), and change the
    /// balancer with [`map_balance`](ClientStackBuilder::map_balance), which keeps its
    /// classifier, rather than [`balance`](ClientStackBuilder::balance), which replaces it.
    pub fn http() -> Self {
        let standard = ClientStackBuilder::new();
        ClientStackBuilder {
            fallback: standard.fallback,
            timeout: standard.timeout,
            total: standard.total,
            retry: RetryLayer::builder()
                .http()
                .ignore_error::<Open>()
                .build()
                .expect("the default HTTP retry is valid"),
            breaker: Lazy::Default(http_breaker),
            breaker_name: standard.breaker_name,
            bulkhead: standard.bulkhead,
            balance: standard.balance.classifier(HttpClassifier::new()),
            endpoint_breakers: standard.endpoint_breakers,
            per_try_timeout: standard.per_try_timeout,
        }
    }
}

/// The HTTP preset's dependency breaker: the standard one, classifying with [`HttpClassifier`].
fn http_breaker() -> BreakerLayer<HttpClassifier> {
    BreakerLayer::builder()
        .build_with(HttpClassifier::new())
        .expect("the default configuration is valid")
}

impl<Fb, To, Rt, Br, Bh, Ba, Eb> ClientStackBuilder<Fb, To, Rt, Br, Bh, Ba, Eb> {
    /// The outermost piece: a [`FallbackLayer`](crate::fallback::FallbackLayer) answering the
    /// failures it is built to handle (an open breaker, a timeout, anything).
    pub fn fallback<F2>(self, fallback: F2) -> ClientStackBuilder<F2, To, Rt, Br, Bh, Ba, Eb> {
        ClientStackBuilder {
            fallback,
            timeout: self.timeout,
            total: self.total,
            retry: self.retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// The total timeout: a `Duration` or a [`TimeoutLayer`]. It bounds the whole call, retries
    /// included, and must be greater than zero ([`build`](Self::build) checks). The check is the
    /// builder's: the total timeout honours a request's
    /// [`TimeoutOverride`](crate::timeout::TimeoutOverride) of `Duration::ZERO`, and that call
    /// fails with [`Elapsed`](crate::timeout::Elapsed) unless it is answered on its first poll.
    ///
    /// It is the stack's one layer that fails a call at an earlier deadline the caller put on
    /// the request (the per-try timeout never does), so [`build`](Self::build) rejects a layer
    /// built with
    /// [`enforce_outer_deadline(false)`](crate::timeout::TimeoutConfigBuilder::enforce_outer_deadline).
    /// It is also the layer that writes the call's deadline on the request, which the retry reads
    /// to start no attempt it cannot finish and the per-try timeout and the endpoints see, so
    /// [`build`](Self::build) rejects a layer built with
    /// [`propagate_deadline(false)`](crate::timeout::TimeoutConfigBuilder::propagate_deadline).
    pub fn timeout(
        self,
        timeout: impl Into<TimeoutLayer>,
    ) -> ClientStackBuilder<Fb, TimeoutLayer, Rt, Br, Bh, Ba, Eb> {
        let layer: TimeoutLayer = timeout.into();
        let total = Total {
            duration: Some(layer.timeout()),
            enforces_callers_deadline: layer.enforces_outer_deadline(),
            propagates_deadline: layer.propagates_deadline(),
        };
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: layer,
            total,
            retry: self.retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// No total timeout of the stack's own.
    ///
    /// A deadline the caller puts on the request is still enforced in the total timeout's place
    /// (above the retry), and only there: the per-try timeout leaves it to this layer, so an
    /// attempt cut by it counts against no endpoint. The layer has no duration of its own, ignores
    /// [`TimeoutOverride`](crate::timeout::TimeoutOverride)s and writes nothing on the request; a
    /// request without a deadline passes with one clock read (and, while it is pending, a timer
    /// that never fires).
    pub fn without_timeout(self) -> ClientStackBuilder<Fb, TimeoutLayer, Rt, Br, Bh, Ba, Eb> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: callers_deadline_only(),
            total: Total {
                duration: None,
                enforces_callers_deadline: true,
                propagates_deadline: true,
            },
            retry: self.retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// The retry layer. Share its [`RetryBudget`](crate::retry::RetryBudget) with every other
    /// client of the same dependency, and build it with
    /// [`ignore_error::<Open>()`](crate::retry::RetryConfigBuilder::ignore_error), as the default
    /// is, unless an open breaker's rejection should wait out a backoff and be tried again.
    pub fn retry<R2>(self, retry: R2) -> ClientStackBuilder<Fb, To, R2, Br, Bh, Ba, Eb> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// No retries.
    pub fn without_retry(self) -> ClientStackBuilder<Fb, To, Identity, Br, Bh, Ba, Eb> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry: Identity::new(),
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// The circuit breaker of the dependency as a whole: a [`BreakerLayer`], or any layer in its
    /// place (a `ServiceBuilder` stack, `layer_fn`, another crate's breaker).
    ///
    /// Name it apart from the [per-endpoint breakers](Self::endpoint_breakers): the builder does
    /// not read the name of a layer passed in, so [`build`](Self::build) checks the names only
    /// against the default breaker's.
    pub fn breaker<B2>(self, breaker: B2) -> ClientStackBuilder<Fb, To, Rt, B2, Bh, Ba, Eb> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry: self.retry,
            breaker: Lazy::Given(breaker),
            breaker_name: None,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// No dependency breaker (per-endpoint breakers and outlier ejection still act).
    pub fn without_breaker(self) -> ClientStackBuilder<Fb, To, Rt, Identity, Bh, Ba, Eb> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry: self.retry,
            breaker: Lazy::Given(Identity::new()),
            breaker_name: None,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// The bulkhead of the dependency: at most so many calls (attempts) in flight to it. Any
    /// layer goes in its place.
    ///
    /// A rate limiter here (alone, or above a bulkhead in a `ServiceBuilder` stack) makes every
    /// attempt take a permit of its quota. Its rejection,
    /// [`Limited`](crate::bulkhead::ratelimit::Limited), comes up through the dependency breaker
    /// and the retry as an error: build the breaker with a classifier that answers
    /// [`Outcome::Ignored`](crate::core::classify::Outcome::Ignored) for it (the quota is the
    /// client's, not the dependency's health), such as
    /// [`HttpClassifier::new().ignore_error::<Limited>()`](crate::core::classify::ClassifyExt::ignore_error),
    /// or a burst over the quota opens the breaker, and the retry with
    /// [`ignore_error::<Limited>()`](crate::retry::RetryConfigBuilder::ignore_error).
    /// `docs/composition.md` in the repository has the code, and the other place for a rate
    /// limiter, above the retry.
    pub fn bulkhead<H2>(self, bulkhead: H2) -> ClientStackBuilder<Fb, To, Rt, Br, H2, Ba, Eb> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry: self.retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead,
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// No bulkhead.
    pub fn without_bulkhead(self) -> ClientStackBuilder<Fb, To, Rt, Br, Identity, Ba, Eb> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry: self.retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: Identity::new(),
            balance: self.balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// The balancer's configuration: `BalanceLayer::builder()` with your picker, outlier
    /// detection, name. It is validated by [`build`](Self::build); its availability filter is
    /// the stack's (the per-endpoint breakers).
    ///
    /// It replaces the whole configuration, classifier included: over HTTP give it
    /// `.classifier(HttpClassifier::new())`, or change the one
    /// [`ClientStack::http_builder`] set up with [`map_balance`](Self::map_balance).
    pub fn balance<C, H, P>(
        self,
        balance: BalanceConfigBuilder<C, H, P>,
    ) -> ClientStackBuilder<Fb, To, Rt, Br, Bh, BalanceConfigBuilder<C, H, P>, Eb> {
        self.map_balance(|_| balance)
    }

    /// Changes the balancer's configuration rather than replacing it: `f` gets the one the
    /// builder holds, so what it does not set stays, the classifier of
    /// [`ClientStack::http_builder`] included.
    ///
    /// ```
    /// use seawall::{balance::Picker, stack::ClientStack};
    ///
    /// // Still classifies with `HttpClassifier`.
    /// let builder = ClientStack::http_builder()
    ///     .map_balance(|balance| balance.name("users-api").picker(Picker::RoundRobin));
    /// ```
    pub fn map_balance<C, H, P>(
        self,
        f: impl FnOnce(Ba) -> BalanceConfigBuilder<C, H, P>,
    ) -> ClientStackBuilder<Fb, To, Rt, Br, Bh, BalanceConfigBuilder<C, H, P>, Eb> {
        let balance = f(self.balance);
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry: self.retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: self.bulkhead,
            balance,
            endpoint_breakers: self.endpoint_breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// A circuit breaker per endpoint, taken from `breakers` by the endpoint's key when discovery
    /// adds it; the balancer skips an endpoint while its breaker is open
    /// ([`BreakerFilter`]). Keep a clone of the set to look at the breakers.
    ///
    /// Name the set apart from the dependency breaker
    /// (`BreakerConfig::builder().name("users-api-endpoint")`): their events and metrics carry
    /// the name, and under one name an endpoint's failures would add up with the dependency's.
    /// [`build`](Self::build) rejects a set named `"breaker"` (the default name) under the
    /// stack's default dependency breaker, which has that name: give the set a name, or pass a
    /// named dependency breaker, or none. A dependency breaker passed to
    /// [`breaker`](Self::breaker) is not checked, as the builder does not read its name.
    ///
    /// When discovery removes an endpoint, its breaker is dropped from the set unless an operator
    /// put it in a manual state ([`BreakerSet::remove_unless_manual`]): an Open breaker of an
    /// endpoint that is gone no longer counts in `seawall_breaker_keys_open`, and an endpoint
    /// added again under the same key starts with a fresh, Closed breaker; one forced open,
    /// disabled or metrics-only stays in the set, and the endpoint comes back in that state (an
    /// endpoint drained with [`force_open`](crate::breaker::BreakerHandle::force_open) stays
    /// drained while it leaves discovery and returns). Calls still in flight on the removed
    /// endpoint finish on its old breaker. Only the keys the stack's discovery inserted are let go
    /// of: a remove of any other key leaves its breaker alone. The set is the stack's own: a set
    /// shared with another stack loses a key's breaker when either stack's discovery removes the
    /// key.
    ///
    /// A breaker kept in a manual state belongs to the key, not to the endpoint. If the key never
    /// comes back, the breaker stays in the set, taking a place (and, forced open, counting in
    /// `seawall_breaker_keys_open`) until the set evicts it (idle breakers in a manual state go
    /// after the other idle ones) or you [`remove`](BreakerSet::remove) it. If another endpoint
    /// comes under the same key (a pod IP given to a new pod), it starts in that manual state: a
    /// new endpoint under a drained key is drained. Reset or remove the breaker once the endpoint
    /// you set it for is gone for good. A manual change racing the endpoint's removal may land on
    /// the breaker the set has just let go of (see [`BreakerSet::remove_unless_manual`]).
    pub fn endpoint_breakers<K, C>(
        self,
        breakers: BreakerSet<K, C>,
    ) -> ClientStackBuilder<Fb, To, Rt, Br, Bh, Ba, BreakerSet<K, C>> {
        ClientStackBuilder {
            fallback: self.fallback,
            timeout: self.timeout,
            total: self.total,
            retry: self.retry,
            breaker: self.breaker,
            breaker_name: self.breaker_name,
            bulkhead: self.bulkhead,
            balance: self.balance,
            endpoint_breakers: breakers,
            per_try_timeout: self.per_try_timeout,
        }
    }

    /// The timeout of one attempt on one endpoint: a `Duration` or a [`TimeoutLayer`].
    ///
    /// The stack uses it as [`TimeoutLayer::per_try`] (same duration, listeners and name, but
    /// `"per_try_timeout"` for one given no name): it
    /// ignores a request's [`TimeoutOverride`](crate::timeout::TimeoutOverride), takes its
    /// [`PerTryTimeoutOverride`](crate::timeout::PerTryTimeoutOverride) in place of its own
    /// duration, and leaves the call's deadline to the total timeout (or, without one, the layer
    /// in its place), which enforces it by cancelling the attempt, so an impatient caller's cut
    /// counts against no endpoint: it times an attempt at the call's deadline only when that is
    /// at most a tick after its own, and holds its cut for a poll when the call's deadline has
    /// passed too.
    ///
    /// It must be greater than zero (a zero one would cut every attempt not ready on its first
    /// poll, and charge its endpoint) and shorter than the total timeout, as Polly requires
    /// ([`build`](Self::build) checks).
    pub fn per_try_timeout(mut self, timeout: impl Into<TimeoutLayer>) -> Self {
        self.per_try_timeout = Some(timeout.into());
        self
    }

    /// No per-try timeout.
    pub fn without_per_try_timeout(mut self) -> Self {
        self.per_try_timeout = None;
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.total.enforces_callers_deadline {
            return Err(ConfigError::conflict(
                "timeout",
                "must enforce a deadline the caller put on the request: no other layer of the \
                 stack does (build it without enforce_outer_deadline(false))",
            ));
        }
        if !self.total.propagates_deadline {
            return Err(ConfigError::conflict(
                "timeout",
                "must write the call's deadline on the request: the retry reads it to start no \
                 attempt it cannot finish, and without it a per-try timeout writes its own, later \
                 one, and an endpoint's SendDeadlineLayer tells the server no deadline or that \
                 later one (build it without propagate_deadline(false))",
            ));
        }
        // A zero total timeout fails every call not ready on its first poll; a zero per-try one
        // cuts every such attempt and charges its endpoint.
        if let Some(total) = self.total.duration {
            check_positive_duration("timeout", total)?;
        }
        if let Some(per_try) = &self.per_try_timeout {
            check_positive_duration("per_try_timeout", per_try.timeout())?;
        }
        if let (Some(total), Some(per_try)) = (self.total.duration, &self.per_try_timeout) {
            // One as long as the total or longer leaves no attempt for the retry after a cut one:
            // the call's deadline, due no later than the first attempt's own, cuts it. (One
            // shorter by a millisecond or less is timed at the call's deadline, and cut with the
            // call on the total timeout's tick.)
            if per_try.timeout() >= total {
                return Err(ConfigError::conflict(
                    "per_try_timeout",
                    format!(
                        "must be shorter than timeout ({total:?}), got {:?} (the default is \
                         {DEFAULT_PER_TRY_TIMEOUT:?}: set a shorter per_try_timeout, or none with \
                         without_per_try_timeout)",
                        per_try.timeout()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What the builder knows of the total timeout.
#[derive(Debug, Clone, Copy)]
struct Total {
    /// Its duration, to check the per-try timeout against; `None` without a total timeout of the
    /// stack's own.
    duration: Option<Duration>,
    /// Whether it fails calls at a deadline the caller put on the request: the stack's one layer
    /// that does.
    enforces_callers_deadline: bool,
    /// Whether it writes the call's deadline on the request, for the retry and the per-try
    /// timeout to see. Without a total timeout of the stack's own there is none to write: `true`.
    propagates_deadline: bool,
}

/// A piece of the stack the builder makes only in `build`, unless it was given one.
enum Lazy<L> {
    /// Made by the function in `build`.
    Default(fn() -> L),
    /// Given to the builder.
    Given(L),
}

impl<L> Lazy<L> {
    fn into_inner(self) -> L {
        match self {
            Lazy::Default(make) => make(),
            Lazy::Given(layer) => layer,
        }
    }
}

impl<L: fmt::Debug> fmt::Debug for Lazy<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lazy::Default(_) => f.write_str("Default"),
            Lazy::Given(layer) => layer.fmt(f),
        }
    }
}

/// What stands in for the total timeout when the stack has none: a caller's deadline on the
/// request is enforced there, above the retry, so that no layer below has to (and the per-try
/// timeout does not, see [`TimeoutLayer::per_try`]).
fn callers_deadline_only() -> TimeoutLayer {
    TimeoutLayer::builder()
        .timeout(Duration::MAX)
        .propagate_deadline(false)
        .honor_override(false)
        .build()
        .expect("a timeout of any duration is valid")
}

/// The per-endpoint breakers must not report under the dependency breaker's name: their counters
/// would add up with its own, and one bad endpoint would look like the dependency failing.
fn check_breaker_names(
    dependency: Option<Name>,
    endpoints: Option<Name>,
) -> Result<(), ConfigError> {
    match (dependency, endpoints) {
        (Some(dependency), Some(endpoints)) if dependency == endpoints => {
            Err(ConfigError::conflict(
                "endpoint_breakers",
                format!(
                    "must not have the dependency breaker's name ({dependency:?}): their events \
                     and metrics would add up under one name; name the set with \
                     BreakerConfig::builder().name(..), or the dependency breaker with \
                     BreakerLayer::builder().name(..)"
                ),
            ))
        }
        _ => Ok(()),
    }
}

/// The layers above the balancer, outer to inner: fallback, total timeout, retry, breaker,
/// bulkhead.
pub type UpperLayers<Fb, To, Rt, Br, Bh> =
    Stack<Bh, Stack<Br, Stack<Rt, Stack<To, Stack<Fb, Identity>>>>>;

impl<Fb, To, Rt, Br, Bh, LC, LH, LP, Eb>
    ClientStackBuilder<Fb, To, Rt, Br, Bh, BalanceConfigBuilder<LC, LH, LP>, Eb>
{
    /// Validates the pieces and builds the stack over `discover`, a stream of endpoint services
    /// (for example `discover::from_list` with the `discover` feature, or a
    /// `tower::discover::ServiceList`).
    ///
    /// Must be called inside a Tokio runtime: the balancer runs a task on it that applies
    /// discovery changes even while no calls arrive. Outside any runtime this returns a
    /// [`ConfigError`] for the field `runtime`.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] on `runtime` when called outside a Tokio runtime, on `timeout` when the total timeout does not enforce a caller's
    /// deadline (built with `enforce_outer_deadline(false)`) or does not write its own on the
    /// request (built with `propagate_deadline(false)`) or is zero, on `per_try_timeout` when it
    /// is zero or not shorter than the total timeout, on `endpoint_breakers` when the per-endpoint breakers have the default dependency breaker's
    /// name (a breaker passed to [`breaker`](Self::breaker) is not checked), and the balancer
    /// configuration's own.
    pub fn build<D, Req, Res>(self, discover: D) -> Result<ClientStack<Req, Res>, ConfigError>
    where
        D: Discover,
        Eb: EndpointBreakers<D, LC, LH, LP>,
        UpperLayers<Fb, To, Rt, Br, Bh>: Layer<Eb::Balanced>,
        <UpperLayers<Fb, To, Rt, Br, Bh> as Layer<Eb::Balanced>>::Service:
            Service<Req, Response = Res, Error = BoxError> + Clone + Send + Sync + 'static,
        <<UpperLayers<Fb, To, Rt, Br, Bh> as Layer<Eb::Balanced>>::Service as Service<Req>>::Future:
            Send + 'static,
    {
        self.validate()?;
        check_breaker_names(self.breaker_name, self.endpoint_breakers.set_name())?;
        // The balancer spawns its task on this runtime.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::conflict(
                "runtime",
                "is required: build must be called inside a Tokio runtime",
            ));
        }
        let per_try = self.per_try_timeout.as_ref().map(TimeoutLayer::per_try);
        let balanced = self
            .endpoint_breakers
            .balance(self.balance, per_try, discover)?;
        let upper = ServiceBuilder::new()
            .layer(self.fallback)
            .layer(self.timeout)
            .layer(self.retry)
            .layer(self.breaker.into_inner())
            .layer(self.bulkhead)
            .into_inner();
        Ok(ClientStack {
            inner: BoxCloneSyncService::new(upper.layer(balanced)),
        })
    }
}

impl<Fb, To, Rt, Br, Bh, Ba, Eb> fmt::Debug for ClientStackBuilder<Fb, To, Rt, Br, Bh, Ba, Eb>
where
    To: fmt::Debug,
    Rt: fmt::Debug,
    Br: fmt::Debug,
    Bh: fmt::Debug,
    Eb: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientStackBuilder")
            .field("fallback", &std::any::type_name::<Fb>())
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("breaker", &self.breaker)
            .field("bulkhead", &self.bulkhead)
            .field("endpoint_breakers", &self.endpoint_breakers)
            .field("per_try_timeout", &self.per_try_timeout)
            .finish_non_exhaustive()
    }
}

// ===== per-endpoint pieces =====

/// No per-endpoint breakers (the default): the balancer's outlier ejection alone watches
/// endpoints.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEndpointBreakers;

mod sealed {
    use crate::core::Name;

    pub trait Sealed {
        /// The name the per-endpoint breakers report under, `None` for none.
        fn set_name(&self) -> Option<Name>;
    }

    impl Sealed for super::NoEndpointBreakers {
        fn set_name(&self) -> Option<Name> {
            None
        }
    }

    impl<K, C> Sealed for crate::breaker::BreakerSet<K, C> {
        fn set_name(&self) -> Option<Name> {
            Some(*self.name())
        }
    }
}

/// What wraps each discovered endpoint and builds the balancer over them: [`NoEndpointBreakers`]
/// or a [`BreakerSet`]. Sealed.
pub trait EndpointBreakers<D: Discover, C, H, P>: sealed::Sealed {
    /// The balancer over the wrapped endpoints.
    type Balanced;

    /// Wraps each endpoint `discover` yields in the per-try timeout (and breaker), and starts
    /// the balancer over them.
    fn balance(
        self,
        config: BalanceConfigBuilder<C, H, P>,
        per_try: Option<TimeoutLayer>,
        discover: D,
    ) -> Result<Self::Balanced, ConfigError>;
}

impl<D, C, H, P> EndpointBreakers<D, C, H, P> for NoEndpointBreakers
where
    D: Discover + Send + 'static,
    D::Key: Key,
    D::Service: Clone + Send + Sync + 'static,
    D::Error: fmt::Display,
    C: Clone + Send + Sync + 'static,
    H: Clone,
    P: Probe<D::Key, PerTry<D::Service>>,
{
    type Balanced = Balance<D::Key, PerTry<D::Service>, C, H>;

    fn balance(
        self,
        config: BalanceConfigBuilder<C, H, P>,
        per_try: Option<TimeoutLayer>,
        discover: D,
    ) -> Result<Self::Balanced, ConfigError> {
        let layer = config.build()?;
        Ok(layer.layer(MapEndpoints::new(
            discover,
            move |_key, service| PerTry::new(service, per_try.as_ref()),
            |_key| {},
        )))
    }
}

impl<D, C, H, P, BC> EndpointBreakers<D, C, H, P> for BreakerSet<D::Key, BC>
where
    D: Discover + Send + 'static,
    D::Key: Key,
    D::Service: Clone + Send + Sync + 'static,
    D::Error: fmt::Display,
    C: Clone + Send + Sync + 'static,
    H: Clone,
    P: Probe<D::Key, Breaker<PerTry<D::Service>, BC>>,
    BC: Clone + Send + Sync + 'static,
{
    type Balanced = Balance<D::Key, Breaker<PerTry<D::Service>, BC>, C, H>;

    fn balance(
        self,
        config: BalanceConfigBuilder<C, H, P>,
        per_try: Option<TimeoutLayer>,
        discover: D,
    ) -> Result<Self::Balanced, ConfigError> {
        let layer = config.filter(BreakerFilter).build()?;
        let breakers = self.clone();
        // A removed endpoint's breaker leaves the set: it no longer counts in
        // `seawall_breaker_keys_open` nor takes a place, and the key added again starts Closed.
        // One an operator put in a manual state stays: the key comes back in that state.
        Ok(layer.layer(MapEndpoints::new(
            discover,
            move |key, service| {
                breakers
                    .get(key)
                    .layer(PerTry::new(service, per_try.as_ref()))
            },
            move |key| {
                self.remove_unless_manual(key);
            },
        )))
    }
}

/// A discovery stream whose inserted services are wrapped by `wrap`, and whose removed keys are
/// passed to `removed`: only the keys it inserted, so a remove of a key it never inserted, or
/// already removed, reaches the balancer alone.
struct MapEndpoints<D: Discover, F, R> {
    discover: Pin<Box<D>>,
    wrap: F,
    removed: R,
    /// The keys inserted through this stream and not removed since.
    inserted: HashSet<D::Key>,
}

impl<D: Discover, F, R> MapEndpoints<D, F, R> {
    fn new<S2>(discover: D, wrap: F, removed: R) -> Self
    where
        F: FnMut(&D::Key, D::Service) -> S2,
        R: FnMut(&D::Key),
    {
        MapEndpoints {
            discover: Box::pin(discover),
            wrap,
            removed,
            inserted: HashSet::new(),
        }
    }
}

// Nothing is pinned in place: the stream is boxed, and the rest moves freely whatever the key
// type (a key that is not `Unpin` would otherwise make the set of keys, and so this, `!Unpin`).
impl<D: Discover, F: Unpin, R: Unpin> Unpin for MapEndpoints<D, F, R> {}

impl<D, F, R, S2> Stream for MapEndpoints<D, F, R>
where
    D: Discover,
    D::Key: Hash + Eq + Clone,
    F: FnMut(&D::Key, D::Service) -> S2 + Unpin,
    R: FnMut(&D::Key) + Unpin,
{
    type Item = Result<Change<D::Key, S2>, D::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let change = match this.discover.as_mut().poll_discover(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
            Poll::Ready(Some(Ok(change))) => change,
        };
        Poll::Ready(Some(Ok(match change {
            Change::Insert(key, service) => {
                let service = (this.wrap)(&key, service);
                this.inserted.insert(key.clone());
                Change::Insert(key, service)
            }
            Change::Remove(key) => {
                if this.inserted.remove(&key) {
                    (this.removed)(&key);
                }
                Change::Remove(key)
            }
        })))
    }
}

/// One endpoint's service under its per-try timeout, if the stack has one.
#[derive(Clone, Debug)]
pub struct PerTry<S> {
    inner: Either<Timeout<S>, S>,
}

impl<S> PerTry<S> {
    fn new(service: S, timeout: Option<&TimeoutLayer>) -> Self {
        PerTry {
            inner: match timeout {
                Some(layer) => Either::Left(layer.layer(service)),
                None => Either::Right(service),
            },
        }
    }

    /// The endpoint's service.
    pub fn get_ref(&self) -> &S {
        match &self.inner {
            Either::Left(timeout) => timeout.get_ref(),
            Either::Right(service) => service,
        }
    }
}

impl<S, Req> Service<Req> for PerTry<S>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    Req: RequestDeadline,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = PerTryFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.inner {
            Either::Left(timeout) => timeout.poll_ready(cx),
            Either::Right(service) => service.poll_ready(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        PerTryFuture {
            kind: match &mut self.inner {
                Either::Left(timeout) => Kind::Timed {
                    future: timeout.call(req),
                },
                Either::Right(service) => Kind::Plain {
                    future: service.call(req),
                },
            },
        }
    }
}

pin_project! {
    /// The response future of [`PerTry`].
    pub struct PerTryFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Timed { #[pin] future: crate::timeout::ResponseFuture<F> },
        Plain { #[pin] future: F },
    }
}

impl<F, T, E> Future for PerTryFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Timed { future } => future.poll(cx),
            KindProj::Plain { future } => future.poll(cx).map_err(Into::into),
        }
    }
}

impl<F> fmt::Debug for PerTryFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PerTryFuture").finish_non_exhaustive()
    }
}
