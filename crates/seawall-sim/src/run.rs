//! Runs a scenario in virtual time.

use crate::{
    backend::{DispatchLog, SimBackend, SimRequest},
    client::ClientSpec,
    report::{bucket_ms, ClientReport, Report, RunSummary},
    scenario::{Load, Scenario, MAX_SIMULATED_SECS, MAX_SWEEPS},
};
use hdrhistogram::Histogram;
use rand::{rngs::SmallRng, Rng, SeedableRng};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::{task::JoinSet, time::Instant};
use tower::ServiceExt;

/// The slowest latency the histograms of a run tell apart, microseconds (30 days and 12.8 s: far
/// beyond any one call, though a long enough queue gets there): a request slower than that is
/// counted as taking it, and reports show the percentiles it reaches as `>` it. It lies on an edge
/// of the histograms' buckets (1,207 × 2³¹ µs; past 2⁴¹ µs a bucket is 2³¹ µs wide), so a figure
/// below it, reported as the top of its bucket, stays below it.
pub const MAX_LATENCY_US: u64 = 1_207 << 31;

/// What one client's run produced, before it is summarised.
#[derive(Debug)]
pub struct RawRun {
    /// The client's label.
    pub client: String,
    /// Latency of every request, microseconds, from intended send time to answer, up to
    /// [`MAX_LATENCY_US`].
    pub latency_us: Histogram<u64>,
    /// Latency of the requests answered successfully, microseconds.
    pub ok_latency_us: Histogram<u64>,
    /// Requests answered successfully.
    pub ok: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Every call the backends received: (ms since start, backend).
    pub calls: Vec<(u64, u16)>,
    /// Simulated time the run took.
    pub elapsed: Duration,
}

#[derive(Debug)]
struct Tally {
    latency_us: Histogram<u64>,
    ok_latency_us: Histogram<u64>,
    ok: u64,
    failed: u64,
}

/// Runs every client of `scenario` on its own identical cluster, seeded by `seed`.
///
/// Each client runs on a tokio runtime of the simulation's own, with a paused clock, and the call
/// blocks until every run has ended. It may be made from inside another runtime (an async `main`
/// or a `#[tokio::test]`): the runs then go on a thread of their own, and the calling thread
/// waits for them, so from async code with other tasks to serve, call it in
/// `tokio::task::spawn_blocking`.
pub fn run(scenario: &Scenario, seed: u64) -> Result<Report, String> {
    scenario.validate()?;
    // Each run is summarised as it ends, so only one client's calls are held at a time.
    let summaries = scenario
        .clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            run_client(scenario, client, seed).map_err(|e| format!("clients[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    // One bucket width for every client, so their eject and readmit times are rounded alike.
    let longest = summaries
        .iter()
        .map(RunSummary::elapsed)
        .max()
        .unwrap_or_default();
    let bucket_ms = bucket_ms(longest);
    let clients = summaries
        .into_iter()
        .map(|summary| ClientReport::from_summary(scenario, summary, bucket_ms))
        .collect();
    Ok(Report {
        scenario: scenario.name.clone(),
        description: scenario.description.clone(),
        seed,
        backends: scenario
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| b.name.clone().unwrap_or_else(|| format!("b{i}")))
            .collect(),
        clients,
    })
}

/// Runs one client, summarised as its run ends; the cluster and the request keys are the same for
/// every client. Like [`run`], it blocks until the run ends, and may be called from inside a
/// tokio runtime.
///
/// A run still going when its simulated time reaches the client's
/// [`max_simulated_time`](ClientSpec::max_simulated_time) is stopped with an error saying so.
pub fn run_client(
    scenario: &Scenario,
    client: &ClientSpec,
    seed: u64,
) -> Result<RunSummary, String> {
    // A thread driving a runtime cannot block on another, so from inside one the simulation's
    // runtime goes on a thread of its own.
    if tokio::runtime::Handle::try_current().is_ok() {
        return std::thread::scope(|s| {
            s.spawn(|| simulate(scenario, client, seed))
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
    }
    simulate(scenario, client, seed)
}

/// Runs one client on a runtime of its own, from a thread that drives no other.
fn simulate(scenario: &Scenario, client: &ClientSpec, seed: u64) -> Result<RunSummary, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("cannot start the simulation runtime: {e}"))?;
    runtime.block_on(async move {
        let start = Instant::now();
        let limit = client.max_simulated_time();
        let end = start + limit;
        let log = Arc::new(DispatchLog::default());
        let backends: Vec<SimBackend> = scenario
            .backends
            .iter()
            .enumerate()
            .map(|(i, spec)| SimBackend::new(i, spec.clone(), seed, start, log.clone()))
            .collect();
        let concurrency = match scenario.load {
            Load::ClosedLoop { concurrency, .. } => concurrency,
            Load::OpenLoop { .. } => 1024,
        };
        let service = client.build(backends, seed, concurrency)?;
        let histogram =
            Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| e.to_string())?;
        let tally = Arc::new(Mutex::new(Tally {
            latency_us: histogram.clone(),
            ok_latency_us: histogram,
            ok: 0,
            failed: 0,
        }));
        let keys = Arc::new(Mutex::new(SmallRng::seed_from_u64(seed ^ 0x5eed_0f4e_7500)));
        let request = move |id: u64| SimRequest {
            id,
            key: keys.lock().unwrap().random(),
            deadline: None,
        };
        let record = {
            let tally = tally.clone();
            move |sent: Instant, ok: bool| {
                let us = sent
                    .elapsed()
                    .as_micros()
                    .clamp(1, u128::from(MAX_LATENCY_US)) as u64;
                let mut t = tally.lock().unwrap();
                let _ = t.latency_us.record(us);
                if ok {
                    let _ = t.ok_latency_us.record(us);
                    t.ok += 1;
                } else {
                    t.failed += 1;
                }
            }
        };
        let mut tasks = JoinSet::new();
        match scenario.load {
            Load::OpenLoop {
                rate_per_sec,
                requests,
            } => {
                for id in 0..requests {
                    // Due at id / rate, rounded once: an interval rounded to the nanosecond and
                    // then multiplied could land a send due on a tick just past it.
                    let intended = start + Duration::from_secs_f64(id as f64 / rate_per_sec);
                    if intended >= end {
                        return Err(stopped(client, limit, "requests still to send"));
                    }
                    tokio::time::sleep_until(intended).await;
                    let svc = service.clone();
                    let req = request(id);
                    let record = record.clone();
                    tasks.spawn(async move {
                        let ok = svc.oneshot(req).await.is_ok();
                        record(intended, ok);
                    });
                    // Let go of the callers that are done, so that memory follows the calls in
                    // flight, not every call sent.
                    while let Some(joined) = tasks.try_join_next() {
                        joined.map_err(|e| format!("a simulated caller panicked: {e}"))?;
                    }
                }
            }
            Load::ClosedLoop {
                concurrency,
                requests,
            } => {
                let next = Arc::new(AtomicU64::new(0));
                for _ in 0..concurrency {
                    let svc = service.clone();
                    let next = next.clone();
                    let record = record.clone();
                    let request = request.clone();
                    tasks.spawn(async move {
                        loop {
                            let id = next.fetch_add(1, Ordering::Relaxed);
                            if id >= requests {
                                break;
                            }
                            let sent = Instant::now();
                            let ok = svc.clone().oneshot(request(id)).await.is_ok();
                            record(sent, ok);
                        }
                    });
                }
            }
        }
        // The callers are awaited first, so the limit's timer is polled only while they are
        // pending: it changes nothing in a run that ends before it.
        let stop = tokio::time::sleep_until(end);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                biased;
                joined = tasks.join_next() => match joined {
                    Some(joined) => joined.map_err(|e| format!("a simulated caller panicked: {e}"))?,
                    None => break,
                },
                () = &mut stop => return Err(stopped(client, limit, "calls still going")),
            }
        }
        let elapsed = start.elapsed();
        drop((service, record));
        let tally = Arc::try_unwrap(tally)
            .map_err(|_| "tally still shared".to_string())?
            .into_inner()
            .map_err(|e| e.to_string())?;
        let raw = RawRun {
            client: client.label(),
            latency_us: tally.latency_us,
            ok_latency_us: tally.ok_latency_us,
            ok: tally.ok,
            failed: tally.failed,
            calls: log.take(),
            elapsed,
        };
        Ok(RunSummary::new(scenario, raw).with_requests_that_called(log.requests_that_called()))
    })
}

/// The error of a run stopped at its limit on simulated time, `limit`, with `left` (calls still
/// going: a closed loop's callers, calls waiting in a backend's queue; or, in an open loop not
/// validated, requests still to send).
fn stopped(client: &ClientSpec, limit: Duration, left: &str) -> String {
    let secs = limit.as_secs_f64();
    match client.sweep_interval() {
        Some(interval) if limit < Duration::from_secs(MAX_SIMULATED_SECS) => format!(
            "simulated time reached {secs} s with {left}, {MAX_SWEEPS} outlier-detection intervals of {} ms (outlier.interval_ms), the most a seawall client's run may span: the run was stopped",
            interval.as_millis()
        ),
        _ => format!(
            "simulated time reached {secs} s (10 years) with {left}, the most a run may take: the run was stopped"
        ),
    }
}
