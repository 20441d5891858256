use seawall_core::{
    error::{is, not_sent, SentEarlier},
    BoxError,
};
use std::{error::Error, fmt, sync::Arc};

/// The fallback failed after the call it stood in for had failed.
///
/// Carries both failures: [`original`] is the original one (the call's error, or
/// [`FailedResponse`] when the call answered with a failed response) and [`fallback_error`] is
/// the fallback's own error. The original is in the source chain, so a search of the chain for
/// `Elapsed` or `Open` with [`find`](seawall_core::error::find) or
/// [`is`](seawall_core::error::is) still finds why the call failed. But
/// [`source()`](Error::source) may be a [`SentEarlier`] around the original rather than the
/// original itself (see below): read the original with [`original`] or `find`, not by
/// downcasting `source()`. That `SentEarlier`'s [`get_ref`](SentEarlier::get_ref) is the
/// original as this error shares it, an `Arc<dyn Error + Send + Sync>`, which `find` looks
/// through and a `downcast_ref` to the original's type does not.
///
/// The call counts as sent if the fallback may have sent a request: when the original error
/// proves the call was never sent ([`not_sent`]) but the fallback's error does not (a
/// fallback service that sent a copy of the request to a secondary region, whose connection
/// was reset), the original is wrapped in a [`SentEarlier`] in the source chain, so a retry or
/// a caller above does not send the request again as one never sent. The original is still
/// found by its type with [`find`](seawall_core::error::find), and [`original`] returns it
/// unwrapped. The closure of [`build_fn`](crate::FallbackBuilder::build_fn) is taken as one that
/// sends nothing, and leaves the original unwrapped: its failure (a cache miss) keeps a call
/// never sent never sent. A closure that does send (with a blocking client, or a copy of the
/// request spawned off) belongs in [`build_service`](crate::FallbackBuilder::build_service)
/// (`build_service(service_fn(..))`), or marks its error as sent, a [`SentEarlier`] around it,
/// which wraps the original as any fallback service's failure does. A fallback service that
/// failed to get ready was never called and leaves the original unwrapped too. A fallback service
/// of one's own that sends nothing marks its errors as never sent (a
/// [`NotSent`](seawall_core::error::NotSent) as their `source()`) to keep the call not sent.
///
/// A call answered from the fallback after a kept readiness error of the inner service (see
/// [`Fallback`](crate::Fallback)) never reached the inner service, but its original is that
/// readiness error: when the fallback fails too, even a `build_fn` closure, the call counts as
/// never sent only if the readiness error proves it ([`not_sent`]), and as possibly sent otherwise
/// (a `Buffer` whose worker is gone).
///
/// [`fallback_error`]: FallbackFailed::fallback_error
/// [`original`]: FallbackFailed::original
#[derive(Debug)]
pub struct FallbackFailed {
    original: Arc<dyn Error + Send + Sync>,
    fallback: BoxError,
    /// The original wrapped as sent, when the fallback may have sent what the call did not.
    sent: Option<SentEarlier>,
}

impl FallbackFailed {
    /// `may_send`: whether the fallback may have sent a request in this call (see
    /// [`ContextHandler::may_have_sent`](crate::ContextHandler::may_have_sent)). A fallback error
    /// with a [`SentEarlier`] in its chain says it did, whatever `may_send` is.
    pub(crate) fn new(
        original: Arc<dyn Error + Send + Sync>,
        fallback: BoxError,
        may_send: bool,
    ) -> Self {
        let sent = ((may_send || is::<SentEarlier>(&*fallback))
            && not_sent(&*original).is_some()
            && not_sent(&*fallback).is_none())
        .then(|| SentEarlier::new(Box::new(original.clone())));
        FallbackFailed {
            original,
            fallback,
            sent,
        }
    }

    /// Why the call failed in the first place, never wrapped in a [`SentEarlier`].
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
        match &self.sent {
            Some(sent) => Some(sent),
            None => Some(&*self.original),
        }
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
