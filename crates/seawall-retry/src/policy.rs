//! What is retried (or hedged), and how requests are copied.
//!
//! A [`Policy`] answers five questions for the retry and hedge layers: may this request be sent
//! again after an attempt ended ([`is_retryable`](Policy::is_retryable)), may copies of it run
//! side by side ([`is_hedgeable`](Policy::is_hedgeable), asked by the hedge only; the same answer
//! unless overridden), may it be sent again all the same when it was never sent
//! ([`retries_unsent`](Policy::retries_unsent)), did this attempt fail
//! ([`classify`](Policy::classify), an [`Outcome`] as everywhere in seawall) and did the server ask
//! for a pause ([`retry_after`](Policy::retry_after) on a failed response,
//! [`retry_after_error`](Policy::retry_after_error) on an error). Two are ready-made:
//!
//! | policy | retryable requests | hedged requests | other requests, when not sent | failures | server-requested pause |
//! |---|---|---|---|---|---|
//! | [`Classified`] around any [`seawall_core::Classify`] (default: [`DefaultClassifier`]) | all | all | — | what the classifier calls [`Outcome::Failure`] (default: every `Err`) | none |
//! | [`HttpPolicy`] | idempotent methods (GET, HEAD, OPTIONS, TRACE, PUT, DELETE), others carrying an `Idempotency-Key` once opted in ([`retry_if_header`](HttpPolicy::retry_if_header)), or all ([`retry_non_idempotent`](HttpPolicy::retry_non_idempotent)) | idempotent methods, or all with [`retry_non_idempotent`](HttpPolicy::retry_non_idempotent); a key does not make a request hedged | retried ([`retry_unsent`](HttpPolicy::retry_unsent) turns it off) | 5xx, 429 and errors (connection refused, reset, timed out), or what the classifier given to [`with_classifier`](HttpPolicy::with_classifier) says | `Retry-After` on 429 and 503 |
//!
//! `seawall::grpc::RetryClassifier` (the facade's `grpc` feature, with `retry`) is a policy as well
//! as a classifier: given with [`policy`](crate::RetryConfigBuilder::policy), it also waits the
//! pause a gRPC server asks for with `grpc-retry-pushback-ms`, and retries no failure whose
//! pushback says not to. Given as a hedge's [`policy`](crate::hedge::HedgeConfigBuilder::policy),
//! it holds the next hedge back for that pause, and sends no further hedge after a pushback that
//! says not to.
//!
//! A request was never sent when an attempt's error says so: a [`NotSent`] in its chain (every
//! seawall rejection raised before the request is handed on has one: a full bulkhead, a rate
//! limit, no endpoint, an open breaker) or a refused connection; see
//! [`seawall_core::error::not_sent`]. A `NotSent` that carries a
//! [`retry_after`](seawall_core::error::NotSent::retry_after) (a rate limiter's) makes the retry layer wait at least
//! that long before the next attempt, whatever the policy, as a `Retry-After` does.
//!
//! [`Ignoring`] wraps either so that errors of one type are returned at once, not retried: a
//! circuit breaker's `Open` above all (see
//! [`ignore_error`](crate::RetryConfigBuilder::ignore_error)). A policy wrapped by
//! [`ClassifyExt::ignore_error`](seawall_core::classify::ClassifyExt::ignore_error)
//! (`HttpPolicy::new().ignore_error::<Open>()`) is a policy that answers the same.
//!
//! A [`CloneRequest`] makes each attempt's copy of the request: [`ByClone`] (the default) uses
//! `Clone`, a closure `Fn(&Req) -> Option<Req>` decides per request, and [`NeverClone`] turns
//! retries off. A request that cannot be copied is sent once.
//!
//! [`DefaultClassifier`]: seawall_core::classify::DefaultClassifier
//! [`NotSent`]: seawall_core::error::NotSent

use http::{HeaderName, Method, Request, Response, StatusCode};
use seawall_core::{
    classify::{self, DefaultClassifier, HttpClassifier, IgnoreError},
    BoxError, Classify, Outcome,
};
use std::{error::Error, fmt, marker::PhantomData, time::Duration};

/// Decides what the retry and hedge layers may send again; see the [module docs](self).
pub trait Policy<Req, Res> {
    /// Whether `request` may be sent more than once (idempotency). `true` unless overridden.
    fn is_retryable(&self, request: &Req) -> bool {
        let _ = request;
        true
    }

    /// Whether a hedge may send copies of `request` while an earlier copy is still running.
    /// [`is_retryable`](Policy::is_retryable) unless overridden; only the hedge asks it.
    ///
    /// Answer `false` for a request that is safe to send again only once the earlier attempt
    /// has ended. [`HttpPolicy`] does so for a request that only its
    /// [`retry_if_header`](HttpPolicy::retry_if_header) makes retryable: a server that
    /// deduplicates by an idempotency key answers a copy arriving while the first is still being
    /// processed with a 409 Conflict at once (`draft-ietf-httpapi-idempotency-key-header`,
    /// Stripe's API), and that quick answer would win the hedge, cancelling the original that the
    /// server goes on to perform.
    fn is_hedgeable(&self, request: &Req) -> bool {
        self.is_retryable(request)
    }

    /// Whether `request`, when [`is_retryable`](Policy::is_retryable) says no, may still be sent
    /// again after an attempt whose error proves it was never sent
    /// ([`seawall_core::error::not_sent`]: a seawall rejection raised before the request was
    /// handed on, or a refused connection): the server cannot have acted on it, so even a POST is
    /// safe to send again, as Finagle's requeues and Envoy's `connect-failure` retries do. Any
    /// other failure of such a request is returned as it is, counting for no retry and no
    /// give-up. `true` unless overridden; not asked of a retryable request, and hedging never
    /// asks it (a copy sent alongside another is sent).
    fn retries_unsent(&self, request: &Req) -> bool {
        let _ = request;
        true
    }

    /// How one attempt ended: only [`Outcome::Failure`] is retried. A hedge answers with the
    /// first [`Outcome::Success`], and with anything else only once no other copy is running.
    fn classify(&self, result: Result<&Res, &BoxError>, elapsed: Duration) -> Outcome;

    /// A pause the server asked for before the next attempt, read from a failed response.
    ///
    /// Read only after an attempt answered with a response that [`classify`](Policy::classify)
    /// calls an [`Outcome::Failure`], and only when the rules before it (attempts left, a copy of
    /// the request) allow another attempt. The next attempt waits the longer of it and the
    /// backoff. A pause longer than the layer's
    /// [`retry_after_cap`](crate::RetryConfigBuilder::retry_after_cap) is not waited: the response
    /// is returned as it is, with a [`GiveUpReason::RetryAfter`](crate::GiveUpReason) event; so is
    /// one of [`Duration::MAX`], which asks for no retry at all, whatever the cap.
    ///
    /// A hedge reads it after a copy's failed response while another copy is still running and
    /// another hedge may still be sent: [`Duration::MAX`] sends no further hedge, any other pause
    /// holds the next hedge back until at least that long after the failure, with no cap (a floor:
    /// unlike gRFC A6's hedging, a pause never sends a hedge sooner than its delay); the copies
    /// already out run on. `None` unless overridden.
    fn retry_after(&self, response: &Res) -> Option<Duration> {
        let _ = response;
        None
    }

    /// A pause the server asked for before the next attempt, read from a failed attempt's error:
    /// gRPC's retry pushback (gRFC A6), which a client generated by tonic hands over as an
    /// `Err(tonic::Status)` carrying `grpc-retry-pushback-ms` (`seawall::grpc::RetryClassifier`
    /// reads it), or a wait a client of your own puts in its errors.
    ///
    /// What [`retry_after`](Policy::retry_after) is for a response: read only after an attempt
    /// whose error [`classify`](Policy::classify) calls an [`Outcome::Failure`], under the same
    /// rules (the longer of it and the backoff is waited; a pause over `retry_after_cap`, or
    /// [`Duration::MAX`] for "do not retry", returns the error as it is), and the call's deadline
    /// must leave room for it as for any backoff. A call that succeeds first time never asks it.
    /// A rejection's own [`NotSent::retry_after`](seawall_core::error::NotSent::retry_after) (a
    /// rate limiter's) is waited as well, before it, unless this answer ended the call; the
    /// deadline must then leave room for both (the backoff may be shortened to fit, this pause
    /// is not). A hedge reads it after a copy's failed error as it reads
    /// [`retry_after`](Policy::retry_after). `None` unless overridden.
    fn retry_after_error(&self, error: &BoxError) -> Option<Duration> {
        let _ = error;
        None
    }

    /// Whether [`classify`](Policy::classify) looks at `elapsed`; when `false` the layers pass
    /// [`Duration::ZERO`] and skip reading the clock. `true` unless overridden, so a policy that
    /// reads `elapsed` always gets the real duration; one that never does can answer `false` to
    /// save the clock reads, as [`HttpPolicy`] and [`Classified`] over the ready-made classifiers
    /// do.
    fn uses_elapsed(&self) -> bool {
        true
    }
}

/// A [`Policy`] that returns errors of type `E` at once: an attempt whose error has an `E`
/// anywhere in its `source()` chain is [`Outcome::Ignored`], so it is neither retried nor counted
/// by a token-bucket budget. A hedge does not answer with it while another copy of the call is
/// still running (a bulkhead's rejection of a copy leaves the original to answer), and returns it
/// once none is, unless another copy failed (the failure is returned then). Everything else is as
/// `P` says.
/// Made by [`ignore_error`](crate::RetryConfigBuilder::ignore_error).
pub struct Ignoring<P, E> {
    policy: P,
    error: PhantomData<fn() -> E>,
}

impl<P, E> Ignoring<P, E> {
    /// `policy`, returning errors of type `E` at once.
    pub fn new(policy: P) -> Self {
        Ignoring {
            policy,
            error: PhantomData,
        }
    }

    /// The policy for everything else.
    pub fn get_ref(&self) -> &P {
        &self.policy
    }
}

impl<Req, Res, P, E> Policy<Req, Res> for Ignoring<P, E>
where
    P: Policy<Req, Res>,
    E: Error + 'static,
{
    #[inline]
    fn is_retryable(&self, request: &Req) -> bool {
        self.policy.is_retryable(request)
    }

    #[inline]
    fn is_hedgeable(&self, request: &Req) -> bool {
        self.policy.is_hedgeable(request)
    }

    #[inline]
    fn retries_unsent(&self, request: &Req) -> bool {
        self.policy.retries_unsent(request)
    }

    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>, elapsed: Duration) -> Outcome {
        classify_ignoring::<E, _, _, _>(&self.policy, result, elapsed)
    }

    #[inline]
    fn retry_after(&self, response: &Res) -> Option<Duration> {
        self.policy.retry_after(response)
    }

    #[inline]
    fn retry_after_error(&self, error: &BoxError) -> Option<Duration> {
        self.policy.retry_after_error(error)
    }

    fn uses_elapsed(&self) -> bool {
        self.policy.uses_elapsed()
    }
}

/// `policy.ignore_error::<E>()` (from [`ClassifyExt`](seawall_core::classify::ClassifyExt)) is a
/// policy too, answering as [`Ignoring<P, E>`](Ignoring) does: an error with an `E` anywhere in
/// its `source()` chain is [`Outcome::Ignored`], returned at once; everything else is as `P`
/// says. So `RetryLayer::builder().policy(HttpPolicy::new().ignore_error::<Open>())` is the same
/// retry as `RetryLayer::builder().http().ignore_error::<Open>()`.
impl<Req, Res, P, E> Policy<Req, Res> for IgnoreError<P, E>
where
    P: Policy<Req, Res>,
    E: Error + 'static,
{
    #[inline]
    fn is_retryable(&self, request: &Req) -> bool {
        self.get_ref().is_retryable(request)
    }

    #[inline]
    fn is_hedgeable(&self, request: &Req) -> bool {
        self.get_ref().is_hedgeable(request)
    }

    #[inline]
    fn retries_unsent(&self, request: &Req) -> bool {
        self.get_ref().retries_unsent(request)
    }

    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>, elapsed: Duration) -> Outcome {
        classify_ignoring::<E, _, _, _>(self.get_ref(), result, elapsed)
    }

    #[inline]
    fn retry_after(&self, response: &Res) -> Option<Duration> {
        self.get_ref().retry_after(response)
    }

    #[inline]
    fn retry_after_error(&self, error: &BoxError) -> Option<Duration> {
        self.get_ref().retry_after_error(error)
    }

    fn uses_elapsed(&self) -> bool {
        self.get_ref().uses_elapsed()
    }
}

/// [`Outcome::Ignored`] for an error with an `E` in its `source()` chain, `policy`'s answer
/// otherwise: what [`Ignoring`] and [`IgnoreError`] answer.
#[inline]
fn classify_ignoring<E, P, Req, Res>(
    policy: &P,
    result: Result<&Res, &BoxError>,
    elapsed: Duration,
) -> Outcome
where
    E: Error + 'static,
    P: Policy<Req, Res>,
{
    match result {
        Err(error) if seawall_core::error::is::<E>(&**error) => Outcome::Ignored,
        result => policy.classify(result, elapsed),
    }
}

impl<P: Clone, E> Clone for Ignoring<P, E> {
    fn clone(&self) -> Self {
        Ignoring::new(self.policy.clone())
    }
}

impl<P: Copy, E> Copy for Ignoring<P, E> {}

impl<P: fmt::Debug, E> fmt::Debug for Ignoring<P, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ignoring")
            .field("policy", &self.policy)
            .field("error", &std::any::type_name::<E>())
            .finish()
    }
}

/// A [`Policy`] from a [`Classify`]: every request is retryable, failures are what the classifier
/// says, no server-requested pauses.
///
/// The classifier sees the attempt's error as a [`BoxError`], so a closure is written
/// `|result: Result<&Res, &BoxError>, elapsed: Duration| -> Outcome`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Classified<C = DefaultClassifier>(pub C);

impl<Req, Res, C> Policy<Req, Res> for Classified<C>
where
    C: Classify<Res, BoxError>,
{
    #[inline]
    fn classify(&self, result: Result<&Res, &BoxError>, elapsed: Duration) -> Outcome {
        self.0.classify(result, elapsed)
    }

    fn uses_elapsed(&self) -> bool {
        self.0.uses_elapsed()
    }
}

/// The HTTP policy: retries 5xx, 429 and connection errors, for idempotent methods only unless
/// [`retry_non_idempotent`](HttpPolicy::retry_non_idempotent) is set or a request carries the
/// header given to [`retry_if_header`](HttpPolicy::retry_if_header) (an `Idempotency-Key`:
/// [`idempotency_key`](HttpPolicy::idempotency_key)), and reads `Retry-After` on 429 and 503. A
/// request of another method is sent again only when it was never sent (a seawall rejection below
/// the retry, a refused connection; see [`retry_unsent`](HttpPolicy::retry_unsent)). A hedge
/// given this policy copies only the idempotent methods, or every method with
/// `retry_non_idempotent`: the header makes a request retried, not hedged
/// ([`Policy::is_hedgeable`]).
///
/// What is a failure is decided by its classifier `C`, an [`HttpClassifier`] unless
/// [`with_classifier`](HttpPolicy::with_classifier) gives another; which requests may be sent
/// again, and `Retry-After`, stay as above whatever the classifier.
///
/// ```
/// use seawall_retry::policy::{HttpPolicy, Policy};
/// use std::time::Duration;
///
/// let policy = HttpPolicy::new();
/// let get = http::Request::get("/users/1").body(()).unwrap();
/// let post = http::Request::post("/users").body(()).unwrap();
/// assert!(Policy::<_, http::Response<()>>::is_retryable(&policy, &get));
/// assert!(!Policy::<_, http::Response<()>>::is_retryable(&policy, &post));
/// // ... unless it was never sent.
/// assert!(Policy::<_, http::Response<()>>::retries_unsent(&policy, &post));
///
/// let busy = http::Response::builder().status(503).header("retry-after", "2").body(()).unwrap();
/// assert_eq!(Policy::<http::Request<()>, _>::retry_after(&policy, &busy), Some(Duration::from_secs(2)));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct HttpPolicy<C = HttpClassifier> {
    classifier: C,
    non_idempotent: bool,
    unsent: bool,
    /// A reference, not a `HeaderName`, so that the policy stays `Copy` and copying it into
    /// every call touches no reference count.
    opt_in: Option<&'static HeaderName>,
}

/// The name [`HttpPolicy::idempotency_key`] opts in.
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

impl Default for HttpPolicy {
    fn default() -> Self {
        HttpPolicy {
            classifier: HttpClassifier::default(),
            non_idempotent: false,
            unsent: true,
            opt_in: None,
        }
    }
}

impl HttpPolicy {
    /// 5xx, 429 and errors are retried, for idempotent methods; a request of another method only
    /// when it was never sent.
    pub fn new() -> Self {
        HttpPolicy::default()
    }
}

impl<C> HttpPolicy<C> {
    /// Decides failures with `classifier` instead, keeping the rest of the policy: which
    /// requests may be sent again (idempotent methods, [`retry_if_header`](Self::retry_if_header),
    /// [`retry_non_idempotent`](Self::retry_non_idempotent), [`retry_unsent`](Self::retry_unsent))
    /// and `Retry-After` on a 429 or 503 it calls a failure.
    ///
    /// `classifier` is an [`HttpClassifier`] set up otherwise (one that treats 501 as final), or
    /// any [`Classify`] over `http::Response<B>` and [`BoxError`]: a closure
    /// `Fn(Result<&http::Response<B>, &BoxError>, Duration) -> Outcome`, or a type of your own,
    /// for example one that asks an `HttpClassifier` after looking at a header of its own:
    ///
    /// ```
    /// use seawall_core::{classify::HttpClassifier, BoxError, Classify, Outcome};
    /// use seawall_retry::policy::{HttpPolicy, Policy};
    /// use std::time::Duration;
    ///
    /// type Response = http::Response<()>;
    ///
    /// let base = HttpClassifier::new();
    /// let policy = HttpPolicy::new().with_classifier(
    ///     move |result: Result<&Response, &BoxError>, elapsed: Duration| match result {
    ///         // A 200 from a replica that is catching up is worth another try.
    ///         Ok(res) if res.headers().contains_key("x-stale") => Outcome::Failure,
    ///         _ => base.classify(result, elapsed),
    ///     },
    /// );
    ///
    /// let stale = http::Response::builder().header("x-stale", "1").body(()).unwrap();
    /// let p: &dyn Policy<http::Request<()>, Response> = &policy;
    /// assert_eq!(p.classify(Ok(&stale), Duration::ZERO), Outcome::Failure);
    /// // Still only idempotent methods.
    /// assert!(!p.is_retryable(&http::Request::post("/orders").body(()).unwrap()));
    /// ```
    ///
    /// A closure is asked for every attempt's duration (its
    /// [`uses_elapsed`](Classify::uses_elapsed) is `true`); a type of your own that never reads
    /// it can answer `false` to spare the clock reads.
    pub fn with_classifier<C2>(self, classifier: C2) -> HttpPolicy<C2> {
        HttpPolicy {
            classifier,
            non_idempotent: self.non_idempotent,
            unsent: self.unsent,
            opt_in: self.opt_in,
        }
    }

    /// The classifier that decides failures.
    pub fn classifier(&self) -> &C {
        &self.classifier
    }

    /// Also retries POST, PATCH and other non-idempotent methods, every request of them. Only
    /// for servers that deduplicate every such request, or the same order may be placed twice;
    /// to retry only the requests that carry an idempotency key, see
    /// [`retry_if_header`](Self::retry_if_header).
    pub fn retry_non_idempotent(mut self, yes: bool) -> Self {
        self.non_idempotent = yes;
        self
    }

    /// Also retries a request of a non-idempotent method (POST, PATCH, ...) that carries the
    /// header `name`, whatever its value: a server that deduplicates requests by that header
    /// acts on the second copy no more than on the first. A request without it is sent again
    /// only when it was never sent, as before. One header: a later call replaces `name`.
    ///
    /// For the `Idempotency-Key` header (Stripe's API, the IETF draft
    /// `draft-ietf-httpapi-idempotency-key-header`), use
    /// [`idempotency_key`](Self::idempotency_key).
    ///
    /// The header is read from the request as the retry (or hedge) layer is given it: set it
    /// above the layer, not in a layer below it. Every attempt must carry the same value: the
    /// default cloner copies the request as it is; a cloner of your own must not make a new key.
    /// Such a request is retried, not hedged ([`Policy::is_hedgeable`]): a server deduplicating
    /// by the header answers a copy sent while the first is still being processed with a 409
    /// Conflict, which would win the hedge. Nothing else changes: what is a failure is still the
    /// classifier's to say, and the header is only looked up for a method that is not
    /// idempotent.
    ///
    /// This is configuration, done once while building a layer: the policy keeps the name for
    /// the life of the program (each call leaks one `HeaderName`; `idempotency-key` is not
    /// leaked), so that it stays `Copy` and a call copies a pointer, touching no reference count.
    /// Do not call it per request.
    pub fn retry_if_header(self, name: HeaderName) -> Self {
        let name = if name == IDEMPOTENCY_KEY {
            &IDEMPOTENCY_KEY
        } else {
            Box::leak(Box::new(name))
        };
        self.retry_if_header_static(name)
    }

    /// Also retries a request of a non-idempotent method that carries an `Idempotency-Key`
    /// header: [`retry_if_header`](Self::retry_if_header) for `idempotency-key`, the header
    /// Stripe's API reads and the IETF draft `draft-ietf-httpapi-idempotency-key-header`
    /// standardises.
    ///
    /// ```
    /// use seawall_retry::policy::{HttpPolicy, Policy};
    ///
    /// let policy = HttpPolicy::new().idempotency_key();
    /// let p: &dyn Policy<http::Request<()>, http::Response<()>> = &policy;
    /// let keyed = http::Request::post("/charges")
    ///     .header("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
    ///     .body(())
    ///     .unwrap();
    /// assert!(p.is_retryable(&keyed));
    /// assert!(!p.is_retryable(&http::Request::post("/charges").body(()).unwrap()));
    /// // Retried, not hedged.
    /// assert!(!p.is_hedgeable(&keyed));
    /// ```
    ///
    /// A retry after a per-attempt timeout or a reset usually reaches the server while it is
    /// still processing the first attempt, and a server following the draft answers it with 409
    /// Conflict at once. [`HttpClassifier`] counts a 4xx as an answer, so that 409 is what the
    /// call returns, while the server goes on to perform the first attempt. A retry that arrives
    /// once the first has completed gets the stored answer, whatever it was: a stored 5xx is
    /// replayed, not performed again. To wait out the 409 and ask again, count it as a failure
    /// (the retry reads no `Retry-After` on a 409: give it a backoff and attempts enough for the
    /// server to finish; every 409 is then retried, a PUT's edit conflict included):
    ///
    /// ```
    /// use http::StatusCode;
    /// use seawall_core::{classify::HttpClassifier, Outcome};
    /// use seawall_retry::policy::{HttpPolicy, Policy};
    /// use std::time::Duration;
    ///
    /// let policy = HttpPolicy::new()
    ///     .idempotency_key()
    ///     .with_classifier(HttpClassifier::new().with_failure(StatusCode::CONFLICT));
    /// let p: &dyn Policy<http::Request<()>, http::Response<()>> = &policy;
    /// let in_progress = http::Response::builder().status(409).body(()).unwrap();
    /// assert_eq!(p.classify(Ok(&in_progress), Duration::ZERO), Outcome::Failure);
    /// ```
    pub fn idempotency_key(self) -> Self {
        self.retry_if_header_static(&IDEMPOTENCY_KEY)
    }

    fn retry_if_header_static(mut self, name: &'static HeaderName) -> Self {
        self.opt_in = Some(name);
        self
    }

    /// Whether a request of a non-idempotent method (POST, PATCH, ...) is sent again when an
    /// attempt's error proves it was never sent: a seawall rejection raised before the request
    /// was handed on (a full bulkhead, a rate limit, no endpoint, an open breaker not
    /// [ignored](crate::RetryConfigBuilder::ignore_error)) or a refused connection (see
    /// [`seawall_core::error::not_sent`]). On by default: the server cannot have acted on it.
    /// Any other failure of such a request (a 503, a reset, a timeout) is returned as it is.
    ///
    /// A refused connection proves the request was never sent only for a client that makes one
    /// connection attempt per call. A client below that follows redirects must not (reqwest:
    /// `redirect(reqwest::redirect::Policy::none())`): a POST the server applied and answered
    /// with a 303 to a host that refuses the connection would fail with that refused connection,
    /// and be sent again. Turn this off for a service below whose error can carry a later step's
    /// refused connection (a write, then a notification to another host).
    pub fn retry_unsent(mut self, yes: bool) -> Self {
        self.unsent = yes;
        self
    }
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    method.is_idempotent()
}

impl<B, RB, C> Policy<Request<B>, Response<RB>> for HttpPolicy<C>
where
    C: Classify<Response<RB>, BoxError>,
{
    #[inline]
    fn is_retryable(&self, request: &Request<B>) -> bool {
        self.non_idempotent
            || is_idempotent(request.method())
            || self
                .opt_in
                .is_some_and(|name| request.headers().contains_key(name))
    }

    /// The key header does not count: a copy sent while the first is still being processed
    /// gets the server's 409 Conflict.
    #[inline]
    fn is_hedgeable(&self, request: &Request<B>) -> bool {
        self.non_idempotent || is_idempotent(request.method())
    }

    #[inline]
    fn retries_unsent(&self, _request: &Request<B>) -> bool {
        self.unsent
    }

    #[inline]
    fn classify(&self, result: Result<&Response<RB>, &BoxError>, elapsed: Duration) -> Outcome {
        self.classifier.classify(result, elapsed)
    }

    fn uses_elapsed(&self) -> bool {
        self.classifier.uses_elapsed()
    }

    fn retry_after(&self, response: &Response<RB>) -> Option<Duration> {
        match response.status() {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                classify::retry_after(response.headers())
            }
            _ => None,
        }
    }
}

/// Makes the copy of a request that each further attempt sends.
///
/// Implemented by [`ByClone`], [`NeverClone`] and closures `Fn(&Req) -> Option<Req>`; `None`
/// means this request cannot be copied, and it is sent once.
///
/// ```
/// use seawall_retry::policy::CloneRequest;
///
/// // Only requests with a buffered body can be sent again.
/// let cloner = |req: &Option<String>| req.as_ref().map(|body| Some(body.clone()));
/// assert_eq!(cloner.clone_request(&Some("x".into())), Some(Some("x".to_string())));
/// assert_eq!(cloner.clone_request(&None), None);
/// ```
pub trait CloneRequest<Req> {
    /// A copy of `request`, or `None` if it cannot be sent again.
    fn clone_request(&self, request: &Req) -> Option<Req>;
}

/// Copies requests with `Clone` (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct ByClone;

impl<Req: Clone> CloneRequest<Req> for ByClone {
    #[inline]
    fn clone_request(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

/// Never copies: every request is sent once.
#[derive(Debug, Clone, Copy, Default)]
pub struct NeverClone;

impl<Req> CloneRequest<Req> for NeverClone {
    #[inline]
    fn clone_request(&self, _request: &Req) -> Option<Req> {
        None
    }
}

impl<Req, F> CloneRequest<Req> for F
where
    F: Fn(&Req) -> Option<Req>,
{
    #[inline]
    fn clone_request(&self, request: &Req) -> Option<Req> {
        self(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> Response<()> {
        Response::builder().status(code).body(()).unwrap()
    }

    type P = dyn Policy<Request<()>, Response<()>>;

    #[test]
    fn http_policy_table() {
        let p: &P = &HttpPolicy::new();
        for (code, outcome) in [
            (200, Outcome::Success),
            (404, Outcome::Success),
            (429, Outcome::Failure),
            (500, Outcome::Failure),
            (503, Outcome::Failure),
        ] {
            assert_eq!(p.classify(Ok(&status(code)), Duration::ZERO), outcome);
        }
        let err: BoxError = "connection refused".into();
        assert_eq!(p.classify(Err(&err), Duration::ZERO), Outcome::Failure);
        for m in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            let req = Request::builder().method(m).body(()).unwrap();
            assert!(p.is_retryable(&req), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            let req = Request::builder().method(m).body(()).unwrap();
            assert!(!p.is_retryable(&req), "{m}");
        }
        let p: &P = &HttpPolicy::new().retry_non_idempotent(true);
        assert!(p.is_retryable(&Request::post("/").body(()).unwrap()));
        use seawall_core::classify::ClassifyExt;
        let post = Request::post("/").body(()).unwrap();
        let p: &P = &HttpPolicy::new();
        assert!(p.retries_unsent(&post), "on by default");
        let p: &P = &HttpPolicy::new().retry_unsent(false);
        assert!(!p.retries_unsent(&post));
        let p: &P = &Ignoring::<_, Refused>::new(HttpPolicy::new().retry_unsent(false));
        assert!(!p.retries_unsent(&post));
        let p: &P = &HttpPolicy::new()
            .retry_unsent(false)
            .ignore_error::<Refused>();
        assert!(!p.retries_unsent(&post));
        let p: &P = &HttpPolicy::new()
            .with_classifier(HttpClassifier::new().with_success(StatusCode::NOT_IMPLEMENTED));
        assert_eq!(
            p.classify(Ok(&status(501)), Duration::ZERO),
            Outcome::Success
        );
    }

    #[test]
    fn with_classifier_keeps_the_rest_of_the_policy() {
        let post = Request::post("/").body(()).unwrap();
        let keyed = Request::post("/")
            .header("idempotency-key", "1")
            .body(())
            .unwrap();
        let errors_only = |result: Result<&Response<()>, &BoxError>, _: Duration| match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        };
        let p: &P = &HttpPolicy::new()
            .retry_unsent(false)
            .idempotency_key()
            .with_classifier(errors_only);
        assert_eq!(
            p.classify(Ok(&status(503)), Duration::ZERO),
            Outcome::Success
        );
        assert!(!p.retries_unsent(&post));
        assert!(p.is_retryable(&keyed));
        assert!(!p.is_retryable(&post));
        assert!(p.is_retryable(&Request::get("/").body(()).unwrap()));
        assert!(!p.is_hedgeable(&keyed), "retried, not hedged");
        assert!(p.is_hedgeable(&Request::get("/").body(()).unwrap()));
        assert!(p.uses_elapsed(), "a closure is given the duration");
        let p: &P = &HttpPolicy::new()
            .retry_non_idempotent(true)
            .with_classifier(errors_only);
        assert!(p.is_retryable(&post));
        assert!(p.is_hedgeable(&post));
        assert!(p.retries_unsent(&post));
    }

    /// The policy is copied into every retry call and its response future: the header name
    /// adds one pointer, no drop glue and no reference count.
    #[test]
    fn http_policy_is_copy_and_a_header_name_costs_a_pointer() {
        fn is_copy<T: Copy>() {}
        is_copy::<HttpPolicy>();
        is_copy::<Ignoring<HttpPolicy, Refused>>();
        const _: () = assert!(
            std::mem::size_of::<HttpPolicy>() <= std::mem::size_of::<HttpClassifier>() + 16
        );
        assert!(!std::mem::needs_drop::<HttpPolicy>());
        let own = HttpPolicy::new().retry_if_header(HeaderName::from_bytes(b"x-dedup-id").unwrap());
        let copy = own;
        let keyed = Request::post("/")
            .header("x-dedup-id", "1")
            .body(())
            .unwrap();
        let p: &P = &own;
        assert!(p.is_retryable(&keyed));
        let p: &P = &copy;
        assert!(p.is_retryable(&keyed));
    }

    #[test]
    fn a_key_opts_into_retries_not_hedges_through_every_wrapper() {
        use seawall_core::classify::ClassifyExt;
        let keyed = Request::post("/")
            .header("idempotency-key", "1")
            .body(())
            .unwrap();
        let get = Request::get("/").body(()).unwrap();
        let wrapped: [&P; 3] = [
            &HttpPolicy::new().idempotency_key(),
            &Ignoring::<_, Refused>::new(HttpPolicy::new().idempotency_key()),
            &HttpPolicy::new()
                .idempotency_key()
                .ignore_error::<Refused>(),
        ];
        for p in wrapped {
            assert!(p.is_retryable(&keyed));
            assert!(!p.is_hedgeable(&keyed));
            assert!(p.is_hedgeable(&get));
        }
        // A policy of one's own hedges what it retries unless it says otherwise.
        assert!(Policy::<Ping, u8>::is_hedgeable(&SlowIsFailure, &Ping));
    }

    #[test]
    fn retry_after_only_on_429_and_503() {
        let p: &P = &HttpPolicy::new();
        for (code, expected) in [
            (429, Some(Duration::from_secs(7))),
            (503, Some(Duration::from_secs(7))),
            (500, None),
            (502, None),
        ] {
            let res = Response::builder()
                .status(code)
                .header("retry-after", "7")
                .body(())
                .unwrap();
            assert_eq!(p.retry_after(&res), expected, "{code}");
        }
        assert_eq!(p.retry_after(&status(503)), None);
    }

    /// A slow-call rule of one's own: an answer after 50 ms is a failure.
    #[derive(Clone)]
    struct SlowIsFailure;

    #[derive(Clone, Copy)]
    struct Ping;
    impl seawall_core::deadline::RequestDeadline for Ping {}

    impl Policy<Ping, u8> for SlowIsFailure {
        fn classify(&self, result: Result<&u8, &BoxError>, elapsed: Duration) -> Outcome {
            match result {
                Ok(_) if elapsed <= Duration::from_millis(50) => Outcome::Success,
                _ => Outcome::Failure,
            }
        }
    }

    #[test]
    fn a_policy_of_ones_own_is_given_the_duration_by_default() {
        assert!(Policy::<Ping, u8>::uses_elapsed(&SlowIsFailure));
        assert!(!Policy::<(), u8>::uses_elapsed(&Classified::<
            DefaultClassifier,
        >::default()));
        let p: &P = &HttpPolicy::new();
        assert!(!p.uses_elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_is_retried_by_a_policy_that_reads_the_duration() {
        use crate::{Backoff, RetryBudget, RetryLayer};
        use std::sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        };
        use tower::{service_fn, Layer, ServiceExt};

        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        // The first answer takes 100 ms, the second 10 ms.
        let inner = service_fn(move |_: Ping| {
            let n = counted.fetch_add(1, Ordering::Relaxed);
            async move {
                let took = if n == 0 { 100 } else { 10 };
                tokio::time::sleep(Duration::from_millis(took)).await;
                Ok::<u8, BoxError>(n as u8)
            }
        });
        let layer = RetryLayer::builder()
            .policy(SlowIsFailure)
            .max_attempts(3)
            .backoff(Backoff::constant(Duration::ZERO))
            .budget(RetryBudget::unlimited())
            .build()
            .unwrap();
        let answer = layer.layer(inner).oneshot(Ping).await.unwrap();
        assert_eq!(answer, 1, "the slow first answer was retried");
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[derive(Debug)]
    struct Refused;
    impl fmt::Display for Refused {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("refused")
        }
    }
    impl Error for Refused {}

    /// An error that has another as its source.
    #[derive(Debug)]
    struct Wrapped(Refused);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn ignoring_returns_its_error_type_and_defers_the_rest() {
        let p: &P = &Ignoring::<_, Refused>::new(HttpPolicy::new());
        let refused: BoxError = Box::new(Refused);
        let wrapped: BoxError = Box::new(Wrapped(Refused));
        let other: BoxError = "connection reset".into();
        assert_eq!(p.classify(Err(&refused), Duration::ZERO), Outcome::Ignored);
        assert_eq!(p.classify(Err(&wrapped), Duration::ZERO), Outcome::Ignored);
        assert_eq!(p.classify(Err(&other), Duration::ZERO), Outcome::Failure);
        assert_eq!(
            p.classify(Ok(&status(503)), Duration::ZERO),
            Outcome::Failure
        );
        assert_eq!(
            p.classify(Ok(&status(200)), Duration::ZERO),
            Outcome::Success
        );
        assert!(!p.is_retryable(&Request::post("/").body(()).unwrap()));
        assert!(p.is_retryable(&Request::get("/").body(()).unwrap()));
        let busy = Response::builder()
            .status(503)
            .header("retry-after", "2")
            .body(())
            .unwrap();
        assert_eq!(p.retry_after(&busy), Some(Duration::from_secs(2)));
        assert!(!p.uses_elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn an_ignored_error_is_returned_at_once() {
        use crate::{RetryBudget, RetryLayer};
        use seawall_core::error::is;
        use std::sync::{
            atomic::{AtomicU32, Ordering},
            Arc,
        };
        use tokio::time::Instant;
        use tower::{service_fn, Layer, ServiceExt};

        let calls = Arc::new(AtomicU32::new(0));
        let counted = calls.clone();
        // Refused first, then a plain failure, then an answer.
        let inner = service_fn(move |_: Ping| {
            let n = counted.fetch_add(1, Ordering::Relaxed);
            std::future::ready(match n % 3 {
                0 => Err::<u8, BoxError>(Box::new(Wrapped(Refused))),
                1 => Err("reset".into()),
                _ => Ok(7),
            })
        });
        let layer = RetryLayer::builder()
            .budget(RetryBudget::unlimited())
            .ignore_error::<Refused>()
            .build()
            .unwrap();
        let svc = layer.layer(inner);

        let start = Instant::now();
        let err = svc.clone().oneshot(Ping).await.unwrap_err();
        assert!(is::<Refused>(&*err), "{err}");
        assert_eq!(calls.load(Ordering::Relaxed), 1, "not retried");
        assert_eq!(start.elapsed(), Duration::ZERO, "no backoff");
        // Any other failure is still retried.
        assert_eq!(svc.oneshot(Ping).await.unwrap(), 7);
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn classified_and_cloners() {
        let p: Classified = Classified::default();
        let err: BoxError = "x".into();
        assert_eq!(
            Policy::<(), u8>::classify(&p, Err(&err), Duration::ZERO),
            Outcome::Failure
        );
        assert!(Policy::<(), u8>::is_retryable(&p, &()));
        assert_eq!(Policy::<(), u8>::retry_after(&p, &1), None);
        assert_eq!(ByClone.clone_request(&5u8), Some(5));
        assert_eq!(CloneRequest::<u8>::clone_request(&NeverClone, &5u8), None);
    }
}
