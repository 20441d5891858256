use crate::{
    layer::{Options, Override, Shared},
    TimeoutEvent, TimeoutLayer,
};
use seawall_core::{ConfigError, Listener, Listeners, Name};
use std::{sync::Arc, time::Duration};

/// Builds a [`TimeoutLayer`]; see [`TimeoutLayer::builder`].
#[derive(Debug)]
pub struct TimeoutConfigBuilder {
    timeout: Option<Duration>,
    name: Option<String>,
    propagate: bool,
    honor_override: bool,
    enforce_outer: bool,
    listeners: Listeners<TimeoutEvent>,
}

impl TimeoutConfigBuilder {
    pub(crate) fn new() -> Self {
        TimeoutConfigBuilder {
            timeout: None,
            name: None,
            propagate: true,
            honor_override: true,
            enforce_outer: true,
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

    /// Whether a request's [`TimeoutOverride`](crate::TimeoutOverride) replaces this layer's
    /// timeout. Default `true`.
    ///
    /// A timeout that bounds something other than the whole call, such as the per-try timeout
    /// under a retry, should not read it: an override says "this request may take longer (or
    /// must be quicker) overall", and should not also stretch or shrink each attempt. Build a
    /// per-try timeout with [`TimeoutLayer::per_try`], which ignores a `TimeoutOverride` and
    /// reads a [`PerTryTimeoutOverride`](crate::PerTryTimeoutOverride) instead, for a request
    /// whose attempts are to take longer (or be quicker). Turned off here, the layer ignores
    /// both overrides.
    pub fn honor_override(mut self, honor: bool) -> Self {
        self.honor_override = honor;
        self
    }

    /// Whether to fail the call at a deadline the request already carries (from an outer
    /// timeout or from the caller) when it is earlier than this layer's own. Default `true`.
    ///
    /// This layer cuts the call at such a deadline as at its own: it fails with `Elapsed` and
    /// reports it (event, metric, `tracing`) under its own name. When the deadline is a timeout's
    /// further out, that timeout then finds this `Elapsed` after its deadline and reports the call
    /// too, under its name: nested timeouts that both enforce the deadline each count the call.
    /// (Only a deadline exactly on a tick of tokio's timer, as a paused test clock makes, has the
    /// outer one find the `Elapsed` at its deadline, in time, and pass it on uncounted.) To leave
    /// the count to the outer timeout, build the inner one with
    /// [`TimeoutLayer::per_try`](crate::TimeoutLayer::per_try), or with this set to `false`.
    ///
    /// With `false` the layer fires only at its own deadline (or at the request's, when that is
    /// at most a millisecond later: below) and leaves an earlier one to the
    /// layer that enforces it further out, which cancels the call by dropping it; the earlier
    /// deadline stays on the request for inner layers either way. This is for a timeout under a
    /// layer that counts outcomes, such as the per-try timeout under a per-endpoint breaker or
    /// a balancer: a call dropped by the outer timeout records no outcome, while an [`Elapsed`](crate::Elapsed)
    /// from this layer counts as the endpoint's failure, though the endpoint was not too slow by
    /// its own timeout, the caller was impatient. Only turn it off where a layer further out does
    /// enforce the deadline, or calls can outlive it.
    ///
    /// A deadline on the request at most a millisecond (a tick of tokio's timer, which rounds each
    /// deadline up to one) after this layer's own may fire on the tick after this layer's timer:
    /// the call is timed at that deadline instead, which stays on the request, so both
    /// timers fire on one tick, and the call may run up to a millisecond past `timeout`. When the
    /// request's deadline is at or before the one the call is timed at and both have passed (on
    /// one tick, or because the task was polled only after both), this layer's cut is held for
    /// one poll: it drops the inner future, wakes the task and stays pending, so the layer
    /// further out, whose timer has fired too, cancels the call in the same pass and, in the
    /// common case, nothing below sees an `Elapsed`. An answer that comes after the deadline but
    /// before the timer's tick is dropped, and the layer waits for that tick (the outer timer is
    /// due on it or an earlier one) before it holds its cut the same way. With no such layer the
    /// call fails with `Elapsed` (and is reported) on the next poll, and so it does, once, in two
    /// corners: a task out of tokio's cooperative budget (one driving many calls that time out on
    /// one tick) finds the outer timer pending, and the multi-thread runtime fires due timers in
    /// batches, so the outer one may fire after this layer's held poll.
    pub fn enforce_outer_deadline(mut self, enforce: bool) -> Self {
        self.enforce_outer = enforce;
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
        let named = self.name.is_some();
        let name = match self.name {
            Some(name) => Name::validate("name", &name)?,
            None => Name::default_for("timeout"),
        };
        Ok(TimeoutLayer::from_shared(Shared::new(
            timeout,
            name,
            named,
            Options {
                propagate: self.propagate,
                reads: match self.honor_override {
                    true => Override::Total,
                    false => Override::Ignored,
                },
                enforce_outer: self.enforce_outer,
            },
            self.listeners,
        )))
    }
}

impl Shared {
    pub(crate) fn new(
        timeout: Duration,
        name: Name,
        named: bool,
        options: Options,
        listeners: Listeners<TimeoutEvent>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            timeout,
            propagate: options.propagate,
            reads: options.reads,
            enforce_outer: options.enforce_outer,
            name,
            named,
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
    fn options_default_to_a_whole_call_timeout() {
        let layer = TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        assert!(layer.honors_override());
        assert!(layer.enforces_outer_deadline());
        let layer = TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .honor_override(false)
            .enforce_outer_deadline(false)
            .build()
            .unwrap();
        assert!(!layer.honors_override());
        assert!(!layer.enforces_outer_deadline());
        assert!(!layer.honors_per_try_override());
    }

    #[test]
    fn extreme_durations_are_accepted() {
        for d in [Duration::ZERO, Duration::MAX] {
            let layer = TimeoutLayer::builder().timeout(d).build().unwrap();
            assert_eq!(layer.timeout(), d);
        }
    }
}
