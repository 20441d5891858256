use std::fmt;

/// No endpoint could take the call within the balancer's
/// [`max_wait`](crate::BalanceConfigBuilder::max_wait): the set was empty, every endpoint was
/// ejected or unhealthy, or none became ready.
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

impl std::error::Error for NoEndpoints {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_size() {
        assert_eq!(NoEndpoints::new().to_string(), "no endpoint available");
        assert_eq!(std::mem::size_of::<NoEndpoints>(), 0);
    }
}
