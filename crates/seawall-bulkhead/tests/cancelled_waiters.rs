//! A dropped waiter's slot is not lost: the next caller that would otherwise wait longer takes it,
//! whichever waiter was dropped (the oldest, as a timeout above the limiter drops them, or the
//! newest). Plain and keyed limiters alike; under random calls, cancellations and time, no window
//! ever sees more than `burst + ⌊w / T⌋` calls, or `burst + ⌊(w + 10 ms) / T⌋` where calls can
//! start late (with backpressure, or an inner service slow to get ready).

use proptest::prelude::*;
use seawall_bulkhead::ratelimit::RateLimitLayer;
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{ready, Context, Poll},
    time::Duration,
};
use tokio::time::{Instant, Sleep};
use tokio_test::{assert_pending, task::spawn};
use tower::{service_fn, Layer, Service, ServiceExt};

fn echo() -> impl Service<
    u32,
    Response = u32,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<u32, std::io::Error>> + Send,
> + Clone {
    service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) })
}

fn keyed_echo() -> impl Service<
    (u64, u32),
    Response = u32,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<u32, std::io::Error>> + Send,
> + Clone {
    service_fn(|(_, n): (u64, u32)| async move { Ok::<_, std::io::Error>(n) })
}

/// 10 a second, no burst, up to 1 s of waiting: one call goes at once, five waiters hold the
/// slots at 100..500 ms.
fn ten_a_second() -> seawall_bulkhead::ratelimit::RateLimitConfigBuilder {
    RateLimitLayer::builder()
        .rate(10, Duration::from_secs(1))
        .burst(1)
        .max_wait(Duration::from_secs(1))
}

#[tokio::test(start_paused = true)]
async fn waiters_dropped_oldest_first_give_every_slot_back() {
    let layer = ten_a_second().build().unwrap();
    let service = layer.layer(echo());
    service.clone().oneshot(0).await.unwrap();
    let mut waiters: Vec<_> = (1..=5).map(|n| spawn(service.clone().oneshot(n))).collect();
    for waiter in &mut waiters {
        assert_pending!(waiter.poll());
    }
    // Oldest first, as a timeout above the limiter drops them.
    drop(waiters);
    // No call ran since the first: the slot at 100 ms is free, not the one at 500 ms.
    let start = Instant::now();
    service.clone().oneshot(6).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn with_a_burst_a_freed_slot_is_kept_while_it_can_still_run() {
    // 10 a second in bursts of 2 (T = 100 ms, τ = 200 ms): two calls at 0 ms, then waiters for
    // 100 and 200 ms. The first waiter goes; its slot may run until 200 ms and still keep every
    // window to burst + ⌊w/T⌋, so a newcomer at 150 ms takes it and runs at once.
    let layer = RateLimitLayer::builder()
        .rate(10, Duration::from_secs(1))
        .burst(2)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = layer.layer(echo());
    service.clone().oneshot(0).await.unwrap();
    service.clone().oneshot(1).await.unwrap();
    let mut first = spawn(service.clone().oneshot(2));
    let mut second = spawn(service.clone().oneshot(3));
    assert_pending!(first.poll());
    assert_pending!(second.poll());
    drop(first);
    tokio::time::advance(Duration::from_millis(150)).await;
    let start = Instant::now();
    service.clone().oneshot(4).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    // The second waiter keeps its slot at 200 ms.
    assert_pending!(second.poll());
    tokio::time::advance(Duration::from_millis(50)).await;
    assert_eq!(second.await.unwrap(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_newcomer_takes_the_earliest_freed_slot_and_later_waiters_keep_theirs() {
    let layer = ten_a_second().build().unwrap();
    let service = layer.layer(echo());
    let start = Instant::now();
    service.clone().oneshot(0).await.unwrap();
    let mut waiters: Vec<_> = (1..=5)
        .map(|n| {
            let call = service.clone().oneshot(n);
            tokio::spawn(async move { call.await.map(|_| start.elapsed()).ok() })
        })
        .collect();
    tokio::task::yield_now().await;
    // The waiters for 100 and 200 ms go; those for 300, 400 and 500 ms stay.
    for waiter in waiters.drain(..2) {
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
    }
    let newcomers: Vec<_> = (6..=8)
        .map(|n| {
            let call = service.clone().oneshot(n);
            tokio::spawn(async move { call.await.map(|_| start.elapsed()).ok() })
        })
        .collect();
    let mut ran = Vec::new();
    for call in waiters.into_iter().chain(newcomers) {
        ran.push(call.await.unwrap().map(|d| d.as_millis()));
    }
    // The kept waiters at their slots; the newcomers in the freed slots, then after the last.
    assert_eq!(
        ran,
        vec![
            Some(300),
            Some(400),
            Some(500),
            Some(100),
            Some(200),
            Some(600)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_waiters_dropped_oldest_first_give_every_slot_back() {
    let layer = ten_a_second()
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(keyed_echo());
    service.clone().oneshot((7, 0)).await.unwrap();
    let mut waiters: Vec<_> = (1..=5)
        .map(|n| spawn(service.clone().oneshot((7, n))))
        .collect();
    for waiter in &mut waiters {
        assert_pending!(waiter.poll());
    }
    drop(waiters);
    let start = Instant::now();
    service.clone().oneshot((7, 6)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_keyed_newcomer_takes_the_earliest_freed_slot_of_its_key() {
    let layer = ten_a_second()
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(keyed_echo());
    service.clone().oneshot((7, 0)).await.unwrap();
    service.clone().oneshot((8, 0)).await.unwrap();
    let mut waiters: Vec<_> = (1..=3)
        .map(|n| spawn(service.clone().oneshot((7, n))))
        .collect();
    for waiter in &mut waiters {
        assert_pending!(waiter.poll());
    }
    drop(waiters.remove(0));
    // Key 8 has its own budget: its slot at 100 ms is its own, not key 7's freed one.
    let mut other = spawn(service.clone().oneshot((8, 1)));
    assert_pending!(other.poll());
    let start = Instant::now();
    service.clone().oneshot((7, 4)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
    // Key 7's next free slot is after its kept waiters (200 and 300 ms).
    let waited = Instant::now();
    service.clone().oneshot((7, 5)).await.unwrap();
    assert_eq!(waited.elapsed(), Duration::from_millis(300));
    assert!(other.poll().is_ready());
}

/// Sustained overload: a caller every 10 ms, each giving up after 300 ms (a timeout above the
/// limiter, shorter than its `max_wait` of 1 s). Returns how many calls got through in 5 s.
async fn admitted_under_overload() -> usize {
    let layer = ten_a_second().build().unwrap();
    let service = layer.layer(echo());
    let start = Instant::now();
    let mut calls = Vec::new();
    for n in 0..500 {
        tokio::time::sleep_until(start + Duration::from_millis(10 * n)).await;
        let call = service.clone().oneshot(n as u32);
        calls.push(tokio::spawn(async move {
            matches!(
                tokio::time::timeout(Duration::from_millis(300), call).await,
                Ok(Ok(_))
            )
        }));
    }
    let mut admitted = 0;
    for call in calls {
        admitted += usize::from(call.await.unwrap());
    }
    admitted
}

#[tokio::test(start_paused = true)]
async fn callers_timing_out_before_max_wait_still_get_the_rate() {
    // Calls run from 0 to 5.29 s at 10 a second: 53 at most. If the slots of callers that gave
    // up were not reused, only the few callers with a slot within 300 ms would get through.
    let admitted = admitted_under_overload().await;
    assert!((48..=53).contains(&admitted), "{admitted} calls in 5 s");
}

// ===== property: random calls and cancellations never exceed the rate =====

#[derive(Debug, Clone)]
enum Op {
    /// A call for key `0..3` (the plain limiter ignores the key; with backpressure it sets how long
    /// the call holds its ready service).
    Call(u64),
    /// Drop a live call, waiting or not.
    Cancel(usize),
    /// Advance virtual time by this many milliseconds.
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..3).prop_map(Op::Call),
        3 => any::<usize>().prop_map(Op::Cancel),
        2 => (0u64..120).prop_map(Op::Advance),
    ]
}

fn cases() -> u32 {
    std::env::var("SEAWALL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Proptest's configuration with `cases` cases and a fixed seed, so that every run tries the same
/// cases; a seed in `PROPTEST_RNG_SEED` still takes precedence.
fn seeded(cases: u32) -> ProptestConfig {
    use proptest::test_runner::RngSeed;
    let mut config = ProptestConfig::with_cases(cases);
    // `ProptestConfig::default()` reads `PROPTEST_RNG_SEED`; without it the seed is random.
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(0x05EA_0A11);
    }
    config
}

/// `times` (nanoseconds) admit at most `burst + ⌊(w + slack) / interval⌋` calls in any window `w`.
fn within_rate(times: &[u64], interval: u64, burst: u64, slack: u64) -> Result<(), TestCaseError> {
    let mut times = times.to_vec();
    times.sort_unstable();
    for i in 0..times.len() {
        for j in i..times.len() {
            let calls = (j - i + 1) as u64;
            let allowed = burst + (times[j] - times[i] + slack) / interval;
            prop_assert!(
                calls <= allowed,
                "{calls} calls within {} ns, at most {allowed} allowed: {times:?}",
                times[j] - times[i]
            );
        }
    }
    Ok(())
}

/// `inner`, slow to get ready as a limit or a connection pool below the limiter can be: each
/// service that has not been polled yet (a clone, or one just called) is ready only after the next
/// of `delays` (milliseconds, taken in turn; always ready if there are none).
struct Slow<S> {
    inner: S,
    delays: Arc<Mutex<(Vec<u64>, usize)>>,
    sleep: Option<Pin<Box<Sleep>>>,
    ready: bool,
}

impl<S: Clone> Clone for Slow<S> {
    fn clone(&self) -> Self {
        Slow {
            inner: self.inner.clone(),
            delays: self.delays.clone(),
            sleep: None,
            ready: false,
        }
    }
}

impl<S: Service<Req>, Req> Service<Req> for Slow<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if !self.ready {
            let delays = &self.delays;
            let sleep = self.sleep.get_or_insert_with(|| {
                let (delays, next) = &mut *delays.lock().unwrap();
                let delay = if delays.is_empty() {
                    0
                } else {
                    *next += 1;
                    delays[(*next - 1) % delays.len()]
                };
                Box::pin(tokio::time::sleep(Duration::from_millis(delay)))
            });
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
            self.ready = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> S::Future {
        self.ready = false;
        self.inner.call(request)
    }
}

/// How the limiter under test is built and called.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Keyed,
    /// `poll_ready` waits for a permit; a call for key `k` holds its ready service `k` half
    /// intervals before calling.
    Backpressure,
}

/// Runs `ops` against a limiter of one call every `interval_ms` (whole milliseconds, so tokio's
/// millisecond timer wakes each waiter exactly at its slot), each call a task of its own that
/// records when the inner service is called; the inner service takes `readiness` to get ready
/// (see [`Slow`]).
fn run(
    mode: Mode,
    interval_ms: u64,
    permits: u64,
    burst: u64,
    max_wait_ms: u64,
    readiness: Vec<u64>,
    ops: Vec<Op>,
) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let interval = interval_ms * 1_000_000;
        let keyed = mode == Mode::Keyed;
        let backpressure = mode == Mode::Backpressure;
        let max_wait_ms = if backpressure { 0 } else { max_wait_ms };
        let builder = RateLimitLayer::builder()
            .rate(permits, Duration::from_millis(interval_ms * permits))
            .burst(burst)
            .max_wait(Duration::from_millis(max_wait_ms))
            .backpressure(backpressure);
        let start = Instant::now();
        let ran: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
        let record = ran.clone();
        let slowest = readiness.iter().copied().max().unwrap_or(0);
        let slow = !readiness.is_empty();
        let inner = Slow {
            inner: service_fn(move |(key, _): (u64, u32)| {
                let at = start.elapsed().as_nanos() as u64;
                record.lock().unwrap().push((key, at));
                async move { Ok::<_, std::io::Error>(0u32) }
            }),
            delays: Arc::new(Mutex::new((readiness, 0))),
            sleep: None,
            ready: false,
        };
        type Call = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;
        let make: Box<dyn Fn(u64) -> Call> = if keyed {
            let layer = builder.build_keyed(|req: &(u64, u32)| req.0).unwrap();
            let service = layer.layer(inner);
            Box::new(move |key| {
                let call = service.clone().oneshot((key, 0));
                Box::pin(async move {
                    let _ = call.await;
                })
            })
        } else if backpressure {
            let layer = builder.build().unwrap();
            let service = layer.layer(inner);
            Box::new(move |key| {
                let mut service = service.clone();
                let hold = Duration::from_millis(key * interval_ms / 2);
                Box::pin(async move {
                    if service.ready().await.is_ok() {
                        tokio::time::sleep(hold).await;
                        let _ = service.call((key, 0)).await;
                    }
                })
            })
        } else {
            let layer = builder.build().unwrap();
            let service = layer.layer(inner);
            Box::new(move |key| {
                let call = service.clone().oneshot((key, 0));
                Box::pin(async move {
                    let _ = call.await;
                })
            })
        };
        let check = |ran: &[(u64, u64)]| -> Result<(), TestCaseError> {
            let keys = if keyed { 0..3 } else { 0..1 };
            for key in keys {
                let times: Vec<u64> = ran
                    .iter()
                    .filter(|(k, _)| !keyed || *k == key)
                    .map(|(_, t)| *t)
                    .collect();
                // A call within 10 ms of its permit's time keeps it: with backpressure, a call
                // made after `poll_ready`, and a waiter whose service gets ready after its timer.
                let slack = if backpressure || slow { 10_000_000 } else { 0 };
                within_rate(&times, interval, burst, slack)?;
            }
            Ok(())
        };

        let calls = ops.iter().filter(|op| matches!(op, Op::Call(_))).count() as u64;
        let mut live = Vec::new();
        for op in ops {
            match op {
                Op::Call(key) => live.push(tokio::spawn(make(key))),
                Op::Cancel(i) if !live.is_empty() => live.swap_remove(i % live.len()).abort(),
                Op::Cancel(_) => {}
                // Sleeping lets the paused clock run from timer to timer, each waiter at its slot.
                Op::Advance(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            }
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            live.retain(|call| !call.is_finished());
            let ran = ran.lock().unwrap().clone();
            check(&ran)?;
        }
        // Every waiter left runs within `max_wait` of its call (made once the service is
        // ready), or is rejected then, once its last service is ready: a waiter that gets ready
        // too late takes the next permit due within that time. With backpressure, every call
        // runs once every call made could have had its slot; a call that held its ready service
        // past its permit takes a second one, and one whose service got ready too late, more.
        let settle = if backpressure && slow {
            (slowest + interval_ms) * (3 * calls + 1)
        } else if backpressure {
            interval_ms * (2 * calls + 1)
        } else {
            max_wait_ms + 2 * slowest
        };
        tokio::time::sleep(Duration::from_millis(settle + 1)).await;
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        live.retain(|call| !call.is_finished());
        prop_assert!(live.is_empty(), "{} waiters never ran", live.len());
        let ran = ran.lock().unwrap().clone();
        check(&ran)
    })
}

proptest! {
    #![proptest_config(seeded(cases()))]

    #[test]
    fn random_cancellations_never_exceed_the_rate(
        interval_ms in 10u64..200,
        permits in 1u64..5,
        burst in 1u64..4,
        max_wait_ms in prop_oneof![Just(0u64), 1u64..1_000],
        ops in prop::collection::vec(op(), 1..100),
    ) {
        run(Mode::Plain, interval_ms, permits, burst, max_wait_ms, Vec::new(), ops)?;
    }

    #[test]
    fn random_cancellations_never_exceed_the_rate_of_a_key(
        interval_ms in 10u64..200,
        permits in 1u64..5,
        burst in 1u64..4,
        max_wait_ms in prop_oneof![Just(0u64), 1u64..1_000],
        ops in prop::collection::vec(op(), 1..100),
    ) {
        run(Mode::Keyed, interval_ms, permits, burst, max_wait_ms, Vec::new(), ops)?;
    }

    #[test]
    fn random_cancellations_in_poll_ready_never_exceed_the_rate(
        interval_ms in 10u64..200,
        permits in 1u64..5,
        burst in 1u64..4,
        ops in prop::collection::vec(op(), 1..100),
    ) {
        run(Mode::Backpressure, interval_ms, permits, burst, 0, Vec::new(), ops)?;
    }

    /// A waiter polls its inner service ready only once its permit is due, and one that gets
    /// ready after the permit's span takes the next permit: however slow the service below, calls
    /// still keep to the rate.
    #[test]
    fn slow_inner_readiness_never_exceeds_the_rate(
        mode in prop_oneof![Just(Mode::Plain), Just(Mode::Keyed), Just(Mode::Backpressure)],
        interval_ms in 10u64..200,
        permits in 1u64..5,
        burst in 1u64..4,
        max_wait_ms in prop_oneof![Just(0u64), 1u64..1_000],
        readiness in prop::collection::vec(prop_oneof![Just(0u64), Just(1), 0u64..400], 1..6),
        ops in prop::collection::vec(op(), 1..100),
    ) {
        run(mode, interval_ms, permits, burst, max_wait_ms, readiness, ops)?;
    }
}

/// A keyed waiter whose service gets ready after its permit's span renews it from its key's entry
/// as it is then, though the entry it waited on was evicted and made again meanwhile; dropped
/// after that, it gives the renewed permit back to that entry.
#[tokio::test(start_paused = true)]
async fn a_keyed_waiter_renews_from_its_keys_entry_made_again_after_an_eviction() {
    let start = Instant::now();
    let ran: Arc<Mutex<Vec<(u32, Duration)>>> = Arc::default();
    let record = ran.clone();
    // Fresh services get ready at once, but for the fourth polled: A#2's, once its permit is due.
    let inner = Slow {
        inner: service_fn(move |(_, n): (u64, u32)| {
            record.lock().unwrap().push((n, start.elapsed()));
            async move { Ok::<_, std::io::Error>(n) }
        }),
        delays: Arc::new(Mutex::new((vec![0, 0, 0, 500, 0, 0, 0, 0], 0))),
        sleep: None,
        ready: false,
    };
    // One key at a time (T = 1 s, burst 1): a new key evicts the other.
    let layer = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .burst(1)
        .max_wait(Duration::from_secs(5))
        .max_keys(1)
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(inner);
    const A: u64 = 1;
    const B: u64 = 2;
    service.clone().oneshot((A, 1)).await.unwrap();
    // A#2 waits for its permit at 1 s, and gets ready at 1.5 s.
    let waiter = tokio::spawn(service.clone().oneshot((A, 2)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B evicts A; at 1.2 s A evicts B, with a fresh budget: A#3 runs at once, and A's next
    // permit is due at 2.2 s.
    service.clone().oneshot((B, 10)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    service.clone().oneshot((A, 3)).await.unwrap();
    // At 1.5 s A#2 renews: the permit due at 2.2 s. Dropped at 1.6 s, it gives it back.
    tokio::time::sleep(Duration::from_millis(400)).await;
    waiter.abort();
    assert!(waiter.await.unwrap_err().is_cancelled());
    service.clone().oneshot((A, 4)).await.unwrap();
    let ran = ran.lock().unwrap().clone();
    let at = |n: u32| {
        ran.iter()
            .find(|(m, _)| *m == n)
            .map(|(_, at)| at.as_millis())
    };
    assert_eq!(
        (at(1), at(2), at(3), at(4)),
        (Some(0), None, Some(1_200), Some(2_200)),
        "{ran:?}"
    );
}

/// Makes `calls` calls at once through a limiter of `per_sec` calls a second, no burst beyond one,
/// waiting up to `max_wait_ms`, over a service that takes `readiness_ms` to get ready each time
/// (see [`Slow`]). Every call must succeed; returns when each started, in nanoseconds, in order.
async fn slow_waiters(per_sec: u64, max_wait_ms: u64, readiness_ms: u64, calls: u32) -> Vec<u64> {
    let start = Instant::now();
    let ran: Arc<Mutex<Vec<u64>>> = Arc::default();
    let record = ran.clone();
    let inner = Slow {
        inner: service_fn(move |n: u32| {
            let at = start.elapsed().as_nanos() as u64;
            record.lock().unwrap().push(at);
            async move { Ok::<_, std::io::Error>(n) }
        }),
        delays: Arc::new(Mutex::new((vec![readiness_ms], 0))),
        sleep: None,
        ready: false,
    };
    let layer = ten_a_second()
        .rate(per_sec, Duration::from_secs(1))
        .max_wait(Duration::from_millis(max_wait_ms))
        .build()
        .unwrap();
    let service = layer.layer(inner);
    let calls: Vec<_> = (0..calls)
        .map(|n| tokio::spawn(service.clone().oneshot(n)))
        .collect();
    for call in calls {
        call.await
            .unwrap()
            .expect("every waiter runs within its max_wait");
    }
    let mut ran = ran.lock().unwrap().clone();
    ran.sort_unstable();
    ran
}

/// Waiters whose service always takes 12 ms to get ready miss permits usable for 10 ms: each takes
/// the next permit once, and polls its service ahead of it, so every one runs.
#[tokio::test(start_paused = true)]
async fn waiters_slow_to_get_ready_miss_one_permit_each() {
    // T = 10 ms. Every call is made at 12 ms: the first runs then. The waiters' permits are due
    // at 22, 32 and 42 ms, and each waiter is ready 12 ms later, past its 10 ms of grace: they
    // take the permits due at 52, 62 and 72 ms, poll their services 10 ms ahead (one interval,
    // the first time), and run within those permits' grace, at 54, 64 and 74 ms.
    let ran = slow_waiters(100, 100, 12, 4).await;
    let at: Vec<u64> = ran.iter().map(|at| at / 1_000_000).collect();
    assert_eq!(at, [12, 54, 64, 74]);
}

/// The same at a rate whose interval is shorter than the time a service takes to get ready: a
/// waiter that misses a second permit polls its service ahead of the next by all that time, so
/// every waiter runs, and the calls keep to the rate.
#[tokio::test(start_paused = true)]
async fn waiters_slower_to_get_ready_than_an_interval_still_run() {
    // T = 1 ms, 500 ms of waiting at most; forty callers, so that a waiter that misses its permit
    // finds the others' ahead of the next.
    let ran = slow_waiters(1_000, 500, 13, 40).await;
    within_rate(&ran, 1_000_000, 1, 10_000_000).unwrap();
}

/// A waiter's permit counts from when it fell due, not from when its future is next polled: one
/// put aside past its permit's time, with a call admitted since, takes the next permit rather
/// than land next to that call.
#[tokio::test(start_paused = true)]
async fn a_waiter_polled_after_its_permits_time_takes_the_next_permit() {
    let start = Instant::now();
    let ran: Arc<Mutex<Vec<(u32, u128)>>> = Arc::default();
    let record = ran.clone();
    let layer = ten_a_second().build().unwrap();
    let service = layer.layer(service_fn(move |n: u32| {
        record
            .lock()
            .unwrap()
            .push((n, start.elapsed().as_millis()));
        async move { Ok::<_, std::io::Error>(n) }
    }));
    service.clone().oneshot(0).await.unwrap();
    // Due at 100 ms, and not polled again until 218 ms.
    let mut put_aside = spawn(service.clone().oneshot(1));
    assert_pending!(put_aside.poll());
    tokio::time::advance(Duration::from_millis(150)).await;
    // Admitted at 150 ms, for the permit due at 200 ms.
    service.clone().oneshot(2).await.unwrap();
    tokio::time::advance(Duration::from_millis(18)).await;
    assert_pending!(put_aside.poll());
    tokio::time::advance(Duration::from_millis(82)).await;
    assert!(put_aside.poll().is_ready());
    assert_eq!(*ran.lock().unwrap(), [(0, 0), (2, 200), (1, 300)]);
}
