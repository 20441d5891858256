//! Waking the calls a release serves. Wakers are foreign code: they run with no bulkhead lock
//! held, as an executor may drop a woken task's future, and a permit in it samples the limit
//! again; and one that panics leaves the others woken and every count right.

use seawall_bulkhead::{
    limit::{Limit, Sample},
    BulkheadHandle, BulkheadLayer,
};
use seawall_core::metrics::{
    testing::TestRecorder, BULKHEAD_IN_FLIGHT, BULKHEAD_LIMIT, BULKHEAD_WAITING,
};
use std::{
    fmt,
    future::Future,
    panic::{self, AssertUnwindSafe},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, OnceLock,
    },
    task::{Context, Wake, Waker},
    time::Duration,
};
use tower::{service_fn, Layer, Service, ServiceExt};

/// A limit of one that grows by `step` with every sample. Given its bulkhead's handle, it checks
/// that the handle's `Debug` shows the limit's lock `<busy>` while it holds it, as [`Spy`]
/// relies on.
struct Grows {
    limit: usize,
    step: usize,
    handle: Arc<OnceLock<BulkheadHandle>>,
}

/// Without the handle: the bulkhead's `Debug` shows its limit, which would show the bulkhead.
impl fmt::Debug for Grows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grows")
            .field("limit", &self.limit)
            .field("step", &self.step)
            .finish()
    }
}

impl Grows {
    fn new(limit: usize, step: usize) -> (Self, Arc<OnceLock<BulkheadHandle>>) {
        let handle = Arc::new(OnceLock::new());
        let grows = Grows {
            limit,
            step,
            handle: handle.clone(),
        };
        (grows, handle)
    }
}

impl Limit for Grows {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 100)
    }

    fn update(&mut self, _: &Sample) -> usize {
        if let Some(handle) = self.handle.get() {
            assert!(
                format!("{handle:?}").contains("<busy>"),
                "the handle shows the limit's lock held"
            );
        }
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
    let (grows, handle_of_limit) = Grows::new(1, 1);
    let layer = BulkheadLayer::builder()
        .adaptive(grows)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    handle_of_limit.set(handle.clone()).unwrap();
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

/// A waker that panics on its first wake-up: foreign code may.
struct PanicsOnce {
    armed: AtomicBool,
    wakes: AtomicUsize,
}

impl PanicsOnce {
    fn armed() -> Arc<Self> {
        Arc::new(PanicsOnce {
            armed: AtomicBool::new(true),
            wakes: AtomicUsize::new(0),
        })
    }
}

/// Polls `call` once, the way a task would after it finished; whether a panic came out of it.
fn panics_when_polled<F: Future>(call: Pin<&mut F>) -> bool {
    panic::catch_unwind(AssertUnwindSafe(|| {
        call.poll(&mut Context::from_waker(Waker::noop()))
    }))
    .is_err()
}

impl Wake for PanicsOnce {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        if self.armed.swap(false, Ordering::SeqCst) {
            panic!("a waker panics");
        }
    }
}

/// A sample grows the limit by two, handing the permits added to two waiters, and the first
/// one's waker panics. The panic goes on to the caller, but the other waiter is woken all the
/// same, and the limit, the permits and the gauges all agree: none is left behind by the panic.
#[tokio::test(start_paused = true)]
async fn a_panicking_waker_leaves_the_other_waiter_woken_and_the_counts_right() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BulkheadLayer::builder()
        .name("wakes")
        .adaptive(Grows::new(1, 2).0)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let gauges = || {
        [BULKHEAD_LIMIT, BULKHEAD_IN_FLIGHT, BULKHEAD_WAITING]
            .map(|gauge| recorder.gauge(gauge, "wakes").unwrap_or_default())
    };
    let panics = PanicsOnce::armed();
    let other = Spy::new(&handle);
    let mut service = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));

    // One call holds the only permit; two wait, polled with the wakers.
    let mut running = pin!(service.ready().await.unwrap().call(()));
    let mut first = pin!(service.ready().await.unwrap().call(()));
    let mut second = pin!(service.ready().await.unwrap().call(()));
    for (waiting, waker) in [
        (first.as_mut(), Waker::from(panics.clone())),
        (second.as_mut(), Waker::from(other.clone())),
    ] {
        assert!(waiting.poll(&mut Context::from_waker(&waker)).is_pending());
    }
    assert_eq!(gauges(), [1.0, 1.0, 2.0]);

    // The running call's sample grows the limit to 3; waking the first waiter panics.
    assert!(
        panics_when_polled(running.as_mut()),
        "the waker's panic goes on"
    );
    assert_eq!(panics.wakes.load(Ordering::SeqCst), 1);
    assert_eq!(other.wakes(), 1, "the other waiter is not woken");
    assert_eq!(
        (handle.limit(), handle.available(), handle.in_flight()),
        (3, 1, 2)
    );
    assert_eq!(gauges(), [3.0, 2.0, 0.0]);

    // Both run with the permits handed to them, each sample adding two more.
    first.await.unwrap();
    second.await.unwrap();
    assert_eq!((handle.limit(), handle.available()), (7, 7));
    assert_eq!(gauges(), [7.0, 0.0, 0.0]);
}

/// A fixed limit of one: the running call's permit is handed to the waiter, whose waker panics.
/// The panic goes on to the caller; the in-flight gauge still counts the one call running.
#[tokio::test(start_paused = true)]
async fn a_panicking_waker_leaves_a_fixed_limits_gauges_right() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BulkheadLayer::builder()
        .name("fixed-wakes")
        .max_concurrent(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let gauges = || {
        [BULKHEAD_IN_FLIGHT, BULKHEAD_WAITING]
            .map(|gauge| recorder.gauge(gauge, "fixed-wakes").unwrap_or_default())
    };
    let panics = PanicsOnce::armed();
    let mut service = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));

    let mut running = pin!(service.ready().await.unwrap().call(()));
    let mut waiting = pin!(service.ready().await.unwrap().call(()));
    assert!(waiting
        .as_mut()
        .poll(&mut Context::from_waker(&Waker::from(panics.clone())))
        .is_pending());
    assert_eq!(gauges(), [1.0, 1.0]);

    assert!(
        panics_when_polled(running.as_mut()),
        "the waker's panic goes on"
    );
    assert_eq!(panics.wakes.load(Ordering::SeqCst), 1);
    assert_eq!((handle.in_flight(), handle.waiting()), (1, 0));
    assert_eq!(gauges(), [1.0, 0.0], "the finished call is off the gauge");

    waiting.await.unwrap();
    assert_eq!(gauges(), [0.0, 0.0]);
}
