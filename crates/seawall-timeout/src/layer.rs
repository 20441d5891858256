use crate::{config::TimeoutConfigBuilder, Timeout, TimeoutEvent};
use seawall_core::{Listeners, Name};
use std::{fmt, sync::Arc, time::Duration};
use tower_layer::Layer;

/// Applies a [`Timeout`] to every service it wraps.
///
/// One layer instance is one policy: the services it produces, and their clones, share its name
/// and listeners. The elapsed counter is looked up when a timeout fires.
#[derive(Clone)]
pub struct TimeoutLayer {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) timeout: Duration,
    pub(crate) propagate: bool,
    pub(crate) reads: Override,
    pub(crate) enforce_outer: bool,
    pub(crate) name: Name,
    /// Whether the user gave the name; `per_try` renames only a default one.
    pub(crate) named: bool,
    pub(crate) listeners: Listeners<TimeoutEvent>,
}

/// The switches of a policy; by default it propagates, reads a [`TimeoutOverride`](crate::TimeoutOverride)
/// and enforces an outer deadline.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Options {
    pub(crate) propagate: bool,
    pub(crate) reads: Override,
    pub(crate) enforce_outer: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            propagate: true,
            reads: Override::Total,
            enforce_outer: true,
        }
    }
}

/// Which of a request's timeout overrides replaces the layer's own timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Override {
    /// Neither: the layer keeps its own timeout.
    Ignored,
    /// A [`TimeoutOverride`](crate::TimeoutOverride): the layer times the whole call.
    Total,
    /// A [`PerTryTimeoutOverride`](crate::PerTryTimeoutOverride): the layer times one attempt
    /// under a retry ([`TimeoutLayer::per_try`]).
    PerTry,
}

impl TimeoutLayer {
    /// A timeout of `timeout` with the default name and deadline propagation on.
    ///
    /// Every duration is valid; see the crate docs for `ZERO` and `MAX`.
    pub fn new(timeout: Duration) -> Self {
        Self::from_shared(Shared::new(
            timeout,
            Name::default_for("timeout"),
            false,
            Options::default(),
            Listeners::new(),
        ))
    }

    /// Starts a builder for a named, observed or non-propagating timeout.
    pub fn builder() -> TimeoutConfigBuilder {
        TimeoutConfigBuilder::new()
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        TimeoutLayer { shared }
    }

    /// The layer's timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// The policy instance name.
    pub fn name(&self) -> &Name {
        &self.shared.name
    }

    /// Whether the layer writes the effective deadline on the request, so that the layers inside
    /// it (a retry, a per-try timeout) and the endpoint see it; see
    /// [`propagate_deadline`](TimeoutConfigBuilder::propagate_deadline).
    pub fn propagates_deadline(&self) -> bool {
        self.shared.propagate
    }

    /// Whether a request's [`TimeoutOverride`](crate::TimeoutOverride) replaces the layer's
    /// timeout; see [`honor_override`](TimeoutConfigBuilder::honor_override).
    pub fn honors_override(&self) -> bool {
        self.shared.reads == Override::Total
    }

    /// Whether a request's [`PerTryTimeoutOverride`](crate::PerTryTimeoutOverride) replaces the
    /// layer's timeout: true of the layers [`per_try`](Self::per_try) builds, and of no other.
    pub fn honors_per_try_override(&self) -> bool {
        self.shared.reads == Override::PerTry
    }

    /// Whether the layer fails calls at an earlier deadline the request already carries; see
    /// [`enforce_outer_deadline`](TimeoutConfigBuilder::enforce_outer_deadline).
    pub fn enforces_outer_deadline(&self) -> bool {
        self.shared.enforce_outer
    }

    /// This policy (its duration, name, listeners and propagation) set up to time one attempt
    /// under a retry: it ignores a request's [`TimeoutOverride`](crate::TimeoutOverride) and
    /// fires only at its own deadline (or at the request's, when that is at most a millisecond
    /// later), leaving an earlier deadline on the request to the layer further out that
    /// enforces it (as
    /// [`enforce_outer_deadline(false)`](TimeoutConfigBuilder::enforce_outer_deadline) does).
    /// Unlike a layer built with [`honor_override(false)`](TimeoutConfigBuilder::honor_override),
    /// which ignores both overrides, it reads the per-try one.
    ///
    /// A request's [`PerTryTimeoutOverride`](crate::PerTryTimeoutOverride) replaces its duration
    /// instead, longer or shorter, for every attempt of that request: one slow method can be
    /// given longer attempts while every other keeps this timeout. The call's deadline still
    /// bounds each attempt as it bounds one timed by the layer's own duration (the total timeout
    /// above cuts it, in the common case even when both timers fire on the same tick or the
    /// attempt is polled only after both deadlines: this layer then holds its cut for one poll, see
    /// [`enforce_outer_deadline`](TimeoutConfigBuilder::enforce_outer_deadline)), and the total
    /// timeout ignores a `PerTryTimeoutOverride`. An override of
    /// `Duration::ZERO` is ignored (this layer's duration applies): it would cut every attempt
    /// not ready on its first poll.
    ///
    /// A policy given no name is named `"per_try_timeout"` instead of `"timeout"`, so its events
    /// and metrics are told apart from those of the total timeout above the retry. A name given
    /// with [`name`](TimeoutConfigBuilder::name) is kept, even `"timeout"`.
    ///
    /// The facade's `ClientStack` builds its per-try timeout this way.
    pub fn per_try(&self) -> TimeoutLayer {
        let shared = &*self.shared;
        let name = match shared.named {
            true => shared.name,
            false => Name::default_for("per_try_timeout"),
        };
        TimeoutLayer::from_shared(Shared::new(
            shared.timeout,
            name,
            shared.named,
            Options {
                propagate: shared.propagate,
                reads: Override::PerTry,
                enforce_outer: false,
            },
            shared.listeners.clone(),
        ))
    }
}

impl From<Duration> for TimeoutLayer {
    fn from(timeout: Duration) -> Self {
        TimeoutLayer::new(timeout)
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::from_shared(inner, self.shared.clone())
    }
}

impl fmt::Debug for TimeoutLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.shared, f)
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("propagate", &self.propagate)
            .field("honor_override", &(self.reads == Override::Total))
            .field("honor_per_try_override", &(self.reads == Override::PerTry))
            .field("enforce_outer_deadline", &self.enforce_outer)
            .field("listeners", &self.listeners)
            .finish()
    }
}
