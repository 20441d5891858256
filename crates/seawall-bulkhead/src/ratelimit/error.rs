use std::{fmt, time::Duration};

/// The rate limiter had no permit for the call, and none would free within `max_wait`.
///
/// [`retry_after`](Limited::retry_after) says how long until a call would be let through at once
/// (useful for a `Retry-After` header). Find it in an error chain with
/// [`seawall_core::error::find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    retry_after: Duration,
}

impl Limited {
    pub(crate) fn new(retry_after: Duration) -> Self {
        Limited { retry_after }
    }

    /// How long until a permit is free, measured when the call was rejected.
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl fmt::Display for Limited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit exceeded")
    }
}

impl std::error::Error for Limited {}
