//! The ratio budget's synchronisation primitives: `std`'s normally, `loom`'s under `--cfg loom` so
//! the loom tests can explore every interleaving of its lock-free batching.

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
