//! A timeout, a retry and a hedge take requests of ordinary std types (`u32`, `String`, `Vec`, …)
//! as tower's own layers do: those carry no deadline, so only a total timeout applies. An `Arc` or
//! `Rc` reads what the request it shares carries and takes no writes.

use seawall::{
    core::deadline::{PerTryTimeoutOverride, RequestDeadline, TimeoutOverride},
    retry::{Backoff, HedgeLayer, RetryBudget, RetryLayer},
    timeout::Elapsed,
    BoxError, ServiceBuilderExt,
};
use std::{
    rc::Rc,
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::{sleep, Instant};
use tower::{service_fn, ServiceBuilder, ServiceExt};

#[tokio::test(start_paused = true)]
async fn a_timeout_takes_a_u32() {
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_millis(100))
        .service(service_fn(|n: u32| async move {
            sleep(Duration::from_millis(u64::from(n))).await;
            Ok::<_, BoxError>(n * 2)
        }));

    assert_eq!(client.clone().oneshot(10).await.unwrap(), 20);
    let start = Instant::now();
    let error = client.oneshot(500).await.unwrap_err();
    assert!(seawall::core::error::is::<Elapsed>(&*error));
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn a_retry_under_a_timeout_takes_a_u32() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let retry = RetryLayer::builder()
        .max_attempts(3)
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(RetryBudget::unlimited())
        .seed(7)
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(1))
        .with_retry(retry)
        .service(service_fn(move |n: u32| {
            let attempt = seen.fetch_add(1, Ordering::SeqCst);
            async move {
                if attempt < 2 {
                    Err::<u32, BoxError>("flaky".into())
                } else {
                    Ok(n + 1)
                }
            }
        }));

    assert_eq!(client.oneshot(41).await.unwrap(), 42);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_hedge_takes_a_string() {
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let hedge = HedgeLayer::builder()
        .delay(Duration::from_millis(50))
        .max_hedges(1)
        .budget(RetryBudget::unlimited())
        .build()
        .unwrap();
    let client = ServiceBuilder::new()
        .with_timeout(Duration::from_secs(1))
        .with_hedge(hedge)
        .service(service_fn(move |query: String| {
            // The first copy hangs; the hedge answers.
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    sleep(Duration::from_secs(10)).await;
                }
                Ok::<_, BoxError>(query.len())
            }
        }));

    let start = Instant::now();
    assert_eq!(client.oneshot("rust".to_string()).await.unwrap(), 4);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(50) && took < Duration::from_millis(60),
        "answered by the hedge, {took:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[test]
fn std_types_carry_no_deadline() {
    fn none<R: RequestDeadline>(mut request: R) {
        request.set_deadline(Instant::now());
        assert_eq!(request.deadline(), None);
        assert_eq!(request.timeout_override(), None);
        assert_eq!(request.per_try_timeout_override(), None);
    }
    none(());
    none(true);
    none('x');
    none(7u8);
    none(7u16);
    none(7u32);
    none(7u64);
    none(7u128);
    none(7usize);
    none(-7i8);
    none(-7i16);
    none(-7i32);
    none(-7i64);
    none(-7i128);
    none(-7isize);
    none(String::from("GET /users"));
    none("GET /users");
    none(vec![1u8, 2, 3]);
    none(Arc::new(5u32));
    none(Rc::new(5u32));
    none(Arc::<str>::from("GET /users"));
    none(Rc::<[u8]>::from(vec![1u8, 2, 3]));
}

#[test]
fn shared_requests_read_what_they_share_and_take_no_writes() {
    fn reads_only<R: RequestDeadline>(mut shared: R, deadline: Instant) {
        assert_eq!(shared.deadline(), Some(deadline));
        assert_eq!(shared.timeout_override(), Some(Duration::from_secs(30)));
        assert_eq!(
            shared.per_try_timeout_override(),
            Some(Duration::from_secs(2))
        );
        // Nothing can be written into a shared request: a write changes nothing.
        shared.set_deadline(deadline - Duration::from_secs(1));
        assert_eq!(shared.deadline(), Some(deadline));
        shared.set_deadline(deadline + Duration::from_secs(1));
        assert_eq!(shared.deadline(), Some(deadline));
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    let request = || {
        let mut request = http::Request::new(());
        request.set_deadline(deadline);
        request
            .extensions_mut()
            .insert(TimeoutOverride(Duration::from_secs(30)));
        request
            .extensions_mut()
            .insert(PerTryTimeoutOverride(Duration::from_secs(2)));
        request
    };
    let shared = Arc::new(request());
    reads_only(shared.clone(), deadline);
    assert_eq!(
        shared.deadline(),
        Some(deadline),
        "the shared request is unchanged"
    );
    reads_only(Rc::new(request()), deadline);
    // A shared request that carries nothing reads nothing.
    let mut bare = Arc::new(http::Request::new(()));
    bare.set_deadline(deadline);
    assert_eq!(bare.deadline(), None);
    assert_eq!(bare.timeout_override(), None);
    assert_eq!(bare.per_try_timeout_override(), None);
}
