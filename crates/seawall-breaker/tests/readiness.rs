//! Readiness discipline: a rejecting breaker does not poll the inner service, the response future
//! carries the rejection, a reservation is not cloned, backpressure waits on a timer, one layer is
//! one breaker.
#![cfg(not(loom))]

mod common;

use common::{dependency, rejected, send, Call};
use seawall::{
    breaker::{Breaker, BreakerHandle, BreakerLayer, ResponseFuture, State},
    BoxError,
};
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};
use tokio_test::{assert_pending, assert_ready, assert_ready_err, assert_ready_ok, task};
use tower::{
    buffer::Buffer, limit::ConcurrencyLimit, util::BoxCloneService, Layer, Service, ServiceExt,
};
use tower_test::mock;

#[test]
fn services_futures_and_handles_are_send_sync_static() {
    fn check<T: Send + Sync + 'static>() {}
    check::<Breaker<mock::Mock<(), ()>>>();
    check::<
        ResponseFuture<
            mock::future::ResponseFuture<()>,
            seawall::core::classify::DefaultClassifier,
        >,
    >();
    check::<BreakerLayer>();
    check::<BreakerHandle>();
    check::<seawall::breaker::BreakerSet<String>>();
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_does_not_poll_the_inner_service() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<&str, &str, _>(layer);

    inner.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let call = svc.call("first");
    let (_, respond) = inner.next_request().await.unwrap();
    respond.send_error(BoxError::from("down"));
    assert!(call.await.is_err());
    assert_eq!(handle.state(), State::Open);

    // The inner service is not ready (no capacity allowed) and is never polled: the breaker is
    // ready at once and the response future rejects.
    inner.allow(0);
    assert_ready_ok!(svc.poll_ready());
    let err = svc.call("second").await.unwrap_err();
    assert!(seawall::core::error::is::<seawall::breaker::Open>(&*err));
    assert_eq!(err.to_string(), "circuit breaker is open");
    assert!(
        inner.poll_request().is_pending(),
        "nothing reached the inner service"
    );
}

type Mocked = mock::Spawn<Breaker<mock::Mock<&'static str, &'static str>>>;
type MockInner = mock::Handle<&'static str, &'static str>;

/// A breaker with backpressure whose caller was admitted while Closed, its inner service not
/// ready yet; then forced open, the inner service turned ready and the caller polled ready again:
/// it is Ready, its reservation stale.
fn reserved_before_a_force_open() -> (BreakerHandle, Mocked, MockInner) {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<&str, &str, _>(layer);
    inner.allow(0);
    assert_pending!(svc.poll_ready());
    handle.force_open();
    inner.allow(1);
    assert_ready_ok!(
        svc.poll_ready(),
        "a caller whose inner service was polled is not kept waiting"
    );
    (handle, svc, inner)
}

/// Resets the breaker and checks the waiting caller is woken and its next call goes through.
async fn calls_after_a_reset(handle: &BreakerHandle, svc: &mut Mocked, inner: &mut MockInner) {
    handle.reset();
    assert!(svc.is_woken(), "woken by the change");
    assert_ready_ok!(svc.poll_ready());
    let call = svc.call("after reset");
    let (request, respond) = inner.next_request().await.unwrap();
    assert_eq!(request, "after reset");
    respond.send_response("ok");
    assert_eq!(call.await.unwrap(), "ok");
}

/// With backpressure a caller waits for the breaker only until its inner service is polled: a
/// caller admitted while Closed whose inner service was not ready yet when the breaker opened is
/// rejected, as a call made after the breaker changed state is, rather than kept waiting while the
/// inner service may hold a reservation for it (see
/// `backpressure_does_not_wait_holding_the_inner_services_readiness`). Its inner service's
/// readiness is dropped with the call, so polled again it waits, holding nothing.
#[tokio::test(start_paused = true)]
async fn a_reservation_made_before_the_breaker_opened_is_rejected_with_backpressure() {
    let (handle, mut svc, mut inner) = reserved_before_a_force_open();
    assert!(rejected(&svc.call("while open").await));
    assert_eq!(handle.snapshot().rejected, 1);
    assert_pending!(svc.poll_ready(), "polled again, the caller waits");

    calls_after_a_reset(&handle, &mut svc, &mut inner).await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_rejected_for_a_stale_reservation_waits_when_it_polls_again_with_backpressure() {
    let (handle, mut svc, mut inner) = reserved_before_a_force_open();
    // Its readiness dropped, the caller polls again instead of calling: it waits.
    assert_pending!(
        svc.poll_ready(),
        "polled again before calling, the caller waits"
    );
    assert_pending!(svc.poll_ready(), "and again");
    assert_eq!(handle.snapshot().rejected, 0, "no call was rejected");

    calls_after_a_reset(&handle, &mut svc, &mut inner).await;
}

/// An inner service that is never ready and counts how often it is polled.
#[derive(Clone, Default)]
struct NeverReady(Arc<AtomicUsize>);

impl Service<()> for NeverReady {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Poll::Pending
    }

    fn call(&mut self, _: ()) -> Self::Future {
        unreachable!("never ready")
    }
}

#[tokio::test(start_paused = true)]
async fn a_reservation_made_before_the_breaker_opened_stops_polling_the_inner_service() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let inner = NeverReady::default();
    let polls = inner.0.clone();
    let mut svc = task::spawn(());
    let mut breaker = layer.layer(inner);

    svc.enter(|cx, _| assert!(breaker.poll_ready(cx).is_pending()));
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    handle.force_open();
    svc.enter(|cx, _| assert!(matches!(breaker.poll_ready(cx), Poll::Ready(Ok(())))));
    assert_eq!(
        polls.load(Ordering::SeqCst),
        1,
        "an open breaker does not poll the inner service"
    );
    assert!(rejected(&breaker.call(()).await));
    assert_eq!(polls.load(Ordering::SeqCst), 1);
}

/// A breaker that opens on one failure for 5 s, then lets one probe through and gives up on it
/// after 2 s; `eager` applies its deadlines on a timer.
fn probing_for_two_seconds(eager: bool) -> BreakerLayer {
    BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(5))
        .jitter(0.0)
        .permitted_probes(1)
        .max_wait_in_half_open(Duration::from_secs(2))
        .eager_half_open(eager)
        .build()
        .unwrap()
}

/// A probe reserved while the inner service was not ready, whose HalfOpen runs out of time
/// before the inner service is: polled again, the service hands the probe back and asks the
/// breaker, which is open as of the bound, so the call is rejected and the inner service left
/// alone, with or without the eager timer.
#[tokio::test(start_paused = true)]
async fn a_reserved_probe_whose_half_open_ran_out_is_handed_back() {
    for eager in [false, true] {
        let layer = probing_for_two_seconds(eager);
        let handle = layer.handle();
        let mut other = layer.layer(dependency().0);
        assert!(send(&mut other, Call::Fail).await.is_err());
        tokio::time::sleep(Duration::from_secs(5)).await;

        let inner = NeverReady::default();
        let polls = inner.0.clone();
        let mut svc = task::spawn(());
        let mut breaker = layer.layer(inner);
        svc.enter(|cx, _| assert!(breaker.poll_ready(cx).is_pending()));
        let snapshot = handle.snapshot();
        assert_eq!(snapshot.state, State::HalfOpen, "eager: {eager}");
        assert_eq!(snapshot.probes_in_use, 1, "the probe is reserved");

        tokio::time::sleep(Duration::from_secs(2)).await;
        // The eager timer's task, due at the same instant, runs.
        tokio::task::yield_now().await;
        svc.enter(|cx, _| assert!(matches!(breaker.poll_ready(cx), Poll::Ready(Ok(())))));
        let snapshot = handle.snapshot();
        assert_eq!(snapshot.state, State::Open, "eager: {eager}");
        assert_eq!(snapshot.trips, 2);
        // No count of probes in use is checked: the probe is of a HalfOpen that is over, which
        // nothing counts any more (the snapshot reports none outside HalfOpen, and handing back a
        // probe of an earlier generation changes nothing).
        assert_eq!(
            handle.remaining_wait(),
            Some(Duration::from_secs(10)),
            "open as of the bound, for the second (doubled) wait"
        );
        assert!(rejected(&breaker.call(()).await));
        assert_eq!(handle.snapshot().rejected, 1);
        assert_eq!(
            polls.load(Ordering::SeqCst),
            1,
            "the inner service was left alone"
        );

        // Nothing is held over: the next HalfOpen lets its probe through, and it closes.
        drop(breaker);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(send(&mut other, Call::Ok).await.unwrap(), "ok");
        assert_eq!(handle.state(), State::Closed, "eager: {eager}");
    }
}

#[tokio::test(start_paused = true)]
async fn clone_of_an_inner_service_whose_clone_resets_readiness() {
    // ConcurrencyLimit's clone has no permit: calling a fresh clone would panic.
    let layer = BreakerLayer::new();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(ConcurrencyLimit::new(inner, 1));
    svc.ready().await.unwrap();
    let mut other = svc.clone();
    let first = svc.call(Call::SlowOk(10));
    let mut other_ready = task::spawn(other.ready());
    assert_pending!(other_ready.poll(), "the only permit is in use");
    assert_eq!(first.await.unwrap(), "ok");
    assert!(other_ready.is_woken());
    assert_ready!(other_ready.poll()).unwrap();
    drop(other_ready);
    assert_eq!(other.call(Call::Ok).await.unwrap(), "ok");
    assert_eq!(reached.get(), 2);
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_for_the_timer_instead_of_rejecting() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(5))
        .jitter(0.0)
        .permitted_probes(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    let _ = send(&mut svc, Call::Fail).await;
    assert_eq!(handle.state(), State::Open);

    let mut ready = task::spawn(svc.ready());
    assert_pending!(ready.poll());
    tokio::time::sleep(Duration::from_millis(4_999)).await;
    assert!(!ready.is_woken(), "no wake-up before the wait is over");
    assert_pending!(ready.poll());
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(ready.is_woken(), "woken by the timer");
    let svc = assert_ready!(ready.poll()).unwrap();
    assert_eq!(svc.call(Call::Ok).await.unwrap(), "ok");
    assert_eq!(reached.get(), 2);
    assert_eq!(handle.state(), State::Closed);
}

/// Found by seawall's composition laws (a breaker with backpressure over a bulkhead with
/// backpressure): a caller admitted while Closed queued for the only permit of a concurrency
/// limit below; the breaker opened, the permit went to that caller's place in the limit's queue,
/// and the breaker, polled again, kept the caller waiting with the permit held by its place. The
/// HalfOpen probe that came next queued for that permit: neither moved until HalfOpen gave up on
/// its probe and opened again, with a healthy dependency. Now the caller is rejected and its
/// inner service's readiness dropped; the permit goes on to the probe, and the caller's service,
/// polled again, is let through once the probe has closed the breaker.
#[tokio::test(start_paused = true)]
async fn backpressure_does_not_wait_holding_the_inner_services_readiness() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .max_wait_in_half_open(Duration::from_secs(60))
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(ConcurrencyLimit::new(dependency().0, 1));

    // A call that fails after 100 ms holds the limit's only permit.
    let mut first = svc.clone();
    let failing = tokio::spawn(async move { send(&mut first, Call::SlowFail(100)).await });
    tokio::task::yield_now().await;
    // Admitted while Closed, the next caller queues for that permit.
    let mut stale = svc.clone();
    let mut stale_ready = task::spawn(stale.ready());
    assert_pending!(stale_ready.poll());
    // The first call fails: the breaker opens, and the permit goes to the queued caller.
    assert!(failing.await.unwrap().is_err());
    assert_eq!(handle.state(), State::Open);
    assert!(stale_ready.is_woken());
    let ready = assert_ready!(stale_ready.poll(), "not kept waiting").unwrap();
    assert!(rejected(&ready.call(Call::Ok).await));
    drop(stale_ready);

    // Once the wait is over, a probe is admitted, gets the permit and closes the breaker.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut probe = svc.clone();
    let probe = tokio::spawn(async move { send(&mut probe, Call::Ok).await });
    let answer = tokio::time::timeout(Duration::from_secs(1), probe).await;
    assert_eq!(
        answer.expect("the probe goes ahead").unwrap().unwrap(),
        "ok"
    );
    assert_eq!(handle.state(), State::Closed);

    // The rejected caller's service, kept, is let through.
    assert_eq!(send(&mut stale, Call::Ok).await.unwrap(), "ok");
}

/// A call rejected after its permit went stale does not keep what its inner service's readiness
/// holds either: a service that is kept (a `Buffer`'s worker holds one for good) and gets no
/// call for a while must not hold a concurrency limit's permit that another caller (a retry's
/// next attempt) waits for.
#[tokio::test(start_paused = true)]
async fn a_rejected_call_hands_back_the_inner_services_readiness() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(60))
        .jitter(0.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let limit = ConcurrencyLimit::new(dependency().0, 1);
    let mut other = limit.clone();
    let svc = layer.layer(limit);

    // A call that fails after 100 ms holds the limit's only permit; the next caller queues for it.
    let mut first = svc.clone();
    let failing = tokio::spawn(async move { send(&mut first, Call::SlowFail(100)).await });
    tokio::task::yield_now().await;
    let mut kept = svc.clone();
    let mut kept_ready = task::spawn(kept.ready());
    assert_pending!(kept_ready.poll());
    // The breaker opens; the permit goes to the queued caller, whose call is rejected.
    assert!(failing.await.unwrap().is_err());
    let ready = assert_ready!(kept_ready.poll()).unwrap();
    assert!(rejected(&ready.call(Call::Ok).await));
    assert_eq!(handle.state(), State::Open);

    // The rejected caller's service is kept, uncalled: the permit is free for others all the same.
    drop(kept_ready);
    let mut other_ready = task::spawn(other.ready());
    assert_ready!(other_ready.poll()).unwrap();
    drop(other_ready);
    drop(kept);
}

#[tokio::test(start_paused = true)]
async fn backpressure_is_woken_by_a_manual_change_and_a_freed_probe_slot() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .permitted_probes(1)
        .backpressure(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    handle.force_open();
    let mut waiting = svc.clone();
    let mut ready = task::spawn(waiting.ready());
    assert_pending!(ready.poll());
    handle.reset();
    assert!(ready.is_woken());
    assert_ready!(ready.poll()).unwrap();
    drop(ready);
    drop(waiting);

    // HalfOpen with its one slot taken: a waiter is woken when the slot comes back.
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let probe = svc.ready().await.unwrap().call(Call::Hang);
    let mut waiting = svc.clone();
    let mut ready = task::spawn(waiting.ready());
    assert_pending!(ready.poll());
    drop(probe);
    assert!(ready.is_woken());
    assert_ready!(ready.poll()).unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_layer_is_one_breaker() {
    let layer = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let mut a = layer.layer(dependency().0);
    let mut b = layer.layer(dependency().0);
    let mut c = a.clone();
    let _ = send(&mut a, Call::Fail).await;
    assert!(
        rejected(&send(&mut b, Call::Ok).await),
        "another service of the same layer"
    );
    assert!(rejected(&send(&mut c, Call::Ok).await), "a clone");
    assert!(a.handle().same_breaker(&layer.handle()));

    let other = BreakerLayer::builder()
        .consecutive_failures(1)
        .build()
        .unwrap();
    let mut d = other.layer(dependency().0);
    assert_eq!(
        send(&mut d, Call::Ok).await.unwrap(),
        "ok",
        "a second layer is independent"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let layer = BreakerLayer::new();
    let mut svc = layer.layer(dependency().0);
    let err = send(&mut svc, Call::Fail).await.unwrap_err();
    assert_eq!(err.to_string(), "boom");
}

/// A breaker that opens on one failure and, 1 s later, lets one probe through.
fn open_for_a_second_on_a_failure() -> BreakerLayer {
    BreakerLayer::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .permitted_probes(1)
        .jitter(0.0)
        .build()
        .unwrap()
}

/// A service polled ready in HalfOpen holds a probe in flight until it is called or dropped: kept
/// uncalled past `max_wait_in_half_open` (as tower's `ReadyCache` keeps a ready endpoint it has
/// not picked), it lets the bound run out, and the breaker opens again.
#[tokio::test(start_paused = true)]
async fn a_probe_slot_kept_uncalled_lets_the_bound_run_out() {
    let layer = open_for_a_second_on_a_failure();
    let handle = layer.handle();
    let mut svc = layer.layer(dependency().0);
    let _ = send(&mut svc, Call::Fail).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    svc.ready().await.unwrap();
    assert_eq!(handle.snapshot().probes_in_use, 1);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(handle.state(), State::Open);
    assert!(rejected(&svc.call(Call::Ok).await));
}

/// An error from the inner service's `poll_ready` is passed up as it is, not classified; the
/// probe slot reserved for the call stays taken (its bound running) until the service is dropped,
/// which hands it back.
#[tokio::test(start_paused = true)]
async fn a_readiness_error_is_passed_up_and_its_probe_slot_handed_back_on_drop() {
    let layer = open_for_a_second_on_a_failure();
    let handle = layer.handle();
    let (mut svc, mut inner) = mock::spawn_layer::<&str, &str, _>(layer);
    inner.allow(1);
    assert_ready_ok!(svc.poll_ready());
    let call = svc.call("trips");
    let (_, respond) = inner.next_request().await.unwrap();
    respond.send_error(BoxError::from("down"));
    assert!(call.await.is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;

    inner.send_error("not ready");
    let err = assert_ready_err!(svc.poll_ready());
    assert_eq!(err.to_string(), "not ready");
    let snapshot = handle.snapshot();
    assert_eq!(snapshot.state, State::HalfOpen);
    assert_eq!(
        (snapshot.probes_in_use, snapshot.probe_results),
        (1, 0),
        "the slot is reserved, the error not classified"
    );
    assert_eq!(handle.remaining_wait(), Some(Duration::from_secs(30)));
    drop(svc);
    let snapshot = handle.snapshot();
    assert_eq!(
        (snapshot.state, snapshot.probes_in_use),
        (State::HalfOpen, 0)
    );
    assert_eq!(handle.remaining_wait(), None, "no probe in flight to bound");
}

#[tokio::test(start_paused = true)]
async fn polling_ready_again_after_a_rejection_asks_the_breaker_again() {
    let layer = open_for_a_second_on_a_failure();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let mut svc = layer.layer(inner);
    assert!(send(&mut svc, Call::Fail).await.is_err());
    // Polled ready while Open: the call would be rejected...
    svc.ready().await.unwrap();
    let before = handle.snapshot().rejected;
    // ...but the breaker is reset before the call, and the caller polls ready again.
    handle.reset();
    svc.ready().await.unwrap();
    assert_eq!(svc.call(Call::Ok).await.unwrap(), "ok");
    assert_eq!(reached.get(), 2);
    assert_eq!(
        handle.snapshot().rejected,
        before,
        "no rejection counted twice"
    );

    // The same once the Open wait is over (the breaker goes half-open for the call).
    assert!(send(&mut svc, Call::Fail).await.is_err());
    svc.ready().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    svc.ready().await.unwrap();
    assert_eq!(svc.call(Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

/// A rejection is an error of the response future, so `Buffer` (whose worker fails for good on an
/// error from `poll_ready`) keeps serving once the breaker lets calls through again.
#[tokio::test(start_paused = true)]
async fn behind_buffer_a_rejection_does_not_poison_the_buffer() {
    let layer = open_for_a_second_on_a_failure();
    let handle = layer.handle();
    let (inner, reached) = dependency();
    let svc: BoxCloneService<Call, &'static str, BoxError> =
        BoxCloneService::new(Buffer::new(layer.layer(inner), 4));

    assert_eq!(svc.clone().oneshot(Call::Ok).await.unwrap(), "ok");

    handle.force_open();
    let err = svc.clone().oneshot(Call::Ok).await.unwrap_err();
    assert!(
        seawall::core::error::find::<seawall::breaker::Open>(&*err).is_some(),
        "{err}"
    );
    handle.force_closed();
    assert_eq!(svc.clone().oneshot(Call::Ok).await.unwrap(), "ok");

    // Tripped by a failure rather than by hand, and recovered by the wait and a probe.
    handle.reset();
    assert_eq!(
        svc.clone()
            .oneshot(Call::Fail)
            .await
            .unwrap_err()
            .to_string(),
        "boom"
    );
    assert!(rejected(&svc.clone().oneshot(Call::Ok).await));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(svc.clone().oneshot(Call::Ok).await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(svc.oneshot(Call::Ok).await.unwrap(), "ok");
    assert_eq!(
        reached.get(),
        5,
        "the rejected calls never reached the dependency"
    );
}
