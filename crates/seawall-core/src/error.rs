//! Error helpers over [`BoxError`].
//!
//! Every seawall layer returns `BoxError`, the tower convention, so axum's `HandleErrorLayer` and
//! tonic work unchanged. A rejection is a small concrete type (`Elapsed`, `Open`, `Full`, ...); an
//! error may be wrapped by outer layers, so these helpers look for a type anywhere in the
//! [`source()`](std::error::Error::source) chain rather than only at the top.
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

use std::error::Error;

/// A type-erased error, the error type of every seawall service.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// Finds the first error of type `T` in `err` or its `source()` chain.
pub fn find<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    chain(err).find_map(|e| e.downcast_ref::<T>())
}

/// Whether an error of type `T` is `err` or in its `source()` chain.
pub fn is<T: Error + 'static>(err: &(dyn Error + 'static)) -> bool {
    find::<T>(err).is_some()
}

/// Iterates over `err` and then each error in its `source()` chain.
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
        let current = self.next?;
        self.next = current.source();
        Some(current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

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
    fn finds_type_at_top() {
        let err: BoxError = Box::new(Leaf);
        assert!(find::<Leaf>(&*err).is_some());
    }
}
