//! Hedging: the first acceptable answer wins, losers are dropped, the budget holds, and the
//! percentile delay follows the latency.

mod support;

use seawall_core::{BoxError, Name, Outcome};
use seawall_retry::{hedge::HedgeConfigBuilder, HedgeEvent, HedgeLayer, Policy, RetryBudget};
use std::{
    future::Future,
    ops::RangeInclusive,
    pin::pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use support::{get, ms, post, Calls, Req};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

/// Counts calls whose futures were dropped before they finished.
struct CancelGuard {
    cancelled: Arc<AtomicUsize>,
    finished: bool,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Call `n` takes `latency(n)` and answers `Ok(n)`, or `Err` when `fails(n)`.
#[derive(Clone)]
struct Replicas {
    calls: Calls,
    cancelled: Arc<AtomicUsize>,
}

impl Replicas {
    fn new() -> Self {
        Replicas {
            calls: Calls::default(),
            cancelled: Arc::default(),
        }
    }

    fn service(
        &self,
        latency: impl Fn(usize) -> Duration + Clone + Send + 'static,
        fails: impl Fn(usize) -> bool + Clone + Send + 'static,
    ) -> impl Service<Req, Response = usize, Error = BoxError, Future = impl Future + Send> + Clone
    {
        let this = self.clone();
        service_fn(move |req: Req| {
            let n = this.calls.push(&req);
            let delay = latency(n);
            let fail = fails(n);
            let guard = CancelGuard {
                cancelled: this.cancelled.clone(),
                finished: false,
            };
            async move {
                // Move the whole guard in (not just its field), so dropping the future drops it.
                let mut guard = guard;
                tokio::time::sleep(delay).await;
                guard.finished = true;
                if fail {
                    Err::<usize, BoxError>(format!("replica {n} failed").into())
                } else {
                    Ok(n)
                }
            }
        })
    }

    fn cancelled(&self) -> usize {
        self.cancelled.load(Ordering::SeqCst)
    }
}

fn fixed(delay: Duration, max_hedges: u32) -> HedgeLayer {
    HedgeLayer::builder()
        .delay(delay)
        .max_hedges(max_hedges)
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn fast_primary_sends_no_hedge() {
    let replicas = Replicas::new();
    let svc = fixed(ms(100), 1).layer(replicas.service(|_| ms(20), |_| false));
    assert_eq!(svc.oneshot(get()).await.unwrap(), 0);
    assert_eq!(replicas.calls.count(), 1);
    assert_eq!(replicas.cancelled(), 0);
}

#[tokio::test(start_paused = true)]
async fn hedge_wins_and_the_primary_is_dropped_at_once() {
    let start = Instant::now();
    let replicas = Replicas::new();
    // The primary takes 1 s, the hedge 10 ms.
    let latency = |n| if n == 0 { ms(1000) } else { ms(10) };
    let mut svc = fixed(ms(100), 1).layer(replicas.service(latency, |_| false));
    let mut fut = pin!(svc.ready().await.unwrap().call(get()));
    let answer = (&mut fut).await.unwrap();
    assert_eq!(answer, 1, "the hedge answered");
    assert_eq!(Instant::now() - start, ms(110));
    // Still holding the finished future: the loser was cancelled when the winner arrived.
    assert_eq!(replicas.cancelled(), 1);
    let calls = replicas.calls.all();
    assert_eq!(calls[1].at - start, ms(100), "hedge sent after the delay");
}

/// A fixed delay longer than the longest latency the percentile histogram records still fires.
#[tokio::test(start_paused = true)]
async fn a_fixed_delay_of_hours_hedges_a_call_pending_that_long() {
    let start = Instant::now();
    let replicas = Replicas::new();
    let hours = |h: u64| Duration::from_secs(h * 3600);
    let latency = move |n| if n == 0 { hours(3) } else { ms(10) };
    let mut svc = fixed(hours(2), 1).layer(replicas.service(latency, |_| false));
    let mut fut = pin!(svc.ready().await.unwrap().call(get()));
    assert_eq!((&mut fut).await.unwrap(), 1, "the hedge answered");
    assert_eq!(Instant::now() - start, hours(2) + ms(10));
    assert_eq!(replicas.calls.all()[1].at - start, hours(2));
}

#[tokio::test(start_paused = true)]
async fn primary_can_still_win_after_a_hedge_is_sent() {
    let replicas = Replicas::new();
    let latency = |n| if n == 0 { ms(150) } else { ms(500) };
    let mut svc = fixed(ms(100), 1).layer(replicas.service(latency, |_| false));
    let mut fut = pin!(svc.ready().await.unwrap().call(get()));
    assert_eq!((&mut fut).await.unwrap(), 0);
    assert_eq!(replicas.calls.count(), 2);
    assert_eq!(replicas.cancelled(), 1, "the hedge lost and was cancelled");
}

#[tokio::test(start_paused = true)]
async fn up_to_max_hedges_each_a_delay_apart() {
    let start = Instant::now();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = HedgeLayer::builder()
        .delay(ms(50))
        .max_hedges(3)
        .budget(RetryBudget::unlimited())
        .on_event(move |_: &Name, e: &HedgeEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let replicas = Replicas::new();
    // Only the third hedge is quick.
    let latency = |n| if n == 3 { ms(5) } else { ms(10_000) };
    let mut svc = layer.layer(replicas.service(latency, |_| false));
    let mut fut = pin!(svc.ready().await.unwrap().call(get()));
    assert_eq!((&mut fut).await.unwrap(), 3);
    let sent: Vec<_> = replicas.calls.all().iter().map(|c| c.at - start).collect();
    assert_eq!(sent, [ms(0), ms(50), ms(100), ms(150)]);
    assert_eq!(Instant::now() - start, ms(155));
    assert_eq!(replicas.cancelled(), 3, "primary and two hedges cancelled");
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events,
        [
            HedgeEvent::Sent {
                hedge: 1,
                after: ms(50)
            },
            HedgeEvent::Sent {
                hedge: 2,
                after: ms(100)
            },
            HedgeEvent::Sent {
                hedge: 3,
                after: ms(150)
            },
            HedgeEvent::Won { hedge: 3 },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn no_more_than_max_hedges_copies_are_sent() {
    let start = Instant::now();
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = HedgeLayer::builder()
        .delay(ms(50))
        .max_hedges(2)
        .budget(RetryBudget::unlimited())
        .on_event(move |_: &Name, e: &HedgeEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let replicas = Replicas::new();
    // Every copy outlasts the time at which a third or fourth hedge would be due.
    let mut svc = layer.layer(replicas.service(|_| ms(10_000), |_| false));
    let mut fut = pin!(svc.ready().await.unwrap().call(get()));
    assert_eq!((&mut fut).await.unwrap(), 0, "the original answered first");
    assert_eq!(Instant::now() - start, ms(10_000));
    let sent: Vec<_> = replicas.calls.all().iter().map(|c| c.at - start).collect();
    assert_eq!(sent, [ms(0), ms(50), ms(100)], "nothing at 150 or 200 ms");
    assert_eq!(replicas.cancelled(), 2, "both hedges cancelled");
    assert_eq!(
        *events.lock().unwrap(),
        [
            HedgeEvent::Sent {
                hedge: 1,
                after: ms(50)
            },
            HedgeEvent::Sent {
                hedge: 2,
                after: ms(100)
            },
        ]
    );
}

/// A call through the hedge `configure` builds from a fixed 50 ms delay, over replicas whose
/// original copy takes 1 s, its future first polled 60 ms after the call: when the hedge was sent,
/// counted from the call, and the events.
async fn hedge_of_a_call_first_polled_late<P>(
    configure: impl FnOnce(HedgeConfigBuilder) -> HedgeLayer<P>,
) -> (Duration, Vec<HedgeEvent>)
where
    P: Policy<Req, usize>,
{
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = configure(
        HedgeLayer::builder()
            .delay(ms(50))
            .budget(RetryBudget::unlimited())
            .on_event(move |_: &Name, e: &HedgeEvent| seen.lock().unwrap().push(*e)),
    );
    let replicas = Replicas::new();
    let latency = |n| if n == 0 { ms(1000) } else { ms(10) };
    let mut svc = layer.layer(replicas.service(latency, |_| false));
    let start = Instant::now();
    let fut = svc.ready().await.unwrap().call(get());
    tokio::time::advance(ms(60)).await;
    assert_eq!(fut.await.unwrap(), 1, "the hedge answered");
    let sent = replicas.calls.all()[1].at - start;
    let events = events.lock().unwrap().clone();
    (sent, events)
}

#[tokio::test(start_paused = true)]
async fn a_fixed_delay_counts_from_the_first_poll_whatever_the_classifier() {
    let by_default = hedge_of_a_call_first_polled_late(|b| b.build().unwrap()).await;
    let by_closure = hedge_of_a_call_first_polled_late(|b| {
        b.classify(|r: Result<&usize, &BoxError>, _: Duration| {
            if r.is_ok() {
                Outcome::Success
            } else {
                Outcome::Failure
            }
        })
        .build()
        .unwrap()
    })
    .await;
    let expected = (
        ms(110),
        vec![
            HedgeEvent::Sent {
                hedge: 1,
                after: ms(50),
            },
            HedgeEvent::Won { hedge: 1 },
        ],
    );
    assert_eq!(by_default, expected, "default classifier");
    assert_eq!(by_closure, expected, "closure classifier");
}

#[tokio::test(start_paused = true)]
async fn a_failed_answer_does_not_win_while_another_copy_runs() {
    let replicas = Replicas::new();
    // The primary fails slowly, after the hedge is out; the hedge succeeds later.
    let latency = |n| if n == 0 { ms(150) } else { ms(200) };
    let svc = fixed(ms(100), 1).layer(replicas.service(latency, |n| n == 0));
    assert_eq!(svc.oneshot(get()).await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn when_every_copy_fails_the_last_sent_failure_is_returned() {
    let replicas = Replicas::new();
    let latency = |n| if n == 0 { ms(150) } else { ms(200) };
    let svc = fixed(ms(100), 1).layer(replicas.service(latency, |_| true));
    let err = svc.oneshot(get()).await.unwrap_err();
    assert_eq!(err.to_string(), "replica 1 failed");
}

/// A failure of a copy that was sent is returned rather than a later rejection of a copy that
/// never was (a bulkhead below whose wait for a permit ran out): the caller, and a retry above,
/// see the server's answer.
#[tokio::test(start_paused = true)]
async fn a_sent_failure_is_returned_rather_than_a_later_rejection_never_sent() {
    use seawall_core::error::{is, is_not_sent};

    let start = Instant::now();
    let calls = Arc::new(AtomicUsize::new(0));
    // The original fails with a 503 at 50 ms; the hedge, sent at 10 ms, is turned away before
    // it was sent at 90 ms.
    let svc = fixed(ms(10), 1).layer(service_fn(move |_: Req| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                tokio::time::sleep(ms(50)).await;
                Err::<usize, BoxError>("503".into())
            } else {
                tokio::time::sleep(ms(80)).await;
                Err(Shed.into())
            }
        }
    }));
    let err = svc.oneshot(get()).await.unwrap_err();
    assert_eq!(err.to_string(), "503");
    assert!(!is::<Shed>(&*err), "{err}");
    assert!(!is_not_sent(&*err), "{err}");
    assert_eq!(Instant::now() - start, ms(90), "the hedge answered last");
}

#[tokio::test(start_paused = true)]
async fn a_quick_failure_is_returned_without_hedging() {
    let replicas = Replicas::new();
    let svc = fixed(ms(100), 1).layer(replicas.service(|_| ms(10), |_| true));
    let err = svc.oneshot(get()).await.unwrap_err();
    assert_eq!(err.to_string(), "replica 0 failed");
    assert_eq!(
        replicas.calls.count(),
        1,
        "failures are for the retry layer"
    );
}

#[tokio::test(start_paused = true)]
async fn only_copyable_and_retryable_requests_hedge() {
    let replicas = Replicas::new();
    let slow = replicas.service(|_| ms(500), |_| false);
    let never = HedgeLayer::builder()
        .delay(ms(10))
        .budget(RetryBudget::unlimited())
        .clone_with(|_: &Req| None)
        .build()
        .unwrap();
    never.layer(slow.clone()).oneshot(get()).await.unwrap();
    assert_eq!(
        replicas.calls.count(),
        1,
        "a request that cannot be copied is sent once"
    );

    let http = HedgeLayer::builder()
        .delay(ms(10))
        .budget(RetryBudget::unlimited())
        .http()
        .build()
        .unwrap();
    let ok = service_fn(|_: Req| async {
        tokio::time::sleep(ms(500)).await;
        Ok::<_, BoxError>(http::Response::new(()))
    });
    let counted = Arc::new(AtomicUsize::new(0));
    let c = counted.clone();
    let ok = ok.map_request(move |r: Req| {
        c.fetch_add(1, Ordering::SeqCst);
        r
    });
    http.layer(ok.clone()).oneshot(post()).await.unwrap();
    assert_eq!(counted.load(Ordering::SeqCst), 1, "POST is not hedged");
    http.layer(ok).oneshot(get()).await.unwrap();
    assert_eq!(counted.load(Ordering::SeqCst), 3, "GET is");
}

/// `.http()` hedges no POST, one with an `Idempotency-Key` included, and neither does a policy
/// with `idempotency_key` (the key opts a request into retries only); `retry_non_idempotent`
/// hedges every POST.
#[tokio::test(start_paused = true)]
async fn a_post_with_an_idempotency_key_is_not_hedged() {
    use seawall_retry::HttpPolicy;

    let counted = Arc::new(AtomicUsize::new(0));
    let c = counted.clone();
    let slow = service_fn(move |_: Req| {
        c.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(ms(500)).await;
            Ok::<_, BoxError>(http::Response::new(()))
        }
    });
    let keyed = || -> Req {
        http::Request::post("/charges")
            .header("idempotency-key", "k-1")
            .body("x")
            .unwrap()
    };
    let builder = || {
        HedgeLayer::builder()
            .delay(ms(10))
            .max_hedges(1)
            .budget(RetryBudget::unlimited())
    };
    let sent = |layer: HedgeLayer<HttpPolicy>, req: Req| {
        let before = counted.load(Ordering::SeqCst);
        let slow = slow.clone();
        let counted = counted.clone();
        async move {
            layer.layer(slow).oneshot(req).await.unwrap();
            counted.load(Ordering::SeqCst) - before
        }
    };
    let http = builder().http().build().unwrap();
    assert_eq!(
        sent(http.clone(), keyed()).await,
        1,
        ".http(): a keyed POST"
    );
    assert_eq!(sent(http, get()).await, 2, ".http(): a GET");
    let key = builder()
        .policy(HttpPolicy::new().idempotency_key())
        .build()
        .unwrap();
    assert_eq!(
        sent(key.clone(), keyed()).await,
        1,
        "idempotency_key: a keyed POST"
    );
    assert_eq!(
        sent(key.clone(), post()).await,
        1,
        "idempotency_key: a POST without a key"
    );
    assert_eq!(sent(key, get()).await, 2, "idempotency_key: a GET");
    let all = builder()
        .policy(HttpPolicy::new().retry_non_idempotent(true))
        .build()
        .unwrap();
    assert_eq!(
        sent(all.clone(), keyed()).await,
        2,
        "retry_non_idempotent: a keyed POST"
    );
    assert_eq!(sent(all, post()).await, 2, "retry_non_idempotent: a POST");
}

/// A server that deduplicates by `Idempotency-Key` (as `draft-ietf-httpapi-idempotency-key-header`
/// asks, and Stripe's API does) answers a request whose key is still being processed with 409 at
/// once. A hedge of a keyed POST would arrive exactly then, and its 409 would win over the
/// original's answer; so a hedge with `idempotency_key` sends the original alone.
#[tokio::test(start_paused = true)]
async fn a_keyed_post_gets_the_originals_answer_not_the_servers_409() {
    use seawall_retry::HttpPolicy;
    use std::collections::HashSet;

    let in_flight = Arc::new(Mutex::new(HashSet::<String>::new()));
    let calls = Calls::default();
    let server = {
        let calls = calls.clone();
        service_fn(move |req: Req| {
            calls.push(&req);
            let key = req.headers()["idempotency-key"]
                .to_str()
                .unwrap()
                .to_owned();
            let first = in_flight.lock().unwrap().insert(key.clone());
            let in_flight = in_flight.clone();
            async move {
                let status = if first {
                    tokio::time::sleep(ms(300)).await;
                    in_flight.lock().unwrap().remove(&key);
                    201
                } else {
                    409
                };
                let res = http::Response::builder().status(status).body(()).unwrap();
                Ok::<_, BoxError>(res)
            }
        })
    };
    let layer = HedgeLayer::builder()
        .policy(HttpPolicy::new().idempotency_key())
        .delay(ms(10))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let keyed = http::Request::post("/charges")
        .header("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
        .body("x")
        .unwrap();
    let start = Instant::now();
    let res = layer.layer(server).oneshot(keyed).await.unwrap();
    assert_eq!(res.status(), 201, "the original's answer");
    assert_eq!(start.elapsed(), ms(300));
    assert_eq!(calls.count(), 1, "no copy sent");
}

#[tokio::test(start_paused = true)]
async fn hedge_budget_bounds_the_extra_load() {
    // Hedges for at most 10% of requests, no reserve.
    let budget = RetryBudget::builder()
        .ratio(0.1)
        .min_per_second(0)
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget)
        .build()
        .unwrap();
    let replicas = Replicas::new();
    // Every call is slow enough to be hedged.
    let mut svc = layer.layer(replicas.service(|_| ms(50), |_| false));
    for _ in 0..100 {
        svc.ready().await.unwrap().call(get()).await.unwrap();
    }
    let hedges = replicas.calls.count() - 100;
    assert_eq!(hedges, 10, "10% of 100 requests");
}

#[tokio::test(start_paused = true)]
async fn default_budget_is_ten_percent() {
    let layer = HedgeLayer::builder().delay(ms(10)).build().unwrap();
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(|_| ms(20), |_| false));
    for _ in 0..50 {
        svc.ready().await.unwrap().call(get()).await.unwrap();
    }
    assert_eq!(replicas.calls.count() - 50, 5);
}

/// Makes calls through `svc`, one at a time, for `total`.
async fn call_for<S>(svc: &mut S, total: Duration)
where
    S: Service<Req, Error = BoxError>,
{
    let until = Instant::now() + total;
    while Instant::now() < until {
        svc.ready().await.unwrap().call(get()).await.unwrap();
    }
}

/// Makes one call through `svc` whose original copy is the slow one (its index stored in
/// `slow_call`), and returns how long after it its one hedge was sent.
async fn slow_calls_hedge_gap<S>(
    svc: &mut S,
    replicas: &Replicas,
    slow_call: &AtomicUsize,
) -> Duration
where
    S: Service<Req, Error = BoxError>,
{
    let first = replicas.calls.count();
    slow_call.store(first, Ordering::SeqCst);
    svc.ready().await.unwrap().call(get()).await.unwrap();
    let calls = replicas.calls.all();
    assert_eq!(calls.len() - first, 2, "the slow call and its hedge");
    calls[first + 1].at - calls[first].at
}

#[tokio::test(start_paused = true)]
async fn percentile_delay_adapts_to_a_latency_shift() {
    let layer = HedgeLayer::builder()
        .percentile(0.9, 20, Duration::from_secs(1))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let latency_ms = Arc::new(AtomicU64::new(10));
    // The original copy of the call with this index takes 1 s; every other copy `latency_ms`.
    let slow_call = Arc::new(AtomicUsize::new(usize::MAX));
    let (l, s) = (latency_ms.clone(), slow_call.clone());
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(
        move |n| {
            if n == s.load(Ordering::SeqCst) {
                ms(1000)
            } else {
                ms(l.load(Ordering::SeqCst))
            }
        },
        |_| false,
    ));

    assert_eq!(
        layer.current_delay(),
        None,
        "nothing measured yet: no hedging"
    );

    call_for(&mut svc, Duration::from_millis(2_100)).await;
    let fast = layer.current_delay().expect("a period has been measured");
    assert!(fast >= ms(9) && fast <= ms(11), "{fast:?}");

    // The service slows down tenfold; within two periods the delay follows.
    latency_ms.store(100, Ordering::SeqCst);
    call_for(&mut svc, Duration::from_millis(2_500)).await;
    let slow = layer.current_delay().unwrap();
    assert!(slow >= ms(99) && slow <= ms(102), "{slow:?}");

    // And the hedging behaviour follows the delay: a 50 ms call is no longer hedged.
    latency_ms.store(50, Ordering::SeqCst);
    let before = replicas.calls.count();
    svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(replicas.calls.count() - before, 1);

    // A slow call is hedged at the new delay, not the old one.
    let gap = slow_calls_hedge_gap(&mut svc, &replicas, &slow_call).await;
    assert!(gap >= slow && gap <= slow + ms(1), "hedged after {gap:?}");

    // The service speeds up again; within two periods the delay follows it down.
    latency_ms.store(10, Ordering::SeqCst);
    call_for(&mut svc, Duration::from_millis(2_100)).await;
    let fast = layer.current_delay().unwrap();
    assert!(fast >= ms(9) && fast <= ms(11), "{fast:?}");
    let gap = slow_calls_hedge_gap(&mut svc, &replicas, &slow_call).await;
    assert!(gap >= fast && gap <= fast + ms(1), "hedged after {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn ignored_errors_do_not_drag_the_percentile_delay_down() {
    // Errors the policy ignores (an open breaker's rejection) come back at once; only successes
    // say how long the dependency takes.
    let layer = HedgeLayer::builder()
        .percentile(0.9, 10, Duration::from_secs(1))
        .classify(
            |result: Result<&usize, &BoxError>, _: Duration| match result {
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Ignored,
            },
        )
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(|_| ms(50), |_| false));
    let rejected = Replicas::new();
    let mut rejecting = layer.layer(rejected.service(|_| ms(1), |_| true));
    quick_errors_leave_a_50_ms_delay(&mut svc, &mut rejecting, || layer.current_delay()).await;
}

/// Measures a 50 ms percentile delay through `svc`, then sends two periods of errors through
/// `erring` (the same layer), each after 1 ms, then a success through `svc` that closes the
/// period: the delay is still ~50 ms.
async fn quick_errors_leave_a_50_ms_delay<S, E>(
    svc: &mut S,
    erring: &mut E,
    delay: impl Fn() -> Option<Duration>,
) where
    S: Service<Req, Error = BoxError>,
    E: Service<Req, Error = BoxError>,
{
    call_for(svc, Duration::from_millis(2_100)).await;
    let before = delay().expect("a period has been measured");
    assert!(before >= ms(49) && before <= ms(51), "{before:?}");
    let until = Instant::now() + ms(2_100);
    while Instant::now() < until {
        assert!(erring.ready().await.unwrap().call(get()).await.is_err());
    }
    svc.ready().await.unwrap().call(get()).await.unwrap();
    let after = delay().unwrap();
    assert!(after >= ms(49), "{after:?}");
}

#[tokio::test(start_paused = true)]
async fn percentile_delay_hedges_slow_outliers() {
    let layer = HedgeLayer::builder()
        .percentile(0.9, 10, Duration::from_secs(1))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let slow_next = Arc::new(AtomicUsize::new(usize::MAX));
    let s = slow_next.clone();
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(
        move |n| {
            if n == s.load(Ordering::SeqCst) {
                ms(1000)
            } else {
                ms(20)
            }
        },
        |_| false,
    ));
    let start = Instant::now();
    while Instant::now() < start + Duration::from_millis(1_100) {
        svc.ready().await.unwrap().call(get()).await.unwrap();
    }
    let delay = layer.current_delay().unwrap();
    slow_next.store(replicas.calls.count(), Ordering::SeqCst);
    let t = Instant::now();
    svc.ready().await.unwrap().call(get()).await.unwrap();
    let took = Instant::now() - t;
    assert!(
        took <= delay + ms(21),
        "hedged at {delay:?}, answered after {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn percentile_delay_does_not_drift_below_the_services_latency_when_hedges_win() {
    let layer = HedgeLayer::builder()
        .percentile(0.9, 20, Duration::from_secs(10))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    // Every fifth call's original copy is slow, 100 ms to 1 s in turn; every other copy takes
    // 10 ms. The service's 90th percentile is therefore the median of the slow ones, ~550 ms.
    let slow_next: Arc<Mutex<Option<Duration>>> = Arc::default();
    let sent = Arc::new(AtomicUsize::new(0));
    let (s, n) = (slow_next.clone(), sent.clone());
    let mut svc = layer.layer(service_fn(move |_: Req| {
        n.fetch_add(1, Ordering::SeqCst);
        let latency = s.lock().unwrap().take().unwrap_or(ms(10));
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, BoxError>(())
        }
    }));
    let mut calls = 0u64;
    let mut period = async |layer: &HedgeLayer| {
        let (until, before) = (
            Instant::now() + Duration::from_secs(10),
            sent.load(Ordering::SeqCst),
        );
        let mut made = 0;
        while Instant::now() < until {
            if calls.is_multiple_of(5) {
                *slow_next.lock().unwrap() = Some(ms(100 * (1 + (calls / 5) % 10)));
            }
            calls += 1;
            made += 1;
            svc.ready().await.unwrap().call(get()).await.unwrap();
        }
        let hedges = sent.load(Ordering::SeqCst) - before - made;
        (layer.current_delay(), hedges as f64 / made as f64)
    };
    for _ in 0..2 {
        period(&layer).await;
    }
    // Once hedging runs, each rescued call is recorded as taking the delay plus the hedge's
    // 10 ms, not the hedge's 10 ms alone: the delay holds near the service's percentile and about
    // one call in ten is hedged, period after period (8 to 11 % here), neither more nor fewer.
    for _ in 0..6 {
        let (delay, hedged) = period(&layer).await;
        let delay = delay.unwrap();
        assert!(delay >= ms(400) && delay <= ms(700), "delay {delay:?}");
        assert!(
            (0.05..=0.15).contains(&hedged),
            "{:.1} % of calls hedged",
            hedged * 100.0
        );
    }
}

/// A hedge due at 10 ms over replicas answering after `latency`, one call at a time underneath
/// (so a due hedge waits for readiness while the original runs), and the hedge budget of one.
fn one_permit_under_a_hedge(
    latency: Duration,
) -> (
    RetryBudget,
    Replicas,
    impl Service<Req, Response = usize, Error = BoxError> + Clone,
) {
    permits_under_a_hedge(1, latency)
}

/// [`one_permit_under_a_hedge`] with `permits` calls at a time underneath.
fn permits_under_a_hedge(
    permits: usize,
    latency: Duration,
) -> (
    RetryBudget,
    Replicas,
    impl Service<Req, Response = usize, Error = BoxError> + Clone,
) {
    let budget = support::one_retry();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget.clone())
        .build()
        .unwrap();
    let replicas = Replicas::new();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(permits)
        .service(replicas.service(move |_| latency, |_| false));
    (budget, replicas, svc)
}

#[tokio::test(start_paused = true)]
async fn a_hedge_never_sent_gives_its_budget_back() {
    // One call at a time underneath: the hedge, due at 10 ms, waits for readiness until the
    // original answers at 50 ms, and is never sent.
    let (budget, replicas, mut svc) = one_permit_under_a_hedge(ms(50));
    svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(replicas.calls.count(), 1);
    assert!(budget.can_retry(), "the hedge never sent is given back");
}

/// A rejection raised below the hedge before the request is handed on, as a full bulkhead's
/// `Full` is: its source is a [`NotSent`](seawall_core::error::NotSent).
#[derive(Debug)]
struct Shed;

static NOT_SENT: seawall_core::error::NotSent = seawall_core::error::NotSent::new();

impl std::fmt::Display for Shed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("load shed")
    }
}

impl std::error::Error for Shed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&NOT_SENT)
    }
}

/// The events a hedge's listener saw, in order.
type Events = Arc<Mutex<Vec<HedgeEvent>>>;

/// A hedge due at 10 ms drawing on `budget`, its events in the list returned, over a service
/// that takes one call at a time: call `n` answers `Ok(n)` after 100 ms, and a call that comes
/// while another runs (a hedge) fails at once with `rejection()`. The calls made are counted.
fn one_at_a_time_under_a_hedge(
    budget: RetryBudget,
    rejection: fn() -> BoxError,
) -> (
    Events,
    Arc<AtomicUsize>,
    impl Service<Req, Response = usize, Error = BoxError>,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget)
        .on_event(move |_: &Name, e: &HedgeEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let made = calls.clone();
    let running = Arc::new(AtomicUsize::new(0));
    let svc = layer.layer(service_fn(move |_: Req| {
        let n = made.fetch_add(1, Ordering::SeqCst);
        let busy = running.fetch_add(1, Ordering::SeqCst) > 0;
        let running = running.clone();
        async move {
            let answer = if busy {
                Err(rejection())
            } else {
                tokio::time::sleep(ms(100)).await;
                Ok(n)
            };
            running.fetch_sub(1, Ordering::SeqCst);
            answer
        }
    }));
    (events, calls, svc)
}

#[tokio::test(start_paused = true)]
async fn a_hedge_turned_away_before_it_was_sent_gives_its_budget_back() {
    let budget = support::one_retry();
    let (events, calls, mut svc) = one_at_a_time_under_a_hedge(budget.clone(), || Shed.into());
    // Each call's hedge, due at 10 ms, is turned away at once while the original runs: each
    // gives its hedge back, so the budget of one hedge lets every call hedge.
    for i in 0..3 {
        let answer = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(answer, 2 * i, "the original answers");
        assert_eq!(calls.load(Ordering::SeqCst), 2 * i + 2, "call {i} hedged");
        assert!(budget.can_retry(), "the hedge never sent is given back");
    }
    // The copy was handed to the service below: `Sent` reports it, as the metric counts it.
    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(events
        .iter()
        .all(|e| matches!(e, HedgeEvent::Sent { hedge: 1, .. })));
}

#[tokio::test(start_paused = true)]
async fn a_hedge_sent_and_failed_keeps_its_budget_spent() {
    let budget = support::one_retry();
    let (_, calls, mut svc) = one_at_a_time_under_a_hedge(budget.clone(), || "503".into());
    let answer = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(answer, 0, "the original answers");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the call hedged");
    // The hedge reached the service and failed there: it was sent, and stays spent.
    assert!(!budget.can_retry(), "the hedge sent is spent");
    let answer = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(answer, 2);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "no budget left to hedge");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_turned_away_before_it_was_sent_does_not_drain_a_token_bucket() {
    // Four tokens: hedges stop once failures take two more than successes give back (0.1 each).
    let budget = RetryBudget::token_bucket(4.0, 0.1).unwrap();
    let (_, calls, mut svc) = one_at_a_time_under_a_hedge(budget.clone(), || Shed.into());
    for i in 0..5 {
        svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 2 * i + 2, "call {i} hedged");
    }
    assert!(budget.can_retry(), "the rejections took no token");

    // A hedge that reached the service and failed there is a failure, and takes a token.
    let budget = RetryBudget::token_bucket(4.0, 0.1).unwrap();
    let (_, calls, mut svc) = one_at_a_time_under_a_hedge(budget.clone(), || "503".into());
    for _ in 0..5 {
        svc.ready().await.unwrap().call(get()).await.unwrap();
    }
    // Tokens: 4, then 3.1, 2.2 and 1.3 after each of the first three calls' failed hedge and
    // success; at half or below, the fourth and fifth calls do not hedge.
    assert_eq!(calls.load(Ordering::SeqCst), 8);
    assert!(!budget.can_retry());
}

/// An original call a layer below turned away before it was sent takes no token either: a
/// saturated bulkhead below does not stop hedging for the calls it lets through.
#[tokio::test(start_paused = true)]
async fn an_original_turned_away_before_it_was_sent_does_not_drain_a_token_bucket() {
    // Four tokens: hedges stop once failures take two more than successes give back (0.1 each).
    let budget = RetryBudget::token_bucket(4.0, 0.1).unwrap();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget.clone())
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let made = calls.clone();
    // Every second call is turned away at once; the others answer at once.
    let mut svc = layer.layer(service_fn(move |_: Req| {
        let n = made.fetch_add(1, Ordering::SeqCst);
        async move {
            if n % 2 == 1 {
                Err::<usize, BoxError>(Shed.into())
            } else {
                Ok(n)
            }
        }
    }));
    for i in 0..10 {
        let answer = svc.ready().await.unwrap().call(get()).await;
        assert_eq!(answer.is_err(), i % 2 == 1, "call {i}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 10, "no call hedged");
    assert!(budget.can_retry(), "the rejections took no token");
    // Full: four tokens of four (not merely `max_tokens: 4.0`).
    assert_eq!(
        format!("{budget:?}"),
        "RetryBudget::TokenBucket { max_tokens: 4.0, token_ratio: 0.1, tokens: 4.0 }"
    );
}

/// A real bulkhead of one below the hedge: while the original holds the permit, each hedge is
/// rejected with `Full` before it is sent, and gives its hedge back.
#[tokio::test(start_paused = true)]
async fn a_hedge_a_full_bulkhead_below_rejects_gives_its_budget_back() {
    use seawall::bulkhead::BulkheadLayer;

    let budget = support::one_retry();
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = sent.clone();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget.clone())
        .on_event(move |_: &Name, e: &HedgeEvent| {
            if matches!(e, HedgeEvent::Sent { .. }) {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        })
        .build()
        .unwrap();
    let bulkhead = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let replicas = Replicas::new();
    let mut svc = layer.layer(bulkhead.layer(replicas.service(|_| ms(100), |_| false)));
    for i in 0..3 {
        let answer = svc.ready().await.unwrap().call(get()).await.unwrap();
        assert_eq!(answer, i, "the original answers");
        assert_eq!(sent.load(Ordering::SeqCst), i + 1, "call {i} hedged");
        assert!(
            budget.can_retry(),
            "call {i}: the rejected hedge is given back"
        );
    }
    assert_eq!(replicas.calls.count(), 3, "no hedge got past the bulkhead");
}

#[tokio::test(start_paused = true)]
async fn no_copy_is_sent_once_the_calls_deadline_has_passed() {
    use seawall_core::deadline::RequestDeadline;

    let replicas = Replicas::new();
    let mut svc = fixed(ms(10), 3).layer(replicas.service(|_| ms(100), |_| false));
    // Hedges are due at 10, 20 and 30 ms; the deadline at 25 ms leaves room for the first two.
    let mut req = get();
    req.set_deadline(Instant::now() + ms(25));
    svc.ready().await.unwrap().call(req).await.unwrap();
    let starts: Vec<_> = replicas.calls.all().iter().map(|c| c.at).collect();
    assert_eq!(starts.len(), 3, "{starts:?}");
    assert_eq!(starts[2] - starts[0], ms(20));

    // A deadline before the first hedge is due: no copy at all.
    let before = replicas.calls.count();
    let mut req = get();
    req.set_deadline(Instant::now() + ms(10));
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(replicas.calls.count() - before, 1);
}

#[tokio::test(start_paused = true)]
async fn no_copy_is_made_for_a_hedge_whose_timer_would_fire_past_the_deadline() {
    use seawall_core::deadline::RequestDeadline;

    let copies = Arc::new(AtomicUsize::new(0));
    let counted = copies.clone();
    let layer = HedgeLayer::builder()
        .delay(Duration::from_micros(10_300))
        .budget(RetryBudget::unlimited())
        .clone_with(move |req: &Req| {
            counted.fetch_add(1, Ordering::SeqCst);
            Some(req.clone())
        })
        .build()
        .unwrap();
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(|_| ms(100), |_| false));

    // The hedge is due at 10.3 ms, but its timer fires on the 11 ms tick, past the deadline at
    // 10.6 ms: no copy could be sent, so none is made.
    let mut req = get();
    req.set_deadline(Instant::now() + Duration::from_micros(10_600));
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(copies.load(Ordering::SeqCst), 0);
    assert_eq!(replicas.calls.count(), 1);

    // With more than a tick to spare, the copy is made and sent.
    let mut req = get();
    req.set_deadline(Instant::now() + Duration::from_micros(11_400));
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(copies.load(Ordering::SeqCst), 1);
    assert_eq!(replicas.calls.count(), 3);
}

/// Rides in a request's extensions: counts the copies made of the request, and how many of
/// them are alive (the replicas drop the requests they are called with).
#[derive(Debug)]
struct Copies {
    made: Arc<AtomicUsize>,
    alive: Arc<()>,
}

impl Clone for Copies {
    fn clone(&self) -> Self {
        self.made.fetch_add(1, Ordering::SeqCst);
        Copies {
            made: self.made.clone(),
            alive: self.alive.clone(),
        }
    }
}

impl Copies {
    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    fn alive(&self) -> usize {
        Arc::strong_count(&self.alive) - 1
    }
}

/// A request whose deadline is `deadline_in` from now, and what tells of its copies.
fn tracked_get(deadline_in: Duration) -> (Req, Copies) {
    use seawall_core::deadline::RequestDeadline;

    let copies = Copies {
        made: Arc::default(),
        alive: Arc::default(),
    };
    let mut req = get();
    req.extensions_mut().insert(Copies {
        made: copies.made.clone(),
        alive: copies.alive.clone(),
    });
    req.set_deadline(Instant::now() + deadline_in);
    (req, copies)
}

#[tokio::test(start_paused = true)]
async fn a_copy_a_late_first_poll_leaves_no_room_for_is_dropped_at_that_poll() {
    use tokio_test::{assert_pending, assert_ready_ok};

    let replicas = Replicas::new();
    let mut svc = fixed(ms(50), 1).layer(replicas.service(|_| ms(100), |_| false));

    // Counted from the call, the hedge would be due at 50 ms, well before the deadline at 80 ms,
    // so the call copies the request.
    let (req, copies) = tracked_get(ms(80));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(req));
    assert_eq!(copies.made(), 1);
    assert_eq!(copies.alive(), 1, "the copy is kept for the hedge");
    // First polled at 40 ms: the fixed delay counts from there, so the hedge would be due at
    // 90 ms, past the deadline. The copy is dropped at once, and no timer wakes the call for it.
    tokio::time::advance(ms(40)).await;
    assert_pending!(fut.poll());
    assert_eq!(copies.alive(), 0, "the copy is dropped");
    tokio::time::advance(ms(55)).await;
    assert!(!fut.is_woken(), "no wake-up for a hedge never sent");
    // The original, first polled at 40 ms too, answers at 140 ms.
    tokio::time::advance(ms(45)).await;
    assert_eq!(assert_ready_ok!(fut.poll()), 0);
    assert_eq!(replicas.calls.count(), 1);
    assert_eq!(copies.made(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedgeable_call_copies_its_request_at_the_call_even_when_the_original_answers_at_once() {
    // The copy kept for the hedge is made before the original is first polled, so a request whose
    // clone allocates (an `http::Request`'s headers and extensions) allocates on every hedgeable
    // call, a hedge sent or not.
    let replicas = Replicas::new();
    let svc = fixed(ms(50), 1).layer(replicas.service(|_| Duration::ZERO, |_| false));
    let (req, copies) = tracked_get(Duration::from_secs(1));
    assert_eq!(svc.oneshot(req).await.unwrap(), 0);
    assert_eq!(replicas.calls.count(), 1, "no hedge is sent");
    assert_eq!(copies.made(), 1, "one copy, made at the call");
    assert_eq!(copies.alive(), 0, "and dropped with the call");

    // While no percentile delay is known yet, nothing is copied.
    let percentile = HedgeLayer::builder()
        .percentile(0.9, 10, Duration::from_secs(1))
        .build()
        .unwrap();
    let (req, copies) = tracked_get(Duration::from_secs(1));
    let svc = percentile.layer(replicas.service(|_| Duration::ZERO, |_| false));
    svc.oneshot(req).await.unwrap();
    assert_eq!(copies.made(), 0, "no delay known, no copy");
}

#[tokio::test(start_paused = true)]
async fn the_last_hedge_before_the_deadline_sends_the_request_kept_not_a_copy() {
    let replicas = Replicas::new();
    let mut svc = fixed(ms(10), 2).layer(replicas.service(|_| ms(100), |_| false));

    // Hedges due at 10 and 20 ms, the deadline at 15 ms: the first hedge is the last, and sends
    // the copy made at the call rather than a copy of it kept for a second hedge never sent.
    let (req, copies) = tracked_get(ms(15));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(req));
    assert!(fut.poll().is_pending());
    tokio::time::advance(ms(10)).await;
    assert!(fut.poll().is_pending());
    assert_eq!(replicas.calls.count(), 2, "the first hedge is sent");
    assert_eq!(copies.made(), 1, "one copy, made at the call");
    assert_eq!(copies.alive(), 0, "nothing kept for a second hedge");
    tokio::time::advance(ms(90)).await;
    assert_eq!(fut.await.unwrap(), 0);
    assert_eq!(replicas.calls.count(), 2);

    // With room for the second hedge before the deadline, the request is copied for each.
    let (req, copies) = tracked_get(ms(25));
    let before = replicas.calls.count();
    svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(replicas.calls.count() - before, 3);
    assert_eq!(copies.made(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failure_while_a_hedge_waits_for_readiness_is_returned_at_once() {
    use tokio_test::{assert_pending, assert_ready, assert_ready_err};

    let budget = support::one_retry();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget.clone())
        .build()
        .unwrap();
    let replicas = Replicas::new();
    // One call at a time underneath: the hedge due at 10 ms waits for the permit the original
    // holds, and the original fails at 50 ms.
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(1)
        .service(replicas.service(|_| ms(50), |_| true));
    let mut other = svc.clone();
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    assert_pending!(fut.poll());
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    assert!(!budget.can_retry(), "the waiting hedge holds its share");
    tokio::time::advance(ms(40)).await;
    let error = assert_ready_err!(fut.poll());
    assert_eq!(error.to_string(), "replica 0 failed");
    // The caller still holds the finished future: the hedge is given back and holds no permit.
    assert!(budget.can_retry(), "the hedge never sent is given back");
    let mut ready = tokio_test::task::spawn(other.ready());
    assert_ready!(ready.poll()).unwrap();
    drop(ready);
    drop(fut);
    assert_eq!(replicas.calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_finished_call_holds_no_reservation_or_budget_for_a_hedge_never_sent() {
    use tokio_test::{assert_pending, assert_ready, assert_ready_ok};

    let (budget, replicas, mut svc) = one_permit_under_a_hedge(ms(50));
    let mut other = svc.clone();
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    assert_pending!(fut.poll());
    // The hedge is due at 10 ms and waits for the one permit, held by the original call.
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    tokio::time::advance(ms(40)).await;
    assert_eq!(assert_ready_ok!(fut.poll()), 0);
    // The caller still holds the finished future: the permit the hedge was waiting for and the
    // hedge taken from the budget are back already.
    assert!(budget.can_retry(), "the hedge never sent is given back");
    let mut ready = tokio_test::task::spawn(other.ready());
    assert_ready!(ready.poll()).unwrap();
    drop(ready);
    drop(fut);
    assert_eq!(replicas.calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_while_a_hedge_waits_for_readiness_holds_no_reservation_or_budget() {
    use tokio_test::{assert_pending, assert_ready};

    let (budget, replicas, mut svc) = one_permit_under_a_hedge(ms(100));
    let mut other = svc.clone();
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    assert_pending!(fut.poll());
    // The hedge is due at 10 ms and waits for the one permit, held by the original call.
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    assert!(!budget.can_retry(), "the waiting hedge holds its share");
    let mut ready = tokio_test::task::spawn(other.ready());
    assert!(ready.poll().is_pending(), "the original holds the permit");
    drop(ready);
    // The caller gives up (a timeout above): the original's permit, which the hedge was queued
    // for, and the hedge taken from the budget come back with the call.
    tokio::time::advance(ms(10)).await;
    drop(fut);
    assert!(budget.can_retry(), "the hedge never sent is given back");
    let mut ready = tokio_test::task::spawn(other.ready());
    assert_ready!(ready.poll()).unwrap();
    drop(ready);
    assert_eq!(replicas.calls.count(), 1);
    assert_eq!(replicas.cancelled(), 1, "the original is cancelled");
}

#[tokio::test(start_paused = true)]
async fn a_hedge_waiting_for_readiness_gives_up_when_the_deadline_passes() {
    use seawall_core::deadline::RequestDeadline;
    use tokio_test::{assert_pending, assert_ready, assert_ready_ok};

    let (budget, replicas, mut svc) = one_permit_under_a_hedge(ms(100));
    let mut other = svc.clone();
    let mut req = get();
    req.set_deadline(Instant::now() + ms(30));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(req));
    assert_pending!(fut.poll());
    // The hedge is due at 10 ms and waits for the one permit, held by the original call.
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    assert!(!budget.can_retry(), "the waiting hedge holds its share");
    // At the deadline no copy may start: the call is woken to give the hedge up.
    tokio::time::advance(ms(20)).await;
    assert!(fut.is_woken(), "woken at the deadline");
    assert_pending!(fut.poll());
    assert!(budget.can_retry(), "the hedge never sent is given back");
    // The original runs on and answers. The caller still holds the finished future: the permit
    // the original released is free, not taken by the hedge given up.
    tokio::time::advance(ms(70)).await;
    assert_eq!(assert_ready_ok!(fut.poll()), 0);
    let mut ready = tokio_test::task::spawn(other.ready());
    assert_ready!(ready.poll()).unwrap();
    drop(ready);
    drop(fut);
    assert_eq!(replicas.calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_given_up_at_the_deadline_takes_no_permit_another_caller_releases() {
    use seawall_core::deadline::RequestDeadline;
    use tokio_test::{assert_pending, assert_ready, assert_ready_ok};

    let (_budget, replicas, mut svc) = permits_under_a_hedge(2, ms(100));
    // Another caller holds the second permit, so the hedge due at 10 ms waits for it.
    let mut holder = svc.clone();
    holder.ready().await.unwrap();
    let mut third = svc.clone();
    let mut req = get();
    req.set_deadline(Instant::now() + ms(30));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(req));
    assert_pending!(fut.poll());
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    // At the deadline the hedge is given up, with the original still running.
    tokio::time::advance(ms(20)).await;
    assert_pending!(fut.poll());
    // The other caller lets its permit go: it is free for the next caller, not kept for the hedge.
    drop(holder);
    let mut ready = tokio_test::task::spawn(third.ready());
    assert_ready!(ready.poll()).unwrap();
    drop(ready);
    tokio::time::advance(ms(70)).await;
    assert_eq!(assert_ready_ok!(fut.poll()), 0);
    assert_eq!(replicas.calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn sent_event_says_when_the_hedge_went_out_after_waiting_for_readiness() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(RetryBudget::unlimited())
        .on_event(move |_: &Name, e: &HedgeEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let replicas = Replicas::new();
    // Two permits underneath: the original (100 ms) and another caller's call (30 ms) hold them,
    // so the hedge due at 10 ms waits until 30 ms for one.
    let latency = |n| [ms(100), ms(30), ms(10)][n];
    let mut svc = tower::ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(2)
        .service(replicas.service(latency, |_| false));
    let mut other = svc.clone();
    let start = Instant::now();
    let call = svc.ready().await.unwrap().call(get());
    let other_call = other.ready().await.unwrap().call(get());
    let (answer, _) = tokio::join!(call, other_call);
    assert_eq!(answer.unwrap(), 2, "the hedge answered");
    assert_eq!(replicas.calls.all()[2].at - start, ms(30));
    assert_eq!(
        *events.lock().unwrap(),
        [
            HedgeEvent::Sent {
                hedge: 1,
                after: ms(30)
            },
            HedgeEvent::Won { hedge: 1 },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn copies_that_lose_the_deadline_are_still_bounded_by_it() {
    use seawall_core::deadline::RequestDeadline;

    // Copies rebuilt from the method, URI and body: the extensions, and the deadline in them, are
    // left behind.
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .max_hedges(3)
        .budget(RetryBudget::unlimited())
        .clone_with(|req: &Req| {
            http::Request::builder()
                .method(req.method().clone())
                .uri(req.uri().clone())
                .body(*req.body())
                .ok()
        })
        .build()
        .unwrap();
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(|_| ms(100), |_| false));
    // Hedges are due at 10, 20 and 30 ms; the deadline at 25 ms, read from the original request,
    // leaves room for the first two.
    let deadline = Instant::now() + ms(25);
    let mut req = get();
    req.set_deadline(deadline);
    svc.ready().await.unwrap().call(req).await.unwrap();
    let calls = replicas.calls.all();
    assert_eq!(calls.len(), 3, "{calls:?}");
    assert!(
        calls.iter().all(|call| call.deadline == Some(deadline)),
        "every copy carries the call's deadline: {calls:?}"
    );
}

/// Copies the cloner stamps with a deadline of their own: a later one is replaced with the call's,
/// so the layers below do not work to a time the hedge gives up before; an earlier one is kept.
#[tokio::test(start_paused = true)]
async fn a_copy_keeps_its_own_deadline_only_when_it_is_earlier() {
    use seawall_core::deadline::RequestDeadline;

    for own in [ms(1000), ms(15)] {
        let start = Instant::now();
        let layer = HedgeLayer::builder()
            .delay(ms(10))
            .max_hedges(1)
            .budget(RetryBudget::unlimited())
            .clone_with(move |req: &Req| {
                let mut copy = req.clone();
                copy.set_deadline(start + own);
                Some(copy)
            })
            .build()
            .unwrap();
        let replicas = Replicas::new();
        let mut svc = layer.layer(replicas.service(|_| ms(20), |_| false));
        let deadline = start + ms(100);
        let mut req = get();
        req.set_deadline(deadline);
        svc.ready().await.unwrap().call(req).await.unwrap();
        let calls = replicas.calls.all();
        assert_eq!(calls.len(), 2, "{own:?}: {calls:?}");
        assert_eq!(
            calls[1].deadline,
            Some((start + own).min(deadline)),
            "{own:?}: {calls:?}"
        );
    }
}

/// A rejection a policy may ignore, as a bulkhead's `Full` is, of the call it names.
#[derive(Debug)]
struct Rejected(usize);

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "call {} rejected", self.0)
    }
}

impl std::error::Error for Rejected {}

/// How a call of [`ignoring_rejections`]'s service answers.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    /// `Err("503")`: a failure.
    Fail,
    /// `Err(Rejected(n))`: an ignored answer.
    Reject,
}

/// A hedge due at 10 ms whose policy ignores [`Rejected`], over a service whose call `n`, given
/// `(latency, answer) = script(n)`, answers `answer` after `latency` (at once when it is zero).
fn ignoring_rejections(
    script: impl Fn(usize) -> (Duration, Answer) + Send + Sync + 'static,
) -> impl Service<Req, Response = usize, Error = BoxError> {
    use seawall_retry::policy::{Classified, Ignoring};

    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(RetryBudget::unlimited())
        .policy(Ignoring::<Classified, Rejected>::new(Classified::default()))
        .build()
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let script = Arc::new(script);
    layer.layer(service_fn(move |_: Req| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let (latency, answer) = script(n);
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            match answer {
                Answer::Ok => Ok(n),
                Answer::Fail => Err::<usize, BoxError>("503".into()),
                Answer::Reject => Err(Rejected(n).into()),
            }
        }
    }))
}

#[tokio::test(start_paused = true)]
async fn an_ignored_answer_does_not_win_while_another_copy_runs() {
    // The hedge is rejected at once at 10 ms; the original answers at 100 ms.
    let start = Instant::now();
    let svc = ignoring_rejections(|n| match n {
        0 => (ms(100), Answer::Ok),
        _ => (ms(0), Answer::Reject),
    });
    assert_eq!(svc.oneshot(get()).await.unwrap(), 0);
    assert_eq!(Instant::now() - start, ms(100));
}

#[tokio::test(start_paused = true)]
async fn a_failure_is_returned_rather_than_a_later_ignored_answer() {
    // The original fails at 30 ms; the hedge, sent at 10 ms, is rejected at 50 ms. The failure
    // is what the call ended with, for a retry above to see.
    let start = Instant::now();
    let svc = ignoring_rejections(|n| match n {
        0 => (ms(30), Answer::Fail),
        _ => (ms(40), Answer::Reject),
    });
    let error = svc.oneshot(get()).await.unwrap_err();
    assert!(!seawall_core::error::is::<Rejected>(&*error), "{error}");
    assert_eq!(error.to_string(), "503");
    assert_eq!(Instant::now() - start, ms(50));
}

#[tokio::test(start_paused = true)]
async fn when_every_copy_is_ignored_the_last_ignored_answer_is_returned() {
    // The hedge is rejected at once at 10 ms, while the original runs: the call waits for the
    // original, rejected at 100 ms, and returns its rejection then.
    let start = Instant::now();
    let svc = ignoring_rejections(|n| match n {
        0 => (ms(100), Answer::Reject),
        _ => (ms(0), Answer::Reject),
    });
    let error = svc.oneshot(get()).await.unwrap_err();
    let rejected = seawall_core::error::find::<Rejected>(&*error).expect("a rejection");
    assert_eq!(rejected.0, 0, "the original's rejection");
    assert_eq!(Instant::now() - start, ms(100));
}

/// A p90 hedge over 1 s periods, from 10 calls, over a service that answers in 10 ms, except
/// every copy of every fifth call, which the future `slow()` answers.
fn p90_with_every_fifth_call<F>(
    slow: impl Fn() -> F + Clone + Send + 'static,
) -> (
    HedgeLayer,
    impl FnMut() -> Req,
    impl Service<Req, Error = BoxError>,
)
where
    F: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let layer = HedgeLayer::builder()
        .percentile(0.9, 10, Duration::from_secs(1))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    // Every copy of a request whose body is "slow" is slow, so no hedge rescues it.
    let svc = layer.layer(service_fn(move |req: Req| {
        let slow = (*req.body() == "slow").then(&slow);
        async move {
            match slow {
                Some(slow) => slow.await,
                None => {
                    tokio::time::sleep(ms(10)).await;
                    Ok(())
                }
            }
        }
    }));
    let mut made = 0u64;
    let requests = move || {
        made += 1;
        let body = if made.is_multiple_of(5) { "slow" } else { "x" };
        http::Request::get("/things/1").body(body).unwrap()
    };
    (layer, requests, svc)
}

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Makes calls with `call` until `first_until` from now, checking that the first period measured
/// leaves a delay of about 10 ms, then until `until`, checking before each call that the delay
/// lies in `steady`.
async fn percentile_delay_settles(
    layer: &HedgeLayer,
    mut call: impl AsyncFnMut(),
    first_until: Duration,
    until: Duration,
    steady: RangeInclusive<Duration>,
) {
    let start = Instant::now();
    let mut first = None;
    while Instant::now() < start + first_until {
        call().await;
        first = first.or(layer.current_delay());
    }
    let first = first.expect("the first period has ended");
    assert!(first >= ms(9) && first <= ms(11), "{first:?}");
    while Instant::now() < start + until {
        let delay = layer.current_delay().unwrap();
        assert!(
            steady.contains(&delay),
            "{delay:?} at {:?}",
            Instant::now() - start
        );
        call().await;
    }
}

#[tokio::test(start_paused = true)]
async fn slow_failures_count_towards_the_percentile_delay() {
    let slow_failure = || async {
        tokio::time::sleep(ms(1000)).await;
        Err::<(), BoxError>("gateway timeout".into())
    };
    let (layer, mut requests, mut svc) = p90_with_every_fifth_call(slow_failure);
    // The first period (to about 2 s) measures the successes: no failure is recorded before a
    // percentile of them is known, so the delay it ends with is theirs, ~10 ms. From the second
    // (to about 4 s) on, a fifth of the calls take about 1 s, and so does the 90th percentile,
    // period after period.
    let call = async || {
        let _ = svc.ready().await.unwrap().call(requests()).await;
    };
    percentile_delay_settles(&layer, call, secs(5), secs(20), ms(950)..=ms(1050)).await;
}

/// A saturated bulkhead below that turns a call away only after it waited a second for a permit
/// says nothing of how long the dependency takes: its rejections leave the delay alone.
#[tokio::test(start_paused = true)]
async fn slow_rejections_never_sent_do_not_count_towards_the_percentile_delay() {
    let slow_rejection = || async {
        tokio::time::sleep(ms(1000)).await;
        Err::<(), BoxError>(Shed.into())
    };
    let (layer, mut requests, mut svc) = p90_with_every_fifth_call(slow_rejection);
    // The first period (to about 2 s) measures the successes, ~10 ms; a fifth of the calls then
    // wait 1 s to be turned away, period after period, and the delay stays the successes'.
    let call = async || {
        let _ = svc.ready().await.unwrap().call(requests()).await;
    };
    percentile_delay_settles(&layer, call, secs(5), secs(20), ms(9)..=ms(11)).await;
}

/// A call whose original failed after 50 ms, and whose hedge then waited a second below for a
/// permit to be turned away, took the dependency 50 ms: the hedge's wait, like that of a call
/// whose every copy was turned away, leaves the delay alone.
#[tokio::test(start_paused = true)]
async fn a_hedges_wait_to_be_turned_away_does_not_count_towards_the_percentile_delay() {
    // Counts the copies of the call running, so that only its first (the original) is sent.
    let copies = Arc::new(AtomicUsize::new(0));
    let slow = {
        let copies = copies.clone();
        move || {
            let original = copies.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if original {
                    tokio::time::sleep(ms(50)).await;
                    Err::<(), BoxError>("service unavailable".into())
                } else {
                    tokio::time::sleep(ms(1000)).await;
                    Err(Shed.into())
                }
            }
        }
    };
    let (layer, mut requests, mut svc) = p90_with_every_fifth_call(slow);
    let call = async || {
        copies.store(0, Ordering::SeqCst);
        let _ = svc.ready().await.unwrap().call(requests()).await;
    };
    // The first period (to about 1 s) measures the successes, ~10 ms, and sends no hedge. From
    // then on a fifth of the calls fail after 50 ms while their hedge waits a second to be turned
    // away, and the 90th percentile is theirs, ~50 ms, not the second.
    percentile_delay_settles(&layer, call, secs(4), secs(15), ms(45)..=ms(55)).await;
}

#[tokio::test(start_paused = true)]
async fn calls_dropped_unanswered_count_towards_the_percentile_delay() {
    // Every fifth call hangs until the caller gives up on it after 500 ms.
    let (layer, mut requests, mut svc) = p90_with_every_fifth_call(std::future::pending);
    let call = async || {
        let call = svc.ready().await.unwrap().call(requests());
        let _ = tokio::time::timeout(ms(500), call).await;
    };
    // The first period (to about 1 s) measures the successes alone, ~10 ms. Two periods in, and
    // from then on, the calls given up on set the 90th percentile, ~500 ms.
    percentile_delay_settles(&layer, call, secs(4), secs(15), ms(480)..=ms(550)).await;
}

#[tokio::test(start_paused = true)]
async fn fast_failures_do_not_drag_the_percentile_delay_down() {
    let layer = HedgeLayer::builder()
        .percentile(0.9, 10, Duration::from_secs(1))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(|_| ms(50), |_| false));
    let failed = Replicas::new();
    let mut failing = layer.layer(failed.service(|_| ms(1), |_| true));
    quick_errors_leave_a_50_ms_delay(&mut svc, &mut failing, || layer.current_delay()).await;
}

#[tokio::test(start_paused = true)]
async fn calls_never_polled_do_not_count_towards_the_percentile_delay() {
    let layer = HedgeLayer::builder()
        .percentile(0.9, 5, Duration::from_secs(2))
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let replicas = Replicas::new();
    let mut svc = layer.layer(replicas.service(|_| ms(10), |_| false));
    // The first period (to about 2 s) measures 10 ms; the second has begun.
    call_for(&mut svc, ms(2_100)).await;
    let before = layer.current_delay().expect("a period has been measured");
    assert!(before >= ms(9) && before <= ms(11), "{before:?}");

    // Ten calls made and parked, never polled, then dropped a second later: none of them ran.
    let mut parked = Vec::new();
    for _ in 0..10 {
        parked.push(svc.ready().await.unwrap().call(get()));
    }
    tokio::time::advance(Duration::from_secs(1)).await;
    drop(parked);
    // A success closes the second period.
    tokio::time::advance(Duration::from_secs(1)).await;
    svc.ready().await.unwrap().call(get()).await.unwrap();
    let after = layer.current_delay().unwrap();
    assert!(after >= ms(9) && after <= ms(11), "{after:?}");
}

/// Counts how often a service is polled ready.
#[derive(Clone)]
struct CountReady<S> {
    inner: S,
    polled: Arc<AtomicUsize>,
}

impl<S: Service<Req>> Service<Req> for CountReady<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.polled.fetch_add(1, Ordering::SeqCst);
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.inner.call(req)
    }
}

#[tokio::test(start_paused = true)]
async fn a_hedge_first_due_past_the_deadline_takes_nothing() {
    use seawall_core::deadline::RequestDeadline;
    use tokio_test::{assert_pending, assert_ready_ok};

    let budget = support::one_retry();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget.clone())
        .build()
        .unwrap();
    let replicas = Replicas::new();
    let polled = Arc::new(AtomicUsize::new(0));
    let mut svc = layer.layer(CountReady {
        inner: replicas.service(|_| ms(100), |_| false),
        polled: polled.clone(),
    });
    let mut req = get();
    req.set_deadline(Instant::now() + ms(15));
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(req));
    // The hedge is due at 10 ms, before the deadline at 15 ms...
    assert_pending!(fut.poll());
    // ...but the future is next polled at 20 ms, past it: no copy is sent, and the hedge takes
    // neither the budget nor the service's readiness.
    tokio::time::advance(ms(20)).await;
    assert_pending!(fut.poll());
    assert_eq!(replicas.calls.count(), 1);
    assert_eq!(polled.load(Ordering::SeqCst), 1, "only the caller's poll");
    assert!(budget.can_retry(), "the budget is not spent");
    tokio::time::advance(ms(80)).await;
    assert_eq!(assert_ready_ok!(fut.poll()), 0);
    assert_eq!(replicas.calls.count(), 1);
    assert_eq!(polled.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_stops_hedging_and_the_original_still_answers() {
    use tokio_test::{assert_pending, assert_ready_ok};

    let budget = support::one_retry();
    let layer = HedgeLayer::builder()
        .delay(ms(10))
        .budget(budget.clone())
        .build()
        .unwrap();
    let (mock, mut handle) = tower_test::mock::pair::<Req, usize>();
    let mut svc = layer.layer(mock);
    let mut fut = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    assert_pending!(fut.poll());
    let (_, respond) = handle.next_request().await.unwrap();
    // The service fails readiness for the hedge due at 10 ms.
    handle.send_error("no endpoint");
    tokio::time::advance(ms(10)).await;
    assert_pending!(fut.poll());
    assert!(budget.can_retry(), "the hedge never sent is given back");
    // No more hedges are tried: the original answers.
    tokio::time::advance(ms(100)).await;
    assert_pending!(fut.poll());
    respond.send_response(7);
    assert_eq!(assert_ready_ok!(fut.poll()), 7);
    assert!(handle.poll_request().is_pending(), "one request only");
}
