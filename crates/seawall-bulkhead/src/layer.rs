use crate::{
    config::BulkheadConfigBuilder,
    release::OnResponse,
    state::{BulkheadHandle, Shared},
    Bulkhead,
};
use seawall_core::{classify::DefaultClassifier, Name};
use std::{fmt, marker::PhantomData, sync::Arc};
use tower_layer::Layer;

/// Applies a [`Bulkhead`] to every service it wraps.
///
/// One layer instance is one bulkhead: the services it makes, and their clones, share one set of
/// permits, one limit and one set of metric handles. Build it with [`BulkheadLayer::builder`].
pub struct BulkheadLayer<C = DefaultClassifier, R = OnResponse> {
    shared: Arc<Shared>,
    classifier: Arc<C>,
    _release: PhantomData<fn() -> R>,
}

impl BulkheadLayer {
    /// Starts a builder; see the [crate docs](crate) for the options and their defaults.
    pub fn builder() -> BulkheadConfigBuilder {
        BulkheadConfigBuilder::new()
    }
}

impl<C, R> BulkheadLayer<C, R> {
    pub(crate) fn from_parts(shared: Arc<Shared>, classifier: C) -> Self {
        BulkheadLayer {
            shared,
            classifier: Arc::new(classifier),
            _release: PhantomData,
        }
    }

    pub(crate) fn parts(&self) -> (Arc<Shared>, Arc<C>) {
        (self.shared.clone(), self.classifier.clone())
    }

    /// A handle on this bulkhead's current limit, free permits, calls in flight and waiting.
    pub fn handle(&self) -> BulkheadHandle {
        BulkheadHandle {
            shared: self.shared.clone(),
        }
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }
}

impl<S, C, R> Layer<S> for BulkheadLayer<C, R> {
    type Service = Bulkhead<S, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead::new(inner, self)
    }
}

impl<C, R> Clone for BulkheadLayer<C, R> {
    fn clone(&self) -> Self {
        BulkheadLayer {
            shared: self.shared.clone(),
            classifier: self.classifier.clone(),
            _release: PhantomData,
        }
    }
}

impl<C, R> fmt::Debug for BulkheadLayer<C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}
