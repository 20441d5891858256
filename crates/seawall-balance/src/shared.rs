//! State one balancer and its clones share: the endpoint set, health and the background task that
//! applies discovery changes and runs health checks whether or not calls arrive.

use crate::{
    config::Settings,
    endpoint::{stable_hash, Endpoint, Key, NONE},
    future::wake_waiters,
    hook::{Filter, Probe},
    picker::{Tuning, MAX_ZONES},
    set::Snapshot,
    BalanceEvent, EjectReason,
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use seawall_core::deadline::deadline_after;
use seawall_core::event::panics::{self, caught};
use seawall_core::{metrics, Listeners, Name, Outcome};
use std::{
    any::Any,
    collections::{HashMap, VecDeque},
    fmt,
    future::{poll_fn, Future},
    panic::{catch_unwind, AssertUnwindSafe},
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::*},
        Arc, Mutex, PoisonError, RwLock, Weak,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio::{
    sync::Notify,
    task::{self, AbortHandle, JoinSet},
    time::{Instant, MissedTickBehavior},
};
use tower::discover::{Change, Discover};

type BoxProbe<K, S> =
    Arc<dyn Fn(&K, S) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

pub(crate) struct Shared<K, S, C> {
    pub(crate) settings: Settings,
    pub(crate) name: Name,
    pub(crate) tuning: Tuning,
    pub(crate) classifier: C,
    /// Whether completed calls need their duration for the balancer itself (PeakEWMA, latency
    /// ejection).
    pub(crate) timed: bool,
    pub(crate) count_outcomes: bool,
    pub(crate) epoch: Instant,
    pub(crate) seed: u64,
    /// Clones made so far: each takes the next random stream of `seed`, in the order made.
    pub(crate) clones: AtomicU64,
    pub(crate) version: AtomicU64,
    pub(crate) current: RwLock<Arc<Snapshot<K, S>>>,
    /// Woken on every set or health change, and at every health sweep.
    pub(crate) changed: Arc<Notify>,
    /// Calls waiting for an endpoint; completed and cancelled calls wake them only when
    /// there are some.
    pub(crate) waiting: Arc<AtomicUsize>,
    pub(crate) round_robin: AtomicUsize,
    pub(crate) filter: Option<Box<dyn Filter<K, S>>>,
    pub(crate) listeners: Listeners<BalanceEvent>,
    health: Mutex<Health>,
    /// The changes made and not reported yet, in the order they were made (see
    /// [`Shared::drain`]). Locked on its own and never held while reporting, so the listeners
    /// run under no lock of the balancer.
    pending: Mutex<Pending<K, S>>,
    /// Woken when a call that reported its own changes leaves the ones queued after them: the
    /// background task reports those; and when a call reported the queue the task held
    /// discovery back for: the task reads discovery again.
    unreported: Arc<Notify>,
    task: Mutex<Option<AbortHandle>>,
    endpoints_gauge: metrics_handles::Gauge,
    unhealthy_gauge: metrics_handles::Gauge,
    panic_gauge: metrics_handles::Gauge,
}

mod metrics_handles {
    pub(crate) type Gauge = ::metrics::Gauge;
}

struct Health {
    rng: SmallRng,
    zones: Vec<Arc<str>>,
    /// The unhealthy count the gauge was last given.
    gauged_unhealthy: usize,
    /// Whether the balancer was in panic mode when its health last changed: what the gauge and
    /// the listeners were last told.
    panic: bool,
}

/// The reports queued for the listeners, and whether a thread is reporting them.
struct Pending<K, S> {
    reports: VecDeque<Report<K, S>>,
    /// How many reports were ever queued: the first of `reports` is number `queued -
    /// reports.len()`, counting from 0.
    queued: u64,
    /// Set while a thread drains `reports`: the others queue theirs and leave them to it.
    draining: bool,
    /// Set while the background task reads no discovery because `reports` holds `MAX_BATCH` or
    /// more (see [`Shared::hold_discovery`]): the call that drains the queue wakes it.
    discovery_held: bool,
}

/// Changes queued for the listeners: the reports numbered below `upto` are reported once the
/// call that queued them reports them (see [`Shared::report_queued`]).
#[must_use = "the changes are reported only once the call reports them"]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Queued {
    upto: u64,
}

/// The changes a call's outcome made, queued and not reported yet (see
/// [`Shared::record_unreported`]). Dropped without [`report`](Self::report) (a panic in
/// between), it wakes the background task, which reports them.
#[must_use = "the changes are reported only once the call reports them"]
pub(crate) struct Unreported<'a, K: Key, S: 'static, C> {
    shared: &'a Shared<K, S, C>,
    queued: Option<Queued>,
}

impl<K: Key, S: 'static, C> Unreported<'_, K, S, C> {
    /// Reports the changes, on this thread (see [`Shared::report_queued`]).
    pub(crate) fn report(mut self) {
        if let Some(queued) = self.queued.take() {
            self.shared.report_queued(queued);
        }
    }
}

impl<K: Key, S: 'static, C> Drop for Unreported<'_, K, S, C> {
    fn drop(&mut self) {
        if self.queued.is_some() {
            self.shared.unreported.notify_one();
        }
    }
}

/// Clears [`Pending::draining`] if the thread draining the queue leaves it other than by the
/// way out of [`Shared::drain`], and wakes the background task, so that the reports left are
/// reported.
struct Draining<'a, K, S> {
    pending: &'a Mutex<Pending<K, S>>,
    unreported: &'a Notify,
    done: bool,
}

impl<K, S> Drop for Draining<'_, K, S> {
    fn drop(&mut self) {
        if !self.done {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .draining = false;
            self.unreported.notify_one();
        }
    }
}

/// A change of the set or of an endpoint's health, logged and reported to the listeners once the
/// state it leaves is complete (see [`Shared::drain`]).
enum Report<K, S> {
    /// Discovery added the endpoint, or updated it when `updated`.
    Added {
        ep: Arc<Endpoint<K, S>>,
        updated: bool,
    },
    /// Discovery removed the endpoint with `key`.
    Removed { key: K },
    /// Outlier detection ejected the endpoint.
    Ejected {
        ep: Arc<Endpoint<K, S>>,
        reason: EjectReason,
        duration: Duration,
    },
    /// The endpoint's ejection was over.
    Returned { ep: Arc<Endpoint<K, S>> },
    /// The endpoint's health check passed (`ok`) or failed, after the other verdict.
    Probed { ep: Arc<Endpoint<K, S>>, ok: bool },
    /// The balancer entered panic mode (`entered`) or left it, with `unhealthy` of its
    /// `endpoints` unhealthy.
    Panic {
        entered: bool,
        unhealthy: usize,
        endpoints: usize,
    },
}

impl<K: Key, S: 'static, C> Shared<K, S, C> {
    pub(crate) fn new(
        settings: Settings,
        listeners: Listeners<BalanceEvent>,
        classifier: C,
        filter: Option<Box<dyn Filter<K, S>>>,
    ) -> Self {
        let seed = settings.seed.unwrap_or_else(|| {
            use std::hash::BuildHasher;
            std::collections::hash_map::RandomState::new().hash_one(0x5ea_u64)
        });
        let outlier = &settings.outlier;
        let timed = settings.picker.uses_latency() || outlier.latency.is_some();
        let tuning = Tuning::new(&settings.picker);
        let mut zones = Vec::new();
        let local_zone = match &settings.picker {
            crate::Picker::ZoneAware { local_zone, .. } => {
                zones.push(local_zone.clone());
                0
            }
            _ => u16::MAX,
        };
        let name = settings.name;
        Shared {
            count_outcomes: outlier.any(),
            timed,
            tuning,
            classifier,
            epoch: Instant::now(),
            seed,
            clones: AtomicU64::new(0),
            version: AtomicU64::new(0),
            current: RwLock::new(Arc::new(Snapshot {
                local_zone,
                ..Snapshot::empty()
            })),
            changed: Arc::new(Notify::new()),
            waiting: Arc::new(AtomicUsize::new(0)),
            // Each balancer starts its turns at a random place (the seed's), so clients started
            // together over the same discovery order do not call the same endpoints in lockstep.
            round_robin: AtomicUsize::new(round_robin_start(seed)),
            filter,
            listeners,
            health: Mutex::new(Health {
                rng: SmallRng::seed_from_u64(seed ^ 0x0u64.wrapping_sub(1)),
                zones,
                gauged_unhealthy: 0,
                panic: false,
            }),
            pending: Mutex::new(Pending {
                reports: VecDeque::new(),
                queued: 0,
                draining: false,
                discovery_held: false,
            }),
            unreported: Arc::new(Notify::new()),
            task: Mutex::new(None),
            endpoints_gauge: metrics::gauge(metrics::BALANCE_ENDPOINTS, &name),
            unhealthy_gauge: metrics::gauge(metrics::BALANCE_UNHEALTHY_ENDPOINTS, &name),
            panic_gauge: metrics::gauge(metrics::BALANCE_PANIC, &name),
            name,
            settings,
        }
    }

    /// Nanoseconds since the balancer was built.
    #[inline]
    pub(crate) fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// The clock origin and PeakEWMA tuning a call needs to record its latency when it is
    /// dropped in flight; `None` unless the picker uses latency.
    #[inline]
    pub(crate) fn peak_clock(&self) -> Option<(Instant, Tuning)> {
        self.settings
            .picker
            .uses_latency()
            .then_some((self.epoch, self.tuning))
    }

    /// The current endpoint set.
    pub(crate) fn current(&self) -> Arc<Snapshot<K, S>> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether fewer than `panic_threshold` of the endpoints of `set` are healthy: then health is
    /// ignored.
    #[inline]
    pub(crate) fn panicking(&self, set: &Snapshot<K, S>) -> bool {
        panic_mode(
            set.unhealthy.load(Relaxed),
            set.len(),
            self.settings.panic_threshold,
        )
    }

    /// Whether a pick made now judges the balancer in panic mode.
    pub(crate) fn is_panicking(&self) -> bool {
        self.panicking(&self.current())
    }

    /// Whether endpoint `ep` may take a call: healthy (in panic mode, every endpoint is) and let
    /// through by the filter.
    #[inline]
    pub(crate) fn available(&self, panic: bool, ep: &Endpoint<K, S>) -> bool {
        (panic || ep.stats.healthy())
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.available(&ep.key, &ep.service))
    }

    /// Whether endpoint `ep` may still take the call of a caller that holds `held`, a service of
    /// it polled ready and not ready yet: as [`available`](Self::available), but the filter is
    /// asked about `held`, whose reservation (a probe slot) counts as the caller's own.
    #[inline]
    pub(crate) fn available_held(&self, panic: bool, ep: &Endpoint<K, S>, held: &S) -> bool {
        (panic || ep.stats.healthy())
            && self
                .filter
                .as_ref()
                .is_none_or(|f| f.available_held(&ep.key, held))
    }

    /// The soonest the filter expects one of the endpoints it refuses to take calls again.
    pub(crate) fn filter_recheck(&self, snapshot: &Snapshot<K, S>) -> Option<Duration> {
        let filter = self.filter.as_ref()?;
        snapshot
            .endpoints
            .iter()
            .filter(|ep| !filter.available(&ep.key, &ep.service))
            .filter_map(|ep| filter.available_in(&ep.key, &ep.service))
            .min()
    }

    /// Queues `reports` for the listeners, in order. Called under the health lock once the changes
    /// are complete (the set published, the unhealthy count recounted), so the queue holds one
    /// balancer's changes in the order they were made, each numbered one more than the one before.
    /// Returns `None` if there were none; otherwise the caller lets go of the health lock and
    /// reports them: [`drain_all`](Self::drain_all) on the background task,
    /// [`report_queued`](Self::report_queued) on a call's thread.
    fn queue(&self, reports: impl IntoIterator<Item = Report<K, S>>) -> Option<Queued> {
        let mut reports = reports.into_iter().peekable();
        reports.peek()?;
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let before = pending.reports.len();
        pending.reports.extend(reports);
        let added = (pending.reports.len() - before) as u64;
        pending.queued += added;
        Some(Queued {
            upto: pending.queued,
        })
    }

    /// Reports, on a call's thread, the changes that call queued and those queued before them
    /// (see [`drain`](Self::drain)): never the ones queued after them, which are left to the
    /// background task, so a call is held up by no more than the changes made before its own.
    pub(crate) fn report_queued(&self, queued: Queued) {
        self.drain(Some(queued.upto));
    }

    /// Reports, on the background task, every change queued (see [`drain`](Self::drain)),
    /// those queued meanwhile included.
    fn drain_all(&self) {
        self.drain(None);
    }

    /// Whether the background task should read no discovery for now: the queue holds `MAX_BATCH`
    /// or more reports, left to another thread that is reporting (or to the task itself, woken
    /// to report them). While a call reports, the task so queues fewer than two batches of
    /// discovery's changes behind it, not as many as discovery has ready, and a later call that
    /// reports the changes up to its own is held up by no more than those besides changes of
    /// health (ejections, returns, health-check verdicts, panic mode), which are not held back.
    /// Noted, so that the call that drains the queue wakes the task even if it reports every
    /// change left (see [`drain`](Self::drain)).
    fn hold_discovery(&self) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.discovery_held = pending.reports.len() >= MAX_BATCH;
        pending.discovery_held
    }

    /// Reports the queued changes, one at a time and in order, under no lock of the balancer: a
    /// listener may call it, and a slow one holds up no change a call makes; discovery waits once
    /// a batch is queued behind it. One thread drains at a time: a thread that finds another
    /// draining leaves its reports to it, so a change may be reported on the thread of another
    /// call that was reporting at the time, or on the background task.
    /// A call drains only the reports numbered below `upto`, those queued up to its own: if
    /// others follow, it stops there and wakes the background task, which reports the rest (all
    /// of them, those queued meanwhile included: it is the balancer's own task); a call also
    /// wakes the task when it holds discovery back for the queue (see
    /// [`hold_discovery`](Self::hold_discovery)), so that it reads discovery again. A change a
    /// listener's own call makes is reported once that listener has returned, after the change
    /// it heard of. Reports left behind when the task has ended (the balancer is being dropped,
    /// or its runtime shut down) are reported by the next drain, and otherwise dropped with the
    /// balancer.
    fn drain(&self, upto: Option<u64>) {
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            if pending.draining {
                return;
            }
            pending.draining = true;
        }
        let mut draining = Draining {
            pending: &self.pending,
            unreported: &self.unreported,
            done: false,
        };
        loop {
            let report = {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                let next = pending.queued - pending.reports.len() as u64;
                let next = match upto {
                    Some(upto) if next >= upto => None,
                    _ => pending.reports.pop_front(),
                };
                match next {
                    Some(report) => report,
                    None => {
                        // Cleared as the queue is found empty or the call's own are reported,
                        // under the lock the others queue under: none of theirs is left behind.
                        pending.draining = false;
                        draining.done = true;
                        let held = std::mem::take(&mut pending.discovery_held);
                        if !pending.reports.is_empty() || (held && upto.is_some()) {
                            drop(pending);
                            self.unreported.notify_one();
                        }
                        return;
                    }
                }
            };
            self.report(report);
        }
    }

    /// Calls the listeners with the event of `report` and logs it. The listeners are called
    /// before the line is logged, so a subscriber that panics on the line loses the line, not
    /// the event. A key's `Debug` that panics loses its report, and a subscriber that panics
    /// loses only its lines: the panic is caught and logged (a subscriber that panics on that
    /// line too loses the line), and what the balancer was doing goes on. A listener that panics
    /// is caught by `Listeners::emit`: the others still hear the event. The report is dropped
    /// once reported, guarded: it may hold the last reference to an endpoint discovery added and
    /// replaced or removed in the same batch, whose service's `Drop` is the user's.
    fn report(&self, report: Report<K, S>) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| self.report_one(&report))) {
            caught(
                || tracing::error!(name = %self.name, panic = panics::message(&*panic), "seawall balance could not report an endpoint change; the change stands"),
            );
            caught(|| drop(panic));
        }
        self.guarded("freeing an endpoint change once reported", || drop(report));
    }

    fn report_one(&self, report: &Report<K, S>) {
        let name = &self.name;
        // The weight of an endpoint discovery updated, for its line.
        let mut updated = None;
        let event = match *report {
            Report::Added { ref ep, updated: u } => {
                updated = u.then_some(ep.weight);
                BalanceEvent::EndpointAdded {
                    key: format!("{:?}", ep.key),
                }
            }
            Report::Removed { ref key } => BalanceEvent::EndpointRemoved {
                key: format!("{key:?}"),
            },
            Report::Ejected {
                ref ep,
                reason,
                duration,
            } => BalanceEvent::Ejected {
                key: format!("{:?}", ep.key),
                reason,
                duration,
            },
            Report::Returned { ref ep } => BalanceEvent::Returned {
                key: format!("{:?}", ep.key),
            },
            Report::Probed { ref ep, ok } => {
                let key = format!("{:?}", ep.key);
                if ok {
                    BalanceEvent::ProbePassed { key }
                } else {
                    BalanceEvent::ProbeFailed { key }
                }
            }
            Report::Panic {
                entered: true,
                unhealthy,
                endpoints,
            } => BalanceEvent::PanicEntered {
                unhealthy,
                endpoints,
            },
            Report::Panic {
                entered: false,
                unhealthy,
                endpoints,
            } => BalanceEvent::PanicExited {
                unhealthy,
                endpoints,
            },
        };
        self.listeners.emit(name, &event);
        match &event {
            BalanceEvent::EndpointAdded { key } => match updated {
                Some(weight) => {
                    tracing::debug!(%name, %key, weight, "seawall balance endpoint updated");
                }
                None => tracing::debug!(%name, %key, "seawall balance endpoint added"),
            },
            BalanceEvent::EndpointRemoved { key } => {
                tracing::debug!(%name, %key, "seawall balance endpoint removed");
            }
            BalanceEvent::Ejected {
                key,
                reason,
                duration,
            } => {
                tracing::info!(%name, %key, ?reason, ?duration, "seawall balance endpoint ejected");
            }
            BalanceEvent::Returned { key } => {
                tracing::info!(%name, %key, "seawall balance endpoint returned");
            }
            BalanceEvent::ProbePassed { key } => {
                tracing::info!(%name, %key, "seawall balance endpoint passed its health check");
            }
            BalanceEvent::ProbeFailed { key } => {
                tracing::info!(%name, %key, "seawall balance endpoint failed its health check");
            }
            BalanceEvent::PanicEntered {
                unhealthy,
                endpoints,
            } => {
                let threshold = self.settings.panic_threshold;
                tracing::warn!(%name, unhealthy, endpoints, threshold, "seawall balance entered panic mode; unhealthy endpoints take calls too");
            }
            BalanceEvent::PanicExited {
                unhealthy,
                endpoints,
            } => {
                tracing::info!(%name, unhealthy, endpoints, "seawall balance left panic mode");
            }
            BalanceEvent::NoEndpoints { .. } => {}
        }
    }

    /// Brings the unhealthy endpoints gauge and panic mode up to the unhealthy count just made for
    /// `set`, the set in force, and returns the report of a change of panic mode,
    /// for the caller to report after the changes that made it. Called under the health lock
    /// (`health`), under which the count is made, once the changes are complete: after a batch
    /// of discovery changes, an ejection on a call's thread, an outlier detection pass or a
    /// probe's new verdict. Panic mode depends only on the set's health and size, so it is
    /// followed where those change, and picks are left alone.
    fn health_changed(&self, health: &mut Health, set: &Snapshot<K, S>) -> Option<Report<K, S>> {
        let unhealthy = set.unhealthy.load(Relaxed);
        let total = set.len();
        let before = std::mem::replace(&mut health.gauged_unhealthy, unhealthy);
        // By the change, as the endpoints gauge is, so that balancers sharing a name sum.
        if unhealthy > before {
            self.unhealthy_gauge.increment((unhealthy - before) as f64);
        } else if unhealthy < before {
            self.unhealthy_gauge.decrement((before - unhealthy) as f64);
        }
        let panic = panic_mode(unhealthy, total, self.settings.panic_threshold);
        if panic == health.panic {
            return None;
        }
        health.panic = panic;
        if panic {
            self.panic_gauge.increment(1.0);
        } else {
            self.panic_gauge.decrement(1.0);
        }
        Some(Report::Panic {
            entered: panic,
            unhealthy,
            endpoints: total,
        })
    }

    /// Publishes `snapshot` as the set in force, and returns the report of the change of panic
    /// mode it makes, if any, and the set it replaced. The caller holds the health lock
    /// (`health`), and drops the replaced set once it has let go of the lock: that may drop
    /// services discovery removed, whose `Drop` is the user's and may panic.
    fn publish(&self, health: &mut Health, snapshot: Snapshot<K, S>) -> Published<K, S> {
        let len = snapshot.len();
        let unhealthy = snapshot
            .endpoints
            .iter()
            .filter(|e| !e.stats.healthy())
            .count();
        // Counted into the set before it is published, so no pick sees it with another's count.
        self.store_unhealthy(&snapshot, unhealthy);
        let snapshot = Arc::new(snapshot);
        let replaced = std::mem::replace(
            &mut *self.current.write().unwrap_or_else(PoisonError::into_inner),
            snapshot.clone(),
        );
        let before = replaced.len();
        #[cfg(test)]
        PANIC_AT_SWAP.with_borrow_mut(|seen| seen.push(self.is_panicking()));
        self.version.fetch_add(1, Release);
        // By the change, so that balancers sharing a name sum their sets, and one that is dropped
        // takes its set with it (see the `Drop` below). Under the health lock, as the set is, so
        // one balancer's changes reach the recorder in order.
        if len > before {
            self.endpoints_gauge.increment((len - before) as f64);
        } else if len < before {
            self.endpoints_gauge.decrement((before - len) as f64);
        }
        let panic = self.health_changed(health, &snapshot);
        self.changed.notify_waiters();
        (panic, replaced)
    }

    /// Applies one discovery change.
    #[cfg(test)]
    pub(crate) fn apply(&self, change: Change<K, S>) {
        self.apply_batch([change]);
    }

    /// Applies discovery changes in order, as one at a time would, and publishes the set they
    /// leave once: the set is rebuilt once for them all, and no call sees some of them applied
    /// and not the others. Removes of keys not in the set change nothing, and changes made only of
    /// them publish nothing. A change whose key's `Hash`, `Eq` or `EndpointMeta` panics is
    /// skipped and logged, leaving the set as it was before it; the changes after it are applied.
    /// A service whose `Drop` panics when the set it leaves is freed, when the change that
    /// brought it is skipped, or once its change is reported (an endpoint added and then replaced
    /// or removed in the same batch; a removed key), loses the panic, logged, and the changes
    /// stand: each endpoint, each skipped change and each report is dropped on its own, so two
    /// such services do not abort the process.
    pub(crate) fn apply_batch(&self, changes: impl IntoIterator<Item = Change<K, S>>) {
        let mut guard = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let health = &mut *guard;
        let old = self.current();
        let mut endpoints = old.endpoints.clone();
        let mut reports = Vec::new();
        for change in changes {
            // `apply_one` runs the key's code before it changes anything, so a change that
            // panics leaves `endpoints`, `zones` and `reports` as they were. It takes the change
            // out only once that code has run: a change it skipped is still here, and is dropped
            // on its own below rather than while the panic unwinds, where a service whose `Drop`
            // panics too would abort the process.
            let mut change = Some(change);
            let applied = catch_unwind(AssertUnwindSafe(|| {
                self.apply_one(
                    &mut health.zones,
                    &mut endpoints,
                    old.local_zone,
                    &mut change,
                    &mut reports,
                )
            }));
            if let Err(panic) = applied {
                caught(
                    || tracing::error!(name = %self.name, panic = panics::message(&*panic), "seawall balance could not apply a discovery change; skipping it"),
                );
                caught(|| drop(panic));
            }
            if change.is_some() {
                self.guarded("dropping a skipped discovery change", || drop(change));
            }
        }
        let mut replaced = None;
        if !reports.is_empty() {
            // Published under the health lock, so the unhealthy count cannot race an ejection.
            let (panic, set) = self.publish(
                health,
                Snapshot::build(endpoints, &self.settings.picker, old.local_zone),
            );
            replaced = Some(set);
            let _ = self.queue(reports.into_iter().chain(panic));
        }
        drop(guard);
        if replaced.is_some() {
            self.drain_all();
        }
        // The set replaced, freed once no call holds it: here, the services discovery removed
        // or replaced are dropped unless a call or a probe still holds one. The listeners have
        // heard of their removal by then unless another thread was reporting when the task
        // came to report it: then the task reports it later, once that thread wakes it, or a
        // later call reports it as it reports the changes up to its own.
        for set in replaced.into_iter().chain([old]) {
            self.free(set);
        }
    }

    /// Lets go of `set`, and if it was the last to hold it, of its endpoints one at a time, each
    /// guarded: a service whose `Drop` panics is logged, and the others are still dropped one by
    /// one rather than while that panic unwinds, where a second would abort the process.
    fn free(&self, set: Arc<Snapshot<K, S>>) {
        // `into_inner`, not `try_unwrap`: a set another thread lets go of meanwhile is still
        // freed here, endpoint by endpoint, rather than dropped whole.
        let Some(set) = Arc::into_inner(set) else {
            return;
        };
        for ep in set.endpoints {
            self.guarded("freeing the endpoints discovery replaced", || drop(ep));
        }
    }

    /// Runs `f`, which runs the user's code (a key's `Hash` or `Eq`, a service's `Drop`, a
    /// discovery error's or stream's `Drop`): a panic is caught and logged with what was being
    /// `doing`, and the thread goes on. Most of that code runs on the background task, which so
    /// keeps applying discovery and running outlier detection and health checks. A change's
    /// report is freed on the thread that reported it, which may be a call's (see
    /// [`drain`](Self::drain)): there, an endpoint discovery added and then replaced or removed in
    /// the same batch, which only its report holds, is dropped, and the call goes on.
    fn guarded(&self, doing: &str, f: impl FnOnce()) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
            caught(
                || tracing::error!(name = %self.name, doing, panic = panics::message(&*panic), "seawall balance caught a panic in an endpoint's key or service; going on"),
            );
            caught(|| drop(panic));
        }
    }

    /// Applies one discovery change to `endpoints`, the set being built, with `zones` the zone
    /// ids. A change that changes the set adds its report to `reports`. The change is taken out
    /// of `change` only once its key's code has run: one whose key panics, or a remove of a key
    /// not in the set, is left there for the caller to drop.
    fn apply_one(
        &self,
        zones: &mut Vec<Arc<str>>,
        endpoints: &mut Vec<Arc<Endpoint<K, S>>>,
        local_zone: u16,
        change: &mut Option<Change<K, S>>,
        reports: &mut Vec<Report<K, S>>,
    ) {
        match change.as_ref() {
            None => {}
            Some(Change::Insert(key, _)) => {
                // The key's own code (`Eq`, `Hash`, `EndpointMeta`) runs first, before anything
                // changes: one that panics leaves the set and the zone ids as they were.
                // A key already in the set is the same endpoint with a new weight, zone or
                // service: it keeps its place, statistics and health.
                let present = endpoints.iter().position(|e| e.key == *key);
                let key_hash = stable_hash(key);
                let weight = key.weight().max(1);
                let zone = match key.zone() {
                    None => u16::MAX - 1,
                    Some(z) => {
                        let known = zones.iter().position(|known| &**known == z);
                        // A zone keeps its id while endpoints are in it. One that comes back
                        // keeps its old id only if zone-aware picking judges that id on its
                        // own; otherwise it takes a lower free one, as a new zone does.
                        let kept = known.filter(|&id| {
                            id < MAX_ZONES - 1 || zone_in_use(endpoints, present, id)
                        });
                        match kept {
                            Some(id) => id as u16,
                            None => {
                                let free = free_zone(zones, endpoints, present, local_zone)
                                    .filter(|&free| known.is_none_or(|id| free < id));
                                match (free, known) {
                                    (Some(id), _) => {
                                        zones[id] = Arc::from(z);
                                        id as u16
                                    }
                                    (None, Some(id)) => id as u16,
                                    (None, None) if zones.len() < usize::from(u16::MAX - 2) => {
                                        zones.push(Arc::from(z));
                                        (zones.len() - 1) as u16
                                    }
                                    (None, None) => u16::MAX - 1,
                                }
                            }
                        }
                    }
                };
                let Some(Change::Insert(key, service)) = change.take() else {
                    return;
                };
                let endpoint = Arc::new(Endpoint {
                    key_hash,
                    weight,
                    zone,
                    stats: present.map_or_else(Arc::default, |i| endpoints[i].stats.clone()),
                    service,
                    key,
                });
                reports.push(Report::Added {
                    ep: endpoint.clone(),
                    updated: present.is_some(),
                });
                match present {
                    Some(i) => endpoints[i] = endpoint,
                    None => endpoints.push(endpoint),
                }
            }
            Some(Change::Remove(key)) => {
                // Keys are unique in the set. Found before anything is removed, so a key whose
                // `Eq` panics leaves the set as it was.
                if let Some(i) = endpoints.iter().position(|e| e.key == *key) {
                    let Some(Change::Remove(key)) = change.take() else {
                        return;
                    };
                    endpoints.remove(i);
                    reports.push(Report::Removed { key });
                }
            }
        }
    }

    /// Ejects endpoint `i` of `set` unless the ejection limits forbid it. Returns the ejection's
    /// report if it did, for the caller to report once its changes are complete. The caller holds
    /// the health lock, read `set` under it, and recounts the unhealthy endpoints once its changes
    /// are complete: an outlier detection pass ejects and returns several, and a pick made during
    /// the pass must not judge panic mode on a count the pass does not leave. The limits count the
    /// endpoints' own flags, so they see the ejections made earlier in the pass.
    fn eject_locked(
        &self,
        set: &Snapshot<K, S>,
        i: usize,
        now: u64,
        reason: EjectReason,
    ) -> Option<Report<K, S>> {
        let ep = &set.endpoints[i];
        if ep.stats.ejected.load(Relaxed) {
            return None;
        }
        let total = set.len();
        let ejected = set
            .endpoints
            .iter()
            .filter(|e| e.stats.ejected.load(Relaxed))
            .count();
        // gRFC A50: stop once the ejected share reaches max_ejection_percent. Unlike gRPC, one is
        // always allowed (Envoy's `always_eject_one_host`), even at 0.
        if ejected > 0
            && ejected as f64 >= self.settings.outlier.max_ejection_percent * total as f64
        {
            return None;
        }
        // Never the last healthy endpoint.
        let healthy_others = set
            .endpoints
            .iter()
            .enumerate()
            .filter(|(j, e)| *j != i && e.stats.healthy())
            .count();
        if healthy_others == 0 {
            return None;
        }
        let multiplier = ep.stats.multiplier.fetch_add(1, Relaxed) + 1;
        ep.stats.ejected_at.store(now, Relaxed);
        ep.stats.ejected.store(true, Relaxed);
        ep.stats.slow_since.store(NONE, Relaxed);
        let duration = self.ejection_time(multiplier);
        metrics::counter(metrics::BALANCE_EJECTIONS, &self.name).increment(1);
        Some(Report::Ejected {
            ep: ep.clone(),
            reason,
            duration,
        })
    }

    fn ejection_time(&self, multiplier: u32) -> Duration {
        let o = &self.settings.outlier;
        let cap = o.base_ejection_time.max(o.max_ejection_time);
        o.base_ejection_time.saturating_mul(multiplier).min(cap)
    }

    fn recount(&self, set: &Snapshot<K, S>) {
        let unhealthy = set.endpoints.iter().filter(|e| !e.stats.healthy()).count();
        self.store_unhealthy(set, unhealthy);
    }

    /// Stores `unhealthy`, just counted under the health lock, as the unhealthy count of `set`
    /// that picks judge panic mode by.
    fn store_unhealthy(&self, set: &Snapshot<K, S>, unhealthy: usize) {
        #[cfg(test)]
        UNHEALTHY_STORES.with_borrow_mut(|stores| stores.push(unhealthy));
        set.unhealthy.store(unhealthy, Relaxed);
    }

    /// Records a finished call on endpoint `ep` of the current set, and reports the changes it
    /// made (an ejection, and the change of panic mode it made).
    pub(crate) fn record(
        &self,
        ep: &Endpoint<K, S>,
        outcome: Outcome,
        end: Option<Instant>,
        start: Option<Instant>,
    ) {
        self.record_unreported(ep, outcome, end, start).report();
    }

    /// Records a finished call on endpoint `ep` of the current set, as [`record`](Self::record)
    /// does, and leaves the changes it made queued: the caller reports them with
    /// [`Unreported::report`] once it has let go of what it need not hold while the listeners
    /// run. A success neither queues nor takes a lock.
    #[inline]
    pub(crate) fn record_unreported(
        &self,
        ep: &Endpoint<K, S>,
        outcome: Outcome,
        end: Option<Instant>,
        start: Option<Instant>,
    ) -> Unreported<'_, K, S, C> {
        let mut unreported = Unreported {
            shared: self,
            queued: None,
        };
        let stats = &ep.stats;
        let timing = match (start, end) {
            (Some(s), Some(e)) => Some(e.saturating_duration_since(s).as_nanos() as f64),
            _ => None,
        };
        // Estimates are made as of `end`, or of when they are written if an estimate looks
        // older than that (the classifier ran since, and the thread may have been held up).
        let read = end.map_or(0, |end| self.nanos(end));
        let now = || self.nanos(Instant::now());
        match outcome {
            Outcome::Success => {
                if self.count_outcomes {
                    stats.successes.fetch_add(1, Relaxed);
                    if stats.consecutive_failures.load(Relaxed) != 0 {
                        stats.consecutive_failures.store(0, Relaxed);
                    }
                }
                if let Some(rtt) = timing {
                    if self.settings.picker.uses_latency() {
                        stats.record_peak(read, now, rtt, self.tuning.tau_ns);
                    }
                    if let Some(lat) = &self.settings.outlier.latency {
                        stats.record_latency(read, now, rtt, lat.decay.as_nanos() as f64);
                    }
                }
            }
            Outcome::Failure => {
                if let Some(rtt) = timing {
                    if self.settings.picker.uses_latency() {
                        // A failure counts as slow: fast failures must not attract traffic.
                        stats.record_peak(
                            read,
                            now,
                            rtt.max(self.tuning.penalty_ns),
                            self.tuning.tau_ns,
                        );
                    }
                }
                if self.count_outcomes {
                    stats.failures.fetch_add(1, Relaxed);
                    // The run wraps around past `u32::MAX` as the counter does: only its
                    // multiples of the limit matter, and they go on from 0.
                    let run = stats
                        .consecutive_failures
                        .fetch_add(1, Relaxed)
                        .wrapping_add(1);
                    if let Some(limit) = self.settings.outlier.consecutive_failures {
                        // Tried at the limit and at each multiple of it: an endpoint the limits
                        // keep in (max_ejection_percent reached, the last healthy one) costs the
                        // lock and passes over the set once per `limit` failures, not at each
                        // one, and is still ejected within `limit` failures once there is room.
                        if run.is_multiple_of(limit) && !stats.ejected.load(Relaxed) {
                            #[cfg(test)]
                            EJECTION_TRIES.set(EJECTION_TRIES.get() + 1);
                            // Found by its statistics (a call that started before discovery
                            // updated the endpoint still counts on it) in the set read under
                            // the lock discovery changes take, so the limits count the set in
                            // force.
                            let mut health =
                                self.health.lock().unwrap_or_else(PoisonError::into_inner);
                            let set = self.current();
                            let ejected = set
                                .endpoints
                                .iter()
                                .position(|e| Arc::ptr_eq(&e.stats, stats))
                                .and_then(|i| {
                                    let now = self.nanos(end.unwrap_or_else(Instant::now));
                                    self.eject_locked(
                                        &set,
                                        i,
                                        now,
                                        EjectReason::ConsecutiveFailures,
                                    )
                                });
                            if let Some(report) = ejected {
                                self.recount(&set);
                                let panic = self.health_changed(&mut health, &set);
                                unreported.queued =
                                    self.queue(std::iter::once(report).chain(panic));
                                drop(health);
                                self.changed.notify_waiters();
                            }
                        }
                    }
                }
            }
            Outcome::Ignored => {}
        }
        unreported
    }

    /// One outlier detection pass (gRFC A50), run every `interval`.
    pub(crate) fn sweep(&self, now_instant: Instant) {
        let now = self.nanos(now_instant);
        let o = &self.settings.outlier;
        let mut guard = self.health.lock().unwrap_or_else(PoisonError::into_inner);
        let health = &mut *guard;
        // Read under the lock discovery changes take: the pass works on the set in force.
        let set = self.current();
        let mut reports = Vec::new();
        // Interval counts, read and reset.
        let counts: Vec<(u64, u64)> = set
            .endpoints
            .iter()
            .map(|e| {
                (
                    u64::from(e.stats.successes.swap(0, Relaxed)),
                    u64::from(e.stats.failures.swap(0, Relaxed)),
                )
            })
            .collect();
        // 1. Success rate.
        if let Some(rule) = &o.success_rate {
            let candidates: Vec<usize> = (0..set.len())
                .filter(|&i| counts[i].0 + counts[i].1 >= u64::from(rule.request_volume))
                .collect();
            if candidates.len() >= rule.minimum_hosts {
                let rate = |i: usize| counts[i].0 as f64 / (counts[i].0 + counts[i].1) as f64;
                let mean =
                    candidates.iter().map(|&i| rate(i)).sum::<f64>() / candidates.len() as f64;
                let var = candidates
                    .iter()
                    .map(|&i| (rate(i) - mean).powi(2))
                    .sum::<f64>()
                    / candidates.len() as f64;
                let threshold = mean - rule.stdev_factor * var.sqrt();
                for &i in &candidates {
                    if rate(i) < threshold && health.rng.random::<f64>() < rule.enforcement {
                        reports.extend(self.eject_locked(&set, i, now, EjectReason::SuccessRate));
                    }
                }
            }
        }
        // 2. Failure percentage.
        if let Some(rule) = &o.failure_percentage {
            let candidates: Vec<usize> = (0..set.len())
                .filter(|&i| counts[i].0 + counts[i].1 >= u64::from(rule.request_volume))
                .collect();
            if candidates.len() >= rule.minimum_hosts {
                for &i in &candidates {
                    let share = counts[i].1 as f64 / (counts[i].0 + counts[i].1) as f64;
                    if share > rule.threshold && health.rng.random::<f64>() < rule.enforcement {
                        reports.extend(self.eject_locked(
                            &set,
                            i,
                            now,
                            EjectReason::FailurePercentage,
                        ));
                    }
                }
            }
        }
        // 3. Latency: the EWMA and the interval's mean both above factor × the peers' median,
        // at every pass with samples for long enough.
        if let Some(rule) = &o.latency {
            // Read and reset for every endpoint, so an ejected one returns with no samples from
            // its time out.
            let means: Vec<Option<f64>> = set
                .endpoints
                .iter()
                .map(|e| e.stats.take_interval_latency())
                .collect();
            let judged: Vec<(usize, f64)> = set
                .endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| {
                    !e.stats.ejected.load(Relaxed)
                        && e.stats.latency_samples.load(Relaxed) >= rule.minimum_samples
                })
                .filter_map(|(i, e)| e.stats.latency_ns().map(|l| (i, l)))
                .collect();
            if judged.len() >= rule.minimum_hosts {
                // Sorted once: each endpoint's peers are the sorted latencies without its own.
                let mut order: Vec<usize> = (0..judged.len()).collect();
                order.sort_by(|&a, &b| judged[a].1.total_cmp(&judged[b].1));
                let sorted: Vec<f64> = order.iter().map(|&k| judged[k].1).collect();
                let mut rank = vec![0; judged.len()];
                for (r, &k) in order.iter().enumerate() {
                    rank[k] = r;
                }
                for (k, &(i, latency)) in judged.iter().enumerate() {
                    let limit = rule.factor * median_without(&sorted, rank[k]);
                    let s = &set.endpoints[i].stats;
                    // A spike lifts the EWMA for several decay periods after the endpoint has
                    // recovered; the interval's mean says whether it is still slow. An interval
                    // without samples says nothing either way and leaves the state as it is:
                    // resetting it would let an endpoint that draws few calls (light traffic, or
                    // a PeakEWMA picker steering away from it) escape however slow it stays,
                    // and keeping it ejects nothing on its own, as ejecting takes a slow mean.
                    let slow = match means[i] {
                        _ if latency <= limit => Some(false),
                        Some(mean) => Some(mean > limit),
                        None => None,
                    };
                    match slow {
                        Some(true) => {
                            let since = s.slow_since.load(Relaxed);
                            if since == NONE {
                                s.slow_since.store(now, Relaxed);
                            } else if now.saturating_sub(since) >= nanos_u64(rule.duration) {
                                reports.extend(self.eject_locked(
                                    &set,
                                    i,
                                    now,
                                    EjectReason::Latency,
                                ));
                            }
                        }
                        Some(false) => s.slow_since.store(NONE, Relaxed),
                        None => {}
                    }
                }
            } else {
                for e in &set.endpoints {
                    e.stats.slow_since.store(NONE, Relaxed);
                }
            }
        }
        // 4. After the rules (gRFC A50): return endpoints whose ejection is over, and take one
        // off the multiplier of each endpoint that ends the interval in the set, so one ejected
        // again soon after it returns stays out longer each time.
        for ep in &set.endpoints {
            let s = &ep.stats;
            if s.ejected.load(Relaxed) {
                let m = s.multiplier.load(Relaxed).max(1);
                let until = s
                    .ejected_at
                    .load(Relaxed)
                    .saturating_add(nanos_u64(self.ejection_time(m)));
                if now >= until {
                    s.ejected.store(false, Relaxed);
                    s.consecutive_failures.store(0, Relaxed);
                    // A fresh latency record: old samples are what got it ejected.
                    s.latency.store(NONE, Relaxed);
                    s.latency_samples.store(0, Relaxed);
                    s.slow_since.store(NONE, Relaxed);
                    reports.push(Report::Returned { ep: ep.clone() });
                }
            } else if s.multiplier.load(Relaxed) > 0 {
                s.multiplier.fetch_sub(1, Relaxed);
            }
        }
        self.recount(&set);
        reports.extend(self.health_changed(health, &set));
        let queued = self.queue(reports);
        drop(guard);
        self.changed.notify_waiters();
        if queued.is_some() {
            self.drain_all();
        }
    }

    /// Applies a health probe's verdict on the endpoint with `key`. Returns whether the verdict
    /// changed the endpoint's health, and so woke the calls waiting for an endpoint.
    fn probed(&self, key: &K, ok: bool) -> bool {
        {
            let mut health = self.health.lock().unwrap_or_else(PoisonError::into_inner);
            let set = self.current();
            let Some(ep) = set.endpoints.iter().find(|e| &e.key == key) else {
                return false;
            };
            if ep.stats.probe_ok.swap(ok, Relaxed) == ok {
                return false;
            }
            self.recount(&set);
            let panic = self.health_changed(&mut health, &set);
            let _ = self.queue(std::iter::once(Report::Probed { ep: ep.clone(), ok }).chain(panic));
        }
        // Either way calls waiting for an endpoint look again: a failed probe can start panic
        // mode, which lets every endpoint take calls.
        self.changed.notify_waiters();
        self.drain_all();
        true
    }

    pub(crate) fn set_task(&self, handle: AbortHandle) {
        *self.task.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
    }
}

#[cfg(test)]
impl<K: Key, S: 'static> Shared<K, S, seawall_core::classify::DefaultClassifier> {
    /// A set picking with `picker` from seed 1, with no wait, panic threshold, outlier detection
    /// or health checks.
    pub(crate) fn for_tests(picker: crate::Picker) -> Self {
        Shared::new(
            Settings {
                name: Name::default_for("balance"),
                picker,
                max_wait: None,
                seed: Some(1),
                panic_threshold: 0.0,
                outlier: crate::OutlierDetection::disabled(),
                health_check: None,
            },
            Listeners::default(),
            seawall_core::classify::DefaultClassifier,
            None,
        )
    }
}

impl<K, S, C> Drop for Shared<K, S, C> {
    fn drop(&mut self) {
        // Its share of the gauges goes with it: a balancer built again under the same name, as on
        // a reload, then reports its own set and health. No change can be applied now, so the set
        // and its health are final.
        let len = self
            .current
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        if len > 0 {
            self.endpoints_gauge.decrement(len as f64);
        }
        let health = self
            .health
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if health.gauged_unhealthy > 0 {
            self.unhealthy_gauge
                .decrement(health.gauged_unhealthy as f64);
        }
        if health.panic {
            self.panic_gauge.decrement(1.0);
        }
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

impl<K: fmt::Debug, S, C> fmt::Debug for Shared<K, S, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        f.debug_struct("Balance")
            .field("name", &self.name)
            .field("picker", &self.settings.picker)
            .field("endpoints", &*set)
            .field("unhealthy", &set.unhealthy.load(Relaxed))
            .finish()
    }
}

/// Boxes a [`Probe`] for the background task.
pub(crate) fn box_probe<K, S, P>(probe: P) -> Option<BoxProbe<K, S>>
where
    P: Probe<K, S>,
{
    if probe.is_noop() {
        return None;
    }
    Some(Arc::new(move |key: &K, service: S| {
        Box::pin(probe.probe(key, service)) as Pin<Box<dyn Future<Output = bool> + Send>>
    }))
}

/// What publishing a set gives: the report of the change of panic mode it made, if any, and the
/// set it replaced.
type Published<K, S> = (Option<Report<K, S>>, Arc<Snapshot<K, S>>);

/// The longest period the background task's timers tick at: about 30 years, the cap
/// [`deadline_after`] puts on a far deadline. A timer works out each tick from the one before,
/// so a longer period (`Duration::MAX`, "never") would overflow an `Instant` at the first tick.
const LONGEST_PERIOD: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Spawns the task that applies discovery changes and runs health checks for `shared`.
///
/// The task holds only a weak reference: it ends when the last balancer is dropped (which also
/// aborts it).
pub(crate) fn spawn<K, S, C, D>(
    shared: &Arc<Shared<K, S, C>>,
    discover: D,
    probe: Option<BoxProbe<K, S>>,
) where
    K: Key,
    S: Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
    D: Discover<Key = K, Service = S> + Send + 'static,
    D::Error: fmt::Display,
{
    let weak = Arc::downgrade(shared);
    let interval = shared.settings.outlier.interval;
    let check = shared.settings.health_check;
    let unreported = shared.unreported.clone();
    let handle = tokio::spawn(run(weak, discover, interval, check.zip(probe), unreported));
    shared.set_task(handle.abort_handle());
}

async fn run<K, S, C, D>(
    weak: Weak<Shared<K, S, C>>,
    discover: D,
    interval: Duration,
    probe: Option<(crate::HealthCheck, BoxProbe<K, S>)>,
    unreported: Arc<Notify>,
) where
    K: Key,
    S: Clone + Send + Sync + 'static,
    C: Send + Sync + 'static,
    D: Discover<Key = K, Service = S> + Send + 'static,
    D::Error: fmt::Display,
{
    // `None` once the stream has ended or panicked: it is dropped then, and with it whatever
    // feeds it.
    let mut discover = Some(Box::pin(discover));
    let interval = interval.min(LONGEST_PERIOD);
    let mut sweep = tokio::time::interval_at(deadline_after(Instant::now(), interval), interval);
    sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let probe_every = probe
        .as_ref()
        .map_or(Duration::from_secs(3600), |(c, _)| c.interval)
        .min(LONGEST_PERIOD);
    let mut probe_tick =
        tokio::time::interval_at(deadline_after(Instant::now(), probe_every), probe_every);
    probe_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut probes = Probes::default();
    // After errors in a row, discovery is read again only after a pause, so a source that fails
    // every time neither spins the task nor floods the log. Errors are in a row while each comes
    // within the longest pause (5 s) of reading resuming after the pause the one before it got:
    // a source whose errors take a while to come (one that reconnects on each read) still backs
    // off, and one that errs on a failed refresh and sends nothing on a good one that changed
    // nothing is not made to wait for errors far apart.
    let mut errors_in_a_row = 0u32;
    // When reading resumed (or resumes) after the last error's pause.
    let mut resumed_at = Instant::now();
    let resume = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(resume);
    let mut paused = false;
    loop {
        let mut yield_first = false;
        // While the reports queued fill a batch, another thread (a call) is reporting, or the
        // task is about to: discovery waits until they are reported, so the queue keeps to
        // fewer than two batches of discovery's changes, however many discovery has ready,
        // besides changes of health (ejections, returns, health-check verdicts, panic mode),
        // which are not held back. The task is woken by the call that reports them, or reports
        // them itself.
        let held = {
            let Some(shared) = weak.upgrade() else { return };
            shared.hold_discovery()
        };
        tokio::select! {
            // The changes ready together (a source that sends a whole list at once) are applied
            // together: the set is rebuilt and published once for them, and no call sees part of
            // them. At most `MAX_BATCH` at a time, so a source with many ready does not hold up
            // outlier detection and health checks. A panic in the stream is caught: the task also
            // runs them, and they must go on.
            (batch, stop) = poll_fn(|cx| poll_batch(&mut discover, cx)), if discover.is_some() && !paused && !held => {
                let Some(shared) = weak.upgrade() else { return };
                for change in &batch {
                    let (Change::Insert(key, _) | Change::Remove(key)) = change;
                    shared.guarded("cancelling a health check", || probes.cancel(key));
                }
                if !batch.is_empty() {
                    errors_in_a_row = 0;
                    shared.apply_batch(batch);
                }
                let pause = match stop {
                    Stop::Pending => None,
                    Stop::Full => {
                        yield_first = true;
                        None
                    }
                    Stop::Error(error) => {
                        let now = Instant::now();
                        let quiet = now.saturating_duration_since(resumed_at);
                        // The same quiet starts afresh wherever the run is: one measured
                        // against the run's own pause would end every run whose errors take
                        // longer than its first pause to come.
                        if quiet > DISCOVERY_PAUSE_MAX {
                            errors_in_a_row = 0;
                        }
                        let pause = discovery_pause(errors_in_a_row);
                        errors_in_a_row = errors_in_a_row.saturating_add(1);
                        resumed_at = deadline_after(now, pause);
                        // The error's `Display` and `Drop` are the user's, and so is the
                        // subscriber: a panic in them loses the line, not the task, and one in
                        // the error's `Drop` is logged.
                        caught(|| tracing::warn!(name = %shared.name, %error, ?pause, "seawall balance discovery error; keeping the current endpoints"));
                        shared.guarded("dropping a discovery error", || drop(error));
                        Some(pause)
                    }
                    Stop::End => {
                        caught(|| tracing::debug!(name = %shared.name, "seawall balance discovery ended; keeping the current endpoints"));
                        // Dropped, so what feeds it stops; its `Drop` is the user's.
                        shared.guarded("dropping the ended discovery stream", || {
                            drop(discover.take())
                        });
                        None
                    }
                    Stop::Panic(panic) => {
                        // A discovery stream that panicked is not polled again: its state is
                        // unknown. It is dropped (a drop that panics too is caught and logged),
                        // so what feeds it stops. The set it built is kept, and outlier detection and
                        // health checks go on, so ejected endpoints still return.
                        caught(|| tracing::error!(name = %shared.name, panic = panics::message(&*panic), "seawall balance discovery panicked; keeping the current endpoints"));
                        caught(|| drop(panic));
                        shared.guarded("dropping the discovery stream that panicked", || {
                            drop(discover.take())
                        });
                        continue;
                    }
                };
                match pause {
                    Some(pause) if pause.is_zero() => yield_first = true,
                    Some(pause) => {
                        resume.as_mut().reset(deadline_after(Instant::now(), pause));
                        paused = true;
                    }
                    None => {}
                }
            }
            () = &mut resume, if paused => paused = false,
            // A call reported its own changes and left those queued after them, or reported the
            // queue discovery waits on.
            () = unreported.notified() => {
                let Some(shared) = weak.upgrade() else { return };
                shared.drain_all();
            }
            at = sweep.tick() => {
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep(at);
            }
            _ = probe_tick.tick(), if probe.is_some() => {
                let Some(shared) = weak.upgrade() else { return };
                let Some((check, probe)) = &probe else { continue };
                let set = shared.current();
                for ep in &set.endpoints {
                    // An endpoint whose last probe still runs is not probed again until it ends
                    // (as Envoy does), so verdicts apply in the order the probes started.
                    shared.guarded("starting a health check", || {
                        if !probes.running.contains_key(&ep.key) {
                            probes.start(ep.key.clone(), check.timeout, probe, ep.service.clone());
                        }
                    });
                }
            }
            Some(result) = probes.tasks.join_next_with_id(), if !probes.tasks.is_empty() => {
                let Some(shared) = weak.upgrade() else { return };
                let mut woken = false;
                shared.guarded("applying a health check's verdict", || {
                    woken = probes
                        .finished(result)
                        .is_some_and(|(key, ok)| shared.probed(&key, ok));
                });
                // The probe's task has ended and dropped its clone of the endpoint's service,
                // with any capacity the probe held (a concurrency limit's permit). A waiting call
                // listens only on the endpoint it holds, so whatever the verdict (a probe that
                // panicked or was cancelled has let go too), the waiting calls look again.
                if !woken {
                    wake_waiters(&shared);
                }
            }
        }
        if yield_first {
            // After a lone error or a full batch, let the runtime run other tasks before reading
            // again.
            tokio::task::yield_now().await;
        }
    }
}

/// The most discovery changes the background task applies as one set.
const MAX_BATCH: usize = 1024;

/// Why the background task stopped reading the discovery changes ready.
enum Stop<E> {
    /// No change is ready.
    Pending,
    /// `MAX_BATCH` changes were read.
    Full,
    /// The stream gave an error.
    Error(E),
    /// The stream ended.
    End,
    /// Polling the stream panicked.
    Panic(Box<dyn Any + Send>),
}

/// Discovery changes read one after the other, in order, and why the reading stopped.
type Batch<D> = (
    Vec<Change<<D as Discover>::Key, <D as Discover>::Service>>,
    Stop<<D as Discover>::Error>,
);

/// Reads the discovery changes ready now, at most `MAX_BATCH`: pending until one is (or the stream
/// errs, ends or panics), then the changes read in order and why the reading stopped. A panic in
/// the stream is caught.
fn poll_batch<D: Discover>(
    discover: &mut Option<Pin<Box<D>>>,
    cx: &mut Context<'_>,
) -> Poll<Batch<D>> {
    let Some(stream) = discover.as_mut() else {
        return Poll::Pending;
    };
    let mut changes = Vec::new();
    let stop = loop {
        match catch_unwind(AssertUnwindSafe(|| stream.as_mut().poll_discover(cx))) {
            Ok(Poll::Ready(Some(Ok(change)))) => {
                changes.push(change);
                if changes.len() == MAX_BATCH {
                    break Stop::Full;
                }
            }
            Ok(Poll::Ready(Some(Err(error)))) => break Stop::Error(error),
            Ok(Poll::Ready(None)) => break Stop::End,
            Err(panic) => break Stop::Panic(panic),
            Ok(Poll::Pending) if changes.is_empty() => return Poll::Pending,
            Ok(Poll::Pending) => break Stop::Pending,
        }
    };
    Poll::Ready((changes, stop))
}

/// The health probes running: at most one per endpoint, each on the service the endpoint had when
/// it started.
struct Probes<K> {
    tasks: JoinSet<bool>,
    /// The endpoint each running probe checks.
    keys: HashMap<task::Id, K>,
    /// The running probe of each endpoint being probed.
    running: HashMap<K, AbortHandle>,
}

impl<K> Default for Probes<K> {
    fn default() -> Self {
        Probes {
            tasks: JoinSet::new(),
            keys: HashMap::new(),
            running: HashMap::new(),
        }
    }
}

impl<K: Key> Probes<K> {
    /// Starts probing the endpoint with `key` and its `service`; a probe longer than `timeout`
    /// fails.
    fn start<S>(&mut self, key: K, timeout: Duration, probe: &BoxProbe<K, S>, service: S)
    where
        S: Send + 'static,
    {
        let probe = probe.clone();
        let probed = key.clone();
        // The probe is called on its own task, as its future runs there: one that panics,
        // whether making its future or polling it, fails, and the balancer's task goes on
        // applying discovery and running health checks.
        let task = self.tasks.spawn(async move {
            let probe = probe(&probed, service);
            matches!(tokio::time::timeout(timeout, probe).await, Ok(true))
        });
        self.keys.insert(task.id(), key.clone());
        self.running.insert(key, task);
    }

    /// Stops the probe of the endpoint with `key`, which discovery removed or replaced: its verdict
    /// is about a service no longer in the set, and the clone of that service it holds is dropped.
    fn cancel(&mut self, key: &K) {
        if self.running.is_empty() {
            return;
        }
        if let Some(task) = self.running.remove(key) {
            task.abort();
            self.keys.remove(&task.id());
        }
    }

    /// The endpoint a probe that ended checked and its verdict, or `None` for a cancelled probe.
    fn finished(&mut self, result: Result<(task::Id, bool), task::JoinError>) -> Option<(K, bool)> {
        // A probe that panicked (an `unwrap` on a refused connection) failed.
        let (id, ok) = match result {
            Ok((id, ok)) => (id, ok),
            Err(error) => (error.id(), false),
        };
        let key = self.keys.remove(&id)?;
        self.running.remove(&key);
        Some((key, ok))
    }
}

/// A zone id that no endpoint of `endpoints` but the one at `replaced` is in, other than the
/// local zone's, for a zone seen for the first time or coming back to an id judged with others:
/// zones that have left the set give their ids to new ones, so a balancer that has seen many
/// zones come and go still tells apart the zones it has now (zone-aware picking judges 31 zones
/// apart, the rest together).
fn free_zone<K, S>(
    zones: &[Arc<str>],
    endpoints: &[Arc<Endpoint<K, S>>],
    replaced: Option<usize>,
    local_zone: u16,
) -> Option<usize> {
    let mut used = vec![false; zones.len()];
    for (i, ep) in endpoints.iter().enumerate() {
        if Some(i) != replaced {
            if let Some(used) = used.get_mut(usize::from(ep.zone)) {
                *used = true;
            }
        }
    }
    if let Some(local) = used.get_mut(usize::from(local_zone)) {
        *local = true;
    }
    used.iter().position(|&used| !used)
}

/// Whether an endpoint of `endpoints` but the one at `replaced` is in the zone with id `zone`.
fn zone_in_use<K, S>(
    endpoints: &[Arc<Endpoint<K, S>>],
    replaced: Option<usize>,
    zone: usize,
) -> bool {
    endpoints
        .iter()
        .enumerate()
        .any(|(i, ep)| Some(i) != replaced && usize::from(ep.zone) == zone)
}

/// Where a balancer seeded with `seed` starts its round robin turns (SplitMix64's finaliser, so
/// nearby seeds start far apart).
fn round_robin_start(seed: u64) -> usize {
    let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    // Kept far below `usize::MAX`: the counter wraps only after as many calls again.
    (z ^ (z >> 31)) as usize >> 1
}

/// How long to wait before reading discovery again after `before` errors in a row and one more:
/// nothing after a lone error, then 50 ms doubling up to 5 s.
fn discovery_pause(before: u32) -> Duration {
    const FIRST: Duration = Duration::from_millis(50);
    match before {
        0 => Duration::ZERO,
        n => FIRST
            .saturating_mul(1 << (n - 1).min(16))
            .min(DISCOVERY_PAUSE_MAX),
    }
}

/// The longest pause before discovery is read again after errors in a row.
const DISCOVERY_PAUSE_MAX: Duration = Duration::from_secs(5);

/// The median of `sorted` (in ascending order, at least two values) without the value at
/// `rank`: the median of the other values, read from the middle of `sorted` on either side of
/// `rank` rather than sorted again.
fn median_without(sorted: &[f64], rank: usize) -> f64 {
    let others = sorted.len() - 1;
    let other = |j: usize| sorted[j + usize::from(j >= rank)];
    let mid = others / 2;
    if others % 2 == 1 {
        other(mid)
    } else {
        (other(mid - 1) + other(mid)) / 2.0
    }
}

/// Whether a balancer with `unhealthy` of its `total` endpoints unhealthy is in panic mode: fewer
/// than `threshold` of them are healthy, and at least one is not.
#[inline]
fn panic_mode(unhealthy: usize, total: usize, threshold: f64) -> bool {
    unhealthy > 0 && ((total - unhealthy.min(total)) as f64) < threshold * total as f64
}

/// A duration in nanoseconds, saturating at `u64::MAX` (about 584 years) instead of truncating.
fn nanos_u64(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
thread_local! {
    /// How many times a failure on this thread took the health lock to try an ejection.
    static EJECTION_TRIES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The unhealthy counts stored on this thread, in order.
    static UNHEALTHY_STORES: std::cell::RefCell<Vec<usize>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Whether a pick judged panic mode as each set published on this thread was swapped in.
    static PANIC_AT_SWAP: std::cell::RefCell<Vec<bool>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Picker, Tagged};
    use seawall_core::classify::DefaultClassifier;

    /// The median of the others read from the sorted latencies is the median of the others
    /// sorted on their own, for any set of latencies (ties included) and any endpoint of it.
    #[test]
    fn the_median_without_one_matches_sorting_the_others() {
        let mut rng = SmallRng::seed_from_u64(7);
        for _ in 0..2000 {
            let n = rng.random_range(2..40);
            // Few distinct values half the time, so ties are common.
            let spread = if rng.random() { 5.0 } else { 1e9 };
            let values: Vec<f64> = (0..n)
                .map(|_| (rng.random::<f64>() * spread).floor())
                .collect();
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
            let sorted: Vec<f64> = order.iter().map(|&k| values[k]).collect();
            for (rank, &k) in order.iter().enumerate() {
                let mut others: Vec<f64> = values
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != k)
                    .map(|(_, &v)| v)
                    .collect();
                others.sort_by(f64::total_cmp);
                let mid = others.len() / 2;
                let expected = if others.len() % 2 == 1 {
                    others[mid]
                } else {
                    (others[mid - 1] + others[mid]) / 2.0
                };
                assert_eq!(
                    median_without(&sorted, rank).to_bits(),
                    expected.to_bits(),
                    "{values:?} without {k}"
                );
            }
        }
    }

    /// Round robin settings, seeded, with `panic_threshold` and `outlier` detection.
    fn round_robin(panic_threshold: f64, outlier: crate::OutlierDetection) -> Settings {
        Settings {
            name: Name::default_for("balance"),
            picker: Picker::RoundRobin,
            max_wait: None,
            seed: Some(1),
            panic_threshold,
            outlier,
            health_check: None,
        }
    }

    /// How many failures in a row eject an endpoint in [`ejecting_two_of_twenty`].
    const LIMIT: u32 = 5;

    /// Twenty endpoints, at most 10 % ejected, ejected after [`LIMIT`] failures in a row, and
    /// endpoints 0 and 1 ejected so: no other can be.
    fn ejecting_two_of_twenty() -> Shared<usize, (), DefaultClassifier> {
        let shared = Shared::<usize, (), _>::new(
            round_robin(
                0.0,
                crate::OutlierDetection {
                    max_ejection_percent: 0.1,
                    consecutive_failures: Some(LIMIT),
                    ..crate::OutlierDetection::disabled()
                },
            ),
            Listeners::default(),
            DefaultClassifier,
            None,
        );
        for i in 0..20 {
            shared.apply(Change::Insert(i, ()));
        }
        let set = shared.current();
        for i in 0..2 {
            fail(&shared, &set.endpoints[i], LIMIT);
        }
        assert_eq!(shared.current().unhealthy.load(Relaxed), 2);
        shared
    }

    fn fail(shared: &Shared<usize, (), DefaultClassifier>, ep: &Endpoint<usize, ()>, n: u32) {
        for _ in 0..n {
            shared.record(ep, Outcome::Failure, None, None);
        }
    }

    /// With two of twenty endpoints ejected, a third failing endpoint stays in, and its failures
    /// try to eject it (taking the health lock and scanning the set) once per [`LIMIT`], not each
    /// time.
    #[test]
    fn a_failing_endpoint_the_limits_keep_in_is_tried_once_per_limit() {
        let shared = ejecting_two_of_twenty();
        let set = shared.current();
        let before = EJECTION_TRIES.get();
        fail(&shared, &set.endpoints[2], 1000);
        assert!(!set.endpoints[2].stats.ejected.load(Relaxed));
        let tries = EJECTION_TRIES.get() - before;
        assert_eq!(tries, 1000 / LIMIT as usize);
    }

    /// An endpoint the limits keep in that fails more than `u32::MAX` times in a row: its run of
    /// failures wraps around rather than overflow, it is still tried once per [`LIMIT`] (once
    /// more where the run wraps, at 0), and it is ejected within `LIMIT` failures once there is
    /// room.
    #[test]
    fn a_run_of_failures_longer_than_u32_max_wraps_around() {
        let shared = ejecting_two_of_twenty();
        let set = shared.current();
        let stats = &set.endpoints[2].stats;
        stats.consecutive_failures.store(u32::MAX - 7, Relaxed);
        let before = EJECTION_TRIES.get();
        // Runs u32::MAX - 6 ..= u32::MAX, then 0 ..= 12.
        fail(&shared, &set.endpoints[2], 20);
        assert!(!stats.ejected.load(Relaxed));
        assert_eq!(stats.consecutive_failures.load(Relaxed), 12);
        assert_eq!(EJECTION_TRIES.get() - before, 2 + 3);

        // Endpoint 0 leaves the set: one of nineteen is ejected, so there is room for another.
        shared.apply(Change::Remove(0));
        fail(&shared, &set.endpoints[2], 2);
        assert!(!stats.ejected.load(Relaxed), "run 14");
        fail(&shared, &set.endpoints[2], 1);
        assert!(stats.ejected.load(Relaxed), "run 15");
    }

    /// An outlier detection pass that ejects two endpoints of four and returns a third stores
    /// the unhealthy count once, the count it leaves: a pick made meanwhile never sees the three
    /// out at once (panic mode at a threshold of 0.5) that the pass does not leave.
    #[test]
    fn an_outlier_detection_pass_stores_the_unhealthy_count_once() {
        let shared = Shared::<usize, (), _>::new(
            round_robin(
                0.5,
                crate::OutlierDetection {
                    interval: Duration::from_secs(1),
                    base_ejection_time: Duration::from_secs(10),
                    max_ejection_time: Duration::from_secs(10),
                    max_ejection_percent: 1.0,
                    failure_percentage: Some(crate::FailurePercentage {
                        threshold: 0.5,
                        enforcement: 1.0,
                        minimum_hosts: 3,
                        request_volume: 1,
                    }),
                    ..crate::OutlierDetection::disabled()
                },
            ),
            Listeners::default(),
            DefaultClassifier,
            None,
        );
        for i in 0..4 {
            shared.apply(Change::Insert(i, ()));
        }
        let set = shared.current();
        let calls = |failing: &[usize]| {
            for (i, ep) in set.endpoints.iter().enumerate() {
                let outcome = if failing.contains(&i) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                };
                shared.record(ep, outcome, None, None);
            }
        };
        let ejected = || {
            set.endpoints
                .iter()
                .map(|e| e.stats.ejected.load(Relaxed))
                .collect::<Vec<_>>()
        };

        // The pass at 1 s ejects endpoint 0 for 10 s.
        calls(&[0]);
        UNHEALTHY_STORES.take();
        shared.sweep(shared.epoch + Duration::from_secs(1));
        assert_eq!(ejected(), [true, false, false, false]);
        assert_eq!(UNHEALTHY_STORES.take(), [1]);

        // The pass at 11 s ejects 1 and 2, then returns 0.
        calls(&[1, 2]);
        shared.sweep(shared.epoch + Duration::from_secs(11));
        assert_eq!(ejected(), [false, true, true, false]);
        assert_eq!(UNHEALTHY_STORES.take(), [2]);
        assert!(!shared.is_panicking());
    }

    /// A batch that removes two of the five ejected endpoints of ten (threshold 0.5) publishes the
    /// set with its own unhealthy count: a pick made as the set is swapped in judges 3 of 8 out,
    /// not the old count of 5 against the new size, which would be panic mode without
    /// `PanicEntered` ever reported; and one that removes healthy endpoints is in panic mode from
    /// the swap on, not judged on a fresh set's count of 0.
    #[test]
    fn a_pick_judges_panic_mode_on_the_count_of_the_set_it_reads() {
        let shared = Shared::<usize, (), _>::new(
            round_robin(
                0.5,
                crate::OutlierDetection {
                    max_ejection_percent: 1.0,
                    consecutive_failures: Some(1),
                    ..crate::OutlierDetection::disabled()
                },
            ),
            Listeners::default(),
            DefaultClassifier,
            None,
        );
        shared.apply_batch((0..10).map(|i| Change::Insert(i, ())));
        let set = shared.current();
        for ep in &set.endpoints[..5] {
            fail(&shared, ep, 1);
        }
        drop(set);
        assert!(!shared.is_panicking());
        PANIC_AT_SWAP.take();
        shared.apply_batch([Change::Remove(0), Change::Remove(1)]);
        assert_eq!(PANIC_AT_SWAP.take(), [false]);
        assert_eq!(shared.current().len(), 8);
        assert!(!shared.is_panicking());

        // The mirror case: removing three healthy endpoints leaves 3 of 5 out, panic mode from
        // the swap on, not a fresh set's count of 0.
        PANIC_AT_SWAP.take();
        shared.apply_batch([Change::Remove(5), Change::Remove(6), Change::Remove(7)]);
        assert_eq!(PANIC_AT_SWAP.take(), [true]);
        assert!(shared.is_panicking());
    }

    /// A subscriber that panics on the balancer's log lines loses the lines, not the events: the
    /// listeners hear the endpoints added, the ejection and `PanicEntered`, as the panic gauge and
    /// `is_panicking` have it.
    #[test]
    fn a_subscriber_that_panics_on_the_log_lines_loses_no_event() {
        let _subscriber =
            tracing::subscriber::set_default(seawall_core::event::PanickingSubscriber);
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        let shared = Shared::<usize, (), _>::new(
            round_robin(
                0.7,
                crate::OutlierDetection {
                    base_ejection_time: Duration::from_secs(10),
                    max_ejection_percent: 1.0,
                    consecutive_failures: Some(1),
                    ..crate::OutlierDetection::disabled()
                },
            ),
            Listeners::default().with(move |_: &Name, event: &BalanceEvent| {
                recorded.lock().unwrap().push(event.clone());
            }),
            DefaultClassifier,
            None,
        );
        shared.apply_batch([Change::Insert(0, ()), Change::Insert(1, ())]);
        let set = shared.current();
        shared.record(&set.endpoints[1], Outcome::Failure, None, None);
        assert!(shared.is_panicking());
        assert_eq!(
            *events.lock().unwrap(),
            [
                BalanceEvent::EndpointAdded { key: "0".into() },
                BalanceEvent::EndpointAdded { key: "1".into() },
                BalanceEvent::Ejected {
                    key: "1".into(),
                    reason: EjectReason::ConsecutiveFailures,
                    duration: Duration::from_secs(10),
                },
                BalanceEvent::PanicEntered {
                    unhealthy: 1,
                    endpoints: 2,
                },
            ]
        );
    }

    /// A change made while another call drains the queue is left to it, in order after the
    /// reports before it; and a drain that ends other than by finding the queue empty (a panic
    /// no guard caught) clears the flag, so the next change is reported along with the one left.
    #[test]
    fn changes_made_while_another_call_reports_are_left_to_it() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        let shared = Shared::<usize, (), _>::new(
            round_robin(0.0, crate::OutlierDetection::disabled()),
            Listeners::default().with(move |_: &Name, event: &BalanceEvent| {
                recorded.lock().unwrap().push(event.clone());
            }),
            DefaultClassifier,
            None,
        );
        let added = |key: &str| BalanceEvent::EndpointAdded { key: key.into() };
        shared.pending.lock().unwrap().draining = true;
        let draining = Draining {
            pending: &shared.pending,
            unreported: &shared.unreported,
            done: false,
        };
        shared.apply(Change::Insert(0, ()));
        assert_eq!(shared.current().len(), 1);
        assert!(events.lock().unwrap().is_empty());
        assert_eq!(shared.pending.lock().unwrap().reports.len(), 1);
        drop(draining);
        shared.apply(Change::Insert(1, ()));
        assert_eq!(*events.lock().unwrap(), [added("0"), added("1")]);
        let pending = shared.pending.lock().unwrap();
        assert!(pending.reports.is_empty() && !pending.draining);
    }

    fn zone_aware() -> Shared<Tagged<usize>, (), DefaultClassifier> {
        Shared::for_tests(Picker::zone_aware("local"))
    }

    fn zone_of(shared: &Shared<Tagged<usize>, (), DefaultClassifier>, key: usize) -> u16 {
        let set = shared.current();
        set.endpoints
            .iter()
            .find(|e| e.key.key == key)
            .unwrap()
            .zone
    }

    /// A zone that left the set when it had an id zone-aware picking judges with others, and then
    /// comes back while few zones are in the set, gets an id of its own again.
    #[test]
    fn a_zone_that_comes_back_gets_an_id_judged_on_its_own() {
        let shared = zone_aware();
        for i in 0..40 {
            shared.apply(Change::Insert(
                Tagged::new(i).with_zone(format!("z{i}")),
                (),
            ));
        }
        assert!(usize::from(zone_of(&shared, 35)) >= MAX_ZONES - 1);
        for i in 0..40 {
            shared.apply(Change::Remove(Tagged::new(i)));
        }
        shared.apply(Change::Insert(Tagged::new(35).with_zone("z35"), ()));
        shared.apply(Change::Insert(Tagged::new(36).with_zone("z35"), ()));
        let id = zone_of(&shared, 35);
        assert!(usize::from(id) < MAX_ZONES - 1, "{id}");
        assert_eq!(zone_of(&shared, 36), id);
    }

    /// A zone with an id judged with others keeps it while an endpoint in it stays in the set:
    /// its endpoints share one id.
    #[test]
    fn a_zone_in_the_set_keeps_its_id() {
        let shared = zone_aware();
        for i in 0..40 {
            shared.apply(Change::Insert(
                Tagged::new(i).with_zone(format!("z{i}")),
                (),
            ));
        }
        let id = zone_of(&shared, 35);
        for i in (0..40).filter(|&i| i != 35) {
            shared.apply(Change::Remove(Tagged::new(i)));
        }
        shared.apply(Change::Insert(Tagged::new(100).with_zone("z35"), ()));
        assert_eq!(zone_of(&shared, 100), id);
        assert_eq!(zone_of(&shared, 35), id);
    }

    /// A discovery stream that gives `items` ready at once, then nothing more.
    fn ready<K: Key>(
        items: impl IntoIterator<Item = Result<Change<K, &'static str>, String>>,
    ) -> impl Discover<Key = K, Service = &'static str, Error = String> + Send + 'static {
        use futures_util::StreamExt;
        let items: Vec<_> = items.into_iter().collect();
        futures_util::stream::iter(items).chain(futures_util::stream::pending())
    }

    /// A round robin set reporting its events to `events`.
    fn recorded(
        events: &Arc<Mutex<Vec<BalanceEvent>>>,
    ) -> Arc<Shared<usize, &'static str, DefaultClassifier>> {
        let events = events.clone();
        Arc::new(Shared::new(
            round_robin(0.0, crate::OutlierDetection::disabled()),
            Listeners::default().with(move |_: &Name, event: &BalanceEvent| {
                events.lock().unwrap().push(event.clone());
            }),
            DefaultClassifier,
            None,
        ))
    }

    fn keys<K: Key + Copy, S: 'static>(shared: &Shared<K, S, DefaultClassifier>) -> Vec<K> {
        shared.current().endpoints.iter().map(|e| e.key).collect()
    }

    /// 200 changes ready at once (a DNS answer turned into changes) are applied as one set:
    /// built and published once, so no call sees some of them and not the others.
    #[tokio::test(start_paused = true)]
    async fn changes_ready_together_are_published_as_one_set() {
        let shared = Arc::new(Shared::for_tests(Picker::WeightedRoundRobin));
        spawn(
            &shared,
            ready((0..200usize).map(|i| Ok(Change::Insert(i, "a")))),
            None,
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(shared.version.load(Acquire), 1, "one publish");
        assert_eq!(keys(&shared), (0..200).collect::<Vec<_>>());
    }

    /// Within one set of ready changes, each applies as it would alone: a key removed and inserted
    /// again starts afresh at the end, a key inserted again keeps its place and statistics, a
    /// remove of a key not in the set does nothing, and each change reports its event.
    #[tokio::test(start_paused = true)]
    async fn changes_applied_together_apply_in_order() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let shared = recorded(&events);
        shared.apply(Change::Insert(1, "a"));
        shared.apply(Change::Insert(2, "a"));
        let before = shared.current();
        for ep in &before.endpoints {
            ep.stats.failures.store(7, Relaxed);
        }
        events.lock().unwrap().clear();
        spawn(
            &shared,
            ready([
                Ok(Change::Insert(1, "b")),
                Ok(Change::Remove(1)),
                Ok(Change::Insert(1, "c")),
                Ok(Change::Insert(2, "b")),
                Ok(Change::Remove(3)),
            ]),
            None,
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(shared.version.load(Acquire), 3, "one publish for the five");
        let set = shared.current();
        assert_eq!(keys(&shared), vec![2, 1]);
        let (two, one) = (&set.endpoints[0], &set.endpoints[1]);
        assert_eq!(one.service, "c");
        assert!(!Arc::ptr_eq(&one.stats, &before.endpoints[0].stats));
        assert_eq!(one.stats.failures.load(Relaxed), 0);
        assert_eq!(two.service, "b");
        assert!(Arc::ptr_eq(&two.stats, &before.endpoints[1].stats));
        let added = |key: &str| BalanceEvent::EndpointAdded { key: key.into() };
        assert_eq!(
            *events.lock().unwrap(),
            vec![
                added("1"),
                BalanceEvent::EndpointRemoved { key: "1".into() },
                added("1"),
                added("2"),
            ]
        );
    }

    /// An error among ready changes: those before it are applied (as one set), and the error is
    /// handled as ever: after a lone error discovery is read again at once, after a second in a
    /// row only 50 ms later.
    #[tokio::test(start_paused = true)]
    async fn an_error_among_ready_changes_applies_those_before_it() {
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        spawn(
            &shared,
            ready([
                Ok(Change::Insert(0usize, "a")),
                Ok(Change::Insert(1, "a")),
                Err("down".to_string()),
                Err("still down".to_string()),
                Ok(Change::Insert(2, "a")),
                Ok(Change::Insert(3, "a")),
            ]),
            None,
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![0, 1]);
        assert_eq!(shared.version.load(Acquire), 1);
        tokio::time::sleep(Duration::from_millis(48)).await;
        assert_eq!(
            keys(&shared),
            vec![0, 1],
            "paused after two errors in a row"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert_eq!(keys(&shared), vec![0, 1, 2, 3]);
        assert_eq!(shared.version.load(Acquire), 2);
    }

    /// More changes ready than one set takes are applied `MAX_BATCH` at a time, and the task lets
    /// the runtime run other tasks between them.
    #[tokio::test(start_paused = true)]
    async fn many_ready_changes_are_applied_a_batch_at_a_time() {
        let n = 2 * MAX_BATCH + MAX_BATCH / 2;
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        spawn(
            &shared,
            ready((0..n).map(|i| Ok(Change::Insert(i, "a")))),
            None,
        );
        let mut seen = Vec::new();
        for _ in 0..100 {
            tokio::task::yield_now().await;
            let len = shared.current().len();
            if len > 0 && seen.last() != Some(&len) {
                seen.push(len);
            }
            if len == n {
                break;
            }
        }
        assert_eq!(seen, vec![MAX_BATCH, 2 * MAX_BATCH, n]);
        assert_eq!(shared.version.load(Acquire), 3);
    }

    /// A key whose `Debug` panics for 1.
    #[derive(Clone, Copy, PartialEq, Eq, Hash)]
    struct Touchy(usize);

    impl fmt::Debug for Touchy {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            assert_ne!(self.0, 1, "key 1 cannot be shown");
            write!(f, "{}", self.0)
        }
    }

    impl crate::EndpointMeta for Touchy {}

    /// A key whose `Debug` panics leaves the set and its health as they would be otherwise: it is
    /// added, ejected on a call's thread and returned by the background task, which goes on; only
    /// its events are lost.
    #[tokio::test(start_paused = true)]
    async fn a_key_whose_debug_panics_is_still_added_ejected_and_returned() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        let shared = Arc::new(Shared::new(
            round_robin(
                0.0,
                crate::OutlierDetection {
                    interval: Duration::from_secs(1),
                    base_ejection_time: Duration::from_secs(10),
                    max_ejection_percent: 1.0,
                    consecutive_failures: Some(1),
                    ..crate::OutlierDetection::disabled()
                },
            ),
            Listeners::default().with(move |_: &Name, event: &BalanceEvent| {
                recorded.lock().unwrap().push(event.clone());
            }),
            DefaultClassifier,
            None,
        ));
        spawn(
            &shared,
            ready((0..3).map(|i| Ok(Change::Insert(Touchy(i), "a")))),
            None,
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Compared by number: a failed assertion showing key 1 would panic again.
        let numbers: Vec<usize> = keys(&shared).iter().map(|k| k.0).collect();
        assert_eq!(numbers, vec![0, 1, 2]);

        let set = shared.current();
        shared.record(&set.endpoints[1], Outcome::Failure, None, None);
        assert!(set.endpoints[1].stats.ejected.load(Relaxed));
        assert_eq!(shared.current().unhealthy.load(Relaxed), 1);

        // Ejected at 1 ms for 10 s: back at the pass of 11 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!set.endpoints[1].stats.ejected.load(Relaxed));
        assert_eq!(shared.current().unhealthy.load(Relaxed), 0);
        let added = |key: &str| BalanceEvent::EndpointAdded { key: key.into() };
        assert_eq!(*events.lock().unwrap(), vec![added("0"), added("2")]);
    }

    /// A key whose `Hash` panics for 99.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Unhashable(usize);

    impl std::hash::Hash for Unhashable {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            assert_ne!(self.0, 99, "key 99 cannot be hashed");
            self.0.hash(state);
        }
    }

    impl crate::EndpointMeta for Unhashable {}

    /// A service whose `Drop` panics once `armed`, unless it is dropped while unwinding.
    #[derive(Clone)]
    struct Bomb(Arc<std::sync::atomic::AtomicBool>);

    impl Drop for Bomb {
        fn drop(&mut self) {
            if self.0.load(Relaxed) && !std::thread::panicking() {
                self.0.store(false, Relaxed);
                panic!("service cannot be dropped");
            }
        }
    }

    /// A discovery stream fed by the returned sender, one change at a time.
    fn fed<K: Eq + Send + 'static, S: Send + 'static>() -> (
        tokio::sync::mpsc::UnboundedSender<Change<K, S>>,
        impl Discover<Key = K, Service = S, Error = String> + Send + 'static,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stream = futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx).map(|change| change.map(Ok::<_, String>))
        });
        (tx, stream)
    }

    /// A balancer that ejects on one failure ([`eject_at_once`]) and tells `listeners`, fed two
    /// endpoints, 0 and 1, by a [`fed`] stream, once both are applied; with the feed.
    async fn two_ejecting_on_one_failure(
        listeners: Listeners<BalanceEvent>,
    ) -> (
        Arc<Shared<usize, (), DefaultClassifier>>,
        tokio::sync::mpsc::UnboundedSender<Change<usize, ()>>,
    ) {
        let shared = Arc::new(Shared::new(
            eject_at_once(),
            listeners,
            DefaultClassifier,
            None,
        ));
        let (tx, stream) = fed();
        spawn(&shared, stream, None);
        for i in 0..2usize {
            tx.send(Change::Insert(i, ())).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        (shared, tx)
    }

    /// Outlier detection that ejects on one failure for 10 s, and runs every second.
    fn eject_at_once() -> Settings {
        round_robin(
            0.0,
            crate::OutlierDetection {
                interval: Duration::from_secs(1),
                base_ejection_time: Duration::from_secs(10),
                max_ejection_percent: 1.0,
                consecutive_failures: Some(1),
                ..crate::OutlierDetection::disabled()
            },
        )
    }

    /// A change whose key's `Hash` panics is skipped, and the changes with it and after it are
    /// applied: the background task goes on applying discovery and returning ejected endpoints.
    #[tokio::test(start_paused = true)]
    async fn a_change_whose_key_panics_is_skipped_and_the_task_goes_on() {
        let shared = Arc::new(Shared::new(
            eject_at_once(),
            Listeners::default(),
            DefaultClassifier,
            None,
        ));
        let (tx, stream) = fed();
        spawn(&shared, stream, None);
        for i in 0..3 {
            tx.send(Change::Insert(Unhashable(i), "a")).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), [0, 1, 2].map(Unhashable));
        let set = shared.current();
        shared.record(&set.endpoints[0], Outcome::Failure, None, None);
        assert!(set.endpoints[0].stats.ejected.load(Relaxed));

        // Ready together: applied as one batch, without 99.
        tx.send(Change::Insert(Unhashable(99), "a")).unwrap();
        tx.send(Change::Insert(Unhashable(3), "a")).unwrap();
        // Ejected at 1 ms for 10 s: back at the pass of 11 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!set.endpoints[0].stats.ejected.load(Relaxed));
        assert_eq!(shared.current().unhealthy.load(Relaxed), 0);
        assert_eq!(keys(&shared), [0, 1, 2, 3].map(Unhashable));

        tx.send(Change::Insert(Unhashable(4), "a")).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), [0, 1, 2, 3, 4].map(Unhashable));
    }

    /// A zoned key whose `Hash` panics takes no zone id: the next new zone gets the id it would
    /// have got had the change never come.
    #[test]
    fn a_change_whose_key_panics_leaves_the_zones_as_they_were() {
        let shared = Shared::<Tagged<Unhashable>, (), _>::for_tests(Picker::zone_aware("local"));
        shared.apply(Change::Insert(
            Tagged::new(Unhashable(1)).with_zone("a"),
            (),
        ));
        let before = shared.health.lock().unwrap().zones.clone();
        shared.apply(Change::Insert(
            Tagged::new(Unhashable(99)).with_zone("b"),
            (),
        ));
        assert_eq!(shared.health.lock().unwrap().zones, before);
    }

    /// A removed service whose `Drop` panics when the set it leaves is freed does not stop the
    /// background task: the removal stands, an ejected endpoint still returns, and discovery
    /// is still applied.
    #[tokio::test(start_paused = true)]
    async fn a_removed_service_whose_drop_panics_does_not_stop_the_task() {
        let shared = Arc::new(Shared::new(
            eject_at_once(),
            Listeners::default(),
            DefaultClassifier,
            None,
        ));
        let (tx, stream) = fed();
        spawn(&shared, stream, None);
        let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        for i in 0..3usize {
            tx.send(Change::Insert(i, Bomb(armed.clone()))).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let stats = shared.current().endpoints[0].stats.clone();
        shared.record(&shared.current().endpoints[0], Outcome::Failure, None, None);
        assert!(stats.ejected.load(Relaxed));

        armed.store(true, Relaxed);
        tx.send(Change::Remove(2)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(!armed.load(Relaxed), "the removed service was dropped");
        assert_eq!(keys(&shared), vec![0, 1]);

        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!stats.ejected.load(Relaxed));
        tx.send(Change::Insert(3, Bomb(Arc::default()))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![0, 1, 3]);
    }

    /// A service whose `Drop` panics whenever it is `live`, while unwinding too: two dropped in
    /// one unwinding abort the process.
    #[derive(Clone)]
    struct Live(bool);

    impl Drop for Live {
        fn drop(&mut self) {
            assert!(!self.0, "live service cannot be dropped");
        }
    }

    /// Two removed services whose `Drop` panics, removed together, are each dropped on their own:
    /// both panics are caught, both removals stand, and discovery is still applied.
    #[tokio::test(start_paused = true)]
    async fn removed_services_whose_drops_panic_are_dropped_one_at_a_time() {
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        let (tx, stream) = fed();
        spawn(&shared, stream, None);
        for i in 0..3usize {
            tx.send(Change::Insert(i, Live(i != 0))).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![0, 1, 2]);

        tx.send(Change::Remove(1)).unwrap();
        tx.send(Change::Remove(2)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![0]);

        tx.send(Change::Insert(3, Live(false))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![0, 3]);
    }

    /// An endpoint discovery adds and removes in the same batch is freed once its change is
    /// reported: a service whose `Drop` panics then loses neither the listeners' events nor the
    /// task.
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_added_and_removed_in_one_batch_is_freed_after_its_events() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        let shared = Arc::new(Shared::new(
            round_robin(0.0, crate::OutlierDetection::disabled()),
            Listeners::default().with(move |_: &Name, event: &BalanceEvent| {
                recorded.lock().unwrap().push(event.clone());
            }),
            DefaultClassifier,
            None,
        ));
        let (tx, stream) = fed();
        spawn(&shared, stream, None);
        // Ready together: applied as one batch, in which only its report holds the endpoint.
        tx.send(Change::Insert(0usize, Live(true))).unwrap();
        tx.send(Change::Remove(0)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![]);
        let added = |key: &str| BalanceEvent::EndpointAdded { key: key.into() };
        let removed = BalanceEvent::EndpointRemoved { key: "0".into() };
        assert_eq!(*events.lock().unwrap(), vec![added("0"), removed.clone()]);

        tx.send(Change::Insert(1, Live(false))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![1]);
        assert_eq!(
            *events.lock().unwrap(),
            vec![added("0"), removed, added("1")]
        );
    }

    /// A skipped change's service whose `Drop` panics is dropped on its own, not while the key's
    /// panic unwinds: the change is skipped and discovery is still applied.
    #[tokio::test(start_paused = true)]
    async fn a_skipped_change_whose_service_drop_panics_is_dropped_on_its_own() {
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        let (tx, stream) = fed();
        spawn(&shared, stream, None);
        tx.send(Change::Insert(Unhashable(0), Live(false))).unwrap();
        tx.send(Change::Insert(Unhashable(99), Live(true))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![Unhashable(0)]);

        tx.send(Change::Insert(Unhashable(1), Live(false))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), [0, 1].map(Unhashable));
    }

    /// Sends a discovery stream its changes and errors.
    type Feed = tokio::sync::mpsc::UnboundedSender<Result<Change<usize, &'static str>, String>>;

    /// A discovery stream fed by the returned sender, errors included.
    fn fallible() -> (
        Feed,
        impl Discover<Key = usize, Service = &'static str, Error = String> + Send + 'static,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        (
            tx,
            futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        )
    }

    /// A source that errs on a failed refresh and sends nothing on a good one: errors an hour
    /// apart are not in a row, so the second is not followed by a pause, and a change right after
    /// it is applied at once.
    #[tokio::test(start_paused = true)]
    async fn discovery_errors_far_apart_are_not_in_a_row() {
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        let (tx, stream) = fallible();
        spawn(&shared, stream, None);
        tx.send(Err("refresh failed".into())).unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        tx.send(Err("refresh failed again".into())).unwrap();
        tx.send(Ok(Change::Insert(1, "a"))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![1]);
    }

    /// A source that errs every time it is read is still read less and less often: at 0, 0, 50,
    /// 150, 350 and 750 ms in its first second (pauses of 0, 50, 100, 200 and 400 ms).
    #[tokio::test(start_paused = true)]
    async fn a_source_that_errs_every_time_is_read_after_growing_pauses() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let stream = futures_util::stream::poll_fn(move |_| {
            // Bounded, so a task that does not pause ends its reads rather than spin.
            if counted.fetch_add(1, Relaxed) < 20 {
                Poll::Ready(Some(Err::<Change<usize, &'static str>, _>(
                    "down".to_owned(),
                )))
            } else {
                Poll::Pending
            }
        });
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        spawn(&shared, stream, None);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(reads.load(Relaxed), 6);
    }

    /// A source whose errors each take 100 ms to come once it is read again (a stream that
    /// reconnects on every read against a backend that is down) still backs off: over 10 s it is
    /// read after pauses that grow to 5 s, 9 times, not every 100 ms.
    #[tokio::test(start_paused = true)]
    async fn a_source_whose_errors_come_late_is_read_after_growing_pauses() {
        let reads = Arc::new(AtomicUsize::new(0));
        let counted = reads.clone();
        let mut connecting: Option<Pin<Box<tokio::time::Sleep>>> = None;
        let stream = futures_util::stream::poll_fn(move |cx| {
            let sleep = connecting
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(Duration::from_millis(100))));
            std::task::ready!(sleep.as_mut().poll(cx));
            connecting = None;
            counted.fetch_add(1, Relaxed);
            Poll::Ready(Some(Err::<Change<usize, &'static str>, _>(
                "connection refused".to_owned(),
            )))
        });
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        spawn(&shared, stream, None);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(reads.load(Relaxed), 9);
    }

    /// A subscriber that panics on every event loses the balancer its log lines, those of the
    /// panics it caught included, and nothing more: the changes of a discovery stream that then
    /// panics are applied, an ejection on a call's thread is made and the call's `record`
    /// returns, and the background task goes on to return the endpoint.
    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_panics_loses_only_its_lines() {
        let _subscriber =
            tracing::subscriber::set_default(seawall_core::event::PanickingSubscriber);
        let shared = Arc::new(Shared::new(
            round_robin(
                0.0,
                crate::OutlierDetection {
                    interval: Duration::from_secs(1),
                    base_ejection_time: Duration::from_secs(10),
                    max_ejection_percent: 1.0,
                    consecutive_failures: Some(1),
                    ..crate::OutlierDetection::disabled()
                },
            ),
            Listeners::default(),
            DefaultClassifier,
            None,
        ));
        let mut read = 0usize;
        let stream = futures_util::stream::poll_fn(move |_| {
            read += 1;
            match read {
                1 | 2 => Poll::Ready(Some(Ok::<_, String>(Change::Insert(read, "a")))),
                _ => panic!("discovery broke"),
            }
        });
        spawn(&shared, stream, None);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![1, 2]);

        let set = shared.current();
        shared.record(&set.endpoints[1], Outcome::Failure, None, None);
        assert!(set.endpoints[1].stats.ejected.load(Relaxed));
        assert_eq!(shared.current().unhealthy.load(Relaxed), 1);

        // Ejected at 1 ms for 10 s: back at the pass of 11 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!set.endpoints[1].stats.ejected.load(Relaxed));
        assert_eq!(shared.current().unhealthy.load(Relaxed), 0);
    }

    /// A balancer under a subscriber that panics on every event, fed two endpoints by a
    /// [`fallible`] stream, the first of them ejected (at 1 ms, for 10 s); with the subscriber's
    /// guard, the feed and the set.
    async fn first_of_two_ejected_under_a_panicking_subscriber() -> (
        tracing::subscriber::DefaultGuard,
        Arc<Shared<usize, &'static str, DefaultClassifier>>,
        Feed,
        Arc<Snapshot<usize, &'static str>>,
    ) {
        let subscriber = tracing::subscriber::set_default(seawall_core::event::PanickingSubscriber);
        let shared = Arc::new(Shared::new(
            eject_at_once(),
            Listeners::default(),
            DefaultClassifier,
            None,
        ));
        let (tx, stream) = fallible();
        spawn(&shared, stream, None);
        for i in 0..2 {
            tx.send(Ok(Change::Insert(i, "a"))).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let set = shared.current();
        shared.record(&set.endpoints[0], Outcome::Failure, None, None);
        assert!(set.endpoints[0].stats.ejected.load(Relaxed));
        (subscriber, shared, tx, set)
    }

    /// A subscriber that panics on the line of a discovery error loses the line, not the task:
    /// an ejected endpoint still returns, and a change after the error is applied.
    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_panics_on_a_discovery_error_does_not_stop_the_task() {
        let (_subscriber, shared, tx, set) =
            first_of_two_ejected_under_a_panicking_subscriber().await;
        tx.send(Err("down".into())).unwrap();
        // Ejected at 1 ms for 10 s: back at the pass of 11 s.
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!set.endpoints[0].stats.ejected.load(Relaxed));
        tx.send(Ok(Change::Insert(2, "a"))).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![0, 1, 2]);
    }

    /// A subscriber that panics on the line of a discovery stream's end loses the line, not the
    /// task: an ejected endpoint still returns.
    #[tokio::test(start_paused = true)]
    async fn a_subscriber_that_panics_on_a_discovery_end_does_not_stop_the_task() {
        let (_subscriber, _shared, tx, set) =
            first_of_two_ejected_under_a_panicking_subscriber().await;
        // The stream ends once its sender is gone.
        drop(tx);
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!set.endpoints[0].stats.ejected.load(Relaxed));
    }

    /// A stream that panics after giving changes ready at once: those changes are applied, and
    /// the stream is dropped, as on any panic.
    #[tokio::test(start_paused = true)]
    async fn a_panic_after_ready_changes_applies_them_and_drops_the_stream() {
        let alive = Arc::new(());
        let held = alive.clone();
        let mut read = 0usize;
        let stream = futures_util::stream::poll_fn(move |_| {
            let _held = &held;
            read += 1;
            match read {
                1 | 2 => Poll::Ready(Some(Ok::<_, String>(Change::Insert(read, "a")))),
                _ => panic!("discovery broke"),
            }
        });
        let shared = Arc::new(Shared::for_tests(Picker::RoundRobin));
        spawn(&shared, stream, None);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(keys(&shared), vec![1, 2]);
        assert_eq!(shared.version.load(Acquire), 1);
        assert_eq!(Arc::strong_count(&alive), 1, "the stream is dropped");
    }

    /// Two endpoints behind a running background task, ejecting on one failure, with the events
    /// heard since they were added in the returned list.
    async fn two_ejecting_at_once() -> (
        Arc<Shared<usize, (), DefaultClassifier>>,
        Arc<Mutex<Vec<BalanceEvent>>>,
    ) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        let (shared, _tx) = two_ejecting_on_one_failure(Listeners::default().with(
            move |_: &Name, event: &BalanceEvent| {
                recorded.lock().unwrap().push(event.clone());
            },
        ))
        .await;
        assert_eq!(shared.current().len(), 2);
        events.lock().unwrap().clear();
        (shared, events)
    }

    fn ejected_0() -> BalanceEvent {
        BalanceEvent::Ejected {
            key: "0".into(),
            reason: EjectReason::ConsecutiveFailures,
            duration: Duration::from_secs(10),
        }
    }

    /// The changes a call queued and never reported (a panic between recording its outcome and
    /// reporting it) are reported by the background task, woken as they are dropped.
    #[tokio::test(start_paused = true)]
    async fn changes_a_call_drops_unreported_are_reported_by_the_task() {
        let (shared, events) = two_ejecting_at_once().await;
        let unreported =
            shared.record_unreported(&shared.current().endpoints[0], Outcome::Failure, None, None);
        drop(unreported);
        assert!(
            events.lock().unwrap().is_empty(),
            "not reported on the call's thread"
        );
        // Well before the next outlier detection pass (every second).
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*events.lock().unwrap(), [ejected_0()]);
    }

    /// The changes left behind by a thread that stopped draining other than by the way out (a
    /// panic no guard caught) are reported by the background task, woken as it stops.
    #[tokio::test(start_paused = true)]
    async fn changes_left_by_a_drain_that_stops_are_reported_by_the_task() {
        let (shared, events) = two_ejecting_at_once().await;
        shared.pending.lock().unwrap().draining = true;
        let draining = Draining {
            pending: &shared.pending,
            unreported: &shared.unreported,
            done: false,
        };
        // Left to the thread draining.
        shared.record(&shared.current().endpoints[0], Outcome::Failure, None, None);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            events.lock().unwrap().is_empty(),
            "left to the thread draining"
        );
        drop(draining);
        assert!(
            events.lock().unwrap().is_empty(),
            "not reported on this thread"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(*events.lock().unwrap(), [ejected_0()]);
    }

    /// Holds a listener at one event until the test lets it go.
    struct Gate {
        event: BalanceEvent,
        entered: Mutex<std::sync::mpsc::Sender<()>>,
        release: Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Gate {
        /// A gate at `event`, the receiver told when a listener reaches it, and the sender that
        /// lets the listener go.
        fn at(
            event: BalanceEvent,
        ) -> (
            Arc<Gate>,
            std::sync::mpsc::Receiver<()>,
            std::sync::mpsc::Sender<()>,
        ) {
            let (entered, reached) = std::sync::mpsc::channel();
            let (release, released) = std::sync::mpsc::channel();
            let gate = Gate {
                event,
                entered: Mutex::new(entered),
                release: Mutex::new(released),
            };
            (Arc::new(gate), reached, release)
        }

        fn pass(&self, event: &BalanceEvent) {
            if *event == self.event {
                self.entered.lock().unwrap().send(()).unwrap();
                let released = self
                    .release
                    .lock()
                    .unwrap()
                    .recv_timeout(Duration::from_secs(30));
                released.expect("the test lets the listener go");
            }
        }
    }

    /// While a call reports, the background task applies discovery only until a batch's worth of
    /// reports is queued, so a later call that reports the changes up to its own hears fewer than
    /// two batches of discovery's changes besides its own, however many discovery has ready; and
    /// once the queue is reported, the task reads discovery again, whichever thread reported it.
    #[tokio::test(start_paused = true)]
    async fn discovery_waits_while_a_batch_of_reports_is_queued() {
        let added = |i: usize| BalanceEvent::EndpointAdded { key: i.to_string() };
        let (first, first_reached, first_release) = Gate::at(ejected_0());
        let (second, second_reached, second_release) = Gate::at(added(2));
        let events = Arc::new(Mutex::new(Vec::new()));
        let recorded = events.clone();
        let (shared, tx) = two_ejecting_on_one_failure(Listeners::default().with(
            move |_: &Name, event: &BalanceEvent| {
                recorded.lock().unwrap().push(event.clone());
                first.pass(event);
                second.pass(event);
            },
        ))
        .await;
        events.lock().unwrap().clear();
        let wait = |reached: &std::sync::mpsc::Receiver<()>| {
            reached.recv_timeout(Duration::from_secs(30)).unwrap();
        };
        let fail = |i: usize| {
            let shared = shared.clone();
            let ep = shared.current().endpoints[i].clone();
            std::thread::spawn(move || shared.record(&ep, Outcome::Failure, None, None))
        };

        // A call's listener is slow to hear of its ejection while discovery has three batches
        // ready.
        let call = fail(0);
        wait(&first_reached);
        let n = 3 * MAX_BATCH;
        for i in 2..2 + n {
            tx.send(Change::Insert(i, ())).unwrap();
        }
        for _ in 0..40 {
            tokio::task::yield_now().await;
        }
        first_release.send(()).unwrap();
        call.join().unwrap();

        // A second call ejects before the task runs, and reports the changes up to its own; its
        // listener is slow to hear of the first of them, while the task runs. The rest still fill
        // a batch, so discovery waits on them, and only this call, which reports them all, can
        // wake the task.
        let before = events.lock().unwrap().len();
        let call = fail(1);
        wait(&second_reached);
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(
            shared.pending.lock().unwrap().discovery_held,
            "discovery waits on the queue"
        );
        second_release.send(()).unwrap();
        call.join().unwrap();
        let heard = events.lock().unwrap().len() - before;
        assert!(
            heard < 2 * MAX_BATCH + 1,
            "the second call heard {heard} changes"
        );

        // Well before the next outlier detection pass (every second).
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(shared.current().len(), 2 + n, "discovery goes on");
        let events = events.lock().unwrap();
        assert_eq!(events.len(), 2 + n);
        assert_eq!(events[0], ejected_0());
    }

    /// A call that reports reports no further than its own changes: the changes made by others
    /// while its listeners run (here 100 discovery changes made while a listener hears of the
    /// call's ejection) are left to the background task, which reports them in order, so the
    /// call is not held up for as long as changes keep coming.
    #[tokio::test(start_paused = true)]
    async fn a_call_reports_no_further_than_its_own_changes() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let slot: Arc<std::sync::OnceLock<Weak<Shared<usize, (), DefaultClassifier>>>> =
            Arc::default();
        let (recorded, target) = (events.clone(), slot.clone());
        let shared = Arc::new(Shared::new(
            eject_at_once(),
            Listeners::default().with(move |_: &Name, event: &BalanceEvent| {
                recorded.lock().unwrap().push(event.clone());
                if matches!(event, BalanceEvent::Ejected { key, .. } if key == "0") {
                    let shared = target.get().and_then(Weak::upgrade).unwrap();
                    // Another thread's changes, one at a time, while this listener runs.
                    std::thread::scope(|s| {
                        s.spawn(|| {
                            for i in 100..200 {
                                shared.apply(Change::Insert(i, ()));
                            }
                        });
                    });
                }
            }),
            DefaultClassifier,
            None,
        ));
        slot.set(Arc::downgrade(&shared)).unwrap();
        let (tx, stream) = fed();
        spawn(&shared, stream, None);
        for i in 0..2usize {
            tx.send(Change::Insert(i, ())).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        events.lock().unwrap().clear();

        shared.record(&shared.current().endpoints[0], Outcome::Failure, None, None);
        let ejected = BalanceEvent::Ejected {
            key: "0".into(),
            reason: EjectReason::ConsecutiveFailures,
            duration: Duration::from_secs(10),
        };
        assert_eq!(
            *events.lock().unwrap(),
            vec![ejected.clone()],
            "heard in the call"
        );

        tokio::time::sleep(Duration::from_millis(1)).await;
        let added = (100..200).map(|i| BalanceEvent::EndpointAdded { key: i.to_string() });
        assert_eq!(
            *events.lock().unwrap(),
            std::iter::once(ejected).chain(added).collect::<Vec<_>>()
        );
    }
}
