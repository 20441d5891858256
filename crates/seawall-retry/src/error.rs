use seawall_core::BoxError;
use std::{error::Error, fmt};

/// A failed call was not retried because the retry budget was exhausted.
///
/// Wraps the last real error, which is its [`source()`](Error::source), so both are found with
/// [`seawall_core::error::find`]. When that error proves the last attempt was never sent but an
/// earlier attempt was sent, it is wrapped in a
/// [`SentEarlier`](seawall_core::error::SentEarlier) first (the source is then the
/// `SentEarlier`), so look for its type with `find` rather than downcasting the source:
///
/// ```
/// use seawall_retry::BudgetExhausted;
/// use seawall_core::error;
///
/// # fn handle(err: seawall_core::BoxError) {
/// if let Some(exhausted) = error::find::<BudgetExhausted>(&*err) {
///     eprintln!("not retried ({exhausted}): {}", exhausted.last_error());
/// }
/// # }
/// ```
///
/// A failure that is a *response* (an HTTP 503, say) is returned unchanged instead, since a
/// response cannot carry an error; the [`RetryEvent::BudgetExhausted`](crate::RetryEvent) event
/// and the `seawall_retry_budget_exhausted_total` metric report those.
pub struct BudgetExhausted {
    source: BoxError,
}

impl BudgetExhausted {
    pub(crate) fn new(source: BoxError) -> Self {
        BudgetExhausted { source }
    }

    /// The error of the last attempt, wrapped in a
    /// [`SentEarlier`](seawall_core::error::SentEarlier) when it proves that attempt was never
    /// sent but an earlier one was; [`seawall_core::error::find`] finds its type either way.
    pub fn last_error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Unwraps the error of the last attempt, wrapped in a
    /// [`SentEarlier`](seawall_core::error::SentEarlier) when it proves that attempt was never
    /// sent but an earlier one was (see [`last_error`](Self::last_error)).
    pub fn into_last_error(self) -> BoxError {
        self.source
    }
}

impl fmt::Debug for BudgetExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BudgetExhausted")
            .field("last_error", &self.source)
            .finish()
    }
}

impl fmt::Display for BudgetExhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("retry budget exhausted")
    }
}

impl Error for BudgetExhausted {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::error;

    #[derive(Debug)]
    struct Refused;
    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("connection refused")
        }
    }
    impl Error for Refused {}

    #[test]
    fn both_found_in_chain() {
        let err: BoxError = Box::new(BudgetExhausted::new(Box::new(Refused)));
        assert_eq!(err.to_string(), "retry budget exhausted");
        assert!(error::is::<BudgetExhausted>(&*err));
        assert!(error::is::<Refused>(&*err));
        let exhausted = err.downcast::<BudgetExhausted>().unwrap();
        assert_eq!(exhausted.last_error().to_string(), "connection refused");
        assert!(exhausted.into_last_error().is::<Refused>());
    }
}
