//! Simulated backends: tower services that answer in virtual time.

use crate::{
    dist::{check_ms, duration_ms, Latency},
    scenario::{NoFields, MAX_CONCURRENCY, MAX_REQUESTS},
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use seawall_core::{BoxError, RequestDeadline};
use serde::Deserialize;
use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{sync::Semaphore, time::Instant};
use tower::{limit::ConcurrencyLimit, Service};

/// One backend of the simulated cluster.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// Shown in reports; defaults to `b<index>`.
    #[serde(default)]
    pub name: Option<String>,
    /// How long it takes to answer.
    pub latency: Latency,
    /// Share of calls that fail, in `[0, 1]`.
    #[serde(default)]
    pub error_rate: f64,
    /// Calls it works on at once; calls beyond them wait their turn, the wait counted in the
    /// latency the client sees (where they wait is `at_capacity`'s choice). None (the default):
    /// no limit, every call is served at once whatever the load.
    #[serde(default)]
    pub max_concurrency: Option<usize>,
    /// What the client sees of a backend at its `max_concurrency` (default: nothing, the calls
    /// queue inside it).
    #[serde(default)]
    pub at_capacity: AtCapacity,
    /// Zone, for zone-aware balancing.
    #[serde(default)]
    pub zone: Option<String>,
    /// Faults on a timeline. A fault applies to the calls whose service starts while it is
    /// active: a queued call is judged when it gets a worker, not when it arrived.
    #[serde(default)]
    pub faults: Vec<Fault>,
}

/// What the client sees of a backend that is working on `max_concurrency` calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AtCapacity {
    /// Nothing: the backend is always ready, takes every call and queues the ones beyond its
    /// limit in arrival order, where the client cannot see them.
    #[default]
    Queue,
    /// The backend reports itself not ready (`poll_ready` is pending) until a worker is free,
    /// as tower's `ConcurrencyLimit` around it does: a balancer that checks readiness skips it,
    /// and a client that does not waits for the worker before it calls.
    NotReady,
}

/// A fault active from `from_ms` to `to_ms` of simulated time.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Start, milliseconds since the run began.
    pub from_ms: u64,
    /// End (exclusive), milliseconds since the run began: it may lie past the end of the run,
    /// as far as `u64::MAX` for a fault that never ends.
    pub to_ms: u64,
    /// What goes wrong.
    pub effect: FaultKind,
}

/// What goes wrong during a [`Fault`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawFaultKind")]
pub enum FaultKind {
    /// Every call takes `extra_ms` longer.
    Slow {
        /// Added latency, milliseconds.
        extra_ms: f64,
    },
    /// Hard down: every call fails at once (connection refused).
    Down,
    /// Fast failures (a 503 after `latency_ms`) at `error_rate`.
    Errors {
        /// Share of calls that fail.
        error_rate: f64,
        /// How long a failing call takes, milliseconds (default 0).
        latency_ms: f64,
    },
    /// Down for the first half of every `period_ms` (rounded up), up for the second.
    Flapping {
        /// Length of one down-up cycle, milliseconds, at least 2.
        period_ms: u64,
    },
}

/// [`FaultKind`] as a scenario spells it, refusing keys on `down` (see [`NoFields`]).
#[derive(Deserialize)]
#[serde(
    tag = "kind",
    expecting = "internally tagged enum FaultKind",
    rename_all = "snake_case",
    deny_unknown_fields
)]
enum RawFaultKind {
    Slow {
        extra_ms: f64,
    },
    Down(NoFields),
    Errors {
        error_rate: f64,
        #[serde(default)]
        latency_ms: f64,
    },
    Flapping {
        period_ms: u64,
    },
}

impl TryFrom<RawFaultKind> for FaultKind {
    type Error = String;

    fn try_from(raw: RawFaultKind) -> Result<Self, String> {
        Ok(match raw {
            RawFaultKind::Slow { extra_ms } => FaultKind::Slow { extra_ms },
            RawFaultKind::Down(rest) => {
                rest.check("down")?;
                FaultKind::Down
            }
            RawFaultKind::Errors {
                error_rate,
                latency_ms,
            } => FaultKind::Errors {
                error_rate,
                latency_ms,
            },
            RawFaultKind::Flapping { period_ms } => FaultKind::Flapping { period_ms },
        })
    }
}

impl BackendSpec {
    /// A backend with this latency and no errors or faults.
    pub fn new(latency: Latency) -> Self {
        BackendSpec {
            name: None,
            latency,
            error_rate: 0.0,
            max_concurrency: None,
            at_capacity: AtCapacity::Queue,
            zone: None,
            faults: Vec::new(),
        }
    }

    /// Checks the parameters, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        self.latency
            .validate()
            .map_err(|e| format!("latency: {e}"))?;
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate must be in [0, 1], got {}",
                self.error_rate
            ));
        }
        if let Some(n) = self.max_concurrency {
            if !(1..=MAX_CONCURRENCY).contains(&n) {
                return Err(format!(
                    "max_concurrency must be in 1..={MAX_CONCURRENCY}, got {n}"
                ));
            }
        } else if self.at_capacity != AtCapacity::Queue {
            return Err("at_capacity = \"not_ready\" needs max_concurrency".into());
        }
        for (i, f) in self.faults.iter().enumerate() {
            if f.from_ms >= f.to_ms {
                return Err(format!(
                    "faults[{i}]: from_ms ({}) must be before to_ms ({})",
                    f.from_ms, f.to_ms
                ));
            }
            let fault = |e: String| format!("faults[{i}]: {e}");
            match f.effect {
                FaultKind::Slow { extra_ms } => check_ms("extra_ms", extra_ms).map_err(fault)?,
                FaultKind::Errors {
                    error_rate,
                    latency_ms,
                } => {
                    if !(0.0..=1.0).contains(&error_rate) {
                        return Err(fault(format!(
                            "error_rate must be in [0, 1], got {error_rate}"
                        )));
                    }
                    check_ms("latency_ms", latency_ms).map_err(fault)?;
                }
                // Down for the first half of each period: a period of 1 ms would have no down half.
                FaultKind::Flapping { period_ms } if period_ms < 2 => {
                    return Err(fault(format!("period_ms must be >= 2, got {period_ms}")))
                }
                FaultKind::Flapping { .. } | FaultKind::Down => {}
            }
        }
        Ok(())
    }

    /// Whether a fault that makes calls fail or slow is active at `at_ms`: one whose window holds
    /// it, unless that is `flapping` in an up half.
    pub fn faulty_at(&self, at_ms: u64) -> bool {
        self.faults.iter().any(|f| f.acts_at(at_ms))
    }
}

impl Fault {
    /// Whether the fault acts on a call arriving at `at_ms`: within its window, and for
    /// `flapping`, in the down half of a period.
    fn acts_at(&self, at_ms: u64) -> bool {
        (self.from_ms..self.to_ms).contains(&at_ms)
            && match self.effect {
                FaultKind::Flapping { period_ms } => {
                    // In the first half (rounded up): 2 * into < period, without overflow.
                    let into = (at_ms - self.from_ms) % period_ms;
                    into < period_ms - into
                }
                FaultKind::Slow { .. } | FaultKind::Down | FaultKind::Errors { .. } => true,
            }
    }
}

/// A request in the simulation.
#[derive(Debug, Clone)]
pub struct SimRequest {
    /// Sequence number, from 0 (below [`MAX_REQUESTS`]): the [`DispatchLog`] keeps a bit for
    /// each id up to the highest that made a call. Retries and hedges of a request carry its id.
    pub id: u64,
    /// A key for consistent hashing (a user or tenant id).
    pub key: u64,
    /// The deadline a timeout layer wrote, if any.
    pub deadline: Option<Instant>,
}

impl RequestDeadline for SimRequest {
    fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = Some(deadline);
    }
}

/// A successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimResponse {
    /// Index of the backend that answered.
    pub backend: usize,
}

/// A failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimError {
    /// Index of the backend that failed it.
    pub backend: usize,
    /// Whether the backend was down (connection refused) rather than answering with an error.
    pub down: bool,
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.down {
            write!(f, "backend {} refused the connection", self.backend)
        } else {
            write!(f, "backend {} answered 503", self.backend)
        }
    }
}

impl std::error::Error for SimError {}

/// Every call every backend received: (milliseconds since start, backend index), and which
/// requests (by [`SimRequest::id`]) made at least one.
#[derive(Debug, Default)]
pub struct DispatchLog {
    calls: Mutex<Vec<(u64, u16)>>,
    /// One bit per request id up to the highest seen, set once the request made a call: at most
    /// a bit a request, as the ids a run gives are its sequence numbers.
    called: Mutex<Vec<u64>>,
}

impl DispatchLog {
    fn record(&self, at_ms: u64, backend: usize, request: u64) {
        self.calls.lock().unwrap().push((at_ms, backend as u16));
        if request >= MAX_REQUESTS {
            return;
        }
        let word = (request / 64) as usize;
        let mut called = self.called.lock().unwrap();
        if called.len() <= word {
            called.resize(word + 1, 0);
        }
        called[word] |= 1 << (request % 64);
    }

    /// All calls in the order they arrived.
    pub fn calls(&self) -> Vec<(u64, u16)> {
        self.calls.lock().unwrap().clone()
    }

    /// All calls in the order they arrived, leaving the log empty.
    pub fn take(&self) -> Vec<(u64, u16)> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// How many requests made at least one call, told apart by [`SimRequest::id`] (ids below
    /// [`MAX_REQUESTS`], as a run gives them; calls of other ids are not counted here). [`take`]
    /// leaves this count as it is.
    ///
    /// [`take`]: DispatchLog::take
    pub fn requests_that_called(&self) -> u64 {
        let called = self.called.lock().unwrap();
        called.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

/// A simulated backend, as a tower service. Clones share one backend; with
/// [`AtCapacity::NotReady`], a clone starts without the worker its original may have reserved in
/// `poll_ready`, as clones of tower's `ConcurrencyLimit` do.
#[derive(Clone)]
pub struct SimBackend {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    /// Always ready: without a limit, or with the calls beyond it queued inside.
    Ready(Core),
    /// Not ready while every worker is busy.
    Limited(ConcurrencyLimit<Core>),
}

/// The backend itself, always ready.
#[derive(Clone)]
struct Core {
    index: usize,
    shared: Arc<Shared>,
}

struct Shared {
    spec: BackendSpec,
    /// With [`AtCapacity::Queue`], one permit per call the backend works on at once, handed out
    /// in arrival order; None otherwise (with `NotReady` the client waits for a worker before it
    /// calls).
    workers: Option<Arc<Semaphore>>,
    rng: Mutex<SmallRng>,
    start: Instant,
    log: Arc<DispatchLog>,
}

impl fmt::Debug for SimBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimBackend")
            .field("index", &self.index())
            .finish()
    }
}

impl SimBackend {
    /// Backend `index` of a run that started at `start`, drawing from its own seeded generator.
    pub fn new(
        index: usize,
        spec: BackendSpec,
        seed: u64,
        start: Instant,
        log: Arc<DispatchLog>,
    ) -> Self {
        let rng =
            SmallRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (workers, limit) = match (spec.max_concurrency, spec.at_capacity) {
            (Some(n), AtCapacity::Queue) => (Some(Arc::new(Semaphore::new(n))), None),
            (Some(n), AtCapacity::NotReady) => (None, Some(n)),
            (None, _) => (None, None),
        };
        let core = Core {
            index,
            shared: Arc::new(Shared {
                workers,
                spec,
                rng: Mutex::new(rng),
                start,
                log,
            }),
        };
        SimBackend {
            inner: match limit {
                Some(n) => Inner::Limited(ConcurrencyLimit::new(core, n)),
                None => Inner::Ready(core),
            },
        }
    }

    fn core(&self) -> &Core {
        match &self.inner {
            Inner::Ready(core) => core,
            Inner::Limited(limit) => limit.get_ref(),
        }
    }

    /// The backend's index.
    pub fn index(&self) -> usize {
        self.core().index
    }

    /// Its zone, if any.
    pub fn zone(&self) -> Option<&str> {
        self.core().shared.spec.zone.as_deref()
    }
}

impl Service<SimRequest> for SimBackend {
    type Response = SimResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<SimResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.inner {
            Inner::Ready(_) => Poll::Ready(Ok(())),
            Inner::Limited(limit) => limit.poll_ready(cx),
        }
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        match &mut self.inner {
            Inner::Ready(core) => core.call(req),
            Inner::Limited(limit) => Box::pin(limit.call(req)),
        }
    }
}

impl Core {
    /// Milliseconds since the run began.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.shared.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether a call arriving at `at_ms` has its connection refused (`down`, or the down half
    /// of `flapping`).
    fn refuses_at(&self, at_ms: u64) -> bool {
        self.shared.spec.faults.iter().any(|f| {
            matches!(f.effect, FaultKind::Down | FaultKind::Flapping { .. }) && f.acts_at(at_ms)
        })
    }

    /// How a call whose service starts at `at_ms` goes: its latency and its answer, drawn and
    /// judged by the faults active then. A refused connection wins over every other fault active
    /// with it, whatever their order; the latency is drawn first either way, so a refusal takes
    /// the same draws from the backend's generator wherever its fault is in the list.
    fn plan(&self, at_ms: u64) -> (Duration, Result<SimResponse, SimError>) {
        let s = &*self.shared;
        let mut rng = s.rng.lock().unwrap();
        let mut latency = s.spec.latency.sample(&mut rng);
        let mut error_rate = s.spec.error_rate;
        let ok = Ok(SimResponse {
            backend: self.index,
        });
        let fail = |down| {
            Err(SimError {
                backend: self.index,
                down,
            })
        };
        if self.refuses_at(at_ms) {
            return (Duration::ZERO, fail(true));
        }
        for fault in s
            .spec
            .faults
            .iter()
            .filter(|f| (f.from_ms..f.to_ms).contains(&at_ms))
        {
            match fault.effect {
                // Refusals are answered above; the up half of flapping is normal.
                FaultKind::Down | FaultKind::Flapping { .. } => {}
                FaultKind::Slow { extra_ms } => {
                    latency += duration_ms(extra_ms);
                }
                FaultKind::Errors {
                    error_rate: rate,
                    latency_ms,
                } => {
                    if rng.random_bool(rate) {
                        return (duration_ms(latency_ms), fail(false));
                    }
                }
            }
        }
        error_rate = error_rate.clamp(0.0, 1.0);
        if error_rate > 0.0 && rng.random_bool(error_rate) {
            return (latency, fail(false));
        }
        (latency, ok)
    }
}

impl Service<SimRequest> for Core {
    type Response = SimResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<SimResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        let at_ms = self.now_ms();
        self.shared.log.record(at_ms, self.index, req.id);
        let Some(workers) = self.shared.workers.clone() else {
            // Served at once: its service starts as it arrives.
            let (latency, result) = self.plan(at_ms);
            return Box::pin(async move {
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                result.map_err(BoxError::from)
            });
        };
        if self.refuses_at(at_ms) {
            // A refused connection never reaches the queue.
            let refused = SimError {
                backend: self.index,
                down: true,
            };
            return Box::pin(std::future::ready(Err(BoxError::from(refused))));
        }
        // Every other call waits for a worker, and the faults active when it gets one decide
        // how it goes: a call queued before a fault began is caught by it, one queued during a
        // fault that ends before its turn is not.
        let this = self.clone();
        Box::pin(async move {
            let _worker = workers.acquire_owned().await.map_err(BoxError::from)?;
            let (latency, result) = this.plan(this.now_ms());
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            result.map_err(BoxError::from)
        })
    }
}
