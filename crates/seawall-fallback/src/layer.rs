use crate::{config::FallbackBuilder, context::NoContext, Fallback, FallbackEvent};
use seawall_core::{Listeners, Name};
use std::{
    error::Error,
    fmt,
    sync::{atomic::AtomicBool, Arc},
};
use tower_layer::Layer;

pub(crate) type ErrorPredicate = Arc<dyn Fn(&(dyn Error + 'static)) -> bool + Send + Sync>;

/// Applies a [`Fallback`] to every service it wraps.
///
/// `H` is the fallback handler ([`FromFn`](crate::FromFn) or [`FromService`](crate::FromService)),
/// `C` the classifier for responses, `X` what the layer takes from each request
/// ([`NoContext`](crate::NoContext), or [`WithRequest`](crate::WithRequest) after
/// [`with_request`](FallbackBuilder::with_request)). One layer instance is one policy: the
/// services it produces, and their clones, share its handler, rules, listeners, name and context
/// closure.
pub struct FallbackLayer<H, C, X = NoContext> {
    shared: Arc<Shared<H, C>>,
    context: X,
}

pub(crate) struct Shared<H, C> {
    pub(crate) handler: H,
    pub(crate) classifier: C,
    /// `None` handles every error; otherwise an error is handled when any predicate matches.
    pub(crate) errors: Option<Box<[ErrorPredicate]>>,
    pub(crate) name: Name,
    pub(crate) listeners: Listeners<FallbackEvent>,
    /// Whether a service of the layer kept a readiness error yet: the first is logged at `warn`,
    /// later ones at `debug`.
    pub(crate) inner_failed: AtomicBool,
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

impl<H, C, X> FallbackLayer<H, C, X> {
    pub(crate) fn from_parts(shared: Arc<Shared<H, C>>, context: X) -> Self {
        FallbackLayer { shared, context }
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }
}

impl<H, C, X: Clone> Clone for FallbackLayer<H, C, X> {
    fn clone(&self) -> Self {
        FallbackLayer {
            shared: self.shared.clone(),
            context: self.context.clone(),
        }
    }
}

impl<S, H, C, X: Clone> Layer<S> for FallbackLayer<H, C, X> {
    type Service = Fallback<S, H, C, X>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback::from_parts(inner, self.shared.clone(), self.context.clone())
    }
}

impl<H, C, X: fmt::Debug> fmt::Debug for FallbackLayer<H, C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.shared
            .debug_fields(f, "FallbackLayer")
            .field("context", &self.context)
            .finish()
    }
}

impl<H, C> Shared<H, C> {
    /// The policy's fields, for the `Debug` output of the layer and its services.
    pub(crate) fn debug_fields<'a, 'b>(
        &self,
        f: &'a mut fmt::Formatter<'b>,
        name: &str,
    ) -> fmt::DebugStruct<'a, 'b> {
        let mut d = f.debug_struct(name);
        d.field("name", &self.name)
            .field("handler", &std::any::type_name::<H>())
            .field("classifier", &std::any::type_name::<C>())
            .field("error_rules", &self.errors.as_ref().map(|p| p.len()))
            .field("listeners", &self.listeners);
        d
    }
}

impl<H, C> fmt::Debug for Shared<H, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.debug_fields(f, "FallbackLayer").finish()
    }
}
