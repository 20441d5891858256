//! Outcome classification: was a finished call a success, a failure, or neither?
//!
//! Every policy that counts outcomes (circuit breaker, outlier ejection, retry, adaptive limits,
//! fallback on failed responses) takes a classifier, so *what counts as failure* is decided once and
//! separately from *what to do about it*. A classifier sees the call's result by reference and how
//! long the call took, and returns an [`Outcome`].
//!
//! | classifier | `Err(_)` | `Ok(response)` |
//! |---|---|---|
//! | [`DefaultClassifier`] | failure | success |
//! | [`HttpClassifier`] | failure | failure for 5xx and 429, success otherwise (configurable) |
//! | [`GrpcClassifier`] | failure | failure when `grpc-status` is UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL or UNKNOWN (configurable); with no `grpc-status`, the HTTP status mapped as gRPC clients map it (400, 429, 502–504 and unlisted statuses fail; 401, 403, 404 succeed), and a 200 whose `content-type` is not gRPC's fails |
//! | a closure `Fn(Result<&Res, &E>, Duration) -> Outcome` | you decide | you decide |
//! | [`IgnoreError`], `c.ignore_error::<T>()` | ignored when a `T` is in the error's `source()` chain, otherwise as `c` says | as `c` says |
//!
//! A call whose future is dropped before it completes is never classified: the layers record it as
//! [`Outcome::Ignored`] themselves.
//!
//! [`ignore_error::<T>()`](ClassifyExt::ignore_error) wraps any classifier so that an error with a
//! `T` anywhere in its `source()` chain is [`Outcome::Ignored`] (Resilience4j's
//! `ignoreExceptions`): a rate limiter's `Limited` below a circuit breaker is this client's own
//! quota, not the dependency's health. Everything else is as the wrapped classifier says; call it
//! again for another type.
//!
//! ```
//! use seawall_core::classify::{Classify, ClassifyExt, HttpClassifier, Outcome};
//! use seawall_core::BoxError;
//! use std::time::Duration;
//!
//! #[derive(Debug)]
//! struct OverQuota;
//! impl std::fmt::Display for OverQuota {
//!     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("over quota") }
//! }
//! impl std::error::Error for OverQuota {}
//!
//! let classifier = HttpClassifier::new().ignore_error::<OverQuota>();
//! let classify = |error: BoxError| {
//!     Classify::<http::Response<()>, _>::classify(&classifier, Err(&error), Duration::ZERO)
//! };
//! assert_eq!(classify(OverQuota.into()), Outcome::Ignored);
//! assert_eq!(classify("connection reset".into()), Outcome::Failure);
//! ```
//!
//! ```
//! use seawall_core::classify::{Classify, HttpClassifier, Outcome};
//! use std::time::Duration;
//!
//! let classifier = HttpClassifier::new();
//! let unavailable = http::Response::builder().status(503).body(()).unwrap();
//! let outcome = Classify::<_, std::io::Error>::classify(&classifier, Ok(&unavailable), Duration::ZERO);
//! assert_eq!(outcome, Outcome::Failure);
//!
//! // A closure: slow calls count as failures too.
//! let slow_is_failure = |result: Result<&u32, &std::io::Error>, elapsed: Duration| {
//!     if result.is_err() || elapsed > Duration::from_secs(1) { Outcome::Failure } else { Outcome::Success }
//! };
//! assert_eq!(slow_is_failure.classify(Ok(&1), Duration::from_secs(2)), Outcome::Failure);
//! ```

use crate::error::{self, AsDynError};
use http::{header::RETRY_AFTER, HeaderMap, Response, StatusCode};
use std::{
    error::Error,
    fmt,
    marker::PhantomData,
    time::{Duration, SystemTime},
};

/// How a finished call counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed.
    Failure,
    /// The call counts as neither (a cancellation, a client error the dependency is not to blame for).
    Ignored,
}

impl Outcome {
    /// Whether this is [`Outcome::Failure`].
    pub fn is_failure(self) -> bool {
        self == Outcome::Failure
    }

    /// Whether this is [`Outcome::Success`].
    pub fn is_success(self) -> bool {
        self == Outcome::Success
    }
}

/// Decides the [`Outcome`] of a finished call from its result and its duration.
///
/// `Res` is the response type and `E` the error type of the service being classified.
pub trait Classify<Res, E: ?Sized> {
    /// Classifies one finished call.
    fn classify(&self, result: Result<&Res, &E>, elapsed: Duration) -> Outcome;

    /// Whether [`classify`](Classify::classify) looks at `elapsed`.
    ///
    /// Layers that do not need a call's duration for themselves skip reading the clock when this is
    /// `false` and pass [`Duration::ZERO`]. `true` unless overridden, so a classifier that reads
    /// `elapsed` always gets the real duration; one that never does can answer `false` to save the
    /// clock reads, as [`DefaultClassifier`], [`HttpClassifier`] and [`GrpcClassifier`] do.
    fn uses_elapsed(&self) -> bool {
        true
    }
}

impl<Res, E: ?Sized, F> Classify<Res, E> for F
where
    F: Fn(Result<&Res, &E>, Duration) -> Outcome,
{
    fn classify(&self, result: Result<&Res, &E>, elapsed: Duration) -> Outcome {
        self(result, elapsed)
    }

    fn uses_elapsed(&self) -> bool {
        true
    }
}

/// Combinators for every classifier; see [`ignore_error`](ClassifyExt::ignore_error).
///
/// Implemented for every type, so that a classifier whose `Classify` impl is generic over the
/// response and error types ([`DefaultClassifier`], [`HttpClassifier`], [`GrpcClassifier`]) needs
/// no annotation: what is built is a classifier wherever `self` is one.
pub trait ClassifyExt: Sized {
    /// Classifies an error with a `T` anywhere in its `source()` chain (as
    /// [`error::is`] finds it) as [`Outcome::Ignored`], and everything else as
    /// `self` does; see [`IgnoreError`]. Chain it to ignore several types.
    ///
    /// The error type of the service being classified must be [`AsDynError`]: [`BoxError`]
    /// (what every seawall layer returns), any other `Box` or `Arc` of a `dyn Error`,
    /// [`std::io::Error`], or [`Infallible`](std::convert::Infallible).
    ///
    /// Configure the classifier first, then wrap it: what is built is an [`IgnoreError`], which
    /// has none of the wrapped classifier's builder methods (`with_failure`, `with_success`);
    /// [`get_mut`](IgnoreError::get_mut) reaches the wrapped classifier afterwards.
    ///
    /// ```
    /// use http::StatusCode;
    /// use seawall_core::classify::{Classify, ClassifyExt, HttpClassifier, Outcome};
    /// use seawall_core::BoxError;
    /// use std::time::Duration;
    ///
    /// #[derive(Debug)]
    /// struct OverQuota;
    /// impl std::fmt::Display for OverQuota {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("over quota") }
    /// }
    /// impl std::error::Error for OverQuota {}
    ///
    /// // A 408 fails too, a 501 does not; then `OverQuota` is ignored.
    /// let mut classifier = HttpClassifier::new()
    ///     .with_failure(StatusCode::REQUEST_TIMEOUT)
    ///     .with_success(StatusCode::NOT_IMPLEMENTED)
    ///     .ignore_error::<OverQuota>();
    /// // Once wrapped, through `get_mut`.
    /// let reconfigured = classifier.get_ref().with_failure(StatusCode::CONFLICT);
    /// *classifier.get_mut() = reconfigured;
    ///
    /// let status = |code: u16| {
    ///     let response = http::Response::builder().status(code).body(()).unwrap();
    ///     Classify::<_, BoxError>::classify(&classifier, Ok(&response), Duration::ZERO)
    /// };
    /// assert_eq!(status(408), Outcome::Failure);
    /// assert_eq!(status(409), Outcome::Failure);
    /// assert_eq!(status(501), Outcome::Success);
    /// let over_quota: BoxError = OverQuota.into();
    /// assert_eq!(
    ///     Classify::<http::Response<()>, _>::classify(&classifier, Err(&over_quota), Duration::ZERO),
    ///     Outcome::Ignored
    /// );
    /// ```
    ///
    /// [`BoxError`]: crate::BoxError
    fn ignore_error<T: Error + 'static>(self) -> IgnoreError<Self, T> {
        IgnoreError::new(self)
    }
}

impl<C> ClassifyExt for C {}

/// A classifier that answers [`Outcome::Ignored`] for errors of type `T` and defers to `C` for
/// everything else. Made by [`ClassifyExt::ignore_error`].
///
/// An error counts as a `T` when a `T` (or an `Arc<T>` or `Box<T>`) is the error itself or
/// anywhere in its `source()` chain, as [`error::is`] finds it. Responses, and
/// errors without a `T`, are classified by `C`, which also answers
/// [`uses_elapsed`](Classify::uses_elapsed). It is zero-sized around a zero-sized `C`, and
/// `Clone`, `Copy`, `Debug`, `Default`, `Send` and `Sync` whenever `C` is, whatever `T` is.
pub struct IgnoreError<C, T> {
    inner: C,
    error: PhantomData<fn() -> T>,
}

impl<C, T> IgnoreError<C, T> {
    /// `inner`, with errors of type `T` ignored.
    pub fn new(inner: C) -> Self {
        IgnoreError {
            inner,
            error: PhantomData,
        }
    }

    /// The classifier for everything else.
    pub fn get_ref(&self) -> &C {
        &self.inner
    }

    /// The classifier for everything else, mutably: to configure it once it is wrapped.
    pub fn get_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// The classifier for everything else, unwrapped.
    pub fn into_inner(self) -> C {
        self.inner
    }
}

impl<Res, E, C, T> Classify<Res, E> for IgnoreError<C, T>
where
    E: AsDynError + ?Sized,
    C: Classify<Res, E>,
    T: Error + 'static,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &E>, elapsed: Duration) -> Outcome {
        match result {
            Err(err) if error::is::<T>(err.as_dyn_error()) => Outcome::Ignored,
            result => self.inner.classify(result, elapsed),
        }
    }

    fn uses_elapsed(&self) -> bool {
        self.inner.uses_elapsed()
    }
}

impl<C: Clone, T> Clone for IgnoreError<C, T> {
    fn clone(&self) -> Self {
        IgnoreError::new(self.inner.clone())
    }
}

impl<C: Copy, T> Copy for IgnoreError<C, T> {}

impl<C: Default, T> Default for IgnoreError<C, T> {
    fn default() -> Self {
        IgnoreError::new(C::default())
    }
}

impl<C: fmt::Debug, T> fmt::Debug for IgnoreError<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IgnoreError")
            .field("inner", &self.inner)
            .field("error", &std::any::type_name::<T>())
            .finish()
    }
}

/// `Err` is a failure, `Ok` a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<Res, E: ?Sized> Classify<Res, E> for DefaultClassifier {
    #[inline]
    fn classify(&self, result: Result<&Res, &E>, _elapsed: Duration) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// Classifies [`http::Response`]s by status code.
///
/// By default 5xx and 429 (Too Many Requests) are failures and every other status a success: a 4xx
/// is the caller's fault, not the dependency's, so it must not open a breaker. Errors (connection
/// refused, reset, timeouts) are failures.
#[derive(Clone, Copy)]
pub struct HttpClassifier {
    /// One bit per status code 0..1024: set means failure.
    failures: [u64; 16],
}

impl HttpClassifier {
    /// 5xx and 429 are failures.
    pub fn new() -> Self {
        let mut c = HttpClassifier { failures: [0; 16] };
        for code in 500..600 {
            c.set(code, true);
        }
        c.set(429, true);
        c
    }

    /// Also count `status` as a failure.
    pub fn with_failure(mut self, status: StatusCode) -> Self {
        self.set(status.as_u16(), true);
        self
    }

    /// Count `status` as a success (for example 501 Not Implemented, which retrying will not fix).
    pub fn with_success(mut self, status: StatusCode) -> Self {
        self.set(status.as_u16(), false);
        self
    }

    /// Whether `status` is a failure for this classifier.
    #[inline]
    pub fn is_failure(&self, status: StatusCode) -> bool {
        let code = status.as_u16() as usize;
        self.failures[code / 64] & (1 << (code % 64)) != 0
    }

    fn set(&mut self, code: u16, failure: bool) {
        let code = code as usize;
        if failure {
            self.failures[code / 64] |= 1 << (code % 64);
        } else {
            self.failures[code / 64] &= !(1 << (code % 64));
        }
    }
}

impl Default for HttpClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for HttpClassifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let failing: Vec<u16> = (100..1000u16)
            .filter(|&c| StatusCode::from_u16(c).is_ok_and(|s| self.is_failure(s)))
            .collect();
        f.debug_struct("HttpClassifier")
            .field("failures", &failing)
            .finish()
    }
}

impl<B, E: ?Sized> Classify<Response<B>, E> for HttpClassifier {
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>, _elapsed: Duration) -> Outcome {
        match result {
            Ok(res) if self.is_failure(res.status()) => Outcome::Failure,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// Reads a `Retry-After` header (delta-seconds or an HTTP date) as a delay from now.
///
/// A date in the past gives [`Duration::ZERO`]; a number of seconds too large to count saturates at
/// `u64::MAX` seconds (still a pause longer than any cap below `u64::MAX` seconds); a missing or
/// malformed header gives `None`.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    retry_after_at(headers, SystemTime::now())
}

/// [`retry_after`] with an explicit current time, for HTTP-date values.
pub fn retry_after_at(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    // delta-seconds is digits only (RFC 9110 §10.2.3): no sign, which `u64::from_str` would take.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Digits, yet no u64: a pause longer than anyone will wait, not a missing header.
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// gRPC status codes, as carried in the `grpc-status` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code for a numeric value; values above 16 are [`GrpcCode::Unknown`], as gRPC specifies.
    pub fn from_u32(value: u32) -> GrpcCode {
        Self::ALL
            .get(value as usize)
            .copied()
            .unwrap_or(GrpcCode::Unknown)
    }

    /// The code a gRPC client reports for a response that has HTTP status `status` and no
    /// `grpc-status`, as gRPC's HTTP-to-gRPC status mapping gives it: 400 INTERNAL, 401
    /// UNAUTHENTICATED, 403 PERMISSION_DENIED, 404 UNIMPLEMENTED, 429, 502, 503 and 504
    /// UNAVAILABLE, any other UNKNOWN.
    pub fn from_http_status(status: http::StatusCode) -> GrpcCode {
        match status.as_u16() {
            400 => GrpcCode::Internal,
            401 => GrpcCode::Unauthenticated,
            403 => GrpcCode::PermissionDenied,
            404 => GrpcCode::Unimplemented,
            429 | 502 | 503 | 504 => GrpcCode::Unavailable,
            _ => GrpcCode::Unknown,
        }
    }

    /// The status a gRPC response's headers tell: its `grpc-status`, or, when that is absent and
    /// the HTTP status is not 200, the code [`from_http_status`](Self::from_http_status) maps it
    /// to. A 200 response without `grpc-status` whose `content-type` is there and is not gRPC's
    /// (not `application/grpc`, `application/grpc-web` or `application/grpc-web-text`, alone or
    /// followed by `+` or `;`; e.g. a proxy's `text/html` page) is
    /// UNKNOWN, as grpc-go reads it. `None` for any other 200 response: its status is still to
    /// come in the trailers.
    pub fn from_response<B>(response: &Response<B>) -> Option<GrpcCode> {
        match GrpcCode::from_headers(response.headers()) {
            Some(code) => Some(code),
            None if response.status() != http::StatusCode::OK => {
                Some(GrpcCode::from_http_status(response.status()))
            }
            None => match response.headers().get(http::header::CONTENT_TYPE) {
                Some(content_type) if !is_grpc_content_type(content_type.as_bytes()) => {
                    Some(GrpcCode::Unknown)
                }
                _ => None,
            },
        }
    }

    /// Reads the `grpc-status` header; `None` when it is absent.
    ///
    /// The code is read as tonic's `Code::from_bytes` reads it: one digit (`0` to `9`), or two
    /// digits from `10` to `16`. Anything else is UNKNOWN, including a code written with leading
    /// zeros (`00`, `014`), a sign or a value above 16. Only the code is read: tonic's client also
    /// makes a status UNKNOWN when its `grpc-message` is not UTF-8 once percent-decoded, which this
    /// does not.
    pub fn from_headers(headers: &HeaderMap) -> Option<GrpcCode> {
        let value = headers.get("grpc-status")?;
        Some(match *value.as_bytes() {
            [d @ b'0'..=b'9'] => GrpcCode::from_u32(u32::from(d - b'0')),
            [b'1', d @ b'0'..=b'6'] => GrpcCode::from_u32(10 + u32::from(d - b'0')),
            _ => GrpcCode::Unknown,
        })
    }
}

/// Whether a `content-type` is gRPC's: `application/grpc` alone or followed by `+` or `;`
/// (`+proto`, `;charset=…`), as grpc-go reads it, or gRPC-Web's (`application/grpc-web` and
/// `application/grpc-web-text`, under the same rule), whose responses carry the status in trailers
/// inside the body; anything else after a base (`application/grpcx`, `application/grpc-webx`) is
/// not. Unlike grpc-go, the type is compared ignoring ASCII case, as media types are.
fn is_grpc_content_type(value: &[u8]) -> bool {
    const BASES: [&[u8]; 3] = [
        b"application/grpc",
        b"application/grpc-web",
        b"application/grpc-web-text",
    ];
    BASES
        .iter()
        .any(|base| match value.split_at_checked(base.len()) {
            Some((head, rest)) if head.eq_ignore_ascii_case(base) => {
                matches!(rest.first(), None | Some(b'+' | b';'))
            }
            _ => false,
        })
}

/// Classifies gRPC responses by the `grpc-status` header.
///
/// A gRPC server that fails a call before sending any message answers *trailers-only*: the status
/// is in the response headers, where this classifier reads it. A response with HTTP status other
/// than 200 and no `grpc-status` (an error page from a proxy or load balancer in front of the
/// server) is read as grpc-go reads it, through [`GrpcCode::from_http_status`]: 429, 502, 503
/// and 504 are UNAVAILABLE, and so a failure. A 200 response without `grpc-status` whose
/// `content-type` is not gRPC's (a proxy's `text/html` page) is UNKNOWN, and so a failure, as
/// grpc-go reads it; one without a `content-type` is given the benefit of the doubt. Any other 200
/// response without `grpc-status` in its headers is a success as far as the headers tell (a
/// failure reported in the trailers of a streamed body is not visible to a response classifier).
/// Errors are failures.
///
/// The default failure codes are UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and
/// UNKNOWN: the ones that say the server (not the request) is in trouble.
#[derive(Debug, Clone, Copy)]
pub struct GrpcClassifier {
    failures: u32,
}

impl GrpcClassifier {
    /// UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL and UNKNOWN are failures.
    pub fn new() -> Self {
        GrpcClassifier { failures: 0 }
            .with_failure(GrpcCode::Unavailable)
            .with_failure(GrpcCode::DeadlineExceeded)
            .with_failure(GrpcCode::ResourceExhausted)
            .with_failure(GrpcCode::Internal)
            .with_failure(GrpcCode::Unknown)
    }

    /// Exactly these codes are failures.
    pub fn with_failures(codes: impl IntoIterator<Item = GrpcCode>) -> Self {
        codes
            .into_iter()
            .fold(GrpcClassifier { failures: 0 }, GrpcClassifier::with_failure)
    }

    /// Also count `code` as a failure.
    pub fn with_failure(mut self, code: GrpcCode) -> Self {
        self.failures |= 1 << code as u32;
        self
    }

    /// Count `code` as a success.
    pub fn with_success(mut self, code: GrpcCode) -> Self {
        self.failures &= !(1 << code as u32);
        self
    }

    /// Whether `code` is a failure for this classifier.
    #[inline]
    pub fn is_failure(&self, code: GrpcCode) -> bool {
        self.failures & (1 << code as u32) != 0
    }
}

impl Default for GrpcClassifier {
    fn default() -> Self {
        Self::new()
    }
}

impl<B, E: ?Sized> Classify<Response<B>, E> for GrpcClassifier {
    #[inline]
    fn classify(&self, result: Result<&Response<B>, &E>, _elapsed: Duration) -> Outcome {
        match result {
            Ok(res) => match GrpcCode::from_response(res) {
                Some(code) if self.is_failure(code) => Outcome::Failure,
                _ => Outcome::Success,
            },
            Err(_) => Outcome::Failure,
        }
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn http(status: u16) -> Response<()> {
        Response::builder().status(status).body(()).unwrap()
    }

    fn classify_http(c: &HttpClassifier, status: u16) -> Outcome {
        Classify::<_, io::Error>::classify(c, Ok(&http(status)), Duration::ZERO)
    }

    #[test]
    fn http_table() {
        let c = HttpClassifier::new();
        let table = [
            (100, Outcome::Success),
            (200, Outcome::Success),
            (204, Outcome::Success),
            (301, Outcome::Success),
            (400, Outcome::Success),
            (404, Outcome::Success),
            (428, Outcome::Success),
            (429, Outcome::Failure),
            (430, Outcome::Success),
            (499, Outcome::Success),
            (500, Outcome::Failure),
            (502, Outcome::Failure),
            (503, Outcome::Failure),
            (504, Outcome::Failure),
            (599, Outcome::Failure),
            (600, Outcome::Success),
            (999, Outcome::Success),
        ];
        for (status, expected) in table {
            assert_eq!(classify_http(&c, status), expected, "status {status}");
        }
        let err = io::Error::other("reset");
        assert_eq!(
            Classify::<Response<()>, _>::classify(&c, Err(&err), Duration::ZERO),
            Outcome::Failure
        );
    }

    #[test]
    fn http_overrides() {
        let c = HttpClassifier::new()
            .with_success(StatusCode::NOT_IMPLEMENTED)
            .with_failure(StatusCode::REQUEST_TIMEOUT);
        assert_eq!(classify_http(&c, 501), Outcome::Success);
        assert_eq!(classify_http(&c, 408), Outcome::Failure);
        assert_eq!(classify_http(&c, 500), Outcome::Failure);
        assert!(format!("{c:?}").contains("408"));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(120)));

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:30 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_at(&headers, now), Some(Duration::from_secs(30)));
        let later = now + Duration::from_secs(60);
        assert_eq!(retry_after_at(&headers, later), Some(Duration::ZERO));

        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn retry_after_seconds_beyond_u64_saturate() {
        let mut headers = HeaderMap::new();
        for huge in [
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            headers.insert(RETRY_AFTER, huge.parse().unwrap());
            assert_eq!(
                retry_after(&headers),
                Some(Duration::from_secs(u64::MAX)),
                "{huge}"
            );
        }
        for malformed in ["99999999999999999999999x", "-1", "1.5", "1 2", "+5", "+"] {
            headers.insert(RETRY_AFTER, malformed.parse().unwrap());
            assert_eq!(retry_after(&headers), None, "{malformed}");
        }
    }

    fn grpc(status: Option<&str>) -> Response<()> {
        let mut b = Response::builder().status(200);
        if let Some(s) = status {
            b = b.header("grpc-status", s);
        }
        b.body(()).unwrap()
    }

    fn classify_grpc(c: &GrpcClassifier, status: Option<&str>) -> Outcome {
        Classify::<_, io::Error>::classify(c, Ok(&grpc(status)), Duration::ZERO)
    }

    /// A `grpc-status` is read as tonic's `Code::from_bytes` reads it: one digit, or two digits
    /// from 10 to 16. Leading zeros (`00`, `014`) or any other length make it UNKNOWN, as the
    /// tonic client reports it, not the code the digits' value names.
    #[test]
    fn grpc_status_is_one_digit_or_ten_to_sixteen() {
        let read = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", value.parse().unwrap());
            GrpcCode::from_headers(&headers)
        };
        for (value, want) in [
            ("0", GrpcCode::Ok),
            ("9", GrpcCode::FailedPrecondition),
            ("10", GrpcCode::Aborted),
            ("14", GrpcCode::Unavailable),
            ("16", GrpcCode::Unauthenticated),
            ("00", GrpcCode::Unknown),
            ("01", GrpcCode::Unknown),
            ("09", GrpcCode::Unknown),
            ("014", GrpcCode::Unknown),
            ("0014", GrpcCode::Unknown),
            ("000", GrpcCode::Unknown),
            ("17", GrpcCode::Unknown),
            ("20", GrpcCode::Unknown),
            ("99", GrpcCode::Unknown),
            ("100", GrpcCode::Unknown),
        ] {
            assert_eq!(read(value), Some(want), "grpc-status {value:?}");
        }
        let c = GrpcClassifier::new();
        assert_eq!(
            classify_grpc(&c, Some("00")),
            Outcome::Failure,
            "00 is UNKNOWN, not OK"
        );
    }

    #[test]
    fn grpc_table() {
        use Outcome::*;
        let c = GrpcClassifier::new();
        let expected = [
            Success, Success, Failure, Success, Failure, Success, Success, Success, Failure,
            Success, Success, Success, Success, Failure, Failure, Success, Success,
        ];
        for (code, want) in expected.iter().enumerate() {
            let s = code.to_string();
            assert_eq!(classify_grpc(&c, Some(&s)), *want, "grpc-status {code}");
        }
        assert_eq!(classify_grpc(&c, None), Success, "no grpc-status header");
        assert_eq!(
            classify_grpc(&c, Some("99")),
            Failure,
            "out of range is UNKNOWN"
        );
        let mut headers = HeaderMap::new();
        for malformed in ["+0", "+14", "-0", " 0", "0x1", ""] {
            headers.insert("grpc-status", malformed.parse().unwrap());
            assert_eq!(
                GrpcCode::from_headers(&headers),
                Some(GrpcCode::Unknown),
                "malformed grpc-status {malformed:?} is UNKNOWN"
            );
        }
        assert_eq!(classify_grpc(&c, Some("x")), Failure, "garbage is UNKNOWN");
        let err = io::Error::other("transport");
        assert_eq!(
            Classify::<Response<()>, _>::classify(&c, Err(&err), Duration::ZERO),
            Failure
        );
    }

    #[test]
    fn grpc_reads_an_http_error_without_grpc_status_as_grpc_clients_do() {
        let c = GrpcClassifier::new();
        let page = |status: u16| {
            let res = Response::builder()
                .status(status)
                .header("content-type", "text/html")
                .body(())
                .unwrap();
            (
                GrpcCode::from_response(&res),
                Classify::<_, io::Error>::classify(&c, Ok(&res), Duration::ZERO),
            )
        };
        use GrpcCode::{
            Internal, PermissionDenied, Unauthenticated, Unavailable, Unimplemented, Unknown,
        };
        let table = [
            (400, Internal, Outcome::Failure),
            (401, Unauthenticated, Outcome::Success),
            (403, PermissionDenied, Outcome::Success),
            (404, Unimplemented, Outcome::Success),
            (429, Unavailable, Outcome::Failure),
            (500, Unknown, Outcome::Failure),
            (502, Unavailable, Outcome::Failure),
            (503, Unavailable, Outcome::Failure),
            (504, Unavailable, Outcome::Failure),
            (302, Unknown, Outcome::Failure),
        ];
        for (status, code, outcome) in table {
            assert_eq!(page(status), (Some(code), outcome), "HTTP {status}");
        }
        // A grpc-status header wins over the HTTP status.
        let res = Response::builder()
            .status(503)
            .header("grpc-status", "0")
            .body(())
            .unwrap();
        assert_eq!(GrpcCode::from_response(&res), Some(GrpcCode::Ok));
        assert_eq!(GrpcCode::from_response(&grpc(None)), None);
    }

    /// A 200 that is not gRPC at all (a proxy's HTML page) is UNKNOWN, as grpc-go reads it; a
    /// gRPC response whose status is still to come in the trailers is not.
    #[test]
    fn grpc_reads_a_200_that_is_not_grpc_as_unknown() {
        let c = GrpcClassifier::new();
        let with_type = |content_type: &str| {
            let res = Response::builder()
                .status(200)
                .header("content-type", content_type)
                .body(())
                .unwrap();
            (
                GrpcCode::from_response(&res),
                Classify::<_, io::Error>::classify(&c, Ok(&res), Duration::ZERO),
            )
        };
        for other in [
            "text/html",
            "text/html; charset=utf-8",
            "application/json",
            "",
            // grpc-go takes the base type alone or followed by `+` or `;`, nothing else.
            "application/grpcx",
            "application/grpc-webx",
            "application/grpc-web-textx",
        ] {
            assert_eq!(
                with_type(other),
                (Some(GrpcCode::Unknown), Outcome::Failure),
                "{other:?}"
            );
        }
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
            "Application/gRPC",
            "application/grpc+",
            "application/grpc;",
            // gRPC-Web (tonic-web, Envoy): the status is in the body's trailers.
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpc-web-text",
            "application/grpc-web-text+proto",
        ] {
            assert_eq!(with_type(grpc), (None, Outcome::Success), "{grpc:?}");
        }
        // No content type: nothing says it is not gRPC.
        assert_eq!(GrpcCode::from_response(&grpc(None)), None);
        // A grpc-status header is read whatever the content type.
        let res = Response::builder()
            .status(200)
            .header("content-type", "text/html")
            .header("grpc-status", "0")
            .body(())
            .unwrap();
        assert_eq!(GrpcCode::from_response(&res), Some(GrpcCode::Ok));
    }

    #[test]
    fn grpc_configurable() {
        let c = GrpcClassifier::with_failures([GrpcCode::Aborted]);
        assert_eq!(classify_grpc(&c, Some("10")), Outcome::Failure);
        assert_eq!(classify_grpc(&c, Some("14")), Outcome::Success);
        let c = GrpcClassifier::new().with_success(GrpcCode::Unknown);
        assert_eq!(classify_grpc(&c, Some("2")), Outcome::Success);
    }

    /// A classifier of the user's own that reads `elapsed` must get the call's real duration
    /// without having to know about `uses_elapsed`: layers pass `Duration::ZERO` when it says
    /// `false`, and a slow-call rule would then never fire.
    #[test]
    fn a_classifier_of_ones_own_is_given_the_duration_by_default() {
        struct SlowIsFailure;
        impl Classify<u8, io::Error> for SlowIsFailure {
            fn classify(&self, _: Result<&u8, &io::Error>, elapsed: Duration) -> Outcome {
                match elapsed > Duration::from_secs(1) {
                    true => Outcome::Failure,
                    false => Outcome::Success,
                }
            }
        }
        assert!(Classify::<u8, io::Error>::uses_elapsed(&SlowIsFailure));
        // The ready-made classifiers do not read it, and say so.
        assert!(!Classify::<Response<()>, io::Error>::uses_elapsed(
            &HttpClassifier::new()
        ));
        assert!(!Classify::<Response<()>, io::Error>::uses_elapsed(
            &GrpcClassifier::new()
        ));
    }

    #[derive(Debug)]
    struct Quota;
    impl fmt::Display for Quota {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("over quota")
        }
    }
    impl Error for Quota {}

    #[derive(Debug)]
    struct Busy;
    impl fmt::Display for Busy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("busy")
        }
    }
    impl Error for Busy {}

    /// An outer layer's error around another.
    #[derive(Debug)]
    struct Wrapped(crate::BoxError);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&*self.0)
        }
    }

    fn boxed(err: impl Error + Send + Sync + 'static) -> crate::BoxError {
        Box::new(err)
    }

    #[test]
    fn ignore_error_ignores_the_type_itself_and_anywhere_in_its_source_chain() {
        use crate::BoxError;
        let c = DefaultClassifier.ignore_error::<Quota>();
        let classify =
            |err: &BoxError| Classify::<u8, BoxError>::classify(&c, Err(err), Duration::ZERO);
        assert_eq!(classify(&boxed(Quota)), Outcome::Ignored, "itself");
        assert_eq!(
            classify(&boxed(Wrapped(boxed(Wrapped(boxed(Quota)))))),
            Outcome::Ignored,
            "two layers down"
        );
        assert_eq!(
            classify(&boxed(io::Error::other(Quota))),
            Outcome::Ignored,
            "inside an io::Error"
        );
        let shared: std::sync::Arc<dyn Error + Send + Sync> = std::sync::Arc::new(Quota);
        assert_eq!(
            classify(&boxed(Wrapped(Box::new(shared)))),
            Outcome::Ignored,
            "shared"
        );
        // Other errors are the inner classifier's.
        assert_eq!(classify(&boxed(Busy)), Outcome::Failure);
        assert_eq!(classify(&boxed(Wrapped(boxed(Busy)))), Outcome::Failure);
        assert_eq!(classify(&"reset".into()), Outcome::Failure);
        // So are responses.
        assert_eq!(
            Classify::<u8, BoxError>::classify(&c, Ok(&1), Duration::ZERO),
            Outcome::Success
        );
    }

    #[test]
    fn ignore_error_leaves_responses_and_other_errors_to_the_inner_classifier() {
        use crate::BoxError;
        let c = HttpClassifier::new()
            .with_success(StatusCode::NOT_IMPLEMENTED)
            .ignore_error::<Quota>();
        let ok =
            |status: u16| Classify::<_, BoxError>::classify(&c, Ok(&http(status)), Duration::ZERO);
        assert_eq!(ok(200), Outcome::Success);
        assert_eq!(ok(503), Outcome::Failure);
        assert_eq!(ok(429), Outcome::Failure);
        assert_eq!(ok(501), Outcome::Success);
        assert!(!c.get_ref().is_failure(StatusCode::NOT_IMPLEMENTED));

        // Whatever the inner classifier answers for an error, it is its answer that stands.
        let lenient = |result: Result<&u8, &BoxError>, elapsed: Duration| match result {
            Err(_) if elapsed > Duration::from_secs(1) => Outcome::Failure,
            Err(_) => Outcome::Success,
            Ok(_) => Outcome::Ignored,
        };
        let c = lenient.ignore_error::<Quota>();
        let classify = |result: Result<&u8, &BoxError>, elapsed| c.classify(result, elapsed);
        let busy = boxed(Busy);
        assert_eq!(classify(Err(&busy), Duration::ZERO), Outcome::Success);
        assert_eq!(
            classify(Err(&busy), Duration::from_secs(2)),
            Outcome::Failure
        );
        assert_eq!(classify(Ok(&1), Duration::ZERO), Outcome::Ignored);
        // Ignored, however slow.
        assert_eq!(
            classify(Err(&boxed(Quota)), Duration::from_secs(2)),
            Outcome::Ignored
        );
    }

    #[test]
    fn ignore_error_chains_for_several_types() {
        use crate::BoxError;
        let c = GrpcClassifier::new()
            .ignore_error::<Quota>()
            .ignore_error::<Busy>();
        let classify = |err: &BoxError| {
            Classify::<Response<()>, BoxError>::classify(&c, Err(err), Duration::ZERO)
        };
        assert_eq!(classify(&boxed(Quota)), Outcome::Ignored);
        assert_eq!(classify(&boxed(Busy)), Outcome::Ignored);
        assert_eq!(classify(&boxed(Wrapped(boxed(Busy)))), Outcome::Ignored);
        assert_eq!(
            classify(&boxed(io::Error::other("reset"))),
            Outcome::Failure
        );
        assert_eq!(
            Classify::<_, BoxError>::classify(&c, Ok(&grpc(Some("14"))), Duration::ZERO),
            Outcome::Failure
        );
        assert_eq!(
            Classify::<_, BoxError>::classify(&c, Ok(&grpc(Some("0"))), Duration::ZERO),
            Outcome::Success
        );
    }

    /// The service's error type need not be `BoxError`: any boxed or shared `dyn Error`, the
    /// `dyn Error` itself, or an `io::Error`.
    #[test]
    fn ignore_error_reads_other_error_types() {
        use std::sync::Arc;
        let c = DefaultClassifier.ignore_error::<Quota>();
        let other = io::Error::other("reset");
        let quota = io::Error::other(Quota);
        assert_eq!(
            Classify::<u8, io::Error>::classify(&c, Err(&quota), Duration::ZERO),
            Outcome::Ignored
        );
        assert_eq!(
            Classify::<u8, io::Error>::classify(&c, Err(&other), Duration::ZERO),
            Outcome::Failure
        );
        let shared: Arc<dyn Error + Send + Sync> = Arc::new(Wrapped(boxed(Quota)));
        assert_eq!(
            Classify::<u8, _>::classify(&c, Err(&shared), Duration::ZERO),
            Outcome::Ignored
        );
        let local: Box<dyn Error> = Box::new(Quota);
        assert_eq!(
            Classify::<u8, _>::classify(&c, Err(&local), Duration::ZERO),
            Outcome::Ignored
        );
        let unsized_err: &(dyn Error + Send + Sync) = &Busy;
        assert_eq!(
            Classify::<u8, dyn Error + Send + Sync>::classify(&c, Err(unsized_err), Duration::ZERO),
            Outcome::Failure
        );
    }

    /// A service whose error type is a `Box<dyn Error>` that is neither `Send` nor `Sync` (or
    /// only `Send`): the ignored type is found in it, itself or down its `source()` chain.
    #[test]
    fn ignore_error_reads_a_box_dyn_error() {
        let c = DefaultClassifier.ignore_error::<Quota>();
        for (err, expected) in [
            (Box::new(Quota) as Box<dyn Error>, Outcome::Ignored),
            (Box::new(Wrapped(boxed(Quota))), Outcome::Ignored),
            (Box::new(Busy), Outcome::Failure),
        ] {
            assert_eq!(
                Classify::<u8, Box<dyn Error>>::classify(&c, Err(&err), Duration::ZERO),
                expected,
                "{err}"
            );
        }
        let sent: Box<dyn Error + Send> = Box::new(Wrapped(boxed(Quota)));
        assert_eq!(
            Classify::<u8, _>::classify(&c, Err(&sent), Duration::ZERO),
            Outcome::Ignored
        );
        assert_eq!(
            Classify::<u8, Box<dyn Error>>::classify(&c, Ok(&1), Duration::ZERO),
            Outcome::Success
        );
    }

    #[test]
    fn ignore_error_answers_uses_elapsed_as_the_inner_classifier_does() {
        use crate::BoxError;
        assert!(!Classify::<u8, BoxError>::uses_elapsed(
            &DefaultClassifier.ignore_error::<Quota>()
        ));
        assert!(!Classify::<Response<()>, BoxError>::uses_elapsed(
            &HttpClassifier::new()
                .ignore_error::<Quota>()
                .ignore_error::<Busy>()
        ));
        let slow = |_: Result<&u8, &BoxError>, elapsed: Duration| match elapsed.is_zero() {
            true => Outcome::Success,
            false => Outcome::Failure,
        };
        assert!(slow.ignore_error::<Quota>().uses_elapsed());
    }

    /// Zero-sized, and `Clone`, `Copy`, `Debug`, `Default`, `Send` and `Sync` whatever the
    /// ignored type is: only the inner classifier counts.
    #[test]
    fn ignore_error_is_as_cheap_to_share_as_its_inner_classifier() {
        fn shareable<C: Clone + Copy + fmt::Debug + Default + Send + Sync + 'static>(_: &C) {}
        /// An error that is neither `Send` nor `Sync` nor `Clone`.
        #[derive(Debug)]
        struct Local(std::marker::PhantomData<std::rc::Rc<()>>);
        impl fmt::Display for Local {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("local")
            }
        }
        impl Error for Local {}

        let c = DefaultClassifier
            .ignore_error::<Local>()
            .ignore_error::<Quota>();
        shareable(&c);
        shareable(&HttpClassifier::new().ignore_error::<Local>());
        shareable(&GrpcClassifier::new().ignore_error::<Local>());
        assert_eq!(std::mem::size_of_val(&c), 0);
        let debug = format!("{c:?}");
        assert!(debug.contains("DefaultClassifier"), "{debug}");
        assert!(
            debug.contains("Local") && debug.contains("Quota"),
            "{debug}"
        );
        let _: DefaultClassifier = IgnoreError::<DefaultClassifier, Quota>::default().into_inner();
    }

    /// A classifier is configured before it is wrapped; once wrapped, through `get_mut`.
    #[test]
    fn ignore_error_configures_its_inner_classifier_through_get_mut() {
        use crate::BoxError;
        let mut c = HttpClassifier::new()
            .with_success(StatusCode::NOT_IMPLEMENTED)
            .ignore_error::<Quota>();
        let c408 = c.get_ref().with_failure(StatusCode::REQUEST_TIMEOUT);
        *c.get_mut() = c408;
        let ok =
            |status: u16| Classify::<_, BoxError>::classify(&c, Ok(&http(status)), Duration::ZERO);
        assert_eq!(ok(408), Outcome::Failure);
        assert_eq!(ok(501), Outcome::Success);
        assert_eq!(
            Classify::<Response<()>, BoxError>::classify(&c, Err(&boxed(Quota)), Duration::ZERO),
            Outcome::Ignored
        );
    }

    /// A service that cannot fail (`Infallible`, as `service_fn` over an infallible future
    /// gives) can be classified too: its answers are the inner classifier's.
    #[test]
    fn ignore_error_classifies_an_infallible_service() {
        use std::convert::Infallible;
        let c = DefaultClassifier.ignore_error::<Quota>();
        assert_eq!(
            Classify::<u8, Infallible>::classify(&c, Ok(&1), Duration::ZERO),
            Outcome::Success
        );
        let c = HttpClassifier::new().ignore_error::<Quota>();
        assert_eq!(
            Classify::<_, Infallible>::classify(&c, Ok(&http(503)), Duration::ZERO),
            Outcome::Failure
        );
    }

    #[test]
    fn default_and_closure() {
        let err = io::Error::other("x");
        assert_eq!(
            Classify::<u8, _>::classify(&DefaultClassifier, Err(&err), Duration::ZERO),
            Outcome::Failure
        );
        assert_eq!(
            Classify::<u8, io::Error>::classify(&DefaultClassifier, Ok(&1), Duration::ZERO),
            Outcome::Success
        );
        assert!(!Classify::<u8, io::Error>::uses_elapsed(&DefaultClassifier));
        let ignore_odd = |r: Result<&u8, &io::Error>, _: Duration| match r {
            Ok(n) if n % 2 == 1 => Outcome::Ignored,
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        assert_eq!(
            ignore_odd.classify(Ok(&3), Duration::ZERO),
            Outcome::Ignored
        );
        assert!(ignore_odd.uses_elapsed());
    }
}
