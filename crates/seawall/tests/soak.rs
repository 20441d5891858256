//! Soak: many calls through the full client stack on a 2-worker runtime, with random failures,
//! slow calls, endpoint churn and cancellations at random points. Once everything has settled,
//! permits are all back, and no internal map (per-endpoint breakers, keyed rate limiter,
//! balancer endpoint set) nor the process's memory has grown past its bound.
//!
//! Discovery churns through fresh endpoint keys, far more over the run than the per-endpoint
//! breaker set holds, and at times more at once: the set evicts, holds only endpoints still
//! published, and counts as open exactly its breakers that are.
//!
//! 50 000 calls by default (a few seconds); `SEAWALL_SOAK_CALLS=1000000` for the long run.

use seawall::{
    balance::{BalanceEvent, BalanceLayer, OutlierDetection, Picker},
    breaker::{BreakerConfig, BreakerLayer, BreakerSet, SlidingWindow, State},
    bulkhead::{ratelimit::RateLimitLayer, BulkheadLayer},
    core::{
        metrics::{self as names, testing::TestRecorder},
        BoxError, RequestDeadline,
    },
    discover,
    retry::{RetryBudget, RetryLayer},
    stack::ClientStack,
};
use std::{
    sync::{
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

/// Consecutive endpoint keys discovery picks from in one round; the window slides on to fresh
/// keys every round.
const ENDPOINT_WINDOW: u32 = 24;
/// Per-endpoint breakers the set holds at most: fewer than a window, so a round that publishes
/// more endpoints than this makes the set evict.
const ENDPOINT_BREAKERS: usize = 16;
/// Discovery rounds at least, however few the calls.
const MIN_CHURN_ROUNDS: u32 = 20;
/// Keys the keyed rate limiter tracks at most.
const MAX_TENANT_KEYS: usize = 256;
const BULKHEAD_LIMIT: usize = 48;
const CONCURRENCY: usize = 64;

#[derive(Debug, Clone)]
struct Req {
    tenant: u64,
    deadline: Option<Instant>,
}

impl RequestDeadline for Req {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
}

/// splitmix64: a seeded, lock-free stream of random numbers from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> u64 {
        mix(self.0.fetch_add(1, Ordering::Relaxed))
    }
}

/// Resident memory of the process in bytes, where `/proc` has it (`VmRSS`, in kB whatever the
/// page size).
fn rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

fn calls() -> usize {
    std::env::var("SEAWALL_SOAK_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000)
}

#[test]
fn soak() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(soak_run(calls()));
}

async fn soak_run(total: usize) {
    let rng = Arc::new(Rng(AtomicU64::new(42)));

    // Endpoints: 5 % of calls fail, 2 % are slow (past the per-try timeout), the rest take up to
    // a millisecond. Every twelfth endpoint is bad: half its calls fail.
    let (publish, keys) = tokio::sync::watch::channel((0..ENDPOINT_WINDOW).collect::<Vec<u32>>());
    let inner_rng = rng.clone();
    let endpoints = discover::watch(keys, move |key: &u32| {
        let key = *key;
        let rng = inner_rng.clone();
        service_fn(move |_req: Req| {
            let r = rng.next();
            async move {
                let roll = r % 100;
                if roll < 5 || (key.is_multiple_of(12) && roll < 50) {
                    return Err::<u32, BoxError>("endpoint failure".into());
                }
                let work = if roll < 7 {
                    Duration::from_millis(30)
                } else {
                    Duration::from_micros(r % 1_000)
                };
                tokio::time::sleep(work).await;
                Ok(key)
            }
        })
    });

    let live_endpoints = Arc::new(AtomicI64::new(0));
    let live = live_endpoints.clone();
    // The set registers its `seawall_breaker_keys_open` gauge once, when it is made: a recorder
    // installed then on this thread keeps the count its breakers move from any worker.
    let recorder = TestRecorder::new();
    let endpoint_breakers = {
        let _recorder = recorder.install_local();
        BreakerSet::new(
            BreakerConfig::builder()
                .name("soak-endpoint")
                .sliding_window(SlidingWindow::count(20))
                .minimum_calls(10)
                .wait_duration(Duration::from_millis(20))
                .build_config()
                .unwrap(),
            ENDPOINT_BREAKERS,
        )
        .unwrap()
    };
    let breaker = BreakerLayer::builder()
        .name("soak")
        .minimum_calls(50)
        .wait_duration(Duration::from_millis(10))
        .build()
        .unwrap();
    let breaker_handle = breaker.handle();
    let bulkhead = BulkheadLayer::builder()
        .name("soak")
        .max_concurrent(BULKHEAD_LIMIT)
        .max_wait(Duration::from_millis(2))
        .build()
        .unwrap();
    let permits = bulkhead.handle();
    let client = ClientStack::builder()
        .timeout(Duration::from_millis(50))
        .retry(
            RetryLayer::builder()
                .max_attempts(3)
                .budget(RetryBudget::builder().ratio(0.2).build().unwrap())
                .seed(7)
                .build()
                .unwrap(),
        )
        .breaker(breaker)
        .bulkhead(bulkhead)
        .balance(
            BalanceLayer::builder()
                .name("soak")
                .picker(Picker::p2c_peak_ewma())
                .max_wait(Duration::from_millis(5))
                .outlier_detection(OutlierDetection {
                    interval: Duration::from_millis(50),
                    base_ejection_time: Duration::from_millis(100),
                    max_ejection_percent: 0.3,
                    ..OutlierDetection::default()
                })
                .on_event(move |_: &seawall::Name, e: &BalanceEvent| match e {
                    BalanceEvent::EndpointAdded { .. } => {
                        live.fetch_add(1, Ordering::SeqCst);
                    }
                    BalanceEvent::EndpointRemoved { .. } => {
                        live.fetch_sub(1, Ordering::SeqCst);
                    }
                    _ => {}
                })
                .seed(11),
        )
        .endpoint_breakers(endpoint_breakers.clone())
        .per_try_timeout(Duration::from_millis(10))
        .build(endpoints)
        .unwrap();
    // One budget per tenant, over far more tenants than the table holds.
    let per_tenant = RateLimitLayer::builder()
        .rate(1_000, Duration::from_secs(1))
        .burst(20)
        .max_keys(MAX_TENANT_KEYS)
        .build_keyed(|req: &Req| req.tenant)
        .unwrap();
    let client = per_tenant.layer(client);

    // Discovery churn: every 20 ms the window of keys moves on by one to three fresh keys, and a
    // new random subset of it is published, five in eight keys on average; every tenth round
    // publishes the whole window, more endpoints than the breaker set holds. Once the calls are
    // over, a last round keeps only a few of the endpoints, so the set must let go of the rest
    // (breakers left open among them included). Returns the last list published, the first key
    // never published, and the most breakers the set held at the end of a round.
    let done = Arc::new(tokio::sync::Notify::new());
    let churn = {
        let rng = rng.clone();
        let done = done.clone();
        let breakers = endpoint_breakers.clone();
        tokio::spawn(async move {
            let (mut base, mut round, mut fullest, mut over) = (0, 0, 0, false);
            let last = loop {
                round += 1;
                let (half, quarter) = (rng.next() | 0b111, rng.next());
                let all = round % 10 == 0;
                let last: Vec<u32> = (0..ENDPOINT_WINDOW)
                    .filter(|i| all || half >> i & 1 == 1 || quarter >> (2 * i) & 0b11 == 0)
                    .map(|i| base + i)
                    .collect();
                if publish.send(last.clone()).is_err() {
                    break last;
                }
                let pause = tokio::time::sleep(Duration::from_millis(20));
                if over {
                    pause.await;
                } else {
                    tokio::select! {
                        _ = pause => {}
                        _ = done.notified() => over = true,
                    }
                }
                fullest = fullest.max(breakers.len());
                // However few the calls, the window turns over a few times.
                if over && round >= MIN_CHURN_ROUNDS {
                    break last;
                }
                base += 1 + (rng.next() % 3) as u32;
            };
            let mut kept = last;
            kept.truncate(ENDPOINT_BREAKERS / 2);
            let _ = publish.send(kept.clone());
            (kept, base + ENDPOINT_WINDOW, fullest)
        })
    };

    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let cancelled = Arc::new(AtomicUsize::new(0));
    let warm_up = total / 10;
    let mut baseline = None;
    let mut issued = 0;
    while issued < total {
        let batch = if baseline.is_none() {
            warm_up
        } else {
            total - issued
        };
        let next = Arc::new(AtomicUsize::new(0));
        let mut drivers = tokio::task::JoinSet::new();
        for _ in 0..CONCURRENCY {
            let (client, rng, next) = (client.clone(), rng.clone(), next.clone());
            let (ok, failed, cancelled) = (ok.clone(), failed.clone(), cancelled.clone());
            drivers.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < batch {
                    let r = rng.next();
                    let req = Req {
                        tenant: r >> 40,
                        deadline: None,
                    };
                    let call = client.clone().oneshot(req);
                    if r % 10 == 0 {
                        // Dropped at a random point: before its first poll, while waiting for
                        // a permit or an endpoint, mid-call, mid-backoff.
                        let after = Duration::from_micros((r >> 8) % 3_000);
                        match tokio::time::timeout(after, call).await {
                            Ok(Ok(_)) => ok.fetch_add(1, Ordering::Relaxed),
                            Ok(Err(_)) => failed.fetch_add(1, Ordering::Relaxed),
                            Err(_) => cancelled.fetch_add(1, Ordering::Relaxed),
                        };
                    } else {
                        match call.await {
                            Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }
            });
        }
        tokio::time::timeout(Duration::from_secs(600), async {
            while let Some(r) = drivers.join_next().await {
                r.expect("no driver panics");
            }
        })
        .await
        .expect("every call settles");
        issued += batch;
        if baseline.is_none() {
            baseline = Some((rss(), endpoint_breakers.len(), per_tenant.tracked_keys()));
        }
    }

    done.notify_one();
    let (published, keys_end, fullest) = churn.await.unwrap();
    // Wait (bounded) for the balancer's discovery task to apply the last change and for every
    // permit to come back; the assertions below say which part did not settle.
    let settled = || {
        live_endpoints.load(Ordering::SeqCst) == published.len() as i64
            && permits.available() == BULKHEAD_LIMIT
            && permits.in_flight() == 0
            && permits.waiting() == 0
    };
    for _ in 0..400 {
        if settled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let (ok, failed, cancelled) = (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed),
    );
    eprintln!(
        "soak: {total} calls: {ok} ok, {failed} failed, {cancelled} cancelled; \
         breaker {:?}; endpoint breakers {} (at most {fullest}, over {keys_end} keys); \
         tenants tracked {}; rss {:?} -> {:?}",
        breaker_handle.state(),
        endpoint_breakers.len(),
        per_tenant.tracked_keys(),
        baseline.as_ref().and_then(|b| b.0),
        rss(),
    );
    assert_eq!(
        ok + failed + cancelled,
        total,
        "every call was accounted for"
    );
    // How many calls succeed depends on real-time limits (timeouts, the bulkhead's and the
    // balancer's waits, the cancellation points) and so on how loaded the machine is: only that
    // some succeed is checked.
    assert!(ok > 0, "some calls succeed: {ok} of {total}");

    // Permits are conserved.
    assert_eq!(permits.available(), BULKHEAD_LIMIT);
    assert_eq!(permits.in_flight(), 0);
    assert_eq!(permits.waiting(), 0);
    let snapshot = breaker_handle.snapshot();
    assert_eq!(snapshot.probes_in_use, snapshot.probe_results);

    // No internal map grows past its bound.
    assert!(endpoint_breakers.len() <= ENDPOINT_BREAKERS);
    assert!(
        keys_end as usize > 2 * ENDPOINT_BREAKERS,
        "churned through only {keys_end} endpoint keys"
    );
    assert_eq!(
        fullest, ENDPOINT_BREAKERS,
        "the breaker set never filled up, so it never evicted"
    );
    assert!(per_tenant.tracked_keys() <= MAX_TENANT_KEYS);
    assert_eq!(
        live_endpoints.load(Ordering::SeqCst),
        published.len() as i64,
        "the balancer holds exactly the endpoints discovery published last"
    );

    // The breaker set holds breakers of published endpoints only, and counts as open exactly
    // those of them that are (Open, HalfOpen or ForcedOpen; no call runs now to change one).
    let gone: Vec<u32> = (0..keys_end)
        .filter(|k| !published.contains(k) && endpoint_breakers.handle(k).is_some())
        .collect();
    assert!(
        gone.is_empty(),
        "breakers of removed endpoints still in the set: {gone:?}"
    );
    let open = published
        .iter()
        .filter_map(|k| endpoint_breakers.handle(k))
        .filter(|h| matches!(h.state(), State::Open | State::HalfOpen | State::ForcedOpen))
        .count();
    eprintln!(
        "soak: {open} of {} live endpoints' breakers open",
        published.len()
    );
    assert_eq!(
        recorder.gauge(names::BREAKER_KEYS_OPEN, "soak-endpoint"),
        Some(open as f64),
        "seawall_breaker_keys_open against the open breakers of live endpoints"
    );

    // No growth in memory after the warm-up beyond allocator noise.
    if let (Some((Some(before), breakers_before, _)), Some(after)) = (baseline, rss()) {
        assert!(breakers_before <= ENDPOINT_BREAKERS);
        let growth = after.saturating_sub(before);
        assert!(
            growth < 32 << 20,
            "resident memory grew by {} KiB over {} calls",
            growth >> 10,
            total - warm_up
        );
    }
}
