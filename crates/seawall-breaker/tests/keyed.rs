//! A keyed set of breakers: one per key, created on demand, bounded in number.
#![cfg(not(loom))]

mod common;

use common::{dependency, rejected, send, Call, Host};
use seawall::breaker::{BreakerConfig, BreakerSet, State, Transition};
use seawall_core::metrics::{self as names, testing::TestRecorder};
use std::{
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};
use tower::{Layer, Service, ServiceExt};

fn set(capacity: usize) -> BreakerSet<&'static str> {
    let config = BreakerConfig::builder()
        .name("per-host")
        .consecutive_failures(1)
        .build_config()
        .unwrap();
    BreakerSet::new(config, capacity).unwrap()
}

#[tokio::test(start_paused = true)]
async fn each_key_has_its_own_breaker() {
    let set = set(8);
    let mut a = set.get(&"a").layer(dependency().0);
    let mut b = set.get(&"b").layer(dependency().0);
    let _ = send(&mut a, Call::Fail).await;
    assert!(rejected(&send(&mut a, Call::Ok).await));
    assert_eq!(send(&mut b, Call::Ok).await.unwrap(), "ok");
    assert_eq!(set.handle(&"a").unwrap().state(), State::Open);
    assert_eq!(set.unhealthy(), ["a"]);
    assert!(set
        .get(&"a")
        .handle()
        .same_breaker(&set.handle(&"a").unwrap()));
    assert!(set.handle(&"c").is_none(), "handle does not create");
    assert_eq!(set.len(), 2);
}

/// A listener registered on the set hears which key's breaker changed; the configuration's
/// listeners, like the log line and the metrics, carry only the set's name.
#[tokio::test(start_paused = true)]
async fn a_set_listener_hears_the_key_whose_breaker_changed() {
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let named = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (by_key, by_name) = (heard.clone(), named.clone());
    let config = BreakerConfig::builder()
        .name("per-host")
        .consecutive_failures(1)
        .on_transition(move |name: &seawall::Name, t: &Transition| {
            by_name.lock().unwrap().push((name.to_string(), t.to))
        })
        .build_config()
        .unwrap();
    let set =
        BreakerSet::new(config, 8)
            .unwrap()
            .on_transition(move |key: &&str, t: &Transition| {
                by_key.lock().unwrap().push((*key, t.from, t.to))
            });
    let mut a = set.get(&"a").layer(dependency().0);
    let mut b = set.get(&"b").layer(dependency().0);
    assert_eq!(send(&mut a, Call::Ok).await.unwrap(), "ok");
    let _ = send(&mut b, Call::Fail).await;
    assert_eq!(*heard.lock().unwrap(), [("b", State::Closed, State::Open)]);
    assert_eq!(
        *named.lock().unwrap(),
        [("per-host".to_string(), State::Open)]
    );
}

#[tokio::test(start_paused = true)]
async fn memory_is_bounded_and_failing_keys_are_kept_longest() {
    let set = set(3);
    // "down" is Open and no service holds it any more.
    let mut down = set.get(&"down").layer(dependency().0);
    let _ = send(&mut down, Call::Fail).await;
    drop(down);
    // "busy" is used by a live service.
    let busy = set.get(&"busy").layer(dependency().0);
    set.get(&"idle");
    set.get(&"new");
    assert_eq!(set.len(), 3);
    assert!(
        set.handle(&"idle").is_none(),
        "the idle Closed breaker went first"
    );
    set.get(&"newer");
    assert_eq!(set.len(), 3);
    assert!(set.handle(&"new").is_none());
    assert!(
        set.handle(&"down").is_some(),
        "the Open breaker is kept over Closed ones"
    );
    assert!(set.handle(&"busy").is_some());
    drop(busy);
    assert!(set.remove(&"busy"));
    assert_eq!(set.len(), 2);
}

/// Among idle Closed breakers, the one least recently asked for is evicted: a key asked for again
/// ranks above the keys put in or asked for before, and a key put in above those asked for before
/// it.
#[test]
fn the_least_recently_used_idle_breaker_is_evicted() {
    let set = set(3);
    set.get(&"a");
    set.get(&"b");
    set.get(&"c");
    set.get(&"a");
    set.get(&"b");
    set.get(&"d");
    assert!(set.handle(&"c").is_none(), "c was asked for longest ago");
    set.get(&"a");
    set.get(&"e");
    assert!(
        set.handle(&"b").is_none(),
        "b was asked for before d was put in"
    );
    set.get(&"f");
    assert!(
        set.handle(&"d").is_none(),
        "d was put in before a was asked for"
    );
    set.get(&"f");
    set.get(&"e");
    set.get(&"g");
    assert!(set.handle(&"a").is_none(), "a was asked for before f and e");
    for key in ["e", "f", "g"] {
        assert!(set.handle(&key).is_some(), "{key}");
    }
}

/// A breaker an operator forced open or disabled is evicted after every other breaker no service
/// uses: evicted, it would come back Closed the next time its key is asked for.
#[test]
fn idle_breakers_in_a_manual_state_are_evicted_after_the_other_idle_ones() {
    let disabled = set(2);
    disabled.get(&"d").handle().disable();
    disabled.get(&"e");
    disabled.get(&"f");
    assert_eq!(
        disabled.handle(&"d").map(|h| h.state()),
        Some(State::Disabled)
    );
    assert!(disabled.handle(&"e").is_none(), "the Closed one went");

    // Every idle breaker in a manual state: the least recently asked-for goes.
    let manual = set(2);
    manual.get(&"g").handle().force_open();
    manual.get(&"h").handle().metrics_only();
    manual.get(&"i");
    assert!(manual.handle(&"g").is_none());
    assert_eq!(
        manual.handle(&"h").map(|h| h.state()),
        Some(State::MetricsOnly)
    );
    manual.get(&"j");
    assert_eq!(
        manual.handle(&"h").map(|h| h.state()),
        Some(State::MetricsOnly),
        "kept over the Closed one"
    );
    assert!(manual.handle(&"i").is_none());
    assert_eq!(manual.len(), 2);
}

/// A breaker a service still uses goes after an idle one in a manual state: evicted, its key
/// would get a fresh Closed twin while the service went on with the old breaker, out of the
/// set's reach (no handle, no gauge).
#[test]
fn a_breaker_in_use_is_kept_over_an_idle_one_in_a_manual_state() {
    let forced = set(2);
    forced.get(&"a").handle().force_open();
    let b = forced.get(&"b");
    forced.get(&"c");
    assert!(
        forced.handle(&"a").is_none(),
        "the idle forced-open breaker went"
    );
    assert!(
        forced
            .handle(&"b")
            .is_some_and(|h| h.same_breaker(&b.handle())),
        "the breaker in use is kept, not split from its key"
    );
    assert!(forced.get(&"b").handle().same_breaker(&b.handle()));

    // Every breaker in use: the ones in a manual state go last.
    let held = set(2);
    let d = held.get(&"d");
    d.handle().force_open();
    let e = held.get(&"e");
    let f = held.get(&"f");
    assert!(held.handle(&"e").is_none(), "the automatic one in use went");
    assert_eq!(
        held.handle(&"d").map(|h| h.state()),
        Some(State::ForcedOpen)
    );
    drop((d, e, f));
}

/// A large full set makes room for a 64th of itself at once, among breakers no service uses,
/// least recently used first; with every breaker in use it evicts one at a time.
#[test]
fn a_large_set_evicts_in_batches_of_idle_breakers() {
    let config = BreakerConfig::builder()
        .name("per-host")
        .build_config()
        .unwrap();
    let set = BreakerSet::<u32>::new(config, 256).unwrap();
    // One in use, asked for first (least recently used of all).
    let held = set.get(&1000);
    for key in 0..255 {
        set.get(&key);
    }
    assert_eq!(set.len(), 256);
    set.get(&256);
    // 256 / 64 = 4 go: the four least recently used idle ones, not the one in use.
    assert_eq!(set.len(), 253);
    assert!(set.handle(&1000).is_some());
    for key in 0..4 {
        assert!(set.handle(&key).is_none(), "{key}");
    }
    assert!(set.handle(&4).is_some());
    drop(held);

    // Every breaker in use: one goes per new key.
    let config = BreakerConfig::builder()
        .name("per-host")
        .build_config()
        .unwrap();
    let set = BreakerSet::<u32>::new(config, 128).unwrap();
    let held: Vec<_> = (0..128).map(|key| set.get(&key)).collect();
    set.get(&128);
    assert_eq!(set.len(), 128);
    assert!(set.handle(&0).is_none());
    drop(held);
}

/// Threads asking for keys at once, some new to the set and some not, get one breaker per key,
/// and the set stays within its capacity; a key asked for by two threads at once gets one
/// breaker, the one the set keeps.
#[test]
fn threads_asking_at_once_get_one_breaker_per_key() {
    let config = BreakerConfig::builder()
        .name("per-host")
        .build_config()
        .unwrap();
    let set = BreakerSet::<u32>::new(config, 8).unwrap();
    let barrier = std::sync::Barrier::new(4);
    std::thread::scope(|scope| {
        for thread in 0..4u32 {
            let (set, barrier) = (&set, &barrier);
            scope.spawn(move || {
                barrier.wait();
                for i in 0..500u32 {
                    let key = (i * 7 + thread) % 12;
                    let layer = set.get(&key);
                    // Kept while it is in use: a breaker in use is not evicted.
                    let kept = set.handle(&key).expect("a breaker in use stays");
                    assert!(kept.same_breaker(&layer.handle()), "{key}");
                }
            });
        }
    });
    assert!(set.len() <= 8);
    for key in 0..12 {
        if let Some(handle) = set.handle(&key) {
            assert!(handle.same_breaker(&set.get(&key).handle()), "{key}");
        }
    }
}

/// A batch takes idle Closed breakers only, beyond the one entry that must go: an idle Open
/// breaker remembers a failing key, and one slot does not need it gone.
#[tokio::test(start_paused = true)]
async fn making_room_for_one_key_keeps_an_idle_open_breaker() {
    let config = BreakerConfig::builder()
        .name("per-host")
        .consecutive_failures(1)
        .build_config()
        .unwrap();
    let set = BreakerSet::<u32>::new(config, 128).unwrap();
    let held: Vec<_> = (0..126).map(|key| set.get(&key)).collect();
    let mut down = set.get(&500).layer(dependency().0);
    let _ = send(&mut down, Call::Fail).await;
    drop(down);
    set.get(&501);
    assert_eq!(set.len(), 128);
    // 128 / 64 = 2 could go: the idle Closed one does, the idle Open one stays.
    set.get(&502);
    assert!(set.handle(&501).is_none());
    assert_eq!(set.handle(&500).map(|h| h.state()), Some(State::Open));
    drop(held);
}

/// Hosts of one dependency that trip together wait different jittered times even in a seeded
/// set, so they do not all probe at once; the same seed draws the same waits again.
#[tokio::test(start_paused = true)]
async fn keys_tripped_together_draw_their_own_jitter() {
    async fn waits(seed: u64) -> Vec<Duration> {
        let config = BreakerConfig::builder()
            .consecutive_failures(1)
            .wait_duration(Duration::from_secs(10))
            .jitter(0.5)
            .seed(seed)
            .build_config()
            .unwrap();
        let set = BreakerSet::new(config, 8).unwrap();
        let mut waits = Vec::new();
        for key in ["a", "b", "c", "d"] {
            let mut svc = set.get(&key).layer(dependency().0);
            let _ = send(&mut svc, Call::Fail).await;
            waits.push(set.handle(&key).unwrap().remaining_wait().unwrap());
        }
        waits
    }
    let first = waits(7).await;
    let distinct: std::collections::BTreeSet<_> = first.iter().collect();
    assert_eq!(distinct.len(), 4, "{first:?}");
    assert_eq!(first, waits(7).await);
}

#[tokio::test(start_paused = true)]
async fn a_breaker_due_to_probe_is_not_listed_unhealthy() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .build_config()
        .unwrap();
    let set = BreakerSet::new(config, 8).unwrap();
    let mut a = set.get(&"a").layer(dependency().0);
    let _ = send(&mut a, Call::Fail).await;
    assert_eq!(set.unhealthy(), ["a"]);

    // The wait is over: the next call would be let through as a probe. A balancer that skips
    // the keys `unhealthy` lists must send it one, or a lazy breaker never probes again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(set.unhealthy().is_empty(), "{:?}", set.unhealthy());
    assert!(a.is_call_permitted());

    // Its only probe slot taken, it lets nothing through.
    let probe = a.ready().await.unwrap().call(Call::Hang);
    assert_eq!(set.handle(&"a").unwrap().state(), State::HalfOpen);
    assert_eq!(set.unhealthy(), ["a"]);
    drop(probe);
    assert!(set.unhealthy().is_empty());
    assert_eq!(send(&mut a, Call::Ok).await.unwrap(), "ok");
    assert_eq!(set.handle(&"a").unwrap().state(), State::Closed);

    set.handle(&"a").unwrap().force_open();
    assert_eq!(set.unhealthy(), ["a"]);
}

/// `unhealthy` applies no deadline: it changes no breaker's state, so no listener runs under the
/// set's read lock (one that asked the set for a new key would wait for that lock for good, and
/// one that only read from it would too once a writer was queued behind the lock). An Open
/// whose wait is over stays Open, and a HalfOpen past its bound stays HalfOpen, until a call or
/// `state()` applies them.
#[tokio::test(start_paused = true)]
async fn asking_for_the_unhealthy_keys_applies_no_deadline() {
    let config = BreakerConfig::builder()
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .max_wait_in_half_open(Duration::from_secs(1))
        .build_config()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let set = {
        let seen = seen.clone();
        BreakerSet::new(config, 8)
            .unwrap()
            .on_transition(move |key: &&str, t: &Transition| {
                seen.lock().unwrap().push((*key, t.from, t.to))
            })
    };
    let changes = || seen.lock().unwrap().clone();
    let mut a = set.get(&"a").layer(dependency().0);
    let watched = set.handle(&"a").unwrap().subscribe();
    let _ = send(&mut a, Call::Fail).await;
    assert_eq!(changes(), [("a", State::Closed, State::Open)]);

    // The wait is over: not listed, and still Open.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(set.unhealthy().is_empty());
    assert_eq!(*watched.borrow(), State::Open);
    assert_eq!(changes(), [("a", State::Closed, State::Open)]);

    // Its only probe in flight past the bound: listed, and still HalfOpen.
    let probe = a.ready().await.unwrap().call(Call::Hang);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(set.unhealthy(), ["a"]);
    assert_eq!(*watched.borrow(), State::HalfOpen);
    assert_eq!(
        changes(),
        [
            ("a", State::Closed, State::Open),
            ("a", State::Open, State::HalfOpen)
        ]
    );
    drop(probe);
}

#[tokio::test(start_paused = true)]
async fn a_new_key_does_not_reset_what_the_set_reports() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let set = set(8);
    let mut a = set.get(&"a").layer(dependency().0);
    let _ = send(&mut a, Call::Fail).await;
    assert_eq!(set.handle(&"a").unwrap().state(), State::Open);

    // Every key's breaker has the set's name: one key must not speak for the others. None
    // registers a state gauge under it (a new, Closed key would overwrite a's Open there); the
    // set counts its open keys instead, and a new key that answers leaves the count alone.
    let mut b = set.get(&"b").layer(dependency().0);
    assert_eq!(send(&mut b, Call::Ok).await.unwrap(), "ok");
    assert_eq!(set.handle(&"b").unwrap().state(), State::Closed);
    assert_eq!(recorder.gauge(names::BREAKER_STATE, "per-host"), None);
    assert_eq!(
        recorder.gauge(names::BREAKER_KEYS_OPEN, "per-host"),
        Some(1.0)
    );
}

#[tokio::test(start_paused = true)]
async fn the_set_counts_its_keys_that_are_open() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let config = BreakerConfig::builder()
        .name("per-host")
        .consecutive_failures(1)
        .wait_duration(Duration::from_secs(1))
        .jitter(0.0)
        .permitted_probes(1)
        .build_config()
        .unwrap();
    let set = BreakerSet::new(config, 2).unwrap();
    let open = || recorder.gauge(names::BREAKER_KEYS_OPEN, "per-host");
    assert_eq!(open(), Some(0.0));

    let mut a = set.get(&"a").layer(dependency().0);
    let mut b = set.get(&"b").layer(dependency().0);
    let _ = send(&mut a, Call::Fail).await;
    let _ = send(&mut b, Call::Fail).await;
    assert_eq!(open(), Some(2.0));
    assert_eq!(recorder.gauge(names::BREAKER_STATE, "per-host"), None);

    // HalfOpen still counts; closing does not.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(set.handle(&"a").unwrap().state(), State::HalfOpen);
    assert_eq!(open(), Some(2.0));
    assert_eq!(send(&mut a, Call::Ok).await.unwrap(), "ok");
    assert_eq!(open(), Some(1.0));
    set.handle(&"a").unwrap().force_open();
    assert_eq!(open(), Some(2.0));
    set.handle(&"a").unwrap().disable();
    assert_eq!(open(), Some(1.0));

    // A breaker the set no longer holds does not count, whatever it does afterwards.
    assert!(set.remove(&"b"));
    assert_eq!(open(), Some(0.0));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        send(&mut b, Call::Fail).await.unwrap_err().to_string(),
        "boom"
    );
    assert_eq!(open(), Some(0.0));
    // Nor does one evicted to make room.
    set.handle(&"a").unwrap().reset();
    let _ = send(&mut a, Call::Fail).await;
    assert_eq!(set.handle(&"a").unwrap().state(), State::Open);
    assert_eq!(open(), Some(1.0));
    drop(a);
    let _c = set.get(&"c");
    set.get(&"d");
    assert!(set.handle(&"a").is_none());
    assert_eq!(open(), Some(0.0));
    drop(set);
    assert_eq!(open(), Some(0.0));
}

/// Keys in a manual state that lets calls through (disabled, metrics only) are not counted open,
/// though they are not Closed; a key forced open is.
#[test]
fn keys_disabled_or_metrics_only_are_not_counted_open() {
    let recorder = TestRecorder::new();
    let _guard = recorder.install_local();
    let set = set(8);
    let open = || recorder.gauge(names::BREAKER_KEYS_OPEN, "per-host");
    set.get(&"disabled").handle().disable();
    set.get(&"metrics-only").handle().metrics_only();
    assert_eq!(set.handle(&"disabled").unwrap().state(), State::Disabled);
    assert_eq!(
        set.handle(&"metrics-only").unwrap().state(),
        State::MetricsOnly
    );
    assert_eq!(open(), Some(0.0));
    set.get(&"forced").handle().force_open();
    assert_eq!(open(), Some(1.0));
}

/// A key whose endpoint is gone (a balancer's discovery removed it) loses its breaker, Open
/// included, unless an operator put it in a manual state: that one is kept, so the key comes back
/// in it rather than Closed.
#[tokio::test(start_paused = true)]
async fn removing_a_key_unless_manual_keeps_an_operators_choice() {
    let recorder = TestRecorder::new();
    let _recorder = recorder.install_local();
    let open = || recorder.gauge(names::BREAKER_KEYS_OPEN, "per-host");
    let set = set(8);
    let mut failing = set.get(&"failing").layer(dependency().0);
    let _ = send(&mut failing, Call::Fail).await;
    set.get(&"closed");
    set.get(&"forced").handle().force_open();
    set.get(&"disabled").handle().disable();
    set.get(&"shadow").handle().metrics_only();
    assert_eq!(open(), Some(2.0));

    assert!(set.remove_unless_manual(&"failing"));
    assert!(set.handle(&"failing").is_none());
    assert_eq!(open(), Some(1.0), "the Open breaker no longer counts");
    assert!(set.remove_unless_manual(&"closed"));
    assert!(set.handle(&"closed").is_none());
    for (key, state) in [
        ("forced", State::ForcedOpen),
        ("disabled", State::Disabled),
        ("shadow", State::MetricsOnly),
    ] {
        assert!(!set.remove_unless_manual(&key), "{key}");
        assert_eq!(set.get(&key).handle().state(), state, "{key}");
    }
    assert_eq!(open(), Some(1.0), "the forced-open breaker still counts");
    assert!(!set.remove_unless_manual(&"never"));
    assert_eq!(set.len(), 3);

    // Back to an automatic state, the breaker goes like any other.
    set.handle(&"forced").unwrap().reset();
    assert!(set.remove_unless_manual(&"forced"));
    assert_eq!(set.len(), 2);
    assert_eq!(open(), Some(0.0));
}

/// A manual change made through a handle does not take the set's lock: made once the key's
/// breaker has been forgotten (here, just after; racing the removal, when it lands after the
/// removal read the state), it applies to the forgotten breaker alone, and the key comes back
/// Closed. An operator checks afterwards that the key still has the breaker they changed, and
/// changes the key's current one if not.
#[tokio::test(start_paused = true)]
async fn a_manual_change_after_the_removal_applies_to_the_forgotten_breaker_alone() {
    let set = set(8);
    let drained = set.get(&"a").handle();
    assert!(set.remove_unless_manual(&"a"));
    drained.force_open();
    assert_eq!(drained.state(), State::ForcedOpen);
    assert!(
        set.handle(&"a").is_none(),
        "the forced breaker is not the key's"
    );
    assert_eq!(set.get(&"a").handle().state(), State::Closed);

    // The check: does the key still have the breaker that was forced open?
    let kept = |set: &BreakerSet<&'static str>| {
        set.handle(&"a")
            .is_some_and(|current| current.same_breaker(&drained))
    };
    assert!(!kept(&set));
    set.get(&"a").handle().force_open();
    assert!(!set.remove_unless_manual(&"a"));
    assert_eq!(set.get(&"a").handle().state(), State::ForcedOpen);
}

#[test]
fn capacity_is_validated() {
    let config = BreakerConfig::builder().build_config().unwrap();
    let err = BreakerSet::<u32>::new(config, 0).unwrap_err();
    assert_eq!(err.to_string(), "capacity must be in 1..=1000000, got 0");
}

/// A listener registered while a new key is being looked up hears that key's breaker: the lookup
/// took the set's listeners before the registration, and here its key's second hash (after the
/// lookup under the read lock, the seed of its jitter, taken with no lock held) is held until the
/// registration has returned.
#[test]
fn a_listener_registered_during_a_new_keys_lookup_hears_its_breaker() {
    let config = BreakerConfig::builder()
        .name("per-host")
        .seed(7)
        .build_config()
        .unwrap();
    let set: BreakerSet<Host> = BreakerSet::new(config, 8).unwrap();
    // A set holding a key hashes a new one as it looks it up (an empty one does not).
    let _ = set.get(&Host::new("known"));
    let (entered, has_entered) = mpsc::channel();
    let (go, wait) = mpsc::channel();
    let held = Host::held_at("held", 2, entered, wait);
    let hold = held.hold.clone().unwrap();
    let looking_up = std::thread::spawn({
        let set = set.clone();
        move || drop(set.get(&held))
    });
    has_entered
        .recv_timeout(Duration::from_secs(10))
        .expect("the new key's lookup started");
    let heard = Arc::new(Mutex::new(Vec::new()));
    let _ = set.clone().on_transition({
        let heard = heard.clone();
        move |key: &Host, t: &Transition| heard.lock().unwrap().push((key.name, t.to))
    });
    let _ = go.send(());
    looking_up.join().unwrap();
    assert_eq!(*hold.let_go.lock().unwrap(), Some(true));

    set.handle(&Host::new("held")).unwrap().force_open();
    assert_eq!(*heard.lock().unwrap(), [("held", State::ForcedOpen)]);
}
