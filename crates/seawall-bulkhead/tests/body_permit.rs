//! `release_on_body_end`: the permit stays with the response body until it is read to its end or
//! dropped, checked with real hyper bodies from a loopback server.

use http_body_util::{BodyExt, Empty, Full as FullBody};
use hyper::body::Bytes;
use hyper::{body::Incoming, server::conn::http1, Request, Response};
use hyper_util::rt::TokioIo;
use seawall_bulkhead::{
    limit::{Aimd, Limit, Sample},
    BulkheadLayer, Full,
};
use seawall_core::classify::{Classify, HttpClassifier, Outcome};
use seawall_core::error::is;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::{convert::Infallible, net::SocketAddr, time::Duration};
use tokio::net::{TcpListener, TcpStream};
use tower::{service_fn, BoxError, Layer, ServiceExt};

/// A loopback HTTP/1 server answering every request with a 64 KiB body.
async fn server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(Response::new(FullBody::new(Bytes::from(vec![
                        b'x';
                        64 * 1024
                    ]))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A client service: one HTTP/1 connection per call, answering `Response<Incoming>`.
fn client(
    addr: SocketAddr,
) -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<Incoming>,
    Error = BoxError,
    Future = impl Send,
> + Clone {
    service_fn(move |req: Request<Empty<Bytes>>| async move {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok::<_, BoxError>(sender.send_request(req).await?)
    })
}

fn get() -> Request<Empty<Bytes>> {
    Request::builder()
        .uri("/")
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn permit_held_until_hyper_body_is_read() {
    let addr = server().await;
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .release_on_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(client(addr));

    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.body().holds_permit());
    assert_eq!(handle.in_flight(), 1, "the body holds the permit");
    let err = service.clone().oneshot(get()).await.unwrap_err();
    assert!(
        is::<Full>(&*err),
        "a second call is rejected while the body is unread"
    );

    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 64 * 1024);
    assert_eq!(
        handle.in_flight(),
        0,
        "reading to the end released the permit"
    );
    assert_eq!(handle.available(), 1);

    // And the next call goes through.
    let response = service.clone().oneshot(get()).await.unwrap();
    assert_eq!(handle.in_flight(), 1);
    drop(response);
    assert_eq!(
        handle.in_flight(),
        0,
        "dropping the response released the permit"
    );
}

#[tokio::test]
async fn permit_released_when_hyper_body_dropped_half_read() {
    let addr = server().await;
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .release_on_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(client(addr));
    let mut body = service.oneshot(get()).await.unwrap().into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert!(frame.is_data());
    assert_eq!(handle.in_flight(), 1);
    drop(body);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn streamed_body_feeds_adaptive_limit_at_its_end() {
    // A body of three frames, 100 ms apart; its call lasts until the last frame.
    let layer = BulkheadLayer::builder()
        .adaptive(
            Aimd::builder()
                .initial_limit(4)
                .timeout(Duration::from_millis(150))
                .build()
                .unwrap(),
        )
        .release_on_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: ()| async {
        Ok::<_, Infallible>(Response::new(spaced(
            vec![b"a", b"b", b"c"],
            Duration::from_millis(100),
        )))
    }));
    let body = service.oneshot(()).await.unwrap().into_body();
    assert_eq!(handle.limit(), 4, "no sample before the body ends");
    let bytes = body.collect().await.unwrap().to_bytes();
    assert_eq!(&bytes[..], b"abc");
    assert_eq!(
        handle.limit(),
        3,
        "the call lasted 300 ms, over AIMD's 150 ms timeout: a drop"
    );
}

/// A body of `frames`, each `gap` after the previous one, in tokio time.
struct Spaced {
    frames: std::vec::IntoIter<&'static [u8]>,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    gap: Duration,
}

fn spaced(frames: Vec<&'static [u8]>, gap: Duration) -> Spaced {
    Spaced {
        frames: frames.into_iter(),
        sleep: Box::pin(tokio::time::sleep(gap)),
        gap,
    }
}

impl http_body::Body for Spaced {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if self.frames.len() == 0 {
            return std::task::Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        let deadline = tokio::time::Instant::now() + self.gap;
        self.sleep.as_mut().reset(deadline);
        let frame = self.frames.next().unwrap();
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(frame)))))
    }

    fn is_end_stream(&self) -> bool {
        self.frames.len() == 0
    }
}

#[tokio::test(start_paused = true)]
async fn empty_body_releases_at_once() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .release_on_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|_: ()| async {
        Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
    }));
    let response = service.oneshot(()).await.unwrap();
    assert!(!response.body().holds_permit());
    assert_eq!(handle.in_flight(), 0);
}

/// A limit that stays at 10 and records every sample.
#[derive(Debug)]
struct Recording(Arc<Mutex<Vec<Sample>>>);

impl Limit for Recording {
    fn initial_limit(&self) -> usize {
        10
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 100)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        self.0.lock().unwrap().push(*sample);
        10
    }
}

/// A service answering each status with a one-frame body.
fn statuses() -> impl tower::Service<
    u16,
    Response = Response<FullBody<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    service_fn(|status: u16| async move {
        Ok::<_, Infallible>(
            Response::builder()
                .status(status)
                .body(FullBody::new(Bytes::from_static(b"body")))
                .unwrap(),
        )
    })
}

/// A response classified a failure stays one when its body is dropped unread (a 503 whose body the
/// caller does not read); any other response's body dropped early counts as ignored: no sample.
#[tokio::test(start_paused = true)]
async fn a_body_dropped_early_is_no_sample_unless_its_response_failed() {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let layer = BulkheadLayer::builder()
        .adaptive(Recording(samples.clone()))
        .classifier(HttpClassifier::new())
        .release_on_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(statuses());

    let response = service.clone().oneshot(200).await.unwrap();
    assert!(response.body().holds_permit());
    tokio::time::advance(Duration::from_millis(10)).await;
    drop(response);
    assert_eq!(handle.in_flight(), 0);
    assert!(samples.lock().unwrap().is_empty(), "{:?}", samples.lock());

    let response = service.clone().oneshot(503).await.unwrap();
    assert!(response.body().holds_permit());
    tokio::time::advance(Duration::from_millis(10)).await;
    drop(response);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(
        *samples.lock().unwrap(),
        [Sample::new(Duration::from_millis(10), 1, true)]
    );

    // The same 200, read to its end, is a sample.
    let response = service.oneshot(200).await.unwrap();
    tokio::time::advance(Duration::from_millis(10)).await;
    response.into_body().collect().await.unwrap();
    assert_eq!(samples.lock().unwrap().len(), 2);
    assert!(!samples.lock().unwrap()[1].dropped);
}

/// A response the classifier calls ignored is no sample, even read to its end: here a 404, as
/// the `Vegas` docs suggest.
#[tokio::test(start_paused = true)]
async fn a_body_whose_response_is_ignored_is_no_sample() {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let http = HttpClassifier::new();
    let layer = BulkheadLayer::builder()
        .adaptive(Recording(samples.clone()))
        .classifier(
            move |result: Result<&Response<FullBody<Bytes>>, &Infallible>, elapsed: Duration| {
                match result {
                    Ok(res) if !res.status().is_success() && !http.is_failure(res.status()) => {
                        Outcome::Ignored
                    }
                    _ => http.classify(result, elapsed),
                }
            },
        )
        .release_on_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(statuses());

    let response = service.clone().oneshot(404).await.unwrap();
    assert!(response.body().holds_permit());
    response.into_body().collect().await.unwrap();
    assert_eq!(handle.in_flight(), 0);
    assert!(samples.lock().unwrap().is_empty(), "{:?}", samples.lock());

    let response = service.oneshot(200).await.unwrap();
    response.into_body().collect().await.unwrap();
    assert_eq!(samples.lock().unwrap().len(), 1, "a 200 is a sample");
}
