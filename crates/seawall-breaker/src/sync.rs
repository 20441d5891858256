//! Atomics of the state machine: `std`'s normally, `loom`'s under `--cfg loom` so the loom tests can
//! explore every interleaving of the lock-free code.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU64, AtomicU8, Ordering};

#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

/// Lets another thread run while this one waits for it (under loom, lets the model switch
/// threads, so a wait does not spin through every interleaving).
#[inline]
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}

/// Keeps a value on cache lines of its own (128 bytes: x86 prefetches lines in pairs), so that
/// writes to it do not slow down readers of its neighbours.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}
