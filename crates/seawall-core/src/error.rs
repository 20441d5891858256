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

use std::{error::Error, sync::Arc};

/// A type-erased error, the error type of every seawall service.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Finds the first error of type `T` in `err` or its `source()` chain.
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

/// Whether an error of type `T` is `err` or in its `source()` chain.
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
pub fn chain<'a>(err: &'a (dyn Error + 'static)) -> Chain<'a> {
    Chain { next: Some(err) }
}

/// Iterator over an error and its sources; see [`chain`].
#[derive(Debug, Clone)]
pub struct Chain<'a> {
    next: Option<&'a (dyn Error + 'static)>,
}

impl<'a> Iterator for Chain<'a> {
    type Item = &'a (dyn Error + 'static);

    fn next(&mut self) -> Option<Self::Item> {
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

    #[test]
    fn finds_type_at_top() {
        let err: BoxError = Box::new(Leaf);
        assert!(find::<Leaf>(&*err).is_some());
    }
}
