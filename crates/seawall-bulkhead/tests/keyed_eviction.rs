//! The keyed rate limiter: one budget per key, bounded memory, idle keys evicted.

use seawall_bulkhead::ratelimit::{Limited, RateLimitLayer};
use std::time::Duration;
use tower::{service_fn, Layer, ServiceExt};

fn echo() -> impl tower::Service<
    (u64, u32),
    Response = u32,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<u32, std::io::Error>> + Send,
> + Clone {
    service_fn(|(_, n): (u64, u32)| async move { Ok::<_, std::io::Error>(n) })
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_budget() {
    let layer = RateLimitLayer::builder()
        .rate(2, Duration::from_secs(1))
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(echo());
    for tenant in [1, 2, 3] {
        service.clone().oneshot((tenant, 0)).await.unwrap();
        service.clone().oneshot((tenant, 1)).await.unwrap();
        let err = service.clone().oneshot((tenant, 2)).await.unwrap_err();
        let limited = err.downcast_ref::<Limited>().unwrap();
        assert_eq!(limited.retry_after(), Duration::from_millis(500));
    }
    assert_eq!(layer.tracked_keys(), 3);
    tokio::time::advance(Duration::from_millis(500)).await;
    service.clone().oneshot((1, 3)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn memory_is_bounded_whatever_the_keys() {
    let layer = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .max_keys(64)
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(echo());
    // 10 000 distinct keys within one instant: every key is busy, yet the table stays bounded.
    for key in 0..10_000 {
        service.clone().oneshot((key, 0)).await.unwrap();
        assert!(layer.tracked_keys() <= 64, "{} keys", layer.tracked_keys());
    }
    assert_eq!(layer.tracked_keys(), 64, "the table is used to its bound");
}

#[tokio::test(start_paused = true)]
async fn large_tables_are_bounded_too() {
    let layer = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .max_keys(2_048)
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(echo());
    for key in 0..20_000 {
        service.clone().oneshot((key, 0)).await.unwrap();
    }
    assert!(
        layer.tracked_keys() <= 2_048,
        "{} keys",
        layer.tracked_keys()
    );
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_evicted_before_busy_ones() {
    let layer = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(10))
        .max_keys(16)
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(echo());
    for key in 0..16 {
        service.clone().oneshot((key, 0)).await.unwrap();
    }
    assert_eq!(layer.tracked_keys(), 16);

    // Everything goes idle; then keys 0..8 are used again, so 8..16 stay idle.
    tokio::time::advance(Duration::from_secs(11)).await;
    for key in 0..8 {
        service.clone().oneshot((key, 1)).await.unwrap();
    }
    assert_eq!(layer.tracked_keys(), 16);

    // A new key finds the table full: the 8 idle keys go, the busy ones stay.
    tokio::time::advance(Duration::from_millis(500)).await;
    service.clone().oneshot((1_000, 0)).await.unwrap();
    assert_eq!(layer.tracked_keys(), 9);
    for key in 0..8 {
        let err = service.clone().oneshot((key, 2)).await.unwrap_err();
        assert!(err.is::<Limited>(), "busy key {key} kept its spent budget");
    }

    // Fill up with more busy keys; when nothing is idle, the key closest to idle (0..8, used
    // earliest) makes room, and the later busy key 1 000 stays.
    tokio::time::advance(Duration::from_millis(500)).await;
    for key in 2_000..2_010 {
        service.clone().oneshot((key, 0)).await.unwrap();
        assert!(layer.tracked_keys() <= 16);
    }
    assert_eq!(layer.tracked_keys(), 16);
    let err = service.clone().oneshot((1_000, 1)).await.unwrap_err();
    assert!(err.is::<Limited>(), "key 1 000 was not evicted");
}

/// 3 a second, keyed by the first element, in a table of `max_keys`.
fn three_a_second(
    max_keys: usize,
) -> seawall_bulkhead::ratelimit::KeyedRateLimitLayer<u64, impl Fn(&(u64, u32)) -> u64> {
    RateLimitLayer::builder()
        .rate(3, Duration::from_secs(1))
        .max_keys(max_keys)
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap()
}

/// Calls for `key` at this instant until one is rejected; how many got through. At most 1 000
/// calls: a limiter that admits that many at once admits without limit.
async fn admitted_now<S>(service: &S, key: u64) -> u32
where
    S: tower::Service<(u64, u32), Response = u32, Error = seawall_core::BoxError> + Clone,
{
    for n in 0..1_000 {
        if service.clone().oneshot((key, n)).await.is_err() {
            return n;
        }
    }
    panic!("1 000 calls for key {key} admitted at one instant");
}

#[tokio::test(start_paused = true)]
async fn eviction_of_idle_keys_loses_nothing() {
    // The same calls against a table of one key and a table with room to spare.
    let (small, roomy) = (three_a_second(1), three_a_second(1_000));
    let (evicting, control) = (small.layer(echo()), roomy.layer(echo()));
    for service in [&evicting, &control] {
        assert_eq!(admitted_now(service, 7).await, 3);
    }
    // 3 a second is an interval of 333 333 334 ns (rounded up), so the burst left key 7's TAT at
    // 1 000 000 002 ns: it is idle from then on, not at 1 s.
    let idle = Duration::from_nanos(3 * 1_000_000_000u64.div_ceil(3));
    tokio::time::advance(idle).await;
    // Key 7 is idle: key 8 takes its place ...
    evicting.clone().oneshot((8, 0)).await.unwrap();
    assert_eq!(small.tracked_keys(), 1);
    // ... and key 7, back as a fresh key, has exactly the budget it would have had anyway.
    let kept = admitted_now(&control, 7).await;
    assert_eq!(kept, 3, "the whole burst is back once idle");
    assert_eq!(admitted_now(&evicting, 7).await, kept);
}

/// The documented cost of a table too small for its busy keys: when every key is busy, the one
/// closest to idle goes, and comes back with a whole budget before its own would be whole again.
#[tokio::test(start_paused = true)]
async fn evicting_a_busy_key_gives_it_a_fresh_budget_early() {
    let (small, roomy) = (three_a_second(1), three_a_second(1_000));
    let (evicting, control) = (small.layer(echo()), roomy.layer(echo()));
    for service in [&evicting, &control] {
        assert_eq!(admitted_now(service, 7).await, 3);
    }
    // 2 ns before key 7 is idle: two of its three permits are back, not the third.
    tokio::time::advance(Duration::from_secs(1)).await;
    evicting.clone().oneshot((8, 0)).await.unwrap();
    assert_eq!(small.tracked_keys(), 1, "busy key 7 made room for key 8");
    assert_eq!(admitted_now(&control, 7).await, 2);
    assert_eq!(admitted_now(&evicting, 7).await, 3, "a fresh budget");
}

/// A waiter dropped after its key was evicted and made afresh gives nothing back to the new
/// budget: its slot was in the old one, and the new one's slots are all its own.
#[tokio::test(start_paused = true)]
async fn a_waiter_of_an_evicted_key_gives_nothing_to_its_successor() {
    let layer = RateLimitLayer::builder()
        .rate(10, Duration::from_secs(1))
        .burst(1)
        .max_wait(Duration::from_secs(1))
        .max_keys(1)
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let service = layer.layer(echo());
    service.clone().oneshot((7, 0)).await.unwrap();
    let mut old = tokio_test::task::spawn(service.clone().oneshot((7, 1)));
    tokio_test::assert_pending!(old.poll());
    // Key 8 takes the only place; key 7 comes back with a fresh budget and a waiter at 100 ms.
    service.clone().oneshot((8, 0)).await.unwrap();
    service.clone().oneshot((7, 2)).await.unwrap();
    let start = tokio::time::Instant::now();
    let call = service.clone().oneshot((7, 3));
    let new = tokio::spawn(async move { call.await.map(|_| start.elapsed()) });
    tokio::task::yield_now().await;
    drop(old);
    // The slot at 100 ms is the new waiter's: the next call waits for 200 ms.
    service.clone().oneshot((7, 4)).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(new.await.unwrap().unwrap(), Duration::from_millis(100));
}

/// A table of 1 000 keys is 15 shards of 66, and a shard makes room at its own share whatever the
/// others hold: the table never holds more than 990 keys, the `max_keys` its `Debug` shows.
#[tokio::test(start_paused = true)]
async fn max_keys_is_rounded_down_to_whole_shards() {
    let layer = RateLimitLayer::builder()
        .rate(1, Duration::from_secs(1))
        .max_keys(1_000)
        .build_keyed(|req: &(u64, u32)| req.0)
        .unwrap();
    let debug = format!("{layer:?}");
    assert!(debug.contains("max_keys: 990"), "{debug}");
    let service = layer.layer(echo());
    // Every key busy, 5 000 of them: each shard fills to its share.
    for key in 0..5_000 {
        service.clone().oneshot((key, 0)).await.unwrap();
    }
    assert_eq!(layer.tracked_keys(), 990);
}
