use crate::{config::FallbackBuilder, Fallback, FallbackEvent};
use seawall_core::{Listeners, Name};
use std::{error::Error, fmt, sync::Arc};
use tower_layer::Layer;

pub(crate) type ErrorPredicate = Arc<dyn Fn(&(dyn Error + 'static)) -> bool + Send + Sync>;

/// Applies a [`Fallback`] to every service it wraps.
///
/// `H` is the fallback handler ([`FromFn`](crate::FromFn) or [`FromService`](crate::FromService)),
/// `C` the classifier for responses. One layer instance is one policy: the services it produces,
/// and their clones, share its handler, rules, listeners and metric handles.
pub struct FallbackLayer<H, C> {
    shared: Arc<Shared<H, C>>,
}

pub(crate) struct Shared<H, C> {
    pub(crate) handler: H,
    pub(crate) classifier: C,
    /// `None` handles every error; otherwise an error is handled when any predicate matches.
    pub(crate) errors: Option<Box<[ErrorPredicate]>>,
    pub(crate) name: Name,
    pub(crate) listeners: Listeners<FallbackEvent>,
}

impl<H, C> Shared<H, C> {
    pub(crate) fn handles(&self, err: &(dyn Error + 'static)) -> bool {
        match &self.errors {
            None => true,
            Some(predicates) => predicates.iter().any(|p| p(err)),
        }
    }
}

impl FallbackLayer<(), ()> {
    /// Starts a builder: choose what to handle, then `build_fn` or `build_service`.
    pub fn builder() -> FallbackBuilder {
        FallbackBuilder::new()
    }
}

impl<H, C> FallbackLayer<H, C> {
    pub(crate) fn from_shared(shared: Arc<Shared<H, C>>) -> Self {
        FallbackLayer { shared }
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }
}

impl<H, C> Clone for FallbackLayer<H, C> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
        }
    }
}

impl<S, H, C> Layer<S> for FallbackLayer<H, C> {
    type Service = Fallback<S, H, C>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::from_shared(inner, self.shared.clone())
    }
}

impl<H, C> fmt::Debug for FallbackLayer<H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl<H, C> fmt::Debug for Shared<H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackLayer")
            .field("name", &self.name)
            .field("handler", &std::any::type_name::<H>())
            .field("classifier", &std::any::type_name::<C>())
            .field("error_rules", &self.errors.as_ref().map(|p| p.len()))
            .field("listeners", &self.listeners)
            .finish()
    }
}
