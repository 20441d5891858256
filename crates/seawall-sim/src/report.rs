//! What a run measured, summarised per client.

use crate::{
    backend::FaultKind,
    run::{RawRun, MAX_LATENCY_US},
    scenario::Scenario,
};
use hdrhistogram::Histogram;
use std::{fmt::Write as _, time::Duration};

/// The results of one scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Scenario name.
    pub scenario: String,
    /// Scenario description.
    pub description: String,
    /// The seed used.
    pub seed: u64,
    /// Backend names, by index.
    pub backends: Vec<String>,
    /// One entry per client, in the scenario's order.
    pub clients: Vec<ClientReport>,
}

/// One client's results.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientReport {
    /// The client's label.
    pub client: String,
    /// Requests offered.
    pub requests: u64,
    /// Requests answered successfully.
    pub ok: u64,
    /// Latency percentiles (p50, p90, p99, p99.9) and the maximum.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// 99.9th percentile.
    pub p999: Duration,
    /// Slowest request. Latencies are told apart up to [`MAX_LATENCY_US`]: one at or past it
    /// is slower than that, by how much not known, and the report shows it as `>` it.
    pub max: Duration,
    /// 99th percentile of successful requests alone (None: none succeeded). Failed calls, such
    /// as refused connections answered at once, do not pull it down.
    pub ok_p99: Option<Duration>,
    /// 99.9th percentile of successful requests alone (None: none succeeded).
    pub ok_p999: Option<Duration>,
    /// Latency at each percentile of [`CURVE`], for the report's curves.
    pub curve: Vec<Duration>,
    /// Calls the backends received (attempts, retries and hedges included).
    pub backend_calls: u64,
    /// Requests that made at least one call: the others (turned away before reaching a backend,
    /// such as one that timed out waiting for a ready backend) made none.
    pub requests_that_called: u64,
    /// Calls each backend received over the whole run.
    pub calls_per_backend: Vec<u64>,
    /// Share of calls per backend, per time bucket of `bucket_ms`.
    pub share: Vec<Vec<f64>>,
    /// Width of a share bucket, milliseconds: the same for every client of a scenario (see
    /// [`bucket_ms`]).
    pub bucket_ms: u64,
    /// What happened around each fault of the scenario.
    pub faults: Vec<FaultReport>,
    /// Simulated time the run took.
    pub elapsed: Duration,
}

/// How a client dealt with one fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultReport {
    /// Backend index.
    pub backend: usize,
    /// What the fault was.
    pub kind: String,
    /// Fault window, milliseconds.
    pub from_ms: u64,
    /// End of the fault window, milliseconds.
    pub to_ms: u64,
    /// Time from the fault's start to the end of the first stretch of time buckets in which the
    /// backend's share of calls was below a quarter of its fair share (None: never, within the
    /// fault, or no stretch held calls enough to judge: see [`Self::eject_judged`]).
    pub time_to_eject: Option<Duration>,
    /// Calls sent to the backend while the fault lasted.
    pub wasted_calls: u64,
    /// Time from the fault's end to the start of the first time bucket in which the backend got a
    /// call, within the first stretch of buckets in which it got at least half its fair share
    /// again (None: never, within the run, the run ended before the fault did, or no stretch held
    /// calls enough to judge: see [`Self::readmit_judged`]). It is read at the start of that bucket,
    /// since the call may have come at any time in it.
    pub time_to_readmit: Option<Duration>,
    /// Whether the client's run lasted past the fault's start: a run that ended before it (a
    /// short `--requests`, a closed loop that finished early) neither ejected nor readmitted the
    /// backend, and reports `n/a` rather than `never`.
    pub reached: bool,
    /// Whether the fault ended within the client's run: a run that ended while the fault was
    /// still active could not readmit the backend, and reports readmit as `n/a`.
    pub ended: bool,
    /// Whether the fault's time buckets within the run held calls enough to judge an eject, at
    /// least [`MIN_CALLS_PER_BACKEND`] per backend in one stretch: the report shows `n/a` if not.
    pub eject_judged: bool,
    /// Whether the buckets from the fault's end to the run's held calls enough to judge a
    /// readmit, as for [`Self::eject_judged`]: the report shows `n/a` if not.
    pub readmit_judged: bool,
}

/// The calls per backend, on average, that a stretch of time buckets must hold for a fault's eject
/// or readmit to be judged on it: with N backends, at least 4·N calls. Buckets holding fewer are
/// judged together with the buckets after them until they hold as many, and the calls left at the
/// end, too few for a stretch of their own, together with the stretch before them. With fewer
/// calls, a backend that merely missed its turn would look ejected: round robin over two backends,
/// with a bucket that holds one call, sends none of that bucket's calls to one of them.
pub const MIN_CALLS_PER_BACKEND: u64 = 4;

/// A stretch of consecutive time buckets, judged together.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    /// Its first bucket.
    first: usize,
    /// Its last bucket.
    last: usize,
    /// The calls in it.
    calls: u64,
    /// The calls in it to the backend judged.
    to_backend: u64,
}

impl Stretch {
    /// The backend's share of the calls in it.
    fn share(&self) -> f64 {
        self.to_backend as f64 / self.calls as f64
    }
}

/// The stretches of `range`'s buckets, in order, each from the first bucket holding a call to the
/// first at which the stretch holds at least `min` calls. The calls left at the end, fewer than
/// `min`, are judged together with the stretch before them: after that stretch comes one more,
/// from its first bucket to the last holding a call. With fewer than `min` calls in all, there are
/// none.
fn stretches(
    counts: &[Vec<u64>],
    range: std::ops::Range<usize>,
    backend: usize,
    min: u64,
) -> impl Iterator<Item = Stretch> + '_ {
    let min = min.max(1);
    let total = |i: usize| counts[i].iter().sum::<u64>();
    // Calls not yet in a stretch.
    let mut left: u64 = range.clone().map(total).sum();
    let mut next = range.start;
    let mut before: Option<Stretch> = None;
    std::iter::from_fn(move || {
        while next < range.end && total(next) == 0 {
            next += 1;
        }
        if left == 0 {
            return None;
        }
        // Too few for a stretch of their own: the one before, with them.
        let tail = left < min;
        let mut stretch = if tail {
            before.take()?
        } else {
            Stretch {
                first: next,
                last: next,
                calls: 0,
                to_backend: 0,
            }
        };
        while next < range.end && (tail || stretch.calls < min) {
            let calls = total(next);
            if calls > 0 {
                stretch.last = next;
                stretch.calls += calls;
                stretch.to_backend += counts[next][backend];
                left -= calls;
            }
            next += 1;
        }
        before = Some(stretch);
        Some(stretch)
    })
}

/// Percentiles drawn in the latency curves.
pub const CURVE: [f64; 9] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99];

/// The width of the time buckets, milliseconds, for a scenario whose longest client run took
/// `longest`: a 200th of it, at least 10 ms, rounded down to a multiple of that run's
/// [`grain_ms`] (by less than a sixteenth, and not at all for runs under 6.4 s). Every client of the scenario is given the same, so
/// their eject and readmit times are rounded alike; it is a multiple of the grain of every run
/// no longer than `longest`, so each run can be summarised as it ends (see [`RunSummary`]).
pub fn bucket_ms(longest: Duration) -> u64 {
    let width = width_ms(longest);
    let grain = grain_of(width);
    width / grain * grain
}

/// The width of the fine time buckets in which a run that took `elapsed` counts its calls,
/// milliseconds: the largest of 1, 2, 10, 20, 40, … ms (10 ms doubled) that is at most a
/// sixteenth of a 200th of the run, or 1 ms for a run too short for that (under 3.2 s, a tenth
/// at most), so a run has at most 16,000 of them whatever its length.
pub fn grain_ms(elapsed: Duration) -> u64 {
    grain_of(width_ms(elapsed))
}

/// A 200th of the run, at least 10 ms.
fn width_ms(run: Duration) -> u64 {
    let run_ms = u64::try_from(run.as_millis()).unwrap_or(u64::MAX).max(1);
    (run_ms / 200).max(10)
}

/// The largest of 1, 2, 10, 20, 40, … with 16 of it no more than `width` (or 1). Grows with
/// `width`, and each grain is a multiple of every smaller one.
fn grain_of(width: u64) -> u64 {
    match width {
        0..32 => 1,
        32..160 => 2,
        _ => {
            let mut grain = 10u64;
            while grain.saturating_mul(32) <= width {
                grain *= 2;
            }
            grain
        }
    }
}

/// What a report needs of one client's run, in memory that does not grow with its length: its
/// latency histograms and counts, its calls per backend over the whole run and during each fault
/// of the scenario, and its calls per backend in fine time buckets of the run's [`grain_ms`], to
/// be added up into a scenario's shared buckets (of [`bucket_ms`]) once every client has run.
/// The fine counts are kept only for the backends that got calls in a bucket, in 8 bytes each: at
/// most one count a call, however many backends there are, and for calls in time order, as the
/// simulator logs them, one for each fine bucket and backend that got calls (one more for each
/// 65,535 calls past the first), so hardly more memory than a `u64` for every fine bucket and
/// backend would take, and often far less.
#[derive(Debug, Clone)]
pub struct RunSummary {
    client: String,
    latency_us: Histogram<u64>,
    ok_latency_us: Histogram<u64>,
    ok: u64,
    failed: u64,
    elapsed: Duration,
    backend_calls: u64,
    /// Requests that made at least one call, if known.
    requests_that_called: Option<u64>,
    calls_per_backend: Vec<u64>,
    /// Calls to the faulty backend during each fault, in the scenario's order.
    wasted_calls: Vec<u64>,
    grain_ms: u64,
    /// Calls per fine bucket and backend, as (bucket, backend, calls), for the backends that got
    /// calls in the bucket; a bucket may hold a backend more than once, its counts to be added
    /// up: for more than `u16::MAX` calls, or for calls not logged together (a live run's may
    /// not be in order).
    counts: Vec<(u32, u16, u16)>,
}

impl RunSummary {
    /// Summarises `raw`, a run over `scenario`'s backends, counting its calls in fine buckets of
    /// its own [`grain_ms`]. The calls are not kept.
    pub fn new(scenario: &Scenario, raw: RawRun) -> Self {
        let grain = grain_ms(raw.elapsed);
        Self::with_grain(scenario, raw, grain)
    }

    fn with_grain(scenario: &Scenario, raw: RawRun, grain_ms: u64) -> Self {
        let n = scenario.backends.len();
        let grain_ms = grain_ms.max(1);
        let run_ms = u64::try_from(raw.elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        // A run has at most 16,000 fine buckets at its own grain; at a report's width (from
        // `ClientReport::new`), one for each row of the report, which could not hold 2^32.
        let buckets = (run_ms / grain_ms).saturating_add(1).min(1 << 32);
        let mut calls_per_backend = vec![0u64; n];
        // Each bucket's calls are counted per backend as they come, and the backends that got any
        // are kept when another bucket starts: once a bucket, for calls in time order.
        let mut counts = Vec::new();
        let mut bucket = Bucket {
            index: 0,
            calls: vec![0; n],
            called: Vec::new(),
        };
        for &(at_ms, b) in &raw.calls {
            calls_per_backend[b as usize] += 1;
            let i = at_ms / grain_ms;
            if i < buckets {
                let i = i as u32;
                if i != bucket.index {
                    bucket.keep(&mut counts);
                    bucket.index = i;
                }
                if bucket.calls[b as usize] == 0 {
                    bucket.called.push(b);
                }
                bucket.calls[b as usize] += 1;
            }
        }
        bucket.keep(&mut counts);
        let wasted_calls = scenario
            .backends
            .iter()
            .enumerate()
            .flat_map(|(b, spec)| spec.faults.iter().map(move |f| (b, f)))
            .map(|(b, f)| {
                raw.calls
                    .iter()
                    .filter(|&&(t, cb)| cb as usize == b && (f.from_ms..f.to_ms).contains(&t))
                    .count() as u64
            })
            .collect();
        RunSummary {
            client: raw.client,
            latency_us: raw.latency_us,
            ok_latency_us: raw.ok_latency_us,
            ok: raw.ok,
            failed: raw.failed,
            elapsed: raw.elapsed,
            backend_calls: raw.calls.len() as u64,
            requests_that_called: None,
            calls_per_backend,
            wasted_calls,
            grain_ms,
            counts,
        }
    }

    /// The summary of a run in which `requests` requests made at least one call, for
    /// [`ClientReport::extra_load`]. Without it, a summary takes as many requests as it can to
    /// have made one: every request, or one a call if there were fewer calls than requests.
    pub fn with_requests_that_called(mut self, requests: u64) -> Self {
        self.requests_that_called = Some(requests);
        self
    }

    /// Simulated time the run took.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// The width of its fine time buckets, milliseconds.
    pub fn grain_ms(&self) -> u64 {
        self.grain_ms
    }
}

/// The fine bucket whose calls are being counted, per backend.
struct Bucket {
    index: u32,
    /// Calls per backend, `backends` long.
    calls: Vec<u64>,
    /// The backends with calls, in the order of their first.
    called: Vec<u16>,
}

impl Bucket {
    /// Moves the counts of the backends that got calls to `counts`, leaving the bucket empty.
    /// A count past `u16::MAX` is kept in parts.
    fn keep(&mut self, counts: &mut Vec<(u32, u16, u16)>) {
        for b in self.called.drain(..) {
            let mut calls = std::mem::take(&mut self.calls[b as usize]);
            while calls > 0 {
                let part = calls.min(u64::from(u16::MAX));
                counts.push((self.index, b, part as u16));
                calls -= part;
            }
        }
    }
}

impl ClientReport {
    /// Summarises one client's run over `scenario`'s backends, judging each of its faults, with
    /// calls counted in time buckets of `bucket_ms` (give every client of a scenario the same,
    /// from [`bucket_ms`] of the longest run).
    ///
    /// `raw` may come from the simulator or from a live run against real servers (the showcase
    /// example does this), as long as its calls are indexed like `scenario.backends`. It does not
    /// say which requests made a call, so [`Self::extra_load`] takes as many as it can to have
    /// made one (see [`RunSummary::with_requests_that_called`]).
    pub fn new(scenario: &Scenario, raw: RawRun, bucket_ms: u64) -> Self {
        let summary = RunSummary::with_grain(scenario, raw, bucket_ms);
        Self::from_summary(scenario, summary, bucket_ms)
    }

    /// Reports a run summarised as it ended, with its calls counted in time buckets of
    /// `bucket_ms`, rounded down to a multiple of the summary's [`RunSummary::grain_ms`] (a
    /// width from [`bucket_ms`] of the scenario's longest run is one already).
    pub fn from_summary(scenario: &Scenario, summary: RunSummary, bucket_ms: u64) -> Self {
        let h = &summary.latency_us;
        let at = |q: f64| Duration::from_micros(value_at_percentile(h, q));
        let ok_at = |q: f64| {
            (!summary.ok_latency_us.is_empty())
                .then(|| Duration::from_micros(value_at_percentile(&summary.ok_latency_us, q)))
        };
        let n = scenario.backends.len();
        let run_ms = u64::try_from(summary.elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let grain = summary.grain_ms;
        let bucket_ms = (bucket_ms.max(grain) / grain) * grain;
        let per_bucket = (bucket_ms / grain) as usize;
        let buckets = (run_ms / bucket_ms).saturating_add(1) as usize;
        let mut counts = vec![vec![0u64; n]; buckets];
        for &(i, b, calls) in &summary.counts {
            if let Some(row) = counts.get_mut(i as usize / per_bucket) {
                row[b as usize] += u64::from(calls);
            }
        }
        let share: Vec<Vec<f64>> = counts
            .iter()
            .map(|row| {
                let total: u64 = row.iter().sum();
                row.iter()
                    .map(|&c| {
                        if total == 0 {
                            0.0
                        } else {
                            c as f64 / total as f64
                        }
                    })
                    .collect()
            })
            .collect();
        let fair = 1.0 / n as f64;
        let min_calls = MIN_CALLS_PER_BACKEND.saturating_mul(n as u64);
        let mut faults = Vec::new();
        let mut wasted = summary.wasted_calls.iter().copied();
        for (b, spec) in scenario.backends.iter().enumerate() {
            for f in &spec.faults {
                let kind = match f.effect {
                    FaultKind::Slow { extra_ms } => format!("slow +{extra_ms}ms"),
                    FaultKind::Down => "down".into(),
                    FaultKind::Errors { error_rate, .. } => {
                        format!("errors {:.0}%", error_rate * 100.0)
                    }
                    FaultKind::Flapping { period_ms } => format!("flapping {period_ms}ms"),
                };
                let wasted_calls = wasted.next().unwrap_or(0);
                let bucket_of = |ms: u64| (ms / bucket_ms) as usize;
                // The fault's buckets within the run: a fault may last far past its end. None for
                // a fault that starts after it, even inside the run's last bucket, whose calls all
                // came before the fault.
                let reached = f.from_ms < run_ms;
                let during = if reached {
                    bucket_of(f.from_ms)
                        ..bucket_of(f.to_ms.saturating_sub(1))
                            .saturating_add(1)
                            .min(buckets)
                } else {
                    0..0
                };
                let mut eject_judged = false;
                let time_to_eject = stretches(&counts, during, b, min_calls)
                    .inspect(|_| eject_judged = true)
                    .find(|s| s.share() < fair / 4.0)
                    .map(|s| {
                        Duration::from_millis(
                            ((s.last as u64 + 1) * bucket_ms).saturating_sub(f.from_ms),
                        )
                    });
                // From the bucket the fault ends in (counted from the fault's end, not before it):
                // a client that kept sending to the backend throughout reads 0, wherever the
                // bucket edges fall. None if the run ended first, even inside that bucket, or as
                // the fault ended, with no time after it.
                let ended = f.to_ms < run_ms;
                let after = if ended {
                    bucket_of(f.to_ms)..buckets
                } else {
                    0..0
                };
                let mut readmit_judged = false;
                let time_to_readmit = stretches(&counts, after, b, min_calls)
                    .inspect(|_| readmit_judged = true)
                    .find(|s| s.share() >= fair / 2.0)
                    .map(|s| {
                        // Back from the first bucket of the stretch that gave the backend a call:
                        // buckets before it, in the stretch, gave it none.
                        let back = (s.first..=s.last)
                            .find(|&i| counts[i][b] > 0)
                            .unwrap_or(s.first);
                        Duration::from_millis((back as u64 * bucket_ms).saturating_sub(f.to_ms))
                    });
                faults.push(FaultReport {
                    backend: b,
                    kind,
                    from_ms: f.from_ms,
                    to_ms: f.to_ms,
                    time_to_eject,
                    wasted_calls,
                    time_to_readmit,
                    reached,
                    ended,
                    eject_judged,
                    readmit_judged,
                });
            }
        }
        let requests = summary.ok + summary.failed;
        ClientReport {
            client: summary.client,
            requests,
            ok: summary.ok,
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            max: Duration::from_micros(h.max()),
            ok_p99: ok_at(99.0),
            ok_p999: ok_at(99.9),
            curve: CURVE.iter().map(|&q| at(q)).collect(),
            backend_calls: summary.backend_calls,
            requests_that_called: summary
                .requests_that_called
                .unwrap_or(requests.min(summary.backend_calls)),
            calls_per_backend: summary.calls_per_backend,
            share,
            bucket_ms,
            faults,
            elapsed: summary.elapsed,
        }
    }

    /// Share of requests answered successfully.
    pub fn success_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.ok as f64 / self.requests as f64
        }
    }

    /// Calls beyond the first of each request (retries and hedges), as a share of requests: the
    /// sum over requests of their calls less one, counting none for a request that made no call,
    /// over the requests. A request that made no call takes nothing off another's retries.
    pub fn extra_load(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.backend_calls.saturating_sub(self.requests_that_called) as f64
                / self.requests as f64
        }
    }

    /// Share of all calls each backend received over the whole run.
    pub fn total_share(&self) -> Vec<f64> {
        let total: u64 = self.calls_per_backend.iter().sum();
        self.calls_per_backend
            .iter()
            .map(|&calls| {
                if total == 0 {
                    0.0
                } else {
                    calls as f64 / total as f64
                }
            })
            .collect()
    }
}

/// The latency at `percentile`: the value of nearest rank `⌈percentile/100 × n⌉`, as hdrhistogram
/// defines it, but with the rank in integer arithmetic. `value_at_quantile(q / 100.0)` lands one
/// rank high wherever the division rounds up (99.9 / 100 is a hair above 0.999), which made p99.9
/// of 1,000 requests their maximum.
fn value_at_percentile(h: &Histogram<u64>, percentile: f64) -> u64 {
    // In millionths, exact for percentiles given to four decimals (every one of CURVE).
    let millionths = (percentile * 10_000.0).round().clamp(0.0, 1_000_000.0) as u128;
    let rank = (u128::from(h.len()) * millionths)
        .div_ceil(1_000_000)
        .max(1);
    let mut seen = 0u128;
    for v in h.iter_recorded() {
        seen += u128::from(v.count_since_last_iteration());
        if seen >= rank {
            return h.highest_equivalent(v.value_iterated_to());
        }
    }
    0
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

/// A latency in milliseconds, or `>` the histograms' ceiling (see [`MAX_LATENCY_US`]) for one
/// that reached it.
fn latency_ms(d: Duration) -> String {
    let ceiling = Duration::from_micros(MAX_LATENCY_US);
    if d >= ceiling {
        format!(">{}", ms(ceiling))
    } else {
        ms(d)
    }
}

fn ok_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), latency_ms)
}

impl FaultReport {
    /// `d` in milliseconds, `never` if it did not happen, or `n/a` if the run ended before the
    /// fault began or there were not calls enough to judge (`judged` false).
    fn reached_or(&self, judged: bool, d: Option<Duration>) -> String {
        match (self.reached && judged, d) {
            (false, _) => "n/a".into(),
            (true, None) => "never".into(),
            (true, Some(d)) => ms(d),
        }
    }

    /// The eject column: as [`Self::reached_or`].
    fn eject(&self) -> String {
        self.reached_or(self.eject_judged, self.time_to_eject)
    }

    /// The readmit column: as [`Self::reached_or`], and `n/a` too if the run ended before the
    /// fault did.
    fn readmit(&self) -> String {
        if self.ended {
            self.reached_or(self.readmit_judged, self.time_to_readmit)
        } else {
            "n/a".into()
        }
    }
}

impl Report {
    /// The report as a text table.
    pub fn table(&self) -> String {
        let w = self
            .clients
            .iter()
            .map(|c| c.client.len())
            .max()
            .unwrap_or(0)
            .max(6);
        let mut out = String::new();
        let _ = writeln!(out, "scenario {} (seed {})", self.scenario, self.seed);
        if !self.description.is_empty() {
            let _ = writeln!(out, "  {}", self.description);
        }
        let _ = writeln!(
            out,
            "\n{:<w$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
            "client",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "ok p99",
            "ok p99.9",
            "success",
            "extra"
        );
        for c in &self.clients {
            let _ = writeln!(
                out,
                "{:<w$} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8.3}% {:>7.1}%",
                c.client,
                latency_ms(c.p50),
                latency_ms(c.p90),
                latency_ms(c.p99),
                latency_ms(c.p999),
                latency_ms(c.max),
                ok_ms(c.ok_p99),
                ok_ms(c.ok_p999),
                c.success_rate() * 100.0,
                c.extra_load() * 100.0
            );
        }
        let _ = writeln!(out, "\nshare of calls per backend");
        let _ = write!(out, "{:<w$}", "client");
        for b in &self.backends {
            let _ = write!(out, " {b:>6}");
        }
        let _ = writeln!(out);
        for c in &self.clients {
            let _ = write!(out, "{:<w$}", c.client);
            for s in c.total_share() {
                let _ = write!(out, " {:>5.1}%", s * 100.0);
            }
            let _ = writeln!(out);
        }
        if self.clients.iter().any(|c| !c.faults.is_empty()) {
            let _ = writeln!(
                out,
                "\n{:<w$} {:<24} {:>12} {:>12} {:>12}",
                "client", "fault", "eject ms", "wasted", "readmit ms"
            );
            for c in &self.clients {
                for f in &c.faults {
                    let fault = format!(
                        "{} {} {}-{}s",
                        self.backends[f.backend],
                        f.kind,
                        f.from_ms as f64 / 1000.0,
                        f.to_ms as f64 / 1000.0
                    );
                    let _ = writeln!(
                        out,
                        "{:<w$} {:<24} {:>12} {:>12} {:>12}",
                        c.client,
                        fault,
                        f.eject(),
                        f.wasted_calls,
                        f.readmit()
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        backend::{BackendSpec, Fault},
        client::ClientSpec,
        dist::Latency,
        scenario::Load,
    };

    /// Two backends, b1 down from 2 s to 4 s.
    fn scenario() -> Scenario {
        let backend = || BackendSpec::new(Latency::Constant { ms: 1.0 });
        let mut down = backend();
        down.faults.push(Fault {
            from_ms: 2_000,
            to_ms: 4_000,
            effect: FaultKind::Down,
        });
        Scenario {
            name: "readmit".into(),
            description: String::new(),
            backends: vec![backend(), down],
            load: Load::OpenLoop {
                rate_per_sec: 1_000.0,
                requests: 6_150,
            },
            clients: vec![ClientSpec::RoundRobin],
            seed: 1,
        }
    }

    /// One call a millisecond for 6.15 s, alternating between the backends, except that b1 gets
    /// none in `skip`: time buckets of 30 ms, so the fault ends inside one.
    fn raw(skip: std::ops::Range<u64>) -> RawRun {
        let calls = (0..6_150u64)
            .map(|ms| {
                let b = if ms % 2 == 1 && !skip.contains(&ms) {
                    1
                } else {
                    0
                };
                (ms, b)
            })
            .collect();
        RawRun {
            client: "test".into(),
            latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap(),
            ok_latency_us: Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap(),
            ok: 6_150,
            failed: 0,
            calls,
            elapsed: RUN,
        }
    }

    const RUN: Duration = Duration::from_millis(6_150);

    /// One call every 40 ms for 6 s, alternating between the backends, except that b1 gets none
    /// in `skip`: with 30 ms buckets, each holds one call or none.
    fn sparse(skip: std::ops::Range<u64>) -> RawRun {
        let calls = (0..150u64)
            .map(|k| {
                let ms = k * 40;
                (ms, u16::from(k % 2 == 1 && !skip.contains(&ms)))
            })
            .collect();
        RawRun {
            calls,
            elapsed: Duration::from_millis(6_000),
            ..raw(0..0)
        }
    }

    /// `requests` requests answered in 1, 2, 3, ... µs (exact in hdrhistogram up to 2,047).
    fn ranked(requests: u64) -> RawRun {
        let mut latency_us = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for us in 1..=requests {
            latency_us.record(us).unwrap();
        }
        RawRun {
            client: "test".into(),
            ok_latency_us: latency_us.clone(),
            latency_us,
            ok: requests,
            failed: 0,
            calls: Vec::new(),
            elapsed: Duration::from_millis(1),
        }
    }

    /// A run's fine buckets nest in the shared buckets of any run as long or longer, and there
    /// are at most 16,000 of them whatever the run's length.
    #[test]
    fn fine_buckets_nest_in_the_shared_buckets_and_stay_few() {
        let lengths: Vec<u64> = (0..60)
            .map(|i| (1.5f64.powi(i) as u64).max(1))
            .chain([6_150, 20_030, 31_999, 32_000, 70_000, 10_000_000_000])
            .collect();
        for &longest in &lengths {
            let shared = bucket_ms(Duration::from_millis(longest));
            let width = (longest / 200).max(10);
            assert!(
                shared <= width && shared * 16 > width * 15,
                "{longest}: {shared}"
            );
            for &shorter in lengths.iter().filter(|&&l| l <= longest) {
                let grain = grain_ms(Duration::from_millis(shorter));
                assert_eq!(shared % grain, 0, "{shorter} in {longest}");
                assert!(shorter / grain < 16_000, "{shorter}: {grain}");
            }
        }
        // Runs under 6.4 s keep the 200th of their length, and so do the round lengths of the
        // built-in scenarios and their longer versions.
        assert_eq!(bucket_ms(RUN), 30);
        assert_eq!(bucket_ms(Duration::from_millis(10_030)), 50);
        assert_eq!(bucket_ms(Duration::from_millis(20_030)), 100);
        assert_eq!(bucket_ms(Duration::from_millis(200_030)), 1_000);
        assert_eq!(bucket_ms(Duration::from_millis(12_345)), 60);
    }

    /// Summarised as it ends, at its own grain, a run reports what its full call log does in the
    /// scenario's shared buckets, and keeps counts for a few thousand buckets, not its calls.
    #[test]
    fn a_summary_reports_what_the_call_log_does() {
        let mut scenario = scenario();
        scenario.backends[0].faults.push(Fault {
            from_ms: 41_000,
            to_ms: 52_345,
            effect: FaultKind::Slow { extra_ms: 1.0 },
        });
        // Two calls a millisecond for 70 s, b1 silent from 2 s to 4.6 s and 41 s to 50 s.
        let long = Duration::from_millis(70_000);
        let calls: Vec<(u64, u16)> = (0..140_000u64)
            .map(|i| {
                let ms = i / 2;
                let quiet = (2_000..4_600).contains(&ms) || (41_000..50_000).contains(&ms);
                (ms, u16::from(i % 2 == 1 && !quiet))
            })
            .collect();
        let raw = || RawRun {
            calls: calls.clone(),
            elapsed: long,
            ..raw(0..0)
        };
        let shared = bucket_ms(long);
        let summary = RunSummary::new(&scenario, raw());
        assert_eq!(summary.grain_ms(), 20);
        assert_eq!(shared, 340);
        assert!(
            summary.counts.len() <= 16_000 * 2,
            "{}",
            summary.counts.len()
        );
        // No more memory than a count of 8 bytes for every fine bucket and backend, though most
        // of them got calls here.
        let fine_buckets = 70_000 / 20 + 1;
        assert!(summary.counts.len() > fine_buckets * 3 / 2);
        assert!(
            std::mem::size_of_val(&summary.counts[..]) <= fine_buckets * 2 * 8,
            "{}",
            std::mem::size_of_val(&summary.counts[..])
        );
        let from_log = ClientReport::new(&scenario, raw(), shared);
        let from_summary = ClientReport::from_summary(&scenario, summary, shared);
        assert_eq!(from_summary, from_log);
        assert_eq!(from_summary.faults.len(), 2);
        // b0's fault: a call a millisecond, two while b1 is silent.
        assert_eq!(from_summary.faults[0].wasted_calls, 11_345 + 9_000);
        // A width that is not a multiple of the grain is rounded down to one.
        let summary = RunSummary::new(&scenario, raw());
        assert_eq!(
            ClientReport::from_summary(&scenario, summary, 350).bucket_ms,
            340
        );
    }

    /// A summary keeps a count for each fine bucket and backend that got calls, not for every
    /// backend of every bucket: many backends and few calls take little memory.
    #[test]
    fn a_summary_keeps_counts_for_the_calls_made() {
        let mut scenario = scenario();
        scenario.backends = vec![BackendSpec::new(Latency::Constant { ms: 1.0 }); 1_000];
        // A 6.15 s run at a grain of 1 ms: 6,151 fine buckets of 1,000 backends, but 13 calls,
        // two of them to one backend in one bucket.
        let mut calls: Vec<(u64, u16)> = (0..10u64)
            .map(|k| (k * 600, (k * 97 % 1_000) as u16))
            .chain([(1_200, 194), (6_000, 999), (6_010, 5)])
            .collect();
        calls.sort_unstable();
        let run = || RawRun {
            calls: calls.clone(),
            ..raw(0..0)
        };
        let summary = RunSummary::new(&scenario, run());
        assert_eq!(summary.grain_ms(), 1);
        assert!(summary.counts.len() <= 12, "{}", summary.counts.len());
        let shared = bucket_ms(RUN);
        let from_log = ClientReport::new(&scenario, run(), shared);
        let from_summary = ClientReport::from_summary(&scenario, summary, shared);
        assert_eq!(from_summary, from_log);
        assert_eq!(from_summary.share[1_200 / 30][194], 1.0);
        assert_eq!(from_summary.share[6_000 / 30][999], 0.5);
        // Calls logged out of time order are counted alike.
        let reversed = RawRun {
            calls: calls.iter().rev().copied().collect(),
            ..raw(0..0)
        };
        assert_eq!(ClientReport::new(&scenario, reversed, shared), from_log);
    }

    /// A fine bucket's count too large for one entry is kept in parts, and added up.
    #[test]
    fn a_count_past_u16_max_is_kept_in_parts() {
        let scenario = scenario();
        let calls: Vec<(u64, u16)> = (0..70_000).map(|_| (0, 0)).chain([(0, 1)]).collect();
        let run = RawRun { calls, ..raw(0..0) };
        let summary = RunSummary::with_grain(&scenario, run, 30);
        assert_eq!(summary.counts, [(0, 0, u16::MAX), (0, 0, 4_465), (0, 1, 1)]);
        let report = ClientReport::from_summary(&scenario, summary, 30);
        assert_eq!(report.share[0], [70_000.0 / 70_001.0, 1.0 / 70_001.0]);
    }

    /// Calls that leave a fine bucket and come back to it are kept as two counts, and added up.
    #[test]
    fn calls_that_come_back_to_a_bucket_are_added_up() {
        let scenario = scenario();
        let run = |calls: &[(u64, u16)]| RawRun {
            calls: calls.to_vec(),
            ..raw(0..0)
        };
        let unordered = [(0, 0), (40, 1), (1, 0)];
        let summary = RunSummary::with_grain(&scenario, run(&unordered), 30);
        assert_eq!(summary.counts, [(0, 0, 1), (1, 1, 1), (0, 0, 1)]);
        let sorted = [(0, 0), (1, 0), (40, 1)];
        for bucket_ms in [30, 60] {
            let report = ClientReport::from_summary(&scenario, summary.clone(), bucket_ms);
            assert_eq!(
                report,
                ClientReport::new(&scenario, run(&sorted), bucket_ms)
            );
            let first = if bucket_ms == 30 {
                vec![1.0, 0.0]
            } else {
                vec![2.0 / 3.0, 1.0 / 3.0]
            };
            assert_eq!(report.share[0], first, "{bucket_ms}");
        }
    }

    /// Extra load is the calls beyond the first of each request that made one: a request turned
    /// away before any call takes nothing off another's retry.
    #[test]
    fn extra_load_counts_no_request_below_one_call() {
        // Four requests: one made no call, one was retried once, two made one call each.
        let run = || RawRun {
            ok: 3,
            failed: 1,
            calls: vec![(0, 0), (1, 1), (2, 0), (3, 1)],
            ..raw(0..0)
        };
        let known = RunSummary::new(&scenario(), run()).with_requests_that_called(3);
        let report = ClientReport::from_summary(&scenario(), known, 10);
        assert_eq!((report.requests, report.backend_calls), (4, 4));
        assert_eq!(report.requests_that_called, 3);
        assert_eq!(report.extra_load(), 0.25);
        // Not knowing, a summary takes every request to have made a call while there are calls
        // enough, and never counts below none extra.
        let report = ClientReport::new(&scenario(), run(), 10);
        assert_eq!(report.requests_that_called, 4);
        assert_eq!(report.extra_load(), 0.0);
        let fewer = RawRun {
            calls: vec![(0, 0), (1, 1)],
            ..run()
        };
        let report = ClientReport::new(&scenario(), fewer, 10);
        assert_eq!(report.requests_that_called, 2);
        assert_eq!(report.extra_load(), 0.0);
    }

    #[test]
    fn percentiles_are_nearest_rank_not_one_past_it() {
        let us = Duration::from_micros;
        let report = ClientReport::new(&scenario(), ranked(1_000), 10);
        assert_eq!(report.p50, us(500));
        assert_eq!(report.p90, us(900));
        assert_eq!(report.p99, us(990));
        // The 999th of 1,000, not the slowest: 99.9 / 100 is a hair above 0.999 in binary.
        assert_eq!(report.p999, us(999));
        assert_eq!(report.max, us(1_000));
        // Nearest rank: the ceiling of q × 1,000.
        let curve = [500, 750, 900, 950, 990, 995, 999, 1_000, 1_000].map(us);
        assert_eq!(report.curve, curve, "{CURVE:?}");
        let report = ClientReport::new(&scenario(), ranked(2_000), 10);
        assert_eq!(report.p999, us(1_998));
    }

    #[test]
    fn a_client_that_never_left_the_backend_reads_zero_readmit_whatever_the_buckets() {
        let report = ClientReport::new(&scenario(), raw(0..0), bucket_ms(RUN));
        assert_eq!(report.bucket_ms, 30);
        let fault = &report.faults[0];
        assert_eq!(fault.time_to_eject, None, "{fault:?}");
        assert_eq!(fault.time_to_readmit, Some(Duration::ZERO), "{fault:?}");
    }

    #[test]
    fn a_fault_after_the_run_ended_is_not_reached() {
        let short = RawRun {
            calls: raw(0..0).calls.into_iter().take(1_500).collect(),
            elapsed: Duration::from_millis(1_500),
            ..raw(0..0)
        };
        let report = ClientReport::new(&scenario(), short, 10);
        let fault = &report.faults[0];
        assert!(!fault.reached, "{fault:?}");
        assert_eq!(fault.eject(), "n/a");
        assert_eq!(fault.readmit(), "n/a");
        let report = ClientReport::new(&scenario(), raw(0..0), 10);
        let fault = &report.faults[0];
        assert!(fault.reached, "{fault:?}");
        assert_eq!(fault.eject(), "never");
    }

    /// A fault that starts after the run ended, even within the run's last bucket, is judged on
    /// no call: those of that bucket all came before it.
    #[test]
    fn a_fault_after_the_run_in_its_last_bucket_is_not_judged() {
        let mut scenario = scenario();
        scenario.backends[1].faults[0].from_ms = 2_996;
        // The run ends at 2.995 s, in the bucket of 2.97 s to 3 s; b1 silent from 2.97 s.
        let cut = RawRun {
            calls: raw(2_970..6_150).calls.into_iter().take(2_995).collect(),
            elapsed: Duration::from_millis(2_995),
            ..raw(0..0)
        };
        let report = ClientReport::new(&scenario, cut, 30);
        let fault = &report.faults[0];
        assert!(!fault.reached && !fault.eject_judged, "{fault:?}");
        assert_eq!(fault.time_to_eject, None, "{fault:?}");
        assert_eq!(fault.eject(), "n/a");
    }

    /// A run that ended while the fault was still active reports its readmit as `n/a`, not
    /// `never`, even when the backend got no calls at the end; its eject is judged as usual.
    #[test]
    fn a_fault_still_active_as_the_run_ended_has_no_readmit() {
        // b1 silent from 2 s to the end of the run, at 3 s, inside the fault (2 s to 4 s).
        let cut = RawRun {
            calls: raw(2_000..6_150).calls.into_iter().take(3_000).collect(),
            elapsed: Duration::from_millis(3_000),
            ..raw(0..0)
        };
        let report = ClientReport::new(&scenario(), cut, 10);
        let fault = &report.faults[0];
        assert!(fault.reached && !fault.ended, "{fault:?}");
        assert_eq!(fault.time_to_readmit, None, "{fault:?}");
        assert_eq!(fault.readmit(), "n/a");
        assert_eq!(fault.eject(), "10.0");
        // Nor is a backend that never left readmitted by a run that ended 5 ms before the fault
        // did, in the 30 ms bucket the fault ends in.
        let almost = RawRun {
            calls: raw(0..0).calls.into_iter().take(3_995).collect(),
            elapsed: Duration::from_millis(3_995),
            ..raw(0..0)
        };
        let report = ClientReport::new(&scenario(), almost, 30);
        let fault = &report.faults[0];
        assert!(!fault.ended, "{fault:?}");
        assert_eq!(fault.time_to_readmit, None, "{fault:?}");
        let table = Report {
            scenario: "readmit".into(),
            description: String::new(),
            seed: 1,
            backends: vec!["b0".into(), "b1".into()],
            clients: vec![report.clone()],
        }
        .table();
        let row = table.lines().last().unwrap();
        assert!(row.ends_with(" n/a"), "{row}");
        // A fault that ends as the run does left no time to come back in, whatever the buckets.
        for bucket_ms in [10, 30] {
            let whole = RawRun {
                calls: raw(0..0).calls.into_iter().take(4_000).collect(),
                elapsed: Duration::from_millis(4_000),
                ..raw(0..0)
            };
            let report = ClientReport::new(&scenario(), whole, bucket_ms);
            assert!(!report.faults[0].ended, "{:?}", report.faults[0]);
            assert_eq!(report.faults[0].readmit(), "n/a");
        }
        // One millisecond after it, a client that never left the backend reads 0.
        let after = RawRun {
            calls: raw(0..0).calls.into_iter().take(4_001).collect(),
            elapsed: Duration::from_millis(4_001),
            ..raw(0..0)
        };
        let report = ClientReport::new(&scenario(), after, 30);
        assert!(report.faults[0].ended, "{:?}", report.faults[0]);
        assert_eq!(report.faults[0].time_to_readmit, Some(Duration::ZERO));
    }

    /// Buckets holding fewer than `MIN_CALLS_PER_BACKEND` calls per backend are judged together
    /// with the ones after them: eject at the end of the stretch, readmit at the first bucket in
    /// it that gave the backend a call.
    #[test]
    fn sparse_buckets_are_judged_in_stretches() {
        // b1's calls go to b0 from 2 s to 4.6 s: 8 calls to a stretch.
        let report = ClientReport::new(&scenario(), sparse(2_000..4_600), 30);
        let fault = &report.faults[0];
        assert!(fault.eject_judged && fault.readmit_judged, "{fault:?}");
        // The calls of 2 s to 2.28 s, all to b0: the stretch ends with the bucket of 2.28 s.
        assert_eq!(
            fault.time_to_eject,
            Some(Duration::from_millis(310)),
            "{fault:?}"
        );
        // 4 s to 4.28 s: none to b1; 4.32 s to 4.6 s: one of 8; 4.64 s to 4.92 s: half, the
        // first at 4.68 s, in the bucket that starts then.
        assert_eq!(
            fault.time_to_readmit,
            Some(Duration::from_millis(680)),
            "{fault:?}"
        );
    }

    /// The last calls of a fault, too few for a stretch of their own, are judged together with the
    /// stretch before them, which is judged alone first.
    #[test]
    fn the_last_calls_of_a_fault_are_judged_with_the_stretch_before_them() {
        // The fault's buckets (1.98 s to 4.02 s) hold 51 calls: six stretches of 8, the last from
        // 3.6 s to 3.88 s, and 3.92 s to 4 s left over.
        let eject = |skip| ClientReport::new(&scenario(), sparse(skip), 30).faults[0].clone();
        // b1 gets 3.64 s of the last stretch, an eighth (a quarter of its fair share), and none
        // of the 3 after: 1 of 11, ejected by the end of the bucket of 4 s.
        let fault = eject(3_700..6_000);
        assert!(fault.eject_judged, "{fault:?}");
        assert_eq!(
            fault.time_to_eject,
            Some(Duration::from_millis(2_020)),
            "{fault:?}"
        );
        // b1 gets none of the last stretch: ejected at its end (the bucket of 3.88 s).
        let fault = eject(3_600..6_000);
        assert_eq!(
            fault.time_to_eject,
            Some(Duration::from_millis(1_900)),
            "{fault:?}"
        );
    }

    /// A backend given no call for a while after the fault, in a stretch that gives it its share
    /// later on, is not read as back from the stretch's start.
    #[test]
    fn readmit_waits_for_the_backend_s_first_call_in_its_stretch() {
        // b1's calls go to b0 from 2 s to 4.2 s. The stretch of 4 s to 4.28 s gives b1 two
        // calls of 8 (4.2 s and 4.28 s), half its fair share; the first in the bucket of 4.2 s.
        let report = ClientReport::new(&scenario(), sparse(2_000..4_200), 30);
        let fault = &report.faults[0];
        assert!(fault.readmit_judged, "{fault:?}");
        assert_eq!(
            fault.time_to_readmit,
            Some(Duration::from_millis(200)),
            "{fault:?}"
        );
    }

    #[test]
    fn readmit_counts_from_the_fault_end_to_the_bucket_the_backend_is_back_in() {
        let report = ClientReport::new(&scenario(), raw(2_000..4_600), bucket_ms(RUN));
        let fault = &report.faults[0];
        // Gone from the bucket after the one the fault starts in (1.98 s to 2.01 s).
        assert_eq!(
            fault.time_to_eject,
            Some(Duration::from_millis(40)),
            "{fault:?}"
        );
        // Back at 4.6 s, in the bucket that starts at 4.59 s.
        assert_eq!(
            fault.time_to_readmit,
            Some(Duration::from_millis(590)),
            "{fault:?}"
        );
    }

    /// A run as long as a summary can measure, at the finest grain (as `ClientReport::new` may
    /// ask for): its bucket count stops at the most there can be rather than overflowing.
    #[test]
    fn the_longest_run_at_the_finest_grain_is_summarised() {
        let long = RawRun {
            calls: vec![(0, 0), (u64::MAX, 1)],
            elapsed: Duration::MAX,
            ..raw(0..0)
        };
        let summary = RunSummary::with_grain(&scenario(), long, 1);
        assert_eq!(summary.grain_ms, 1);
        assert_eq!(summary.counts, [(0, 0, 1)]);
    }
}
