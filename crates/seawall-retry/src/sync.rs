//! The ratio budget's synchronisation primitives and clock: `std`'s and tokio's normally, `loom`'s
//! and a fixed instant under `--cfg loom` so the loom tests can explore every interleaving of its
//! lock-free batching.

#[cfg(loom)]
pub(crate) use loom::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex, MutexGuard,
};
use tokio::time::Instant;

/// The current instant.
#[cfg(not(loom))]
#[inline]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// One instant, read once and returned ever after: the budget's batching depends on how much time
/// passes between its clock reads, and loom needs every run of a model to make the same atomic
/// operations in the same order, whatever the machine's load. No time passes in a model.
#[cfg(loom)]
pub(crate) fn now() -> Instant {
    static NOW: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *NOW.get_or_init(Instant::now)
}
