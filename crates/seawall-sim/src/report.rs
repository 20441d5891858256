//! What a run measured, summarised per client.

use crate::{backend::FaultKind, run::RawRun, scenario::Scenario};
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
    /// Slowest request.
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
    /// Time from the fault's start until the backend's share of calls fell below a quarter of
    /// its fair share (None: never, within the fault).
    pub time_to_eject: Option<Duration>,
    /// Calls sent to the backend while the fault lasted.
    pub wasted_calls: u64,
    /// Time from the fault's end until the backend got at least half its fair share again (None:
    /// never, within the run).
    pub time_to_readmit: Option<Duration>,
}

/// Percentiles drawn in the latency curves.
pub const CURVE: [f64; 9] = [50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99];

/// The width of the time buckets, milliseconds, for a scenario whose longest client run took
/// `longest`: a 200th of it, at least 10 ms. Every client of the scenario is given the same, so
/// their eject and readmit times are rounded alike.
pub fn bucket_ms(longest: Duration) -> u64 {
    let run_ms = u64::try_from(longest.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    (run_ms / 200).max(10)
}

impl ClientReport {
    /// Summarises one client's run over `scenario`'s backends, judging each of its faults, with
    /// calls counted in time buckets of `bucket_ms` (give every client of a scenario the same,
    /// from [`bucket_ms`] of the longest run).
    ///
    /// `raw` may come from the simulator or from a live run against real servers (the showcase
    /// example does this), as long as its calls are indexed like `scenario.backends`.
    pub fn new(scenario: &Scenario, raw: RawRun, bucket_ms: u64) -> Self {
        let h = &raw.latency_us;
        let at = |q: f64| Duration::from_micros(value_at_percentile(h, q));
        let ok_at = |q: f64| {
            (!raw.ok_latency_us.is_empty())
                .then(|| Duration::from_micros(value_at_percentile(&raw.ok_latency_us, q)))
        };
        let n = scenario.backends.len();
        let run_ms = u64::try_from(raw.elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let bucket_ms = bucket_ms.max(1);
        let buckets = (run_ms / bucket_ms + 1) as usize;
        let mut counts = vec![vec![0u64; n]; buckets];
        let mut calls_per_backend = vec![0u64; n];
        for &(at_ms, b) in &raw.calls {
            calls_per_backend[b as usize] += 1;
            let i = (at_ms / bucket_ms) as usize;
            if let Some(row) = counts.get_mut(i) {
                row[b as usize] += 1;
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
        let mut faults = Vec::new();
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
                let wasted_calls = raw
                    .calls
                    .iter()
                    .filter(|&&(t, cb)| cb as usize == b && (f.from_ms..f.to_ms).contains(&t))
                    .count() as u64;
                let bucket_of = |ms: u64| (ms / bucket_ms) as usize;
                let active = |i: usize| counts[i].iter().sum::<u64>() > 0;
                let time_to_eject = (bucket_of(f.from_ms)..=bucket_of(f.to_ms.saturating_sub(1)))
                    .filter(|&i| i < buckets && active(i))
                    .find(|&i| share[i][b] < fair / 4.0)
                    .map(|i| {
                        Duration::from_millis(
                            ((i as u64 + 1) * bucket_ms).saturating_sub(f.from_ms),
                        )
                    });
                // From the bucket the fault ends in (counted from the fault's end, not before it):
                // a client that kept sending to the backend throughout reads 0, wherever the
                // bucket edges fall.
                let time_to_readmit = (bucket_of(f.to_ms)..buckets)
                    .filter(|&i| active(i))
                    .find(|&i| share[i][b] >= fair / 2.0)
                    .map(|i| Duration::from_millis((i as u64 * bucket_ms).saturating_sub(f.to_ms)));
                faults.push(FaultReport {
                    backend: b,
                    kind,
                    from_ms: f.from_ms,
                    to_ms: f.to_ms,
                    time_to_eject,
                    wasted_calls,
                    time_to_readmit,
                });
            }
        }
        ClientReport {
            client: raw.client,
            requests: raw.ok + raw.failed,
            ok: raw.ok,
            p50: at(50.0),
            p90: at(90.0),
            p99: at(99.0),
            p999: at(99.9),
            max: Duration::from_micros(h.max()),
            ok_p99: ok_at(99.0),
            ok_p999: ok_at(99.9),
            curve: CURVE.iter().map(|&q| at(q)).collect(),
            backend_calls: raw.calls.len() as u64,
            calls_per_backend,
            share,
            bucket_ms,
            faults,
            elapsed: raw.elapsed,
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

    /// Calls beyond one per request (retries and hedges), as a share of requests.
    pub fn extra_load(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.backend_calls as f64 / self.requests as f64 - 1.0
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

fn ok_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".into(), ms)
}

fn opt_ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "never".into(), ms)
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
                ms(c.p50),
                ms(c.p90),
                ms(c.p99),
                ms(c.p999),
                ms(c.max),
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
                        opt_ms(f.time_to_eject),
                        f.wasted_calls,
                        opt_ms(f.time_to_readmit)
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
}
