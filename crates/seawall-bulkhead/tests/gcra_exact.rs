//! GCRA in virtual time: exactly the configured permits per period, burst included, and never more
//! when the interval does not divide evenly; waiting up to `max_wait`, each waiter in its own slot;
//! `Limited` carries when to retry; cancelled waiters give their permit back.

use seawall_bulkhead::ratelimit::{
    Limited, RateLimitConfigBuilder, RateLimitEvent, RateLimitLayer,
};
use seawall_core::error::find;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{limit::ConcurrencyLimit, service_fn, Layer, Service, ServiceExt};
use tower_test::mock;

/// A limiter of `permits` per `period`, `burst` at once (a period's worth when `None`).
fn rate(permits: u64, period: Duration, burst: Option<u64>) -> RateLimitConfigBuilder {
    let builder = RateLimitLayer::builder().rate(permits, period);
    match burst {
        Some(burst) => builder.burst(burst),
        None => builder,
    }
}

/// [`rate`], built, waiting in `poll_ready` for its permit when `backpressure`.
fn limiter(
    permits: u64,
    period: Duration,
    burst: Option<u64>,
    backpressure: bool,
) -> RateLimitLayer {
    rate(permits, period, burst)
        .backpressure(backpressure)
        .build()
        .unwrap()
}

fn echo() -> impl Service<
    u32,
    Response = u32,
    Error = std::io::Error,
    Future = impl std::future::Future<Output = Result<u32, std::io::Error>> + Send,
> + Clone {
    service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) })
}

/// More calls admitted at one instant than any test's burst: a limiter that admits this many
/// admits without limit.
const MAX_AT_ONCE: u32 = 1_000;

/// Calls `service` until one is rejected, at most [`MAX_AT_ONCE`] times; returns how many got
/// through.
async fn admitted_at_once<S>(service: &S, request: u32) -> u32
where
    S: Service<u32> + Clone,
{
    for n in 0..MAX_AT_ONCE {
        if service.clone().oneshot(request).await.is_err() {
            return n;
        }
    }
    panic!("{MAX_AT_ONCE} calls admitted at one instant");
}

/// Tries a call every millisecond for `seconds`; returns how many got through in each second.
async fn admitted_per_second(layer: &RateLimitLayer, seconds: u32) -> Vec<u32> {
    let service = layer.layer(echo());
    let start = Instant::now();
    let mut per_second = vec![0; seconds as usize];
    for ms in 0..seconds * 1000 {
        tokio::time::sleep_until(start + Duration::from_millis(ms as u64)).await;
        // Greedy: as many calls as get through at this instant.
        per_second[(ms / 1000) as usize] += admitted_at_once(&service, ms).await;
    }
    per_second
}

/// Calls as greedily as possible (each retry exactly at `retry_after`) and returns the times,
/// relative to the start, of every call admitted before `until`. At most `max_calls` calls are
/// made: a `retry_after` of zero would otherwise retry at the same instant forever.
async fn greedy_admissions(
    layer: &RateLimitLayer,
    until: Duration,
    max_calls: usize,
) -> Vec<Duration> {
    let service = layer.layer(echo());
    let start = Instant::now();
    let mut admitted = Vec::new();
    for _ in 0..max_calls {
        if start.elapsed() >= until {
            return admitted;
        }
        match service.clone().oneshot(0).await {
            Ok(_) => admitted.push(start.elapsed()),
            Err(err) => {
                let limited = find::<Limited>(&*err).expect("a Limited error");
                tokio::time::advance(limited.retry_after()).await;
            }
        }
    }
    panic!(
        "{max_calls} calls in {:?} of {until:?}: {} admitted",
        start.elapsed(),
        admitted.len()
    );
}

#[tokio::test(start_paused = true)]
async fn exactly_the_rate_per_period_after_the_burst() {
    let layer = limiter(10, Duration::from_secs(1), None, false);
    let counts = admitted_per_second(&layer, 5).await;
    // The first second: the burst of 10 at once plus the 9 refills due within it (100 ms apart,
    // the 10th lands at 1.0 s); then exactly 10 a second.
    assert_eq!(counts, vec![19, 10, 10, 10, 10]);
}

/// The most of `times` in any half-open window `[t, t + window)`: a window holding the most
/// starts at one of them.
fn most_in_any_window(times: &[Duration], window: Duration) -> usize {
    times
        .iter()
        .map(|&start| {
            times
                .iter()
                .filter(|&&t| start <= t && t < start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// How many of `times` fall in each whole second from the start, for `seconds` seconds.
fn per_second(times: &[Duration], seconds: usize) -> Vec<usize> {
    let mut counts = vec![0; seconds];
    for t in times {
        counts[t.as_secs() as usize] += 1;
    }
    counts
}

/// The headroom the module docs give a quota a server enforces, 10 a second as
/// `rate(10, 1010 ms)`, keeps to it only with `burst(1)`: the default burst of 10 lets the refills
/// due within the first second through as well. With `burst(1)` the greedy calls come 101 ms
/// apart: 10 in each second, and never more than 10 in any sliding second.
#[tokio::test(start_paused = true)]
async fn headroom_for_a_strict_quota_needs_a_burst_of_one() {
    let period = Duration::from_millis(1_010);
    let default_burst = admitted_per_second(&limiter(10, period, None, false), 3).await;
    assert_eq!(default_burst[0], 19, "{default_burst:?}");
    let three_seconds = Duration::from_secs(3);
    let burst_one =
        greedy_admissions(&limiter(10, period, Some(1), false), three_seconds, 1_000).await;
    assert_eq!(per_second(&burst_one, 3), vec![10, 10, 10], "{burst_one:?}");
    assert_eq!(
        most_in_any_window(&burst_one, Duration::from_secs(1)),
        10,
        "{burst_one:?}"
    );
}

/// Calls `rate(10, period)` with `burst(1)` one after another, the next as soon as the last has
/// run, for `calls` calls: each waits for its permit, and its future is polled `k mod 11` ms after
/// the permit fell due (the `k`th call; 0 to 10 ms, the most a limiter lets a call start late, as
/// a busy runtime would). Returns when each call ran, relative to the start.
async fn late_calls(period: Duration, calls: u32) -> Vec<Duration> {
    let delays = Arc::new(Mutex::new(Vec::new()));
    let seen = delays.clone();
    let layer = rate(10, period, Some(1))
        .max_wait(Duration::from_secs(1))
        .on_event(move |_: &seawall_core::Name, e: &RateLimitEvent| {
            if let RateLimitEvent::Delayed { delay } = e {
                seen.lock().unwrap().push(*delay);
            }
        })
        .build()
        .unwrap();
    let start = Instant::now();
    let ran = Arc::new(Mutex::new(Vec::new()));
    let record = ran.clone();
    let mut service = layer.layer(service_fn(move |n: u32| {
        record.lock().unwrap().push(start.elapsed());
        async move { Ok::<_, std::io::Error>(n) }
    }));
    for k in 0..calls {
        service.ready().await.unwrap();
        let call = service.call(k);
        // The first call runs at once; every later one waits for its permit, and is polled late.
        let delay = delays.lock().unwrap().pop();
        if let Some(delay) = delay {
            let late = Duration::from_millis(u64::from(k % 11));
            tokio::time::advance(delay + late).await;
        }
        call.await.unwrap();
    }
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), calls as usize, "every call runs: {ran:?}");
    ran
}

/// A call may start up to 10 ms after its permit fell due, and the next permit does not move for
/// it: with `rate(10, 1 s)` a call 10 ms late and one on time ten permits later sit 990 ms apart,
/// so a sliding second holds 11. The headroom of `rate(10, 1010 ms)` keeps it to 10 however late
/// (up to 10 ms) each call runs.
#[tokio::test(start_paused = true)]
async fn headroom_absorbs_calls_that_start_late() {
    let no_headroom = late_calls(Duration::from_secs(1), 30).await;
    assert_eq!(
        most_in_any_window(&no_headroom, Duration::from_secs(1)),
        11,
        "{no_headroom:?}"
    );
    let headroom = late_calls(Duration::from_millis(1_010), 30).await;
    assert_eq!(
        most_in_any_window(&headroom, Duration::from_secs(1)),
        10,
        "{headroom:?}"
    );
}

/// 3 a second is an interval of 333 333 333⅓ ns: rounded down, a fourth call would get through at
/// 999 999 999 ns, within the first second.
#[tokio::test(start_paused = true)]
async fn an_uneven_interval_never_exceeds_the_rate() {
    let layer = limiter(3, Duration::from_secs(1), Some(1), false);
    let admitted = greedy_admissions(&layer, Duration::from_secs(1), 1_000).await;
    assert_eq!(admitted.len(), 3, "{admitted:?}");
}

/// The burst of 3 at once and the two refills due within the first second; the third refill lands
/// just after it.
#[tokio::test(start_paused = true)]
async fn an_uneven_interval_admits_the_burst_and_the_refills_due_in_the_first_period() {
    let layer = limiter(3, Duration::from_secs(1), None, false);
    let admitted = greedy_admissions(&layer, Duration::from_secs(1), 1_000).await;
    assert_eq!(admitted.len(), 5, "{admitted:?}");
}

/// 2 per 3 ns is 1.5 ns apart; whole nanoseconds round that up to 2 ns, never down to 1 ns.
#[tokio::test(start_paused = true)]
async fn a_fractional_nanosecond_interval_rounds_up() {
    let layer = limiter(2, Duration::from_nanos(3), Some(1), false);
    let admitted = greedy_admissions(&layer, Duration::from_nanos(3_000), 100_000).await;
    assert!(
        admitted.len() <= 2_000,
        "2 per 3 ns over 3 µs admitted {} calls",
        admitted.len()
    );
}

#[tokio::test(start_paused = true)]
async fn burst_one_spaces_calls_evenly() {
    let layer = limiter(10, Duration::from_secs(1), Some(1), false);
    let service = layer.layer(echo());
    let start = Instant::now();
    let mut admitted = Vec::new();
    for ms in 0..1000u64 {
        tokio::time::sleep_until(start + Duration::from_millis(ms)).await;
        if service.clone().oneshot(0).await.is_ok() {
            admitted.push(ms);
        }
    }
    assert_eq!(admitted, (0..10).map(|i| i * 100).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn larger_burst_then_steady_rate() {
    let layer = limiter(5, Duration::from_secs(1), Some(20), false);
    let counts = admitted_per_second(&layer, 4).await;
    assert_eq!(counts, vec![24, 5, 5, 5]);
    // Idle for long enough to refill the burst, and it is all there again, and no more.
    tokio::time::advance(Duration::from_secs(10)).await;
    let service = layer.layer(echo());
    assert_eq!(admitted_at_once(&service, 0).await, 20);
}

#[tokio::test(start_paused = true)]
async fn limited_carries_retry_after() {
    let layer = limiter(4, Duration::from_secs(1), Some(1), false);
    let service = layer.layer(echo());
    service.clone().oneshot(1).await.unwrap();
    tokio::time::advance(Duration::from_millis(100)).await;
    let err = service.clone().oneshot(2).await.unwrap_err();
    let limited = find::<Limited>(&*err).expect("a Limited error");
    assert_eq!(limited.retry_after(), Duration::from_millis(150));
    assert_eq!(err.to_string(), "rate limit exceeded");
    tokio::time::advance(limited.retry_after()).await;
    service.clone().oneshot(3).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn waits_up_to_max_wait_in_order() {
    let layer = rate(10, Duration::from_secs(1), Some(1))
        .max_wait(Duration::from_millis(250))
        .build()
        .unwrap();
    let service = layer.layer(echo());
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|n| {
            let call = service.clone().oneshot(n);
            tokio::spawn(async move {
                let result = call.await;
                (n, result.is_ok(), start.elapsed())
            })
        })
        .collect();
    let mut results = Vec::new();
    for call in calls {
        results.push(call.await.unwrap());
    }
    assert_eq!(
        results,
        vec![
            (0, true, Duration::ZERO),
            (1, true, Duration::from_millis(100)),
            (2, true, Duration::from_millis(200)),
            (3, false, Duration::ZERO), // would wait 300 ms > 250 ms: rejected at once
        ]
    );
}

/// One permit a century with an unbounded `max_wait`: each waiter reserves its own slot, a century
/// after the one before, until the next slot is past the clock's range (about 584 years); from
/// then on calls are rejected, never given a slot they would share.
#[tokio::test(start_paused = true)]
async fn waiters_never_share_a_slot_however_long_they_wait() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let layer = rate(1, Duration::from_secs(100 * 365 * 86_400), Some(1))
        .max_wait(Duration::MAX)
        .on_event(move |_: &seawall_core::Name, e: &RateLimitEvent| seen.lock().unwrap().push(*e))
        .build()
        .unwrap();
    let mut service = layer.layer(echo());
    let mut calls = Vec::new();
    for n in 0..8 {
        service.ready().await.unwrap();
        calls.push(service.call(n));
    }
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events.len(),
        7,
        "every call but the first reports: {events:?}"
    );
    let delays: Vec<Duration> = events
        .iter()
        .map_while(|e| match e {
            RateLimitEvent::Delayed { delay } => Some(*delay),
            _ => None,
        })
        .collect();
    assert!(delays.len() >= 2, "{events:?}");
    for pair in delays.windows(2) {
        assert!(
            pair[1] >= pair[0] + Duration::from_secs(100 * 365 * 86_400),
            "two waiters given the same slot: {events:?}"
        );
    }
    for event in &events[delays.len()..] {
        assert!(
            matches!(event, RateLimitEvent::Limited { retry_after } if retry_after > delays.last().unwrap()),
            "a waiter admitted after a rejection: {events:?}"
        );
    }
    assert!(
        delays.len() < 7,
        "eight centuries do not fit the clock: {events:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_waiter_gives_its_permit_back() {
    let layer = rate(10, Duration::from_secs(1), Some(1))
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = layer.layer(echo());
    service.clone().oneshot(0).await.unwrap();
    let mut waiting = tokio_test::task::spawn(service.clone().oneshot(1));
    assert_pending!(waiting.poll());
    drop(waiting);
    // The slot at 100 ms is free again: a call now waits 100 ms, not 200 ms.
    let start = Instant::now();
    service.clone().oneshot(2).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn shared_by_clones_and_services_of_one_layer() {
    let layer = limiter(3, Duration::from_secs(1), None, false);
    let a = layer.layer(echo());
    let b = layer.layer(echo());
    a.clone().oneshot(1).await.unwrap();
    b.clone().oneshot(2).await.unwrap();
    a.clone().clone().oneshot(3).await.unwrap();
    assert!(b.oneshot(4).await.is_err(), "one budget for all");
}

#[tokio::test(start_paused = true)]
async fn limited_comes_from_the_future_not_poll_ready() {
    let layer = limiter(1, Duration::from_secs(1), None, false);
    let (mut service, mut server) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(service.poll_ready());
    let first = service.call(1);
    let (_, respond) = server.next_request().await.unwrap();
    respond.send_response(1);
    assert_eq!(first.await.unwrap(), 1);
    assert_ready_ok!(service.poll_ready());
    let err = service.call(2).await.unwrap_err();
    assert!(err.is::<Limited>());
}

#[tokio::test(start_paused = true)]
async fn backpressure_waits_in_poll_ready() {
    let layer = limiter(1, Duration::from_secs(1), None, true);
    let (mut service, mut server) = mock::spawn_layer::<u32, u32, _>(layer);
    assert_ready_ok!(service.poll_ready());
    let first = service.call(1);
    let (_, respond) = server.next_request().await.unwrap();
    respond.send_response(1);
    first.await.unwrap();

    assert_pending!(service.poll_ready());
    tokio::time::advance(Duration::from_millis(999)).await;
    assert_pending!(service.poll_ready());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    let second = service.call(2);
    let (request, respond) = server.next_request().await.unwrap();
    assert_eq!(request, 2);
    respond.send_response(2);
    assert_eq!(second.await.unwrap(), 2);
}

/// With backpressure, a caller that holds a ready service and calls long after its permit's time
/// cannot send its call next to the ones admitted since: it takes the permit due when it calls.
#[tokio::test(start_paused = true)]
async fn backpressure_call_made_late_takes_the_permit_due_then() {
    let layer = limiter(1, Duration::from_secs(1), Some(1), true);
    let start = Instant::now();
    let ran: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let record = ran.clone();
    let service = layer.layer(service_fn(move |n: u32| {
        record.lock().unwrap().push(start.elapsed());
        async move { Ok::<_, std::io::Error>(n) }
    }));

    let mut held = service.clone();
    held.ready().await.unwrap();
    let busy = tokio::spawn({
        let mut service = service.clone();
        async move {
            for n in 0..10 {
                service.ready().await.unwrap().call(n).await.unwrap();
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(9_500)).await;
    held.call(99).await.unwrap();
    busy.await.unwrap();

    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    assert_eq!(ran.len(), 11);
    for pair in ran.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_secs(1),
            "two calls within a second at 1/s: {ran:?}"
        );
    }
}

/// A service made ready at t = 0 while another calls every second, from 1 s: called (or polled
/// ready again) at 1.5 s, its permit is stale and it takes the next one, at 3 s.
async fn late_against_a_busy_neighbour(repoll: bool) {
    let layer = limiter(1, Duration::from_secs(1), Some(1), true);
    let start = Instant::now();
    // Clones of a `ConcurrencyLimit` start without a permit: a call on anything but the service
    // polled ready panics.
    let mut late = layer.layer(ConcurrencyLimit::new(echo(), 2));
    let mut busy = late.clone();
    late.ready().await.unwrap();
    let busy = tokio::spawn(async move {
        let mut times = Vec::new();
        for n in 0..4 {
            busy.ready().await.unwrap().call(n).await.unwrap();
            times.push(start.elapsed());
        }
        times
    });
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    if repoll {
        let mut task = tokio_test::task::spawn(());
        assert!(task.enter(|cx, _| late.poll_ready(cx)).is_pending());
        late.ready().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
    assert_eq!(late.call(99).await.unwrap(), 99);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(busy.await.unwrap(), [1, 2, 4, 5].map(Duration::from_secs));
}

#[tokio::test(start_paused = true)]
async fn backpressure_late_call_waits_for_a_fresh_permit_with_its_ready_service() {
    late_against_a_busy_neighbour(false).await;
}

#[tokio::test(start_paused = true)]
async fn backpressure_ready_service_polled_again_late_reserves_afresh() {
    late_against_a_busy_neighbour(true).await;
}

/// A ready service called `after` t = 0, its permit's span ended at 0 and the next permit held by
/// another service: when the call runs.
async fn called_after_ready(after: Duration) -> Duration {
    let layer = limiter(1, Duration::from_secs(1), Some(1), true);
    let start = Instant::now();
    let mut ready = layer.layer(echo());
    let mut waiting = ready.clone();
    ready.ready().await.unwrap();
    let mut task = tokio_test::task::spawn(());
    assert!(task.enter(|cx, _| waiting.poll_ready(cx)).is_pending());
    tokio::time::advance(after).await;
    ready.call(1).await.unwrap();
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn backpressure_call_within_ten_milliseconds_of_its_permit_keeps_it() {
    let after = Duration::from_micros(9_900);
    assert_eq!(called_after_ready(after).await, after);
}

#[tokio::test(start_paused = true)]
async fn backpressure_call_later_than_ten_milliseconds_past_its_permit_waits() {
    let after = Duration::from_micros(10_100);
    let ran = called_after_ready(after).await;
    // At the next permit, to tokio's millisecond.
    assert!(
        (Duration::from_secs(2)..Duration::from_millis(2_001)).contains(&ran),
        "{ran:?}"
    );
}

/// With backpressure waiters take permits in the order they came: a caller that takes its
/// permit and is ready again at once does not starve one that waits.
#[tokio::test(start_paused = true)]
async fn backpressure_waiters_go_in_turn() {
    let layer = limiter(10, Duration::from_secs(1), Some(1), true);
    let service = layer.layer(echo());
    let eager = tokio::spawn({
        let mut service = service.clone();
        async move {
            for n in 0..10 {
                let call = service.ready().await.unwrap().call(n);
                tokio::spawn(call);
            }
        }
    });
    let patient = tokio::spawn({
        let mut service = service.clone();
        async move {
            let mut calls = 0;
            let until = Instant::now() + Duration::from_millis(950);
            while Instant::now() < until {
                service.ready().await.unwrap().call(0).await.unwrap();
                calls += 1;
            }
            calls
        }
    });
    eager.await.unwrap();
    let patient = patient.await.unwrap();
    assert!(
        patient >= 4,
        "{patient} calls of 10 for the waiter that came second"
    );
}

/// With backpressure, a permit past the clock's range is not reserved either: `poll_ready` stays
/// pending on a timer rather than waking itself in a loop.
#[tokio::test(start_paused = true)]
async fn backpressure_past_the_clocks_range_waits_without_spinning() {
    let layer = limiter(1, Duration::from_secs(100 * 365 * 86_400), Some(1), true);
    let service = layer.layer(echo());
    // Kept, as each holds its own reservation.
    let mut clones = Vec::new();
    let mut ready = 0;
    for _ in 0..8 {
        let mut clone = service.clone();
        let mut task = tokio_test::task::spawn(());
        match task.enter(|cx, _| clone.poll_ready(cx)) {
            std::task::Poll::Ready(result) => {
                result.unwrap();
                ready += 1;
            }
            std::task::Poll::Pending => {
                assert!(!task.is_woken(), "poll_ready woke itself at once")
            }
        }
        clones.push((clone, task));
    }
    assert_eq!(ready, 1);
}

/// The waiting call must go to the inner service polled ready, not a fresh clone of a service
/// whose `Clone` forgets readiness.
#[tokio::test(start_paused = true)]
async fn waiting_call_uses_the_ready_inner_service() {
    let layer = rate(10, Duration::from_secs(1), Some(1))
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut service = layer.layer(ConcurrencyLimit::new(echo(), 5));
    let a = service.ready().await.unwrap().call(1);
    let b = service.ready().await.unwrap().call(2);
    let c = service.ready().await.unwrap().call(3);
    let (a, b, c) = tokio::join!(a, b, c);
    assert_eq!((a.unwrap(), b.unwrap(), c.unwrap()), (1, 2, 3));
}

/// With backpressure, a permit counts from when it fell due, not from when `poll_ready` looks at
/// it: a service polled ready long after its permit's time, with a call admitted since, reserves
/// afresh rather than land next to that call.
#[tokio::test(start_paused = true)]
async fn backpressure_permit_looked_at_late_is_not_used() {
    let layer = limiter(10, Duration::from_secs(1), Some(1), true);
    let start = Instant::now();
    let mut first = layer.layer(echo());
    first.ready().await.unwrap().call(0).await.unwrap();
    // `late` reserves the permit due at 100 ms, then is not polled until 218 ms.
    let mut late = layer.layer(echo());
    let mut task = tokio_test::task::spawn(());
    assert!(task.enter(|cx, _| late.poll_ready(cx)).is_pending());
    // `busy` reserves the one due at 200 ms, and calls then.
    let mut busy = layer.layer(echo());
    tokio::time::advance(Duration::from_millis(50)).await;
    busy.ready().await.unwrap().call(1).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    tokio::time::advance(Duration::from_millis(18)).await;
    assert!(
        task.enter(|cx, _| late.poll_ready(cx)).is_pending(),
        "a permit due at 100 ms used at 218 ms, 18 ms after the one due at 200 ms"
    );
    late.ready().await.unwrap().call(2).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(300));
}

/// Two backpressure limiters, one over the other, with callers competing for both: each caller's
/// permit of one limiter goes stale while it waits for the other's, yet every call is made, and
/// each limiter keeps to its rate.
#[tokio::test(start_paused = true)]
async fn stacked_backpressure_limiters_serve_every_caller() {
    let outer = limiter(30, Duration::from_secs(1), Some(2), true);
    let inner = limiter(30, Duration::from_secs(1), Some(1), true);
    let start = Instant::now();
    let ran = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = ran.clone();
    let stack = outer.layer(inner.layer(service_fn(move |n: u32| {
        record.lock().unwrap().push(start.elapsed());
        async move { Ok::<_, std::io::Error>(n) }
    })));
    let calls: Vec<_> = (0..8)
        .map(|n| tokio::spawn(stack.clone().oneshot(n)))
        .collect();
    let served = tokio::time::timeout(Duration::from_secs(60), async {
        for call in calls {
            call.await.unwrap().unwrap();
        }
    })
    .await;
    assert!(served.is_ok(), "callers still waiting after a minute");
    let mut ran = ran.lock().unwrap().clone();
    ran.sort();
    // The inner limiter, one call every 33.3 ms (and 10 ms of grace): no two calls closer.
    for pair in ran.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_micros(23_333),
            "{ran:?}"
        );
    }
}

/// With backpressure, a service whose permit went stale while its inner service got ready makes
/// that call with the inner service ready first; its next call polls the inner service again, as
/// a fresh call does (a `ConcurrencyLimit` below panics if called without a permit).
#[tokio::test(start_paused = true)]
async fn backpressure_after_a_stale_permit_the_next_call_polls_the_inner_service_again() {
    let layer = limiter(10, Duration::from_secs(1), Some(1), true);
    let start = Instant::now();
    let limit = ConcurrencyLimit::new(echo(), 1);
    let mut blocker = limit.clone();
    blocker.ready().await.unwrap();
    let mut service = layer.layer(limit);
    let mut task = tokio_test::task::spawn(());
    // The permit due at once goes stale while the limit below is held, until 50 ms.
    assert!(task.enter(|cx, _| service.poll_ready(cx)).is_pending());
    tokio::time::advance(Duration::from_millis(50)).await;
    drop(blocker);
    assert_eq!(service.ready().await.unwrap().call(1).await.unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::from_millis(50));
    assert_eq!(service.ready().await.unwrap().call(2).await.unwrap(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(150));
}
