use crate::{
    limit::{Limit, MAX_LIMIT},
    release::{OnBodyEnd, OnResponse},
    state::Shared,
    BulkheadEvent, BulkheadLayer,
};
use seawall_core::{classify::DefaultClassifier, config, ConfigError, Listener, Listeners, Name};
use std::{fmt, marker::PhantomData, time::Duration};

/// The fixed limit when neither `max_concurrent` nor `adaptive` is set (Resilience4j's default).
pub const DEFAULT_MAX_CONCURRENT: usize = 25;

/// Builds a [`BulkheadLayer`]; see [`BulkheadLayer::builder`] and the [crate docs](crate).
pub struct BulkheadConfigBuilder<C = DefaultClassifier, R = OnResponse> {
    name: Option<String>,
    max_concurrent: Option<usize>,
    max_wait: Duration,
    backpressure: bool,
    adaptive: Option<Box<dyn Limit>>,
    classifier: C,
    listeners: Listeners<BulkheadEvent>,
    _release: PhantomData<fn() -> R>,
}

impl BulkheadConfigBuilder {
    pub(crate) fn new() -> Self {
        BulkheadConfigBuilder {
            name: None,
            max_concurrent: None,
            max_wait: Duration::ZERO,
            backpressure: false,
            adaptive: None,
            classifier: DefaultClassifier,
            listeners: Listeners::new(),
            _release: PhantomData,
        }
    }
}

impl<C, R> BulkheadConfigBuilder<C, R> {
    /// The policy instance name for events and metrics. Default `"bulkhead"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// A fixed limit of calls in flight. Default 25; conflicts with [`adaptive`](Self::adaptive).
    pub fn max_concurrent(mut self, limit: usize) -> Self {
        self.max_concurrent = Some(limit);
        self
    }

    /// How long a call waits (FIFO) for a permit before it is rejected with
    /// [`Full`](crate::Full). Default zero: reject at once.
    pub fn max_wait(mut self, max_wait: Duration) -> Self {
        self.max_wait = max_wait;
        self
    }

    /// Makes `poll_ready` return `Pending` until a permit is free, as tower's `ConcurrencyLimit`
    /// does, instead of rejecting from the response future. Default `false`.
    pub fn backpressure(mut self, backpressure: bool) -> Self {
        self.backpressure = backpressure;
        self
    }

    /// Drives the limit with an adaptive algorithm ([`Aimd`](crate::limit::Aimd),
    /// [`Gradient2`](crate::limit::Gradient2), [`Vegas`](crate::limit::Vegas) or your own
    /// [`Limit`]), fed by the [`classifier`](Self::classifier) and call durations.
    pub fn adaptive(mut self, limit: impl Limit) -> Self {
        self.adaptive = Some(Box::new(limit));
        self
    }

    /// Decides which calls count as dropped for an adaptive limit. Default
    /// [`DefaultClassifier`] (`Err` is a failure). Unused with a fixed limit.
    ///
    /// An error that proves its request was never sent
    /// ([`not_sent`](seawall_core::error::not_sent): a rejection from below, such as the
    /// balancer's `NoEndpoints` or an inner bulkhead's [`Full`](crate::Full), or a refused
    /// connection) is no sample whatever the classifier says: the dependency never saw the call.
    pub fn classifier<C2>(self, classifier: C2) -> BulkheadConfigBuilder<C2, R> {
        BulkheadConfigBuilder {
            name: self.name,
            max_concurrent: self.max_concurrent,
            max_wait: self.max_wait,
            backpressure: self.backpressure,
            adaptive: self.adaptive,
            classifier,
            listeners: self.listeners,
            _release: PhantomData,
        }
    }

    /// Holds each permit until the `http` response body has been read to its end or dropped,
    /// rather than until the response head arrives. See [`OnBodyEnd`].
    pub fn release_on_body_end(self) -> BulkheadConfigBuilder<C, OnBodyEnd> {
        BulkheadConfigBuilder {
            name: self.name,
            max_concurrent: self.max_concurrent,
            max_wait: self.max_wait,
            backpressure: self.backpressure,
            adaptive: self.adaptive,
            classifier: self.classifier,
            listeners: self.listeners,
            _release: PhantomData,
        }
    }

    /// Adds a listener called on every [`BulkheadEvent`]. Changes of an adaptive limit made at
    /// nearly the same time on different threads may be heard out of order:
    /// [`BulkheadEvent::LimitChanged`] carries a generation that orders them.
    pub fn on_event(mut self, listener: impl Listener<BulkheadEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Validates the configuration and builds the layer.
    pub fn build(self) -> Result<BulkheadLayer<C, R>, ConfigError> {
        let name = match self.name {
            Some(name) => Name::validate("name", &name)?,
            None => Name::default_for("bulkhead"),
        };
        if self.backpressure && !self.max_wait.is_zero() {
            return Err(ConfigError::conflict(
                "max_wait",
                format!(
                    "must be zero with backpressure (poll_ready waits instead), got {:?}",
                    self.max_wait
                ),
            ));
        }
        let limit = match (&self.adaptive, self.max_concurrent) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::conflict(
                    "max_concurrent",
                    "must not be set with adaptive (the algorithm's initial_limit applies)",
                ))
            }
            (Some(adaptive), None) => {
                let (min, max) = adaptive.bounds();
                let initial = adaptive.initial_limit();
                crate::limit::check_bounds(min, initial, max)?;
                initial
            }
            (None, limit) => config::check_range(
                "max_concurrent",
                limit.unwrap_or(DEFAULT_MAX_CONCURRENT),
                1,
                MAX_LIMIT,
            )?,
        };
        let shared = Shared::new(
            limit,
            self.adaptive,
            self.max_wait,
            self.backpressure,
            name,
            self.listeners,
        );
        Ok(BulkheadLayer::from_parts(shared, self.classifier))
    }
}

impl<C: fmt::Debug, R> fmt::Debug for BulkheadConfigBuilder<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BulkheadConfigBuilder")
            .field("name", &self.name)
            .field("max_concurrent", &self.max_concurrent)
            .field("max_wait", &self.max_wait)
            .field("backpressure", &self.backpressure)
            .field("adaptive", &self.adaptive)
            .field("classifier", &self.classifier)
            .field("listeners", &self.listeners)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::Aimd;

    #[test]
    fn defaults() {
        let layer = BulkheadLayer::builder().build().unwrap();
        let handle = layer.handle();
        assert_eq!(handle.limit(), DEFAULT_MAX_CONCURRENT);
        assert_eq!(handle.available(), DEFAULT_MAX_CONCURRENT);
        assert_eq!(handle.in_flight(), 0);
        assert_eq!(handle.waiting(), 0);
        assert_eq!(handle.name().as_str(), "bulkhead");
    }

    #[test]
    fn errors_name_the_field() {
        let err = BulkheadLayer::builder()
            .max_concurrent(0)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_concurrent");
        let err = BulkheadLayer::builder()
            .backpressure(true)
            .max_wait(Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_wait");
        let err = BulkheadLayer::builder()
            .max_concurrent(3)
            .adaptive(Aimd::default())
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "max_concurrent");
        let err = BulkheadLayer::builder().name("a b").build().unwrap_err();
        assert_eq!(err.field(), "name");
    }

    #[test]
    fn adaptive_accepts_the_largest_limit() {
        use crate::limit::{Gradient2, Vegas};
        let vegas = Vegas::builder()
            .initial_limit(MAX_LIMIT)
            .max_limit(MAX_LIMIT)
            .build()
            .unwrap();
        let layer = BulkheadLayer::builder().adaptive(vegas).build().unwrap();
        assert_eq!(layer.handle().limit(), MAX_LIMIT);
        let gradient = Gradient2::builder()
            .initial_limit(MAX_LIMIT)
            .max_limit(MAX_LIMIT)
            .build()
            .unwrap();
        let layer = BulkheadLayer::builder().adaptive(gradient).build().unwrap();
        assert_eq!(layer.handle().limit(), MAX_LIMIT);
    }

    #[test]
    fn adaptive_starts_at_initial_limit() {
        let layer = BulkheadLayer::builder()
            .adaptive(Aimd::builder().initial_limit(7).build().unwrap())
            .build()
            .unwrap();
        assert_eq!(layer.handle().limit(), 7);
    }
}
