//! A seawall balancer over three axum servers on loopback, each endpoint a hyper-util client
//! bound to one address (`discover::from_list`), with HTTP retries above it. One server answers
//! every call with 503: `HttpClassifier` makes those failures for the balancer's outlier
//! detection, the retry policy resends them to another server, and every call succeeds.

use axum::{routing::get, Router};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use seawall::{
    balance::{BalanceEvent, BalanceLayer, EjectReason, OutlierDetection, Picker},
    core::classify::HttpClassifier,
    discover,
    retry::{Backoff, RetryBudget, RetryEvent, RetryLayer},
    BoxError, Name, ServiceBuilderExt,
};
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, Ordering::SeqCst},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::net::TcpListener;
use tower::{service_fn, util::BoxCloneSyncService, ServiceBuilder, ServiceExt};

type Request = http::Request<Full<Bytes>>;
type Response = http::Response<hyper::body::Incoming>;

async fn server(id: usize, status: u16, hits: Arc<AtomicU32>) -> SocketAddr {
    let app = Router::new().route(
        "/",
        get(move || {
            let hits = hits.clone();
            async move {
                hits.fetch_add(1, SeqCst);
                (http::StatusCode::from_u16(status).unwrap(), id.to_string())
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// An endpoint: a hyper client that sends each request to `addr`.
fn endpoint(addr: &SocketAddr) -> BoxCloneSyncService<Request, Response, BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let authority: http::uri::Authority = addr.to_string().parse().unwrap();
    BoxCloneSyncService::new(service_fn(move |mut req: Request| {
        let client = client.clone();
        let mut uri = std::mem::take(req.uri_mut()).into_parts();
        uri.scheme = Some(http::uri::Scheme::HTTP);
        uri.authority = Some(authority.clone());
        *req.uri_mut() = http::Uri::from_parts(uri).unwrap();
        async move { Ok::<_, BoxError>(client.request(req).await?) }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn balancer_of_hyper_clients_routes_around_a_server_answering_503() {
    let hits: Vec<Arc<AtomicU32>> = (0..3).map(|_| Arc::default()).collect();
    let mut addrs = Vec::new();
    for (id, status) in [503, 200, 200].into_iter().enumerate() {
        addrs.push(server(id, status, hits[id].clone()).await);
    }

    let ejected = Arc::new(Mutex::new(Vec::new()));
    let retries = Arc::new(AtomicU32::new(0));
    let (e, r) = (ejected.clone(), retries.clone());
    let balance = BalanceLayer::builder()
        .name("http-balance")
        .picker(Picker::RoundRobin)
        .classifier(HttpClassifier::new())
        .outlier_detection(OutlierDetection {
            base_ejection_time: Duration::from_secs(60),
            consecutive_failures: Some(3),
            success_rate: None,
            failure_percentage: None,
            latency: None,
            ..OutlierDetection::default()
        })
        .on_event(move |_: &Name, event: &BalanceEvent| {
            if let BalanceEvent::Ejected { key, reason, .. } = event {
                e.lock().unwrap().push((key.clone(), *reason));
            }
        })
        .seed(3)
        .build()
        .unwrap();
    let retry = RetryLayer::builder()
        .name("http-retry")
        .http()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(5)))
        .budget(RetryBudget::unlimited())
        .seed(4)
        .on_event(move |_: &Name, event: &RetryEvent| {
            if matches!(event, RetryEvent::Retry { .. }) {
                r.fetch_add(1, SeqCst);
            }
        })
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(5))
        .with_retry(retry)
        .with_balance(balance)
        .service(discover::from_list(addrs.clone(), endpoint));

    let mut served = [0u32; 3];
    for _ in 0..90 {
        let req = http::Request::get("/").body(Full::default()).unwrap();
        let res = client.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let id: usize = std::str::from_utf8(&body).unwrap().parse().unwrap();
        served[id] += 1;
    }

    // Three 503s in a row eject the bad server; each was retried on a healthy one.
    assert_eq!(hits[0].load(SeqCst), 3);
    assert_eq!(retries.load(SeqCst), 3);
    assert_eq!(
        *ejected.lock().unwrap(),
        vec![(format!("{:?}", addrs[0]), EjectReason::ConsecutiveFailures)]
    );
    assert_eq!(served[0], 0);
    assert_eq!(served[1] + served[2], 90);
    assert!(served[1] >= 40 && served[2] >= 40, "{served:?}");
}
