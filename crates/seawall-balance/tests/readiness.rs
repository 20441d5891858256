//! Readiness and cancellation: endpoints whose `Clone` resets readiness (tower's
//! `ConcurrencyLimit`), one unready endpoint never holding calls up, in-flight counts released on
//! drop, a call cancelled while waiting waking the others, and `Send + Sync + 'static` of the
//! public types.

mod common;

use common::{channel, Behavior, Node};
use seawall::balance::{
    Balance, BalanceConfigBuilder, BalanceLayer, Change, Key, OutlierDetection, Picker,
    ResponseFuture, Tagged,
};
use std::{sync::atomic::Ordering::Relaxed, sync::Arc, time::Duration};
use tokio_test::{assert_pending, assert_ready_ok, task::spawn};
use tower::{limit::ConcurrencyLimit, Layer, Service, ServiceExt};

/// Sends `n` endpoints, each a connection that takes one call at a time (tower's
/// `ConcurrencyLimit`) and answers after `delay_ms`; returns their behaviours, by id.
fn send_limited_endpoints(
    tx: &common::Sender<usize, ConcurrencyLimit<Node>>,
    n: usize,
    delay_ms: u64,
) -> Vec<Arc<Behavior>> {
    (0..n)
        .map(|id| {
            let behavior = Arc::new(Behavior::default());
            behavior.delay_ms.store(delay_ms, Relaxed);
            tx.send(Change::Insert(
                id,
                ConcurrencyLimit::new(
                    Node {
                        id,
                        behavior: behavior.clone(),
                    },
                    1,
                ),
            ))
            .unwrap();
            behavior
        })
        .collect()
}

/// A balancer built from `builder` over a discovery channel, and the channel's sender.
fn balancer<K, S>(builder: BalanceConfigBuilder) -> (common::Sender<K, S>, Balance<K, S>)
where
    K: Key + Send + 'static,
    S: Clone + Send + Sync + 'static,
{
    let (tx, stream) = channel();
    (tx, builder.build().unwrap().layer(stream))
}

/// Round robin, with no outlier detection.
fn round_robin() -> BalanceConfigBuilder {
    BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .outlier_detection(OutlierDetection::disabled())
}

/// Outlier detection that ejects an endpoint after `failures` failures in a row.
fn ejecting_after(failures: u32) -> OutlierDetection {
    OutlierDetection {
        consecutive_failures: Some(failures),
        max_ejection_percent: 1.0,
        ..OutlierDetection::disabled()
    }
}

fn assert_send_sync<T: Send + Sync + 'static>() {}
fn assert_send<T: Send + 'static>() {}

#[test]
fn public_types_are_send_sync() {
    assert_send_sync::<Balance<usize, Node>>();
    assert_send_sync::<BalanceLayer>();
    assert_send::<
        ResponseFuture<
            usize,
            Node,
            seawall::core::classify::DefaultClassifier,
            u64,
            <Node as Service<u64>>::Future,
        >,
    >();
}

#[tokio::test(start_paused = true)]
async fn endpoints_whose_clone_resets_readiness() {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .seed(1)
            .picker(Picker::p2c())
            .max_wait(None)
            .outlier_detection(OutlierDetection::disabled()),
    );
    // One call at a time per endpoint.
    let behaviors = send_limited_endpoints(&tx, 2, 100);
    common::settle().await;
    let start = tokio::time::Instant::now();
    let calls: Vec<_> = (0..6u64)
        .map(|i| tokio::spawn(balance.clone().oneshot(i)))
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    // Two at a time: 3 rounds of 100 ms, none failed, none ran past its endpoint's limit.
    assert_eq!(start.elapsed(), Duration::from_millis(300));
    assert_eq!(
        behaviors[0].hits.load(Relaxed) + behaviors[1].hits.load(Relaxed),
        6
    );
}

#[tokio::test(start_paused = true)]
async fn an_unready_endpoint_does_not_hold_calls_up() {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .seed(1)
            .picker(Picker::RoundRobin)
            .max_wait(Duration::from_secs(1))
            .outlier_detection(OutlierDetection::disabled()),
    );
    let slow = Arc::new(Behavior::default());
    slow.delay_ms.store(10_000, Relaxed);
    let fast = Arc::new(Behavior::default());
    tx.send(Change::Insert(
        0usize,
        ConcurrencyLimit::new(
            Node {
                id: 0,
                behavior: slow.clone(),
            },
            1,
        ),
    ))
    .unwrap();
    tx.send(Change::Insert(
        1usize,
        ConcurrencyLimit::new(
            Node {
                id: 1,
                behavior: fast.clone(),
            },
            1,
        ),
    ))
    .unwrap();
    common::settle().await;
    // Occupy endpoint 0.
    let mut held = None;
    for _ in 0..100 {
        let call = tokio::spawn(balance.clone().oneshot(0));
        common::settle().await;
        if slow.hits.load(Relaxed) == 1 {
            held = Some(call);
            break;
        }
        call.await.unwrap().unwrap();
    }
    let held = held.expect("endpoint 0 taken within 100 calls");
    // Round robin keeps choosing endpoint 0 every other call; it is not ready, so endpoint 1
    // takes every call at once.
    let start = tokio::time::Instant::now();
    for i in 0..10 {
        assert_eq!(balance.clone().oneshot(i).await.unwrap(), 1);
    }
    assert_eq!(start.elapsed(), Duration::ZERO);
    drop(held);
}

/// Dropped calls give back their endpoints' in-flight counts and count as no failure: with one
/// failure enough to eject an endpoint, three calls dropped in flight eject none.
#[tokio::test(start_paused = true)]
async fn dropping_a_call_releases_its_in_flight_count() {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(ejecting_after(1)),
    );
    for id in 0..2usize {
        let behavior = Arc::new(Behavior::default());
        behavior.delay_ms.store(1000, Relaxed);
        tx.send(Change::Insert(id, Node { id, behavior })).unwrap();
    }
    common::settle().await;
    let mut calls = Vec::new();
    for i in 0..3 {
        let mut svc = balance.clone();
        let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(i));
        tokio_test::assert_pending!(fut.poll());
        calls.push(fut);
    }
    assert_eq!(
        balance.outstanding(&0).unwrap() + balance.outstanding(&1).unwrap(),
        3
    );
    drop(calls);
    assert_eq!(balance.outstanding(&0), Some(0));
    assert_eq!(balance.outstanding(&1), Some(0));
    assert!(balance.unhealthy().is_empty());
}

/// Three endpoints, each a connection that takes one call at a time (tower's `ConcurrencyLimit`),
/// all busy; W1 waits on the first call's endpoint, W3 on the third's. The first call finishes:
/// its endpoint's permit goes to W1's queued acquire and every waiter is woken. W3 looks first and
/// finds that endpoint taken (by W1's permit). Then W1 is cancelled while still waiting: the permit
/// goes back, and W3 must be woken to take it rather than sleep until its `max_wait`.
#[tokio::test(start_paused = true)]
async fn a_call_cancelled_while_waiting_wakes_the_other_waiters() {
    let (tx, mut balance) = balancer(round_robin().max_wait(Duration::from_secs(10)));
    let behaviors = send_limited_endpoints(&tx, 3, 100);
    common::settle().await;

    // X, Y, Z: one call in flight on each endpoint, in round robin turns from wherever the
    // balancer starts. X, on the first, takes 100 ms; the others hang.
    let mut x = spawn(balance.call(0));
    assert_pending!(x.poll());
    for behavior in &behaviors {
        behavior.delay_ms.store(1_000_000, Relaxed);
    }
    let mut y = spawn(balance.call(1));
    assert_pending!(y.poll());
    let mut z = spawn(balance.call(2));
    assert_pending!(z.poll());
    for id in 0..3 {
        assert_eq!(balance.outstanding(&id), Some(1));
    }

    // W1 waits for X's endpoint, W3 for Z's.
    let mut w1 = spawn(balance.call(10));
    assert_pending!(w1.poll());
    let mut w3 = spawn(balance.call(30));
    assert_pending!(w3.poll());

    // X finishes: its endpoint's permit is handed to W1's queued acquire; waiters are woken.
    tokio::time::advance(Duration::from_millis(100)).await;
    let first = assert_ready_ok!(x.poll());
    assert!(w3.is_woken());
    // W3 looks first: that endpoint's permit is W1's, so W3 waits on.
    assert_pending!(w3.poll());
    assert!(!w3.is_woken());

    // W1 is cancelled while still waiting: X's endpoint is free again, and W3 takes it at once.
    drop(w1);
    assert!(
        w3.is_woken(),
        "endpoint {first} is free, yet W3 was not woken"
    );
    assert_pending!(w3.poll());
    assert_eq!(
        balance.outstanding(&first),
        Some(1),
        "W3 now runs on endpoint {first}"
    );
    drop((y, z, w3));
}

#[tokio::test(start_paused = true)]
async fn balancer_is_always_ready_and_works_in_a_boxed_clone_service() {
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder().build().unwrap().layer(stream);
    tx.send(Change::Insert(0usize, Node::new(0))).unwrap();
    common::settle().await;
    let mut boxed = tower::util::BoxCloneSyncService::new(balance);
    let mut ready = tokio_test::task::spawn(std::future::poll_fn(|cx| boxed.poll_ready(cx)));
    tokio_test::assert_ready_ok!(ready.poll());
    drop(ready);
    assert_eq!(boxed.call(3).await.unwrap(), 0);
}

/// An endpoint whose readiness fails when `broken`.
#[derive(Clone)]
struct MaybeBroken {
    broken: bool,
    node: Node,
}

impl Service<u64> for MaybeBroken {
    type Response = usize;
    type Error = seawall::BoxError;
    type Future = <Node as Service<u64>>::Future;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        if self.broken {
            std::task::Poll::Ready(Err(std::io::Error::other("connection refused").into()))
        } else {
            std::task::Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, req: u64) -> Self::Future {
        self.node.call(req)
    }
}

/// Sends two endpoints answering after `delay_ms`, of which the first's readiness fails.
fn send_first_broken(tx: &common::Sender<usize, MaybeBroken>, delay_ms: u64) {
    for id in 0..2 {
        let behavior = Arc::new(Behavior::default());
        behavior.delay_ms.store(delay_ms, Relaxed);
        tx.send(Change::Insert(
            id,
            MaybeBroken {
                broken: id == 0,
                node: Node { id, behavior },
            },
        ))
        .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn an_endpoint_readiness_error_fails_that_call_and_counts_against_the_endpoint() {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(ejecting_after(2)),
    );
    send_first_broken(&tx, 0);
    common::settle().await;
    let mut errors = Vec::new();
    for i in 0..20 {
        if let Err(e) = balance.clone().oneshot(i).await {
            errors.push(e.to_string());
        }
    }
    // The inner error passes through untouched; two in a row eject the endpoint.
    assert_eq!(errors, vec!["connection refused"; 2]);
    assert_eq!(balance.unhealthy(), vec![0]);
}

/// An endpoint that is ready only once its gate opens.
#[derive(Clone)]
struct Gate {
    id: usize,
    open: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    hits: Arc<std::sync::atomic::AtomicU32>,
}

impl Gate {
    fn new(id: usize) -> Self {
        Gate {
            id,
            open: Arc::default(),
            waker: Arc::default(),
            hits: Arc::default(),
        }
    }

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

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), seawall::BoxError>> {
        if self.open.load(Relaxed) {
            return std::task::Poll::Ready(Ok(()));
        }
        *self.waker.lock().unwrap() = Some(cx.waker().clone());
        std::task::Poll::Pending
    }

    fn call(&mut self, _: u64) -> Self::Future {
        self.hits.fetch_add(1, Relaxed);
        std::future::ready(Ok(self.id))
    }
}

/// Discovery replaces endpoint 0 with endpoint 1, `new`, and the balancer applies it.
async fn replace_endpoint_0<S>(tx: &common::Sender<usize, S>, balance: &Balance<usize, S>, new: S)
where
    S: Clone + Send + Sync + 'static,
{
    tx.send(Change::Remove(0)).unwrap();
    tx.send(Change::Insert(1, new)).unwrap();
    common::settle().await;
    assert_eq!(balance.endpoints(), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_is_not_sent_to_an_endpoint_discovery_removed() {
    let (tx, balance) = balancer(round_robin().max_wait(None));
    let (gone, new) = (Gate::new(0), Gate::new(1));
    tx.send(Change::Insert(0usize, gone.clone())).unwrap();
    common::settle().await;
    // The call waits on endpoint 0, which is not ready; discovery then replaces it with endpoint
    // 1 (not ready yet either), and only after that does endpoint 0 turn ready.
    let call = tokio::spawn(balance.clone().oneshot(7));
    common::settle().await;
    replace_endpoint_0(&tx, &balance, new.clone()).await;
    gone.open();
    common::settle().await;
    assert!(!call.is_finished());
    new.open();
    assert_eq!(call.await.unwrap().unwrap(), 1);
    assert_eq!(gone.hits.load(Relaxed), 0);
}

/// A call made before discovery replaced its endpoint and first polled after (stored, joined,
/// handed back by a `Buffer`) picks from the set in force when it is polled.
#[tokio::test(start_paused = true)]
async fn a_call_first_polled_after_discovery_replaced_its_endpoint_goes_to_the_new_one() {
    let (tx, balance) = balancer(round_robin());
    let (gone, new) = (Arc::new(Behavior::default()), Arc::new(Behavior::default()));
    let node = |id, behavior: &Arc<Behavior>| Node {
        id,
        behavior: behavior.clone(),
    };
    tx.send(Change::Insert(0usize, node(0, &gone))).unwrap();
    common::settle().await;
    let mut service = balance.clone();
    let call = service.ready().await.unwrap().call(7);
    replace_endpoint_0(&tx, &balance, node(1, &new)).await;
    assert_eq!(call.await.unwrap(), 1);
    assert_eq!(gone.hits.load(Relaxed), 0);
}

/// A waiting call holding an unready endpoint that discovery then replaces, and not polled
/// until that endpoint has turned ready, lets it go and calls the new one.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_polled_after_its_endpoint_was_removed_and_turned_ready_lets_it_go() {
    let (tx, balance) = balancer(round_robin().max_wait(None));
    let (gone, new) = (Gate::new(0), Gate::new(1));
    tx.send(Change::Insert(0usize, gone.clone())).unwrap();
    common::settle().await;
    let mut call = spawn(balance.clone().oneshot(7));
    assert_pending!(call.poll());
    new.open();
    replace_endpoint_0(&tx, &balance, new.clone()).await;
    gone.open();
    assert_eq!(assert_ready_ok!(call.poll()), 1);
    assert_eq!(gone.hits.load(Relaxed), 0);
    assert_eq!(new.hits.load(Relaxed), 1);
}

/// A readiness error is a failure like any other: PeakEWMA must count it as slow, or an endpoint
/// that refuses every connection at once keeps the cost of one never measured (nothing) and wins
/// every pick that draws it.
async fn a_readiness_error_counts_as_slow(picker: Picker) {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .seed(3)
            .picker(picker)
            .outlier_detection(OutlierDetection::disabled()),
    );
    send_first_broken(&tx, 1);
    common::settle().await;
    let mut failed = 0;
    for i in 0..100 {
        if balance.clone().oneshot(i).await.is_err() {
            failed += 1;
        }
    }
    // 100 calls of 1 ms: well within one decay period, so one trial call finds endpoint 0 out.
    assert_eq!(
        failed, 1,
        "{failed} of 100 calls went to the broken endpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_peak_ewma_counts_a_readiness_error_as_slow() {
    a_readiness_error_counts_as_slow(Picker::p2c_peak_ewma()).await;
}

#[tokio::test(start_paused = true)]
async fn least_peak_ewma_counts_a_readiness_error_as_slow() {
    a_readiness_error_counts_as_slow(Picker::least_peak_ewma()).await;
}

/// A key whose owner on the ring is busy (its connection takes one call at a time) goes where it
/// would go were the owner out: on along the ring, not to the owner's neighbour in the set.
#[tokio::test(start_paused = true)]
async fn a_consistent_hash_key_whose_owner_is_not_ready_walks_on_along_the_ring() {
    use std::sync::atomic::AtomicUsize;

    let (tx, stream) = channel();
    let blocked = Arc::new(AtomicUsize::new(usize::MAX));
    let refused = blocked.clone();
    let balance = BalanceLayer::builder()
        .seed(1)
        .picker(Picker::consistent_hash())
        .hash_key(common::key_of)
        .outlier_detection(OutlierDetection::disabled())
        .filter(move |key: &usize, _: &ConcurrencyLimit<Node>| *key != refused.load(Relaxed))
        .build()
        .unwrap()
        .layer(stream);
    let behaviors = send_limited_endpoints(&tx, 10, 0);
    common::settle().await;

    let mut not_the_neighbour = 0;
    for key in 0..20u64 {
        let owner = balance.clone().oneshot(key).await.unwrap();
        // Where the key goes with its owner out of the pick.
        blocked.store(owner, Relaxed);
        let successor = balance.clone().oneshot(key).await.unwrap();
        blocked.store(usize::MAX, Relaxed);
        assert_ne!(successor, owner);

        // The owner busy with a call that hangs: the key goes to the same successor.
        behaviors[owner].delay_ms.store(1_000_000, Relaxed);
        let mut hanging = spawn(balance.clone().oneshot(key));
        assert_pending!(hanging.poll());
        behaviors[owner].delay_ms.store(0, Relaxed);
        assert_eq!(
            balance.clone().oneshot(key).await.unwrap(),
            successor,
            "key {key}: owner {owner} busy"
        );
        if successor != (owner + 1) % 10 {
            not_the_neighbour += 1;
        }
        drop(hanging);
    }
    // The test tells the ring from the set's order.
    assert!(not_the_neighbour > 10, "{not_the_neighbour}");
}

/// Sends a gate for each of `keys`, endpoint `i` the `i`th; all but the first `busy` are open.
fn send_gates(
    tx: &common::Sender<Tagged<usize>, Gate>,
    keys: impl IntoIterator<Item = Tagged<usize>>,
    busy: usize,
) -> Vec<Gate> {
    keys.into_iter()
        .enumerate()
        .map(|(id, key)| {
            let gate = Gate::new(id);
            if id >= busy {
                gate.open();
            }
            tx.send(Change::Insert(key, gate.clone())).unwrap();
            gate
        })
        .collect()
}

/// Endpoint `i` in `zones[i]`.
fn in_zones<'a>(zones: &'a [&str]) -> impl Iterator<Item = Tagged<usize>> + 'a {
    zones
        .iter()
        .enumerate()
        .map(|(id, &zone)| Tagged::new(id).with_zone(zone))
}

/// How many calls each gate took.
fn hits(gates: &[Gate]) -> Vec<u32> {
    gates.iter().map(|g| g.hits.load(Relaxed)).collect()
}

/// `picker` over endpoints of `weights`, the first of which is never ready; returns how many of
/// `calls` sequential calls each endpoint took.
async fn hits_with_the_first_endpoint_busy(
    picker: Picker,
    weights: &[u32],
    calls: u64,
) -> Vec<u32> {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .seed(5)
            .picker(picker)
            .outlier_detection(OutlierDetection::disabled()),
    );
    let keys = weights.iter().enumerate();
    let gates = send_gates(&tx, keys.map(|(id, &w)| Tagged::new(id).with_weight(w)), 1);
    common::settle().await;
    for i in 0..calls {
        balance.clone().oneshot(i).await.unwrap();
    }
    hits(&gates)
}

/// A busy endpoint's turns pass on through the turns that follow, so the other endpoints stay
/// even rather than its neighbour in the set taking them all.
#[tokio::test(start_paused = true)]
async fn round_robin_passes_a_busy_endpoints_turns_on_evenly() {
    let hits = hits_with_the_first_endpoint_busy(Picker::RoundRobin, &[1, 1, 1], 60).await;
    assert_eq!(hits, [0, 30, 30]);
}

/// Weights 4, 1 and 1 with the heavy endpoint busy: the two light ones share its calls evenly,
/// in proportion to their weights.
#[tokio::test(start_paused = true)]
async fn weighted_round_robin_passes_a_busy_endpoints_turns_on_in_proportion() {
    let hits = hits_with_the_first_endpoint_busy(Picker::WeightedRoundRobin, &[4, 1, 1], 60).await;
    assert_eq!(hits[0], 0, "{hits:?}");
    assert!(hits[1].abs_diff(hits[2]) <= 1, "{hits:?}");
    let hits = hits_with_the_first_endpoint_busy(Picker::WeightedRoundRobin, &[4, 2, 1], 70).await;
    assert_eq!(hits[0], 0, "{hits:?}");
    assert!(hits[1].abs_diff(2 * hits[2]) <= 2, "{hits:?}");
}

/// One of three local endpoints busy: the local zone is still healthy (busy is not out), so the
/// busy endpoint's calls go to the other local endpoints, none to another zone.
#[tokio::test(start_paused = true)]
async fn a_busy_local_endpoint_does_not_send_calls_to_another_zone() {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .seed(9)
            .picker(Picker::zone_aware("local"))
            .outlier_detection(OutlierDetection::disabled()),
    );
    // Endpoint 0 (local) is never ready.
    let zones = ["local", "local", "local", "remote", "remote", "remote"];
    let gates = send_gates(&tx, in_zones(&zones), 1);
    common::settle().await;
    for i in 0..300 {
        balance.clone().oneshot(i).await.unwrap();
    }
    let hits = hits(&gates);
    assert_eq!(hits[1] + hits[2], 300, "{hits:?}");
}

/// `local` local endpoints, all busy, followed in the set by 5 endpoints in each of two other
/// zones, all ready; returns how many of 1000 sequential calls each endpoint took.
async fn hits_with_the_local_zone_busy(local: usize) -> Vec<u32> {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .seed(9)
            .picker(Picker::zone_aware("local"))
            .outlier_detection(OutlierDetection::disabled()),
    );
    let zones: Vec<&str> = [("local", local), ("east", 5), ("west", 5)]
        .into_iter()
        .flat_map(|(zone, n)| std::iter::repeat_n(zone, n))
        .collect();
    let gates = send_gates(&tx, in_zones(&zones), local);
    common::settle().await;
    for i in 0..1000 {
        balance.clone().oneshot(i).await.unwrap();
    }
    hits(&gates)
}

/// Every local endpoint busy: the local zone is still healthy (busy is not out), and the calls
/// it cannot take spread over the other zones' endpoints by power of two choices, not onto the
/// endpoint that follows the local ones in the set; however many local endpoints a call has to
/// try first.
#[tokio::test(start_paused = true)]
async fn calls_the_busy_local_zone_cannot_take_spread_over_the_other_zones() {
    for local in [3, 6, 12] {
        let hits = hits_with_the_local_zone_busy(local).await;
        assert!(hits[..local].iter().all(|&h| h == 0), "{hits:?}");
        // A fair share is 100 calls each.
        assert!(
            hits[local..].iter().all(|&h| (50..=200).contains(&h)),
            "{local} local: {hits:?}"
        );
    }
}

/// An endpoint that is ready, never ready or fails its readiness, as its `mode` says.
#[derive(Clone)]
struct Switch {
    id: usize,
    mode: Arc<std::sync::atomic::AtomicU8>,
}

impl Switch {
    const READY: u8 = 0;
    const PENDING: u8 = 1;
    const BROKEN: u8 = 2;
}

impl Service<u64> for Switch {
    type Response = usize;
    type Error = seawall::BoxError;
    type Future = std::future::Ready<Result<usize, seawall::BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), seawall::BoxError>> {
        match self.mode.load(Relaxed) {
            Switch::READY => std::task::Poll::Ready(Ok(())),
            Switch::PENDING => std::task::Poll::Pending,
            _ => std::task::Poll::Ready(Err(std::io::Error::other("connection refused").into())),
        }
    }

    fn call(&mut self, _: u64) -> Self::Future {
        std::future::ready(Ok(self.id))
    }
}

/// Sends `n` switches, all ready.
/// A round-robin balancer over `n` switches, answering, with `outlier` detection and `max_wait`,
/// and endpoint 0's turn next. Seeded, so the turns after that are the same in every run.
async fn switches_at_turn_zero(
    n: usize,
    outlier: OutlierDetection,
    max_wait: Option<Duration>,
) -> (
    common::Sender<usize, Switch>,
    Balance<usize, Switch>,
    Vec<Switch>,
) {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .picker(Picker::RoundRobin)
            .seed(2)
            .max_wait(max_wait)
            .outlier_detection(outlier),
    );
    let switches = send_switches(&tx, n);
    common::settle().await;
    // Turns go 0, 1, …: once the last endpoint has answered, endpoint 0's turn is next.
    while balance.clone().oneshot(0).await.unwrap() != n - 1 {}
    (tx, balance, switches)
}

fn send_switches(tx: &common::Sender<usize, Switch>, n: usize) -> Vec<Switch> {
    (0..n)
        .map(|id| {
            let switch = Switch {
                id,
                mode: Arc::default(),
            };
            tx.send(Change::Insert(id, switch.clone())).unwrap();
            switch
        })
        .collect()
}

/// The picked endpoint is not ready and the next one tried fails its readiness: the call goes on
/// to a ready endpoint, and the readiness error counts against the endpoint that failed it.
#[tokio::test(start_paused = true)]
async fn a_readiness_error_after_a_re_pick_counts_against_that_endpoint() {
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .picker(Picker::RoundRobin)
            .outlier_detection(ejecting_after(1)),
    );
    let switches = send_switches(&tx, 3);
    common::settle().await;
    // Turns go 0, 1, 2: once endpoint 2 has answered, endpoint 0's turn is next.
    while balance.clone().oneshot(0).await.unwrap() != 2 {}
    switches[0].mode.store(Switch::PENDING, Relaxed);
    switches[1].mode.store(Switch::BROKEN, Relaxed);
    assert_eq!(balance.clone().oneshot(1).await.unwrap(), 2);
    assert_eq!(balance.unhealthy(), vec![1]);
}

/// An endpoint that takes one call at a time and answers after 10 ms, and one whose readiness
/// always fails, under many waiting calls: each call counts the broken endpoint's readiness
/// error at most once, however often it polls it while it waits, so the endpoint's failures are
/// no more than the calls.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_counts_a_readiness_error_once() {
    use tower::util::Either;

    const CALLS: u32 = 100;
    let (tx, balance) = balancer(
        BalanceLayer::builder()
            .seed(3)
            .picker(Picker::RoundRobin)
            .max_wait(None)
            // More failures in a row than calls made eject the endpoint.
            .outlier_detection(ejecting_after(CALLS + 1)),
    );
    let busy = Arc::new(Behavior::default());
    busy.delay_ms.store(10, Relaxed);
    let node = Node {
        id: 0,
        behavior: busy.clone(),
    };
    tx.send(Change::Insert(
        0usize,
        Either::Left(ConcurrencyLimit::new(node, 1)),
    ))
    .unwrap();
    let broken = Switch {
        id: 1,
        mode: Arc::new(Switch::BROKEN.into()),
    };
    tx.send(Change::Insert(1usize, Either::Right(broken)))
        .unwrap();
    common::settle().await;
    let calls: Vec<_> = (0..CALLS)
        .map(|i| tokio::spawn(balance.clone().oneshot(u64::from(i))))
        .collect();
    let mut answered = 0;
    for call in calls {
        if call.await.unwrap().is_ok() {
            answered += 1;
        }
    }
    assert!(answered > 0);
    assert_eq!(busy.hits.load(Relaxed), answered);
    assert!(balance.unhealthy().is_empty(), "{:?}", balance.unhealthy());
}

/// A waiting call that passed over an endpoint whose readiness failed, and later picks it first,
/// passes over it again rather than failing with its error, and counts the error once.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_passes_over_an_endpoint_it_found_broken_again() {
    let (_tx, balance, switches) = switches_at_turn_zero(2, ejecting_after(2), None).await;
    switches[0].mode.store(Switch::PENDING, Relaxed);
    switches[1].mode.store(Switch::BROKEN, Relaxed);
    let mut call = spawn(balance.clone().oneshot(1));
    for _ in 0..4 {
        assert_pending!(call.poll());
    }
    switches[0].mode.store(Switch::READY, Relaxed);
    assert_eq!(assert_ready_ok!(call.poll()), 0);
    assert!(balance.unhealthy().is_empty(), "{:?}", balance.unhealthy());
}

/// An endpoint that is never ready and counts the clones made of its service.
struct Counted {
    clones: Arc<std::sync::atomic::AtomicU32>,
}

impl Clone for Counted {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Relaxed);
        Counted {
            clones: self.clones.clone(),
        }
    }
}

impl Service<u64> for Counted {
    type Response = usize;
    type Error = seawall::BoxError;
    type Future = std::future::Ready<Result<usize, seawall::BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), seawall::BoxError>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: u64) -> Self::Future {
        unreachable!("never ready")
    }
}

/// A waiting call holds the service of the endpoint it picked first, polling it ready; it does
/// not take a second one of the same endpoint while it does (a concurrency limit would then
/// hand the call two permits, or queue it twice).
#[tokio::test(start_paused = true)]
async fn a_waiting_call_does_not_poll_a_second_service_of_the_endpoint_it_holds() {
    for picker in [
        Picker::RoundRobin,
        Picker::WeightedRoundRobin,
        Picker::Random,
        Picker::p2c(),
    ] {
        let (tx, stream) = channel();
        let balance = BalanceLayer::builder()
            .seed(1)
            .picker(picker.clone())
            .max_wait(None)
            .outlier_detection(OutlierDetection::disabled())
            .build()
            .unwrap()
            .layer(stream);
        let clones: Vec<Arc<std::sync::atomic::AtomicU32>> =
            (0..2).map(|_| Arc::default()).collect();
        for (id, clones) in clones.iter().enumerate() {
            tx.send(Change::Insert(
                id,
                Counted {
                    clones: clones.clone(),
                },
            ))
            .unwrap();
        }
        common::settle().await;
        let counts = || clones.iter().map(|c| c.load(Relaxed)).collect::<Vec<_>>();
        let mut call = spawn(balance.clone().oneshot(0));
        assert_pending!(call.poll());
        let before = counts();
        for _ in 0..8 {
            assert_pending!(call.poll());
        }
        let after = counts();
        // One endpoint's service is held, and only the other is cloned again.
        let grew = (0..2).filter(|&i| after[i] > before[i]).count();
        assert_eq!(grew, 1, "{picker:?}: {before:?} -> {after:?}");
    }
}

/// A waiting call holds a busy endpoint and has passed over one whose readiness failed; that
/// endpoint recovers while the busy one stays busy: the call's next wake-up finds it and calls
/// it, rather than wait on the busy endpoint until `max_wait`.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_takes_an_endpoint_it_found_broken_once_it_recovers() {
    let (tx, balance) = balancer(round_robin().max_wait(None));
    let switches = send_switches(&tx, 2);
    common::settle().await;
    // Turns go 0, 1: once endpoint 1 has answered, endpoint 0's turn is next.
    while balance.clone().oneshot(0).await.unwrap() != 1 {}
    switches[0].mode.store(Switch::PENDING, Relaxed);
    switches[1].mode.store(Switch::BROKEN, Relaxed);
    let mut call = spawn(balance.clone().oneshot(1));
    assert_pending!(call.poll());
    assert_pending!(call.poll());
    switches[1].mode.store(Switch::READY, Relaxed);
    assert_eq!(assert_ready_ok!(call.poll()), 1);
}

/// A waiting call holds a busy endpoint; another endpoint it found busy too then fails its
/// readiness. The call's next pick is that endpoint: its error counts against the endpoint, once,
/// but does not fail the call, which waits on and calls the endpoint it holds once it is ready.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_passes_over_an_endpoint_that_broke_while_it_waited() {
    let (_tx, balance, switches) = switches_at_turn_zero(2, ejecting_after(2), None).await;
    switches[0].mode.store(Switch::PENDING, Relaxed);
    switches[1].mode.store(Switch::PENDING, Relaxed);
    let mut call = spawn(balance.clone().oneshot(1));
    assert_pending!(call.poll());
    switches[1].mode.store(Switch::BROKEN, Relaxed);
    for _ in 0..4 {
        assert_pending!(call.poll());
    }
    switches[0].mode.store(Switch::READY, Relaxed);
    assert_eq!(assert_ready_ok!(call.poll()), 0);
    assert!(balance.unhealthy().is_empty(), "{:?}", balance.unhealthy());
}

/// A waiting call holds a busy endpoint, which then fails its readiness while another endpoint
/// the call found busy becomes ready: the error counts against the held endpoint, once, and the
/// call goes on to the ready one rather than failing.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_passes_over_the_endpoint_it_held_when_that_breaks() {
    let (_tx, balance, switches) = switches_at_turn_zero(2, ejecting_after(2), None).await;
    switches[0].mode.store(Switch::PENDING, Relaxed);
    switches[1].mode.store(Switch::PENDING, Relaxed);
    let mut call = spawn(balance.clone().oneshot(1));
    assert_pending!(call.poll());
    switches[0].mode.store(Switch::BROKEN, Relaxed);
    switches[1].mode.store(Switch::READY, Relaxed);
    assert_eq!(assert_ready_ok!(call.poll()), 1);
    assert!(balance.unhealthy().is_empty(), "{:?}", balance.unhealthy());
}

/// A waiting call holds an endpoint that stays busy; another it found broken recovers, which
/// wakes nobody: the call looks again on its own and takes it.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_finds_an_endpoint_it_found_broken_recovered_without_a_wake_up() {
    let (_tx, balance, switches) = switches_at_turn_zero(2, ejecting_after(2), None).await;
    switches[0].mode.store(Switch::PENDING, Relaxed);
    switches[1].mode.store(Switch::BROKEN, Relaxed);
    let call = tokio::spawn(balance.clone().oneshot(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished());
    switches[1].mode.store(Switch::READY, Relaxed);
    let answer = tokio::time::timeout(Duration::from_secs(5), call).await;
    assert_eq!(
        answer.expect("the call was never woken").unwrap().unwrap(),
        1
    );
}

/// A waiting call's held endpoint leaves the set, and its next pick (with the helper's seed, the
/// broken endpoint) then fails its readiness: the call has waited, so it passes over the error,
/// waits on the endpoint still busy, and takes the broken one once it recovers.
#[tokio::test(start_paused = true)]
async fn a_call_that_waited_passes_over_an_error_after_its_endpoint_left() {
    let (tx, balance, switches) = switches_at_turn_zero(3, ejecting_after(2), None).await;
    for switch in &switches {
        switch.mode.store(Switch::PENDING, Relaxed);
    }
    let mut call = spawn(balance.clone().oneshot(1));
    assert_pending!(call.poll());
    tx.send(Change::Remove(0)).unwrap();
    common::settle().await;
    switches[1].mode.store(Switch::BROKEN, Relaxed);
    assert_pending!(call.poll());
    switches[1].mode.store(Switch::READY, Relaxed);
    assert_eq!(assert_ready_ok!(call.poll()), 1);
}

/// Refuses endpoint 2 while `on`, saying it returns in 30 s (as an open breaker would).
struct RefuseTwo(Arc<std::sync::atomic::AtomicBool>);

impl seawall::balance::Filter<usize, Switch> for RefuseTwo {
    fn available(&self, key: &usize, _: &Switch) -> bool {
        *key != 2 || !self.0.load(Relaxed)
    }

    fn available_in(&self, key: &usize, service: &Switch) -> Option<Duration> {
        (!self.available(key, service)).then_some(Duration::from_secs(30))
    }
}

/// A filter says a refused endpoint returns in 30 s; an endpoint the call found broken recovers
/// sooner, and the call looks again for it as often as it would without the filter.
#[tokio::test(start_paused = true)]
async fn a_filters_long_wait_does_not_delay_finding_a_broken_endpoint_recovered() {
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .max_wait(None)
        .outlier_detection(ejecting_after(2))
        .filter(RefuseTwo(refuse.clone()))
        .build()
        .unwrap()
        .layer(stream);
    let switches = send_switches(&tx, 3);
    common::settle().await;
    // Turns go 0, 1, 2: once endpoint 2 has answered, endpoint 0's turn is next.
    while balance.clone().oneshot(0).await.unwrap() != 2 {}
    refuse.store(true, Relaxed);
    switches[0].mode.store(Switch::PENDING, Relaxed);
    switches[1].mode.store(Switch::BROKEN, Relaxed);
    let call = tokio::spawn(balance.clone().oneshot(1));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!call.is_finished());
    switches[1].mode.store(Switch::READY, Relaxed);
    let answer = tokio::time::timeout(Duration::from_secs(2), call).await;
    assert_eq!(
        answer
            .expect("looked again only at the filter's time")
            .unwrap()
            .unwrap(),
        1
    );
}

/// Refuses endpoint `i` until `until[i]`, saying how long it has left (as an open breaker
/// would).
struct RefusedUntil(Arc<std::sync::Mutex<[Option<tokio::time::Instant>; 2]>>);

impl seawall::balance::Filter<usize, Switch> for RefusedUntil {
    fn available(&self, key: &usize, service: &Switch) -> bool {
        self.available_in(key, service).is_none()
    }

    fn available_in(&self, key: &usize, _: &Switch) -> Option<Duration> {
        let until = self.0.lock().unwrap()[*key]?;
        let now = tokio::time::Instant::now();
        (now < until).then(|| until - now)
    }
}

/// A call waits on busy endpoint 1, endpoint 0 refused for 30 s (the filter's time to look
/// again). Endpoint 1 is then refused for 1 s (its breaker opens): the call looks again when
/// endpoint 1 returns, not at endpoint 0's time, long after its `max_wait`.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_looks_again_at_a_sooner_time_the_filter_gives_later() {
    let start = tokio::time::Instant::now();
    let until = Arc::new(std::sync::Mutex::new([
        Some(start + Duration::from_secs(30)),
        None,
    ]));
    let (tx, stream) = channel();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .max_wait(Duration::from_secs(5))
        .outlier_detection(OutlierDetection::disabled())
        .filter(RefusedUntil(until.clone()))
        .build()
        .unwrap()
        .layer(stream);
    let switches = send_switches(&tx, 2);
    common::settle().await;
    switches[1].mode.store(Switch::PENDING, Relaxed);
    let mut call = spawn(balance.clone().oneshot(1));
    assert_pending!(call.poll());
    // Endpoint 1 is ready, but refused for 1 s; the call sees it at its next poll.
    switches[1].mode.store(Switch::READY, Relaxed);
    until.lock().unwrap()[1] = Some(start + Duration::from_secs(1));
    assert_pending!(call.poll());
    let answer = call.await;
    let waited = start.elapsed();
    assert_eq!(answer.expect("no endpoint within max_wait"), 1);
    assert!(
        waited <= Duration::from_millis(1010),
        "served after {waited:?}"
    );
}

/// Three hundred endpoints, every one busy: one poll of a waiting call looks at each endpoint a
/// bounded number of times (counted by the filter), not about once per endpoint it tried,
/// whichever picker it asks.
#[tokio::test(start_paused = true)]
async fn a_waiting_call_over_many_busy_endpoints_looks_at_each_a_few_times() {
    const N: usize = 300;
    // A picker that draws looks at a few endpoints per pick; one that weighs them all (least
    // outstanding, a zone-aware pick judging each zone's health) at every one: a pass that asks
    // it again for each endpoint tried looks at each endpoint hundreds of times.
    for (picker, bound) in [
        (Picker::Random, 4 * N),
        (Picker::p2c(), 4 * N),
        (Picker::consistent_hash(), 4 * N),
        (Picker::LeastOutstanding, 48 * N),
        (Picker::zone_aware("z0"), 48 * N),
    ] {
        let looks = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = looks.clone();
        let (tx, stream) = channel();
        let balance = BalanceLayer::builder()
            .seed(5)
            .picker(picker.clone())
            .max_wait(None)
            .outlier_detection(OutlierDetection::disabled())
            .filter(move |_: &Tagged<usize>, _: &Switch| {
                counted.fetch_add(1, Relaxed);
                true
            })
            .build()
            .unwrap()
            .layer(stream);
        for id in 0..N {
            let switch = Switch {
                id,
                mode: Arc::new(Switch::PENDING.into()),
            };
            let key = Tagged::new(id).with_zone(format!("z{}", id % 3));
            tx.send(Change::Insert(key, switch)).unwrap();
        }
        common::settle().await;
        let mut call = spawn(balance.clone().oneshot(0));
        assert_pending!(call.poll());
        for _ in 0..3 {
            let before = looks.load(Relaxed);
            assert_pending!(call.poll());
            let per_poll = looks.load(Relaxed) - before;
            assert!(
                per_poll <= bound,
                "{picker:?}: {per_poll} looks in one poll"
            );
        }
    }
}

/// A waiting call X holds endpoint A, whose service holds the one permit A and B share; call Y
/// waits on a third endpoint, C, with that permit taken. A then fails its readiness: X passes
/// over it, giving the permit back, and goes on to wait on C. Y must be woken to take the permit
/// on B rather than sleep on.
#[tokio::test(start_paused = true)]
async fn a_call_passing_over_the_endpoint_it_held_wakes_the_other_waiters() {
    use std::sync::atomic::AtomicUsize;
    use tokio::sync::Semaphore;

    let (tx, stream) = channel();
    // Endpoint `i` is refused while bit `i` is set.
    let blocked = Arc::new(AtomicUsize::new(0));
    let refused = blocked.clone();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .max_wait(None)
        .outlier_detection(OutlierDetection::disabled())
        .filter(move |key: &usize, _: &ConcurrencyLimit<Switch>| {
            refused.load(Relaxed) & (1 << key) == 0
        })
        .build()
        .unwrap()
        .layer(stream);
    let shared = Arc::new(Semaphore::new(1));
    let modes = [Switch::PENDING, Switch::READY, Switch::PENDING];
    let switches: Vec<Switch> = modes
        .into_iter()
        .enumerate()
        .map(|(id, mode)| Switch {
            id,
            mode: Arc::new(mode.into()),
        })
        .collect();
    for (id, switch) in switches.iter().enumerate() {
        let semaphore = match id {
            2 => Arc::new(Semaphore::new(100)),
            _ => shared.clone(),
        };
        let limited = ConcurrencyLimit::with_semaphore(switch.clone(), semaphore);
        tx.send(Change::Insert(id, limited)).unwrap();
    }
    common::settle().await;
    let (a, b, c) = (1 << 0, 1 << 1, 1 << 2);

    // X holds A, and with it the shared permit.
    blocked.store(b | c, Relaxed);
    let mut x = spawn(balance.clone().oneshot(0));
    assert_pending!(x.poll());
    assert_eq!(shared.available_permits(), 0);

    // Y waits on C, the permit taken.
    blocked.store(a | b, Relaxed);
    let y = tokio::spawn(balance.clone().oneshot(1));
    common::settle().await;
    assert!(!y.is_finished());
    blocked.store(0, Relaxed);

    // A breaks: X passes over it and, B refused to it, waits on C.
    switches[0].mode.store(Switch::BROKEN, Relaxed);
    blocked.store(b, Relaxed);
    assert_pending!(x.poll());
    blocked.store(0, Relaxed);
    assert_eq!(shared.available_permits(), 1);

    let answer = tokio::time::timeout(Duration::from_secs(5), y).await;
    assert_eq!(answer.expect("Y was never woken").unwrap().unwrap(), 1);
    drop(x);
}

/// A connection to an address nobody answers on: each clone dials afresh, and its readiness
/// fails `DIAL_MS` after it is first polled.
struct Unreachable {
    dial: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

const DIAL_MS: u64 = 100;

impl Clone for Unreachable {
    fn clone(&self) -> Self {
        Unreachable { dial: None }
    }
}

impl Service<u64> for Unreachable {
    type Response = usize;
    type Error = seawall::BoxError;
    type Future = std::future::Ready<Result<usize, seawall::BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), seawall::BoxError>> {
        let dial = self
            .dial
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(DIAL_MS))));
        std::task::ready!(std::future::Future::poll(dial.as_mut(), cx));
        self.dial = None;
        std::task::Poll::Ready(Err(std::io::Error::other("connection timed out").into()))
    }

    fn call(&mut self, _: u64) -> Self::Future {
        unreachable!("never ready")
    }
}

/// Every endpoint is unreachable: each dial is pending a while, then fails. With no `max_wait`, a
/// call over one such endpoint or several fails with the error once each has failed it and a
/// broken one it held fails again, rather than holding one broken endpoint after another for ever.
#[tokio::test(start_paused = true)]
async fn a_call_over_unreachable_endpoints_fails_without_max_wait() {
    for n in 1..=4 {
        let (tx, balance) = balancer(round_robin().max_wait(None));
        for id in 0..n {
            tx.send(Change::Insert(id, Unreachable { dial: None }))
                .unwrap();
        }
        common::settle().await;
        let start = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(60), balance.oneshot(0))
            .await
            .unwrap_or_else(|_| panic!("{n} endpoints: the call still waits after 60 s"));
        let error = answer.expect_err("no endpoint answers");
        assert_eq!(error.to_string(), "connection timed out", "{n} endpoints");
        // Each endpoint fails the call once, and one of them once more.
        let waited = start.elapsed();
        assert!(
            waited <= Duration::from_millis(DIAL_MS * (n as u64 + 1)),
            "{n} endpoints: {waited:?}"
        );
    }
}
