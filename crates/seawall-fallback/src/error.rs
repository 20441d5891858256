use seawall_core::BoxError;
use std::{error::Error, fmt, sync::Arc};

/// The fallback failed after the call it stood in for had failed.
///
/// Carries both failures: [`source()`](Error::source) is the original one (the call's error, or
/// [`FailedResponse`] when the call answered with a failed response), so a search of the source
/// chain for `Elapsed` or `Open` still finds why the call failed; [`fallback_error`] is the
/// fallback's own error.
///
/// [`fallback_error`]: FallbackFailed::fallback_error
#[derive(Debug)]
pub struct FallbackFailed {
    original: Arc<dyn Error + Send + Sync>,
    fallback: BoxError,
}

impl FallbackFailed {
    pub(crate) fn new(original: Arc<dyn Error + Send + Sync>, fallback: BoxError) -> Self {
        FallbackFailed { original, fallback }
    }

    /// Why the call failed in the first place.
    pub fn original(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.original
    }

    /// Why the fallback failed.
    pub fn fallback_error(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.fallback
    }
}

impl fmt::Display for FallbackFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fallback failed: {}", self.fallback)
    }
}

impl Error for FallbackFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.original)
    }
}

/// The original failure when a call answered with a response its classifier called a failure
/// (the response itself went to the fallback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedResponse(());

impl FailedResponse {
    pub(crate) fn new() -> Self {
        FailedResponse(())
    }
}

impl fmt::Display for FailedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("response classified as failure")
    }
}

impl Error for FailedResponse {}
