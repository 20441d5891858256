use crate::{config::TimeoutConfigBuilder, Timeout, TimeoutEvent};
use seawall_core::{Listeners, Name};
use std::{fmt, sync::Arc, time::Duration};
use tower_layer::Layer;

/// Applies a [`Timeout`] to every service it wraps.
///
/// One layer instance is one policy: the services it produces, and their clones, share its name,
/// listeners and metric handles.
#[derive(Clone)]
pub struct TimeoutLayer {
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) timeout: Duration,
    pub(crate) propagate: bool,
    pub(crate) name: Name,
    pub(crate) listeners: Listeners<TimeoutEvent>,
}

impl TimeoutLayer {
    /// A timeout of `timeout` with the default name and deadline propagation on.
    ///
    /// Every duration is valid; see the crate docs for `ZERO` and `MAX`.
    pub fn new(timeout: Duration) -> Self {
        Self::from_shared(Shared::new(
            timeout,
            Name::default_for("timeout"),
            true,
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
            .field("listeners", &self.listeners)
            .finish()
    }
}
