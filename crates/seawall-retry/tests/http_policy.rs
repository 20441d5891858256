//! The HTTP policy: what is retried, idempotency, and `Retry-After` up to its cap.

mod support;

use seawall_core::{classify::HttpClassifier, BoxError, Classify, Outcome};
use seawall_retry::{policy::HttpPolicy, Backoff, RetryBudget, RetryLayer};
use std::time::Duration;
use support::{get, ms, post, statuses, Req};
use tower::{Layer, ServiceExt};

fn layer() -> seawall_retry::RetryConfigBuilder<HttpPolicy> {
    RetryLayer::builder()
        .http()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
}

/// Sends one GET through the default test layer over `svc`.
async fn send_get<S>(svc: S) -> http::Response<()>
where
    S: tower::Service<Req, Response = http::Response<()>, Error = seawall_core::BoxError> + Clone,
{
    layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_5xx_and_429_not_4xx() {
    for (status, calls_expected) in [
        (500, 3),
        (502, 3),
        (503, 3),
        (504, 3),
        (429, 3),
        (400, 1),
        (404, 1),
        (409, 1),
        (200, 1),
    ] {
        let (svc, calls) = statuses(vec![(status, None)]);
        let res = send_get(svc).await;
        assert_eq!(res.status(), status);
        assert_eq!(calls.count(), calls_expected, "status {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn recovers_after_a_503() {
    let (svc, calls) = statuses(vec![(503, None), (200, None)]);
    let res = send_get(svc).await;
    assert_eq!(res.status(), 200);
    assert_eq!(calls.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried() {
    let (svc, calls) = support::flaky(1);
    let svc = svc.map_response(|_| http::Response::new(()));
    let res = layer().build().unwrap().layer(svc).oneshot(get()).await;
    assert!(res.is_ok());
    assert_eq!(calls.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_methods_only_when_opted_in() {
    let (svc, calls) = statuses(vec![(503, None)]);
    layer()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(calls.count(), 1, "POST is not retried by default");

    let (svc, calls) = statuses(vec![(503, None)]);
    layer()
        .policy(HttpPolicy::new().retry_non_idempotent(true))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(calls.count(), 3, "POST is retried once opted in");

    for method in ["PUT", "DELETE", "HEAD", "OPTIONS"] {
        let (svc, calls) = statuses(vec![(503, None)]);
        let req: Req = http::Request::builder().method(method).body("x").unwrap();
        layer()
            .build()
            .unwrap()
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(calls.count(), 3, "{method} is idempotent");
    }
}

/// Neither an error after sending (a reset) nor a retryable status makes a non-idempotent request
/// retried unless opted in: the server may have acted on it. (One that was never sent is: see
/// `not_sent.rs`.)
#[tokio::test(start_paused = true)]
async fn non_idempotent_methods_are_sent_once_whatever_the_failure() {
    let (svc, calls) = support::flaky(1);
    let svc = svc.map_response(|_| http::Response::new(()));
    let err = layer().build().unwrap().layer(svc).oneshot(post()).await;
    assert_eq!(err.unwrap_err().to_string(), "fail 0");
    assert_eq!(calls.count(), 1, "POST after an error");

    for (method, status) in [("POST", 429), ("POST", 503), ("PATCH", 503), ("PATCH", 429)] {
        let (svc, calls) = statuses(vec![(status, None), (200, None)]);
        let req: Req = http::Request::builder().method(method).body("x").unwrap();
        let res = layer()
            .build()
            .unwrap()
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            status,
            "{method} {status} comes back as it is"
        );
        assert_eq!(calls.count(), 1, "{method} {status}");
    }

    let (svc, calls) = support::flaky(1);
    let svc = svc.map_response(|_| http::Response::new(()));
    layer()
        .policy(HttpPolicy::new().retry_non_idempotent(true))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(post())
        .await
        .unwrap();
    assert_eq!(calls.count(), 2, "POST after an error, opted in");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_on_429_and_503() {
    for status in [429, 503] {
        let (svc, calls) = statuses(vec![(status, Some("3")), (200, None)]);
        let res = send_get(svc).await;
        assert_eq!(res.status(), 200);
        assert_eq!(calls.gaps(), [Duration::from_secs(3)], "status {status}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_never_shortens_the_backoff() {
    let (svc, calls) = statuses(vec![(503, Some("0")), (200, None)]);
    layer()
        .backoff(Backoff::constant(ms(400)))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(calls.gaps(), [ms(400)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_500_is_ignored() {
    let (svc, calls) = statuses(vec![(500, Some("3")), (200, None)]);
    send_get(svc).await;
    assert_eq!(calls.gaps(), [ms(10)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_beyond_the_cap_is_not_retried() {
    let (svc, calls) = statuses(vec![(503, Some("30")), (200, None)]);
    let res = send_get(svc).await;
    assert_eq!(res.status(), 503, "the server's answer comes back as it is");
    assert_eq!(calls.count(), 1);

    let (svc, calls) = statuses(vec![(503, Some("30")), (200, None)]);
    let res = layer()
        .retry_after_cap(Duration::from_secs(60))
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(calls.gaps(), [Duration::from_secs(30)]);
}

/// A delta-seconds value too large for a u64 is a pause beyond any cap, not a missing header.
#[tokio::test(start_paused = true)]
async fn retry_after_too_large_to_count_is_not_retried() {
    for huge in ["18446744073709551616", "99999999999999999999999"] {
        let (svc, calls) = statuses(vec![(503, Some(huge)), (200, None)]);
        let res = send_get(svc).await;
        assert_eq!(
            (res.status().as_u16(), calls.count()),
            (503, 1),
            "Retry-After: {huge} was retried after {:?}",
            calls.gaps()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn requests_that_cannot_be_copied_are_sent_once() {
    let (svc, calls) = statuses(vec![(503, None)]);
    // Only requests whose body is "x" can be copied.
    let cloner = |req: &Req| (*req.body() == "x").then(|| req.clone());
    let layer = layer().clone_with(cloner).build().unwrap();
    let streaming: Req = http::Request::get("/").body("stream").unwrap();
    layer.layer(svc.clone()).oneshot(streaming).await.unwrap();
    assert_eq!(calls.count(), 1);
    layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(calls.count(), 4);
}

/// What a call that succeeds first time copies: a retryable request once; under the HTTP policy a
/// POST too (it is sent again should an attempt prove it was never sent), unless
/// `retry_unsent(false)`; with one attempt, nothing.
#[tokio::test(start_paused = true)]
async fn a_post_is_copied_while_unsent_requests_are_retried() {
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    };

    let copies = Arc::new(AtomicU32::new(0));
    let counted = copies.clone();
    let cloner = move |req: &Req| {
        counted.fetch_add(1, Ordering::Relaxed);
        Some(req.clone())
    };
    let copied = |builder: seawall_retry::RetryConfigBuilder<HttpPolicy, _>, req: Req| {
        let copies = copies.clone();
        async move {
            let before = copies.load(Ordering::Relaxed);
            let (svc, calls) = statuses(vec![(200, None)]);
            let layer = builder.build().unwrap();
            let res = layer.layer(svc).oneshot(req).await.unwrap();
            assert_eq!((res.status().as_u16(), calls.count()), (200, 1));
            copies.load(Ordering::Relaxed) - before
        }
    };
    let http = || layer().clone_with(cloner.clone());
    assert_eq!(copied(http(), get()).await, 1, "a GET");
    assert_eq!(
        copied(http(), post()).await,
        1,
        "a POST, with retry_unsent on"
    );
    let unsent_off = || http().policy(HttpPolicy::new().retry_unsent(false));
    assert_eq!(copied(unsent_off(), post()).await, 0, "retry_unsent(false)");
    assert_eq!(copied(unsent_off(), get()).await, 1, "a GET all the same");
    assert_eq!(
        copied(http().max_attempts(1), get()).await,
        0,
        "one attempt"
    );
}

/// A request whose copy fails part way (its body can be replayed once) is sent as the last
/// attempt, and the layer says why it stopped before `max_attempts`.
#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_copied_again_gives_up_saying_so() {
    use seawall_core::Name;
    use seawall_retry::{GiveUpReason, RetryEvent};
    use std::sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex,
    };

    let (svc, calls) = statuses(vec![(503, None), (503, None), (200, None)]);
    let copies = Arc::new(AtomicU32::new(0));
    let cloner =
        move |req: &Req| (copies.fetch_add(1, Ordering::Relaxed) == 0).then(|| req.clone());
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = layer()
        .clone_with(cloner)
        .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let res = layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!((res.status().as_u16(), calls.count()), (503, 2));
    assert_eq!(
        events.lock().unwrap().last(),
        Some(&RetryEvent::GaveUp {
            attempts: 2,
            reason: GiveUpReason::NotCopyable
        })
    );
}

/// `ignore_error` (from `ClassifyExt`) on a policy makes a policy too, as the builder's
/// `ignore_error` does: an open breaker's `Open` under the retry is returned at once, not retried,
/// and every other outcome is as the policy says.
#[tokio::test(start_paused = true)]
async fn a_policy_wrapped_by_ignore_error_returns_that_error_at_once() {
    use seawall::breaker::{BreakerLayer, Open};
    use seawall_core::{classify::ClassifyExt, error::is, Name};
    use seawall_retry::RetryEvent;
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };
    use tokio::time::Instant;

    let breaker = BreakerLayer::builder().build().unwrap();
    let state = breaker.handle();
    let retries = Arc::new(AtomicUsize::new(0));
    let seen = retries.clone();
    let retry = RetryLayer::builder()
        .policy(HttpPolicy::new().ignore_error::<Open>())
        .max_attempts(3)
        .backoff(Backoff::constant(ms(10)))
        .budget(RetryBudget::unlimited())
        .on_event(move |_: &Name, event: &RetryEvent| {
            if matches!(event, RetryEvent::Retry { .. }) {
                seen.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let (svc, calls) = statuses(vec![(503, None), (200, None)]);
    let client = retry.layer(breaker.layer(svc));

    state.force_open();
    let start = Instant::now();
    let err = client.clone().oneshot(get()).await.unwrap_err();
    assert!(is::<Open>(&*err), "{err}");
    assert_eq!(retries.load(Ordering::SeqCst), 0, "not retried");
    assert_eq!(start.elapsed(), Duration::ZERO, "no backoff");
    assert_eq!(calls.count(), 0);

    // Closed: the 503 is the policy's failure, retried; idempotency is the policy's too.
    state.force_closed();
    let res = client.clone().oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!((calls.count(), retries.load(Ordering::SeqCst)), (2, 1));
    let (svc, calls) = statuses(vec![(503, None), (200, None)]);
    let client = RetryLayer::builder()
        .policy(HttpPolicy::new().ignore_error::<Open>())
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap()
        .layer(svc);
    assert_eq!(client.oneshot(post()).await.unwrap().status(), 503);
    assert_eq!(calls.count(), 1, "a POST is sent once");
}

/// A classifier of one's own: the HTTP classifier's answer, and a 404 is a failure too (a replica
/// that has not caught up yet).
#[derive(Clone)]
struct NotFoundIsFailure(HttpClassifier);

impl<B> Classify<http::Response<B>, BoxError> for NotFoundIsFailure {
    fn classify(
        &self,
        result: Result<&http::Response<B>, &BoxError>,
        elapsed: Duration,
    ) -> Outcome {
        match result {
            Ok(res) if res.status() == 404 => Outcome::Failure,
            _ => self.0.classify(result, elapsed),
        }
    }

    fn uses_elapsed(&self) -> bool {
        false
    }
}

/// `with_classifier` changes what is a failure, nothing else: a POST is still sent once whatever
/// the failure, a GET is retried, and `Retry-After` is still waited.
#[tokio::test(start_paused = true)]
async fn a_classifier_of_ones_own_keeps_idempotency_and_retry_after() {
    let own = || {
        layer().policy(HttpPolicy::new().with_classifier(NotFoundIsFailure(HttpClassifier::new())))
    };
    for (method, status, expected) in [
        ("GET", 404, 3),
        ("GET", 503, 3),
        ("GET", 200, 1),
        ("POST", 404, 1),
        ("POST", 503, 1),
    ] {
        let (svc, calls) = statuses(vec![(status, None)]);
        let req: Req = http::Request::builder().method(method).body("x").unwrap();
        let res = own()
            .build()
            .unwrap()
            .layer(svc)
            .oneshot(req)
            .await
            .unwrap();
        assert_eq!(res.status(), status);
        assert_eq!(calls.count(), expected, "{method} {status}");
    }

    let (svc, calls) = statuses(vec![(503, Some("3")), (200, None)]);
    let res = own()
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(get())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(calls.gaps(), [Duration::from_secs(3)], "Retry-After waited");

    // A closure is a classifier too.
    let base = HttpClassifier::new();
    let closure = HttpPolicy::new().with_classifier(
        move |result: Result<&http::Response<()>, &BoxError>, elapsed: Duration| match result {
            Ok(res) if res.status() == 404 => Outcome::Failure,
            _ => base.classify(result, elapsed),
        },
    );
    let layer = layer().policy(closure).build().unwrap();
    for (req, expected) in [(get(), 3), (post(), 1)] {
        let (svc, calls) = statuses(vec![(404, None)]);
        layer.layer(svc).oneshot(req).await.unwrap();
        assert_eq!(calls.count(), expected);
    }
}

fn keyed(method: &str, header: &str) -> Req {
    http::Request::builder()
        .method(method)
        .uri("/charges")
        .header(header, "8e03978e-40d5-43e8-bc93-6894a57f9324")
        .body("x")
        .unwrap()
}

/// Sends `req` through `policy` over a service answering `script`, checking that every attempt
/// carries the headers the caller set; returns the final status and the number of calls.
async fn send_through(
    policy: HttpPolicy,
    script: Vec<(u16, Option<&'static str>)>,
    req: Req,
) -> (u16, usize) {
    let (svc, calls) = statuses(script);
    let sent = req.headers().clone();
    let svc = svc.map_request(move |r: Req| {
        assert_eq!(
            r.headers(),
            &sent,
            "every attempt carries the caller's headers"
        );
        r
    });
    let res = layer()
        .policy(policy)
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(req)
        .await
        .unwrap();
    (res.status().as_u16(), calls.count())
}

/// `idempotency_key` retries a POST or PATCH that carries an `Idempotency-Key`, and only that
/// one; `retry_if_header` does the same for a header of one's own.
#[tokio::test(start_paused = true)]
async fn a_request_with_an_idempotency_key_is_retried_once_opted_in() {
    let key = || HttpPolicy::new().idempotency_key();
    for method in ["POST", "PATCH"] {
        assert_eq!(
            send_through(key(), vec![(503, None)], keyed(method, "idempotency-key")).await,
            (503, 3),
            "{method} with a key"
        );
        let plain: Req = http::Request::builder().method(method).body("x").unwrap();
        assert_eq!(
            send_through(key(), vec![(503, None)], plain).await,
            (503, 1),
            "{method} without one"
        );
        assert_eq!(
            send_through(
                HttpPolicy::new(),
                vec![(503, None)],
                keyed(method, "idempotency-key")
            )
            .await,
            (503, 1),
            "{method} with a key, not opted in"
        );
    }
    // A name written in another case, given to `retry_if_header`, matches the request's header.
    // `http` lowercases every `HeaderName` when it is parsed (a request built with
    // `.header("Idempotency-Key", ..)` holds `idempotency-key`), so the policy only ever
    // compares lowercase names: this checks the names one writes, not a rule of the policy's.
    for name in [&b"Idempotency-Key"[..], b"X-Dedup-Id"] {
        let policy = HttpPolicy::new().retry_if_header(http::HeaderName::from_bytes(name).unwrap());
        let header = std::str::from_utf8(name).unwrap().to_ascii_lowercase();
        assert_eq!(
            send_through(
                policy,
                vec![(503, None), (200, None)],
                keyed("POST", &header)
            )
            .await,
            (200, 2),
            "{header}"
        );
    }

    let own = || HttpPolicy::new().retry_if_header(http::HeaderName::from_static("x-dedup-id"));
    assert_eq!(
        send_through(own(), vec![(429, None)], keyed("POST", "x-dedup-id")).await,
        (429, 3)
    );
    assert_eq!(
        send_through(own(), vec![(429, None)], keyed("POST", "idempotency-key")).await,
        (429, 1),
        "another header"
    );

    // An error after sending (a reset) too.
    let (svc, calls) = support::flaky(1);
    let svc = svc.map_response(|_| http::Response::new(()));
    layer()
        .policy(key())
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(keyed("POST", "idempotency-key"))
        .await
        .unwrap();
    assert_eq!(calls.count(), 2);
}

/// The key makes a request retryable, not its answer a failure: that is still the classifier's.
#[tokio::test(start_paused = true)]
async fn an_idempotency_key_does_not_make_an_answer_a_failure() {
    for status in [200, 201, 400, 404, 409] {
        assert_eq!(
            send_through(
                HttpPolicy::new().idempotency_key(),
                vec![(status, None)],
                keyed("POST", "idempotency-key")
            )
            .await,
            (status, 1),
            "{status}"
        );
    }
    let own = HttpPolicy::new()
        .idempotency_key()
        .with_classifier(NotFoundIsFailure(HttpClassifier::new()));
    let (svc, calls) = statuses(vec![(404, None), (200, None)]);
    let res = layer()
        .policy(own)
        .build()
        .unwrap()
        .layer(svc)
        .oneshot(keyed("POST", "idempotency-key"))
        .await
        .unwrap();
    assert_eq!(
        (res.status().as_u16(), calls.count()),
        (200, 2),
        "the key is kept across with_classifier"
    );
}

/// A server that deduplicates by `Idempotency-Key` takes 300 ms over the first request with a key
/// and stores its 201; a request with that key arriving meanwhile gets 409 at once, one arriving
/// later the stored 201. A retry after a per-attempt timeout comes while the first is still being
/// processed: its 409 is the call's answer, unless the classifier calls 409 a failure.
#[tokio::test(start_paused = true)]
async fn a_keyed_retry_after_a_timeout_gets_409_unless_409_is_a_failure() {
    use http::StatusCode;
    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };
    use tokio::time::Instant;

    let send = |policy: HttpPolicy| async move {
        let started = Arc::new(Mutex::new(HashMap::<String, Instant>::new()));
        let calls = support::Calls::default();
        let counted = calls.clone();
        let server = tower::service_fn(move |req: Req| {
            counted.push(&req);
            let key = req.headers()["idempotency-key"]
                .to_str()
                .unwrap()
                .to_owned();
            let now = Instant::now();
            let first = *started.lock().unwrap().entry(key).or_insert(now);
            let done = first + ms(300);
            async move {
                let status = if first == now {
                    tokio::time::sleep_until(done).await;
                    201
                } else if now < done {
                    409
                } else {
                    201
                };
                Ok::<_, BoxError>(http::Response::builder().status(status).body(()).unwrap())
            }
        });
        let res = RetryLayer::builder()
            .policy(policy)
            .max_attempts(5)
            .backoff(Backoff::constant(ms(150)))
            .per_attempt_timeout(ms(100))
            .budget(RetryBudget::unlimited())
            .build()
            .unwrap()
            .layer(server)
            .oneshot(keyed("POST", "idempotency-key"))
            .await
            .unwrap();
        (res.status().as_u16(), calls.count())
    };
    assert_eq!(
        send(HttpPolicy::new().idempotency_key()).await,
        (409, 2),
        "the server's 409 is the answer"
    );
    let conflict_fails = HttpPolicy::new()
        .idempotency_key()
        .with_classifier(HttpClassifier::new().with_failure(StatusCode::CONFLICT));
    assert_eq!(
        send(conflict_fails).await,
        (201, 3),
        "409 a failure: asked again until the stored answer"
    );
}
