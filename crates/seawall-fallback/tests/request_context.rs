//! A context captured from each request in `call` reaches the fallback with what failed.

use http::{Request, Response, Uri};
use seawall_core::{
    classify::{DefaultClassifier, HttpClassifier},
    BoxError, Elapsed,
};
use seawall_fallback::{
    Captured, Failed, FailedCall, FallbackFailed, FallbackLayer, FromFn, FromService,
    ResponseFuture, WithRequest,
};
use std::{
    collections::HashMap,
    future::Future,
    io,
    marker::PhantomData,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{service_fn, util::BoxCloneService, Layer, Service, ServiceExt};
use tower_test::mock;

type Res = Response<String>;

fn get(path: &str) -> Request<()> {
    Request::get(path).body(()).unwrap()
}

/// Answers by path: `/timeout` times out, `/busy` is a 503, `/reset` a connection reset,
/// `/refused` a "refused" error; anything else is a fresh 200.
fn upstream() -> impl Service<
    Request<()>,
    Response = Res,
    Error = BoxError,
    Future = impl Future<Output = Result<Res, BoxError>> + Send,
> + Clone {
    service_fn(|req: Request<()>| async move {
        match req.uri().path() {
            "/timeout" => Err(Box::new(Elapsed::new()) as BoxError),
            "/busy" => Ok(Response::builder()
                .status(503)
                .body("busy".to_string())
                .unwrap()),
            "/reset" => Err(io::Error::from(io::ErrorKind::ConnectionReset).into()),
            "/refused" => Err("refused".into()),
            _ => Ok(Response::new("fresh".to_string())),
        }
    })
}

/// Calls `svc` once it is ready with a GET of `path`; the response's body.
async fn body<S>(svc: &mut S, path: &str) -> Result<String, BoxError>
where
    S: Service<Request<()>, Response = Res, Error = BoxError>,
{
    let res = svc.ready().await?.call(get(path)).await?;
    Ok(res.into_body())
}

/// A service that cannot get ready: `poll_ready` fails with the error it makes.
#[derive(Clone)]
struct Refusing(fn() -> BoxError);

impl Service<Request<()>> for Refusing {
    type Response = Res;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err((self.0)()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        unreachable!("never ready")
    }
}

fn future_of<S: Service<R>, R>(_: &S) -> PhantomData<S::Future> {
    PhantomData
}

/// The context most tests capture: the request's path.
fn path_of(req: &Request<()>) -> String {
    req.uri().path().to_owned()
}

/// The fallback's answer: the captured path, and what failed.
fn describe(failed: Failed<Res>, path: String) -> Result<Res, BoxError> {
    let what = match failed {
        Failed::Error(e) => e.to_string(),
        Failed::Response(r) => r.status().to_string(),
    };
    Ok(Response::new(format!("{path}: {what}")))
}

/// Two different requests fail; a cache keyed by the request's URI answers each with its own
/// entry, and a miss fails the call with both failures.
#[tokio::test]
async fn a_cache_fallback_answers_each_request_by_its_uri() {
    let cache: Arc<HashMap<&str, &str>> = Arc::new(HashMap::from([
        ("/users/7", "cached user 7"),
        ("/users/8", "cached user 8"),
    ]));
    let lookup = service_fn(move |call: FailedCall<Res, Uri>| {
        let cache = cache.clone();
        async move {
            assert!(call.failed.is::<Elapsed>());
            match cache.get(call.context.path()) {
                Some(body) => Ok(Response::new(body.to_string())),
                None => Err(BoxError::from("cache miss")),
            }
        }
    });
    let layer = FallbackLayer::builder()
        .on_error_type::<Elapsed>()
        .with_request(|req: &Request<()>| req.uri().clone())
        .build_service(lookup)
        .unwrap();
    let down =
        service_fn(|_: Request<()>| async { Err::<Res, BoxError>(Box::new(Elapsed::new())) });
    let mut svc = layer.layer(down);

    for (path, body) in [
        ("/users/7", "cached user 7"),
        ("/users/8", "cached user 8"),
        ("/users/7", "cached user 7"),
    ] {
        let res = svc.ready().await.unwrap().call(get(path)).await.unwrap();
        assert_eq!(res.body(), body, "GET {path}");
    }

    let err = svc
        .ready()
        .await
        .unwrap()
        .call(get("/users/9"))
        .await
        .unwrap_err();
    let failed = err
        .downcast_ref::<FallbackFailed>()
        .expect("FallbackFailed");
    assert!(failed.original().is::<Elapsed>());
    assert_eq!(failed.fallback_error().to_string(), "cache miss");
}

/// A closure fallback gets the context with an error matched by type or predicate and with a
/// response the classifier calls a failure; anything else passes through untouched.
#[tokio::test]
async fn a_closure_fallback_gets_the_context_with_each_kind_of_failure() {
    let layer = FallbackLayer::builder()
        .on_error_type::<Elapsed>()
        .on_error(|e| e.to_string() == "refused")
        .with_request(path_of)
        .on_response(HttpClassifier::new())
        .build_fn(describe)
        .unwrap();
    let mut svc = layer.layer(upstream());

    assert_eq!(
        body(&mut svc, "/timeout").await.unwrap(),
        format!("/timeout: {}", Elapsed::new())
    );
    assert_eq!(
        body(&mut svc, "/refused").await.unwrap(),
        "/refused: refused"
    );
    assert_eq!(
        body(&mut svc, "/busy").await.unwrap(),
        "/busy: 503 Service Unavailable"
    );
    assert_eq!(body(&mut svc, "/fresh").await.unwrap(), "fresh");
    let reset = body(&mut svc, "/reset").await.unwrap_err();
    assert_eq!(
        reset.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionReset
    );
}

/// After a readiness error the layer answers every later call from the fallback, each with the
/// context of its own request.
#[tokio::test]
async fn after_a_readiness_error_each_call_passes_its_own_context() {
    let layer = FallbackLayer::builder()
        .with_request(path_of)
        .build_fn(describe)
        .unwrap();
    let mut svc = layer.layer(Refusing(|| "refused".into()));
    for path in ["/a", "/b", "/a"] {
        let res = svc.ready().await.unwrap().call(get(path)).await.unwrap();
        assert_eq!(res.body(), &format!("{path}: refused"));
    }
}

/// Two calls in flight at once: `/a`, then `/b`, both kept pending in the inner service. `/b`
/// fails first, then `/a`; each is answered with the context of its own request, not the one
/// captured last.
#[tokio::test]
async fn interleaved_calls_each_pass_their_own_context_to_a_closure() {
    let layer = FallbackLayer::builder()
        .with_request(path_of)
        .build_fn(describe)
        .unwrap();
    let (inner, mut handle) = mock::pair::<Request<()>, Res>();
    let mut svc = layer.layer(inner);

    let a = svc.ready().await.unwrap().call(get("/a"));
    let b = svc.ready().await.unwrap().call(get("/b"));
    let (req_a, send_a) = handle.next_request().await.unwrap();
    let (req_b, send_b) = handle.next_request().await.unwrap();
    assert_eq!((req_a.uri().path(), req_b.uri().path()), ("/a", "/b"));

    send_b.send_error("refused");
    assert_eq!(b.await.unwrap().body(), "/b: refused");
    send_a.send_error(io::Error::from(io::ErrorKind::ConnectionReset));
    let reset = io::Error::from(io::ErrorKind::ConnectionReset).to_string();
    assert_eq!(a.await.unwrap().body(), &format!("/a: {reset}"));
}

/// The same with a fallback service and responses the classifier calls failures: `/b`'s 503
/// comes back before `/a`'s 502, and the fallback service gets each with its own context.
#[tokio::test]
async fn interleaved_failed_responses_each_pass_their_own_context_to_a_service() {
    let lookup = service_fn(|call: FailedCall<Res, String>| async move {
        let status = call.failed.response().expect("a failed response").status();
        Ok::<_, BoxError>(Response::new(format!(
            "{}: {}",
            call.context,
            status.as_u16()
        )))
    });
    let layer = FallbackLayer::builder()
        .on_response(HttpClassifier::new())
        .with_request(path_of)
        .build_service(lookup)
        .unwrap();
    let (inner, mut handle) = mock::pair::<Request<()>, Res>();
    let mut svc = layer.layer(inner);
    let status = |code: u16| {
        Response::builder()
            .status(code)
            .body(String::new())
            .unwrap()
    };

    let a = svc.ready().await.unwrap().call(get("/a"));
    let b = svc.ready().await.unwrap().call(get("/b"));
    let (_, send_a) = handle.next_request().await.unwrap();
    let (_, send_b) = handle.next_request().await.unwrap();

    send_b.send_response(status(503));
    assert_eq!(b.await.unwrap().body(), "/b: 503");
    send_a.send_response(status(502));
    assert_eq!(a.await.unwrap().body(), "/a: 502");
}

/// After a readiness error, calls to `/a` and `/b` are both handed to a fallback service before
/// either is answered; the service answers `/b` first, and each call gets its own answer.
#[tokio::test]
async fn interleaved_calls_after_a_readiness_error_each_pass_their_own_context_to_a_service() {
    let (lookup, mut fallback) = mock::pair::<FailedCall<Res, String>, Res>();
    let layer = FallbackLayer::builder()
        .with_request(path_of)
        .build_service(lookup)
        .unwrap();
    let mut svc = layer.layer(Refusing(|| "refused".into()));

    let mut a = tokio_test::task::spawn(svc.ready().await.unwrap().call(get("/a")));
    let mut b = tokio_test::task::spawn(svc.ready().await.unwrap().call(get("/b")));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    let (call_a, send_a) = fallback.next_request().await.unwrap();
    let (call_b, send_b) = fallback.next_request().await.unwrap();
    assert_eq!(call_a.failed.error().unwrap().to_string(), "refused");
    assert_eq!(call_b.failed.error().unwrap().to_string(), "refused");

    send_b.send_response(Response::new(format!("answer for {}", call_b.context)));
    assert!(b.is_woken());
    assert_eq!(
        assert_ready_ok!(b.poll()).body(),
        "answer for /b",
        "/b answered first"
    );
    assert_pending!(a.poll());
    send_a.send_response(Response::new(format!("answer for {}", call_a.context)));
    assert_eq!(assert_ready_ok!(a.poll()).body(), "answer for /a");
}

/// The closure runs once per call, in `call` (before the future is polled), whatever the call's
/// outcome: a success, a handled or an unhandled error, a failed response, a readiness error.
#[tokio::test]
async fn the_context_is_captured_once_per_call_in_call() {
    let captures = Arc::new(AtomicUsize::new(0));
    let counter = captures.clone();
    let layer = FallbackLayer::builder()
        .on_error_type::<Elapsed>()
        .on_response(HttpClassifier::new())
        .with_request(move |req: &Request<()>| {
            counter.fetch_add(1, Ordering::SeqCst);
            req.uri().path().to_owned()
        })
        .build_fn(describe)
        .unwrap();

    let mut svc = layer.layer(upstream());
    let mut expected = 0;
    for path in ["/fresh", "/timeout", "/busy", "/reset", "/refused"] {
        let fut = svc.ready().await.unwrap().call(get(path));
        expected += 1;
        assert_eq!(captures.load(Ordering::SeqCst), expected, "{path}: in call");
        let _ = fut.await;
        assert_eq!(captures.load(Ordering::SeqCst), expected, "{path}: once");
    }

    let mut failed = layer.layer(Refusing(|| Box::new(Elapsed::new())));
    for path in ["/a", "/b"] {
        let fut = failed.ready().await.unwrap().call(get(path));
        expected += 1;
        assert_eq!(captures.load(Ordering::SeqCst), expected, "{path}: in call");
        let answer = format!("{path}: {}", Elapsed::new());
        assert_eq!(fut.await.unwrap().body(), &answer);
        assert_eq!(captures.load(Ordering::SeqCst), expected, "{path}: once");
    }
}

/// Without `with_request` nothing is captured: the service's future is the four-parameter
/// `ResponseFuture`, whose context is `()`.
#[test]
fn without_with_request_the_future_carries_no_context() {
    let layer = FallbackLayer::builder()
        .build_fn(|_: Failed<&'static str>| Ok("fallback"))
        .unwrap();
    let (inner, _handle) = mock::pair::<(), &'static str>();
    let svc = layer.layer(inner);
    let _: PhantomData<
        ResponseFuture<
            mock::future::ResponseFuture<&'static str>,
            FromFn<_>,
            DefaultClassifier,
            &'static str,
            (),
        >,
    > = future_of::<_, ()>(&svc);
}

#[test]
fn context_layers_services_and_futures_are_send_sync_static() {
    fn assert_send_sync_static<T: Send + Sync + 'static>(_: &T) {}
    fn assert_send<T: Send + 'static>() {}
    fn capture(req: &Request<()>) -> Uri {
        req.uri().clone()
    }
    type Capture = WithRequest<fn(&Request<()>) -> Uri>;
    type Fs = FromService<BoxCloneService<FailedCall<Res, Uri>, Res, BoxError>>;

    let by_fn = FallbackLayer::builder()
        .with_request(capture as fn(&Request<()>) -> Uri)
        .build_fn(|_: Failed<Res>, uri: Uri| Ok(Response::new(uri.to_string())))
        .unwrap();
    assert_send_sync_static(&by_fn);
    let svc = by_fn.layer(mock::pair::<Request<()>, Res>().0);
    assert_send_sync_static(&svc);
    assert_send_sync_static(&future_of::<_, Request<()>>(&svc));
    let _: PhantomData<ResponseFuture<_, FromFn<_>, DefaultClassifier, Res, Captured<Uri>>> =
        future_of::<_, Request<()>>(&svc);

    assert_send::<
        ResponseFuture<
            mock::future::ResponseFuture<Res>,
            Fs,
            DefaultClassifier,
            Res,
            Captured<Uri>,
        >,
    >();
    fn assert_layer<T: Send + Sync + 'static>() {}
    assert_layer::<FallbackLayer<Fs, DefaultClassifier, Capture>>();
}
