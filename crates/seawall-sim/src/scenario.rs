//! Scenarios: a cluster, a load, and the clients to compare on it.

use crate::{backend::BackendSpec, client::ClientSpec};
use serde::{de::IgnoredAny, Deserialize};
use std::collections::BTreeMap;

/// A simulation: backends, load, clients under test.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Short name (`seawall-sim run <name>`).
    pub name: String,
    /// One line on what it shows.
    #[serde(default)]
    pub description: String,
    /// The backends.
    pub backends: Vec<BackendSpec>,
    /// The load offered to each client.
    pub load: Load,
    /// The clients to compare, each on an identical, freshly seeded cluster.
    pub clients: Vec<ClientSpec>,
    /// Seed used when the command line gives none.
    #[serde(default = "default_seed")]
    pub seed: u64,
}

/// The most concurrent callers a closed loop may have (each is a task of the simulation).
pub const MAX_CONCURRENCY: usize = 100_000;

/// The most requests a scenario may offer: every call of the client being run is logged until
/// its run ends (and an open loop may have them all in flight at once), so memory grows with the
/// count.
pub const MAX_REQUESTS: u64 = 10_000_000;

/// The longest simulated time a client's run may take, seconds: 10 years (of 365 days). An open
/// loop that would take longer to send its requests (`requests / rate_per_sec`) is rejected; a
/// run still going when it reaches the limit (a closed loop of slow calls, a queue still draining)
/// is stopped with an error. Without a seawall client, a run's cost follows its calls, not its
/// simulated time: this only keeps runs to a span that a scenario can mean.
pub const MAX_SIMULATED_SECS: u64 = 10 * 365 * 86_400;

/// The most outlier-detection intervals a seawall client's run may span: 3,153,600, a year at
/// the default interval of 10 s. Time is virtual, but each seawall balancer wakes once per
/// interval of it whatever the load, so a run's cost grows with its length over the interval
/// (`clients[i].outlier.interval_ms`). An open loop that would span more to send its requests
/// is rejected, naming the interval, and a run still going when it reaches them is stopped with
/// an error. See `docs/simulator.md` for what this many intervals costs.
pub const MAX_SWEEPS: u32 = 3_153_600;

fn default_seed() -> u64 {
    1
}

/// How requests are offered.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Load {
    /// A fixed arrival rate regardless of how fast answers come back. Latency is measured from
    /// each request's intended send time, so a stalled client cannot hide its queue (no
    /// coordinated omission).
    OpenLoop {
        /// Requests per second.
        rate_per_sec: f64,
        /// Total requests, at most [`MAX_REQUESTS`].
        requests: u64,
    },
    /// A fixed number of callers, each sending its next request when the last one is answered.
    ClosedLoop {
        /// Concurrent callers, at most [`MAX_CONCURRENCY`].
        concurrency: usize,
        /// Total requests, at most [`MAX_REQUESTS`].
        requests: u64,
    },
}

impl Load {
    /// Total requests offered.
    pub fn requests(&self) -> u64 {
        match *self {
            Load::OpenLoop { requests, .. } | Load::ClosedLoop { requests, .. } => requests,
        }
    }
}

fn check_requests(requests: u64) -> Result<(), String> {
    if !(1..=MAX_REQUESTS).contains(&requests) {
        return Err(format!(
            "load.requests must be in 1..={MAX_REQUESTS}, got {requests}"
        ));
    }
    Ok(())
}

/// The keys given beside `kind` to a kind that has no fields, kept so that they can be refused
/// by name. serde reads a field-less variant of an internally tagged enum without looking at the
/// rest of its table, whatever `deny_unknown_fields` says (serde-rs/serde#2123), so an enum with
/// such kinds is read through a private mirror whose field-less kinds hold one of these.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct NoFields(BTreeMap<String, IgnoredAny>);

impl NoFields {
    /// Refuses the first key given (in key order), naming it and `kind`.
    pub(crate) fn check(&self, kind: &str) -> Result<(), String> {
        match self.0.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!(
                "unknown field `{key}`: kind `{kind}` has no fields"
            )),
        }
    }
}

impl Scenario {
    /// Reads a scenario from TOML.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Checks every parameter, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        if self.backends.is_empty() {
            return Err("backends must not be empty".into());
        }
        if self.backends.len() > u16::MAX as usize {
            return Err(format!("at most {} backends", u16::MAX));
        }
        for (i, b) in self.backends.iter().enumerate() {
            b.validate().map_err(|e| format!("backends[{i}].{e}"))?;
        }
        match self.load {
            Load::OpenLoop {
                rate_per_sec,
                requests,
            } => {
                // At least one call an hour, the longest gap a scenario may have.
                if !(rate_per_sec.is_finite() && rate_per_sec >= 1.0 / 3600.0) {
                    return Err(format!(
                        "load.rate_per_sec must be a finite number >= 1/3600, got {rate_per_sec}"
                    ));
                }
                check_requests(requests)?;
                let secs = requests as f64 / rate_per_sec;
                if secs > MAX_SIMULATED_SECS as f64 {
                    return Err(format!(
                        "load.requests / load.rate_per_sec must be at most {MAX_SIMULATED_SECS} s (10 years) of simulated time, got {secs:.0} s"
                    ));
                }
            }
            Load::ClosedLoop {
                concurrency,
                requests,
            } => {
                if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
                    return Err(format!(
                        "load.concurrency must be in 1..={MAX_CONCURRENCY}, got {concurrency}"
                    ));
                }
                check_requests(requests)?;
            }
        }
        if self.clients.is_empty() {
            return Err("clients must not be empty".into());
        }
        for (i, c) in self.clients.iter().enumerate() {
            c.validate(&self.backends)
                .map_err(|e| format!("clients[{i}].{e}"))?;
        }
        if let Load::OpenLoop {
            rate_per_sec,
            requests,
        } = self.load
        {
            let secs = requests as f64 / rate_per_sec;
            for (i, c) in self.clients.iter().enumerate() {
                let Some(interval) = c.sweep_interval() else {
                    continue;
                };
                let sweeps = secs / interval.as_secs_f64();
                if sweeps > f64::from(MAX_SWEEPS) {
                    return Err(format!(
                        "clients[{i}].outlier.interval_ms: the open loop takes {secs:.0} s (load.requests / load.rate_per_sec), {sweeps:.0} outlier-detection intervals of {} ms, and a seawall client's run may span at most {MAX_SWEEPS} (a year at the default 10,000 ms)",
                        interval.as_millis()
                    ));
                }
            }
        }
        Ok(())
    }

    /// The same scenario with `requests` requests (for quick runs and tests).
    pub fn with_requests(mut self, requests: u64) -> Self {
        match &mut self.load {
            Load::OpenLoop { requests: r, .. } | Load::ClosedLoop { requests: r, .. } => {
                *r = requests
            }
        }
        self
    }
}
