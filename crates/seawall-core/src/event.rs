//! Listener hooks for policy events.
//!
//! Each concern defines an event type (a timeout fired, a fallback answered, a breaker changed
//! state...). A policy emits each event three ways: a `tracing` event, the `metrics` it affects,
//! and a call to every [`Listener`] registered on its builder. Listeners run inline on the task that
//! caused the event, so they must be quick and must not block; send to a channel for anything more.
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
use std::{fmt, sync::Arc};

/// Receives a policy's events.
pub trait Listener<E>: Send + Sync + 'static {
    /// Called once per event, inline, with the name of the policy that emitted it.
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

    /// Calls every listener with `event`.
    #[inline]
    pub fn emit(&self, name: &Name, event: &E) {
        for listener in self.inner.iter() {
            listener.on_event(name, event);
        }
    }
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
