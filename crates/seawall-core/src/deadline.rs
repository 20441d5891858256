//! Request deadlines: what a timeout writes and the layers beneath it read.
//!
//! A timeout layer computes the request's effective deadline (the earlier of its own and any
//! deadline the request already carries), enforces it, and writes it back on the request. A layer
//! further in (a per-try timeout under a retry, the retry itself, hedging) reads it, so no inner
//! timeout outlives an outer one and no retry starts an attempt that cannot finish in time.
//!
//! Requests carry deadlines through [`RequestDeadline`]. It is implemented for
//! [`http::Request`] (the values live in the request's extensions, which is also how tonic requests
//! reach a tower service); a type from another crate, such as `reqwest::Request`, travels in a
//! [`WithDeadline`]; other request types implement it themselves:
//!
//! ```
//! use seawall_core::deadline::RequestDeadline;
//! use tokio::time::Instant;
//!
//! struct Query { sql: String, deadline: Option<Instant> }
//!
//! impl RequestDeadline for Query {
//!     fn deadline(&self) -> Option<Instant> { self.deadline }
//!     fn set_deadline(&mut self, deadline: Instant) { self.deadline = Some(deadline) }
//! }
//!
//! // A request type that carries nothing: every method has a default.
//! struct Ping;
//! impl RequestDeadline for Ping {}
//! ```
//!
//! Requests of ordinary std types implement it already, carrying nothing, so they need no `impl`:
//! `()`, `bool`, `char`, the integers, `String`, `&'static str`, `str`, `Vec<T>` and `[T]`.
//! `Arc<T>` and `Rc<T>` implement it for any `T` that does, reading the deadline and overrides
//! `T` carries; a shared request cannot have a deadline written into it, so they take no new one.
//! A timeout over such requests applies its own duration (capped by, or replaced with, what a
//! shared `T` carries), and the deadline it computes reaches no layer under it: a per-try timeout,
//! a retry or a hedge there does not see it, so a retry may start an attempt the timeout above
//! then cuts. Wrap them in a [`WithDeadline`] to propagate the deadline.
//!
//! Per-request overrides: a caller puts a [`TimeoutOverride`] on a request to replace the timeout
//! layer's duration for that one request (a longer budget for a report, a shorter one for a
//! health probe). Every timeout layer that honors overrides reads it (by default all do; a per-try
//! timeout under a retry should not). A [`Deadline`] already on the request still caps it.
//!
//! A [`PerTryTimeoutOverride`] does the same for the timeout of each attempt under a retry (a
//! per-try timeout, a retry's per-attempt timeout), and is read only there: one slow method can
//! be given longer attempts without lifting the per-try timeout of every other, as Envoy's
//! per-route `per_try_timeout` does. The call's deadline still bounds every attempt where a layer
//! further out enforces it (the total timeout, a `ClientStack`); a retry's per-attempt timeout
//! enforces it itself.

use std::{rc::Rc, sync::Arc, time::Duration};
use tokio::time::Instant;

/// The instant by which a request must be answered, as stored in [`http::Request`] extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(pub Instant);

/// A timeout for one request that replaces the timeout layer's own duration.
///
/// Read by every timeout layer the request passes through that honors overrides (all do by
/// default, but a per-try one), so it is meant for the total timeout; a per-try timeout under a retry should not
/// honor it (it reads a [`PerTryTimeoutOverride`] instead).
///
/// ```
/// use seawall_core::deadline::TimeoutOverride;
/// use std::time::Duration;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(TimeoutOverride(Duration::from_secs(30)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimeoutOverride(pub Duration);

/// A timeout for each attempt of one request, replacing the per-try timeout's own duration.
///
/// Read only by the layers that time one attempt under a retry: a per-try timeout
/// (`TimeoutLayer::per_try`) and a retry's per-attempt timeout. Those already configured with a
/// timeout use this one instead, longer or shorter; a layer with no per-attempt timeout does not
/// start one for it, as a [`TimeoutOverride`] does not add a timeout where there is none. The
/// total timeout ignores it. The call's [`Deadline`] still bounds every attempt where a layer
/// further out enforces it (the total timeout, a `ClientStack`): a per-try timeout leaves it to
/// that layer. A retry's per-attempt timeout enforces it itself.
///
/// `Duration::MAX` gives each attempt no timeout of its own (only the call's deadline, as above,
/// bounds it). `Duration::ZERO` is ignored, and the layer's own duration applies: a zero timeout would
/// cut every attempt not ready on its first poll, charging healthy endpoints failures and
/// spending the retry budget (a retry's `per_attempt_timeout` rejects zero for the same reason).
///
/// ```
/// use seawall_core::deadline::{PerTryTimeoutOverride, RequestDeadline};
/// use std::time::Duration;
///
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(PerTryTimeoutOverride(Duration::from_secs(10)));
/// assert_eq!(request.per_try_timeout_override(), Some(Duration::from_secs(10)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PerTryTimeoutOverride(pub Duration);

/// Access to the deadline and timeout overrides a request carries.
///
/// Every method has a default that carries nothing, so `impl RequestDeadline for MyRequest {}` is
/// enough for a request type that does not take part in propagation.
///
/// Implemented for [`http::Request`], for [`WithDeadline`], for a `Box` of any type that
/// implements it (which it forwards to), for an `Arc` or `Rc` of one (which forwards the reads and
/// ignores [`set_deadline`](RequestDeadline::set_deadline): a shared request cannot be written),
/// and, carrying nothing, for ordinary std request types: `()`, `bool`, `char`, the integers,
/// `String`, `&'static str`, `str`, `Vec<T>` and `[T]`. Over these std types, shared or not, a timeout
/// propagates nothing (see the [module docs](self)); wrap them in a [`WithDeadline`] to propagate
/// a deadline.
///
/// ```
/// use seawall_core::deadline::RequestDeadline;
///
/// fn carries_none(request: impl RequestDeadline) -> bool {
///     request.deadline().is_none() && request.timeout_override().is_none()
/// }
/// assert!(carries_none(42u32));
/// assert!(carries_none(String::from("GET /users")));
/// ```
pub trait RequestDeadline {
    /// The deadline the request already carries, if any.
    fn deadline(&self) -> Option<Instant> {
        None
    }

    /// Stores `deadline` on the request for inner layers to read.
    fn set_deadline(&mut self, deadline: Instant) {
        let _ = deadline;
    }

    /// A timeout for this request that replaces the layer's own, if any.
    fn timeout_override(&self) -> Option<Duration> {
        None
    }

    /// A timeout for each attempt of this request that replaces the per-try timeout's own, if
    /// any; see [`PerTryTimeoutOverride`].
    fn per_try_timeout_override(&self) -> Option<Duration> {
        None
    }
}

impl<B> RequestDeadline for http::Request<B> {
    #[inline]
    fn deadline(&self) -> Option<Instant> {
        self.extensions().get::<Deadline>().map(|d| d.0)
    }

    /// Overwrites a deadline already on the request in place; otherwise inserts one, which
    /// allocates the extension map if the request has no extensions yet.
    #[inline]
    fn set_deadline(&mut self, deadline: Instant) {
        match self.extensions_mut().get_mut::<Deadline>() {
            Some(existing) => existing.0 = deadline,
            None => {
                self.extensions_mut().insert(Deadline(deadline));
            }
        }
    }

    #[inline]
    fn timeout_override(&self) -> Option<Duration> {
        self.extensions().get::<TimeoutOverride>().map(|t| t.0)
    }

    #[inline]
    fn per_try_timeout_override(&self) -> Option<Duration> {
        self.extensions()
            .get::<PerTryTimeoutOverride>()
            .map(|t| t.0)
    }
}

impl<T: RequestDeadline + ?Sized> RequestDeadline for Box<T> {
    fn deadline(&self) -> Option<Instant> {
        (**self).deadline()
    }

    fn set_deadline(&mut self, deadline: Instant) {
        (**self).set_deadline(deadline)
    }

    fn timeout_override(&self) -> Option<Duration> {
        (**self).timeout_override()
    }

    fn per_try_timeout_override(&self) -> Option<Duration> {
        (**self).per_try_timeout_override()
    }
}

/// Implements [`RequestDeadline`] with its defaults, carrying nothing, for each type given.
macro_rules! carries_no_deadline {
    ($($t:ty),* $(,)?) => {
        $(
            /// Carries no deadline and no override: only a timeout's own duration applies to it,
            /// and nothing is propagated to the layers under that timeout. Wrap it in a
            /// [`WithDeadline`] for that.
            impl RequestDeadline for $t {}
        )*
    };
}

carries_no_deadline!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    String,
    &'static str,
);

/// Carries no deadline and no override: only a timeout's own duration applies to it, and nothing
/// is propagated to the layers under that timeout. Wrap it in a [`WithDeadline`] for that.
impl<T> RequestDeadline for Vec<T> {}

/// Carries no deadline and no override: only a timeout's own duration applies to it, and nothing
/// is propagated to the layers under that timeout. Wrap it in a [`WithDeadline`] for that. (So an
/// `Arc<str>` or `Box<[T]>` request carries none either.)
impl RequestDeadline for str {}

/// Carries no deadline and no override, as [`Vec<T>`] does.
impl<T> RequestDeadline for [T] {}

/// Implements [`RequestDeadline`] for a shared pointer: reads go to the shared request, and writes
/// are dropped, since nothing can be written into a request others may hold.
macro_rules! shared_reads_only {
    ($($ptr:ident),* $(,)?) => {
        $(
            /// Reads the deadline and the overrides the shared `T` carries. Nothing can be written
            /// into a shared request, so
            /// [`set_deadline`](RequestDeadline::set_deadline) does nothing: a timeout over it
            /// applies its own duration, but the deadline it computes reaches no layer under it,
            /// which still sees `T`'s own. Wrap it in a [`WithDeadline`] to propagate one.
            impl<T: RequestDeadline + ?Sized> RequestDeadline for $ptr<T> {
                #[inline]
                fn deadline(&self) -> Option<Instant> {
                    (**self).deadline()
                }

                #[inline]
                fn timeout_override(&self) -> Option<Duration> {
                    (**self).timeout_override()
                }

                #[inline]
                fn per_try_timeout_override(&self) -> Option<Duration> {
                    (**self).per_try_timeout_override()
                }
            }
        )*
    };
}

shared_reads_only!(Arc, Rc);

/// Carries a deadline and timeout overrides next to a request of any type.
///
/// For request types that cannot implement [`RequestDeadline`] themselves (a type from another
/// crate, such as `reqwest::Request`): wrap requests on the way in and unwrap them just above the
/// client. The deadline lives inline, so propagating it never allocates.
///
/// ```
/// use seawall_core::deadline::{RequestDeadline, WithDeadline};
/// use std::time::Duration;
///
/// let req = WithDeadline::new("GET /users").with_timeout(Duration::from_secs(2));
/// assert_eq!(req.timeout_override(), Some(Duration::from_secs(2)));
/// let inner: &str = req.into_inner();
/// # let _ = inner;
/// ```
///
/// With tower: `ServiceBuilder::new().layer(timeout).map_request(WithDeadline::into_inner).service(client)`
/// takes `WithDeadline<Request>` at the top and hands the bare request to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithDeadline<T> {
    inner: T,
    deadline: Option<Instant>,
    timeout: Option<Duration>,
    per_try_timeout: Option<Duration>,
}

impl<T> WithDeadline<T> {
    /// Wraps `inner` with no deadline and no override.
    pub fn new(inner: T) -> Self {
        WithDeadline {
            inner,
            deadline: None,
            timeout: None,
            per_try_timeout: None,
        }
    }

    /// Sets a timeout for this request that replaces the timeout layer's own.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets a timeout for each attempt of this request that replaces the per-try timeout's own
    /// (see [`PerTryTimeoutOverride`]).
    pub fn with_per_try_timeout(mut self, timeout: Duration) -> Self {
        self.per_try_timeout = Some(timeout);
        self
    }

    /// Sets the deadline the request starts with.
    pub fn with_deadline(mut self, deadline: Instant) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The wrapped request.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped request, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Unwraps the request, dropping its deadline.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T> RequestDeadline for WithDeadline<T> {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }

    fn timeout_override(&self) -> Option<Duration> {
        self.timeout
    }

    fn per_try_timeout_override(&self) -> Option<Duration> {
        self.per_try_timeout
    }
}

/// How long from `now` until the request's deadline; `None` when it carries none.
///
/// A deadline already past gives [`Duration::ZERO`].
pub fn remaining<R: RequestDeadline + ?Sized>(request: &R, now: Instant) -> Option<Duration> {
    request.deadline().map(|d| d.saturating_duration_since(now))
}

/// `now + timeout`, saturating far in the future instead of overflowing.
///
/// A timeout of `Duration::MAX` means "no timeout" to some callers; adding it to an instant would
/// panic, so the result is capped about 30 years out, as tokio does for its own far-future instants.
#[inline]
pub fn deadline_after(now: Instant, timeout: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    now.checked_add(timeout.min(FAR))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn http_request_carries_deadline_and_override() {
        let now = Instant::now();
        let mut req = http::Request::new(());
        assert_eq!(req.deadline(), None);
        assert_eq!(req.timeout_override(), None);
        assert_eq!(remaining(&req, now), None);

        req.set_deadline(now + Duration::from_secs(3));
        req.extensions_mut()
            .insert(TimeoutOverride(Duration::from_millis(5)));
        assert_eq!(req.deadline(), Some(now + Duration::from_secs(3)));
        assert_eq!(req.timeout_override(), Some(Duration::from_millis(5)));
        assert_eq!(req.per_try_timeout_override(), None);
        assert_eq!(remaining(&req, now), Some(Duration::from_secs(3)));
        assert_eq!(
            remaining(&req, now + Duration::from_secs(10)),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn requests_carry_a_per_try_override_apart_from_the_total_one() {
        let mut req = http::Request::new(());
        assert_eq!(req.per_try_timeout_override(), None);
        req.extensions_mut()
            .insert(PerTryTimeoutOverride(Duration::from_secs(2)));
        assert_eq!(req.per_try_timeout_override(), Some(Duration::from_secs(2)));
        assert_eq!(req.timeout_override(), None);
        let boxed: Box<dyn RequestDeadline> = Box::new(req);
        assert_eq!(
            boxed.per_try_timeout_override(),
            Some(Duration::from_secs(2))
        );

        let wrapped = WithDeadline::new(()).with_per_try_timeout(Duration::from_millis(7));
        assert_eq!(
            wrapped.per_try_timeout_override(),
            Some(Duration::from_millis(7))
        );
        assert_eq!(wrapped.timeout_override(), None);
        assert_eq!(
            WithDeadline::new(()).per_try_timeout_override(),
            None,
            "a wrapped request carries none by default"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn with_deadline_carries_values_inline() {
        let now = Instant::now();
        let mut req = WithDeadline::new(5u8).with_deadline(now + Duration::from_secs(9));
        assert_eq!(req.deadline(), Some(now + Duration::from_secs(9)));
        req.set_deadline(now + Duration::from_secs(1));
        assert_eq!(remaining(&req, now), Some(Duration::from_secs(1)));
        assert_eq!(req.timeout_override(), None);
        *req.get_mut() += 1;
        assert_eq!(req.into_inner(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_after_never_overflows() {
        let now = Instant::now();
        assert!(deadline_after(now, Duration::MAX) > now + Duration::from_secs(86_400 * 365));
        assert_eq!(
            deadline_after(now, Duration::from_secs(1)),
            now + Duration::from_secs(1)
        );
    }
}

/// A call ran past its deadline and was cancelled.
///
/// Returned (boxed) by the timeout layer and by every other layer that enforces a deadline (a
/// retry's per-attempt timeout, for example), so one check finds them all:
///
/// ```
/// use seawall_core::{deadline::Elapsed, error};
/// # fn handle(err: &seawall_core::BoxError) -> u16 {
/// if error::is::<Elapsed>(&**err) { 504 } else { 502 }
/// # }
/// ```
///
/// Zero-sized: boxing it does not allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Elapsed(());

impl Elapsed {
    /// The error; for layers that enforce deadlines.
    pub const fn new() -> Self {
        Elapsed(())
    }
}

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request timed out")
    }
}

impl std::error::Error for Elapsed {}
