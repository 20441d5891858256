use crate::{
    context::{NoContext, WithRequest},
    handler::{FromFn, FromService},
    layer::{ErrorPredicate, Shared, WarnEvery},
    Failed, FallbackEvent, FallbackLayer,
};
use seawall_core::{
    classify::DefaultClassifier, error, BoxError, ConfigError, Listener, Listeners, Name,
};
use std::{error::Error, fmt, sync::Arc};

/// Builds a [`FallbackLayer`]; see [`FallbackLayer::builder`].
///
/// `C` is the classifier for responses ([`on_response`](Self::on_response)), `X` what the layer
/// takes from each request ([`with_request`](Self::with_request); nothing by default).
pub struct FallbackBuilder<C = DefaultClassifier, X = NoContext> {
    name: Option<String>,
    errors: Option<Vec<ErrorPredicate>>,
    classifier: C,
    listeners: Listeners<FallbackEvent>,
    context: X,
}

impl FallbackBuilder {
    pub(crate) fn new() -> Self {
        FallbackBuilder {
            name: None,
            errors: None,
            classifier: DefaultClassifier,
            listeners: Listeners::new(),
            context: NoContext,
        }
    }
}

impl<C, X> FallbackBuilder<C, X> {
    /// The policy instance name for events and metrics. Default `"fallback"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Handle errors of type `T` found anywhere in the error's source chain.
    ///
    /// Replaces the default of handling every error; combine with further `on_error_type` and
    /// [`on_error`](Self::on_error) calls to handle several kinds. Like every rule, it is matched
    /// against readiness errors of the inner service too, in `poll_ready` (see
    /// [`on_error`](Self::on_error)).
    pub fn on_error_type<T: Error + 'static>(self) -> Self {
        self.on_error(|e: &(dyn Error + 'static)| error::is::<T>(e))
    }

    /// Handle errors for which `predicate` returns `true`.
    ///
    /// Replaces the default of handling every error; predicates added this way and with
    /// [`on_error_type`](Self::on_error_type) are alternatives (any match handles the error).
    ///
    /// The predicate runs in the call's future for a call's error, and in `poll_ready` for a
    /// readiness error of the inner service, to decide whether the layer keeps that error (see
    /// [`Fallback`](crate::Fallback)). `poll_ready` need not run in the caller's task: behind a
    /// `tower::buffer::Buffer` it runs in the buffer's worker, and a panic there ends the worker,
    /// failing every later call on every clone. So the predicate must not panic: test what it
    /// reads (`downcast_ref`, `source()`) rather than unwrap it.
    pub fn on_error<P>(mut self, predicate: P) -> Self
    where
        P: Fn(&(dyn Error + 'static)) -> bool + Send + Sync + 'static,
    {
        self.errors
            .get_or_insert_with(Vec::new)
            .push(Arc::new(predicate));
        self
    }

    /// Handle every error (the default).
    pub fn on_any_error(mut self) -> Self {
        self.errors = None;
        self
    }

    /// Let every error pass through; only responses classified as failures are handled.
    pub fn ignore_errors(mut self) -> Self {
        self.errors = Some(Vec::new());
        self
    }

    /// Handle responses that `classifier` calls a [failure](seawall_core::Outcome::Failure)
    /// (for example [`HttpClassifier`](seawall_core::classify::HttpClassifier): 5xx and 429).
    ///
    /// The classifier sees `Ok` results only; errors are matched by the `on_error*` rules.
    pub fn on_response<C2>(self, classifier: C2) -> FallbackBuilder<C2, X> {
        FallbackBuilder {
            name: self.name,
            errors: self.errors,
            classifier,
            listeners: self.listeners,
            context: self.context,
        }
    }

    /// Captures a context from each request for the fallback: the key of a cache, or a copy of the
    /// request to send to a secondary region where requests can be copied — `Req: Clone` on a stack
    /// of messages (gRPC above the generated client), or a body that clones cheaply
    /// (`Full<Bytes>`). Over a streaming body (hyper's `Incoming`, a tonic body) capture the method,
    /// URI and headers; the body cannot be copied from `&Req`. See
    /// [The request's context](crate#the-requests-context).
    ///
    /// `capture` runs once per call, in `call`, before the request goes to the inner service —
    /// for every call, as whether the call will fail is not known yet, so keep it cheap (clone a
    /// `Uri` or a header, not a body). On a failure the fallback receives the context with what
    /// failed. This includes calls answered from the fallback after a readiness error of the inner
    /// service: each takes its context from its own request. After `with_request`,
    /// [`build_fn`](FallbackBuilder::build_fn) takes a closure `Fn(Failed<Res>, Ctx)`, and
    /// [`build_service`](FallbackBuilder::build_service) a service of
    /// [`FailedCall<Res, Ctx>`](crate::FailedCall) requests. When no fallback is needed, the
    /// context is dropped with the call's future.
    ///
    /// A panic in `capture` fails only its own call, in the caller's task: it is caught in `call`
    /// and resumed when the call's future is first polled, as a panic in the fallback would be.
    /// `call` may run elsewhere — behind a `tower::buffer::Buffer` it runs in the buffer's worker,
    /// which a panic there would end for every caller. The request is dropped without calling the
    /// inner service, and what its `poll_ready` reserved for the call (a bulkhead's permit, a
    /// HalfOpen breaker's probe) is given back at once: the ready inner service is replaced with a
    /// clone of it, which holds nothing. So with `with_request` the inner service must be `Clone`
    /// (as a `Buffer`, a `BoxCloneService` and seawall's layers over a `Clone` service are).
    ///
    /// Annotate the closure's argument (`|req: &http::Request<B>| ...`): the layer is built before
    /// it knows its request type. A later `with_request` replaces an earlier one.
    pub fn with_request<F, Req, Ctx>(self, capture: F) -> FallbackBuilder<C, WithRequest<F>>
    where
        F: Fn(&Req) -> Ctx,
    {
        FallbackBuilder {
            name: self.name,
            errors: self.errors,
            classifier: self.classifier,
            listeners: self.listeners,
            context: WithRequest::new(capture),
        }
    }

    /// Adds a listener called on every [`FallbackEvent`].
    pub fn on_event(mut self, listener: impl Listener<FallbackEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    fn build<H>(self, handler: H) -> Result<FallbackLayer<H, C, X>, ConfigError> {
        let name = match self.name {
            Some(name) => Name::validate("name", &name)?,
            None => Name::default_for("fallback"),
        };
        let shared = Arc::new(Shared {
            handler,
            classifier: self.classifier,
            errors: self.errors.map(Vec::into_boxed_slice),
            name,
            listeners: self.listeners,
            inner_failed: WarnEvery::new(),
        });
        Ok(FallbackLayer::from_parts(shared, self.context))
    }
}

impl<C> FallbackBuilder<C> {
    /// Builds the layer with a synchronous fallback.
    ///
    /// The closure is taken as one that answers on its own and sends no request: when it fails
    /// over a call that was never sent (a breaker's `Open`, a bulkhead's `Full`), the
    /// [`FallbackFailed`] keeps the call never sent, so a retry above may still send it, even a
    /// POST. A fallback that sends the request elsewhere, even from a synchronous closure (a
    /// blocking client, a copy spawned off), is a service:
    /// `build_service(service_fn(..))` (see [`build_service`](Self::build_service)), whose failure
    /// over a call never sent makes the call one that may have been sent. A closure whose error
    /// is a [`SentEarlier`] (or has one in its chain) makes it so too.
    ///
    /// [`FallbackFailed`]: crate::FallbackFailed
    /// [`SentEarlier`]: seawall_core::error::SentEarlier
    pub fn build_fn<F, Res>(self, fallback: F) -> Result<FallbackLayer<FromFn<F>, C>, ConfigError>
    where
        F: Fn(Failed<Res>) -> Result<Res, BoxError>,
    {
        self.build(FromFn(fallback))
    }

    /// Builds the layer with a fallback service, called with a [`Failed`] request.
    pub fn build_service<T>(
        self,
        fallback: T,
    ) -> Result<FallbackLayer<FromService<T>, C>, ConfigError> {
        self.build(FromService::new(fallback))
    }
}

impl<C, G> FallbackBuilder<C, WithRequest<G>> {
    /// Builds the layer with a synchronous fallback that receives what failed and the context
    /// [`with_request`](Self::with_request) captured from the call's request.
    ///
    /// As without the context, the closure is taken as one that sends no request: its failure
    /// over a call that was never sent keeps the call never sent, unless its error is marked
    /// [`SentEarlier`](seawall_core::error::SentEarlier) (see
    /// [`FallbackFailed`](crate::FallbackFailed)). A closure that sends belongs in
    /// [`build_service`](Self::build_service).
    pub fn build_fn<F, Req, Ctx, Res>(
        self,
        fallback: F,
    ) -> Result<FallbackLayer<FromFn<F>, C, WithRequest<G>>, ConfigError>
    where
        G: Fn(&Req) -> Ctx,
        F: Fn(Failed<Res>, Ctx) -> Result<Res, BoxError>,
    {
        self.build(FromFn(fallback))
    }

    /// Builds the layer with a fallback service, called with a [`FailedCall`](crate::FailedCall)
    /// request: what failed, and the context [`with_request`](Self::with_request) captured from the
    /// call's request.
    pub fn build_service<T>(
        self,
        fallback: T,
    ) -> Result<FallbackLayer<FromService<T>, C, WithRequest<G>>, ConfigError> {
        self.build(FromService::new(fallback))
    }
}

impl<C: fmt::Debug, X: fmt::Debug> fmt::Debug for FallbackBuilder<C, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FallbackBuilder")
            .field("name", &self.name)
            .field("error_rules", &self.errors.as_ref().map(Vec::len))
            .field("classifier", &self.classifier)
            .field("listeners", &self.listeners)
            .field("context", &self.context)
            .finish()
    }
}
