//! The bulkhead's and the rate limiter's metrics, under the policy name, and the rate limiter's
//! events.

use metrics::{
    Counter, Gauge, GaugeFn, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use seawall_bulkhead::{
    limit::{Aimd, Limit, Sample},
    ratelimit::{RateLimitEvent, RateLimitLayer},
    BulkheadHandle, BulkheadLayer,
};
use seawall_core::{
    metrics::{
        testing::TestRecorder, BULKHEAD_IN_FLIGHT, BULKHEAD_LIMIT, BULKHEAD_REJECTED,
        BULKHEAD_WAITING, RATELIMIT_DELAYED, RATELIMIT_KEYS, RATELIMIT_LIMITED,
    },
    Name,
};
use std::{
    sync::{Arc, Condvar, Mutex, OnceLock},
    thread,
    time::Duration,
};
use tokio::sync::oneshot;
use tower::{service_fn, Layer, ServiceExt};

#[tokio::test(start_paused = true)]
async fn bulkhead_reports_in_flight_waiting_rejected_and_limit() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BulkheadLayer::builder()
        .name("users")
        .max_concurrent(1)
        .max_wait(Duration::from_millis(100))
        .build()
        .unwrap();
    let service = layer.layer(service_fn(|gate: oneshot::Receiver<()>| async move {
        let _ = gate.await;
        Ok::<_, std::io::Error>(())
    }));
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "users"), Some(1.0));

    let (release, gate) = oneshot::channel();
    let holder = tokio::spawn(service.clone().oneshot(gate));
    tokio::task::yield_now().await;
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "users"), Some(1.0));

    let (_tx, gate) = oneshot::channel();
    let waiter = tokio::spawn(service.clone().oneshot(gate));
    tokio::task::yield_now().await;
    assert_eq!(recorder.gauge(BULKHEAD_WAITING, "users"), Some(1.0));
    assert!(waiter.await.unwrap().is_err(), "max_wait passed");
    assert_eq!(recorder.gauge(BULKHEAD_WAITING, "users"), Some(0.0));
    assert_eq!(recorder.counter(BULKHEAD_REJECTED, "users"), 1);

    release.send(()).unwrap();
    holder.await.unwrap().unwrap();
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "users"), Some(0.0));
}

#[tokio::test(start_paused = true)]
async fn adaptive_limit_gauge_follows_the_limit() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let layer = BulkheadLayer::builder()
        .name("adaptive")
        .adaptive(Aimd::builder().initial_limit(10).build().unwrap())
        .build()
        .unwrap();
    let handle = layer.handle();
    let service = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err(std::io::Error::other("unavailable"))
        } else {
            Ok(())
        }
    }));
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "adaptive"), Some(10.0));
    let _ = service.clone().oneshot(true).await;
    assert_eq!(handle.limit(), 9);
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "adaptive"), Some(9.0));
}

/// Bulkheads that share a name (every unnamed one is "bulkhead") add up in the limit gauge, as
/// they do in the in-flight gauge, so that in flight reads against the limit of them all (though
/// it can exceed it while an adaptive limit that shrank below the permits in use is owed some);
/// one that goes takes its limit with it. Here an adaptive bulkhead is replaced, as on a reload,
/// by a fixed one while a call through the old one still runs.
#[tokio::test(start_paused = true)]
async fn same_named_bulkheads_sum_their_limits() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let adaptive = BulkheadLayer::builder()
        .name("reloaded")
        .adaptive(Aimd::builder().initial_limit(10).build().unwrap())
        .build()
        .unwrap();
    let old = adaptive.layer(service_fn(|gate: oneshot::Receiver<bool>| async move {
        if gate.await.unwrap_or(false) {
            Err(std::io::Error::other("unavailable"))
        } else {
            Ok(())
        }
    }));
    let (fail, gate) = oneshot::channel();
    let _ = fail.send(true);
    let _ = old.clone().oneshot(gate).await;
    assert_eq!(adaptive.handle().limit(), 9);
    let (finish, gate) = oneshot::channel();
    let running = tokio::spawn(old.clone().oneshot(gate));
    tokio::task::yield_now().await;

    let fixed = BulkheadLayer::builder()
        .name("reloaded")
        .max_concurrent(4)
        .build()
        .unwrap();
    let new = fixed.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));
    drop((adaptive, old));
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "reloaded"), Some(13.0));
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "reloaded"), Some(1.0));
    new.oneshot(()).await.unwrap();

    // The old bulkhead goes with its last call, and its limit with it.
    finish.send(false).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "reloaded"), Some(4.0));
    assert_eq!(recorder.gauge(BULKHEAD_IN_FLIGHT, "reloaded"), Some(0.0));
    drop(fixed);
    assert_eq!(recorder.gauge(BULKHEAD_LIMIT, "reloaded"), Some(0.0));
}

/// A limit that grows by one with every sample, whatever the sample says.
#[derive(Debug)]
struct Steps(usize);

impl Limit for Steps {
    fn initial_limit(&self) -> usize {
        self.0
    }

    fn bounds(&self) -> (usize, usize) {
        (1, 100)
    }

    fn update(&mut self, _: &Sample) -> usize {
        self.0 += 1;
        self.0
    }
}

/// The limit gauge, which adds as a recorder without atomic adds might (it reads its value and
/// sets the sum), and lets a later sample set it first whenever it can. Its `set` of `SLOW`
/// looks whether the algorithm's lock is held (the bulkhead's `Debug` tries to take it, and shows
/// it `<busy>` when it cannot) before it says it has started. If the lock is free, another
/// sample can run its `update` and its `set` now: this `set` waits until one has, and then
/// stores its older value. Under the lock, no other sample can come between, and nothing waits
/// (a `Debug` that no longer showed the lock held would make it wait for a sample that cannot
/// come, and fail).
#[derive(Debug, Default)]
struct OvertakenGauge {
    bulkhead: OnceLock<BulkheadHandle>,
    state: Mutex<GaugeState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GaugeState {
    value: f64,
    sets: usize,
    slow_set_started: bool,
}

impl OvertakenGauge {
    const SLOW: f64 = 11.0;
    /// Only for a test that fails: no step here waits on a clock.
    const HUNG: Duration = Duration::from_secs(60);

    /// Waits until a `set` of `SLOW` has started.
    fn wait_for_slow_set(&self) -> bool {
        let state = self.state.lock().unwrap();
        let (state, _) = self
            .changed
            .wait_timeout_while(state, Self::HUNG, |s| !s.slow_set_started)
            .unwrap();
        state.slow_set_started
    }

    fn value(&self) -> f64 {
        self.state.lock().unwrap().value
    }
}

impl GaugeFn for OvertakenGauge {
    fn increment(&self, value: f64) {
        self.set(self.value() + value);
    }

    fn decrement(&self, value: f64) {
        self.set(self.value() - value);
    }

    fn set(&self, value: f64) {
        let under_lock = value == Self::SLOW && {
            let bulkhead = self.bulkhead.get().expect("the bulkhead is built");
            format!("{bulkhead:?}").contains("<busy>")
        };
        let mut state = self.state.lock().unwrap();
        if value == Self::SLOW {
            state.slow_set_started = true;
            self.changed.notify_all();
            if !under_lock {
                let sets = state.sets;
                state = self
                    .changed
                    .wait_timeout_while(state, Self::HUNG, |s| s.sets == sets)
                    .unwrap()
                    .0;
                assert!(state.sets > sets, "the second sample never set the gauge");
            }
        }
        state.value = value;
        state.sets += 1;
        self.changed.notify_all();
    }
}

/// Hands out `gauge` for the bulkhead's limit and does not record anything else.
#[derive(Debug)]
struct LimitRecorder(Arc<OvertakenGauge>);

impl Recorder for LimitRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        if key.name() == BULKHEAD_LIMIT {
            Gauge::from_arc(self.0.clone())
        } else {
            Gauge::noop()
        }
    }

    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Two samples race: the first (limit 10 to 11) is setting the gauge when the second (11 to 12)
/// comes, and the second moves it first if it can. The gauge must end on the limit, 12, even with
/// a recorder that does not add atomically, as this one: it does when the gauge is moved under
/// the algorithm's lock, as the limit is.
#[test]
fn racing_samples_leave_the_limit_gauge_on_the_limit() {
    let gauge = Arc::new(OvertakenGauge::default());
    let recorder = LimitRecorder(gauge.clone());
    // The bulkhead takes its metric handles when it is built; they work from any thread.
    let layer = metrics::with_local_recorder(&recorder, || {
        BulkheadLayer::builder()
            .name("racing")
            .adaptive(Steps(10))
            .build()
            .unwrap()
    });
    assert_eq!(gauge.value(), 10.0);
    let handle = layer.handle();
    gauge.bulkhead.set(handle.clone()).unwrap();
    let service = layer.layer(service_fn(|()| async { Ok::<_, std::io::Error>(()) }));
    let call = |service: seawall_bulkhead::Bulkhead<_>| {
        thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap()
                .block_on(service.oneshot(()))
                .unwrap()
        })
    };

    let first = call(service.clone());
    assert!(gauge.wait_for_slow_set(), "the first sample sets 11");
    let second = call(service);
    first.join().unwrap();
    second.join().unwrap();

    assert_eq!(handle.limit(), 12);
    assert_eq!(gauge.value(), 12.0);
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_counts_limited_and_delayed() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let echo = service_fn(|key: u32| async move { Ok::<_, std::io::Error>(key) });

    let layer = RateLimitLayer::builder()
        .name("quota")
        .rate(1, Duration::from_secs(1))
        .max_wait(Duration::from_millis(1_500))
        .build()
        .unwrap();
    let service = layer.layer(echo);
    service.clone().oneshot(1).await.unwrap();
    service.clone().oneshot(2).await.unwrap(); // waits 1 s
    let (a, b) = tokio::join!(service.clone().oneshot(3), service.clone().oneshot(4));
    assert!(
        a.is_ok() ^ b.is_ok(),
        "one waits 1 s, the other would wait 2 s"
    );
    assert_eq!(recorder.counter(RATELIMIT_DELAYED, "quota"), 2);
    assert_eq!(recorder.counter(RATELIMIT_LIMITED, "quota"), 1);

    let keyed = RateLimitLayer::builder()
        .name("tenants")
        .rate(1, Duration::from_secs(1))
        .build_keyed(|key: &u32| *key)
        .unwrap();
    let service = keyed.layer(echo);
    for key in [1, 2, 3, 1] {
        let _ = service.clone().oneshot(key).await;
    }
    assert_eq!(recorder.gauge(RATELIMIT_KEYS, "tenants"), Some(3.0));
    assert_eq!(recorder.counter(RATELIMIT_LIMITED, "tenants"), 1);

    // A limiter built again under the same name, as on a configuration reload, counts its own
    // keys: the dropped one's go with it.
    drop((keyed, service));
    assert_eq!(recorder.gauge(RATELIMIT_KEYS, "tenants"), Some(0.0));
    let keyed = RateLimitLayer::builder()
        .name("tenants")
        .rate(1, Duration::from_secs(1))
        .build_keyed(|key: &u32| *key)
        .unwrap();
    let service = keyed.layer(echo);
    service.clone().oneshot(7).await.unwrap();
    assert_eq!(recorder.gauge(RATELIMIT_KEYS, "tenants"), Some(1.0));
}

/// Keyed limiters that share a name (every unnamed one is "ratelimit") add up in the keys gauge,
/// and one that is dropped takes its keys with it.
#[tokio::test(start_paused = true)]
async fn same_named_keyed_rate_limiters_sum_their_keys() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let echo = service_fn(|key: u32| async move { Ok::<_, std::io::Error>(key) });
    let keyed = || {
        RateLimitLayer::builder()
            .rate(1, Duration::from_secs(1))
            .build_keyed(|key: &u32| *key)
            .unwrap()
    };
    let (first, second) = (keyed(), keyed());
    let (one, other) = (first.layer(echo), second.layer(echo));
    for key in [1, 2] {
        one.clone().oneshot(key).await.unwrap();
    }
    for key in [1, 2, 3] {
        other.clone().oneshot(key).await.unwrap();
    }
    assert_eq!(recorder.gauge(RATELIMIT_KEYS, "ratelimit"), Some(5.0));
    drop((first, one));
    assert_eq!(recorder.gauge(RATELIMIT_KEYS, "ratelimit"), Some(3.0));
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_reports_limited_and_delayed_calls_to_listeners() {
    let echo = service_fn(|key: u32| async move { Ok::<_, std::io::Error>(key) });
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = |seen: &Arc<Mutex<Vec<(String, RateLimitEvent)>>>| {
        let seen = seen.clone();
        move |name: &Name, event: &RateLimitEvent| {
            seen.lock().unwrap().push((name.to_string(), *event));
        }
    };

    let layer = RateLimitLayer::builder()
        .name("quota")
        .rate(1, Duration::from_secs(1))
        .max_wait(Duration::from_millis(1_500))
        .on_event(record(&seen))
        .build()
        .unwrap();
    let service = layer.layer(echo);
    service.clone().oneshot(1).await.unwrap(); // admitted at once: no event
    service.clone().oneshot(2).await.unwrap(); // waits 1 s
    let (a, b) = tokio::join!(service.clone().oneshot(3), service.clone().oneshot(4));
    assert!(a.is_ok() && b.is_err());
    let secs = Duration::from_secs;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            ("quota".into(), RateLimitEvent::Delayed { delay: secs(1) }),
            ("quota".into(), RateLimitEvent::Delayed { delay: secs(1) }),
            (
                "quota".into(),
                RateLimitEvent::Limited {
                    retry_after: secs(2)
                }
            ),
        ]
    );

    seen.lock().unwrap().clear();
    let keyed = RateLimitLayer::builder()
        .name("tenants")
        .rate(1, Duration::from_secs(1))
        .on_event(record(&seen))
        .build_keyed(|key: &u32| *key)
        .unwrap();
    let service = keyed.layer(echo);
    for key in [1, 2, 3, 1] {
        let _ = service.clone().oneshot(key).await;
    }
    assert_eq!(
        *seen.lock().unwrap(),
        [(
            "tenants".into(),
            RateLimitEvent::Limited {
                retry_after: secs(1)
            }
        )]
    );
}
