#![allow(dead_code, unreachable_pub)]

use seawall::balance::{Balance, BalanceConfigBuilder, Change, Filter, HashKey, Probe};
use seawall::BoxError;
use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::sync::mpsc;
use tower::{Layer, Service, ServiceExt};

/// How one test endpoint behaves; changeable mid-test.
#[derive(Debug, Default)]
pub struct Behavior {
    pub delay_ms: AtomicU64,
    pub fail: AtomicBool,
    /// When non-zero, every `fail_every`-th call fails.
    pub fail_every: AtomicU32,
    pub hits: AtomicU32,
}

/// A test endpoint: counts its calls, sleeps `delay_ms` (in tokio time), fails when told to.
#[derive(Debug, Clone)]
pub struct Node {
    pub id: usize,
    pub behavior: Arc<Behavior>,
}

impl Node {
    /// Node `id`, answering at once.
    pub fn new(id: usize) -> Self {
        Node {
            id,
            behavior: Arc::new(Behavior::default()),
        }
    }
}

impl Service<u64> for Node {
    type Response = usize;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<usize, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: u64) -> Self::Future {
        let b = self.behavior.clone();
        let id = self.id;
        let n = b.hits.fetch_add(1, Relaxed) + 1;
        let every = b.fail_every.load(Relaxed);
        let fail_this = every != 0 && n.is_multiple_of(every);
        Box::pin(async move {
            let delay = b.delay_ms.load(Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if fail_this || b.fail.load(Relaxed) {
                Err(format!("node {id} failed").into())
            } else {
                Ok(id)
            }
        })
    }
}

pub type Sender<K, S> = mpsc::UnboundedSender<Change<K, S>>;

/// A discovery stream fed by a channel.
pub fn channel<K, S>() -> (
    Sender<K, S>,
    impl futures_util::Stream<Item = Result<Change<K, S>, Infallible>> + Send + 'static,
)
where
    K: Send + 'static,
    S: Send + 'static,
{
    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx).map(|c| c.map(Ok)));
    (tx, stream)
}

pub struct Cluster {
    pub behaviors: Vec<Arc<Behavior>>,
    pub tx: Sender<usize, Node>,
}

impl Cluster {
    pub fn hits(&self) -> Vec<u32> {
        self.behaviors
            .iter()
            .map(|b| b.hits.load(Relaxed))
            .collect()
    }

    pub fn reset(&self) {
        for b in &self.behaviors {
            b.hits.store(0, Relaxed);
        }
    }

    pub fn node(&self, id: usize) -> &Behavior {
        &self.behaviors[id]
    }
}

/// `n` nodes behind a balancer built from `builder`; the set is applied before returning.
pub async fn cluster<C, H, P, F>(
    n: usize,
    builder: BalanceConfigBuilder<C, H, P, F>,
) -> (Balance<usize, Node, C, H>, Cluster)
where
    C: Clone + Send + Sync + 'static,
    H: Clone,
    P: Probe<usize, Node>,
    F: Filter<usize, Node>,
{
    let (tx, stream) = channel();
    let balance = builder.build().expect("valid config").layer(stream);
    let mut behaviors = Vec::new();
    for id in 0..n {
        let behavior = Arc::new(Behavior::default());
        behaviors.push(behavior.clone());
        tx.send(Change::Insert(id, Node { id, behavior })).unwrap();
    }
    settle().await;
    assert_eq!(balance.endpoints().len(), n);
    (balance, Cluster { behaviors, tx })
}

/// Lets the background task run.
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Makes `calls` sequential calls and returns how many failed.
pub async fn drive<C, H>(balance: &Balance<usize, Node, C, H>, calls: usize) -> usize
where
    Balance<usize, Node, C, H>: Service<u64, Response = usize, Error = BoxError> + Clone,
{
    let mut failed = 0;
    for i in 0..calls {
        if balance.clone().oneshot(i as u64).await.is_err() {
            failed += 1;
        }
    }
    failed
}

/// Calls `balance` one call at a time until it holds `n` unhealthy endpoints (at most 20 calls).
pub async fn drive_until_unhealthy<C, H>(balance: &Balance<usize, Node, C, H>, n: usize)
where
    Balance<usize, Node, C, H>: Service<u64, Response = usize, Error = BoxError> + Clone,
{
    for _ in 0..20 {
        if balance.unhealthy().len() == n {
            return;
        }
        drive(balance, 1).await;
    }
    assert_eq!(balance.unhealthy().len(), n);
}

/// Makes `calls` calls `concurrency` at a time.
pub async fn drive_concurrent<C, H>(
    balance: &Balance<usize, Node, C, H>,
    calls: usize,
    concurrency: usize,
) -> usize
where
    Balance<usize, Node, C, H>: Service<u64, Response = usize, Error = BoxError> + Clone,
{
    use futures_util::StreamExt;
    let failed = Arc::new(AtomicU32::new(0));
    futures_util::stream::iter(0..calls)
        .for_each_concurrent(concurrency, |i| {
            let b = balance.clone();
            let failed = failed.clone();
            async move {
                if b.oneshot(i as u64).await.is_err() {
                    failed.fetch_add(1, Relaxed);
                }
            }
        })
        .await;
    failed.load(Relaxed) as usize
}

pub fn key_of(req: &u64) -> u64 {
    *req
}

pub fn _assert_hash_key() -> impl HashKey<u64> + Clone {
    key_of
}

/// Records a balancer's events with the (paused) time they happened at.
#[derive(Clone, Default)]
pub struct Recorder {
    pub events: Arc<std::sync::Mutex<Vec<(Duration, seawall::balance::BalanceEvent)>>>,
}

impl Recorder {
    pub fn listener(
        &self,
        start: tokio::time::Instant,
    ) -> impl Fn(&seawall::core::Name, &seawall::balance::BalanceEvent) + Send + Sync + 'static
    {
        let events = self.events.clone();
        move |_, e| events.lock().unwrap().push((start.elapsed(), e.clone()))
    }

    pub fn take(&self) -> Vec<(Duration, seawall::balance::BalanceEvent)> {
        std::mem::take(&mut *self.events.lock().unwrap())
    }
}

/// Makes `calls` sequential calls through any balancer over `usize` keys; returns (ok, failed).
pub async fn drive_keys<S, C, H>(balance: &Balance<usize, S, C, H>, calls: usize) -> (usize, usize)
where
    Balance<usize, S, C, H>: Service<u64, Error = BoxError> + Clone,
{
    let mut failed = 0;
    for i in 0..calls {
        if balance.clone().oneshot(i as u64).await.is_err() {
            failed += 1;
        }
    }
    (calls - failed, failed)
}

/// Ejected at the first failure, for 10 s (then 20 s, up to 30 s), with no limit on the share
/// ejected; passes every 1 s.
pub fn eject_at_once() -> seawall::balance::OutlierDetection {
    seawall::balance::OutlierDetection {
        interval: std::time::Duration::from_secs(1),
        base_ejection_time: std::time::Duration::from_secs(10),
        max_ejection_time: std::time::Duration::from_secs(30),
        max_ejection_percent: 1.0,
        consecutive_failures: Some(1),
        success_rate: None,
        failure_percentage: None,
        latency: None,
    }
}
