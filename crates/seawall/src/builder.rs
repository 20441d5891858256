//! `ServiceBuilder` methods for seawall layers.

#[cfg(any(
    feature = "timeout",
    feature = "fallback",
    feature = "breaker",
    feature = "bulkhead",
    feature = "retry",
    feature = "balance"
))]
use tower::layer::util::Stack;
use tower::ServiceBuilder;

/// Adds a method per seawall concern to [`tower::ServiceBuilder`].
///
/// Layers added first are outermost, as with every `ServiceBuilder` method. Each method takes the
/// concern's layer (or something that converts into it, like a `Duration` for a timeout).
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// Adds a [`TimeoutLayer`](crate::timeout::TimeoutLayer): a `Duration`, or a layer built with
    /// `TimeoutLayer::builder()`.
    #[cfg(feature = "timeout")]
    #[cfg_attr(docsrs, doc(cfg(feature = "timeout")))]
    fn with_timeout(
        self,
        timeout: impl Into<seawall_timeout::TimeoutLayer>,
    ) -> ServiceBuilder<Stack<seawall_timeout::TimeoutLayer, L>>;

    /// Adds a [`FallbackLayer`](crate::fallback::FallbackLayer).
    #[cfg(feature = "fallback")]
    #[cfg_attr(docsrs, doc(cfg(feature = "fallback")))]
    fn with_fallback<H, C, X>(
        self,
        fallback: seawall_fallback::FallbackLayer<H, C, X>,
    ) -> ServiceBuilder<Stack<seawall_fallback::FallbackLayer<H, C, X>, L>>;

    // ----- breaker methods -----
    /// Adds a [`BreakerLayer`](crate::breaker::BreakerLayer): a circuit breaker built with
    /// `BreakerLayer::builder()`. A keyed breaker
    /// ([`BreakerSet::keyed_layer`](crate::breaker::BreakerSet::keyed_layer)) is added with
    /// `.layer(...)`.
    #[cfg(feature = "breaker")]
    #[cfg_attr(docsrs, doc(cfg(feature = "breaker")))]
    fn with_breaker<C>(
        self,
        breaker: seawall_breaker::BreakerLayer<C>,
    ) -> ServiceBuilder<Stack<seawall_breaker::BreakerLayer<C>, L>>;
    // ----- end breaker methods -----

    // ----- bulkhead methods -----
    /// Adds a [`BulkheadLayer`](crate::bulkhead::BulkheadLayer), built with
    /// `BulkheadLayer::builder()`.
    #[cfg(feature = "bulkhead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
    fn with_bulkhead<C, R>(
        self,
        bulkhead: seawall_bulkhead::BulkheadLayer<C, R>,
    ) -> ServiceBuilder<Stack<seawall_bulkhead::BulkheadLayer<C, R>, L>>;

    /// Adds a [`RateLimitLayer`](crate::bulkhead::ratelimit::RateLimitLayer), built with
    /// `RateLimitLayer::builder()`. A keyed limiter is added with `.layer(...)`.
    #[cfg(feature = "bulkhead")]
    #[cfg_attr(docsrs, doc(cfg(feature = "bulkhead")))]
    fn with_rate_limit(
        self,
        limit: seawall_bulkhead::ratelimit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<seawall_bulkhead::ratelimit::RateLimitLayer, L>>;
    // ----- end bulkhead methods -----

    // ----- retry methods -----
    /// Adds a [`RetryLayer`](crate::retry::RetryLayer): budgeted retries with backoff.
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    fn with_retry<P, K>(
        self,
        retry: seawall_retry::RetryLayer<P, K>,
    ) -> ServiceBuilder<Stack<seawall_retry::RetryLayer<P, K>, L>>;

    /// Adds a [`HedgeLayer`](crate::retry::HedgeLayer): extra copies of slow calls.
    #[cfg(feature = "retry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
    fn with_hedge<P, K>(
        self,
        hedge: seawall_retry::HedgeLayer<P, K>,
    ) -> ServiceBuilder<Stack<seawall_retry::HedgeLayer<P, K>, L>>;
    // ----- end retry methods -----

    // ----- balance methods -----
    /// Adds a [`BalanceLayer`](crate::balance::BalanceLayer): the stack is then built on a
    /// discovery stream (`.service(discovery)`) and calls a balancer over its endpoints.
    #[cfg(feature = "balance")]
    #[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
    fn with_balance<C, H, P, F>(
        self,
        balance: seawall_balance::BalanceLayer<C, H, P, F>,
    ) -> ServiceBuilder<Stack<seawall_balance::BalanceLayer<C, H, P, F>, L>>;
    // ----- end balance methods -----
}

impl<L> ServiceBuilderExt<L> for ServiceBuilder<L> {
    #[cfg(feature = "timeout")]
    fn with_timeout(
        self,
        timeout: impl Into<seawall_timeout::TimeoutLayer>,
    ) -> ServiceBuilder<Stack<seawall_timeout::TimeoutLayer, L>> {
        self.layer(timeout.into())
    }

    #[cfg(feature = "fallback")]
    fn with_fallback<H, C, X>(
        self,
        fallback: seawall_fallback::FallbackLayer<H, C, X>,
    ) -> ServiceBuilder<Stack<seawall_fallback::FallbackLayer<H, C, X>, L>> {
        self.layer(fallback)
    }

    // ----- breaker impls -----
    #[cfg(feature = "breaker")]
    fn with_breaker<C>(
        self,
        breaker: seawall_breaker::BreakerLayer<C>,
    ) -> ServiceBuilder<Stack<seawall_breaker::BreakerLayer<C>, L>> {
        self.layer(breaker)
    }
    // ----- end breaker impls -----

    // ----- bulkhead impls -----
    #[cfg(feature = "bulkhead")]
    fn with_bulkhead<C, R>(
        self,
        bulkhead: seawall_bulkhead::BulkheadLayer<C, R>,
    ) -> ServiceBuilder<Stack<seawall_bulkhead::BulkheadLayer<C, R>, L>> {
        self.layer(bulkhead)
    }

    #[cfg(feature = "bulkhead")]
    fn with_rate_limit(
        self,
        limit: seawall_bulkhead::ratelimit::RateLimitLayer,
    ) -> ServiceBuilder<Stack<seawall_bulkhead::ratelimit::RateLimitLayer, L>> {
        self.layer(limit)
    }
    // ----- end bulkhead impls -----

    // ----- retry impls -----
    #[cfg(feature = "retry")]
    fn with_retry<P, K>(
        self,
        retry: seawall_retry::RetryLayer<P, K>,
    ) -> ServiceBuilder<Stack<seawall_retry::RetryLayer<P, K>, L>> {
        self.layer(retry)
    }

    #[cfg(feature = "retry")]
    fn with_hedge<P, K>(
        self,
        hedge: seawall_retry::HedgeLayer<P, K>,
    ) -> ServiceBuilder<Stack<seawall_retry::HedgeLayer<P, K>, L>> {
        self.layer(hedge)
    }
    // ----- end retry impls -----

    // ----- balance impls -----
    #[cfg(feature = "balance")]
    fn with_balance<C, H, P, F>(
        self,
        balance: seawall_balance::BalanceLayer<C, H, P, F>,
    ) -> ServiceBuilder<Stack<seawall_balance::BalanceLayer<C, H, P, F>, L>> {
        self.layer(balance)
    }
    // ----- end balance impls -----
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
