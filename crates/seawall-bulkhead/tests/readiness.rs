//! Readiness discipline: rejections come from the response future, never from `poll_ready`;
//! `Clone` resets a reservation; a waiting call polls its service ready only once it may run; the
//! `backpressure` option makes `poll_ready` wait instead.

use seawall_bulkhead::{
    ratelimit::{Limited, RateLimitLayer},
    BulkheadLayer, Full,
};
use seawall_core::error::is;
use std::time::Duration;
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower::{
    buffer::Buffer, limit::ConcurrencyLimit, service_fn, util::BoxCloneService, Layer, Service,
    ServiceExt,
};
use tower_test::mock;

#[tokio::test(start_paused = true)]
async fn full_is_an_error_of_the_response_future() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let (mut first, mut server) = mock::spawn_layer::<u32, u32, _>(layer);
    let mut second = first.clone();

    assert_ready_ok!(first.poll_ready());
    assert_eq!(handle.available(), 0, "poll_ready reserved the permit");
    let running = first.call(1);

    // The bulkhead is full, yet poll_ready succeeds: the rejection comes from the future.
    assert_ready_ok!(second.poll_ready());
    let err = second.call(2).await.unwrap_err();
    assert!(is::<Full>(&*err), "{err}");
    assert_eq!(err.to_string(), "bulkhead is full");

    let (request, respond) = server.next_request().await.unwrap();
    assert_eq!(request, 1);
    respond.send_response(10);
    assert_eq!(running.await.unwrap(), 10);
    assert_eq!(handle.available(), 1, "the permit came back");

    // The service that was rejected can be used again.
    assert_ready_ok!(second.poll_ready());
    let call = second.call(3);
    let (request, respond) = server.next_request().await.unwrap();
    assert_eq!(request, 3);
    respond.send_response(30);
    assert_eq!(call.await.unwrap(), 30);
}

#[tokio::test(start_paused = true)]
async fn clone_does_not_carry_the_reservation() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let (mut service, _server) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(service.poll_ready());
    let mut clone = service.clone();
    let err = clone.call(1).await.unwrap_err();
    assert!(is::<Full>(&*err));
    drop(service);
    assert_eq!(
        handle.available(),
        1,
        "dropping a ready service returns its permit"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_and_release() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let (mut service, mut server) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(service.poll_ready());
    let call = service.call(1);
    let (_, respond) = server.next_request().await.unwrap();
    respond.send_error(std::io::Error::other("boom"));
    let err = call.await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
    assert!(err.downcast_ref::<std::io::Error>().is_some());
    assert_eq!(handle.available(), 1);
}

#[tokio::test(start_paused = true)]
async fn pending_inner_is_not_a_rejection() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let (mut service, mut server) = mock::spawn_layer::<u32, u32, _>(layer);
    server.allow(0);
    assert_pending!(service.poll_ready());
    assert_eq!(
        handle.available(),
        1,
        "no permit is held while the inner service is pending"
    );
    server.allow(1);
    assert_ready_ok!(service.poll_ready());
    assert_eq!(handle.available(), 0);
}

/// tower's `ConcurrencyLimit` forgets its readiness when cloned: calling a fresh clone panics. The
/// waiting call must call a service that was polled ready (its own clone, polled once it has its
/// permit).
#[tokio::test(start_paused = true)]
async fn waiting_call_uses_the_ready_inner_service() {
    let inner = ConcurrencyLimit::new(
        service_fn(|n: u32| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(n)
        }),
        10,
    );
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut service = bulkhead.layer(inner);

    let first = service.ready().await.unwrap().call(1);
    let second = service.ready().await.unwrap().call(2);
    let third = service.ready().await.unwrap().call(3);
    let (a, b, c) = tokio::join!(first, second, third);
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 2, 3));
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_in_poll_ready() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .backpressure(true)
        .build()
        .unwrap();
    let (mut first, mut server) = mock::spawn_layer::<u32, u32, _>(layer);
    let mut second = first.clone();

    assert_ready_ok!(first.poll_ready());
    let running = first.call(1);
    assert_pending!(second.poll_ready());

    let (_, respond) = server.next_request().await.unwrap();
    respond.send_response(1);
    running.await.unwrap();
    assert!(second.is_woken());
    assert_ready_ok!(second.poll_ready());
    let call = second.call(2);
    let (request, respond) = server.next_request().await.unwrap();
    assert_eq!(request, 2);
    respond.send_response(2);
    assert_eq!(call.await.unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn shared_across_layer_calls_and_clones() {
    let layer = BulkheadLayer::builder().max_concurrent(2).build().unwrap();
    let handle = layer.handle();
    let (mut a, _sa) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    let (mut b, _sb) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    let mut c = a.clone();
    assert_ready_ok!(a.poll_ready());
    assert_ready_ok!(b.poll_ready());
    assert_ready_ok!(c.poll_ready());
    assert_eq!(
        handle.in_flight(),
        2,
        "two services made by one layer share two permits"
    );
    let err = c.call(3).await.unwrap_err();
    assert!(is::<Full>(&*err));

    // A second layer built separately is an independent bulkhead.
    let other = BulkheadLayer::builder().max_concurrent(2).build().unwrap();
    assert_eq!(other.handle().available(), 2);
}

/// A call made without a reservation of its own takes a free permit if there is one; on a full
/// bulkhead it is rejected at once, without reaching the inner service or taking the permit
/// another service reserved.
#[tokio::test(start_paused = true)]
async fn a_call_without_a_reservation_on_a_full_bulkhead_is_rejected() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let (mut service, _server) = mock::spawn_layer::<u32, u32, _>(layer.clone());
    let (mut other, mut other_server) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(service.poll_ready());
    let mut rejected = tokio_test::task::spawn(other.call(1));
    let err = assert_ready!(rejected.poll()).unwrap_err();
    assert!(is::<Full>(&*err));
    assert_pending!(
        other_server.poll_request(),
        "never reached the inner service"
    );
    assert_eq!(handle.available(), 0, "the reservation is still held");

    drop(service);
    assert_eq!(handle.available(), 1);
    // The rejection left nothing behind: the same service reserves the free permit and calls.
    assert_ready_ok!(other.poll_ready());
    let call = other.call(2);
    let (request, respond) = other_server.next_request().await.unwrap();
    assert_eq!(request, 2);
    respond.send_response(20);
    assert_eq!(call.await.unwrap(), 20);
    assert_eq!(handle.available(), 1);
}

/// A full bulkhead rejects from the response future, so `Buffer` (whose worker fails for good on
/// an error from `poll_ready`) keeps serving once a permit is free again.
#[tokio::test(start_paused = true)]
async fn behind_buffer_a_full_bulkhead_does_not_poison_the_buffer() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let (inner, mut server) = mock::pair::<u32, u32>();
    let svc: BoxCloneService<u32, u32, seawall_core::BoxError> =
        BoxCloneService::new(Buffer::new(layer.layer(inner), 4));

    let running = tokio::spawn(svc.clone().oneshot(1));
    let (request, respond) = server.next_request().await.unwrap();
    assert_eq!(request, 1);
    assert_eq!(handle.available(), 0);

    let err = svc.clone().oneshot(2).await.unwrap_err();
    assert!(seawall_core::error::find::<Full>(&*err).is_some(), "{err}");

    respond.send_response(10);
    assert_eq!(running.await.unwrap().unwrap(), 10);
    assert_eq!(handle.available(), 1);

    let call = tokio::spawn(svc.oneshot(3));
    let (request, respond) = server.next_request().await.unwrap();
    assert_eq!(request, 3);
    respond.send_response(30);
    assert_eq!(call.await.unwrap().unwrap(), 30);
}

/// The same for the rate limiter: an empty bucket rejects from the response future, and the
/// Buffer serves the next call once time has refilled it.
#[tokio::test(start_paused = true)]
async fn behind_buffer_an_empty_rate_limit_does_not_poison_the_buffer() {
    let layer = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .burst(1)
        .build()
        .unwrap();
    let svc: BoxCloneService<u32, u32, seawall_core::BoxError> = BoxCloneService::new(Buffer::new(
        layer.layer(service_fn(|n: u32| async move {
            Ok::<_, seawall_core::BoxError>(n)
        })),
        4,
    ));

    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    let err = svc.clone().oneshot(2).await.unwrap_err();
    let limited = seawall_core::error::find::<Limited>(&*err).expect("rejected by the limiter");
    assert_eq!(limited.retry_after(), Duration::from_secs(1));

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.clone().oneshot(3).await.unwrap(), 3);
    assert_eq!(
        svc.oneshot(4).await.unwrap_err().to_string(),
        "rate limit exceeded"
    );
}

/// An inner service that takes the only permit of a concurrency limit once polled ready, and a
/// clone of it (sharing the permit) to see whether it is free.
fn limited_to_one() -> (
    ConcurrencyLimit<impl Service<u32, Response = u32, Error = std::io::Error> + Clone>,
    ConcurrencyLimit<impl Service<u32, Response = u32, Error = std::io::Error> + Clone>,
) {
    let limit = ConcurrencyLimit::new(
        service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }),
        1,
    );
    (limit.clone(), limit)
}

/// An answering service behind a concurrency limit of `permits`, whose clones share the limit:
/// one polled ready holds a permit until it is called or dropped.
fn echo_limited_to(
    permits: usize,
) -> ConcurrencyLimit<
    impl Service<
            u32,
            Response = u32,
            Error = std::io::Error,
            Future = impl std::future::Future<Output = Result<u32, std::io::Error>> + Send,
        > + Clone,
> {
    ConcurrencyLimit::new(
        service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) }),
        permits,
    )
}

/// A rate limiter of one call a second, no burst beyond it, whose calls wait up to `max_wait`.
fn one_a_second(max_wait: Duration) -> seawall_bulkhead::ratelimit::RateLimitConfigBuilder {
    RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .burst(1)
        .max_wait(max_wait)
}

/// A call rejected with `Limited` hands back what its inner service's readiness holds, as one
/// rejected with `Full` does (see
/// `a_rejected_call_hands_back_the_readiness_of_an_inner_service_it_polled`).
#[tokio::test(start_paused = true)]
async fn a_rate_limited_call_hands_back_the_inner_services_readiness() {
    let limiter = || {
        RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .burst(1)
    };

    let layer = limiter().build().unwrap();
    let (inner, mut other) = limited_to_one();
    let mut kept = layer.layer(inner);
    assert_eq!(kept.ready().await.unwrap().call(1).await.unwrap(), 1);
    kept.ready().await.unwrap();
    let err = kept.call(2).await.unwrap_err();
    assert!(is::<Limited>(&*err));
    let mut other_ready = tokio_test::task::spawn(other.ready());
    assert_ready!(other_ready.poll()).unwrap();
    drop(other_ready);

    let keyed = limiter().build_keyed(|_: &u32| ()).unwrap();
    let (inner, mut other) = limited_to_one();
    let mut kept = keyed.layer(inner);
    assert_eq!(kept.ready().await.unwrap().call(1).await.unwrap(), 1);
    kept.ready().await.unwrap();
    let err = kept.call(2).await.unwrap_err();
    assert!(is::<Limited>(&*err));
    let mut other_ready = tokio_test::task::spawn(other.ready());
    assert_ready!(other_ready.poll()).unwrap();
}

/// An inner service that counts how often it is cloned and polled; always ready, answers at once.
#[derive(Debug)]
struct Counting {
    clones: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    polls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Counting {
    fn new() -> Self {
        Counting {
            clones: Default::default(),
            polls: Default::default(),
        }
    }

    /// (clones, polls) so far.
    fn counts(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.clones.load(Relaxed), self.polls.load(Relaxed))
    }
}

impl Clone for Counting {
    fn clone(&self) -> Self {
        self.clones
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Counting {
            clones: self.clones.clone(),
            polls: self.polls.clone(),
        }
    }
}

impl Service<u32> for Counting {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u32, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.polls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: u32) -> Self::Future {
        std::future::ready(Ok(request))
    }
}

/// A bulkhead that is full when `poll_ready` looks, for a call that may not wait, decides the
/// rejection there: the inner service is neither polled nor cloned (its readiness holds nothing
/// to give back). The decision stands if a permit frees before `call`, which must not call an
/// inner service that was not polled; the next `poll_ready` looks again.
#[tokio::test(start_paused = true)]
async fn a_call_rejected_in_poll_ready_neither_polls_nor_clones_the_inner_service() {
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = bulkhead.handle();
    let (mut holder, _server) = mock::spawn_layer::<u32, u32, _>(bulkhead.clone());
    assert_ready_ok!(holder.poll_ready());

    let inner = Counting::new();
    let counts = inner.clone();
    let base = counts.counts();
    let mut service = bulkhead.layer(inner);
    let mut ready = tokio_test::task::spawn(service.ready());
    assert_ready_ok!(ready.poll());
    drop(ready);
    let err = service.call(1).await.unwrap_err();
    assert!(is::<Full>(&*err));
    assert_eq!(counts.counts(), base, "neither polled nor cloned");

    // Full at `poll_ready`, free at `call`: still rejected, the inner service still untouched.
    let mut ready = tokio_test::task::spawn(service.ready());
    assert_ready_ok!(ready.poll());
    drop(ready);
    drop(holder);
    assert_eq!(handle.available(), 1);
    let err = service.call(2).await.unwrap_err();
    assert!(is::<Full>(&*err));
    assert_eq!(counts.counts(), base);
    assert_eq!(handle.available(), 1, "the rejection took no permit");

    // A permit is free when `poll_ready` looks: the inner service is polled and called.
    assert_eq!(service.ready().await.unwrap().call(3).await.unwrap(), 3);
    assert_eq!(counts.counts(), (base.0, base.1 + 1));
}

/// A permit free when `poll_ready` looks can be gone once the inner service is ready (it was
/// pending meanwhile): the call is rejected, and what the inner service's readiness holds (here
/// the only permit of a concurrency limit below) is handed back, as the service was polled.
///
/// Found by seawall's composition laws: behind a `Buffer`, a full bulkhead over a retry over a
/// concurrency limit (tower's, or a bulkhead with backpressure) deadlocked. The worker's service
/// was polled ready, which took the limit's only permit, and its call was rejected with `Full`;
/// the worker kept the service, and with it the permit, while the call that held the bulkhead's
/// permit waited for that permit for its retry. (A bulkhead full when `poll_ready` looks no
/// longer polls the inner service at all: see
/// `a_call_rejected_in_poll_ready_neither_polls_nor_clones_the_inner_service`.)
#[tokio::test(start_paused = true)]
async fn a_rejected_call_hands_back_the_readiness_of_an_inner_service_it_polled() {
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = bulkhead.handle();
    let (inner, mut other) = limited_to_one();
    // `other` holds the limit's only permit: `kept`'s inner service is pending.
    other.ready().await.unwrap();
    let mut kept = bulkhead.layer(inner);
    let mut ready = tokio_test::task::spawn(kept.ready());
    assert!(ready.poll().is_pending());
    assert_eq!(
        handle.available(),
        1,
        "no permit taken while the inner is pending"
    );

    // Meanwhile the bulkhead fills, and the limit's permit passes to `kept`'s inner service.
    let (mut holder, _server) = mock::spawn_layer::<u32, u32, _>(bulkhead.clone());
    assert_ready_ok!(holder.poll_ready());
    assert_eq!(other.call(0).await.unwrap(), 0);
    assert!(ready.is_woken());
    assert_ready_ok!(ready.poll());
    drop(ready);
    let err = kept.call(1).await.unwrap_err();
    assert!(is::<Full>(&*err));

    // `kept` is kept, uncalled: the limit's permit is free for others all the same.
    let mut other_ready = tokio_test::task::spawn(other.ready());
    assert_ready!(other_ready.poll()).unwrap();
}

/// A retry in miniature: an attempt that fails is made once more, on a clone of the inner service
/// polled ready again (as a retry layer's future does).
#[derive(Clone)]
struct RetryOnce<S>(S);

impl<S> Service<u32> for RetryOnce<S>
where
    S: Service<u32, Response = u32, Error = std::io::Error> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = u32;
    type Error = std::io::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<u32, std::io::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: u32) -> Self::Future {
        let clone = self.0.clone();
        let mut ready = std::mem::replace(&mut self.0, clone);
        let mut again = self.0.clone();
        Box::pin(async move {
            match ready.call(request).await {
                Ok(response) => Ok(response),
                Err(_) => again.ready().await?.call(request).await,
            }
        })
    }
}

/// A waiting call takes its bulkhead permit before it polls the inner service ready. With
/// `Bulkhead(1, max_wait) → retry → ConcurrencyLimit(1)`, `a` holds the bulkhead's permit and
/// its first attempt the limit's. Had `b`, queued for the bulkhead, polled the inner service
/// first, it would take the limit's permit when that attempt fails and hold it while it waits
/// for the bulkhead, and `a`'s retry would wait for the limit behind it until `b`'s `max_wait`:
/// a deadlock for that long.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_holds_no_inner_readiness_while_it_waits() {
    let attempts = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = attempts.clone();
    let limit = ConcurrencyLimit::new(
        service_fn(move |n: u32| {
            let attempt = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                if attempt == 0 {
                    Err(std::io::Error::other("first attempt fails"))
                } else {
                    Ok(n)
                }
            }
        }),
        1,
    );
    let bulkhead = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let stack = bulkhead.layer(RetryOnce(limit));

    let mut a_service = stack.clone();
    let a = a_service.ready().await.unwrap().call(1);
    let mut b_service = stack.clone();
    let b = tokio::spawn(async move { b_service.ready().await?.call(2).await });
    let a = tokio::spawn(a);

    let answered = tokio::time::timeout(Duration::from_secs(1), a).await;
    let a = answered.expect("a's retry answers well before b's max_wait");
    assert_eq!(a.unwrap().unwrap(), 1);
    assert_eq!(b.await.unwrap().unwrap(), 2);
}

/// A rate-limited call that sleeps for its permit holds nothing below while it sleeps: it polls
/// its inner service ready only once its permit is due. Here the limit's only permit stays free
/// for `other`, a caller that reaches the limit by another path, and the sleeper goes on time.
#[tokio::test(start_paused = true)]
async fn a_sleeping_rate_limited_call_holds_no_inner_readiness() {
    let layer = one_a_second(Duration::from_secs(1)).build().unwrap();
    let inner = echo_limited_to(1);
    let mut other = inner.clone();
    let mut service = layer.layer(inner);
    assert_eq!(service.ready().await.unwrap().call(1).await.unwrap(), 1);
    // The burst is spent: this call sleeps for its permit, a second.
    let start = tokio::time::Instant::now();
    let call = service.ready().await.unwrap().call(2);
    let sleeping = tokio::spawn(async move { call.await.map(|n| (n, start.elapsed())) });
    tokio::task::yield_now().await;

    // Neither the sleeping call nor the limiter's service keeps what was polled for the call.
    let mut served =
        tokio_test::task::spawn(async { other.ready().await.unwrap().call(3).await.unwrap() });
    assert_eq!(
        assert_ready!(served.poll()),
        3,
        "the sleeping call holds the limit's permit"
    );
    drop(served);
    assert_eq!(
        sleeping.await.unwrap().unwrap(),
        (2, Duration::from_secs(1))
    );
}

/// The same for the keyed limiter: one hot key's calls, sleeping for their permits, hold none of
/// the permits of a limit below, and another key's call is served meanwhile.
#[tokio::test(start_paused = true)]
async fn sleeping_keyed_calls_hold_no_inner_readiness() {
    let layer = one_a_second(Duration::from_secs(5))
        .build_keyed(|n: &u32| *n / 100)
        .unwrap();
    let service = layer.layer(echo_limited_to(2));
    // Key 0 spends its burst; its next two calls sleep for their permits.
    let mut hot = service.clone();
    assert_eq!(hot.ready().await.unwrap().call(1).await.unwrap(), 1);
    let mut sleeping = Vec::new();
    for n in [2, 3] {
        let call = hot.ready().await.unwrap().call(n);
        sleeping.push(tokio::spawn(call));
    }
    tokio::task::yield_now().await;

    // Key 1 has its whole burst, and the limit below has room for it.
    let mut cold = service.clone();
    let mut served =
        tokio_test::task::spawn(
            async move { cold.ready().await.unwrap().call(101).await.unwrap() },
        );
    assert_eq!(
        assert_ready!(served.poll()),
        101,
        "key 0's sleeping calls hold the limit's permits"
    );
    for (call, n) in sleeping.into_iter().zip([2, 3]) {
        assert_eq!(call.await.unwrap().unwrap(), n);
    }
}

/// A waiter whose inner service gets ready only after its permit's span would land next to the
/// calls admitted since: it gives the permit back and waits for the next one, and gives back its
/// readiness while it waits. With no call admitted since, the next permit is due at once.
#[tokio::test(start_paused = true)]
async fn a_waiter_ready_after_its_permits_span_takes_the_next_permit() {
    for neighbour in [false, true] {
        let layer = one_a_second(Duration::from_secs(5)).build().unwrap();
        let start = tokio::time::Instant::now();
        let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = ran.clone();
        let limit = ConcurrencyLimit::new(
            service_fn(move |n: u32| {
                record.lock().unwrap().push((n, start.elapsed()));
                async move { Ok::<_, std::io::Error>(n) }
            }),
            1,
        );
        let (inner, mut blocker, probe) = (limit.clone(), limit.clone(), limit);
        let mut service = layer.layer(inner);
        service.ready().await.unwrap().call(1).await.unwrap();
        // Due at 1 s; the limit below is held from 0.5 s to 1.5 s.
        let waiter = tokio::spawn(service.ready().await.unwrap().call(2));
        tokio::time::sleep(Duration::from_millis(500)).await;
        blocker.ready().await.unwrap();
        // The neighbour reaches the limiter, not the limit, by another service of the layer.
        let neighbour = neighbour.then(|| {
            let mut other = layer.layer(service_fn(
                |n: u32| async move { Ok::<_, std::io::Error>(n) },
            ));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(700)).await;
                other
                    .ready()
                    .await
                    .unwrap()
                    .call(3)
                    .await
                    .map(|_| start.elapsed())
            })
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(blocker);
        if neighbour.is_some() {
            // At 1.6 s the waiter has renewed its permit: it holds nothing below while it waits.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut probe = probe;
            let mut probed = tokio_test::task::spawn(probe.ready());
            assert_ready!(probed.poll()).expect("the renewed waiter holds the limit's permit");
        } else {
            drop(probe);
        }
        waiter.await.unwrap().unwrap();
        let ran = ran.lock().unwrap().clone();
        match neighbour {
            // Nothing admitted since its permit: the next one is due as it gets ready.
            None => assert_eq!(ran[1], (2, Duration::from_millis(1_500))),
            // The neighbour, admitted at 1.2 s, runs at 2 s; the waiter, ready at 1.5 s, would
            // have run half a second before it at a rate of one a second. It goes at 3 s.
            Some(neighbour) => {
                assert_eq!(neighbour.await.unwrap().unwrap(), Duration::from_secs(2));
                assert_eq!(ran[1], (2, Duration::from_secs(3)));
            }
        }
    }
}

/// A waiter whose inner service fails to get ready ends with that error, and its permit goes back
/// to the next caller, who runs at once rather than a second later.
#[tokio::test(start_paused = true)]
async fn a_waiters_readiness_error_ends_the_call_and_gives_its_permit_back() {
    /// Ready unless `broken`, then fails to get ready.
    #[derive(Clone)]
    struct Breakable(std::sync::Arc<std::sync::atomic::AtomicBool>);

    impl Service<u32> for Breakable {
        type Response = u32;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<u32, std::io::Error>>;

        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), std::io::Error>> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                std::task::Poll::Ready(Err(std::io::Error::other("connection refused")))
            } else {
                std::task::Poll::Ready(Ok(()))
            }
        }

        fn call(&mut self, n: u32) -> Self::Future {
            std::future::ready(Ok(n))
        }
    }

    let layer = one_a_second(Duration::from_secs(5)).build().unwrap();
    let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut service = layer.layer(Breakable(broken.clone()));
    assert_eq!(service.ready().await.unwrap().call(1).await.unwrap(), 1);
    let waiter = service.ready().await.unwrap().call(2);
    broken.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = waiter.await.unwrap_err();
    assert_eq!(err.to_string(), "connection refused");
    broken.store(false, std::sync::atomic::Ordering::SeqCst);

    let start = tokio::time::Instant::now();
    assert_eq!(service.ready().await.unwrap().call(3).await.unwrap(), 3);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "the failed waiter's permit came back"
    );
}

/// A waiter whose service gets ready after its permit's span and after its deadline (`max_wait`
/// after the call) takes a permit free at once, which costs the rate nothing, and runs then: only
/// a permit it would wait for must be due by its deadline.
#[tokio::test(start_paused = true)]
async fn a_waiter_ready_past_its_deadline_takes_a_permit_free_at_once() {
    let layer = RateLimitLayer::builder()
        .rate(10, Duration::from_secs(1))
        .burst(1)
        .max_wait(Duration::from_millis(50))
        .build()
        .unwrap();
    let start = tokio::time::Instant::now();
    let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = ran.clone();
    let limit = ConcurrencyLimit::new(
        service_fn(move |n: u32| {
            record.lock().unwrap().push((n, start.elapsed()));
            async move { Ok::<_, std::io::Error>(n) }
        }),
        1,
    );
    let (inner, mut blocker) = (limit.clone(), limit);
    let mut service = layer.layer(inner);
    service.ready().await.unwrap().call(1).await.unwrap();
    // At 60 ms the call takes the permit due at 100 ms, usable until 110 ms, also its deadline.
    // The limit below is held from then until 400 ms.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let waiter = tokio::spawn(service.ready().await.unwrap().call(2));
    blocker.ready().await.unwrap();
    tokio::time::sleep(Duration::from_millis(340)).await;
    drop(blocker);
    // Ready at 400 ms, 290 ms past its deadline, with no call admitted since: it runs at once.
    assert_eq!(waiter.await.unwrap().unwrap(), 2);
    assert_eq!(
        *ran.lock().unwrap(),
        [(1, Duration::ZERO), (2, Duration::from_millis(400))]
    );
}

/// A renewed permit must still be due within the call's `max_wait`: a waiter whose service gets
/// ready after its permit's span, when the next permit is further off than that, is rejected with
/// `Limited`, holding nothing.
#[tokio::test(start_paused = true)]
async fn a_waiter_ready_too_late_for_its_max_wait_is_limited() {
    let layer = one_a_second(Duration::from_millis(1_600)).build().unwrap();
    let limit = echo_limited_to(1);
    let (inner, mut blocker, mut probe) = (limit.clone(), limit.clone(), limit);
    let mut service = layer.layer(inner);
    service.ready().await.unwrap().call(1).await.unwrap();
    // Due at 1 s; the limit below is held until 1.5 s; a neighbour, admitted at 1.2 s, holds
    // the permit due at 2 s.
    let waiter = tokio::spawn(service.ready().await.unwrap().call(2));
    blocker.ready().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let neighbour = layer.layer(service_fn(
        |n: u32| async move { Ok::<_, std::io::Error>(n) },
    ));
    let neighbour = tokio::spawn(neighbour.oneshot(3));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(blocker);
    // The next permit, at 3 s, is past the call's deadline at 1.6 s (though within `max_wait` of
    // the renewal).
    let err = waiter.await.unwrap().unwrap_err();
    let limited = seawall_core::error::find::<Limited>(&*err).expect("a Limited error");
    assert_eq!(limited.retry_after(), Duration::from_millis(1_500));
    let mut probed = tokio_test::task::spawn(probe.ready());
    assert_ready!(probed.poll()).expect("the rejected waiter holds the limit's permit");
    drop(probed);
    assert_eq!(neighbour.await.unwrap().unwrap(), 3);
}
