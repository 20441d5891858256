use seawall_core::{error, BoxError, RequestDeadline};
use std::{
    error::Error,
    fmt,
    future::{ready, Future, Ready},
    sync::{Arc, Mutex, PoisonError},
};
use tower::{util::Oneshot, ServiceExt};
use tower_service::Service;

/// What failed, as handed to a fallback.
pub enum Failed<Res> {
    /// The call failed with this error.
    Error(Arc<dyn Error + Send + Sync>),
    /// The call answered with a response the classifier called a failure.
    Response(Res),
}

impl<Res> Failed<Res> {
    /// The error, if the call failed with one.
    pub fn error(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        match self {
            Failed::Error(e) => Some(&**e),
            Failed::Response(_) => None,
        }
    }

    /// Whether the call failed with an error of type `T` (anywhere in the source chain).
    pub fn is<T: Error + 'static>(&self) -> bool {
        self.error().is_some_and(|e| error::is::<T>(e))
    }

    /// The failed response, if the call answered with one.
    pub fn response(&self) -> Option<&Res> {
        match self {
            Failed::Response(r) => Some(r),
            Failed::Error(_) => None,
        }
    }

    /// Takes the failed response, if the call answered with one.
    pub fn into_response(self) -> Option<Res> {
        match self {
            Failed::Response(r) => Some(r),
            Failed::Error(_) => None,
        }
    }
}

/// A failed call carries no deadline: a `TimeoutLayer` around a fallback service bounds the
/// fallback on its own, whatever time the original call used.
impl<Res> RequestDeadline for Failed<Res> {}

impl<Res> fmt::Debug for Failed<Res> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failed::Error(e) => f.debug_tuple("Error").field(e).finish(),
            Failed::Response(_) => f.debug_tuple("Response").finish_non_exhaustive(),
        }
    }
}

/// Produces the answer for a failed call.
///
/// Implemented by [`FromFn`] (a synchronous closure) and [`FromService`] (an async service);
/// the builder's `build_fn` and `build_service` wrap them for you.
pub trait FallbackHandler<Res> {
    /// The fallback's error.
    type Error: Into<BoxError>;
    /// The fallback's answer.
    type Future: Future<Output = Result<Res, Self::Error>>;

    /// Answers for a failed call.
    fn handle(&self, failed: Failed<Res>) -> Self::Future;
}

/// A fallback from a synchronous closure.
///
/// The closure is shared by every service of the layer, so those services are `Send` when it is
/// `Send + Sync` (a closure that captures no `Cell` or `RefCell`).
#[derive(Clone, Copy)]
pub struct FromFn<F>(pub(crate) F);

impl<F, Res> FallbackHandler<Res> for FromFn<F>
where
    F: Fn(Failed<Res>) -> Result<Res, BoxError>,
{
    type Error = BoxError;
    type Future = Ready<Result<Res, BoxError>>;

    fn handle(&self, failed: Failed<Res>) -> Self::Future {
        ready((self.0)(failed))
    }
}

impl<F> fmt::Debug for FromFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FromFn")
    }
}

/// A fallback from a service that takes [`Failed`] requests.
///
/// Each fallback call clones the service and drives the clone to readiness (a
/// [`oneshot`](tower::ServiceExt::oneshot)), so the fallback service is never called unready.
///
/// The service is kept behind a lock, taken only to clone it for a fallback call: a service that
/// is `Send` but not `Sync` (a [`BoxCloneService`](tower::util::BoxCloneService)) still gives a
/// layer and services that are `Send + Sync`.
pub struct FromService<T>(Mutex<T>);

impl<T> FromService<T> {
    pub(crate) fn new(service: T) -> Self {
        FromService(Mutex::new(service))
    }

    /// A clone of the service. A panic in a clone left the lock poisoned, not the service.
    fn service(&self) -> T
    where
        T: Clone,
    {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl<T, Res> FallbackHandler<Res> for FromService<T>
where
    T: Service<Failed<Res>, Response = Res> + Clone,
    T::Error: Into<BoxError>,
{
    type Error = T::Error;
    type Future = Oneshot<T, Failed<Res>>;

    fn handle(&self, failed: Failed<Res>) -> Self::Future {
        self.service().oneshot(failed)
    }
}

impl<T: Clone> Clone for FromService<T> {
    fn clone(&self) -> Self {
        FromService::new(self.service())
    }
}

impl<T: fmt::Debug> fmt::Debug for FromService<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let service = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_tuple("FromService").field(&*service).finish()
    }
}
