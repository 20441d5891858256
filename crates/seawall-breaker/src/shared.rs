//! What every service of one breaker layer shares: the state machine, its clock, and what it
//! reports to (tracing, metrics, listeners, waiting callers, timers).

use crate::{
    config::BreakerConfig,
    state::{Machine, Observer, OpenReason, Permit, Rejected, State, Transition},
};
use seawall_core::{
    event::{panics, Listeners},
    metrics, Name, Outcome,
};
use std::{
    any::Any,
    collections::BTreeMap,
    fmt,
    panic::{self, AssertUnwindSafe},
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};
use tokio::{
    sync::{watch, Notify},
    time::Instant,
};

pub(crate) struct Shared {
    pub(crate) machine: Machine,
    origin: Instant,
    pub(crate) name: Name,
    listeners: Listeners<Transition>,
    /// Woken on every state change and every probe slot handed back (backpressure waiters).
    pub(crate) notify: Arc<Notify>,
    watch: watch::Sender<State>,
    pub(crate) backpressure: bool,
    /// Whether a call's duration counts for the breaker itself (a slow-call rule): only then,
    /// or when the classifier looks at it, is the clock read when a call starts.
    pub(crate) times_calls: bool,
    eager: bool,
    /// The eager timer's task, if one is running.
    timer: Mutex<Timer>,
    this: Weak<Shared>,
    metrics: Metrics,
}

/// The eager timer: one task at a time sleeps to the earliest deadline it was asked for, applies
/// what is due when it wakes, and sleeps on to the next deadline if there is one. A HalfOpen's
/// bound may start and stop many times (probes reserved and handed back): each start asks for
/// the timer, and a task already set to wake no later serves it without another.
#[derive(Default)]
struct Timer {
    /// When the running task wakes next; `None` when none runs.
    wakes_at: Option<Instant>,
    /// The running task's number. A task that finds another number was replaced by one that
    /// wakes earlier, and ends.
    task: u64,
}

/// The eager timer's task. Holds the breaker weakly: a breaker no one uses ends its timer.
struct TimerTask {
    shared: Weak<Shared>,
    number: u64,
}

impl TimerTask {
    async fn run(self, mut at: Instant) {
        loop {
            tokio::time::sleep_until(at).await;
            let Some(shared) = self.shared.upgrade() else {
                return;
            };
            // Not under the timer's lock: a change made here asks for the timer again.
            shared.machine.tick(shared.now(), &*shared);
            let mut timer = shared.timer.lock().unwrap_or_else(PoisonError::into_inner);
            if timer.task != self.number {
                return;
            }
            // Read under the lock, as the thread that starts a deadline and asks for the timer
            // does: either this task sees the deadline, or that thread finds no task and starts
            // one.
            match shared.machine.deadline() {
                Some(deadline) => {
                    at = shared.instant_at(deadline);
                    timer.wakes_at = Some(at);
                }
                None => {
                    timer.wakes_at = None;
                    return;
                }
            }
        }
    }
}

impl Drop for TimerTask {
    fn drop(&mut self) {
        // Also run when the runtime shuts down with the task asleep: the next deadline then
        // starts a task on whichever runtime asks.
        if let Some(shared) = self.shared.upgrade() {
            let mut timer = shared.timer.lock().unwrap_or_else(PoisonError::into_inner);
            if timer.task == self.number {
                timer.wakes_at = None;
            }
        }
    }
}

struct Metrics {
    state: StateGauge,
    successes: ::metrics::Counter,
    failures: ::metrics::Counter,
    ignored: ::metrics::Counter,
    slow: ::metrics::Counter,
    rejected: ::metrics::Counter,
    transitions: ::metrics::Counter,
}

/// Where a breaker publishes its state.
enum StateGauge {
    /// `seawall_breaker_state` under the breaker's name.
    Own(OwnGauge),
    /// A breaker of a keyed set, which carries the set's name like every other key: a state
    /// gauge of that name would show whichever key changed last. The breaker is counted in the
    /// set's `seawall_breaker_keys_open` instead, while the set holds it.
    Key(Mutex<KeyGauge>),
}

struct KeyGauge {
    keys_open: ::metrics::Gauge,
    /// Whether this breaker is counted in `keys_open`.
    counted: bool,
    /// Whether the set still holds this breaker.
    in_set: bool,
}

impl KeyGauge {
    fn count(&mut self, open: bool) {
        let open = open && self.in_set;
        if open != self.counted {
            match open {
                true => self.keys_open.increment(1.0),
                false => self.keys_open.decrement(1.0),
            }
            self.counted = open;
        }
    }
}

/// One breaker's part of `seawall_breaker_state` under its name.
///
/// Breakers may share a name: a reload builds the new breaker before it drops the old. They
/// write one series, which shows the most severe state among those alive ([`SEVERITY`]), so that
/// neither a breaker built next to an open one nor a closed one's change hides the open one, and
/// a dropped breaker's state is taken off (the series reads 0 when none is left). Each breaker
/// counts its state in [`LIVE`] from its build to its drop.
struct OwnGauge {
    gauge: ::metrics::Gauge,
    series: Series,
}

/// A `seawall_breaker_state` series: a name under one recorder. A breaker writes to the recorder
/// that was current when it was built (a test may install one per thread), so breakers built
/// under two recorders write two series and do not count together.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Series {
    /// The recorder's address. The global recorder, installed for good, never moves; a local
    /// recorder's address (one a test installs for a scope, on the stack) may be reused by a
    /// later one once it is dropped, and [`LIVE`]'s entries last as long as their breakers, so a
    /// breaker that outlives its local recorder may count with a breaker of the same name built
    /// under a later recorder at that address.
    recorder: usize,
    name: Name,
}

/// The live breakers of each series, counted by state in [`SEVERITY`]'s order. An entry goes
/// when its last breaker does, so the map holds no more series than live breakers.
static LIVE: Mutex<BTreeMap<Series, [u32; SEVERITY.len()]>> = Mutex::new(BTreeMap::new());

/// The states from the most severe: those that reject calls (an operator's forced open first,
/// then open, then half-open, which lets only probes through), then the manual states that let
/// every call through, metrics only (which still judges) before disabled, then closed.
const SEVERITY: [State; 6] = [
    State::ForcedOpen,
    State::Open,
    State::HalfOpen,
    State::MetricsOnly,
    State::Disabled,
    State::Closed,
];

fn severity(state: State) -> usize {
    match state {
        State::ForcedOpen => 0,
        State::Open => 1,
        State::HalfOpen => 2,
        State::MetricsOnly => 3,
        State::Disabled => 4,
        State::Closed => 5,
    }
}

impl OwnGauge {
    /// A new breaker's part, counted as Closed.
    fn new(name: Name) -> Self {
        let gauge = metrics::gauge(metrics::BREAKER_STATE, &name);
        // The recorder the gauge was just registered with.
        let recorder =
            ::metrics::with_recorder(|recorder| std::ptr::from_ref(recorder).cast::<()>().addr());
        let own = OwnGauge {
            gauge,
            series: Series { recorder, name },
        };
        own.count(None, Some(State::Closed));
        own
    }

    /// Moves this breaker's count from state `from` to `to` (`None`: not counted), and
    /// publishes the most severe state counted under the name, under the lock, so that the
    /// last to publish leaves the state of the last count.
    fn count(&self, from: Option<State>, to: Option<State>) {
        let mut live = LIVE.lock().unwrap_or_else(PoisonError::into_inner);
        let counts = live.entry(self.series).or_default();
        if let Some(from) = from {
            counts[severity(from)] = counts[severity(from)].saturating_sub(1);
        }
        if let Some(to) = to {
            counts[severity(to)] += 1;
        }
        let worst = counts.iter().position(|&n| n > 0).map(|i| SEVERITY[i]);
        if worst.is_none() {
            live.remove(&self.series);
        }
        self.gauge.set(worst.unwrap_or(State::Closed).as_gauge());
    }
}

impl StateGauge {
    /// Publishes a change of this breaker's published state from `from` to `to`.
    fn publish(&self, from: State, to: State) {
        match self {
            StateGauge::Own(own) => own.count(Some(from), Some(to)),
            StateGauge::Key(key) => {
                key.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .count(matches!(
                        to,
                        State::Open | State::HalfOpen | State::ForcedOpen
                    ))
            }
        }
    }
}

impl Shared {
    pub(crate) fn new(config: &BreakerConfig) -> Arc<Self> {
        Self::with_state_gauge(config, StateGauge::Own(OwnGauge::new(config.name)))
    }

    /// A breaker of a keyed set, counted in the set's `keys_open` gauge while it is open.
    pub(crate) fn keyed(config: &BreakerConfig, keys_open: ::metrics::Gauge) -> Arc<Self> {
        let key = KeyGauge {
            keys_open,
            counted: false,
            in_set: true,
        };
        Self::with_state_gauge(config, StateGauge::Key(Mutex::new(key)))
    }

    fn with_state_gauge(config: &BreakerConfig, state: StateGauge) -> Arc<Self> {
        let name = config.name;
        let metrics = Metrics {
            state,
            successes: metrics::counter(metrics::BREAKER_SUCCESSES, &name),
            failures: metrics::counter(metrics::BREAKER_FAILURES, &name),
            ignored: metrics::counter(metrics::BREAKER_IGNORED, &name),
            slow: metrics::counter(metrics::BREAKER_SLOW, &name),
            rejected: metrics::counter(metrics::BREAKER_REJECTED, &name),
            transitions: metrics::counter(metrics::BREAKER_TRANSITIONS, &name),
        };
        // Counted from the breaker's build, as `now` is.
        let machine = Machine::with_origin(config, 0);
        Arc::new_cyclic(|this| Shared {
            machine,
            origin: Instant::now(),
            name,
            listeners: config.listeners.clone(),
            notify: Arc::new(Notify::new()),
            watch: watch::Sender::new(State::Closed),
            backpressure: config.backpressure,
            times_calls: config.slow_rate.is_some(),
            eager: config.eager_half_open,
            timer: Mutex::default(),
            this: this.clone(),
            metrics,
        })
    }

    /// Nanoseconds since the breaker was built, on tokio's clock (so paused time drives it).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.origin)
            .as_nanos()
            .min(u64::MAX as u128) as u64
    }

    /// The instant `nanos` after the breaker was built.
    pub(crate) fn instant_at(&self, nanos: u64) -> Instant {
        self.origin + Duration::from_nanos(nanos)
    }

    /// Asks the machine for a permit; a rejection is not counted until a caller gets it
    /// ([`count_rejection`](Self::count_rejection)).
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Permit, Rejected> {
        self.machine.acquire_uncounted(|| self.now(), self)
    }

    /// Counts a rejection returned to a caller, in the metric and the snapshot.
    #[inline]
    pub(crate) fn count_rejection(&self) {
        self.machine.count_rejected();
        self.metrics.rejected.increment(1);
    }

    /// Records a call's outcome, then counts it: the machine first, so a metrics recorder that
    /// panics in a counter cannot lose the permit (a half-open probe slot). A recorder's panic
    /// while the machine publishes a change the outcome made (the state gauge) is raised once the
    /// outcome is counted too: [`Completing`] counts it on that (cold) path, so the call that
    /// changes nothing runs no unwinding code of its own.
    #[inline]
    pub(crate) fn complete(&self, permit: Permit, outcome: Outcome, elapsed: Duration) {
        let completing = Completing {
            shared: self,
            outcome,
            elapsed,
        };
        self.machine
            .complete(permit, outcome, elapsed, || self.now(), &completing);
        self.count(outcome, elapsed);
    }

    /// Counts a call's outcome, and whether it was slow, in the metrics.
    #[inline]
    fn count(&self, outcome: Outcome, elapsed: Duration) {
        match outcome {
            Outcome::Success => self.metrics.successes.increment(1),
            Outcome::Failure => self.metrics.failures.increment(1),
            Outcome::Ignored => self.metrics.ignored.increment(1),
        }
        if self.times_calls && outcome != Outcome::Ignored && self.machine.is_slow_call(elapsed) {
            self.metrics.slow.increment(1);
        }
    }

    /// Hands back a permit that was never used for a call.
    pub(crate) fn release(&self, permit: Permit) {
        self.machine.complete(
            permit,
            Outcome::Ignored,
            Duration::ZERO,
            || self.now(),
            self,
        );
    }

    /// The keyed set this breaker belongs to let go of it: it no longer counts in the set's
    /// gauge, whatever its state.
    pub(crate) fn leave_set(&self) {
        if let StateGauge::Key(key) = &self.metrics.state {
            let mut key = key.lock().unwrap_or_else(PoisonError::into_inner);
            key.in_set = false;
            key.count(false);
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<State> {
        self.watch.subscribe()
    }

    /// Makes sure the eager timer wakes by the current deadline, if there is one.
    fn schedule_deadline(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut timer = self.timer.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(deadline) = self.machine.deadline() else {
            return;
        };
        let at = self.instant_at(deadline);
        if timer.wakes_at.is_some_and(|wakes_at| wakes_at <= at) {
            // The running task wakes first and sleeps on to this deadline.
            return;
        }
        timer.task = timer.task.wrapping_add(1);
        timer.wakes_at = Some(at);
        let task = TimerTask {
            shared: self.this.clone(),
            number: timer.task,
        };
        drop(timer);
        runtime.spawn(task.run(at));
    }
}

impl Shared {
    /// The log line of a state change.
    fn log(&self, transition: &Transition) {
        // Fields left out when `None`: `reason` only on a change to Open or ForcedOpen, `rate`
        // and `threshold` only on a trip on a rate of the sliding window.
        let reason = transition.reason.map(OpenReason::as_str);
        let (rate, threshold) = transition.reason.and_then(OpenReason::rate).unzip();
        if transition.metrics_only {
            tracing::info!(
                name = %self.name,
                from = %transition.from,
                to = %transition.to,
                wait = ?transition.wait,
                reason,
                rate,
                threshold,
                "circuit breaker would change state (metrics only)"
            );
        } else {
            tracing::info!(
                name = %self.name,
                from = %transition.from,
                to = %transition.to,
                wait = ?transition.wait,
                reason,
                rate,
                threshold,
                "circuit breaker changed state"
            );
        }
    }
}

/// Keeps the first of the panics caught while a change is published in `kept`; a later one's
/// payload is dropped (a payload whose drop panics too is caught).
fn keep_first(kept: &mut std::thread::Result<()>, next: std::thread::Result<()>) {
    if let Err(panic) = next {
        match kept {
            Ok(()) => *kept = Err(panic),
            Err(_) => panics::caught(|| drop(panic)),
        }
    }
}

impl Observer for Shared {
    fn on_transition(&self, transition: &Transition) {
        // A panic of the recorder or of a `tracing` subscriber, raised once the change is told to
        // everyone: out of the counter or the log line, it would keep the change from the watch
        // and the listeners, and a destructor that catches it would leave them behind for good.
        let mut published = panic::catch_unwind(AssertUnwindSafe(|| {
            self.metrics.transitions.increment(1);
        }));
        keep_first(
            &mut published,
            panic::catch_unwind(AssertUnwindSafe(|| self.log(transition))),
        );
        if !transition.metrics_only {
            // Two changes made at once on two threads can get here in either order: publish the
            // state the breaker is in now, read under the watch's lock, so whichever publishes
            // last leaves the current state in the watch and the gauge, never a superseded one.
            // The watch moves first: the gauge's count moves before the recorder is called, so
            // a recorder that panics leaves the watch on the state counted, which a drop takes
            // off. The panic is caught inside the closure: out of it, the watch would keep the
            // new value without marking it changed, and subscribers would miss the change.
            self.watch.send_if_modified(|watched| {
                let now = self.machine.state();
                let from = std::mem::replace(watched, now);
                keep_first(
                    &mut published,
                    panic::catch_unwind(AssertUnwindSafe(|| {
                        self.metrics.state.publish(from, now);
                    })),
                );
                from != now
            });
            self.notify.notify_waiters();
        }
        self.listeners.emit(&self.name, transition);
        if self.eager && matches!(transition.to, State::Open | State::HalfOpen) {
            self.schedule_deadline();
        }
        if let Err(panic) = published {
            panic::resume_unwind(panic);
        }
    }

    fn on_probe_released(&self) {
        self.notify.notify_waiters();
    }

    fn on_bound_started(&self) {
        // A caller that waits (backpressure) and was rejected before the bound was written has
        // no deadline to sleep to: let it ask again.
        self.notify.notify_waiters();
        if self.eager {
            self.schedule_deadline();
        }
    }
}

/// The observer of a call's completion: a change the outcome makes is published by the breaker,
/// and a panic out of that (its recorder's or a `tracing` subscriber's) is raised only once the
/// outcome is counted, since it skips the counting [`Shared::complete`] does after the machine.
struct Completing<'a> {
    shared: &'a Shared,
    outcome: Outcome,
    elapsed: Duration,
}

impl Observer for Completing<'_> {
    #[cold]
    #[inline(never)]
    fn on_transition(&self, transition: &Transition) {
        let published = panic::catch_unwind(AssertUnwindSafe(|| {
            self.shared.on_transition(transition);
        }));
        if let Err(panic) = published {
            self.shared.count(self.outcome, self.elapsed);
            panic::resume_unwind(panic);
        }
    }

    fn on_probe_released(&self) {
        self.shared.on_probe_released();
    }

    fn on_bound_started(&self) {
        self.shared.on_bound_started();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Its state goes with it: an open breaker dropped on a reload leaves no alert behind.
        // The watch holds the state last counted (both change under the watch's lock).
        if let StateGauge::Own(own) = &self.metrics.state {
            let published = *self.watch.borrow();
            in_drop(&self.name, || own.count(Some(published), None));
        }
    }
}

/// Runs `f`, work a destructor does on the breaker named `name`, and catches a panic of the
/// metrics recorder (or a `tracing` subscriber) it calls: out of a destructor, the panic would
/// abort the process if the thread were already unwinding. A change of state `f` makes stands:
/// `on_transition` raises the recorder's (or the subscriber's) panic only once the change is
/// made, published in the watch and told to the listeners, and `complete` only once the call's
/// outcome is counted too. The panic is logged, as a listener's is.
pub(crate) fn in_drop(name: &Name, f: impl FnOnce()) {
    if let Err(panic) = panic::catch_unwind(AssertUnwindSafe(f)) {
        caught_in_drop(name, panic);
    }
}

#[cold]
#[inline(never)]
fn caught_in_drop(name: &Name, panic: Box<dyn Any + Send>) {
    let message = panics::message(&*panic);
    panics::caught(|| {
        tracing::error!(
            %name,
            panic = message,
            "circuit breaker caught a panic of its metrics recorder in a drop; going on"
        )
    });
    panics::caught(|| drop(panic));
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("machine", &self.machine)
            .field("backpressure", &self.backpressure)
            .finish_non_exhaustive()
    }
}
