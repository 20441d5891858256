//! The error a breaker rejects calls with.

use seawall_core::error::NotSent;
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
///
/// The call was rejected before the inner service was called, so its
/// [`source()`](std::error::Error::source) is a [`NotSent`]: a retry above may send even a
/// non-idempotent request again, unless it returns `Open` at once (a retry built with
/// `ignore_error::<Open>()`, as the facade's stacks are).
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

/// The marker every [`Open`] has as its source.
static NOT_SENT: NotSent = NotSent::new();

impl std::error::Error for Open {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&NOT_SENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sized_and_not_sent() {
        assert_eq!(std::mem::size_of::<Open>(), 0);
        assert_eq!(Open::new().to_string(), "circuit breaker is open");
        assert!(seawall_core::error::is_not_sent(&Open::new()));
    }
}
