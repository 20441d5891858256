//! The clients under test, each built over the same simulated backends.

use crate::backend::{SimBackend, SimRequest, SimResponse};
use rand::{rngs::SmallRng, RngCore, SeedableRng};
use seawall_core::BoxError;
use serde::Deserialize;
use std::{
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
    discover::ServiceList,
    load::{CompleteOnResponse, PeakEwma, PendingRequests},
    util::BoxCloneService,
    Service, ServiceExt,
};

/// A client under test, as a cloneable boxed tower service.
pub type SimClient = BoxCloneService<SimRequest, SimResponse, BoxError>;

/// A client to put under load.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientSpec {
    /// Naive round robin over every backend, healthy or not.
    RoundRobin,
    /// tower's `p2c::Balance` over `PendingRequests` (behind a `Buffer`, as tower requires).
    TowerP2cPending,
    /// tower's `p2c::Balance` over `PeakEwma` (behind a `Buffer`).
    TowerP2cPeakEwma {
        /// RTT assumed before the first answer, milliseconds (tower's example: 30).
        #[serde(default = "default_rtt_ms")]
        default_rtt_ms: f64,
        /// EWMA decay, milliseconds (tower's example: 10,000).
        #[serde(default = "default_decay_ms")]
        decay_ms: f64,
    },
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
        }
    }

    /// Checks the parameters, naming the first bad one.
    pub fn validate(&self, _backends: usize) -> Result<(), String> {
        match self {
            ClientSpec::RoundRobin | ClientSpec::TowerP2cPending => Ok(()),
            ClientSpec::TowerP2cPeakEwma {
                default_rtt_ms,
                decay_ms,
            } => {
                if !(default_rtt_ms.is_finite() && *default_rtt_ms >= 0.0) {
                    return Err(format!("default_rtt_ms must be >= 0, got {default_rtt_ms}"));
                }
                if !(decay_ms.is_finite() && *decay_ms > 0.0) {
                    return Err(format!("decay_ms must be > 0, got {decay_ms}"));
                }
                Ok(())
            }
        }
    }

    /// Builds the client over `backends`. Must run inside the simulation's runtime.
    pub fn build(&self, backends: Vec<SimBackend>, seed: u64, concurrency: usize) -> SimClient {
        let buffer = concurrency.max(1) + 1024;
        match self {
            ClientSpec::RoundRobin => BoxCloneService::new(RoundRobin::new(backends)),
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
                let rtt = Duration::from_secs_f64(default_rtt_ms / 1000.0);
                let decay_ns = decay_ms * 1_000_000.0;
                let endpoints = backends
                    .into_iter()
                    .map(move |b| PeakEwma::new(b, rtt, decay_ns, CompleteOnResponse::default()));
                let balance = Balance::from_rng(ServiceList::new(endpoints), TowerRng::new(seed));
                BoxCloneService::new(Buffer::new(balance, buffer))
            }
        }
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
