//! Waiting: FIFO order among waiters, `max_wait` expiry in paused time, cancellation while waiting.

use seawall_bulkhead::{BulkheadEvent, BulkheadLayer, Full};
use seawall_core::error::is;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{sync::oneshot, time::Instant};
use tower::{service_fn, Layer, ServiceExt};

type Gate = oneshot::Receiver<()>;

/// A bulkhead of one permit waiting up to `max_wait`, and the events it reports.
fn recorded(max_wait: Duration) -> (BulkheadLayer, Arc<Mutex<Vec<BulkheadEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(max_wait)
        .on_event(move |_: &seawall_core::Name, e: &BulkheadEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    (layer, events)
}

fn gated(
) -> impl tower::Service<(u32, Gate), Response = u32, Error = std::io::Error, Future = impl Send>
       + Clone
       + Send {
    service_fn(|(n, gate): (u32, Gate)| async move {
        let _ = gate.await;
        Ok::<_, std::io::Error>(n)
    })
}

#[tokio::test(start_paused = true)]
async fn waiters_are_served_in_arrival_order() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(gated());
    let order = Arc::new(Mutex::new(Vec::new()));

    let (release_holder, gate) = oneshot::channel();
    let holder = tokio::spawn(service.clone().oneshot((0, gate)));
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 1);

    let mut waiters = Vec::new();
    for n in 1..=5u32 {
        let service = service.clone();
        let order = order.clone();
        let (tx, gate) = oneshot::channel::<()>();
        drop(tx); // each waiter finishes as soon as it runs
        waiters.push(tokio::spawn(async move {
            let n = service.oneshot((n, gate)).await.unwrap();
            order.lock().unwrap().push(n);
        }));
        // Let this waiter queue before the next one arrives.
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert_eq!(handle.waiting(), 5);

    release_holder.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), 0);
    for waiter in waiters {
        waiter.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![1, 2, 3, 4, 5]);
    assert_eq!(handle.waiting(), 0);
    assert_eq!(handle.available(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_wait_expires_in_virtual_time() {
    let (layer, events) = recorded(Duration::from_millis(250));
    let handle = layer.handle();
    let service = layer.layer(gated());

    let (_hold, gate) = oneshot::channel();
    let _holder = tokio::spawn(service.clone().oneshot((0, gate)));
    tokio::task::yield_now().await;

    let start = Instant::now();
    let (_tx, gate) = oneshot::channel();
    let err = service.clone().oneshot((1, gate)).await.unwrap_err();
    assert!(is::<Full>(&*err));
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    assert_eq!(handle.waiting(), 0);
    assert_eq!(
        *events.lock().unwrap(),
        vec![BulkheadEvent::Rejected { waited: true }]
    );
}

#[tokio::test(start_paused = true)]
async fn a_permit_that_frees_in_time_is_taken() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_millis(250))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, std::io::Error>(ms)
    }));
    let holder = tokio::spawn(service.clone().oneshot(200));
    tokio::task::yield_now().await;
    let start = Instant::now();
    assert_eq!(service.clone().oneshot(10).await.unwrap(), 10);
    assert_eq!(start.elapsed(), Duration::from_millis(210));
    holder.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn dropping_a_waiter_leaves_the_queue_and_loses_no_permit() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(gated());

    let (release, gate) = oneshot::channel();
    let holder = tokio::spawn(service.clone().oneshot((0, gate)));
    tokio::task::yield_now().await;

    let (_tx, gate) = oneshot::channel();
    let waiter = tokio::spawn(service.clone().oneshot((1, gate)));
    tokio::task::yield_now().await;
    assert_eq!(handle.waiting(), 1);
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(handle.waiting(), 0);

    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    assert_eq!(handle.available(), 1);
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_a_running_call_returns_its_permit() {
    let layer = BulkheadLayer::builder().max_concurrent(1).build().unwrap();
    let handle = layer.handle();
    let service = layer.layer(gated());
    let (_tx, gate) = oneshot::channel();
    let running = tokio::spawn(service.clone().oneshot((0, gate)));
    tokio::task::yield_now().await;
    assert_eq!(handle.in_flight(), 1);
    running.abort();
    let _ = running.await;
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.available(), 1);
}

/// The permit a finished call returns goes to the oldest waiter, whichever future is polled first,
/// and a newcomer queues behind the waiters rather than barging in.
#[tokio::test(start_paused = true)]
async fn fifo_holds_whatever_the_poll_order() {
    use tokio_test::{assert_pending, assert_ready, task::spawn};
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(gated());
    let open = || {
        let (tx, gate) = oneshot::channel::<()>();
        drop(tx);
        gate
    };

    let (release, gate) = oneshot::channel();
    let mut holder = spawn(service.clone().oneshot((0, gate)));
    assert_pending!(holder.poll());
    let mut first = spawn(service.clone().oneshot((1, open())));
    assert_pending!(first.poll());
    let mut second = spawn(service.clone().oneshot((2, open())));
    assert_pending!(second.poll());
    assert_eq!(handle.waiting(), 2);

    release.send(()).unwrap();
    assert_eq!(assert_ready!(holder.poll()).unwrap(), 0);
    assert!(first.is_woken());
    assert!(!second.is_woken());

    let mut newcomer = spawn(service.clone().oneshot((9, open())));
    assert_pending!(newcomer.poll());
    assert_pending!(second.poll());
    assert_eq!(assert_ready!(first.poll()).unwrap(), 1);
    assert_pending!(newcomer.poll());
    assert_eq!(assert_ready!(second.poll()).unwrap(), 2);
    assert_eq!(assert_ready!(newcomer.poll()).unwrap(), 9);
    assert_eq!(handle.available(), 1);
}

#[tokio::test(start_paused = true)]
async fn max_wait_of_duration_max_waits_without_overflow() {
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::MAX)
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, std::io::Error>(ms)
    }));
    let holder = tokio::spawn(service.clone().oneshot(5_000));
    tokio::task::yield_now().await;
    // Waits as long as it takes (here 5 s) rather than overflowing the deadline.
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
    holder.await.unwrap().unwrap();
}

/// An adaptive limit whose answers the test sets: it keeps its last answer until given another.
#[derive(Debug, Clone)]
struct Scripted(Arc<Mutex<usize>>);

impl seawall_bulkhead::limit::Limit for Scripted {
    fn initial_limit(&self) -> usize {
        3
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 3)
    }

    fn update(&mut self, _: &seawall_bulkhead::limit::Sample) -> usize {
        *self.0.lock().unwrap()
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiter_handed_a_permit_and_dropped_pays_the_limits_debt() {
    use tokio_test::task::spawn;
    use tower::Service;

    let limit = Arc::new(Mutex::new(3));
    let layer = BulkheadLayer::builder()
        .adaptive(Scripted(limit.clone()))
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|(n, gate): (u32, Gate)| async move {
        let _ = gate.await;
        Ok::<_, std::io::Error>(n)
    }));
    let mut calls = Vec::new();
    let mut gates = Vec::new();
    // Three calls hold the limit of 3; a fourth (W) waits.
    for n in 0..4 {
        let (tx, rx) = oneshot::channel();
        gates.push(tx);
        svc.ready().await.unwrap();
        let mut call = spawn(svc.call((n, rx)));
        assert!(call.poll().is_pending());
        calls.push(call);
    }
    assert_eq!(handle.waiting(), 1);
    let mut gates = gates.into_iter();
    let mut calls = calls.into_iter();
    let (mut a, mut b, mut c, w) = (
        calls.next().unwrap(),
        calls.next().unwrap(),
        calls.next().unwrap(),
        calls.next().unwrap(),
    );
    // A finishes: its permit is handed to W, which is not polled to take it.
    gates.next().unwrap().send(()).unwrap();
    assert!(a.poll().is_ready());
    // B finishes and the limit falls to 1 while two permits are held (C's, and W's): one owed.
    *limit.lock().unwrap() = 1;
    gates.next().unwrap().send(()).unwrap();
    assert!(b.poll().is_ready());
    assert_eq!(handle.limit(), 1);
    // W gives up the permit it never used: it pays the debt rather than returning to the pool,
    // so with C running a new call waits.
    drop(w);
    assert_eq!(handle.available(), 0);
    let (d_gate, rx) = oneshot::channel();
    svc.ready().await.unwrap();
    let mut d = spawn(svc.call((4, rx)));
    assert!(d.poll().is_pending());
    assert_eq!(handle.waiting(), 1, "C alone uses the limit of 1");
    // C finishes: its permit goes to D, which runs. Had W's permit been kept from the bulkhead,
    // the debt would still be owed, C's permit would pay it and D would wait on.
    gates.next().unwrap().send(()).unwrap();
    assert!(c.poll().is_ready());
    assert!(d.is_woken(), "C's permit is handed to D");
    assert!(d.poll().is_pending(), "D runs, until its gate opens");
    assert_eq!((handle.waiting(), handle.in_flight()), (0, 1));
    d_gate.send(()).unwrap();
    assert_eq!(tokio_test::assert_ready!(d.poll()).unwrap(), 4);
    // Every permit is back: the one of the limit of 1 is free, and none is held or owed.
    assert_eq!(
        (handle.limit(), handle.available(), handle.in_flight()),
        (1, 1, 0)
    );
}

/// A call joins the queue when `call` returns, not when its future is first polled: a service
/// that calls and hands the future on to be polled later (as tower's `Buffer` worker does) keeps
/// its place ahead of a later caller.
#[tokio::test(start_paused = true)]
async fn a_call_queues_before_its_future_is_polled() {
    use tokio_test::{assert_pending, assert_ready, task::spawn};
    use tower::Service;

    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let arrived = Arc::new(Mutex::new(Vec::new()));
    let seen = arrived.clone();
    let mut svc = layer.layer(service_fn(move |(n, gate): (u32, Gate)| {
        seen.lock().unwrap().push(n);
        async move {
            let _ = gate.await;
            Ok::<_, std::io::Error>(n)
        }
    }));
    let mut svc2 = svc.clone();
    let open = || {
        let (tx, gate) = oneshot::channel::<()>();
        drop(tx);
        gate
    };

    let (release_a, gate) = oneshot::channel();
    svc.ready().await.unwrap();
    let mut a = spawn(svc.call((0, gate)));
    assert_pending!(a.poll());

    svc.ready().await.unwrap();
    let first = svc.call((1, open()));

    release_a.send(()).unwrap();
    assert_eq!(assert_ready!(a.poll()).unwrap(), 0);
    svc2.ready().await.unwrap();
    let second = svc2.call((2, open()));
    let (first, second) = tokio::join!(first, second);
    assert_eq!((first.unwrap(), second.unwrap()), (1, 2));
    assert_eq!(*arrived.lock().unwrap(), vec![0, 1, 2], "in arrival order");
    assert_eq!(handle.waiting(), 0);
    assert_eq!(handle.available(), 1);
}

/// A queued call dropped before its future was ever polled leaves the queue, or passes on a
/// permit handed to it, so the next waiter runs.
#[tokio::test(start_paused = true)]
async fn an_unpolled_waiter_dropped_passes_its_permit_on() {
    use seawall_core::metrics::{testing::TestRecorder, BULKHEAD_IN_FLIGHT, BULKHEAD_WAITING};
    use tokio_test::{assert_pending, assert_ready, task::spawn};
    use tower::Service;

    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BulkheadLayer::builder()
        .max_concurrent(1)
        .max_wait(Duration::from_secs(10))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|(n, gate): (u32, Gate)| async move {
        let _ = gate.await;
        Ok::<_, std::io::Error>(n)
    }));
    let open = || {
        let (tx, gate) = oneshot::channel::<()>();
        drop(tx);
        gate
    };

    let (release_a, gate) = oneshot::channel();
    svc.ready().await.unwrap();
    let mut a = spawn(svc.call((0, gate)));
    assert_pending!(a.poll());
    svc.ready().await.unwrap();
    let dropped_early = svc.call((1, open()));
    svc.ready().await.unwrap();
    let handed_over = svc.call((2, open()));
    svc.ready().await.unwrap();
    let mut last = spawn(svc.call((3, open())));
    assert_pending!(last.poll());
    assert_eq!(handle.waiting(), 3);

    // Left the queue before any permit came.
    drop(dropped_early);
    assert_eq!(handle.waiting(), 2);
    // Handed A's permit, never polled, then dropped: the permit goes on to the last waiter.
    release_a.send(()).unwrap();
    assert_eq!(assert_ready!(a.poll()).unwrap(), 0);
    assert!(!last.is_woken());
    // Handed a permit, the call waits no more (the permit counts in flight): only the last does.
    assert_eq!(handle.waiting(), 1);
    assert_eq!(recorder.gauge(BULKHEAD_WAITING, "bulkhead"), Some(1.0));
    assert_eq!(handle.in_flight(), 1);
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "bulkhead"), Some(1.0));
    // Dropped unused, the permit counts in flight once, now for the last waiter.
    drop(handed_over);
    assert!(last.is_woken());
    assert_eq!(handle.in_flight(), 1);
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "bulkhead"), Some(1.0));
    assert_eq!(assert_ready!(last.poll()).unwrap(), 3);
    assert_eq!(handle.waiting(), 0);
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "bulkhead"), Some(0.0));
    assert_eq!(handle.available(), 1);
}

/// A queued call whose `max_wait` has passed is passed over when a permit comes back, even if its
/// future was never polled (so no timer ran for it): the permit goes to the next call still within
/// its wait, and the expired call fails with [`Full`] when it is polled.
#[tokio::test(start_paused = true)]
async fn a_permit_passes_over_a_queued_call_whose_max_wait_has_passed() {
    use tokio_test::{assert_pending, assert_ready, task::spawn};
    use tower::Service;

    let (layer, events) = recorded(Duration::from_secs(1));
    let handle = layer.handle();
    let mut svc = layer.layer(service_fn(|(n, gate): (u32, Gate)| async move {
        let _ = gate.await;
        Ok::<_, std::io::Error>(n)
    }));
    let open = || {
        let (tx, gate) = oneshot::channel::<()>();
        drop(tx);
        gate
    };

    let (release_a, gate) = oneshot::channel();
    svc.ready().await.unwrap();
    let mut a = spawn(svc.call((0, gate)));
    assert_pending!(a.poll());
    // B queues at 0 s, waiting up to 1 s; its future is not polled.
    svc.ready().await.unwrap();
    let mut b = spawn(svc.call((1, open())));
    tokio::time::advance(Duration::from_millis(900)).await;
    // C queues at 0.9 s, waiting up to 1.9 s.
    svc.ready().await.unwrap();
    let mut c = spawn(svc.call((2, open())));
    assert_pending!(c.poll());
    assert_eq!(handle.waiting(), 2);

    // A finishes at 1.5 s: B's wait is over, C's is not.
    tokio::time::advance(Duration::from_millis(600)).await;
    release_a.send(()).unwrap();
    assert_eq!(assert_ready!(a.poll()).unwrap(), 0);
    assert!(
        c.is_woken(),
        "the permit goes to the call still within its wait"
    );
    assert_eq!(handle.waiting(), 0);
    assert_eq!(assert_ready!(c.poll()).unwrap(), 2);
    let err = assert_ready!(b.poll()).unwrap_err();
    assert!(is::<Full>(&*err));
    assert_eq!(
        *events.lock().unwrap(),
        vec![BulkheadEvent::Rejected { waited: true }]
    );
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.available(), 1);
}
