use seawall_core::error::NotSent;
use std::{fmt, time::Duration};

/// The rate limiter had no permit for the call, and none would free within `max_wait`.
///
/// [`retry_after`](Limited::retry_after) says how long until a call would be let through at once
/// (useful for a `Retry-After` header). Find it in an error chain with
/// [`seawall_core::error::find`].
///
/// The call was rejected before the inner service was called, so its
/// [`source()`](std::error::Error::source) is a [`NotSent`] carrying the same `retry_after`: a
/// retry above may send even a non-idempotent request again, and waits at least that long
/// first (see [`seawall_core::error::not_sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    // Always made with a `retry_after`.
    not_sent: NotSent,
}

impl Limited {
    pub(crate) fn new(retry_after: Duration) -> Self {
        Limited {
            not_sent: NotSent::with_retry_after(retry_after),
        }
    }

    /// How long until a permit is free, measured when the call was rejected.
    pub fn retry_after(&self) -> Duration {
        self.not_sent.retry_after().unwrap_or_default()
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit exceeded")
    }
}

impl std::error::Error for Limited {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.not_sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::error::not_sent;

    #[test]
    fn not_sent_with_its_retry_after() {
        let limited = Limited::new(Duration::from_millis(300));
        assert_eq!(limited.retry_after(), Duration::from_millis(300));
        assert_eq!(
            not_sent(&limited),
            Some(NotSent::with_retry_after(Duration::from_millis(300)))
        );
        assert_eq!(
            std::mem::size_of::<Limited>(),
            std::mem::size_of::<Duration>()
        );
        // Wrapped in another error, as it crosses a body stream.
        let wrapped: seawall_core::BoxError = Box::new(std::io::Error::other(limited));
        assert_eq!(
            not_sent(&*wrapped).and_then(|n| n.retry_after()),
            Some(Duration::from_millis(300))
        );
    }
}
