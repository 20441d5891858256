//! Shared pieces of the benchmarks: allocation counting (with the `count-allocs` feature) and
//! helpers to drive services that are ready at once without an executor's overhead.
#![allow(dead_code, unreachable_pub)]

use std::{
    future::Future,
    pin::pin,
    task::{Context, Poll, Waker},
};

/// The allocation-counting global allocator, only in a build with `--features count-allocs`: it
/// adds atomic updates to every allocation and free, a cost that would fall on the timings of
/// whichever subject allocates.
#[cfg(feature = "count-allocs")]
mod counting {
    use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
    use std::alloc::System;

    #[global_allocator]
    static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

    /// Allocations and reallocations while `f` runs.
    pub fn count(f: impl FnOnce()) -> (usize, usize) {
        let region = Region::new(GLOBAL);
        f();
        let change = region.change();
        (change.allocations, change.reallocations)
    }
}

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

/// Runs `f` `calls` times and counts the heap allocations and reallocations it made; `None` in a
/// build without the `count-allocs` feature. Each result goes through `black_box`, as in the
/// timed loops, so that what is counted is what is timed.
///
/// The counter is process-wide, so measure on a quiet thread (a current-thread runtime).
#[cfg(feature = "count-allocs")]
pub fn count_allocs<T>(calls: u32, mut f: impl FnMut() -> T) -> Option<Allocs> {
    use std::hint::black_box;
    // Warm up lazily initialised state (thread locals, metric handles) outside the count.
    for _ in 0..16 {
        black_box(f());
    }
    let (allocations, reallocations) = counting::count(|| {
        for _ in 0..calls {
            black_box(f());
        }
    });
    Some(Allocs {
        allocations,
        reallocations,
        calls,
    })
}

/// As the counting `count_allocs`, in a build that does not count: `None`.
#[cfg(not(feature = "count-allocs"))]
pub fn count_allocs<T>(_calls: u32, _f: impl FnMut() -> T) -> Option<Allocs> {
    None
}

/// Prints one line of the allocation table every bench emits after its timings: allocations and
/// reallocations per call, then the raw counts, so that a rare allocation does not round to zero.
/// Without the `count-allocs` feature it says once how to get the table.
pub fn report_allocs<T>(group: &str, subject: &str, calls: u32, f: impl FnMut() -> T) {
    match count_allocs(calls, f) {
        Some(allocs) => println!(
            "allocs/call {group}/{subject}: {:.2} ({} allocations + {} reallocations in {} calls)",
            allocs.per_call(),
            allocs.allocations,
            allocs.reallocations,
            allocs.calls,
        ),
        None => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| {
                println!(
                    "allocs/call: not counted; run with `--features count-allocs` to count them \
                     (the timings above use the system allocator as it is)"
                )
            });
        }
    }
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
