use seawall_core::error::NotSent;
use std::fmt;

/// No endpoint could take the call within the balancer's
/// [`max_wait`](crate::BalanceConfigBuilder::max_wait): the set was empty, every endpoint was
/// ejected or unhealthy, or none became ready.
///
/// No endpoint was called, so its [`source()`](std::error::Error::source) is a [`NotSent`]: a
/// retry above may send even a non-idempotent request again (see
/// [`seawall_core::error::not_sent`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NoEndpoints(());

impl NoEndpoints {
    pub(crate) fn new() -> Self {
        NoEndpoints(())
    }
}

impl fmt::Debug for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NoEndpoints")
    }
}

impl fmt::Display for NoEndpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no endpoint available")
    }
}

/// The marker every [`NoEndpoints`] has as its source.
static NOT_SENT: NotSent = NotSent::new();

impl std::error::Error for NoEndpoints {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&NOT_SENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_size() {
        assert_eq!(NoEndpoints::new().to_string(), "no endpoint available");
        assert_eq!(std::mem::size_of::<NoEndpoints>(), 0);
        assert!(seawall_core::error::is_not_sent(&NoEndpoints::new()));
    }
}
