//! Model-based test: random sequences of admissions, completions (with outcome and duration),
//! cancellations, time steps, deadline ticks and manual state changes are applied to the real
//! state machine and to a small, obviously-correct reference model. State, generation, admissions,
//! rejections, window counts and trips must agree after every step.
//!
//! Cases: 2,000 by default; `SEAWALL_PROPTEST_CASES` raises (or lowers) it.
#![cfg(not(loom))]

use proptest::prelude::*;
use seawall_breaker::{
    state::{Machine, Permit, PermitKind, State},
    BreakerConfig, SlidingWindow,
};
use seawall_core::Outcome;
use std::{collections::VecDeque, time::Duration};

const MS: u64 = 1_000_000;

fn cases() -> u32 {
    std::env::var("SEAWALL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
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

// ===== the reference model =====

#[derive(Debug, Clone)]
struct Params {
    window: SlidingWindow,
    minimum_calls: u32,
    failure_rate: Option<f64>,
    slow_rate: Option<f64>,
    slow_ms: u64,
    consecutive: Option<u32>,
    wait_ms: u64,
    multiplier: f64,
    max_wait_ms: u64,
    probes: u32,
    half_open_ms: u64,
}

impl Params {
    fn config(&self) -> BreakerConfig {
        let mut b = BreakerConfig::builder()
            .sliding_window(self.window)
            .minimum_calls(self.minimum_calls)
            .slow_call_duration(Duration::from_millis(self.slow_ms))
            .wait_duration(Duration::from_millis(self.wait_ms))
            .backoff(self.multiplier, Duration::from_millis(self.max_wait_ms))
            .jitter(0.0)
            .permitted_probes(self.probes)
            .max_wait_in_half_open(Duration::from_millis(self.half_open_ms));
        b = match self.failure_rate {
            Some(rate) => b.failure_rate_threshold(rate),
            None => b.without_failure_rate(),
        };
        if let Some(rate) = self.slow_rate {
            b = b.slow_call_rate_threshold(rate);
        }
        if let Some(k) = self.consecutive {
            b = b.consecutive_failures(k);
        }
        b.build_config().expect("generated configs are valid")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Closed,
    Open {
        until: u64,
    },
    HalfOpen {
        /// Set by the first probe admitted while none is in flight: the bound guards against
        /// probes that hang. Cleared when no probe is left in flight, so the next sets it afresh.
        deadline: Option<u64>,
        taken: u32,
        results: Vec<(bool, bool)>,
    },
    Disabled,
    ForcedOpen,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct ModelPermit {
    generation: u64,
    kind: PermitKind,
}

/// The breaker as specified, with plain data and no concurrency.
#[derive(Debug, Clone)]
struct Model {
    p: Params,
    phase: Phase,
    metrics_only: bool,
    generation: u64,
    /// (epoch, failed, slow) of each counted call, oldest first.
    window: VecDeque<(u64, bool, bool)>,
    consecutive: u32,
    trips: u32,
    rejected: u64,
    would_have_rejected: u64,
}

fn ceil_ms(nanos: u64) -> u64 {
    nanos.div_ceil(MS) * MS
}

impl Model {
    fn new(p: Params) -> Self {
        Model {
            p,
            phase: Phase::Closed,
            metrics_only: false,
            generation: 0,
            window: VecDeque::new(),
            consecutive: 0,
            trips: 0,
            rejected: 0,
            would_have_rejected: 0,
        }
    }

    fn state(&self) -> State {
        match (&self.phase, self.metrics_only) {
            (_, true) => State::MetricsOnly,
            (Phase::Closed, _) => State::Closed,
            (Phase::Open { .. }, _) => State::Open,
            (Phase::HalfOpen { .. }, _) => State::HalfOpen,
            (Phase::Disabled, _) => State::Disabled,
            (Phase::ForcedOpen, _) => State::ForcedOpen,
        }
    }

    fn epoch(&self, now: u64) -> u64 {
        match self.p.window {
            SlidingWindow::Time { length, buckets } => {
                now / (length.as_nanos() as u64 / buckets as u64)
            }
            SlidingWindow::Count(_) => 0,
        }
    }

    /// (calls, failures, slow) in the window at `now`.
    fn counts(&self, now: u64) -> (u32, u32, u32) {
        let in_window: Vec<_> = match self.p.window {
            SlidingWindow::Count(n) => self.window.iter().rev().take(n as usize).collect(),
            SlidingWindow::Time { buckets, .. } => {
                let current = self.epoch(now);
                self.window
                    .iter()
                    .filter(|(e, _, _)| *e <= current && *e + buckets as u64 > current)
                    .collect()
            }
        };
        (
            in_window.len() as u32,
            in_window.iter().filter(|c| c.1).count() as u32,
            in_window.iter().filter(|c| c.2).count() as u32,
        )
    }

    fn wait(&self) -> u64 {
        let grown = (self.p.wait_ms * MS) as f64 * self.p.multiplier.powi(self.trips as i32);
        grown.min((self.p.max_wait_ms * MS) as f64) as u64
    }

    fn enter(&mut self, phase: Phase, metrics_only: bool, now: u64) {
        self.generation += 1;
        self.metrics_only = metrics_only;
        self.phase = match phase {
            Phase::Closed => {
                self.window.clear();
                self.consecutive = 0;
                self.trips = 0;
                Phase::Closed
            }
            Phase::Open { .. } => {
                let until = ceil_ms(now + self.wait());
                self.trips += 1;
                Phase::Open { until }
            }
            Phase::HalfOpen { .. } => Phase::HalfOpen {
                deadline: None,
                taken: 0,
                results: Vec::new(),
            },
            other => other,
        };
    }

    fn open(&mut self, now: u64) {
        self.enter(Phase::Open { until: 0 }, self.metrics_only, now);
    }

    fn half_open(&mut self, now: u64) {
        let phase = Phase::HalfOpen {
            deadline: None,
            taken: 0,
            results: vec![],
        };
        self.enter(phase, self.metrics_only, now);
    }

    fn reject(&mut self) -> Option<ModelPermit> {
        if self.metrics_only {
            self.would_have_rejected += 1;
            Some(ModelPermit {
                generation: self.generation,
                kind: PermitKind::Free,
            })
        } else {
            self.rejected += 1;
            None
        }
    }

    fn acquire(&mut self, now: u64) -> Option<ModelPermit> {
        loop {
            let permit = |kind| {
                Some(ModelPermit {
                    generation: self.generation,
                    kind,
                })
            };
            match &mut self.phase {
                Phase::Closed => return permit(PermitKind::Counted),
                Phase::Disabled => return permit(PermitKind::Free),
                Phase::ForcedOpen => {
                    self.rejected += 1;
                    return None;
                }
                Phase::Open { until } => {
                    if now >= *until {
                        self.half_open(now);
                    } else {
                        return self.reject();
                    }
                }
                Phase::HalfOpen {
                    deadline, taken, ..
                } => {
                    if let Some(at) = deadline.filter(|&deadline| now >= deadline) {
                        // Open as of the bound the HalfOpen ran out at.
                        self.open(at);
                    } else if *taken < self.p.probes {
                        *taken += 1;
                        // The first probe starts the bound.
                        deadline.get_or_insert(ceil_ms(now + self.p.half_open_ms * MS));
                        return permit(PermitKind::Probe);
                    } else {
                        return self.reject();
                    }
                }
            }
        }
    }

    fn rate_reached(&self, n: u32, of: u32, threshold: Option<f64>) -> bool {
        threshold.is_some_and(|t| n as f64 / of as f64 >= t)
    }

    fn complete(&mut self, permit: ModelPermit, outcome: Outcome, elapsed_ms: u64, now: u64) {
        let slow = self.p.slow_rate.is_some() && elapsed_ms >= self.p.slow_ms;
        let failed = outcome == Outcome::Failure;
        match permit.kind {
            PermitKind::Free => {}
            PermitKind::Counted => {
                if outcome == Outcome::Ignored || permit.generation != self.generation {
                    return;
                }
                let epoch = self.epoch(now);
                self.window.push_back((epoch, failed, slow));
                let (calls, failures, slows) = self.counts(now);
                let mut trip = calls >= self.p.minimum_calls
                    && (self.rate_reached(failures, calls, self.p.failure_rate)
                        || self.rate_reached(slows, calls, self.p.slow_rate));
                if let Some(k) = self.p.consecutive {
                    if failed {
                        self.consecutive += 1;
                        trip |= self.consecutive >= k;
                    } else {
                        self.consecutive = 0;
                    }
                }
                if trip {
                    self.open(now);
                }
            }
            PermitKind::Probe => {
                if permit.generation != self.generation {
                    return;
                }
                let probes = self.p.probes as usize;
                let Phase::HalfOpen {
                    deadline,
                    taken,
                    results,
                } = &mut self.phase
                else {
                    unreachable!("a probe of the current generation means HalfOpen")
                };
                if let Some(at) = deadline.filter(|&deadline| now >= deadline) {
                    self.open(at);
                    return;
                }
                if outcome == Outcome::Ignored {
                    *taken -= 1;
                    if *taken as usize == results.len() {
                        // No probe in flight: nothing to bound.
                        *deadline = None;
                    }
                    return;
                }
                results.push((failed, slow));
                if results.len() < probes {
                    if *taken as usize == results.len() {
                        *deadline = None;
                    }
                    return;
                }
                let n = results.len() as u32;
                let failures = results.iter().filter(|r| r.0).count() as u32;
                let slows = results.iter().filter(|r| r.1).count() as u32;
                let failure_opens = match self.p.failure_rate {
                    Some(_) => self.rate_reached(failures, n, self.p.failure_rate),
                    None => self.p.consecutive.is_some() && failures > 0,
                };
                if failure_opens || self.rate_reached(slows, n, self.p.slow_rate) {
                    self.open(now);
                } else {
                    self.enter(Phase::Closed, self.metrics_only, now);
                }
            }
        }
    }

    fn tick(&mut self, now: u64) {
        loop {
            match self.phase {
                Phase::Open { until } if now >= until => self.half_open(now),
                Phase::HalfOpen {
                    deadline: Some(deadline),
                    ..
                } if now >= deadline => self.open(deadline),
                _ => return,
            }
        }
    }

    fn manual(&mut self, op: Manual, now: u64) {
        match op {
            Manual::ForceOpen if self.phase != Phase::ForcedOpen => {
                self.enter(Phase::ForcedOpen, false, now)
            }
            Manual::Disable if self.phase != Phase::Disabled => {
                self.enter(Phase::Disabled, false, now)
            }
            Manual::MetricsOnly if !self.metrics_only => self.enter(Phase::Closed, true, now),
            Manual::Reset => self.enter(Phase::Closed, false, now),
            _ => {}
        }
    }
}

// ===== operations =====

#[derive(Debug, Clone, Copy)]
enum Manual {
    ForceOpen,
    Disable,
    MetricsOnly,
    Reset,
}

#[derive(Debug, Clone)]
enum Op {
    Admit,
    Complete {
        index: usize,
        outcome: Outcome,
        elapsed_ms: u64,
    },
    Cancel(usize),
    Advance(u64),
    Tick,
    Manual(Manual),
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Failure),
        3 => Just(Outcome::Success),
        1 => Just(Outcome::Ignored),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => Just(Op::Admit),
        8 => (any::<usize>(), outcome(), prop_oneof![Just(0u64), Just(10), Just(60), 0..200u64])
            .prop_map(|(index, outcome, elapsed_ms)| Op::Complete { index, outcome, elapsed_ms }),
        1 => any::<usize>().prop_map(Op::Cancel),
        // 6,553,600 ms is 65,536 buckets of 100 ms, a multiple of the 16,384 stamps a bucket has:
        // its stamp comes round again.
        3 => prop_oneof![
            0..50u64,
            50..400u64,
            Just(1_000),
            Just(2_500),
            Just(100_000),
            Just(6_553_600)
        ]
        .prop_map(Op::Advance),
        1 => Just(Op::Tick),
        1 => prop_oneof![
            Just(Manual::ForceOpen),
            Just(Manual::Disable),
            Just(Manual::MetricsOnly),
            Just(Manual::Reset)
        ]
        .prop_map(Op::Manual),
    ]
}

fn params() -> impl Strategy<Value = Params> {
    let window = prop_oneof![
        (1..8u32).prop_map(SlidingWindow::Count),
        (1..6u32).prop_map(|buckets| SlidingWindow::time_with_buckets(
            Duration::from_millis(100 * buckets as u64),
            buckets
        )),
    ];
    let rate = prop_oneof![
        Just(None),
        Just(Some(0.25)),
        Just(Some(0.5)),
        Just(Some(1.0))
    ];
    (
        window,
        1..8u32,
        rate.clone(),
        prop_oneof![Just(None), Just(Some(0.5)), Just(Some(1.0))],
        prop_oneof![Just(None), (1..4u32).prop_map(Some)],
        (
            1..10u64,
            prop_oneof![Just(1.0), Just(2.0), Just(3.0)],
            1..4u32,
            1..30u64,
        ),
    )
        .prop_map(
            |(
                window,
                min,
                failure_rate,
                slow_rate,
                consecutive,
                (wait, multiplier, probes, half_open),
            )| {
                let minimum_calls = match window {
                    SlidingWindow::Count(n) => min.min(n),
                    _ => min,
                };
                let failure_rate = match (failure_rate, slow_rate, consecutive) {
                    (None, None, None) => Some(0.5),
                    (rate, _, _) => rate,
                };
                Params {
                    window,
                    minimum_calls,
                    failure_rate,
                    slow_rate,
                    slow_ms: 50,
                    consecutive,
                    wait_ms: wait * 100,
                    multiplier,
                    max_wait_ms: 2_000.max(wait * 100),
                    probes,
                    half_open_ms: half_open * 100,
                }
            },
        )
}

fn kind_of(result: &Result<Permit, seawall_breaker::state::Rejected>) -> Option<PermitKind> {
    result.as_ref().ok().map(Permit::kind)
}

/// Runs `ops` on the machine and the model, checking they agree after each; returns each step's
/// state and, for an `Admit`, whether the call was admitted. The machine's clock reads `base`
/// where the model's reads 0.
fn run(
    params: Params,
    ops: Vec<Op>,
    base: u64,
) -> Result<Vec<(State, Option<bool>)>, TestCaseError> {
    let mut trace = Vec::new();
    let machine = Machine::new(&params.config());
    // The machine counts time from its first reading of the clock: the model's 0.
    let _ = machine.snapshot(base);
    let mut model = Model::new(params);
    let mut now = 0u64;
    let mut held: Vec<(Permit, ModelPermit)> = Vec::new();
    for (step, op) in ops.into_iter().enumerate() {
        let mut admitted = None;
        match op {
            Op::Admit => {
                // Asking first changes nothing, and tells what admission will say.
                let would = model.clone().acquire(now).is_some();
                prop_assert_eq!(
                    machine.permits(|| base + now),
                    would,
                    "step {}: permits",
                    step
                );
                // It applies no deadline: the machine is where the model, not yet asked, is.
                prop_assert_eq!(
                    (machine.state(), machine.generation()),
                    (model.state(), model.generation),
                    "step {}: state and generation after permits",
                    step
                );
                let real = machine.acquire(|| base + now, &());
                let expected = model.acquire(now);
                admitted = Some(real.is_ok());
                prop_assert_eq!(
                    kind_of(&real),
                    expected.map(|p| p.kind),
                    "step {}: admission",
                    step
                );
                if let (Ok(permit), Some(m)) = (real, expected) {
                    prop_assert_eq!(permit.generation(), m.generation);
                    held.push((permit, m));
                }
            }
            Op::Complete {
                index,
                outcome,
                elapsed_ms,
            } => {
                if !held.is_empty() {
                    let (permit, m) = held.remove(index % held.len());
                    machine.complete(
                        permit,
                        outcome,
                        Duration::from_millis(elapsed_ms),
                        || base + now,
                        &(),
                    );
                    model.complete(m, outcome, elapsed_ms, now);
                }
            }
            Op::Cancel(index) => {
                if !held.is_empty() {
                    let (permit, m) = held.remove(index % held.len());
                    machine.complete(permit, Outcome::Ignored, Duration::ZERO, || base + now, &());
                    model.complete(m, Outcome::Ignored, 0, now);
                }
            }
            Op::Advance(ms) => now += ms * MS,
            Op::Tick => {
                machine.tick(base + now, &());
                model.tick(now);
            }
            Op::Manual(op) => {
                match op {
                    Manual::ForceOpen => machine.force_open(base + now, &()),
                    Manual::Disable => machine.disable(base + now, &()),
                    Manual::MetricsOnly => machine.metrics_only(base + now, &()),
                    Manual::Reset => machine.reset(base + now, &()),
                }
                model.manual(op, now);
            }
        }
        let snapshot = machine.snapshot(base + now);
        prop_assert_eq!(
            snapshot.state,
            model.state(),
            "step {}: state; model {:?}",
            step,
            model
        );
        prop_assert_eq!(
            snapshot.generation,
            model.generation,
            "step {}: generation",
            step
        );
        prop_assert_eq!(snapshot.rejected, model.rejected, "step {}: rejected", step);
        prop_assert_eq!(
            snapshot.would_have_rejected,
            model.would_have_rejected,
            "step {}: would have rejected",
            step
        );
        prop_assert_eq!(snapshot.trips, model.trips, "step {}: trips", step);
        let (calls, failures, slow) = model.counts(now);
        prop_assert_eq!(
            (snapshot.calls, snapshot.failures, snapshot.slow_calls),
            (calls, failures, slow),
            "step {}: window counts; model {:?}",
            step,
            model
        );
        let deadline = match &model.phase {
            Phase::Open { until } => Some(*until),
            Phase::HalfOpen { deadline, .. } => *deadline,
            _ => None,
        };
        prop_assert_eq!(
            machine.deadline(),
            deadline.map(|deadline| base + deadline),
            "step {}: deadline, on the machine's clock",
            step
        );
        if let Phase::HalfOpen { taken, results, .. } = &model.phase {
            prop_assert_eq!(snapshot.probes_in_use, *taken, "step {}: probes", step);
            prop_assert_eq!(snapshot.probe_results, results.len() as u32);
        }
        trace.push((snapshot.state, admitted));
    }
    Ok(trace)
}

proptest! {
    #![proptest_config(seeded(cases()))]

    #[test]
    fn machine_agrees_with_model(
        params in params(),
        ops in prop::collection::vec(op(), 1..80),
        base in prop_oneof![Just(0u64), Just(1_765_000_000_000_000_000), 0..1u64 << 62],
    ) {
        run(params, ops, base)?;
    }
}

/// A fixed sequence through every state, so a regression shows up even with few cases.
#[test]
fn model_walkthrough() {
    let params = Params {
        window: SlidingWindow::Count(4),
        minimum_calls: 2,
        failure_rate: Some(0.5),
        slow_rate: Some(1.0),
        slow_ms: 50,
        consecutive: Some(3),
        wait_ms: 100,
        multiplier: 2.0,
        max_wait_ms: 1_000,
        probes: 2,
        half_open_ms: 500,
    };
    let fail = |index| Op::Complete {
        index,
        outcome: Outcome::Failure,
        elapsed_ms: 1,
    };
    let ok = |index| Op::Complete {
        index,
        outcome: Outcome::Success,
        elapsed_ms: 1,
    };
    use State::{Closed, Disabled, ForcedOpen, HalfOpen, MetricsOnly, Open};
    // Each step, the state after it and, for an admission, whether the call was admitted.
    let (yes, no) = (Some(true), Some(false));
    let steps = vec![
        (Op::Admit, Closed, yes),
        (Op::Admit, Closed, yes),
        (fail(0), Closed, None),
        (fail(0), Open, None), // trips: 2 of 2 failed
        (Op::Admit, Open, no),
        (Op::Advance(100), Open, None),
        (Op::Admit, HalfOpen, yes), // half-open probe
        (Op::Admit, HalfOpen, yes),
        (Op::Admit, HalfOpen, no), // rejected: both probe slots taken
        (Op::Cancel(0), HalfOpen, None),
        (Op::Admit, HalfOpen, yes),
        (ok(0), HalfOpen, None),
        (fail(0), Open, None), // 1 of 2 failed: re-open, wait doubles
        (Op::Advance(150), Open, None),
        (Op::Admit, Open, no), // 150 ms of 200
        (Op::Advance(50), Open, None),
        (Op::Admit, HalfOpen, yes),
        (Op::Advance(600), HalfOpen, None),
        (Op::Tick, Open, None), // hung probe: back to Open
        (Op::Advance(400), Open, None),
        (Op::Tick, HalfOpen, None), // HalfOpen, no probe yet
        (Op::Advance(100_000), HalfOpen, None),
        (Op::Tick, HalfOpen, None), // no probe, nothing to bound: still HalfOpen, no trip
        (Op::Admit, HalfOpen, yes), // a probe, which starts the bound
        (Op::Advance(300), HalfOpen, None),
        // This probe (0 is a stale one) handed back: the bound stops.
        (Op::Cancel(1), HalfOpen, None),
        (Op::Advance(1_000), HalfOpen, None),
        (Op::Tick, HalfOpen, None), // nothing to bound: still HalfOpen, no trip
        (Op::Admit, HalfOpen, yes), // the next probe starts a fresh bound
        (Op::Advance(499), HalfOpen, None),
        (Op::Tick, HalfOpen, None),
        (Op::Advance(1), HalfOpen, None),
        (Op::Tick, Open, None), // the probe hung: back to Open
        (Op::Manual(Manual::MetricsOnly), MetricsOnly, None),
        (Op::Admit, MetricsOnly, yes),
        (Op::Admit, MetricsOnly, yes),
        (fail(0), MetricsOnly, None),
        (fail(0), MetricsOnly, None),
        (Op::Admit, MetricsOnly, yes), // would reject
        (Op::Manual(Manual::Disable), Disabled, None),
        (Op::Admit, Disabled, yes),
        (Op::Manual(Manual::ForceOpen), ForcedOpen, None),
        (Op::Admit, ForcedOpen, no),
        (Op::Manual(Manual::Reset), Closed, None),
        (Op::Admit, Closed, yes),
        (ok(0), Closed, None),
    ];
    let ops: Vec<Op> = steps.iter().map(|(op, ..)| op.clone()).collect();
    let expected: Vec<(State, Option<bool>)> = steps.iter().map(|&(_, s, a)| (s, a)).collect();
    assert_eq!(run(params.clone(), ops.clone(), 0).unwrap(), expected);
    // The same on a clock with another origin (Unix-epoch nanoseconds).
    assert_eq!(
        run(params, ops, 1_765_000_000_123_456_789).unwrap(),
        expected
    );
}
