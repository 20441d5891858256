//! Deterministic simulations in paused time: a dependency whose latency doubles for a while and
//! then recovers, called by more clients than the limit admits. For each algorithm the limit
//! falls when latency doubles, returns once it recovers and stays there, and the algorithm never
//! answers outside its bounds. The limit is followed through every change it makes (from the
//! bulkhead's `LimitChanged` events), so a dip between two samples of it is seen. The bounds are
//! checked on the algorithm's own answers, recorded before the bulkhead clamps them (the limit the
//! bulkhead takes is within them whatever the algorithm answers).
//!
//! Timeline: 0–10 s latency 20 ms; 10–11 s latency 40 ms; 11–30 s latency 20 ms again.

use seawall_bulkhead::{
    limit::{Aimd, Gradient2, Limit, Sample, Vegas},
    BulkheadEvent, BulkheadLayer,
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

const CLIENTS: usize = 60;
const MIN: usize = 2;
const MAX: usize = 50;
const SLOW_FROM: Duration = Duration::from_secs(10);
const SLOW_UNTIL: Duration = Duration::from_secs(11);
const END: Duration = Duration::from_secs(30);
const HALF: (usize, usize) = (1, 2);
const TWO_THIRDS: (usize, usize) = (2, 3);

fn latency(since_start: Duration) -> Duration {
    if since_start >= SLOW_FROM && since_start < SLOW_UNTIL {
        Duration::from_millis(40)
    } else {
        Duration::from_millis(20)
    }
}

#[derive(Debug)]
struct Run {
    /// Limit just before latency doubled.
    before: usize,
    /// Lowest limit while latency was doubled.
    lowest_slow: usize,
    /// Limit when latency recovered.
    at_recovery: usize,
    /// Time after latency recovered until the limit was back to 90% of `before`.
    recovered_after: Option<Duration>,
    /// Lowest limit from then on to the end.
    lowest_recovered: Option<usize>,
    /// Limit at the end.
    end: usize,
    /// Smallest and largest limit the algorithm answered, before the bulkhead clamped it.
    answers: (usize, usize),
}

/// An algorithm whose answers are recorded as it gives them.
#[derive(Debug)]
struct Recorded<L> {
    limit: L,
    /// Smallest and largest answer so far.
    answers: Arc<Mutex<(usize, usize)>>,
}

impl<L: Limit> Limit for Recorded<L> {
    fn initial_limit(&self) -> usize {
        self.limit.initial_limit()
    }

    fn bounds(&self) -> (usize, usize) {
        self.limit.bounds()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let answer = self.limit.update(sample);
        let mut answers = self.answers.lock().unwrap();
        *answers = (answers.0.min(answer), answers.1.max(answer));
        answer
    }
}

async fn simulate(limit: impl Limit) -> Run {
    let start = Instant::now();
    // Every limit the bulkhead takes, when it takes it: a dip between two samples of the limit
    // is in here too.
    let trace = Arc::new(Mutex::new(vec![(Duration::ZERO, limit.initial_limit())]));
    let changes = trace.clone();
    let answers = Arc::new(Mutex::new((limit.initial_limit(), limit.initial_limit())));
    let limit = Recorded {
        limit,
        answers: answers.clone(),
    };
    let layer = BulkheadLayer::builder()
        .adaptive(limit)
        .on_event(move |_: &seawall_core::Name, event: &BulkheadEvent| {
            if let BulkheadEvent::LimitChanged { to, .. } = *event {
                changes.lock().unwrap().push((start.elapsed(), to));
            }
        })
        .build()
        .unwrap();
    let service = layer.layer(service_fn(move |()| async move {
        tokio::time::sleep(latency(start.elapsed())).await;
        Ok::<_, std::io::Error>(())
    }));

    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let service = service.clone();
        clients.push(tokio::spawn(async move {
            while start.elapsed() < END {
                if service.clone().oneshot(()).await.is_err() {
                    // Rejected: back off briefly and try again.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }

    let mut trace = trace.lock().unwrap().clone();
    trace.retain(|(s, _)| *s <= END);
    // The limit in force from `t` on: the one taken last before `t`, then every later one.
    let from = |t: Duration| -> Vec<(Duration, usize)> {
        let last = trace.iter().rposition(|(s, _)| *s < t).unwrap();
        std::iter::once((t, trace[last].1))
            .chain(trace[last + 1..].iter().copied())
            .collect()
    };
    let before = from(SLOW_FROM)[0].1;
    let lowest_slow = from(SLOW_FROM)
        .iter()
        .take_while(|(s, _)| *s < SLOW_UNTIL)
        .map(|(_, l)| *l)
        .min()
        .unwrap();
    let since_recovery = from(SLOW_UNTIL);
    let at_recovery = since_recovery
        .iter()
        .take_while(|(s, _)| *s == SLOW_UNTIL)
        .last()
        .unwrap()
        .1;
    let recovered = since_recovery
        .iter()
        .position(|(_, l)| *l * 10 >= before * 9);
    let recovered_after = recovered.map(|i| since_recovery[i].0 - SLOW_UNTIL);
    let lowest_recovered =
        recovered.and_then(|i| since_recovery[i..].iter().map(|(_, l)| *l).min());
    let answers = *answers.lock().unwrap();
    Run {
        before,
        lowest_slow,
        at_recovery,
        recovered_after,
        lowest_recovered,
        end: trace.last().unwrap().1,
        answers,
    }
}

/// Checks a run: the algorithm answers within its bounds and reaches the top one, the limit grows
/// under load, falls to at most `falls_to` (a fraction, numerator and denominator) of itself when
/// latency doubles, and is back to 90% of that limit within `recover_within` after latency
/// recovers and stays there.
fn check(run: &Run, falls_to: (usize, usize), recover_within: Duration) {
    println!(
        "before {} lowest {} at recovery {} recovered after {:?} lowest since {:?} end {}",
        run.before,
        run.lowest_slow,
        run.at_recovery,
        run.recovered_after,
        run.lowest_recovered,
        run.end
    );
    assert!(
        run.answers.0 >= MIN && run.answers.1 == MAX,
        "the algorithm's answers within its bounds, up to the top one: {run:?}"
    );
    assert!(run.before >= MAX * 9 / 10, "grows under load: {run:?}");
    assert!(
        run.lowest_slow * falls_to.1 <= run.before * falls_to.0,
        "falls to at most {}/{} when latency doubles: {run:?}",
        falls_to.0,
        falls_to.1
    );
    let recovered = run.recovered_after.expect("the limit recovers");
    assert!(
        recovered <= recover_within,
        "back to 90% within {recover_within:?}: {run:?}"
    );
    let lowest = run.lowest_recovered.expect("the limit recovers");
    assert!(
        lowest * 10 >= run.before * 9,
        "stays within 90% from recovery to the end: {run:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn aimd_falls_and_recovers() {
    let aimd = Aimd::builder()
        .initial_limit(10)
        .min_limit(MIN)
        .max_limit(MAX)
        // 40 ms calls are over this timeout: AIMD sees the slowdown as drops.
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let run = simulate(aimd).await;
    check(&run, HALF, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn gradient2_falls_and_recovers() {
    let gradient = Gradient2::builder()
        .initial_limit(10)
        .min_limit(MIN)
        .max_limit(MAX)
        // No tolerance: the whole rise of latency counts.
        .rtt_tolerance(1.0)
        .build()
        .unwrap();
    let run = simulate(gradient).await;
    check(&run, HALF, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn gradient2_with_its_default_tolerance_falls_less() {
    let gradient = Gradient2::builder()
        .initial_limit(10)
        .min_limit(MIN)
        .max_limit(MAX)
        .build()
        .unwrap();
    let run = simulate(gradient).await;
    // Only the rise beyond 1.5 times the long-term RTT counts.
    check(&run, TWO_THIRDS, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn vegas_falls_and_recovers() {
    let vegas = Vegas::builder()
        .initial_limit(10)
        .min_limit(MIN)
        .max_limit(MAX)
        .seed(42)
        .build()
        .unwrap();
    let run = simulate(vegas).await;
    check(&run, HALF, Duration::from_secs(2));
}
