//! Listener hooks for policy events.
//!
//! Each concern defines an event type (a timeout fired, a fallback answered, a breaker changed
//! state...). A policy emits each event three ways: a `tracing` event, the `metrics` it affects,
//! and a call to every [`Listener`] registered on its builder. Listeners run inline on the task that
//! caused the event, so they must be quick and must not block; send to a channel for anything more.
//! A listener that panics is logged (at `error`) and skipped: the listeners after it are still
//! called, and the panic goes no further than [`Listeners::emit`], so the policy goes on as if the
//! listener had returned. A subscriber that panics on that log line loses the line, nothing more.
//!
//! ```
//! use seawall_core::{event::Listeners, Name};
//! use std::sync::{atomic::{AtomicUsize, Ordering}, Arc};
//!
//! #[derive(Debug)]
//! enum DoorEvent { Opened }
//!
//! let seen = Arc::new(AtomicUsize::new(0));
//! let counter = seen.clone();
//! let listeners = Listeners::new().with(move |_name: &Name, _event: &DoorEvent| {
//!     counter.fetch_add(1, Ordering::Relaxed);
//! });
//! listeners.emit(&Name::new("door").unwrap(), &DoorEvent::Opened);
//! assert_eq!(seen.load(Ordering::Relaxed), 1);
//! ```

use crate::Name;
use std::{
    any::Any,
    fmt,
    panic::{catch_unwind, AssertUnwindSafe},
    sync::Arc,
};

/// Receives a policy's events.
pub trait Listener<E>: Send + Sync + 'static {
    /// Called once per event, inline, with the name of the policy that emitted it. A panic here
    /// is logged and skipped (see [`Listeners::emit`]). Events caused at nearly the same time on
    /// different threads may arrive in either order; an event type that needs ordering carries
    /// a sequence number (a breaker's transition its generation).
    fn on_event(&self, name: &Name, event: &E);
}

impl<E, F> Listener<E> for F
where
    F: Fn(&Name, &E) + Send + Sync + 'static,
{
    fn on_event(&self, name: &Name, event: &E) {
        self(name, event)
    }
}

/// The listeners registered on one policy. Cheap to clone; empty by default.
pub struct Listeners<E> {
    inner: Arc<[Arc<dyn Listener<E>>]>,
}

impl<E: 'static> Listeners<E> {
    /// No listeners.
    pub fn new() -> Self {
        Listeners {
            inner: Arc::from(Vec::new()),
        }
    }

    /// These listeners and `listener`.
    pub fn with(self, listener: impl Listener<E>) -> Self {
        let mut all: Vec<Arc<dyn Listener<E>>> = self.inner.iter().cloned().collect();
        all.push(Arc::new(listener));
        Listeners {
            inner: Arc::from(all),
        }
    }

    /// Whether no listener is registered.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Calls every listener with `event`, in the order they were added. A listener that panics is
    /// logged and skipped: the next one is still called, and `emit` returns normally. With no
    /// listener this is a check of the list's length.
    #[inline]
    pub fn emit(&self, name: &Name, event: &E) {
        for listener in self.inner.iter() {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| listener.on_event(name, event))) {
                listener_panicked(name, panic);
            }
        }
    }
}

/// Logs a listener's panic and drops its payload. A subscriber that panics on the log line loses
/// the line, and a payload whose drop panics is caught too.
#[cold]
#[inline(never)]
fn listener_panicked(name: &Name, panic: Box<dyn Any + Send>) {
    let message = panics::message(&*panic);
    panics::caught(
        || tracing::error!(%name, panic = message, "seawall listener panicked; skipped"),
    );
    panics::caught(|| drop(panic));
}

/// What seawall's layers use to keep user code (a listener, a key's `Debug`, a subscriber) that
/// panics off their own state: not part of the public API.
#[doc(hidden)]
pub mod panics {
    use std::{
        any::Any,
        panic::{catch_unwind, AssertUnwindSafe},
    };

    /// Runs `f`, catching a panic in it and dropping the panic's payload (a payload whose drop
    /// panics too is caught).
    pub fn caught(f: impl FnOnce()) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(f)) {
            let _ = catch_unwind(AssertUnwindSafe(|| drop(panic)));
        }
    }

    /// The message a panic was raised with, when it is a string.
    pub fn message(panic: &(dyn Any + Send)) -> &str {
        panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("a panic without a message")
    }
}

/// A `tracing` subscriber that panics on every event, for tests of code that must survive one.
#[cfg(any(test, feature = "testing"))]
#[derive(Debug)]
pub struct PanickingSubscriber;

#[cfg(any(test, feature = "testing"))]
impl tracing::Subscriber for PanickingSubscriber {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, _: &tracing::Event<'_>) {
        panic!("subscriber broke");
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

impl<E: 'static> Default for Listeners<E> {
    fn default() -> Self {
        Self::new()
    }
}

impl<E> Clone for Listeners<E> {
    fn clone(&self) -> Self {
        Listeners {
            inner: self.inner.clone(),
        }
    }
}

impl<E> fmt::Debug for Listeners<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listeners")
            .field("len", &self.inner.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// A listener that panics is skipped: the one after it still hears of every event, and `emit`
    /// returns normally.
    #[test]
    fn a_panicking_listener_does_not_stop_the_next() {
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let listeners = Listeners::new()
            .with(|_: &Name, event: &u32| panic!("listener broke on {event}"))
            .with(move |_: &Name, _: &u32| {
                counter.fetch_add(1, Relaxed);
            });
        let name = Name::new("door").unwrap();
        listeners.emit(&name, &1);
        listeners.emit(&name, &2);
        assert_eq!(seen.load(Relaxed), 2);
    }

    /// A subscriber that panics on the line logging a listener's panic loses that line only: the
    /// next listener is still called, and `emit` returns normally.
    #[test]
    fn a_panicking_listener_is_skipped_under_a_subscriber_that_panics() {
        let _subscriber = tracing::subscriber::set_default(PanickingSubscriber);
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        let listeners = Listeners::new()
            .with(|_: &Name, event: &u32| panic!("listener broke on {event}"))
            .with(move |_: &Name, _: &u32| {
                counter.fetch_add(1, Relaxed);
            });
        let name = Name::new("door").unwrap();
        listeners.emit(&name, &1);
        listeners.emit(&name, &2);
        assert_eq!(seen.load(Relaxed), 2);
    }
}
