use crate::{config::FallbackBuilder, context::NoContext, Fallback, FallbackEvent};
use seawall_core::{Listeners, Name};
use std::{
    error::Error,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;
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
    /// When a service of the layer last logged a kept readiness error at `warn`.
    pub(crate) inner_failed: WarnEvery,
}

/// How often a layer logs its services' kept readiness errors at `warn`: at most once per
/// [`WARN_EVERY`]; the others are logged at `debug`.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(60);

/// When a layer last warned, as milliseconds after `since`, plus one (0: never).
#[derive(Debug)]
pub(crate) struct WarnEvery {
    since: Instant,
    last: AtomicU64,
}

impl WarnEvery {
    pub(crate) fn new() -> Self {
        WarnEvery {
            since: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Whether this report is logged at `warn`: the layer's first, or the first [`WARN_EVERY`]
    /// or more after the last one that was.
    pub(crate) fn warn_now(&self) -> bool {
        let now = u64::try_from(self.since.elapsed().as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        let last = self.last.load(Ordering::Relaxed);
        let every = WARN_EVERY.as_millis() as u64;
        (last == 0 || now.saturating_sub(last) >= every)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
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
