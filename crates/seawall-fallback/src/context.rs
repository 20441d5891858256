//! What a fallback may take from the request: nothing by default, or what a closure given to
//! [`with_request`](crate::FallbackBuilder::with_request) captures in `call`, before the request
//! goes to the inner service, as Hystrix's `getFallback()` reads the arguments the command was
//! built with.
//!
//! Polly's `ResilienceContext` is not captured: the caller creates it and passes it to each
//! execution, and the fallback reads it there. The equivalent here is a request extension the
//! caller sets, taken with `with_request(|r: &Request<B>| r.extensions().get::<T>().cloned())`.

use std::{
    any::Any,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
};

/// A layer that takes nothing from the request: its fallback receives only what failed.
///
/// The default for [`FallbackBuilder`](crate::FallbackBuilder), [`FallbackLayer`](crate::FallbackLayer)
/// and [`Fallback`](crate::Fallback); it costs nothing per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoContext;

/// A layer that captures a context from each request with a closure `Fn(&Req) -> Ctx`; see
/// [`with_request`](crate::FallbackBuilder::with_request).
///
/// The closure is shared by the layer, its services and their clones.
pub struct WithRequest<F>(Arc<F>);

impl<F> WithRequest<F> {
    pub(crate) fn new(capture: F) -> Self {
        WithRequest(Arc::new(capture))
    }

    /// Captures the context of one request, or catches the closure's panic for the call's future
    /// to resume.
    ///
    /// `AssertUnwindSafe`: after a panic the request is dropped unused, and the closure serves
    /// later requests with its captures as the panic left them, as it would if the panic had
    /// ended the caller's task instead (a `Mutex` among them is poisoned either way).
    #[inline]
    pub(crate) fn capture<Req, Ctx>(&self, req: &Req) -> Result<Captured<Ctx>, Panic>
    where
        F: Fn(&Req) -> Ctx,
    {
        catch_unwind(AssertUnwindSafe(|| (self.0)(req))).map(Captured)
    }
}

impl<F> Clone for WithRequest<F> {
    fn clone(&self) -> Self {
        WithRequest(self.0.clone())
    }
}

impl<F> fmt::Debug for WithRequest<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WithRequest")
    }
}

/// The payload of a panic in a [`with_request`](crate::FallbackBuilder::with_request) closure.
pub(crate) type Panic = Box<dyn Any + Send>;

/// The context [`with_request`](crate::FallbackBuilder::with_request) captured from one call's
/// request, held by the call's [`ResponseFuture`](crate::ResponseFuture) until a failure hands it
/// to the fallback.
pub struct Captured<Ctx>(pub(crate) Ctx);

impl<Ctx: fmt::Debug> fmt::Debug for Captured<Ctx> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Captured").field(&self.0).finish()
    }
}
