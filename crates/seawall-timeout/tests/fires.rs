//! The timeout fires in virtual time and cancels the inner call at that moment.

use seawall_timeout::{Elapsed, TimeoutLayer};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::{sleep, Instant};
use tower::{service_fn, Layer, ServiceExt};

struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn fires_at_the_deadline_and_drops_the_inner_future() {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = dropped.clone();
    let inner = service_fn(move |_: http::Request<()>| {
        let guard = SetOnDrop(flag.clone());
        async move {
            let _guard = guard;
            sleep(Duration::from_secs(60)).await;
            Ok::<_, std::io::Error>("late")
        }
    });
    let mut svc = TimeoutLayer::new(Duration::from_millis(250)).layer(inner);

    let start = Instant::now();
    svc.ready().await.unwrap();
    let mut fut = std::pin::pin!(tower::Service::call(&mut svc, http::Request::new(())));
    let err = fut.as_mut().await.unwrap_err();
    assert!(err.is::<Elapsed>(), "{err}");
    assert_eq!(err.to_string(), "request timed out");
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    // The inner future is gone as soon as the timeout fired, while `fut` itself is still alive.
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test(start_paused = true)]
async fn answers_in_time_pass_through() {
    let inner = service_fn(|_: http::Request<()>| async {
        sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>("on time")
    });
    let svc = TimeoutLayer::new(Duration::from_millis(250)).layer(inner);
    assert_eq!(
        svc.oneshot(http::Request::new(())).await.unwrap(),
        "on time"
    );
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_untouched() {
    let inner = service_fn(|_: http::Request<()>| async {
        Err::<(), _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        ))
    });
    let svc = TimeoutLayer::new(Duration::from_secs(1)).layer(inner);
    let err = svc.oneshot(http::Request::new(())).await.unwrap_err();
    let io = err
        .downcast_ref::<std::io::Error>()
        .expect("inner error type kept");
    assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_lets_only_ready_calls_through() {
    let ready = service_fn(|_: http::Request<()>| async { Ok::<_, std::io::Error>(1) });
    let svc = TimeoutLayer::new(Duration::ZERO).layer(ready);
    assert_eq!(svc.oneshot(http::Request::new(())).await.unwrap(), 1);

    let yields = service_fn(|_: http::Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, std::io::Error>(1)
    });
    let svc = TimeoutLayer::new(Duration::ZERO).layer(yields);
    assert!(svc
        .oneshot(http::Request::new(()))
        .await
        .unwrap_err()
        .is::<Elapsed>());
}

#[tokio::test(start_paused = true)]
async fn max_timeout_does_not_overflow() {
    let inner = service_fn(|_: http::Request<()>| async {
        sleep(Duration::from_secs(3600)).await;
        Ok::<_, std::io::Error>("an hour later")
    });
    let svc = TimeoutLayer::new(Duration::MAX).layer(inner);
    assert_eq!(
        svc.oneshot(http::Request::new(())).await.unwrap(),
        "an hour later"
    );
}

#[test]
fn elapsed_is_zero_sized() {
    assert_eq!(std::mem::size_of::<Elapsed>(), 0);
}
