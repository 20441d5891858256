//! The rate limiter's handles, in virtual time: `available` counts down with calls, refills at
//! the rate and never exceeds the burst; `next_permit_in` is when the next call is admitted, as a
//! rejected call's `retry_after` says; a permit given back by a dropped waiter counts; reading
//! takes nothing; one handle sees every clone of the layer and of its services; the keyed handle
//! reads one key's budget.

use seawall_bulkhead::ratelimit::{Limited, RateLimitHandle, RateLimitLayer};
use seawall_core::error::find;
use std::time::Duration;
use tower::{service_fn, Layer, Service, ServiceExt};

fn echo() -> impl Service<
    u32,
    Response = u32,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<u32, std::io::Error>> + Send,
> + Clone {
    service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) })
}

/// Sends one call through `service`: `Ok(())` if admitted, else the rejection's `retry_after`.
async fn call<S>(service: &S) -> Result<(), Duration>
where
    S: Service<u32, Error = seawall_core::BoxError> + Clone,
{
    match service.clone().oneshot(0).await {
        Ok(_) => Ok(()),
        Err(err) => Err(find::<Limited>(&*err).expect("a rate limit").retry_after()),
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

#[tokio::test(start_paused = true)]
async fn available_counts_down_with_calls_and_refills_at_the_rate() {
    // One permit every 250 ms, 4 at once.
    let layer = RateLimitLayer::builder().rate(4, ms(1000)).build().unwrap();
    let handle = layer.handle();
    let service = layer.layer(echo());
    assert_eq!((handle.available(), handle.next_permit_in()), (4, ms(0)));
    for left in (0..4).rev() {
        call(&service).await.unwrap();
        assert_eq!(handle.available(), left);
    }
    assert_eq!(handle.next_permit_in(), ms(250));
    tokio::time::advance(ms(249)).await;
    assert_eq!((handle.available(), handle.next_permit_in()), (0, ms(1)));
    tokio::time::advance(ms(1)).await;
    assert_eq!((handle.available(), handle.next_permit_in()), (1, ms(0)));
    tokio::time::advance(ms(500)).await;
    assert_eq!(handle.available(), 3);
    // A long quiet spell fills the burst, no more.
    tokio::time::advance(Duration::from_secs(3600)).await;
    assert_eq!((handle.available(), handle.next_permit_in()), (4, ms(0)));
    // What it said is what calls find.
    for _ in 0..4 {
        call(&service).await.unwrap();
    }
    assert_eq!(call(&service).await, Err(ms(250)));
}

#[tokio::test(start_paused = true)]
async fn next_permit_in_is_when_the_next_call_is_admitted() {
    // One permit every 300 ms, 2 at once: calls spaced unevenly leave the budget part full.
    let layer = RateLimitLayer::builder()
        .rate(10, ms(3000))
        .burst(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(echo());
    let (mut admitted, mut rejected) = (0, 0);
    for step in 0..60u64 {
        // Calls until one is rejected (the burst at most, then one).
        for _ in 0..3 {
            let expected = handle.next_permit_in();
            match call(&service).await {
                Ok(()) => {
                    assert_eq!(expected, ms(0), "step {step}: admitted");
                    admitted += 1;
                }
                Err(retry_after) => {
                    assert_eq!(expected, retry_after, "step {step}: rejected");
                    assert_eq!(handle.available(), 0);
                    rejected += 1;
                    if step % 3 == 0 {
                        // One nanosecond before the permit is free, none is; at its time, one is.
                        tokio::time::advance(retry_after - Duration::from_nanos(1)).await;
                        assert_eq!(handle.next_permit_in(), Duration::from_nanos(1));
                        assert!(call(&service).await.is_err(), "step {step}: too early");
                        tokio::time::advance(Duration::from_nanos(1)).await;
                        assert_eq!((handle.available(), handle.next_permit_in()), (1, ms(0)));
                        call(&service).await.unwrap();
                        admitted += 1;
                    }
                    break;
                }
            }
        }
        // Uneven gaps, shorter and longer than the interval.
        tokio::time::advance(ms(step * 137 % 700)).await;
    }
    assert!(
        admitted > 20 && rejected > 20,
        "{admitted} admitted, {rejected} rejected"
    );
}

#[tokio::test(start_paused = true)]
async fn reading_takes_no_permit() {
    let layer = RateLimitLayer::builder()
        .rate(10, ms(1000))
        .burst(3)
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(echo());
    for _ in 0..1_000 {
        assert_eq!(handle.available(), 3);
        assert_eq!(handle.next_permit_in(), ms(0));
    }
    for _ in 0..3 {
        call(&service).await.unwrap();
    }
    assert_eq!(call(&service).await, Err(ms(100)));
}

#[tokio::test(start_paused = true)]
async fn waiters_reserve_permits_and_a_dropped_one_gives_its_back() {
    // One permit every 100 ms, one at once, waiting up to a second.
    let layer = RateLimitLayer::builder()
        .rate(10, ms(1000))
        .burst(1)
        .max_wait(ms(1000))
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut service = layer.layer(echo());
    call(&service).await.unwrap();
    // Two waiters, due at 100 ms and 200 ms.
    service.ready().await.unwrap();
    let first = service.call(1);
    service.ready().await.unwrap();
    let second = service.call(2);
    assert_eq!((handle.available(), handle.next_permit_in()), (0, ms(300)));
    // The first gives its permit back; it is the next one free.
    drop(first);
    assert_eq!((handle.available(), handle.next_permit_in()), (0, ms(100)));
    tokio::time::advance(ms(100)).await;
    assert_eq!((handle.available(), handle.next_permit_in()), (1, ms(0)));
    // A call takes it at once, before the second waiter.
    let taken = tokio::time::timeout(ms(0), service.clone().oneshot(3)).await;
    assert_eq!(taken.unwrap().unwrap(), 3);
    assert_eq!((handle.available(), handle.next_permit_in()), (0, ms(200)));
    assert_eq!(second.await.unwrap(), 2);
    assert_eq!((handle.available(), handle.next_permit_in()), (0, ms(100)));
}

#[tokio::test(start_paused = true)]
async fn one_handle_sees_every_clone_of_the_layer_and_its_services() {
    let layer = RateLimitLayer::builder()
        .rate(6, ms(1000))
        .name("quota")
        .build()
        .unwrap();
    let handle = layer.handle();
    let other_handle: RateLimitHandle = layer.clone().handle().clone();
    let a = layer.layer(echo());
    let b = layer.clone().layer(echo());
    for (n, service) in [&a, &b, &a.clone(), &b.clone()].into_iter().enumerate() {
        call(service).await.unwrap();
        assert_eq!(handle.available(), 5 - n as u64);
        assert_eq!(other_handle.available(), 5 - n as u64);
    }
    assert_eq!(handle.name().as_str(), "quota");
    let debug = format!("{handle:?}");
    assert!(debug.contains("quota"), "{debug}");
}

#[tokio::test(start_paused = true)]
async fn the_keyed_handle_reads_one_key_s_budget() {
    let layer = RateLimitLayer::builder()
        .rate(2, ms(1000))
        .name("per-key")
        .build_keyed(|n: &u32| *n)
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(
        |n: u32| async move { Ok::<_, std::io::Error>(n) },
    ));
    let call = |key: u32| {
        let service = service.clone();
        async move {
            match service.oneshot(key).await {
                Ok(_) => Ok(()),
                Err(err) => Err(find::<Limited>(&*err).unwrap().retry_after()),
            }
        }
    };
    // A key not seen yet has a whole budget, and reading it tracks nothing.
    assert_eq!(
        (handle.available(&1), handle.next_permit_in(&1)),
        (2, ms(0))
    );
    assert_eq!(layer.tracked_keys(), 0);
    call(1).await.unwrap();
    assert_eq!(handle.available(&1), 1);
    call(1).await.unwrap();
    assert_eq!(
        (handle.available(&1), handle.next_permit_in(&1)),
        (0, ms(500))
    );
    assert_eq!(call(1).await, Err(ms(500)));
    // Another key's budget is its own.
    assert_eq!(
        (handle.available(&2), handle.next_permit_in(&2)),
        (2, ms(0))
    );
    tokio::time::advance(ms(500)).await;
    assert_eq!(
        (handle.available(&1), handle.next_permit_in(&1)),
        (1, ms(0))
    );
    tokio::time::advance(ms(60_000)).await;
    assert_eq!(handle.available(&1), 2, "never more than the burst");
    assert_eq!(layer.tracked_keys(), 1);
    assert_eq!(handle.name().as_str(), "per-key");
    let debug = format!("{:?}", handle.clone());
    assert!(debug.contains("per-key"), "{debug}");
}
