use crate::{layer::Shared, TimeoutEvent, TimeoutLayer};
use seawall_core::{ConfigError, Listener, Listeners, Name};
use std::{sync::Arc, time::Duration};

/// Builds a [`TimeoutLayer`]; see [`TimeoutLayer::builder`].
#[derive(Debug)]
pub struct TimeoutConfigBuilder {
    timeout: Option<Duration>,
    name: Option<String>,
    propagate: bool,
    listeners: Listeners<TimeoutEvent>,
}

impl TimeoutConfigBuilder {
    pub(crate) fn new() -> Self {
        TimeoutConfigBuilder {
            timeout: None,
            name: None,
            propagate: true,
            listeners: Listeners::new(),
        }
    }

    /// How long a call may take. Required.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The policy instance name for events and metrics. Default `"timeout"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Whether to write the effective deadline on the request for inner layers. Default `true`.
    pub fn propagate_deadline(mut self, propagate: bool) -> Self {
        self.propagate = propagate;
        self
    }

    /// Adds a listener called on every [`TimeoutEvent`].
    pub fn on_event(mut self, listener: impl Listener<TimeoutEvent>) -> Self {
        self.listeners = self.listeners.with(listener);
        self
    }

    /// Validates the configuration and builds the layer.
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        let timeout = self.timeout.ok_or(ConfigError::missing("timeout"))?;
        let name = match self.name {
            Some(name) => Name::validate("name", &name)?,
            None => Name::default_for("timeout"),
        };
        Ok(TimeoutLayer::from_shared(Shared::new(
            timeout,
            name,
            self.propagate,
            self.listeners,
        )))
    }
}

impl Shared {
    pub(crate) fn new(
        timeout: Duration,
        name: Name,
        propagate: bool,
        listeners: Listeners<TimeoutEvent>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            timeout,
            propagate,
            name,
            listeners,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_timeout_is_named() {
        let err = TimeoutLayer::builder().build().unwrap_err();
        assert_eq!(err.field(), "timeout");
        assert_eq!(err.to_string(), "timeout is required");
    }

    #[test]
    fn bad_name_is_named() {
        let err = TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .name("")
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "name");
    }

    #[test]
    fn extreme_durations_are_accepted() {
        for d in [Duration::ZERO, Duration::MAX] {
            let layer = TimeoutLayer::builder().timeout(d).build().unwrap();
            assert_eq!(layer.timeout(), d);
        }
    }
}
