//! Error helpers over [`BoxError`].
//!
//! Every seawall layer returns `BoxError`, the tower convention, so axum's `HandleErrorLayer` and
//! tonic work unchanged. A rejection is a small concrete type (`Elapsed`, `Open`, `Full`, ...); an
//! error may be wrapped by outer layers, so these helpers look for a type anywhere in the
//! [`source()`](std::error::Error::source) chain rather than only at the top.
//!
//! An error shared as `Arc<dyn Error>` (as a fallback receives it) is an error of its own type
//! whose `source()` skips the error it holds; the helpers look through it, so an error raised again
//! from an `Arc` is still found by its type. An `Arc<T>` or `Box<T>` of the type looked for counts
//! as that type too. A [`std::io::Error`] made from another error (`io::Error::other(e)`, as an
//! error crosses an `AsyncRead` or a body stream) likewise has a `source()` that skips `e`; the
//! helpers visit the `io::Error` and then `e`, the `io::Error` shared as an `Arc` or boxed too.
//!
//! # Requests that were never sent
//!
//! A call that failed before its request reached the server is safe to send again whatever the
//! request is, a POST included (Finagle's `RequeueFilter` and Envoy's `connect-failure` and
//! `reset-before-request` retry on the same grounds). [`not_sent`] and [`is_not_sent`] tell such
//! a failure; exactly two things count:
//!
//! - a [`NotSent`] anywhere in the chain: every seawall rejection raised before the request is
//!   handed on has one as its `source()` (the bulkhead's `Full`, the rate limiter's `Limited`,
//!   which carries its [`retry_after`](NotSent::retry_after), the balancer's `NoEndpoints` and
//!   the circuit breaker's `Open`); a layer or a connector of one's own marks its rejections the
//!   same way;
//! - a [`std::io::Error`] of kind [`ConnectionRefused`](std::io::ErrorKind::ConnectionRefused)
//!   anywhere in the chain: a refused TCP or Unix-socket connect carried nothing. A connected
//!   UDP socket (QUIC, HTTP/3) may report `ConnectionRefused` on a send after earlier datagrams
//!   were delivered, so a transport over UDP should not surface that kind as this proof (it maps
//!   it to another kind, or wraps it so that it is not an `io::Error` of that kind).
//!
//! A refused connection proves only that the connection it was refused for carried nothing, and
//! the chain does not say which request that connection was for: the proof holds for a client
//! that makes one connection attempt per call. A client that follows redirects does not (reqwest
//! does by default): a POST the server applied and answered with a 303 to another host, whose
//! connection is then refused, fails with that refused connection in its chain, and a retry would
//! send the POST again. Turn redirects off below a retry that sends unsent requests again
//! (reqwest: `redirect(reqwest::redirect::Policy::none())`), and turn that off
//! (`HttpPolicy::retry_unsent(false)` in `seawall-retry`) for a service made of several calls
//! (write, then notify) whose error may carry a later call's refused connection.
//!
//! Nothing else counts: not a timeout (`Elapsed` is raised both before and after sending), not a
//! reset or a broken pipe (the server may have read the request), not an io error of any other
//! kind. Since both are looked for down the whole chain, a layer that wraps an error (a retry's
//! `BudgetExhausted`, an `io::Error::other`, an `Arc` shared by a fallback) keeps the failure
//! visible as not sent.
//!
//! A call made of several attempts (a retry's, a hedge's copies) was sent if any attempt was:
//! when its last attempt was never sent but an earlier one was, the retry or hedge layer wraps
//! the error it returns in a [`SentEarlier`] (and a failed fallback that may have sent the
//! request wraps the original in one), which [`not_sent`] stops at, so the call is not taken for
//! one that is safe to send again.
//!
//! ```
//! use seawall_core::error::{find, is, BoxError};
//!
//! #[derive(Debug)]
//! struct Refused;
//! impl std::fmt::Display for Refused {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("refused") }
//! }
//! impl std::error::Error for Refused {}
//!
//! let err: BoxError = Box::new(Refused);
//! assert!(is::<Refused>(&*err));
//! assert!(find::<std::io::Error>(&*err).is_none());
//! ```

use std::{error::Error, fmt, sync::Arc, time::Duration};

/// A type-erased error, the error type of every seawall service.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// The marker of a failure that happened before the request was handed on: the request was not
/// sent, so sending it again is safe whatever it is (see the [module docs](self#requests-that-were-never-sent)).
///
/// A rejection carries it as its [`source()`](Error::source), so outer layers find it by type
/// anywhere in the chain with [`not_sent`]. It may carry how long to wait before sending again
/// ([`retry_after`](NotSent::retry_after)), as a rate limiter's rejection does; a retry layer
/// waits that long and then its (jittered) backoff.
///
/// ```
/// use seawall_core::error::{is_not_sent, not_sent, NotSent};
/// use std::{error::Error, fmt, time::Duration};
///
/// // A rejection of one's own, raised before the request is handed on.
/// #[derive(Debug)]
/// struct Shed;
/// static NOT_SENT: NotSent = NotSent::new();
/// impl fmt::Display for Shed {
///     fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str("load shed") }
/// }
/// impl Error for Shed {
///     fn source(&self) -> Option<&(dyn Error + 'static)> { Some(&NOT_SENT) }
/// }
///
/// assert!(is_not_sent(&Shed));
/// let later = NotSent::with_retry_after(Duration::from_millis(300));
/// assert_eq!(not_sent(&later).and_then(|n| n.retry_after()), Some(Duration::from_millis(300)));
/// assert_eq!(later.to_string(), "the request was not sent");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NotSent {
    retry_after: Option<Duration>,
}

impl NotSent {
    /// The plain marker: not sent, no wait asked for. `const`, so a zero-sized rejection can
    /// return a `&'static` one from its `source()`.
    pub const fn new() -> Self {
        NotSent { retry_after: None }
    }

    /// Not sent, and not to be sent again for `retry_after` (a rate limiter's wait for a permit).
    pub const fn with_retry_after(retry_after: Duration) -> Self {
        NotSent {
            retry_after: Some(retry_after),
        }
    }

    /// How long to wait before sending the request again, if the rejection said.
    pub const fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request was not sent")
    }
}

impl Error for NotSent {}

/// The mark of a failed call one of whose earlier attempts (or another copy, for a hedged call)
/// was sent, wrapped around the error the call ended with: that error may prove its own attempt
/// was never sent, but the call's request may have reached the server all the same, so the call
/// is not safe to send again whatever its request is.
///
/// A layer that makes several attempts of one call (a retry, a hedge) wraps the error it returns
/// in one when that error proves its attempt was never sent and an earlier attempt was sent;
/// [`not_sent`] then gives `None`. A failed fallback that may have sent the request wraps the
/// original error in one the same way. The wrapped error is its [`source()`](Error::source), so
/// it is still found by its type with [`find`].
///
/// ```
/// use seawall_core::error::{find, is_not_sent, BoxError, NotSent, SentEarlier};
///
/// let last: BoxError = Box::new(NotSent::new());
/// assert!(is_not_sent(&*last));
/// let err = SentEarlier::new(last);
/// assert!(!is_not_sent(&err));
/// assert!(find::<NotSent>(&err).is_some());
/// assert_eq!(err.to_string(), "an earlier attempt of the request was sent");
/// ```
#[derive(Debug)]
pub struct SentEarlier {
    source: BoxError,
}

impl SentEarlier {
    /// Marks `source`, the error a call ended with, as following an attempt that was sent.
    pub fn new(source: BoxError) -> Self {
        SentEarlier { source }
    }

    /// The error the call ended with.
    pub fn get_ref(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Unwraps the error the call ended with.
    pub fn into_inner(self) -> BoxError {
        self.source
    }
}

impl fmt::Display for SentEarlier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an earlier attempt of the request was sent")
    }
}

impl Error for SentEarlier {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

/// Whether `err` proves its request was never sent: a [`NotSent`] or an [`std::io::Error`] of
/// kind [`ConnectionRefused`](std::io::ErrorKind::ConnectionRefused) in its chain. The
/// `NotSent` found, the first in the chain (a plain one for a refused connection); `None` when
/// the request may have been sent. A [`SentEarlier`] in the chain before either (a call one of
/// whose earlier attempts was sent) ends the search: `None`. See the
/// [module docs](self#requests-that-were-never-sent).
///
/// Like [`chain`], it looks at no more than the first 256 errors of the chain.
///
/// A refused connection is proof only for a client that makes one connection attempt per call:
/// not one that follows redirects, nor a service made of several calls whose error may carry a
/// later call's refused connection (see the [module docs](self#requests-that-were-never-sent)).
pub fn not_sent(err: &(dyn Error + 'static)) -> Option<NotSent> {
    let mut refused = false;
    for err in chain(err) {
        if let Some(marker) = downcast_ref::<NotSent>(err) {
            return Some(*marker);
        }
        if !refused && downcast_ref::<SentEarlier>(err).is_some() {
            return None;
        }
        refused = refused
            || downcast_ref::<std::io::Error>(err)
                .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
    }
    refused.then(NotSent::new)
}

/// Whether `err` proves its request was never sent; see [`not_sent`].
pub fn is_not_sent(err: &(dyn Error + 'static)) -> bool {
    not_sent(err).is_some()
}

/// Finds the first error of type `T` in `err` or its `source()` chain, among the first 256
/// errors of the chain (see [`chain`]).
pub fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    chain(err).find_map(downcast_ref)
}

/// `err` itself as a `T`, an `Arc<T>` or `Box<T>` counting as one; its sources are not looked at
/// (see [`find`] for that). For code that walks a [`chain`] looking for several types at once.
pub fn downcast_ref<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    err.downcast_ref::<T>()
        .or_else(|| err.downcast_ref::<Arc<T>>().map(|shared| &**shared))
        .or_else(|| err.downcast_ref::<Box<T>>().map(|boxed| &**boxed))
}

/// Whether an error of type `T` is `err` or in its `source()` chain, among the first 256 errors
/// of the chain (see [`chain`]).
pub fn is<T: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    find::<T>(err).is_some()
}

/// An error that can be looked at as a `dyn Error`, so that its `source()` chain can be searched
/// by type with [`is`] and [`find`] where the error's type is a generic parameter (a classifier's,
/// as in [`ignore_error`](crate::classify::ClassifyExt::ignore_error)).
///
/// Implemented for [`BoxError`] (what every seawall layer returns) and every other `Box` or `Arc`
/// of a `dyn Error`, for the `dyn Error` types themselves, for [`std::io::Error`] and for
/// [`Infallible`](std::convert::Infallible) (a service that cannot fail). A service
/// with an error type of its own can implement it in one line (the method returns `self`); one
/// whose error type is another crate's is mapped to `BoxError` first (`map_err(BoxError::from)`,
/// the tower convention). It cannot be implemented for every `Error` type at once: that would
/// leave `BoxError`, which is not an `Error`, out.
///
/// ```
/// use seawall_core::error::{is, AsDynError, BoxError};
/// use std::error::Error;
///
/// #[derive(Debug)]
/// struct Refused;
/// impl std::fmt::Display for Refused {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("refused") }
/// }
/// impl Error for Refused {}
/// impl AsDynError for Refused {
///     fn as_dyn_error(&self) -> &(dyn Error + 'static) { self }
/// }
///
/// fn refused<E: AsDynError + ?Sized>(err: &E) -> bool {
///     is::<Refused>(err.as_dyn_error())
/// }
/// let boxed: BoxError = Box::new(Refused);
/// assert!(refused(&boxed));
/// assert!(refused(&Refused));
/// assert!(!refused(&std::io::Error::other("reset")));
/// ```
pub trait AsDynError {
    /// This error as a `dyn Error`.
    fn as_dyn_error(&self) -> &(dyn Error + 'static);
}

impl AsDynError for dyn Error + 'static {
    #[inline]
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

impl AsDynError for dyn Error + Send + 'static {
    #[inline]
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

impl AsDynError for dyn Error + Send + Sync + 'static {
    #[inline]
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

impl<T: AsDynError + ?Sized> AsDynError for Box<T> {
    #[inline]
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        (**self).as_dyn_error()
    }
}

impl<T: AsDynError + ?Sized> AsDynError for Arc<T> {
    #[inline]
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        (**self).as_dyn_error()
    }
}

impl AsDynError for std::io::Error {
    #[inline]
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        self
    }
}

/// The error of a service that cannot fail: there is never one to look at.
impl AsDynError for std::convert::Infallible {
    #[inline]
    fn as_dyn_error(&self) -> &(dyn Error + 'static) {
        match *self {}
    }
}

/// Iterates over `err` and then each error in its `source()` chain.
///
/// An `Arc<dyn Error>` in the chain is replaced by the error it holds (it displays the same and has
/// the same source), so that error is not skipped. An [`std::io::Error`] that wraps an error is
/// followed by the error it wraps ([`get_ref`](std::io::Error::get_ref)), not by that error's
/// source, which is what its own `source()` gives; so is one behind an `Arc` or a `Box`, whose
/// `source()` is the `io::Error`'s.
///
/// The walk ends after 256 errors, far deeper than any real chain, so an error whose `source()`
/// leads back to itself (which safe Rust allows) cannot make it, or [`find`], [`is`] and
/// [`not_sent`], run forever.
pub fn chain<'a>(err: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain {
        next: Some(err),
        left: MAX_CHAIN_LEN,
    }
}

/// How many errors [`chain`] visits at most: a `source()` chain that comes back on itself ends
/// here. A chain this long may be cut off, so code that hands an error to another chain walker
/// (one without a bound) can check for it first.
pub const MAX_CHAIN_LEN: usize = 256;

/// Iterator over an error and its sources; see [`chain`].
#[derive(Debug, Clone)]
pub struct Chain<'a> {
    next: Option<&'a (dyn Error + 'static)>,
    /// Errors still to visit before the walk ends, whatever `next` is.
    left: usize,
}

impl<'a> Iterator for Chain<'a> {
    type Item = &'a (dyn Error + 'static);

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        let current = unshare(self.next?);
        let io = current
            .downcast_ref::<std::io::Error>()
            .or_else(|| {
                current
                    .downcast_ref::<Arc<std::io::Error>>()
                    .map(|io| &**io)
            })
            .or_else(|| {
                current
                    .downcast_ref::<Box<std::io::Error>>()
                    .map(|io| &**io)
            });
        self.next = match io {
            Some(io) => io
                .get_ref()
                .map(|wrapped| wrapped as &(dyn Error + 'static)),
            None => current.source(),
        };
        Some(current)
    }
}

/// The error an `Arc<dyn Error>` holds, through any number of them; `err` itself otherwise.
fn unshare<'a>(mut err: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    // Each step goes one allocation further in; an `Arc`'s contents cannot refer back to it.
    loop {
        err = if let Some(shared) = err.downcast_ref::<Arc<dyn Error + Send + Sync>>() {
            &**shared
        } else if let Some(shared) = err.downcast_ref::<Arc<dyn Error + Send>>() {
            &**shared
        } else if let Some(shared) = err.downcast_ref::<Arc<dyn Error>>() {
            &**shared
        } else {
            return err;
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{fmt, sync::Arc};

    #[derive(Debug)]
    struct Leaf;
    impl fmt::Display for Leaf {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("leaf")
        }
    }
    impl Error for Leaf {}

    #[derive(Debug)]
    struct Wrap(BoxError);
    impl fmt::Display for Wrap {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrap")
        }
    }
    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    #[test]
    fn finds_type_deep_in_chain() {
        let err: BoxError = Box::new(Wrap(Box::new(Wrap(Box::new(Leaf)))));
        assert!(is::<Leaf>(&*err));
        assert!(is::<Wrap>(&*err));
        assert_eq!(chain(&*err).count(), 3);
        assert!(find::<std::io::Error>(&*err).is_none());
    }

    #[test]
    fn finds_type_through_shared_and_boxed_errors() {
        // An error shared behind an `Arc` (as a fallback receives it) and raised again.
        let shared: Arc<dyn Error + Send + Sync> = Arc::new(Wrap(Box::new(Leaf)));
        let err: BoxError = Box::new(shared.clone());
        assert!(is::<Wrap>(&*err));
        assert!(is::<Leaf>(&*err));
        assert_eq!(chain(&*err).count(), 2);
        let err: BoxError = Box::new(Wrap(Box::new(shared)));
        assert!(is::<Leaf>(&*err));
        assert_eq!(chain(&*err).count(), 3);

        let local: Arc<dyn Error> = Arc::new(Leaf);
        assert!(is::<Leaf>(&local));

        // Concrete wrappers of the type looked for.
        let err: BoxError = Box::new(Arc::new(Leaf));
        assert!(is::<Leaf>(&*err));
        let err: BoxError = Box::new(Wrap(Box::new(Box::new(Leaf))));
        assert!(is::<Leaf>(&*err));
        assert!(find::<std::io::Error>(&*err).is_none());
    }

    #[test]
    fn finds_type_wrapped_in_an_io_error() {
        // `io::Error::other(e)` displays `e` but its `source()` is `e.source()`, skipping `e`:
        // how an error crosses an `AsyncRead` or a body stream.
        let err: BoxError = Box::new(std::io::Error::other(Wrap(Box::new(Leaf))));
        assert!(is::<std::io::Error>(&*err));
        assert!(is::<Wrap>(&*err));
        assert!(is::<Leaf>(&*err));
        assert_eq!(chain(&*err).count(), 3);
        let err: BoxError = Box::new(Wrap(Box::new(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            Leaf,
        ))));
        assert!(is::<Leaf>(&*err));
        // An io::Error without a payload ends the chain.
        let err: BoxError = Box::new(Wrap(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        ))));
        assert_eq!(chain(&*err).count(), 2);
        assert!(find::<Leaf>(&*err).is_none());
    }

    #[test]
    fn finds_type_wrapped_in_an_io_error_behind_an_arc_or_a_box() {
        // An `io::Error` shared as `Arc<io::Error>` (it is not `Clone`), or boxed: the wrapper's
        // `source()` is the `io::Error`'s, which skips the error it wraps.
        let err: BoxError = Box::new(Arc::new(std::io::Error::other(Leaf)));
        assert!(is::<std::io::Error>(&*err));
        assert!(is::<Leaf>(&*err));
        assert_eq!(chain(&*err).count(), 2);
        let err: BoxError = Box::new(Wrap(Box::new(Box::new(std::io::Error::other(Wrap(
            Box::new(Leaf),
        ))))));
        assert!(is::<Leaf>(&*err));
        assert_eq!(chain(&*err).count(), 4);
    }

    /// A rejection raised before sending, marked as the seawall rejections are.
    #[derive(Debug)]
    struct Rejected;
    static NOT_SENT: NotSent = NotSent::new();
    impl fmt::Display for Rejected {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("rejected")
        }
    }
    impl Error for Rejected {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&NOT_SENT)
        }
    }

    #[test]
    fn not_sent_is_a_marker_or_a_refused_connection_anywhere_in_the_chain() {
        use std::io;
        let later = NotSent::with_retry_after(Duration::from_millis(300));
        let cases: [(BoxError, Option<NotSent>); 9] = [
            (Box::new(Rejected), Some(NotSent::new())),
            (Box::new(Wrap(Box::new(Rejected))), Some(NotSent::new())),
            (Box::new(Wrap(Box::new(later))), Some(later)),
            (
                Box::new(io::Error::other(Wrap(Box::new(later)))),
                Some(later),
            ),
            (Box::new(Arc::new(Rejected)), Some(NotSent::new())),
            (
                Box::new(io::Error::other(io::Error::from(
                    io::ErrorKind::ConnectionRefused,
                ))),
                Some(NotSent::new()),
            ),
            (
                Box::new(Wrap(Box::new(io::Error::from(
                    io::ErrorKind::ConnectionRefused,
                )))),
                Some(NotSent::new()),
            ),
            (
                Box::new(io::Error::from(io::ErrorKind::ConnectionReset)),
                None,
            ),
            (Box::new(Wrap(Box::new(Leaf))), None),
        ];
        for (err, expected) in cases {
            assert_eq!(not_sent(&*err), expected, "{err}");
            assert_eq!(is_not_sent(&*err), expected.is_some(), "{err}");
        }
        assert!(!is_not_sent(&crate::deadline::Elapsed::new()));
        assert_eq!(NotSent::new().to_string(), "the request was not sent");
        assert_eq!(NotSent::default(), NotSent::new());
        assert_eq!(later.retry_after(), Some(Duration::from_millis(300)));
    }

    #[test]
    fn an_earlier_attempt_sent_hides_a_later_one_not_sent() {
        use std::io;
        let err: BoxError = Box::new(SentEarlier::new(Box::new(Rejected)));
        assert!(!is_not_sent(&*err));
        assert!(is::<Rejected>(&*err));
        assert!(is::<NotSent>(&*err));
        assert_eq!(
            err.to_string(),
            "an earlier attempt of the request was sent"
        );
        // Wherever it is wrapped, before the marker.
        let err: BoxError = Box::new(Wrap(Box::new(Arc::new(SentEarlier::new(Box::new(
            io::Error::other(io::Error::from(io::ErrorKind::ConnectionRefused)),
        ))))));
        assert!(!is_not_sent(&*err));
        let later = NotSent::with_retry_after(Duration::from_millis(300));
        let err = Wrap(Box::new(Wrap(Box::new(SentEarlier::new(Box::new(later))))));
        assert_eq!(not_sent(&err), None);
        let sent = SentEarlier::new(Box::new(Rejected));
        assert_eq!(sent.get_ref().to_string(), "rejected");
        assert!(sent.into_inner().is::<Rejected>());
    }

    #[test]
    fn finds_type_at_top() {
        let err: BoxError = Box::new(Leaf);
        assert!(find::<Leaf>(&*err).is_some());
    }
}
