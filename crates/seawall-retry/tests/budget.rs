//! Retry budgets: the bound holds for any sequence, budgets are shared, exhaustion is reported.

mod support;

use proptest::prelude::*;
use seawall_core::{error, BoxError, Name, Outcome};
use seawall_retry::{Backoff, BudgetExhausted, RetryBudget, RetryEvent, RetryLayer};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use support::{flaky, get, ms, one_retry, Req};
use tokio::time::Instant;
use tower::{service_fn, Layer, Service, ServiceExt};

const UNIT: u128 = 1_000_000;

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

#[derive(Debug, Clone)]
enum Op {
    Request,
    Retry,
    Advance(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Request),
        4 => Just(Op::Retry),
        1 => (1u64..3_000).prop_map(Op::Advance),
    ]
}

/// A ratio in `[0, most]`: as often a whole number of thousandths as an arbitrary float.
fn ratio(most: f64) -> impl Strategy<Value = f64> {
    let thousandths = (most * 1000.0) as u64;
    prop_oneof![
        (0..=thousandths).prop_map(|milli| milli as f64 / 1000.0),
        0.0..=most,
    ]
}

/// What one request deposits, in millionths of a retry, as the budget keeps a ratio:
/// `⌊ratio × 10⁶⌋`, exact for a ratio written as a whole number of thousandths (`1.001` is
/// 1,001,000 millionths, though `1.001 × 10⁶` is 1000999.99… in floats).
fn units(ratio: f64) -> u64 {
    let milli = (ratio * 1000.0).round();
    if milli / 1000.0 == ratio {
        milli as u64 * 1000
    } else {
        (ratio * UNIT as f64).floor() as u64
    }
}

/// `retries ≤ ratio × requests + min_per_second × ttl × (⌊elapsed / ttl⌋ + 1)`, in exact
/// integers with the ratio in millionths (see [`units`]).
fn within_bound(
    retries: u64,
    requests: u64,
    ratio_units: u64,
    min_per_second: u64,
    ttl: Duration,
    elapsed: Duration,
) -> bool {
    let windows = (elapsed.as_nanos() / ttl.as_nanos()) + 1;
    let reserve_per_window = u128::from(min_per_second) * ttl.as_nanos() * UNIT / 1_000_000_000;
    let allowed = u128::from(requests) * u128::from(ratio_units) + reserve_per_window * windows;
    u128::from(retries) * UNIT <= allowed
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

proptest! {
    #![proptest_config(seeded(256))]

    /// The ratio budget's arithmetic, driven directly with arbitrary interleavings of requests,
    /// retry attempts and time.
    #[test]
    fn ratio_budget_never_exceeds_its_bound(
        ratio in ratio(3.0),
        min_per_second in 0u32..=5,
        ttl_secs in 1u64..=5,
        ops in prop::collection::vec(op(), 0..400),
    ) {
        paused_runtime().block_on(async move {
            let ttl = Duration::from_secs(ttl_secs);
            let budget = RetryBudget::builder()
                .ratio(ratio)
                .min_per_second(min_per_second)
                .ttl(ttl)
                .build()
                .unwrap();
            let start = Instant::now();
            let (mut requests, mut retries) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Request => {
                        budget.deposit();
                        requests += 1;
                    }
                    Op::Retry => {
                        if budget.try_withdraw() {
                            retries += 1;
                        }
                    }
                    Op::Advance(ms) => {
                        tokio::time::advance(Duration::from_millis(ms)).await;
                    }
                }
                let elapsed = Instant::now() - start;
                prop_assert!(
                    within_bound(retries, requests, units(ratio), min_per_second.into(), ttl, elapsed),
                    "{retries} retries for {requests} requests over {elapsed:?}"
                );
            }
            Ok(())
        })?;
    }

    /// With time frozen, the budget is exact:
    /// `retries = ⌊⌊ratio × 10⁶⌋ × requests / 10⁶⌋ + reserve`.
    #[test]
    fn frozen_window_is_exact(
        ratio in ratio(2.0),
        min_per_second in 0u32..=3,
        requests in 0u64..500,
    ) {
        paused_runtime().block_on(async move {
            let budget = RetryBudget::builder()
                .ratio(ratio)
                .min_per_second(min_per_second)
                .ttl(Duration::from_secs(1))
                .build()
                .unwrap();
            for _ in 0..requests {
                budget.deposit();
            }
            let mut retries = 0u64;
            while budget.try_withdraw() {
                retries += 1;
                prop_assert!(retries < 10_000);
            }
            let want = units(ratio) * requests / UNIT as u64 + u64::from(min_per_second);
            prop_assert_eq!(retries, want);
            Ok(())
        })?;
    }

    /// The same bound through the retry layer, for arbitrary calls that fail a few times each,
    /// spread over time and over clones of the service and a second layer sharing the budget.
    /// Some callers give up after `give_up` ms: attempts answer at once, so a caller still waiting
    /// then is in a backoff, and the retry it waits for is given back to the budget (or, with a
    /// backoff longer than the ttl, has already left the window).
    #[test]
    fn retry_layer_stays_within_budget(
        ratio in ratio(1.0),
        min_per_second in 0u32..=3,
        backoff_ms in 1u64..3_000,
        calls in prop::collection::vec(
            (0u8..5, 0u64..1_500, 0u8..3, prop::option::of(1u64..12_000)),
            1..120,
        ),
    ) {
        paused_runtime().block_on(async move {
            let ttl = Duration::from_secs(2);
            let budget = RetryBudget::builder()
                .ratio(ratio)
                .min_per_second(min_per_second)
                .ttl(ttl)
                .build()
                .unwrap();
            let build = || {
                RetryLayer::builder()
                    .max_attempts(5)
                    .backoff(Backoff::constant(ms(backoff_ms)))
                    .budget(budget.clone())
                    .build()
                    .unwrap()
            };
            // Request i fails its first `failures[i]` attempts.
            let failures: Arc<Mutex<HashMap<u32, u8>>> = Arc::default();
            let sent = Arc::new(Mutex::new(0u64));
            let (f, s) = (failures.clone(), sent.clone());
            let inner = service_fn(move |req: http::Request<u32>| {
                *s.lock().unwrap() += 1;
                let mut f = f.lock().unwrap();
                let left = f.get_mut(req.body()).unwrap();
                let fail = *left > 0;
                *left = left.saturating_sub(1);
                async move { if fail { Err::<(), BoxError>("down".into()) } else { Ok(()) } }
            });
            let a = build().layer(inner.clone());
            let a_clone = a.clone();
            let b = build().layer(inner);
            let mut services = [a, a_clone, b];
            let start = Instant::now();
            for (id, (fails, gap_ms, which, give_up)) in calls.iter().enumerate() {
                let id = id as u32;
                failures.lock().unwrap().insert(id, *fails);
                tokio::time::advance(Duration::from_millis(*gap_ms)).await;
                let svc = &mut services[usize::from(*which)];
                let call = svc.ready().await.unwrap().call(http::Request::new(id));
                match give_up {
                    Some(after) => {
                        let _ = tokio::time::timeout(ms(*after), call).await;
                    }
                    None => {
                        let _ = call.await;
                    }
                }
                let requests = u64::from(id) + 1;
                let retries = *sent.lock().unwrap() - requests;
                let elapsed = Instant::now() - start;
                prop_assert!(
                    within_bound(retries, requests, units(ratio), min_per_second.into(), ttl, elapsed),
                    "{retries} retries for {requests} requests over {elapsed:?}"
                );
            }
            Ok(())
        })?;
    }
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_returns_the_real_error_wrapped() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = RetryLayer::builder()
        .budget(
            RetryBudget::builder()
                .ratio(0.0)
                .min_per_second(0)
                .build()
                .unwrap(),
        )
        .on_event(move |_: &Name, e: &RetryEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let err = layer.layer(svc).oneshot(get()).await.unwrap_err();
    assert_eq!(calls.count(), 1);
    let exhausted = error::find::<BudgetExhausted>(&*err).expect("BudgetExhausted in the chain");
    assert_eq!(exhausted.last_error().to_string(), "fail 0");
    assert_eq!(
        error::chain(&*err)
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        ["retry budget exhausted", "fail 0"]
    );
    assert_eq!(
        *events.lock().unwrap(),
        [RetryEvent::BudgetExhausted { attempts: 1 }]
    );
}

#[tokio::test(start_paused = true)]
async fn exhausted_budget_returns_a_failed_response_as_it_is() {
    let layer = RetryLayer::builder()
        .http()
        .budget(
            RetryBudget::builder()
                .ratio(0.0)
                .min_per_second(0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let (svc, calls) = support::statuses(vec![(503, None)]);
    let res = layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(calls.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn ratio_budget_allows_its_share() {
    // ratio 0.5, no reserve: every second failing call can be retried once.
    let layer = RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(Duration::ZERO))
        .budget(
            RetryBudget::builder()
                .ratio(0.5)
                .min_per_second(0)
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let mut svc = layer.layer(svc);
    let mut exhausted = 0;
    let mut last_errors = Vec::new();
    for _ in 0..10 {
        let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
        match error::find::<BudgetExhausted>(&*err) {
            Some(e) => {
                exhausted += 1;
                last_errors.push(e.last_error().to_string());
            }
            None => last_errors.push(err.to_string()),
        }
    }
    assert_eq!(calls.count(), 15, "10 calls + 5 retries");
    assert_eq!(exhausted, 5);
    // Every other call, from the first, finds half a retry and fails with its one attempt's
    // error; the calls between retry once and fail with the retry's.
    let want: Vec<String> = (0..5)
        .flat_map(|i| [format!("fail {}", 3 * i), format!("fail {}", 3 * i + 2)])
        .collect();
    assert_eq!(last_errors, want);
}

#[tokio::test(start_paused = true)]
async fn a_budget_exhausted_after_retries_returns_the_last_attempts_error() {
    // Two retries in the budget, five attempts allowed.
    let layer = RetryLayer::builder()
        .max_attempts(5)
        .backoff(Backoff::constant(ms(10)))
        .budget(
            RetryBudget::builder()
                .ratio(0.0)
                .min_per_second(2)
                .ttl(Duration::from_secs(1))
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let err = layer.layer(svc).oneshot(get()).await.unwrap_err();
    assert_eq!(calls.count(), 3);
    let exhausted = error::find::<BudgetExhausted>(&*err).expect("BudgetExhausted in the chain");
    assert_eq!(exhausted.last_error().to_string(), "fail 2");
    assert_eq!(
        error::chain(&*err)
            .map(|e| e.to_string())
            .collect::<Vec<_>>(),
        ["retry budget exhausted", "fail 2"]
    );
}

#[tokio::test(start_paused = true)]
async fn one_budget_is_shared_by_clones_and_layers() {
    let budget = one_retry();
    let retry = |b: &RetryBudget| {
        RetryLayer::builder()
            .backoff(Backoff::constant(ms(1)))
            .budget(b.clone())
            .build()
            .unwrap()
    };
    let (svc, calls) = flaky(usize::MAX);
    let layer = retry(&budget);
    let mut first = layer.layer(svc.clone());
    let mut clone = first.clone();
    let mut same_layer_again = layer.layer(svc.clone());
    let mut other_layer = retry(&budget).layer(svc);
    assert!(layer.budget().same(&budget));
    for svc in [&mut first, &mut clone, &mut same_layer_again] {
        svc.ready().await.unwrap().call(get()).await.unwrap_err();
    }
    other_layer
        .ready()
        .await
        .unwrap()
        .call(get())
        .await
        .unwrap_err();
    assert_eq!(calls.count(), 5, "4 calls, 1 retry between all of them");
}

#[tokio::test(start_paused = true)]
async fn token_bucket_throttles_after_failures() {
    // 4 tokens: retries allowed while more than 2 remain. Each failed attempt takes one.
    let budget = RetryBudget::token_bucket(4.0, 1.0).unwrap();
    let layer = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(ms(1)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let err = layer.layer(svc).oneshot(get()).await.unwrap_err();
    // attempt 1 fails (3 left, > 2: retry), attempt 2 fails (2 left: throttled).
    assert_eq!(calls.count(), 2);
    assert!(error::is::<BudgetExhausted>(&*err));
    // Successes refill it: back to 4.
    budget.record(Outcome::Success);
    budget.record(Outcome::Success);
    assert!(budget.can_retry());
    let (svc, calls) = flaky(1);
    layer.layer(svc).oneshot(get()).await.unwrap();
    assert_eq!(calls.count(), 2);
}

#[test]
fn layers_built_separately_have_separate_budgets() {
    let a = RetryLayer::new();
    let b = RetryLayer::new();
    assert!(!a.budget().same(b.budget()));
    assert!(a.budget().same(a.clone().budget()));
    let _: fn(Req) = |_| {};
}

#[tokio::test(start_paused = true)]
async fn a_retry_dropped_during_its_backoff_gives_its_budget_back() {
    let budget = one_retry();
    let layer = RetryLayer::builder()
        .backoff(Backoff::constant(ms(100)))
        .budget(budget.clone())
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let mut svc = layer.layer(svc);
    let call = svc.ready().await.unwrap().call(get());
    // The first attempt fails and the retry is scheduled (the budget's one retry taken); the
    // caller gives up during the backoff.
    assert!(tokio::time::timeout(ms(50), call).await.is_err());
    assert_eq!(calls.count(), 1);
    assert!(budget.can_retry(), "the retry never sent is given back");

    // A retry that is sent stays spent: the next call gets one retry, then finds the budget empty.
    let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
    let exhausted = error::find::<BudgetExhausted>(&*err).expect("BudgetExhausted in the chain");
    assert_eq!(
        exhausted.last_error().to_string(),
        "fail 2",
        "the retry's error"
    );
    assert_eq!(calls.count(), 3);
    assert!(!budget.can_retry());
}

/// A retry layer that waits `backoff` before each retry, drawing on `budget`.
fn backing_off(backoff: Duration, budget: &RetryBudget) -> RetryLayer {
    RetryLayer::builder()
        .max_attempts(2)
        .backoff(Backoff::constant(backoff))
        .budget(budget.clone())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_retry_given_back_frees_only_its_own_share() {
    use tokio_test::assert_pending;

    // Two retries, both taken by calls waiting out their backoff in the same slice.
    let budget = RetryBudget::builder()
        .ratio(0.0)
        .min_per_second(2)
        .ttl(Duration::from_secs(1))
        .build()
        .unwrap();
    let (svc, calls) = flaky(usize::MAX);
    let mut svc = backing_off(ms(100), &budget).layer(svc);
    let mut a = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    let mut b = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    assert_pending!(a.poll());
    assert_pending!(b.poll());
    assert!(!budget.can_retry());
    drop(a);
    assert!(budget.can_retry(), "the dropped call's retry is given back");
    // A third call takes it; the retry still held by the second call stays taken.
    let err = svc.ready().await.unwrap().call(get()).await.unwrap_err();
    assert_eq!(err.to_string(), "fail 3");
    assert_eq!(calls.count(), 4, "three calls and the third one's retry");
    assert!(!budget.can_retry(), "one given back, one taken again");
    drop(b);
    assert!(budget.can_retry());
}

#[tokio::test(start_paused = true)]
async fn a_retry_given_back_after_it_left_the_window_changes_nothing() {
    use tokio_test::assert_pending;

    // One retry over 1 s: a withdrawal counts for 1.1 s (a ttl and a slice).
    let budget = one_retry();
    let (svc, calls) = flaky(usize::MAX);
    let mut svc = backing_off(Duration::from_secs(2), &budget).layer(svc);
    let mut a = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    assert_pending!(a.poll());
    assert!(!budget.can_retry());
    // A's retry leaves the window at 1.1 s; B takes the retry at 1.15 s.
    tokio::time::advance(ms(1_150)).await;
    assert!(budget.can_retry());
    let mut b = tokio_test::task::spawn(svc.ready().await.unwrap().call(get()));
    assert_pending!(b.poll());
    assert!(!budget.can_retry());
    // A gives up at 1.25 s: its retry, long gone from the window, frees nothing of B's.
    tokio::time::advance(ms(100)).await;
    drop(a);
    assert!(!budget.can_retry(), "B's retry is still taken");
    drop(b);
    assert!(budget.can_retry(), "B's retry is given back");
    assert_eq!(calls.count(), 2);
}

/// A ratio budget with no reserve, so what it allows comes from its requests alone.
fn ratio_only(ratio: f64) -> RetryBudget {
    RetryBudget::builder()
        .ratio(ratio)
        .min_per_second(0)
        .ttl(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A ratio that float arithmetic cannot hold exactly still allows its whole share: 4.1 × 10⁶ is
/// 4099999.99… in floats, yet 10 requests at 4.1 allow 41 retries, not 40.
#[tokio::test(start_paused = true)]
async fn a_ratio_counts_whole_millionths_despite_float_error() {
    for (ratio, requests, want) in [
        (4.1, 10, 41),
        (1.001, 1000, 1001),
        (0.000249, 1_000_000, 249),
    ] {
        let budget = ratio_only(ratio);
        for _ in 0..requests {
            budget.deposit();
        }
        let mut retries = 0;
        while budget.try_withdraw() {
            retries += 1;
        }
        assert_eq!(retries, want, "{ratio}");
    }
}

/// Two requests at once do not make a quiet client batch its requests: the next one, 9 s later,
/// is counted from when it was made.
#[tokio::test(start_paused = true)]
async fn a_quiet_request_after_a_pair_keeps_its_credit() {
    let budget = ratio_only(1.0);
    budget.deposit();
    budget.deposit();
    tokio::time::advance(Duration::from_secs(9)).await;
    budget.deposit();
    tokio::time::advance(Duration::from_millis(1500)).await;
    assert!(
        budget.try_withdraw(),
        "a request made 1.5 s ago allows no retry"
    );
    assert!(!budget.try_withdraw());
}

/// A client sending two requests together every 9 s: the last pair, 9.5 s old, still counts.
#[tokio::test(start_paused = true)]
async fn pairs_every_nine_seconds_keep_their_credit() {
    let budget = ratio_only(0.5);
    for _ in 0..6 {
        budget.deposit();
        budget.deposit();
        tokio::time::advance(Duration::from_secs(9)).await;
    }
    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(
        budget.try_withdraw(),
        "the pair made 9.5 s ago allows no retry"
    );
    assert!(!budget.try_withdraw());
}

/// After a burst, with no retry to file its last batch, a quiet client's requests join that batch
/// until it is full (at most 31 of them) and count from the burst; every request after that counts
/// from when it was made.
#[tokio::test(start_paused = true)]
async fn a_quiet_client_after_a_burst_loses_at_most_a_batch_of_credit() {
    let budget = ratio_only(0.5);
    for _ in 0..1000 {
        budget.deposit();
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    for _ in 0..45 {
        budget.deposit();
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // At 56 s the window holds the requests made at 47..=55 s, all after the burst's batch filled:
    // 9 × 0.5, 4 whole retries.
    let retries = (0..1_000).take_while(|_| budget.try_withdraw()).count();
    assert_eq!(retries, 4);
}
