//! The clients under test, each built over the same simulated backends.

use crate::{
    backend::{BackendSpec, SimBackend, SimRequest, SimResponse},
    dist::{check_ms, duration_ms},
    scenario::{NoFields, MAX_SIMULATED_SECS, MAX_SWEEPS},
};
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use seawall_balance::{BalanceLayer, OutlierDetection, Picker, Tagged};
use seawall_core::{BoxError, ConfigError};
use seawall_retry::{HedgeDelay, HedgeLayer, RetryBudget, RetryLayer};
use seawall_timeout::TimeoutLayer;
use serde::Deserialize;
use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tower::{
    balance::p2c::Balance,
    buffer::Buffer,
    discover::{Change, ServiceList},
    load::{CompleteOnResponse, PeakEwma, PendingRequests},
    retry::{
        budget::{Budget, TpsBudget},
        Policy, Retry,
    },
    util::BoxCloneService,
    Layer, Service, ServiceExt,
};

/// A client under test, as a cloneable boxed tower service.
pub type SimClient = BoxCloneService<SimRequest, SimResponse, BoxError>;

/// A client to put under load.
// A configuration value, built once per run: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawClientSpec")]
pub enum ClientSpec {
    /// Naive round robin over every backend, healthy or not.
    RoundRobin,
    /// tower's `p2c::Balance` over `PendingRequests` (behind a `Buffer`, as tower requires).
    TowerP2cPending,
    /// tower's `p2c::Balance` over `PeakEwma` (behind a `Buffer`).
    TowerP2cPeakEwma {
        /// RTT assumed before the first answer, milliseconds (default 30, tower's example's); more
        /// than 0.
        default_rtt_ms: f64,
        /// EWMA decay, milliseconds (default 10,000, tower's example's).
        decay_ms: f64,
    },
    /// tower's `Retry` with a `TpsBudget` (Finagle's budget as tower has it, over 10 s) around
    /// naive round robin: a failed attempt is retried at once, up to `max_attempts` attempts in
    /// all, while the budget allows. Each request deposits once, as Finagle's budget counts.
    TowerRetry {
        /// Attempts in all, the first included (default 3).
        max_attempts: u32,
        /// Retries allowed per request (`TpsBudget`'s `retry_percent`, a fraction like seawall's;
        /// default 0.2): 0, 1/n, or above 1, 1000/n. `TpsBudget` withdraws a whole number of deposits per retry,
        /// `1 / budget_ratio` (or `1000 / budget_ratio`) rounded down, so it keeps no other ratio
        /// (0.6 would allow a retry per request), and the simulator rejects one.
        budget_ratio: f64,
        /// Retries a second allowed whatever the traffic (default 10).
        budget_min_per_second: u32,
    },
    /// A seawall stack: total timeout → retry → hedge → balancer, each optional but the balancer.
    Seawall(SeawallSpec),
}

/// [`ClientSpec`] as a scenario spells it, refusing keys on the kinds without fields (see
/// [`NoFields`]).
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(
    tag = "kind",
    expecting = "internally tagged enum ClientSpec",
    rename_all = "snake_case",
    deny_unknown_fields
)]
enum RawClientSpec {
    RoundRobin(NoFields),
    TowerP2cPending(NoFields),
    TowerP2cPeakEwma {
        #[serde(default = "default_rtt_ms")]
        default_rtt_ms: f64,
        #[serde(default = "default_decay_ms")]
        decay_ms: f64,
    },
    TowerRetry {
        #[serde(default = "three")]
        max_attempts: u32,
        #[serde(default = "retry_ratio")]
        budget_ratio: f64,
        #[serde(default = "ten")]
        budget_min_per_second: u32,
    },
    Seawall(SeawallSpec),
}

impl TryFrom<RawClientSpec> for ClientSpec {
    type Error = String;

    fn try_from(raw: RawClientSpec) -> Result<Self, String> {
        Ok(match raw {
            RawClientSpec::RoundRobin(rest) => {
                rest.check("round_robin")?;
                ClientSpec::RoundRobin
            }
            RawClientSpec::TowerP2cPending(rest) => {
                rest.check("tower_p2c_pending")?;
                ClientSpec::TowerP2cPending
            }
            RawClientSpec::TowerP2cPeakEwma {
                default_rtt_ms,
                decay_ms,
            } => ClientSpec::TowerP2cPeakEwma {
                default_rtt_ms,
                decay_ms,
            },
            RawClientSpec::TowerRetry {
                max_attempts,
                budget_ratio,
                budget_min_per_second,
            } => ClientSpec::TowerRetry {
                max_attempts,
                budget_ratio,
                budget_min_per_second,
            },
            RawClientSpec::Seawall(spec) => ClientSpec::Seawall(spec),
        })
    }
}

/// A seawall client stack, outer to inner: total timeout, budgeted retry, hedging, balancer.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeawallSpec {
    /// Shown in reports; defaults to a description of the stack.
    #[serde(default)]
    pub label: Option<String>,
    /// How the balancer picks an endpoint (default: power of two choices by PeakEWMA).
    #[serde(default)]
    pub picker: PickerSpec,
    /// Passive outlier detection (default: seawall-balance's defaults).
    #[serde(default)]
    pub outlier: Option<OutlierSpec>,
    /// A timeout for the whole call, retries included, milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Budgeted retries.
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    /// Hedged requests.
    #[serde(default)]
    pub hedge: Option<HedgeSpec>,
}

/// The balancer's picker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawPickerSpec")]
pub enum PickerSpec {
    /// Each endpoint in turn.
    RoundRobin,
    /// A random endpoint.
    Random,
    /// Fewest calls in flight over all endpoints.
    LeastOutstanding,
    /// Power of d choices by calls in flight.
    P2cOutstanding {
        /// Endpoints drawn per pick (default 2).
        choices: usize,
    },
    /// The cheapest of all endpoints by PeakEWMA cost.
    LeastPeakEwma {
        /// The EWMA's time constant, milliseconds (default 10,000); also how long an estimate
        /// lasts before the endpoint gets a trial call.
        decay_ms: Option<u64>,
    },
    /// Power of d choices by PeakEWMA (seawall's default picker; d = 2).
    P2cPeakEwma {
        /// Endpoints drawn per pick (default 2).
        choices: usize,
        /// The EWMA's time constant, milliseconds (default 10,000).
        decay_ms: Option<u64>,
    },
    /// The backends in `local_zone` (their `zone`) while enough of them are healthy, otherwise
    /// the healthy zones; power of two choices by calls in flight within them.
    ZoneAware {
        /// The client's own zone.
        local_zone: String,
        /// The share of a zone's backends that must be healthy for it to take traffic (default
        /// seawall-balance's, 0.7).
        min_healthy_share: Option<f64>,
    },
}

/// [`PickerSpec`] as a scenario spells it, refusing keys on the kinds without fields (see
/// [`NoFields`]).
#[derive(Deserialize)]
#[serde(
    tag = "kind",
    expecting = "internally tagged enum PickerSpec",
    rename_all = "snake_case",
    deny_unknown_fields
)]
enum RawPickerSpec {
    RoundRobin(NoFields),
    Random(NoFields),
    LeastOutstanding(NoFields),
    P2cOutstanding {
        #[serde(default = "two")]
        choices: usize,
    },
    LeastPeakEwma {
        #[serde(default)]
        decay_ms: Option<u64>,
    },
    P2cPeakEwma {
        #[serde(default = "two")]
        choices: usize,
        #[serde(default)]
        decay_ms: Option<u64>,
    },
    ZoneAware {
        local_zone: String,
        #[serde(default)]
        min_healthy_share: Option<f64>,
    },
}

impl TryFrom<RawPickerSpec> for PickerSpec {
    type Error = String;

    fn try_from(raw: RawPickerSpec) -> Result<Self, String> {
        Ok(match raw {
            RawPickerSpec::RoundRobin(rest) => {
                rest.check("round_robin")?;
                PickerSpec::RoundRobin
            }
            RawPickerSpec::Random(rest) => {
                rest.check("random")?;
                PickerSpec::Random
            }
            RawPickerSpec::LeastOutstanding(rest) => {
                rest.check("least_outstanding")?;
                PickerSpec::LeastOutstanding
            }
            RawPickerSpec::P2cOutstanding { choices } => PickerSpec::P2cOutstanding { choices },
            RawPickerSpec::LeastPeakEwma { decay_ms } => PickerSpec::LeastPeakEwma { decay_ms },
            RawPickerSpec::P2cPeakEwma { choices, decay_ms } => {
                PickerSpec::P2cPeakEwma { choices, decay_ms }
            }
            RawPickerSpec::ZoneAware {
                local_zone,
                min_healthy_share,
            } => PickerSpec::ZoneAware {
                local_zone,
                min_healthy_share,
            },
        })
    }
}

impl PickerSpec {
    /// Checks that a zone-aware picker's local zone is some backend's: with none in it the
    /// picker would always fall back to the other zones, under the local zone's name.
    fn check_zone(&self, backends: &[BackendSpec]) -> Result<(), String> {
        let PickerSpec::ZoneAware { local_zone, .. } = self else {
            return Ok(());
        };
        let mut zones: Vec<&str> = Vec::new();
        for zone in backends.iter().filter_map(|b| b.zone.as_deref()) {
            if zone == local_zone {
                return Ok(());
            }
            if !zones.contains(&zone) {
                zones.push(zone);
            }
        }
        let zones = if zones.is_empty() {
            "no backend has a zone".to_string()
        } else {
            zones.join(", ")
        };
        Err(format!(
            "picker.local_zone {local_zone:?} is no backend's zone ({zones})"
        ))
    }
}

/// The default picker is seawall-balance's default, power of two choices by PeakEWMA.
impl Default for PickerSpec {
    fn default() -> Self {
        PickerSpec::P2cPeakEwma {
            choices: 2,
            decay_ms: None,
        }
    }
}

fn two() -> usize {
    2
}

/// Outlier detection settings; anything not given keeps seawall-balance's default.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierSpec {
    /// How often the rate rules run, milliseconds.
    pub interval_ms: Option<u64>,
    /// The first ejection's length, milliseconds.
    pub base_ejection_ms: Option<u64>,
    /// The longest ejection, milliseconds.
    pub max_ejection_ms: Option<u64>,
    /// Share of endpoints that may be out at once.
    pub max_ejection_percent: Option<f64>,
    /// Failures in a row that eject at once (0 turns the rule off).
    pub consecutive_failures: Option<u32>,
    /// Failure share over an interval that ejects (0 turns the rule off).
    pub failure_percentage: Option<f64>,
    /// Calls an endpoint needs in an interval for the failure-percentage rule.
    pub failure_percentage_volume: Option<u32>,
    /// How many times the peers' median latency ejects (0 turns the rule off).
    pub latency_factor: Option<f64>,
    /// How long an endpoint must stay that slow, milliseconds.
    pub latency_duration_ms: Option<u64>,
    /// Standard deviations below the endpoints' mean success rate that eject (gRPC's
    /// success-rate rule; 0 turns the rule off).
    pub success_rate_factor: Option<f64>,
}

/// Retry settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    /// Attempts in all, the first included.
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// Retries allowed per request (the budget's ratio); absent: seawall's default, 0.2.
    #[serde(default)]
    pub budget_ratio: Option<f64>,
    /// The budget's reserve, in retries a second (`min_per_second × ttl` per window, whatever
    /// the traffic); absent: seawall's default, 10.
    #[serde(default)]
    pub budget_min_per_second: Option<u32>,
    /// No budget at all: every failed attempt is retried, up to `max_attempts`
    /// (`RetryBudget::unlimited()`). Not to be given with a budget setting.
    #[serde(default)]
    pub unlimited: bool,
    /// A timeout for each attempt, milliseconds.
    #[serde(default)]
    pub attempt_timeout_ms: Option<u64>,
}

fn three() -> u32 {
    3
}

/// Hedging settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HedgeSpec {
    /// Hedge after this fixed delay, milliseconds, at most 3,600,000, the simulator's limit on
    /// the latencies and delays it draws ([`check_ms`]): a longer delay would outlast every
    /// simulated latency (seawall itself accepts up to one day); or
    #[serde(default)]
    pub delay_ms: Option<f64>,
    /// hedge after this latency percentile of recent calls, as a fraction (0.95 for p95). With
    /// neither, seawall's default: the 95th percentile.
    #[serde(default)]
    pub percentile: Option<f64>,
    /// Without `delay_ms`: how often the percentile is recomputed from the calls of the last
    /// period, milliseconds, above zero and at most 86,400,000, one day, seawall's limit (default:
    /// seawall's, 10,000); no hedges are sent before the first period ends.
    #[serde(default)]
    pub period_ms: Option<u64>,
    /// Without `delay_ms`: calls a period needs before its percentile is used, 1 to
    /// 1,000,000,000, seawall's limit; a period runs on until it has them, and no hedges are sent
    /// before then (default: seawall's, 100).
    #[serde(default)]
    pub min_data_points: Option<u64>,
    /// Extra copies at most.
    #[serde(default = "one")]
    pub max_hedges: u32,
    /// Hedges allowed per request (the hedge budget).
    #[serde(default = "hedge_ratio")]
    pub budget_ratio: f64,
}

fn one() -> u32 {
    1
}

fn ten() -> u32 {
    10
}

fn retry_ratio() -> f64 {
    0.2
}

fn hedge_ratio() -> f64 {
    0.1
}

fn default_rtt_ms() -> f64 {
    30.0
}

fn default_decay_ms() -> f64 {
    10_000.0
}

impl ClientSpec {
    /// The name shown in reports.
    pub fn label(&self) -> String {
        match self {
            ClientSpec::RoundRobin => "round robin".into(),
            ClientSpec::TowerP2cPending => "tower p2c pending".into(),
            ClientSpec::TowerP2cPeakEwma { .. } => "tower p2c peak-ewma".into(),
            ClientSpec::TowerRetry {
                max_attempts,
                budget_ratio,
                ..
            } => format!(
                "tower retry x{max_attempts}, TpsBudget {:.0}%",
                budget_ratio * 100.0
            ),
            ClientSpec::Seawall(spec) => spec.label(),
        }
    }

    /// How often the client wakes whatever its load: a seawall balancer's outlier-detection
    /// interval (`outlier.interval_ms`, 10 s by default). `None` for the other clients, whose
    /// work follows their calls.
    pub fn sweep_interval(&self) -> Option<Duration> {
        let ClientSpec::Seawall(spec) = self else {
            return None;
        };
        Some(
            spec.outlier
                .as_ref()
                .and_then(|o| o.interval_ms)
                .map_or(OutlierDetection::default().interval, Duration::from_millis),
        )
    }

    /// The longest simulated time a run of the client may take: [`MAX_SIMULATED_SECS`], or for a
    /// seawall client [`MAX_SWEEPS`] outlier-detection intervals if that is less.
    pub fn max_simulated_time(&self) -> Duration {
        let most = Duration::from_secs(MAX_SIMULATED_SECS);
        self.sweep_interval().map_or(most, |interval| {
            interval.saturating_mul(MAX_SWEEPS).min(most)
        })
    }

    /// Checks the parameters against the scenario's `backends`, naming the first bad one.
    pub fn validate(&self, backends: &[BackendSpec]) -> Result<(), String> {
        match self {
            ClientSpec::RoundRobin | ClientSpec::TowerP2cPending => Ok(()),
            // The seawall builders validate every value, naming the field; only laying the
            // layers over backends needs a runtime, so a scenario is checked without one.
            ClientSpec::Seawall(spec) => {
                spec.layers(0)?;
                spec.picker.check_zone(backends)
            }
            ClientSpec::TowerRetry {
                max_attempts,
                budget_ratio,
                budget_min_per_second,
            } => {
                // tower asserts its own ranges; these are its and seawall's.
                if !(1..=100).contains(max_attempts) {
                    return Err(format!(
                        "max_attempts must be in 1..=100, got {max_attempts}"
                    ));
                }
                if !(0.0..=1000.0).contains(budget_ratio) {
                    return Err(format!(
                        "budget_ratio must be in [0, 1000], got {budget_ratio}"
                    ));
                }
                let kept = tps_budget_ratio(*budget_ratio);
                if (kept - budget_ratio).abs() > budget_ratio * 1e-6 {
                    let kept = format!("{kept:.4}");
                    let kept = kept.trim_end_matches('0').trim_end_matches('.');
                    return Err(format!(
                        "budget_ratio must be 0, 1/n or 1000/n, as tower's TpsBudget withdraws a whole number of deposits per retry (asked for {budget_ratio} it allows {kept})"
                    ));
                }
                if *budget_min_per_second >= i32::MAX as u32 {
                    return Err(format!(
                        "budget_min_per_second must be below {}, got {budget_min_per_second}",
                        i32::MAX
                    ));
                }
                Ok(())
            }
            ClientSpec::TowerP2cPeakEwma {
                default_rtt_ms,
                decay_ms,
            } => {
                check_ms("default_rtt_ms", *default_rtt_ms)?;
                // tower's PeakEwma takes a zero RTT for "no estimate" and asserts against it.
                if duration_ms(*default_rtt_ms).is_zero() {
                    return Err(format!(
                        "default_rtt_ms must be at least a nanosecond, got {default_rtt_ms}"
                    ));
                }
                if !(decay_ms.is_finite() && *decay_ms > 0.0) {
                    return Err(format!("decay_ms must be > 0, got {decay_ms}"));
                }
                Ok(())
            }
        }
    }

    /// Builds the client over `backends`. Must run inside the simulation's runtime.
    pub fn build(
        &self,
        backends: Vec<SimBackend>,
        seed: u64,
        concurrency: usize,
    ) -> Result<SimClient, String> {
        let buffer = concurrency.max(1) + 1024;
        Ok(match self {
            ClientSpec::Seawall(spec) => spec.build(backends, seed)?,
            ClientSpec::RoundRobin => BoxCloneService::new(RoundRobin::new(backends)),
            ClientSpec::TowerRetry {
                max_attempts,
                budget_ratio,
                budget_min_per_second,
            } => {
                let budget = TpsBudget::new(
                    Duration::from_secs(10),
                    *budget_min_per_second,
                    *budget_ratio as f32,
                );
                let policy = TowerRetryPolicy {
                    attempts_left: *max_attempts,
                    deposited: false,
                    budget: Arc::new(budget),
                };
                BoxCloneService::new(Retry::new(policy, RoundRobin::new(backends)))
            }
            ClientSpec::TowerP2cPending => {
                let endpoints = backends
                    .into_iter()
                    .map(|b| PendingRequests::new(b, CompleteOnResponse::default()));
                let balance = Balance::from_rng(ServiceList::new(endpoints), TowerRng::new(seed));
                BoxCloneService::new(Buffer::new(balance, buffer))
            }
            ClientSpec::TowerP2cPeakEwma {
                default_rtt_ms,
                decay_ms,
            } => {
                let rtt = duration_ms(*default_rtt_ms);
                let decay_ns = decay_ms * 1_000_000.0;
                let endpoints = backends
                    .into_iter()
                    .map(move |b| PeakEwma::new(b, rtt, decay_ns, CompleteOnResponse::default()));
                let balance = Balance::from_rng(ServiceList::new(endpoints), TowerRng::new(seed));
                BoxCloneService::new(Buffer::new(balance, buffer))
            }
        })
    }
}

impl SeawallSpec {
    /// The label shown in reports.
    pub fn label(&self) -> String {
        if let Some(label) = &self.label {
            return label.clone();
        }
        let mut parts = vec![match &self.picker {
            PickerSpec::RoundRobin => "seawall round robin".to_string(),
            PickerSpec::Random => "seawall random".to_string(),
            PickerSpec::LeastOutstanding => "seawall least outstanding".to_string(),
            PickerSpec::P2cOutstanding { choices } => format!("seawall p{choices}c pending"),
            PickerSpec::LeastPeakEwma { .. } => "seawall least peak-ewma".to_string(),
            PickerSpec::P2cPeakEwma { choices: 2, .. } => "seawall p2c peak-ewma".to_string(),
            PickerSpec::P2cPeakEwma { choices, .. } => format!("seawall p{choices}c peak-ewma"),
            PickerSpec::ZoneAware { local_zone, .. } => {
                format!("seawall zone-aware ({local_zone})")
            }
        }];
        if self.retry.is_some() {
            parts.push("retry".into());
        }
        if self.hedge.is_some() {
            parts.push("hedge".into());
        }
        parts.join(" + ")
    }

    fn build(&self, backends: Vec<SimBackend>, seed: u64) -> Result<SimClient, String> {
        let layers = self.layers(seed)?;
        // Each backend is an endpoint keyed by its index, with its zone for zone-aware picking.
        let endpoints = backends.into_iter().map(|backend| {
            let mut key = Tagged::new(backend.index());
            if let Some(zone) = backend.zone() {
                key = key.with_zone(zone);
            }
            Ok::<_, Infallible>(Change::Insert(key, backend))
        });
        let mut svc: SimClient = BoxCloneService::new(
            layers
                .balance
                .layer(futures_util::stream::iter(endpoints.collect::<Vec<_>>())),
        );
        if let Some(hedge) = layers.hedge {
            svc = BoxCloneService::new(hedge.layer(svc));
        }
        if let Some(retry) = layers.retry {
            svc = BoxCloneService::new(retry.layer(svc));
        }
        if let Some(timeout) = layers.timeout {
            svc = BoxCloneService::new(timeout.layer(svc));
        }
        Ok(svc)
    }

    /// Builds the stack's layers through the seawall builders, checking every value, without
    /// laying them over any backend (which spawns the balancer's task, and so needs a runtime).
    fn layers(&self, seed: u64) -> Result<SeawallLayers, String> {
        // Errors from the seawall builders, naming the scenario's keys rather than the builders'.
        let balance_err = keyed(
            "",
            &[
                ("outlier_detection.interval", "outlier.interval_ms"),
                (
                    "outlier_detection.base_ejection_time",
                    "outlier.base_ejection_ms",
                ),
                (
                    "outlier_detection.max_ejection_percent",
                    "outlier.max_ejection_percent",
                ),
                (
                    "outlier_detection.consecutive_failures",
                    "outlier.consecutive_failures",
                ),
                (
                    "outlier_detection.failure_percentage.threshold",
                    "outlier.failure_percentage",
                ),
                (
                    "outlier_detection.failure_percentage.request_volume",
                    "outlier.failure_percentage_volume",
                ),
                (
                    "outlier_detection.success_rate.stdev_factor",
                    "outlier.success_rate_factor",
                ),
                ("outlier_detection.latency.factor", "outlier.latency_factor"),
                ("picker.decay", "picker.decay_ms"),
            ],
        );
        let picker = match self.picker.clone() {
            PickerSpec::RoundRobin => Picker::RoundRobin,
            PickerSpec::Random => Picker::Random,
            PickerSpec::LeastOutstanding => Picker::LeastOutstanding,
            PickerSpec::P2cOutstanding { choices } => Picker::P2cOutstanding { choices },
            PickerSpec::LeastPeakEwma { decay_ms } => match Picker::least_peak_ewma() {
                Picker::LeastPeakEwma {
                    decay,
                    default_rtt,
                    failure_penalty,
                } => Picker::LeastPeakEwma {
                    decay: decay_ms.map_or(decay, Duration::from_millis),
                    default_rtt,
                    failure_penalty,
                },
                other => other,
            },
            PickerSpec::P2cPeakEwma { choices, decay_ms } => match Picker::p2c_peak_ewma() {
                Picker::P2cPeakEwma {
                    decay,
                    default_rtt,
                    failure_penalty,
                    ..
                } => Picker::P2cPeakEwma {
                    choices,
                    decay: decay_ms.map_or(decay, Duration::from_millis),
                    default_rtt,
                    failure_penalty,
                },
                other => other,
            },
            PickerSpec::ZoneAware {
                local_zone,
                min_healthy_share,
            } => match Picker::zone_aware(local_zone) {
                Picker::ZoneAware {
                    local_zone,
                    min_healthy_share: default,
                } => Picker::ZoneAware {
                    local_zone,
                    min_healthy_share: min_healthy_share.unwrap_or(default),
                },
                other => other,
            },
        };
        let mut balance = BalanceLayer::builder().picker(picker).seed(seed);
        if let Some(o) = &self.outlier {
            balance = balance.outlier_detection(o.to_config()?);
        }
        let balance = balance.build().map_err(balance_err)?;
        let hedge = match &self.hedge {
            None => None,
            Some(h) => {
                let budget = RetryBudget::builder()
                    .ratio(h.budget_ratio)
                    .min_per_second(0)
                    .build()
                    .map_err(keyed("hedge.", &[("ratio", "budget_ratio")]))?;
                let mut hedge = HedgeLayer::builder()
                    .max_hedges(h.max_hedges)
                    .budget(budget);
                hedge = match (h.delay_ms, h.percentile) {
                    (Some(ms), None) => {
                        if h.period_ms.is_some() || h.min_data_points.is_some() {
                            return Err(
                            "hedge: period_ms and min_data_points go with percentile, not delay_ms"
                                .into(),
                        );
                        }
                        check_ms("hedge.delay_ms", ms)?;
                        hedge.delay(duration_ms(ms))
                    }
                    (None, p) => {
                        // Anything not given keeps seawall's default: its percentile (with no
                        // delay given either) and its window.
                        let HedgeDelay::Percentile {
                            percentile,
                            min_data_points,
                            period,
                        } = HedgeDelay::default()
                        else {
                            unreachable!("seawall's default hedge delay is a percentile")
                        };
                        hedge.percentile(
                            p.unwrap_or(percentile),
                            h.min_data_points.unwrap_or(min_data_points),
                            h.period_ms.map_or(period, Duration::from_millis),
                        )
                    }
                    (Some(_), Some(_)) => {
                        return Err("hedge: give one of delay_ms and percentile, not both".into())
                    }
                };
                Some(hedge.build().map_err(keyed(
                    "hedge.",
                    &[("delay", "delay_ms"), ("period", "period_ms")],
                ))?)
            }
        };
        let retry = match &self.retry {
            None => None,
            Some(r) => {
                let budget = if r.unlimited {
                    if r.budget_ratio.is_some() || r.budget_min_per_second.is_some() {
                        return Err("retry.unlimited = true takes no budget settings".into());
                    }
                    RetryBudget::unlimited()
                } else {
                    // Anything not given keeps seawall's default budget.
                    let mut budget = RetryBudget::builder();
                    if let Some(ratio) = r.budget_ratio {
                        budget = budget.ratio(ratio);
                    }
                    if let Some(min) = r.budget_min_per_second {
                        budget = budget.min_per_second(min);
                    }
                    budget.build().map_err(keyed(
                        "retry.",
                        &[
                            ("ratio", "budget_ratio"),
                            ("min_per_second", "budget_min_per_second"),
                        ],
                    ))?
                };
                let mut retry = RetryLayer::builder()
                    .max_attempts(r.max_attempts)
                    .budget(budget)
                    // Its own stream: the bare seed is backend 0's.
                    .seed(seed ^ 0x2e72_7e75_5eed_0003);
                if let Some(ms) = r.attempt_timeout_ms {
                    retry = retry.per_attempt_timeout(Duration::from_millis(ms));
                }
                Some(retry.build().map_err(keyed(
                    "retry.",
                    &[("per_attempt_timeout", "attempt_timeout_ms")],
                ))?)
            }
        };
        Ok(SeawallLayers {
            balance,
            hedge,
            retry,
            timeout: self
                .timeout_ms
                .map(|ms| TimeoutLayer::new(Duration::from_millis(ms))),
        })
    }
}

/// A seawall stack's layers, outer to inner, built but not yet laid over any backend.
#[derive(Debug)]
struct SeawallLayers {
    timeout: Option<TimeoutLayer>,
    retry: Option<RetryLayer>,
    hedge: Option<HedgeLayer>,
    balance: BalanceLayer,
}

/// Turns a seawall builder's error into one naming the scenario's key: the builder's field
/// renamed by `keys` (or kept), after `section`.
fn keyed(
    section: &'static str,
    keys: &'static [(&'static str, &'static str)],
) -> impl Fn(ConfigError) -> String {
    move |e| {
        let field = e.field();
        let key = keys
            .iter()
            .find(|(builder, _)| *builder == field)
            .map_or(field, |(_, key)| key);
        let message = e.to_string();
        let rule = message.strip_prefix(field).unwrap_or(&message);
        format!("{section}{key}{rule}")
    }
}

impl OutlierSpec {
    fn to_config(&self) -> Result<OutlierDetection, String> {
        // 0 turns a rule off; a negative or NaN value is a mistake, not a quiet "off" (the
        // builder checks the rest of each range, naming the rule's own field).
        for (name, v) in [
            ("failure_percentage", self.failure_percentage),
            ("success_rate_factor", self.success_rate_factor),
            ("latency_factor", self.latency_factor),
        ] {
            if let Some(v) = v.filter(|v| v.is_nan() || *v < 0.0) {
                return Err(format!(
                    "outlier.{name} must be >= 0 (0 turns the rule off), got {v}"
                ));
            }
        }
        let mut o = OutlierDetection::default();
        let ms = Duration::from_millis;
        if let Some(v) = self.interval_ms {
            o.interval = ms(v);
        }
        if let Some(v) = self.base_ejection_ms {
            o.base_ejection_time = ms(v);
        }
        if let Some(v) = self.max_ejection_ms {
            o.max_ejection_time = ms(v);
        }
        if let Some(v) = self.max_ejection_percent {
            o.max_ejection_percent = v;
        }
        if let Some(v) = self.consecutive_failures {
            o.consecutive_failures = (v > 0).then_some(v);
        }
        if let Some(v) = self.failure_percentage {
            if v > 0.0 {
                let mut rule = o.failure_percentage.unwrap_or_default();
                rule.threshold = v;
                o.failure_percentage = Some(rule);
            } else {
                o.failure_percentage = None;
            }
        }
        // Tunes the rule whether its threshold was given or is the default.
        if let (Some(rule), Some(volume)) =
            (&mut o.failure_percentage, self.failure_percentage_volume)
        {
            rule.request_volume = volume;
        }
        if let Some(v) = self.success_rate_factor {
            if v > 0.0 {
                let mut rule = o.success_rate.unwrap_or_default();
                rule.stdev_factor = v;
                o.success_rate = Some(rule);
            } else {
                o.success_rate = None;
            }
        }
        if let Some(v) = self.latency_factor {
            if v > 0.0 {
                let mut rule = o.latency.unwrap_or_default();
                rule.factor = v;
                o.latency = Some(rule);
            } else {
                o.latency = None;
            }
        }
        if let (Some(rule), Some(d)) = (&mut o.latency, self.latency_duration_ms) {
            rule.duration = ms(d);
        }
        Ok(o)
    }
}

/// The retries per request tower's `TpsBudget` allows when asked for `ratio`: it deposits 1 (1,000
/// above a ratio of 1) per request and withdraws `1 / ratio` (`1000 / ratio`) per retry, rounded
/// down to a whole number, in `f32` as tower computes it.
fn tps_budget_ratio(ratio: f64) -> f64 {
    let percent = ratio as f32;
    if percent == 0.0 {
        0.0
    } else if percent <= 1.0 {
        1.0 / ((1.0 / percent) as isize) as f64
    } else {
        1000.0 / ((1000.0 / percent) as isize) as f64
    }
}

/// tower's retry policy for [`ClientSpec::TowerRetry`]: cloned for each request, so its count
/// of attempts is the request's, while the budget is shared.
#[derive(Clone, Debug)]
struct TowerRetryPolicy {
    attempts_left: u32,
    deposited: bool,
    budget: Arc<TpsBudget>,
}

impl Policy<SimRequest, SimResponse, BoxError> for TowerRetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut SimRequest,
        result: &mut Result<SimResponse, BoxError>,
    ) -> Option<Self::Future> {
        if !std::mem::replace(&mut self.deposited, true) {
            self.budget.deposit();
        }
        if result.is_err() && self.attempts_left > 1 && self.budget.withdraw() {
            self.attempts_left -= 1;
            Some(std::future::ready(()))
        } else {
            None
        }
    }

    fn clone_request(&mut self, req: &SimRequest) -> Option<SimRequest> {
        Some(req.clone())
    }
}

/// A seeded generator for tower's balancer.
struct TowerRng(SmallRng);

impl TowerRng {
    fn new(seed: u64) -> Self {
        TowerRng(SmallRng::seed_from_u64(seed ^ 0x7017_e5ee_d000_0001))
    }
}

impl tower::util::rng::Rng for TowerRng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
}

/// Naive round robin: the next backend in turn, whatever its state.
#[derive(Clone, Debug)]
pub struct RoundRobin {
    backends: Arc<[SimBackend]>,
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    /// Round robin over `backends`.
    pub fn new(backends: Vec<SimBackend>) -> Self {
        RoundRobin {
            backends: backends.into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Service<SimRequest> for RoundRobin {
    type Response = SimResponse;
    type Error = BoxError;
    type Future = tower::util::Oneshot<SimBackend, SimRequest>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.backends.len();
        self.backends[i].clone().oneshot(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_at_zero_turns_outlier_detection_off() {
        let off = OutlierSpec {
            consecutive_failures: Some(0),
            failure_percentage: Some(0.0),
            latency_factor: Some(0.0),
            success_rate_factor: Some(0.0),
            ..OutlierSpec::default()
        }
        .to_config()
        .unwrap();
        assert_eq!(off.consecutive_failures, None);
        assert_eq!(off.failure_percentage, None);
        assert_eq!(off.latency, None);
        assert_eq!(off.success_rate, None);
        let tuned = OutlierSpec {
            success_rate_factor: Some(1.0),
            ..OutlierSpec::default()
        }
        .to_config()
        .unwrap();
        assert_eq!(tuned.success_rate.map(|r| r.stdev_factor), Some(1.0));
    }

    /// The failure-percentage and latency rules are on by default: a setting of theirs given
    /// without the threshold tunes the default rule rather than being dropped.
    #[test]
    fn a_rule_setting_given_alone_tunes_the_default_rule() {
        let tuned = OutlierSpec {
            failure_percentage_volume: Some(20),
            latency_duration_ms: Some(1_000),
            ..OutlierSpec::default()
        }
        .to_config()
        .unwrap();
        let defaults = OutlierDetection::default();
        let failure = tuned.failure_percentage.expect("on by default");
        assert_eq!(failure.request_volume, 20);
        assert_eq!(
            Some(failure.threshold),
            defaults.failure_percentage.map(|r| r.threshold)
        );
        let latency = tuned.latency.expect("on by default");
        assert_eq!(latency.duration, Duration::from_secs(1));
        assert_eq!(Some(latency.factor), defaults.latency.map(|r| r.factor));
        // With the rule turned off there is nothing to tune.
        let off = OutlierSpec {
            failure_percentage: Some(0.0),
            failure_percentage_volume: Some(20),
            latency_factor: Some(0.0),
            latency_duration_ms: Some(1_000),
            ..OutlierSpec::default()
        }
        .to_config()
        .unwrap();
        assert_eq!(off.failure_percentage, None);
        assert_eq!(off.latency, None);
    }

    /// A `hedge` that gives neither `delay_ms` nor `percentile` keeps seawall's default delay,
    /// the 95th percentile, over the window it gives or seawall's.
    #[tokio::test(start_paused = true)]
    async fn a_hedge_without_a_delay_hedges_at_seawalls_default_percentile() {
        use crate::scenario::Scenario;
        use tower::{service_fn, Layer, ServiceExt};

        let scenario = Scenario::from_toml(
            r#"
            name = "default hedge"
            [load]
            kind = "closed_loop"
            concurrency = 1
            requests = 1
            [[backends]]
            latency = { kind = "constant", ms = 1.0 }
            [[clients]]
            kind = "seawall"
            hedge = { max_hedges = 2, period_ms = 1000 }
            "#,
        )
        .unwrap();
        let ClientSpec::Seawall(spec) = &scenario.clients[0] else {
            panic!("a seawall client");
        };
        let hedge = spec.layers(1).unwrap().hedge.expect("hedged");
        assert_eq!(hedge.current_delay(), None, "a percentile, measured yet");
        // seawall's default 100 calls, answered in 1..=100 ms, all within the 1 s period.
        let svc = hedge.layer(service_fn(|req: SimRequest| async move {
            tokio::time::sleep(Duration::from_millis(req.id)).await;
            Ok::<_, BoxError>(())
        }));
        // A request of id `ms` takes `ms` milliseconds.
        let taking = |ms| SimRequest {
            id: ms,
            key: 0,
            deadline: None,
        };
        let calls: Vec<_> = (1..=100)
            .map(|ms| svc.clone().oneshot(taking(ms)))
            .collect();
        for result in futures_util::future::join_all(calls).await {
            result.unwrap();
        }
        // The first call after the period ends it.
        tokio::time::sleep(Duration::from_secs(1)).await;
        svc.oneshot(taking(1)).await.unwrap();
        let delay = hedge.current_delay().expect("a period has been measured");
        assert!(
            (Duration::from_millis(94)..=Duration::from_millis(97)).contains(&delay),
            "{delay:?}"
        );
    }
}
