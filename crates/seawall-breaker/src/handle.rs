//! A handle on one breaker: its state, its numbers, and manual control.

use crate::{
    shared::Shared,
    state::{Snapshot, State},
};
use seawall_core::Name;
use std::{fmt, sync::Arc, time::Duration};
use tokio::sync::watch;

/// Looks at and steers one breaker; from [`BreakerLayer::handle`](crate::BreakerLayer::handle)
/// or [`Breaker::handle`](crate::Breaker::handle). Cheap to clone; every clone steers the same
/// breaker as the layer and all services it built.
///
/// A manual change (`force_open`, `disable`, `metrics_only`, `reset`) that changes the state
/// starts a new generation: results of calls admitted before it are dropped. Asking for the
/// manual state the breaker is in already does nothing: a second `metrics_only` keeps the window
/// it records in, and no generation starts. Only `reset` always starts afresh, so `reset` then
/// `metrics_only` gives MetricsOnly a fresh window.
#[derive(Clone)]
pub struct BreakerHandle {
    pub(crate) shared: Arc<Shared>,
}

impl BreakerHandle {
    /// The breaker's name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// The current state. An Open breaker whose wait is over reports (and moves to) HalfOpen, and
    /// a HalfOpen breaker past its bound on probes reports (and moves to) Open, as the next call
    /// would find it.
    pub fn state(&self) -> State {
        self.shared.machine.tick(self.shared.now(), &*self.shared)
    }

    /// Numbers of the breaker now: rates and counts of the window, rejections, time in state.
    pub fn snapshot(&self) -> Snapshot {
        self.state();
        self.shared.machine.snapshot(self.shared.now())
    }

    /// Rejects every call until another manual change. Does nothing on a breaker forced open
    /// already.
    pub fn force_open(&self) {
        self.shared
            .machine
            .force_open(self.shared.now(), &*self.shared);
    }

    /// Lets every call through and records nothing until another manual change. The same as
    /// [`disable`](Self::disable); Hystrix calls it *forced closed*.
    pub fn force_closed(&self) {
        self.disable();
    }

    /// Lets every call through and records nothing until another manual change (Resilience4j's
    /// `DISABLED`). Does nothing on a breaker disabled already.
    pub fn disable(&self) {
        self.shared
            .machine
            .disable(self.shared.now(), &*self.shared);
    }

    /// Lets every call through, records outcomes in a fresh window and reports the changes the
    /// breaker would make (listeners see them with `metrics_only` set) without acting on them.
    /// For rolling a breaker out: watch what it would do before letting it reject.
    ///
    /// On a breaker in MetricsOnly already it does nothing: the window keeps what it recorded
    /// and no generation starts. [`reset`](Self::reset) first to start from a fresh window.
    pub fn metrics_only(&self) {
        self.shared
            .machine
            .metrics_only(self.shared.now(), &*self.shared);
    }

    /// Back to Closed with a fresh window and the first wait, from any state. On a breaker that
    /// is Closed already it empties the window and starts a new generation (results of calls
    /// admitted before are dropped; with a time window, one that completes in the instant the
    /// window is emptied may still be counted in the fresh one) without a change of state:
    /// listeners, the transitions counter, the log and [`subscribe`](Self::subscribe) hear of
    /// nothing.
    pub fn reset(&self) {
        self.shared.machine.reset(self.shared.now(), &*self.shared);
    }

    /// A receiver of the current state, marked changed when the state changes (not the changes
    /// MetricsOnly would make; use a listener for those). Like any `watch`, it keeps the latest
    /// state: changes that follow each other quickly may be seen as one, or as none if they end
    /// where they began. To see each change, register a listener with
    /// [`BreakerConfigBuilder::on_transition`](crate::BreakerConfigBuilder::on_transition).
    pub fn subscribe(&self) -> watch::Receiver<State> {
        self.shared.subscribe()
    }

    /// How long until an Open breaker probes again, or until a HalfOpen one gives up on its
    /// probes; `None` in other states (MetricsOnly included: it lets every call through, whatever
    /// state it would be in), and in a HalfOpen whose bound is not running (no probe in flight:
    /// the next one starts it).
    pub fn remaining_wait(&self) -> Option<Duration> {
        let deadline = self.shared.machine.deadline()?;
        // MetricsOnly's deadlines are its would-be machine's: they hold back no call. Read after
        // the deadline, so a deadline read just before a switch to MetricsOnly is not reported.
        if self.shared.machine.state() == State::MetricsOnly {
            return None;
        }
        Some(Duration::from_nanos(
            deadline.saturating_sub(self.shared.now()),
        ))
    }

    /// Whether two handles steer the same breaker.
    pub fn same_breaker(&self, other: &BreakerHandle) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl fmt::Debug for BreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}
