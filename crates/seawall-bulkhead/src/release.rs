//! When a call gives its permit back: when its response arrives ([`OnResponse`], the default) or
//! when an HTTP response body has been read to the end or dropped ([`OnBodyEnd`]).

use crate::state::{Permit, Timing};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use seawall_core::Outcome;
use std::{
    fmt,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

/// Decides when a finished call releases its permit. Implemented by [`OnResponse`] and
/// [`OnBodyEnd`]; sealed.
pub trait Release<Res>: sealed::Sealed {
    /// The response the bulkhead returns.
    type Response;

    /// Hands the call's permit and classified outcome to the response (or releases it now).
    /// `rtt` is the duration the outcome was classified with.
    #[doc(hidden)]
    fn release(
        response: Res,
        permit: Permit,
        outcome: Outcome,
        timing: Option<Timing>,
        rtt: Duration,
    ) -> Self::Response;
}

/// The permit is released when the response arrives. The default.
#[derive(Debug, Clone, Copy)]
pub enum OnResponse {}

/// The permit is held by the `http` response body until it has been read to its end, failed, or
/// been dropped: a streamed body still ties up the dependency (tower-http#447).
///
/// The response becomes `http::Response<PermitBody<B>>`.
#[derive(Debug, Clone, Copy)]
pub enum OnBodyEnd {}

impl<Res> Release<Res> for OnResponse {
    type Response = Res;

    #[inline]
    fn release(
        response: Res,
        permit: Permit,
        outcome: Outcome,
        timing: Option<Timing>,
        rtt: Duration,
    ) -> Res {
        permit.finish(outcome, timing, rtt);
        response
    }
}

impl<B: Body> Release<http::Response<B>> for OnBodyEnd {
    type Response = http::Response<PermitBody<B>>;

    fn release(
        response: http::Response<B>,
        permit: Permit,
        outcome: Outcome,
        timing: Option<Timing>,
        rtt: Duration,
    ) -> http::Response<PermitBody<B>> {
        response.map(|body| {
            let permit = if body.is_end_stream() {
                permit.finish(outcome, timing, rtt);
                None
            } else {
                Some((permit, outcome, timing))
            };
            PermitBody {
                inner: body,
                permit: Held(permit),
            }
        })
    }
}

pin_project! {
    /// A response body that holds its call's bulkhead permit until the body ends, fails or is
    /// dropped. See [`OnBodyEnd`].
    ///
    /// A body read to its end counts as the response's classified outcome (the duration fed to an
    /// adaptive limit runs until the end of the body); a body error counts as a failure; a body
    /// dropped early counts as ignored, unless the response was classified a failure (a 503 whose
    /// body the caller does not read), which it stays.
    pub struct PermitBody<B> {
        #[pin]
        inner: B,
        permit: Held,
    }
}

/// The permit a body holds, with the response's outcome: dropped before the body ends, a
/// failure still counts as one (the response said so before its body was read), and any other
/// outcome as ignored.
struct Held(Option<(Permit, Outcome, Option<Timing>)>);

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((permit, Outcome::Failure, timing)) = self.0.take() {
            permit.finish(Outcome::Failure, timing, Timing::elapsed(timing));
        }
    }
}

impl<B> PermitBody<B> {
    /// Whether the body still holds its permit.
    pub fn holds_permit(&self) -> bool {
        self.permit.0.is_some()
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }
}

impl<B: Body> Body for PermitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut inner = this.inner;
        let frame = ready!(inner.as_mut().poll_frame(cx));
        let finished = match &frame {
            None => Some(None),
            Some(Err(_)) => Some(Some(Outcome::Failure)),
            Some(Ok(_)) if inner.is_end_stream() => Some(None),
            Some(Ok(_)) => None,
        };
        if let Some(over) = finished {
            if let Some((permit, outcome, timing)) = this.permit.0.take() {
                // The body ends now: the limit's sample runs until here.
                permit.finish(over.unwrap_or(outcome), timing, Timing::elapsed(timing));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: fmt::Debug> fmt::Debug for PermitBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PermitBody")
            .field("inner", &self.inner)
            .field("holds_permit", &self.permit.0.is_some())
            .finish()
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::OnResponse {}
    impl Sealed for super::OnBodyEnd {}
}
