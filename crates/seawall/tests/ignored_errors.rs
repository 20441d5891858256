//! A classifier built with `ignore_error::<T>()` keeps errors of type `T` out of what a policy
//! counts: a circuit breaker (alone or in a `BreakerSet`) and a balancer's outlier detection over a
//! rate limiter stay as they are under a burst of `Limited`, and still react to the dependency's own
//! failures. An adaptive bulkhead needs no classifier for it: a `Limited` was never sent, so it is
//! no sample of the dependency's load. Below a balancer, a per-endpoint rate limiter is built
//! with backpressure instead, so that its `Limited` never reaches the balancer.

use seawall::{
    balance::{Balance, BalanceLayer, OutlierDetection, Picker},
    breaker::{
        BreakerConfig, BreakerConfigBuilder, BreakerLayer, BreakerSet, SlidingWindow, State,
    },
    bulkhead::{
        limit::Aimd,
        ratelimit::{Limited, RateLimitLayer},
        BulkheadLayer,
    },
    core::{
        classify::{Classify, ClassifyExt, DefaultClassifier},
        error::is,
        BoxError,
    },
};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tower::{
    discover::ServiceList, service_fn, util::BoxCloneSyncService, Layer, Service, ServiceExt,
};

/// A dependency that fails the calls asked to fail.
fn dependency(
) -> impl Service<bool, Response = &'static str, Error = BoxError, Future: Send> + Clone + Send + 'static
{
    service_fn(|fail: bool| async move {
        match fail {
            true => Err::<&'static str, BoxError>("boom".into()),
            false => Ok("ok"),
        }
    })
}

/// This client's own quota: one call a second, none saved up.
fn quota() -> RateLimitLayer {
    RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap()
}

/// Trips at half the last 10 calls failed, once 5 are in.
fn half_of_ten() -> BreakerConfigBuilder {
    BreakerConfig::builder()
        .sliding_window(SlidingWindow::count(10))
        .minimum_calls(5)
        .failure_rate_threshold(0.5)
}

/// A breaker of [`half_of_ten`], counting failures as `classifier` says.
fn breaker<C: Classify<&'static str, BoxError>>(classifier: C) -> BreakerLayer<C> {
    half_of_ten().build_with(classifier).unwrap()
}

/// One call on a clone of `svc`.
async fn send<S>(svc: &S, fail: bool) -> Result<&'static str, BoxError>
where
    S: Service<bool, Response = &'static str, Error = BoxError> + Clone,
{
    svc.clone().oneshot(fail).await
}

/// One call answered, then 30 over the quota, all rejected with `Limited`.
async fn burst_over_the_quota<S>(svc: &S)
where
    S: Service<bool, Response = &'static str, Error = BoxError> + Clone,
{
    assert_eq!(send(svc, false).await.unwrap(), "ok");
    for _ in 0..30 {
        let err = send(svc, false).await.unwrap_err();
        assert!(is::<Limited>(&*err), "{err}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_breaker_ignoring_limited_stays_closed_over_the_quota_and_trips_on_failures() {
    let layer = breaker(DefaultClassifier.ignore_error::<Limited>());
    let handle = layer.handle();
    let svc = layer.layer(quota().layer(dependency()));

    burst_over_the_quota(&svc).await;
    assert_eq!(handle.state(), State::Closed);
    let snapshot = handle.snapshot();
    assert_eq!((snapshot.calls, snapshot.failures), (1, 0), "{snapshot:?}");

    // The dependency's own failures, one a second within the quota, count: 4 of 5 calls failed.
    for failed in 1..=4 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let err = send(&svc, true).await.unwrap_err();
        assert!(!is::<Limited>(&*err), "{err}");
        let expected = if failed < 4 {
            State::Closed
        } else {
            State::Open
        };
        assert_eq!(handle.state(), expected, "after {failed} failures");
    }
    assert_eq!(handle.snapshot().trips, 1);
}

/// What `ignore_error` saves the breaker from: the same burst, every `Limited` a failure.
#[tokio::test(start_paused = true)]
async fn without_it_the_same_burst_opens_the_breaker() {
    let layer = breaker(DefaultClassifier);
    let handle = layer.handle();
    let svc = layer.layer(quota().layer(dependency()));
    assert_eq!(send(&svc, false).await.unwrap(), "ok");
    // 4 `Limited` of 5 calls.
    for _ in 0..4 {
        let err = send(&svc, false).await.unwrap_err();
        assert!(is::<Limited>(&*err), "{err}");
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn every_breaker_of_a_set_ignores_limited() {
    let config = half_of_ten().build_config().unwrap();
    let set = BreakerSet::with_classifier(config, 16, DefaultClassifier.ignore_error::<Limited>())
        .unwrap();
    for endpoint in ["10.0.0.1:80", "10.0.0.2:80"] {
        let layer = set.get(&endpoint);
        let svc = layer.layer(quota().layer(dependency()));
        burst_over_the_quota(&svc).await;
        assert_eq!(set.handle(&endpoint).unwrap().state(), State::Closed);
        for _ in 0..4 {
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(send(&svc, true).await.is_err());
        }
        assert_eq!(set.handle(&endpoint).unwrap().state(), State::Open);
    }
}

/// An adaptive limit over a rate limiter: a `Limited` is no sign of load on the dependency, so it
/// does not take the limit down, with the default classifier as with one that ignores it; the
/// dependency's failures still do.
#[tokio::test(start_paused = true)]
async fn an_adaptive_bulkhead_keeps_its_limit_over_the_quota() {
    let aimd = || Aimd::builder().initial_limit(10).build().unwrap();
    // The two layers differ in type: each runs the same checks.
    macro_rules! keeps_its_limit {
        ($layer:expr) => {
            let layer = $layer;
            let handle = layer.handle();
            let svc = layer.layer(quota().layer(dependency()));
            burst_over_the_quota(&svc).await;
            assert_eq!(handle.limit(), 10);
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(send(&svc, true).await.is_err());
            assert!(
                handle.limit() < 10,
                "a failure is a drop: {}",
                handle.limit()
            );
        };
    }
    keeps_its_limit!(BulkheadLayer::builder()
        .adaptive(aimd())
        .classifier(DefaultClassifier.ignore_error::<Limited>())
        .build()
        .unwrap());
    keeps_its_limit!(BulkheadLayer::builder()
        .adaptive(aimd())
        .classifier(DefaultClassifier)
        .build()
        .unwrap());
}

/// An endpoint behind a balancer, of one type whatever is layered over it.
type Endpoint = BoxCloneSyncService<(), &'static str, BoxError>;

/// What an endpoint was asked: its calls, and whether it fails them.
#[derive(Clone, Default)]
struct Node {
    calls: Arc<AtomicUsize>,
    fail: Arc<AtomicBool>,
}

impl Node {
    /// The endpoint: it answers after `delay`, or fails once told to.
    fn service(
        &self,
        delay: Duration,
    ) -> impl Service<(), Response = &'static str, Error = BoxError, Future: Send>
           + Clone
           + Send
           + Sync
           + 'static {
        let node = self.clone();
        service_fn(move |()| {
            let node = node.clone();
            async move {
                node.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                match node.fail.load(Ordering::SeqCst) {
                    true => Err::<&'static str, BoxError>("boom".into()),
                    false => Ok("ok"),
                }
            }
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Ejects an endpoint at its third failure in a row, for 30 s; never panics.
fn three_in_a_row() -> OutlierDetection {
    OutlierDetection {
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 1.0,
        consecutive_failures: Some(3),
        success_rate: None,
        failure_percentage: None,
        latency: None,
    }
}

/// Endpoint 0 under its own quota (one call a second, none saved up), endpoint 1 without.
fn limited_and_plain(a: &Node, b: &Node) -> ServiceList<Vec<Endpoint>> {
    ServiceList::new(vec![
        Endpoint::new(quota().layer(a.service(Duration::ZERO))),
        Endpoint::new(b.service(Duration::ZERO)),
    ])
}

/// A round-robin balancer, never in panic mode, over [`limited_and_plain`]`(a, b)`, ejecting by
/// [`three_in_a_row`] as `classifier` counts failures; its endpoints loaded.
async fn round_robin_over_limited_and_plain<C>(
    classifier: C,
    a: &Node,
    b: &Node,
) -> Balance<usize, Endpoint, C>
where
    C: Classify<&'static str, BoxError> + Clone + Send + Sync + 'static,
{
    let balance = BalanceLayer::builder()
        .seed(3)
        .picker(Picker::RoundRobin)
        .panic_threshold(0.0)
        .outlier_detection(three_in_a_row())
        .classifier(classifier)
        .build()
        .unwrap()
        .layer(limited_and_plain(a, b));
    tokio::task::yield_now().await;
    balance
}

/// Outlier detection counts only failures: with `ignore_error::<Limited>()`, a burst of
/// `Limited` from an endpoint's own quota leaves it in, its own failures still eject it, and
/// counted as failures, the same burst ejects it.
#[tokio::test(start_paused = true)]
async fn outlier_detection_ignoring_limited_keeps_an_endpoint_over_its_quota_in() {
    let (a, b) = (Node::default(), Node::default());
    let ignoring = DefaultClassifier.ignore_error::<Limited>();
    let balance = round_robin_over_limited_and_plain(ignoring, &a, &b).await;

    // In turn: endpoint 0 takes every other call, answers its first and is over its quota for
    // the other 9.
    let mut limited = 0;
    for _ in 0..20 {
        match balance.clone().oneshot(()).await {
            Ok(_) => {}
            Err(err) if is::<Limited>(&*err) => limited += 1,
            Err(err) => panic!("{err}"),
        }
    }
    assert_eq!((limited, a.calls(), b.calls()), (9, 1, 10));
    assert!(balance.unhealthy().is_empty(), "{:?}", balance.unhealthy());

    // Its own failures, one a second within the quota: ejected at the third.
    a.fail.store(true, Ordering::SeqCst);
    for failed in 1..=3 {
        tokio::time::advance(Duration::from_secs(1)).await;
        let errors = [
            balance.clone().oneshot(()).await,
            balance.clone().oneshot(()).await,
        ]
        .into_iter()
        .filter_map(Result::err);
        for err in errors {
            assert!(!is::<Limited>(&*err), "{err}");
        }
        let expected = if failed < 3 { vec![] } else { vec![0] };
        assert_eq!(balance.unhealthy(), expected, "after {failed} failures");
    }
    assert_eq!(a.calls(), 4);

    // Counted as failures, the burst over the quota ejects it.
    let (a, b) = (Node::default(), Node::default());
    let balance = round_robin_over_limited_and_plain(DefaultClassifier, &a, &b).await;
    for _ in 0..20 {
        let _ = balance.clone().oneshot(()).await;
    }
    assert_eq!(balance.unhealthy(), vec![0]);
}

/// A per-endpoint rate limiter below the balancer, built with backpressure: while it has no
/// permit its endpoint is not ready, and the balancer (P2C PeakEWMA) passes the call to the other
/// endpoint. Waves of calls at once: none fails with `Limited`, and the limited endpoint still
/// takes calls, within its quota.
#[tokio::test(start_paused = true)]
async fn a_per_endpoint_limiter_with_backpressure_passes_calls_on_instead_of_failing_them() {
    let (a, b) = (Node::default(), Node::default());
    let per_endpoint = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .burst(1)
        .backpressure(true)
        .build()
        .unwrap();
    let balance = BalanceLayer::builder()
        .seed(7)
        .build()
        .unwrap()
        .layer(ServiceList::new(vec![
            Endpoint::new(per_endpoint.layer(a.service(Duration::from_millis(5)))),
            Endpoint::new(b.service(Duration::from_millis(5))),
        ]));
    tokio::task::yield_now().await;

    const WAVES: usize = 10;
    const CALLS: usize = 10;
    for wave in 0..WAVES {
        let calls: Vec<_> = (0..CALLS)
            .map(|_| tokio::spawn(balance.clone().oneshot(())))
            .collect();
        for call in calls {
            if let Err(err) = call.await.unwrap() {
                panic!("wave {wave}: {err}");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(a.calls() + b.calls(), WAVES * CALLS);
    assert!(
        (1..=WAVES).contains(&a.calls()),
        "the limited endpoint took {} calls",
        a.calls()
    );
}
