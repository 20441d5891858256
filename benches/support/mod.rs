//! Shared pieces of the benchmarks: an allocation-counting global allocator and helpers to drive
//! services that are ready at once without an executor's overhead.
#![allow(dead_code, unreachable_pub)]

use std::{
    alloc::System,
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// What `calls` calls of a closure asked of the heap.
#[derive(Clone, Copy, Debug)]
pub struct Allocs {
    /// Blocks allocated.
    pub allocations: usize,
    /// Blocks resized with `realloc` (not counted in `allocations`).
    pub reallocations: usize,
    /// Calls made.
    pub calls: u32,
}

impl Allocs {
    /// Allocations and reallocations together.
    pub fn total(&self) -> usize {
        self.allocations + self.reallocations
    }

    /// Allocations and reallocations per call.
    pub fn per_call(&self) -> f64 {
        self.total() as f64 / f64::from(self.calls)
    }
}

/// Runs `f` `calls` times and counts the heap allocations and reallocations it made.
///
/// The counter is process-wide, so measure on a quiet thread (a current-thread runtime).
pub fn count_allocs(calls: u32, mut f: impl FnMut()) -> Allocs {
    // Warm up lazily initialised state (thread locals, metric handles) outside the count.
    for _ in 0..16 {
        f();
    }
    let region = Region::new(GLOBAL);
    for _ in 0..calls {
        f();
    }
    let change = region.change();
    Allocs {
        allocations: change.allocations,
        reallocations: change.reallocations,
        calls,
    }
}

/// Prints one line of the allocation table every bench emits after its timings: allocations and
/// reallocations per call, then the raw counts, so that a rare allocation does not round to zero.
pub fn report_allocs(group: &str, subject: &str, calls: u32, f: impl FnMut()) {
    let allocs = count_allocs(calls, f);
    println!(
        "allocs/call {group}/{subject}: {:.2} ({} allocations + {} reallocations in {} calls)",
        allocs.per_call(),
        allocs.allocations,
        allocs.reallocations,
        allocs.calls,
    );
}

/// Polls `fut` once with a no-op waker; panics if it is not ready.
///
/// For futures that complete on their first poll (a ready inner service): measures the layer, not
/// an executor.
pub fn now_or_never<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("benchmarked future was not ready on its first poll"),
    }
}

/// Polls `fut` until ready, spinning with a no-op waker. Only for futures that make progress
/// without being woken (for example ones that are ready or that yield a bounded number of times).
pub fn poll_until_ready<F: Future>(fut: F) -> F::Output {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

/// Polls `svc` ready (it must be ready at once; an error is returned as is), then drives the call
/// to completion with a no-op waker: one call through a layer, without an executor.
pub fn call<S: tower::Service<R>, R>(svc: &mut S, req: R) -> Result<S::Response, S::Error> {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => return Err(e),
        Poll::Pending => panic!("benchmarked service was not ready"),
    }
    poll_until_ready(svc.call(req))
}

/// [`call`] for a call that must succeed.
pub fn call_ok<S, R>(svc: &mut S, req: R) -> S::Response
where
    S: tower::Service<R>,
    S::Error: std::fmt::Debug,
{
    call(svc, req).expect("benchmarked call failed")
}
