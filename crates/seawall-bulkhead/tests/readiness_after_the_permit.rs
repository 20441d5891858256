//! A call that may wait takes its permit first and polls its inner service ready only then. While
//! the inner service gets ready the call holds its permit (in flight, no longer waiting); dropped
//! then, it gives the permit back. A readiness error ends the call with that error, not `Full`,
//! and gives the permit back without a sample for an adaptive limit. A call whose `poll_ready`
//! found the bulkhead full, with a permit freed by `call`, polls its inner service ready once and
//! runs.

use seawall_bulkhead::{
    limit::{Limit, Sample},
    BulkheadHandle, BulkheadLayer, Full,
};
use seawall_core::error::is;
use std::{
    sync::{
        atomic::{AtomicU8, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll, Waker},
    time::Duration,
};
use tokio_test::{assert_pending, assert_ready, task};
use tower::{Layer, Service};

const PENDING: u8 = 0;
const READY: u8 = 1;
const BROKEN: u8 = 2;

/// An inner service whose readiness is set from outside (shared by its clones): pending, ready or
/// failing. It counts its `poll_ready` calls.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<AtomicU8>,
    waker: Arc<Mutex<Option<Waker>>>,
    polls: Arc<AtomicUsize>,
}

impl Gate {
    fn ready() -> Self {
        let gate = Gate::default();
        gate.set(READY);
        gate
    }

    fn set(&self, state: u8) {
        self.state.store(state, Ordering::SeqCst);
        if let Some(waker) = self.waker.lock().unwrap().take() {
            waker.wake();
        }
    }

    fn polls(&self) -> usize {
        self.polls.load(Ordering::SeqCst)
    }
}

impl Service<u32> for Gate {
    type Response = u32;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<u32, std::io::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), std::io::Error>> {
        self.polls.fetch_add(1, Ordering::SeqCst);
        match self.state.load(Ordering::SeqCst) {
            READY => Poll::Ready(Ok(())),
            BROKEN => Poll::Ready(Err(std::io::Error::other("connection refused"))),
            _ => {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    fn call(&mut self, n: u32) -> Self::Future {
        std::future::ready(Ok(n))
    }
}

type Samples = Arc<Mutex<Vec<Sample>>>;

/// An adaptive limit that stays at one and records every sample.
#[derive(Debug)]
struct Recording(Samples);

impl Limit for Recording {
    fn initial_limit(&self) -> usize {
        1
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 1)
    }

    fn update(&mut self, sample: &Sample) -> usize {
        self.0.lock().unwrap().push(*sample);
        1
    }
}

/// One permit, a one-second `max_wait`: fixed, or adaptive with the samples recorded.
fn layers() -> Vec<(BulkheadLayer, Option<Samples>)> {
    let fixed = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let samples = Samples::default();
    let adaptive = BulkheadLayer::builder()
        .adaptive(Recording(samples.clone()))
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    vec![(fixed, None), (adaptive, Some(samples))]
}

fn sampled(samples: &Option<Samples>) -> usize {
    samples
        .as_ref()
        .map_or(0, |samples| samples.lock().unwrap().len())
}

type Call = task::Spawn<<seawall_bulkhead::Bulkhead<Gate> as Service<u32>>::Future>;

/// A holds the permit and finishes while B waits; B, handed the permit, finds its inner service
/// not ready yet.
fn queue_behind_a_running_call(layer: &BulkheadLayer, gate: &Gate) -> (BulkheadHandle, Call, Call) {
    let handle = layer.handle();
    let mut a = layer.layer(gate.clone());
    assert_ready!(task::spawn(()).enter(|cx, _| a.poll_ready(cx))).unwrap();
    let a = task::spawn(a.call(1));
    let mut b = layer.layer(gate.clone());
    // The bulkhead is full: ready at once, without polling the inner service.
    assert_ready!(task::spawn(()).enter(|cx, _| b.poll_ready(cx))).unwrap();
    let mut b = task::spawn(b.call(2));
    assert_pending!(b.poll());
    assert_eq!((handle.in_flight(), handle.waiting()), (1, 1));
    (handle, a, b)
}

#[tokio::test(start_paused = true)]
async fn a_call_with_its_permit_holds_it_while_its_inner_service_gets_ready() {
    for (layer, samples) in layers() {
        let gate = Gate::ready();
        let (handle, mut a, mut b) = queue_behind_a_running_call(&layer, &gate);
        gate.set(PENDING);
        assert_eq!(assert_ready!(a.poll()).unwrap(), 1);
        let sampled_by_a = sampled(&samples);

        assert_pending!(b.poll());
        assert_eq!(
            (handle.in_flight(), handle.waiting()),
            (1, 0),
            "B holds the permit while its inner service gets ready"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(
            !b.is_woken(),
            "the max_wait timer of a call holding its permit does not wake it"
        );
        drop(b);
        assert_eq!(handle.available(), 1, "the dropped call's permit came back");
        assert_eq!(
            sampled(&samples),
            sampled_by_a,
            "a dropped call is no sample"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_after_the_permit_ends_the_call_and_gives_the_permit_back() {
    for (layer, samples) in layers() {
        let gate = Gate::ready();
        let (handle, mut a, mut b) = queue_behind_a_running_call(&layer, &gate);
        gate.set(BROKEN);
        assert_eq!(assert_ready!(a.poll()).unwrap(), 1);
        let sampled_by_a = sampled(&samples);

        let err = assert_ready!(b.poll()).unwrap_err();
        assert!(
            !is::<Full>(&*err),
            "the inner service's error, not Full: {err}"
        );
        assert_eq!(err.to_string(), "connection refused");
        assert_eq!(
            handle.available(),
            1,
            "the permit came back with the error, before the future is dropped"
        );
        assert_eq!(handle.in_flight(), 0);
        assert_eq!(
            sampled(&samples),
            sampled_by_a,
            "a readiness error is no sample"
        );
        drop(b);
        assert_eq!(handle.available(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_ready_while_full_runs_when_a_permit_frees_before_it_is_called() {
    for (layer, _) in layers() {
        let handle = layer.handle();
        let gate = Gate::ready();
        let mut a = layer.layer(gate.clone());
        assert_ready!(task::spawn(()).enter(|cx, _| a.poll_ready(cx))).unwrap();
        let a = a.call(1);
        assert_eq!(gate.polls(), 1, "A's readiness");

        let mut b = layer.layer(gate.clone());
        assert_ready!(task::spawn(()).enter(|cx, _| b.poll_ready(cx))).unwrap();
        assert_eq!(gate.polls(), 1, "full: B's inner service is left alone");
        drop(a);
        assert_eq!(handle.available(), 1);

        assert_eq!(b.call(2).await.unwrap(), 2);
        assert_eq!(gate.polls(), 2, "B's inner service was polled ready once");
        assert_eq!(handle.available(), 1, "every permit came back");
        assert_eq!((handle.in_flight(), handle.waiting()), (0, 0));
    }
}

/// A call that finds a permit freed by `call` sets no `max_wait` timer: it runs on a runtime
/// without a time driver, as a call admitted at once does.
#[test]
fn a_call_ready_while_full_needs_no_timer_when_a_permit_frees_before_it_is_called() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        for (layer, _) in layers() {
            let handle = layer.handle();
            let gate = Gate::ready();
            let mut a = layer.layer(gate.clone());
            assert_ready!(task::spawn(()).enter(|cx, _| a.poll_ready(cx))).unwrap();
            let a = a.call(1);
            let mut b = layer.layer(gate.clone());
            assert_ready!(task::spawn(()).enter(|cx, _| b.poll_ready(cx))).unwrap();
            drop(a);

            assert_eq!(b.call(2).await.unwrap(), 2);
            assert_eq!(handle.available(), 1, "every permit came back");
        }
    });
}
