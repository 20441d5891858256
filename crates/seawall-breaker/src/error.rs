//! The error a breaker rejects calls with.

use std::fmt;

/// The circuit breaker did not let the call through: it is Open, forced open, or HalfOpen with
/// every probe slot taken.
///
/// Zero-sized, so boxing it into a `BoxError` does not allocate. Find it in an error chain with
/// [`seawall_core::error::is`]:
///
/// ```
/// use seawall::{breaker::Open, core::error::is, BoxError};
///
/// fn should_serve_stale(err: &BoxError) -> bool {
///     is::<Open>(&**err)
/// }
/// # let _ = should_serve_stale;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Open(());

impl Open {
    pub(crate) const fn new() -> Self {
        Open(())
    }
}

impl fmt::Display for Open {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit breaker is open")
    }
}

impl std::error::Error for Open {}
