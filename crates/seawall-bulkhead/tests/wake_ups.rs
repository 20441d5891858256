//! Waking the calls a release serves: wakers are foreign code, so they run with no bulkhead lock
//! held, as an executor may drop a woken task's future, and a permit in it samples the limit
//! again.

use seawall_bulkhead::{
    limit::{Limit, Sample},
    BulkheadHandle, BulkheadLayer,
};
use std::{
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Wake, Waker},
    time::Duration,
};
use tower::{service_fn, Layer, Service, ServiceExt};

/// A limit of one that grows by `step` with every sample.
#[derive(Debug)]
struct Grows {
    limit: usize,
    step: usize,
}

impl Limit for Grows {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 100)
    }

    fn update(&mut self, _: &Sample) -> usize {
        self.limit += self.step;
        self.limit
    }
}

/// A waker that counts its wake-ups, and those made while the adaptive limit's lock is held
/// (the bulkhead's `Debug` tries to take it, and shows it `<busy>` when it cannot): there a
/// waker that called back in to sample the limit would deadlock.
struct Spy {
    bulkhead: BulkheadHandle,
    wakes: AtomicUsize,
    under_lock: AtomicUsize,
}

impl Spy {
    fn new(bulkhead: &BulkheadHandle) -> Arc<Self> {
        Arc::new(Spy {
            bulkhead: bulkhead.clone(),
            wakes: AtomicUsize::new(0),
            under_lock: AtomicUsize::new(0),
        })
    }

    fn wakes(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

impl Wake for Spy {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        if format!("{:?}", self.bulkhead).contains("<busy>") {
            self.under_lock.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// A sample that grows the limit hands the permit added to the waiter, and wakes it once the
/// limit's lock is released.
#[tokio::test(start_paused = true)]
async fn a_waiter_served_by_a_growing_limit_is_woken_outside_its_lock() {
    let layer = BulkheadLayer::builder()
        .adaptive(Grows { limit: 1, step: 1 })
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let spy = Spy::new(&handle);
    let waker = Waker::from(spy.clone());
    let mut service = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));

    // One call holds the only permit; the next waits, polled with the spy.
    let running = service.ready().await.unwrap().call(());
    let mut waiting = pin!(service.ready().await.unwrap().call(()));
    assert!(waiting
        .as_mut()
        .poll(&mut Context::from_waker(&waker))
        .is_pending());
    assert_eq!(handle.waiting(), 1);

    // The first call's sample grows the limit to 2: the permit added goes to the waiter.
    running.await.unwrap();
    assert_eq!(handle.limit(), 2);
    assert_eq!(spy.wakes(), 1);
    assert_eq!(spy.under_lock.load(Ordering::SeqCst), 0);
    waiting.await.unwrap();
}
