//! Composition laws, checked with proptest over random stacks of seawall layers in random order with
//! random valid configurations, around an inner service with random latency, errors and
//! cancellations, in paused virtual time. Each law is its own test and shrinks to a minimal stack.
//!
//! `SEAWALL_PROPTEST_CASES` raises the number of cases (default 256 per law).

use proptest::prelude::*;
use seawall::{
    core::{BoxError, RequestDeadline},
    fallback::FallbackLayer,
    retry::{HedgeLayer, RetryBudget, RetryLayer},
    timeout::TimeoutLayer,
};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;
use tower::{buffer::BufferLayer, service_fn, util::BoxCloneService, Layer, ServiceExt};

/// A request: how long the inner service works on it, whether it fails, and when the caller gives
/// up on it (a cancellation).
#[derive(Debug, Clone)]
struct Req {
    work_ms: u64,
    fail: bool,
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

type Svc = BoxCloneService<Req, u64, BoxError>;

/// One layer of a random stack (outermost first).
#[derive(Debug, Clone)]
enum LayerSpec {
    /// A timeout of `ms`.
    Timeout { ms: u64 },
    /// A fallback answering every error with `FALLBACK`.
    TotalFallback,
    /// A fallback answering only timeouts.
    TimeoutFallback,
    /// tower's `Buffer` (seawall under tower).
    Buffer { capacity: usize },
    /// A retry of every error, up to `max_attempts`, under a ratio budget (no per-second floor).
    Retry { max_attempts: u32, ratio_pct: u32 },
    /// A hedge after `delay_ms`, at most `max_hedges` copies.
    Hedge { delay_ms: u64, max_hedges: u32 },
}

const FALLBACK: u64 = u64::MAX;

impl LayerSpec {
    fn apply(&self, inner: Svc) -> Svc {
        match *self {
            LayerSpec::Timeout { ms } => {
                BoxCloneService::new(TimeoutLayer::new(Duration::from_millis(ms)).layer(inner))
            }
            LayerSpec::TotalFallback => BoxCloneService::new(
                FallbackLayer::builder()
                    .build_fn(|_| Ok(FALLBACK))
                    .expect("valid fallback")
                    .layer(inner),
            ),
            LayerSpec::TimeoutFallback => BoxCloneService::new(
                FallbackLayer::builder()
                    .on_error_type::<seawall::timeout::Elapsed>()
                    .build_fn(|_| Ok(FALLBACK))
                    .expect("valid fallback")
                    .layer(inner),
            ),
            LayerSpec::Buffer { capacity } => {
                BoxCloneService::new(BufferLayer::new(capacity).layer(inner))
            }
            LayerSpec::Retry {
                max_attempts,
                ratio_pct,
            } => {
                let budget = RetryBudget::builder()
                    .ratio(ratio_pct as f64 / 100.0)
                    .min_per_second(0)
                    .build()
                    .expect("valid budget");
                let layer = RetryLayer::builder()
                    .max_attempts(max_attempts)
                    .budget(budget)
                    .seed(7)
                    .build()
                    .expect("valid retry");
                BoxCloneService::new(layer.layer(inner))
            }
            LayerSpec::Hedge {
                delay_ms,
                max_hedges,
            } => {
                let layer = HedgeLayer::builder()
                    .delay(Duration::from_millis(delay_ms))
                    .max_hedges(max_hedges)
                    .build()
                    .expect("valid hedge");
                BoxCloneService::new(layer.layer(inner))
            }
        }
    }

    /// Whether this layer can make a call take longer than the layers inside it allow.
    fn extends_time(&self) -> bool {
        match self {
            LayerSpec::Timeout { .. }
            | LayerSpec::TotalFallback
            | LayerSpec::TimeoutFallback
            | LayerSpec::Buffer { .. } => false,
            LayerSpec::Retry { .. } | LayerSpec::Hedge { .. } => true,
        }
    }
}

fn layer_spec() -> impl Strategy<Value = LayerSpec> {
    prop_oneof![
        (1u64..500).prop_map(|ms| LayerSpec::Timeout { ms }),
        Just(LayerSpec::TotalFallback),
        Just(LayerSpec::TimeoutFallback),
        (1usize..64).prop_map(|capacity| LayerSpec::Buffer { capacity }),
        retry_spec(),
        (1u64..300, 1u32..3).prop_map(|(delay_ms, max_hedges)| LayerSpec::Hedge {
            delay_ms,
            max_hedges
        }),
    ]
}

fn retry_spec() -> impl Strategy<Value = LayerSpec> {
    (1u32..5, 0u32..100).prop_map(|(max_attempts, ratio_pct)| LayerSpec::Retry {
        max_attempts,
        ratio_pct,
    })
}

/// Layers that neither multiply calls nor are a retry: for stacks around exactly one retry.
fn plain_layer_spec() -> impl Strategy<Value = LayerSpec> {
    prop_oneof![
        (1u64..500).prop_map(|ms| LayerSpec::Timeout { ms }),
        Just(LayerSpec::TotalFallback),
        Just(LayerSpec::TimeoutFallback),
        (1usize..64).prop_map(|capacity| LayerSpec::Buffer { capacity }),
    ]
}

/// A call: the request, and after how long the caller drops it (None: waits for the answer).
#[derive(Debug, Clone)]
struct Call {
    start_ms: u64,
    req: Req,
    cancel_after_ms: Option<u64>,
}

fn call() -> impl Strategy<Value = Call> {
    (
        0u64..1_000,
        0u64..1_000,
        prop::bool::weighted(0.3),
        prop::option::weighted(0.2, 0u64..300),
    )
        .prop_map(|(start_ms, work_ms, fail, cancel_after_ms)| Call {
            start_ms,
            req: Req {
                work_ms,
                fail,
                deadline: None,
            },
            cancel_after_ms,
        })
}

fn cases() -> u32 {
    std::env::var("SEAWALL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// The inner service: sleeps `work_ms`, then fails or answers `work_ms`. Counts calls in flight.
fn inner(in_flight: Arc<AtomicUsize>, calls: Arc<AtomicUsize>) -> Svc {
    BoxCloneService::new(service_fn(move |req: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        let in_flight = in_flight.clone();
        in_flight.fetch_add(1, Ordering::SeqCst);
        struct Done(Arc<AtomicUsize>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let done = Done(in_flight);
        async move {
            let _done = done;
            tokio::time::sleep(Duration::from_millis(req.work_ms)).await;
            if req.fail {
                Err::<u64, BoxError>("inner failure".into())
            } else {
                Ok(req.work_ms)
            }
        }
    }))
}

/// What happened to one call that was not cancelled.
#[derive(Debug)]
struct Outcome {
    took: Duration,
    result: Result<u64, String>,
}

/// What a run left behind.
#[derive(Debug)]
struct Run {
    /// Outcomes of the calls that were not cancelled.
    outcomes: Vec<Outcome>,
    /// Inner calls still running once everything settled.
    in_flight: usize,
    /// Inner calls made in all.
    inner_calls: usize,
}

/// Runs `calls` through the stack in paused time.
fn run(stack: &[LayerSpec], calls: &[Call]) -> Run {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let in_flight = Arc::new(AtomicUsize::new(0));
        let inner_calls = Arc::new(AtomicUsize::new(0));
        let svc = stack.iter().rev().fold(
            inner(in_flight.clone(), inner_calls.clone()),
            |svc, layer| layer.apply(svc),
        );
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for c in calls.iter().cloned() {
            let svc = svc.clone();
            tasks.spawn(async move {
                tokio::time::sleep_until(start + Duration::from_millis(c.start_ms)).await;
                let t0 = Instant::now();
                let fut = svc.oneshot(c.req);
                match c.cancel_after_ms {
                    Some(ms) => {
                        let _ = tokio::time::timeout(Duration::from_millis(ms), fut).await;
                        None
                    }
                    None => {
                        let result = fut.await.map_err(|e| e.to_string());
                        Some(Outcome {
                            took: t0.elapsed(),
                            result,
                        })
                    }
                }
            });
        }
        // Nothing hangs: everything settles within an hour of virtual time.
        let outcomes = tokio::time::timeout(Duration::from_secs(3600), async {
            let mut outcomes = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                outcomes.extend(joined.expect("no task panics"));
            }
            outcomes
        })
        .await
        .expect("every call settles");
        drop(svc);
        // Let Buffer workers wind down.
        tokio::time::sleep(Duration::from_secs(1)).await;
        Run {
            outcomes,
            in_flight: in_flight.load(Ordering::SeqCst),
            inner_calls: inner_calls.load(Ordering::SeqCst),
        }
    })
}

/// The deadline the outermost timeout guarantees, if no layer above it can extend a call.
fn guaranteed_bound(stack: &[LayerSpec]) -> Option<Duration> {
    for layer in stack {
        if let LayerSpec::Timeout { ms } = layer {
            return Some(Duration::from_millis(*ms));
        }
        if layer.extends_time() {
            return None;
        }
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    /// No response arrives after its deadline.
    #[test]
    fn no_response_after_its_deadline(
        stack in prop::collection::vec(layer_spec(), 2..=6),
        calls in prop::collection::vec(call(), 1..20),
    ) {
        let outcomes = run(&stack, &calls).outcomes;
        if let Some(bound) = guaranteed_bound(&stack) {
            for o in &outcomes {
                prop_assert!(o.took <= bound, "took {:?} > {:?}: {:?}", o.took, bound, o.result);
            }
        }
    }

    /// A total fallback on the outside lets no error through.
    #[test]
    fn total_fallback_lets_no_error_through(
        stack in prop::collection::vec(layer_spec(), 1..=5),
        calls in prop::collection::vec(call(), 1..20),
    ) {
        let mut stack = stack;
        stack.insert(0, LayerSpec::TotalFallback);
        let outcomes = run(&stack, &calls).outcomes;
        for o in &outcomes {
            prop_assert!(o.result.is_ok(), "{:?}", o.result);
        }
    }

    /// Nothing panics or hangs, cancellation included, and once every call has settled no inner
    /// call is left running (cancelled and timed-out calls were really dropped).
    #[test]
    fn nothing_hangs_and_nothing_leaks(
        stack in prop::collection::vec(layer_spec(), 2..=6),
        calls in prop::collection::vec(call(), 1..30),
    ) {
        let run = run(&stack, &calls);
        prop_assert!(run.outcomes.len() <= calls.len());
        prop_assert_eq!(run.in_flight, 0);
    }

    /// Answers are the inner service's, a fallback's, or an error; nothing else is invented.
    #[test]
    fn answers_come_from_the_inner_service_or_a_fallback(
        stack in prop::collection::vec(layer_spec(), 2..=6),
        calls in prop::collection::vec(call(), 1..20),
    ) {
        let outcomes = run(&stack, &calls).outcomes;
        let works: Vec<u64> = calls.iter().map(|c| c.req.work_ms).collect();
        for o in &outcomes {
            if let Ok(v) = o.result {
                prop_assert!(v == FALLBACK || works.contains(&v), "unexpected answer {v}");
            }
        }
    }

    /// Retries stay within their budget: with one retry layer in the stack (ratio r, no
    /// per-second floor), the inner service sees at most `calls + floor(r × calls)` calls.
    #[test]
    fn retries_stay_within_budget(
        above in prop::collection::vec(plain_layer_spec(), 0..=3),
        retry in retry_spec(),
        below in prop::collection::vec(plain_layer_spec(), 0..=2),
        calls in prop::collection::vec(call(), 1..30),
    ) {
        let ratio_pct = match retry {
            LayerSpec::Retry { ratio_pct, .. } => ratio_pct,
            _ => unreachable!(),
        };
        let mut stack = above;
        stack.push(retry);
        stack.extend(below);
        let run = run(&stack, &calls);
        let allowed = calls.len() + calls.len() * ratio_pct as usize / 100;
        prop_assert!(
            run.inner_calls <= allowed,
            "{} inner calls for {} requests at ratio {}%",
            run.inner_calls,
            calls.len(),
            ratio_pct
        );
    }
}
