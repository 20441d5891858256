//! [`BreakerLayer`]: one circuit breaker, shared by every service it builds.

use crate::{
    config::{BreakerConfig, BreakerConfigBuilder},
    handle::BreakerHandle,
    service::Breaker,
    shared::Shared,
};
use seawall_core::{classify::DefaultClassifier, Name};
use std::{fmt, sync::Arc};
use tower_layer::Layer;

/// Wraps services in a circuit breaker.
///
/// One layer is one breaker: every service it builds, and every clone of those, shares the same
/// state. Build the layer once per dependency you protect (not per request, not per clone).
///
/// `C` classifies each finished call as success, failure or ignored; see
/// [`seawall_core::classify`].
#[derive(Clone)]
pub struct BreakerLayer<C = DefaultClassifier> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) classifier: C,
}

impl BreakerLayer {
    /// A breaker with every default (see the table in the [crate docs](crate)).
    pub fn new() -> Self {
        BreakerConfig::builder()
            .build()
            .expect("the default configuration is valid")
    }

    /// A builder for a breaker.
    pub fn builder() -> BreakerConfigBuilder {
        BreakerConfig::builder()
    }
}

impl Default for BreakerLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<C> BreakerLayer<C> {
    /// A new breaker following `config`, classifying outcomes with `classifier`.
    pub fn from_config(config: BreakerConfig, classifier: C) -> Self {
        BreakerLayer {
            shared: Shared::new(&config),
            classifier,
        }
    }

    /// The same breaker with another classifier (both layers share one state).
    pub fn with_classifier<C2>(self, classifier: C2) -> BreakerLayer<C2> {
        BreakerLayer {
            shared: self.shared,
            classifier,
        }
    }

    /// A handle on this breaker: state, metrics snapshot, manual control.
    pub fn handle(&self) -> BreakerHandle {
        BreakerHandle {
            shared: self.shared.clone(),
        }
    }

    /// The breaker's name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }
}

impl<S, C: Clone> Layer<S> for BreakerLayer<C> {
    type Service = Breaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Breaker::from_parts(inner, self.shared.clone(), self.classifier.clone())
    }
}

impl<C> fmt::Debug for BreakerLayer<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BreakerLayer")
            .field("breaker", &self.shared)
            .finish_non_exhaustive()
    }
}
