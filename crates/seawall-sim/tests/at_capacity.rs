//! A backend at its `max_concurrency` either queues the calls beyond it where the client cannot
//! see them (`at_capacity = "queue"`), or reports itself not ready until a worker is free, as
//! tower's `ConcurrencyLimit` around it does (`"not_ready"`).

use seawall_sim::{
    backend::{AtCapacity, BackendSpec, DispatchLog, SimBackend, SimRequest},
    dist::Latency,
};
use std::{future::poll_fn, sync::Arc, task::Poll, time::Duration};
use tokio::time::Instant;
use tower::Service;

fn backend(at_capacity: AtCapacity) -> SimBackend {
    let mut spec = BackendSpec::new(Latency::Constant { ms: 10.0 });
    spec.max_concurrency = Some(1);
    spec.at_capacity = at_capacity;
    SimBackend::new(0, spec, 1, Instant::now(), Arc::new(DispatchLog::default()))
}

fn request(id: u64) -> SimRequest {
    SimRequest {
        id,
        key: id,
        deadline: None,
    }
}

/// Whether `svc` is ready now, without waiting.
async fn ready_now(svc: &mut SimBackend) -> bool {
    poll_fn(|cx| Poll::Ready(svc.poll_ready(cx)))
        .await
        .is_ready()
}

#[tokio::test(start_paused = true)]
async fn a_full_endpoint_is_not_ready_until_its_worker_is_free() {
    let backend = backend(AtCapacity::NotReady);
    let mut first = backend.clone();
    assert!(ready_now(&mut first).await);
    let call = first.call(request(0));
    // The one worker is taken: another handle on the backend is not ready.
    let mut second = backend.clone();
    assert!(!ready_now(&mut second).await);
    let start = Instant::now();
    call.await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(10));
    assert!(ready_now(&mut second).await);
    // A clone does not share the worker its original reserved.
    let mut third = second.clone();
    assert!(!ready_now(&mut third).await);
    drop(second);
    assert!(ready_now(&mut third).await);
}

#[tokio::test(start_paused = true)]
async fn a_queueing_endpoint_is_always_ready_and_serves_in_turn() {
    let backend = backend(AtCapacity::Queue);
    let mut calls = Vec::new();
    for id in 0..3 {
        let mut handle = backend.clone();
        assert!(ready_now(&mut handle).await);
        calls.push(handle.call(request(id)));
    }
    let start = Instant::now();
    for call in calls {
        call.await.unwrap();
    }
    // One worker: 10 ms each, one after another.
    assert_eq!(start.elapsed(), Duration::from_millis(30));
}
