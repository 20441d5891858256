//! Per-endpoint circuit breakers from `seawall-breaker` as the balancer's availability filter
//! (Ribbon's AvailabilityFilteringRule).

mod common;

use common::{channel, drive_keys, Behavior, Node, Sender};
use seawall::balance::{
    BalanceLayer, BreakerFilter, Change, NoEndpoints, NoKey, NoProbe, OutlierDetection, Picker,
};
use seawall::breaker::{Breaker, BreakerConfig, BreakerLayer, BreakerSet, SlidingWindow, State};
use seawall_core::classify::DefaultClassifier;
use std::{
    sync::{
        atomic::{AtomicBool, Ordering::Relaxed},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio::time::{sleep, sleep_until, Instant};
use tokio_test::{assert_pending, assert_ready_ok, task::spawn};
use tower::{limit::ConcurrencyLimit, Layer, Service, ServiceExt};

/// A breaker that opens on one failure, waits 100 ms and then lets `probes` trial calls through.
fn quick_breaker(probes: u32) -> BreakerLayer {
    BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(100))
        .permitted_probes(probes)
        .jitter(0.0)
        .build()
        .unwrap()
}

/// A balancer (2 s `max_wait`) over one endpoint behind [`quick_breaker`], whose breaker one
/// failed call has just opened; the endpoint answers again. Keep the sender: dropping it ends
/// discovery.
async fn one_tripped_endpoint() -> (
    BreakerLayer,
    impl Service<u64, Response = usize, Error = seawall::BoxError, Future: Send>
        + Clone
        + Send
        + 'static,
    Arc<Behavior>,
    Sender<usize, Breaker<Node>>,
) {
    let breaker = quick_breaker(1);
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection::disabled())
        .filter(BreakerFilter)
        .max_wait(Duration::from_secs(2))
        .build()
        .unwrap()
        .layer(stream);
    let behavior = Arc::new(Behavior::default());
    let service = breaker.layer(Node {
        id: 0,
        behavior: behavior.clone(),
    });
    tx.send(Change::Insert(0usize, service)).unwrap();
    common::settle().await;
    behavior.fail.store(true, Relaxed);
    assert!(balance.clone().oneshot(1).await.is_err());
    assert_eq!(breaker.handle().state(), State::Open);
    behavior.fail.store(false, Relaxed);
    (breaker, balance, behavior, tx)
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_whose_breaker_is_open_takes_no_calls() {
    let breakers = BreakerSet::new(
        BreakerConfig::builder()
            .name("per-endpoint")
            .sliding_window(SlidingWindow::count(4))
            .minimum_calls(4)
            .failure_rate_threshold(0.5)
            .wait_duration(Duration::from_secs(10))
            .jitter(0.0)
            .permitted_probes(1)
            .build_config()
            .unwrap(),
        64,
    )
    .unwrap();
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .seed(1)
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection::disabled())
        .filter(BreakerFilter)
        .build()
        .unwrap()
        .layer(stream);
    let mut behaviors = Vec::new();
    for id in 0..3usize {
        let behavior = Arc::new(Behavior::default());
        behaviors.push(behavior.clone());
        // One breaker per endpoint, made when discovery makes the endpoint.
        let service = breakers.get(&id).layer(Node { id, behavior });
        tx.send(Change::Insert(id, service)).unwrap();
    }
    common::settle().await;
    behaviors[0].fail.store(true, Relaxed);

    let (_, failed) = drive_keys(&balance, 12).await;
    assert_eq!(failed, 4, "four failures open endpoint 0's breaker");
    assert_eq!(breakers.handle(&0).unwrap().state(), State::Open);
    let hits = |b: &[Arc<Behavior>]| {
        b.iter()
            .map(|b| b.hits.swap(0, Relaxed))
            .collect::<Vec<_>>()
    };
    hits(&behaviors);
    let (ok, failed) = drive_keys(&balance, 30).await;
    assert_eq!((ok, failed), (30, 0), "no call reaches the open breaker");
    assert_eq!(hits(&behaviors), vec![0, 15, 15]);

    // After the wait the breaker is half-open: endpoint 0 takes a trial call, which succeeds
    // now, and the breaker closes.
    behaviors[0].fail.store(false, Relaxed);
    sleep(Duration::from_secs(10)).await;
    let (ok, failed) = drive_keys(&balance, 30).await;
    assert_eq!((ok, failed), (30, 0));
    assert_eq!(breakers.handle(&0).unwrap().state(), State::Closed);
    assert!(hits(&behaviors)[0] > 0);
}

#[tokio::test(start_paused = true)]
async fn a_half_open_endpoint_takes_no_more_calls_than_its_probe_slots() {
    let breakers: Vec<_> = (0..3).map(|_| quick_breaker(1)).collect();
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection::disabled())
        .filter(BreakerFilter)
        .build()
        .unwrap()
        .layer(stream);
    let mut behaviors = Vec::new();
    for (id, breaker) in breakers.iter().enumerate() {
        let behavior = Arc::new(Behavior::default());
        behaviors.push(behavior.clone());
        let service = breaker.layer(Node { id, behavior });
        tx.send(Change::Insert(id, service)).unwrap();
    }
    common::settle().await;
    behaviors[0].fail.store(true, Relaxed);
    for i in 0..3 {
        let _ = balance.clone().oneshot(i).await;
    }
    assert_eq!(breakers[0].handle().state(), State::Open);
    behaviors[0].fail.store(false, Relaxed);
    behaviors[0].delay_ms.store(1000, Relaxed);
    behaviors[0].hits.store(0, Relaxed);
    sleep(Duration::from_millis(200)).await;

    // Nine calls at once: endpoint 0 is half-open with one probe slot, so it takes one (slow)
    // trial call and the other eight go to the healthy endpoints; none fails with `Open`.
    let calls: Vec<_> = (0..9)
        .map(|i| tokio::spawn(balance.clone().oneshot(i)))
        .collect();
    for call in calls {
        call.await
            .unwrap()
            .expect("no call is sent to a breaker that would reject it");
    }
    assert_eq!(behaviors[0].hits.load(Relaxed), 1);
    assert_eq!(breakers[0].handle().state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_is_served_when_an_open_breaker_s_wait_ends() {
    let (breaker, balance, _behavior, _tx) = one_tripped_endpoint().await;

    // The only endpoint is refused until its breaker's 100 ms wait ends; the waiting call looks
    // again then rather than at its 2 s `max_wait`.
    let start = Instant::now();
    assert_eq!(balance.clone().oneshot(2).await.unwrap(), 0);
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    assert_eq!(breaker.handle().state(), State::Closed);
}

/// A call waiting for a half-open endpoint whose only probe slot another call holds is served
/// as soon as that other call is cancelled and hands the slot back.
#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_call_wakes_a_call_waiting_for_its_slot() {
    let (breaker, balance, behavior, _tx) = one_tripped_endpoint().await;
    behavior.delay_ms.store(1_000_000, Relaxed);
    sleep(Duration::from_millis(200)).await;

    // Call A takes the only probe slot and hangs.
    let a = tokio::spawn(balance.clone().oneshot(2));
    common::settle().await;
    assert_eq!(breaker.handle().snapshot().probes_in_use, 1);
    // Call B finds the endpoint refused (no probe slot free) and waits.
    let b = tokio::spawn(balance.clone().oneshot(3));
    common::settle().await;
    assert!(!b.is_finished());

    // A is cancelled (an outer timeout, say) and hands its probe slot back: B takes it at once,
    // not at its 2 s `max_wait`, and its trial call closes the breaker.
    behavior.delay_ms.store(0, Relaxed);
    let start = Instant::now();
    a.abort();
    assert!(a.await.unwrap_err().is_cancelled());
    assert_eq!(b.await.unwrap().unwrap(), 0);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(behavior.hits.load(Relaxed), 3);
    assert_eq!(breaker.handle().state(), State::Closed);
}

/// An endpoint that is ready only once its gate opens; its calls fail while `fail` is set.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<AtomicBool>,
    fail: Arc<AtomicBool>,
    waker: Arc<Mutex<Option<Waker>>>,
}

impl Gate {
    fn open(&self) {
        self.open.store(true, Relaxed);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }
}

impl Service<u64> for Gate {
    type Response = usize;
    type Error = seawall::BoxError;
    type Future = std::future::Ready<Result<usize, seawall::BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), seawall::BoxError>> {
        if self.open.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        Poll::Pending
    }

    fn call(&mut self, _: u64) -> Self::Future {
        std::future::ready(match self.fail.load(Relaxed) {
            true => Err("gate failed".into()),
            false => Ok(0),
        })
    }
}

/// A call that gives up waiting (`max_wait`) while holding a half-open endpoint's only probe slot
/// hands the slot back and wakes a call waiting for it, as a cancelled call does.
#[tokio::test(start_paused = true)]
async fn a_probe_call_that_finds_no_endpoint_wakes_a_call_waiting_for_its_slot() {
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(200))
        .permitted_probes(1)
        .jitter(0.0)
        .build()
        .unwrap();
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection {
            // No health sweep wakes the waiting calls.
            interval: Duration::from_secs(3600),
            ..OutlierDetection::disabled()
        })
        .filter(BreakerFilter)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(stream);
    let gate = Gate::default();
    gate.open.store(true, Relaxed);
    gate.fail.store(true, Relaxed);
    tx.send(Change::Insert(0usize, breaker.layer(gate.clone())))
        .unwrap();
    common::settle().await;
    let start = Instant::now();
    assert!(balance.clone().oneshot(1).await.is_err());
    assert_eq!(breaker.handle().state(), State::Open);
    gate.fail.store(false, Relaxed);
    gate.open.store(false, Relaxed);

    // At 0.2 s call X takes the only probe slot; the endpoint is not ready, so X waits.
    sleep(Duration::from_millis(200)).await;
    let x = tokio::spawn(balance.clone().oneshot(2));
    common::settle().await;
    assert_eq!(breaker.handle().snapshot().probes_in_use, 1);
    // At 0.7 s call Y finds the endpoint refused (its slot taken) and waits.
    sleep(Duration::from_millis(500)).await;
    let y = tokio::spawn(balance.clone().oneshot(3));
    common::settle().await;
    assert!(!y.is_finished());

    // At 1.2 s X gives up and hands the slot back: Y takes it, and is served when the endpoint
    // turns ready at 1.3 s, not at its own `max_wait`.
    sleep_until(start + Duration::from_millis(1300)).await;
    let x = x.await.unwrap().unwrap_err();
    assert!(x.is::<NoEndpoints>(), "{x}");
    assert_eq!(breaker.handle().snapshot().probes_in_use, 1);
    gate.open();
    assert_eq!(y.await.unwrap().unwrap(), 0);
    assert_eq!(start.elapsed(), Duration::from_millis(1300));
    assert_eq!(breaker.handle().state(), State::Closed);
}

/// One endpoint behind a breaker with three probe slots, over a connection that takes two calls
/// at a time (tower's `ConcurrencyLimit`). A slow call Z of the Closed period holds one place when
/// the breaker goes half-open; probe A takes the other and hangs; B and C take the last two probe
/// slots and queue for a place. Every slot is taken, by these calls themselves: B and C keep the
/// endpoint service they hold (their slot, their place in the queue) while they wait, and when Z
/// ends B is served at once with the place Z gave back, then C with the one B gave back.
#[tokio::test(start_paused = true)]
async fn calls_holding_every_probe_slot_keep_their_place_in_the_endpoint_s_queue() {
    let breaker = quick_breaker(3);
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection::disabled())
        .filter(BreakerFilter)
        .max_wait(Duration::from_secs(2))
        .build()
        .unwrap()
        .layer(stream);
    let behavior = Arc::new(Behavior::default());
    let node = Node {
        id: 0,
        behavior: behavior.clone(),
    };
    tx.send(Change::Insert(
        0usize,
        breaker.layer(ConcurrencyLimit::new(node, 2)),
    ))
    .unwrap();
    common::settle().await;
    let start = Instant::now();

    // Z holds a place until 1 s; a failed call opens the breaker, half-open at 0.1 s.
    behavior.delay_ms.store(1000, Relaxed);
    let z = tokio::spawn(balance.clone().oneshot(1));
    common::settle().await;
    behavior.delay_ms.store(0, Relaxed);
    behavior.fail.store(true, Relaxed);
    assert!(balance.clone().oneshot(2).await.is_err());
    assert_eq!(breaker.handle().state(), State::Open);
    behavior.fail.store(false, Relaxed);
    sleep(Duration::from_millis(100)).await;

    // A takes the first probe slot and the free place, and hangs.
    behavior.delay_ms.store(1_000_000, Relaxed);
    let a = tokio::spawn(balance.clone().oneshot(3));
    common::settle().await;
    assert_eq!(breaker.handle().snapshot().probes_in_use, 1);
    behavior.delay_ms.store(0, Relaxed);
    // B and C take the other two and queue, in that order.
    let mut b = spawn(balance.clone().oneshot(4));
    let mut c = spawn(balance.clone().oneshot(5));
    assert_pending!(b.poll());
    assert_pending!(c.poll());
    assert_eq!(breaker.handle().snapshot().probes_in_use, 3);
    assert_eq!(behavior.hits.load(Relaxed), 3);

    // Z ends at 1 s and hands its place to B, first in the queue. C, woken too, still waits for
    // a place, holding its slot and its place in the queue.
    assert_eq!(z.await.unwrap().unwrap(), 0);
    assert_eq!(start.elapsed(), Duration::from_millis(1000));
    assert!(c.is_woken());
    assert_pending!(c.poll());
    assert_eq!(breaker.handle().snapshot().probes_in_use, 3);
    assert!(b.is_woken());
    assert_eq!(assert_ready_ok!(b.poll()), 0);
    // B's call is over: its place goes to C.
    assert!(c.is_woken());
    assert_eq!(assert_ready_ok!(c.poll()), 0);
    assert_eq!(behavior.hits.load(Relaxed), 5);
    assert_eq!(start.elapsed(), Duration::from_millis(1000));
    assert_eq!(breaker.handle().snapshot().probe_results, 2);
    a.abort();
}

/// One endpoint behind a breaker with two probe slots, bounded to 1 s in HalfOpen, over a
/// connection that takes one call at a time. Probe A takes a slot and the connection, and
/// outlives the bound; B takes the other slot and queues. When A ends the breaker is open again
/// (as of the bound): B does not call through the slot it holds, which the breaker no longer
/// honours and would reject; it lets it go and is served once the new Open wait ends.
#[tokio::test(start_paused = true)]
async fn a_call_holding_a_probe_slot_picks_again_once_the_breaker_re_opens() {
    let breaker = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_millis(100))
        .backoff(1.0, Duration::from_millis(100))
        .max_wait_in_half_open(Duration::from_secs(1))
        .permitted_probes(2)
        .jitter(0.0)
        .build()
        .unwrap();
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection::disabled())
        .filter(BreakerFilter)
        .max_wait(Duration::from_secs(2))
        .build()
        .unwrap()
        .layer(stream);
    let behavior = Arc::new(Behavior::default());
    let node = Node {
        id: 0,
        behavior: behavior.clone(),
    };
    tx.send(Change::Insert(
        0usize,
        breaker.layer(ConcurrencyLimit::new(node, 1)),
    ))
    .unwrap();
    common::settle().await;
    behavior.fail.store(true, Relaxed);
    assert!(balance.clone().oneshot(1).await.is_err());
    behavior.fail.store(false, Relaxed);
    sleep(Duration::from_millis(100)).await;

    // At 0.1 s A probes, for 1.05 s; the bound runs out at 1.1 s.
    let start = Instant::now();
    behavior.delay_ms.store(1050, Relaxed);
    let a = tokio::spawn(balance.clone().oneshot(2));
    common::settle().await;
    behavior.delay_ms.store(0, Relaxed);
    let b = tokio::spawn(balance.clone().oneshot(3));
    common::settle().await;
    assert_eq!(breaker.handle().snapshot().probes_in_use, 2);

    // A ends at 1.15 s, in the Open wait that began at 1.1 s; B takes a new probe slot at 1.2 s.
    assert_eq!(a.await.unwrap().unwrap(), 0);
    assert_eq!(start.elapsed(), Duration::from_millis(1050));
    assert_eq!(b.await.unwrap().expect("not rejected with Open"), 0);
    assert_eq!(start.elapsed(), Duration::from_millis(1100));
    assert_eq!(behavior.hits.load(Relaxed), 3);
    assert_eq!(breaker.handle().snapshot().probes_in_use, 1);
}

/// An endpoint that force-opens its own breaker when polled ready while `armed`, after the
/// breaker has admitted the call: the breaker rejects the call the balancer gives it.
#[derive(Clone)]
struct Tripping {
    node: Node,
    breaker: seawall::breaker::BreakerHandle,
    armed: Arc<AtomicBool>,
}

impl Service<u64> for Tripping {
    type Response = usize;
    type Error = seawall::BoxError;
    type Future = <Node as Service<u64>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), seawall::BoxError>> {
        if self.armed.load(Relaxed) {
            self.breaker.force_open();
        }
        self.node.poll_ready(cx)
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.node.call(req)
    }
}

/// A round-robin balancer, seeded, whose outlier detection ejects an endpoint after five
/// failures in a row, and which skips endpoints whose breakers refuse calls.
fn ejecting_after_five_failures() -> BalanceLayer<DefaultClassifier, NoKey, NoProbe, BreakerFilter>
{
    BalanceLayer::builder()
        .seed(1)
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection {
            consecutive_failures: Some(5),
            ..OutlierDetection::disabled()
        })
        .filter(BreakerFilter)
        .build()
        .unwrap()
}

/// An endpoint's breaker that opens between the pick and the call rejects the call with its
/// `Open`; `BreakerFilter` names it as its own rejection, so outlier detection (five failures in
/// a row eject) counts nothing against the endpoint, which takes its turns once the breaker is
/// reset.
#[tokio::test(start_paused = true)]
async fn a_rejection_by_the_endpoints_own_breaker_counts_nothing_against_it() {
    let breakers: Vec<_> = (0..2).map(|_| quick_breaker(1)).collect();
    let (tx, stream) = channel();
    let balance = ejecting_after_five_failures().layer(stream);
    let armed = Arc::new(AtomicBool::new(true));
    let behaviors: Vec<_> = (0..2).map(|_| Arc::new(Behavior::default())).collect();
    for id in 0..2usize {
        let node = Node {
            id,
            behavior: behaviors[id].clone(),
        };
        // Only endpoint 0 trips its breaker.
        let armed = match id {
            0 => armed.clone(),
            _ => Arc::new(AtomicBool::new(false)),
        };
        let service = breakers[id].layer(Tripping {
            node,
            breaker: breakers[id].handle(),
            armed,
        });
        tx.send(Change::Insert(id, service)).unwrap();
    }
    common::settle().await;
    let mut rejected = 0;
    for _ in 0..10 {
        match balance.clone().oneshot(1).await {
            Ok(id) => assert_eq!(id, 1),
            Err(error) => {
                assert!(error.is::<seawall::breaker::Open>(), "{error:?}");
                rejected += 1;
            }
        }
        breakers[0].handle().reset();
    }
    assert_eq!(rejected, 5);
    assert_eq!(behaviors[0].hits.load(Relaxed), 0);
    armed.store(false, Relaxed);
    for _ in 0..10 {
        balance.clone().oneshot(1).await.unwrap();
    }
    assert_eq!(behaviors[0].hits.load(Relaxed), 5, "endpoint 0 was ejected");
}

/// An `Open` from a breaker inside the endpoint's service, while the endpoint's own breaker is
/// Closed (too few calls to trip it), is the endpoint failing every call at once, not
/// `BreakerFilter`'s rejection: outlier detection (five failures in a row eject) counts it, and
/// ejects the endpoint.
#[tokio::test(start_paused = true)]
async fn an_open_from_within_the_endpoint_s_service_counts_against_it() {
    let outer: Vec<_> = (0..2)
        .map(|_| BreakerLayer::builder().build().unwrap())
        .collect();
    // Only endpoint 0 has the breaker inside its service open.
    let inner: Vec<_> = (0..2)
        .map(|_| BreakerLayer::builder().build().unwrap())
        .collect();
    inner[0].handle().force_open();
    let (tx, stream) = channel();
    let balance = ejecting_after_five_failures().layer(stream);
    let behaviors: Vec<_> = (0..2).map(|_| Arc::new(Behavior::default())).collect();
    for id in 0..2usize {
        let node = Node {
            id,
            behavior: behaviors[id].clone(),
        };
        let service = outer[id].layer(inner[id].layer(node));
        tx.send(Change::Insert(id, service)).unwrap();
    }
    common::settle().await;
    let mut failed = 0;
    for _ in 0..10 {
        match balance.clone().oneshot(1).await {
            Ok(id) => assert_eq!(id, 1),
            Err(error) => {
                assert!(error.is::<seawall::breaker::Open>(), "{error:?}");
                failed += 1;
            }
        }
    }
    assert_eq!(failed, 5);
    assert_eq!(outer[0].handle().state(), State::Closed);
    inner[0].handle().reset();
    for _ in 0..10 {
        assert_eq!(balance.clone().oneshot(1).await.unwrap(), 1);
    }
    assert_eq!(
        behaviors[0].hits.load(Relaxed),
        0,
        "endpoint 0 was not ejected"
    );
}
