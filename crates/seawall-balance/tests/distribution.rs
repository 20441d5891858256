//! Distribution per picker, with seeded randomness and statistical bounds.

mod common;

use common::{cluster, drive, drive_concurrent, settle, Behavior, Node};
use seawall::balance::{
    Balance, BalanceLayer, Change, HealthCheck, OutlierDetection, Picker, Tagged,
};
use std::{
    sync::{atomic::Ordering::Relaxed, Arc},
    time::Duration,
};
use tower::{Layer, Service, ServiceExt};

fn quiet() -> seawall::balance::BalanceConfigBuilder {
    BalanceLayer::builder()
        .seed(42)
        .outlier_detection(OutlierDetection::disabled())
}

#[tokio::test(start_paused = true)]
async fn round_robin_is_exactly_even() {
    let (balance, cluster) = cluster(4, quiet().picker(Picker::RoundRobin)).await;
    assert_eq!(drive(&balance, 400).await, 0);
    assert_eq!(cluster.hits(), vec![100; 4]);
}

/// Balancers started together over the same discovery order do not move in lockstep: each
/// starts its turns where its seed says, and the same seed starts at the same place.
#[tokio::test(start_paused = true)]
async fn round_robin_starts_at_a_place_of_its_seed() {
    let mut firsts = Vec::new();
    for seed in 0..16 {
        let builder = BalanceLayer::builder()
            .seed(seed)
            .outlier_detection(OutlierDetection::disabled())
            .picker(Picker::RoundRobin);
        let (balance, cluster) = cluster(8, builder).await;
        assert_eq!(drive(&balance, 1).await, 0);
        let hits = cluster.hits();
        firsts.push(hits.iter().position(|&h| h == 1).unwrap());
    }
    let distinct: std::collections::BTreeSet<_> = firsts.iter().collect();
    assert!(distinct.len() >= 5, "16 seeds started at {firsts:?}");

    let again = BalanceLayer::builder()
        .seed(3)
        .outlier_detection(OutlierDetection::disabled())
        .picker(Picker::RoundRobin);
    let (balance, cluster) = cluster(8, again).await;
    assert_eq!(drive(&balance, 1).await, 0);
    assert_eq!(cluster.hits().iter().position(|&h| h == 1), Some(firsts[3]));
}

#[tokio::test(start_paused = true)]
async fn random_is_uniform_within_bounds() {
    let (balance, cluster) = cluster(5, quiet().picker(Picker::Random)).await;
    let calls = 5000;
    assert_eq!(drive(&balance, calls).await, 0);
    // Binomial(5000, 0.2): sd ≈ 28; 5 sd bounds.
    for hits in cluster.hits() {
        assert!((860..=1140).contains(&hits), "{:?}", cluster.hits());
    }
}

/// Two endpoints of ten are available (a filter refuses the others, as open breakers would):
/// random picks stay uniform over the two, whichever places they hold in the set.
#[tokio::test(start_paused = true)]
async fn random_is_uniform_over_the_available_endpoints() {
    let (balance, cluster) = cluster(
        10,
        quiet()
            .picker(Picker::Random)
            .filter(|key: &usize, _: &Node| *key < 2),
    )
    .await;
    let calls = 4000;
    assert_eq!(drive(&balance, calls).await, 0);
    let hits = cluster.hits();
    // Binomial(4000, 0.5): sd ≈ 32; 5 sd bounds.
    assert!((1840..=2160).contains(&hits[0]), "{hits:?}");
    assert_eq!(hits[0] + hits[1], 4000, "{hits:?}");
}

/// Each clone of a seeded balancer has a random stream of its own, fixed by the order the clones
/// were made in, not by the order they are first called in: seeded runs repeat.
#[tokio::test(start_paused = true)]
async fn a_clones_random_stream_follows_the_order_the_clones_were_made_in() {
    async fn picks(balance: &mut Balance<usize, Node>, n: u64) -> Vec<usize> {
        let mut picks = Vec::new();
        for i in 0..n {
            picks.push(balance.ready().await.unwrap().call(i).await.unwrap());
        }
        picks
    }

    let (balance, _cluster) = cluster(8, quiet().picker(Picker::Random)).await;
    let (mut a, mut b) = (balance.clone(), balance.clone());
    let a_first = picks(&mut a, 32).await;
    let b_second = picks(&mut b, 32).await;

    let (balance, _cluster) = cluster(8, quiet().picker(Picker::Random)).await;
    let (mut a, mut b) = (balance.clone(), balance.clone());
    let b_first = picks(&mut b, 32).await;
    let a_second = picks(&mut a, 32).await;

    assert_eq!(a_first, a_second);
    assert_eq!(b_first, b_second);
    assert_ne!(a_first, b_first, "two clones, one stream");
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_honours_weights() {
    let (tx, stream) = common::channel();
    let balance = quiet()
        .picker(Picker::WeightedRoundRobin)
        .build()
        .unwrap()
        .layer(stream);
    let mut behaviors = Vec::new();
    for (id, weight) in [(0usize, 1u32), (1, 2), (2, 5)] {
        let behavior = Arc::new(Behavior::default());
        behaviors.push(behavior.clone());
        let key = Tagged::new(id).with_weight(weight);
        tx.send(Change::Insert(key, Node { id, behavior })).unwrap();
    }
    settle().await;
    for i in 0..800u64 {
        balance.clone().oneshot(i).await.unwrap();
    }
    let hits: Vec<u32> = behaviors.iter().map(|b| b.hits.load(Relaxed)).collect();
    // 100 full cycles of 1 + 2 + 5.
    assert_eq!(hits, vec![100, 200, 500]);
}

#[tokio::test(start_paused = true)]
async fn least_outstanding_avoids_busy_endpoints() {
    let (balance, cluster) = cluster(3, quiet().picker(Picker::LeastOutstanding)).await;
    for b in &cluster.behaviors {
        b.delay_ms.store(100, Relaxed);
    }
    // 30 concurrent calls: each lands on an endpoint with the fewest in flight, so they spread
    // exactly evenly.
    assert_eq!(drive_concurrent(&balance, 30, 30).await, 0);
    assert_eq!(cluster.hits(), vec![10, 10, 10]);
}

#[tokio::test(start_paused = true)]
async fn p2c_by_outstanding_moves_load_off_a_slow_endpoint() {
    for choices in [2, 3] {
        let (balance, cluster) =
            cluster(4, quiet().picker(Picker::P2cOutstanding { choices })).await;
        // Node 0 holds its calls 20 times longer, so its in-flight count stays high.
        cluster.node(0).delay_ms.store(200, Relaxed);
        for i in 1..4 {
            cluster.node(i).delay_ms.store(10, Relaxed);
        }
        assert_eq!(drive_concurrent(&balance, 2000, 16).await, 0);
        let hits = cluster.hits();
        let fast_mean = hits[1..].iter().sum::<u32>() as f64 / 3.0;
        assert!(
            (hits[0] as f64) < fast_mean * 0.5,
            "choices {choices}: slow endpoint got {hits:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn p2c_by_outstanding_is_even_for_equal_endpoints() {
    let (balance, cluster) = cluster(4, quiet().picker(Picker::p2c())).await;
    for b in &cluster.behaviors {
        b.delay_ms.store(10, Relaxed);
    }
    assert_eq!(drive_concurrent(&balance, 4000, 8).await, 0);
    for hits in cluster.hits() {
        assert!((850..=1150).contains(&hits), "{:?}", cluster.hits());
    }
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_prefers_fast_endpoints() {
    let (balance, cluster) = cluster(4, quiet().picker(Picker::p2c_peak_ewma())).await;
    cluster.node(0).delay_ms.store(100, Relaxed);
    for i in 1..4 {
        cluster.node(i).delay_ms.store(5, Relaxed);
    }
    assert_eq!(drive(&balance, 2000).await, 0);
    let hits = cluster.hits();
    // Sequential calls: p2c draws the slow endpoint in half of its pairs and loses them all
    // once its latency is known.
    assert!(hits[0] < 60, "{hits:?}");
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_counts_fast_failures_as_slow() {
    let (balance, cluster) = cluster(4, quiet().picker(Picker::p2c_peak_ewma())).await;
    // Node 0 fails at once; the others take 20 ms. Without the failure penalty node 0 would
    // look fastest and draw most of the traffic.
    cluster.node(0).fail.store(true, Relaxed);
    for i in 1..4 {
        cluster.node(i).delay_ms.store(20, Relaxed);
    }
    let failed = drive(&balance, 2000).await;
    let hits = cluster.hits();
    assert_eq!(failed as u32, hits[0]);
    assert!(
        hits[0] < 60,
        "fast-failing endpoint attracted traffic: {hits:?}"
    );
}

/// Calls to node 0 never answer and are dropped by a timeout (`timeout_ms`) above the balancer. A
/// dropped call has no outcome, but the time it had been in flight bounds the endpoint's latency
/// from below: without it node 0 would never be measured, would cost nothing whenever idle, and
/// would win most picks. A timeout shorter than `default_rtt` (30 ms) still uses up node 0's trial
/// call.
async fn hanging_endpoint_loses_picks_when_its_calls_are_dropped(picker: Picker, timeout_ms: u64) {
    let (balance, cluster) = cluster(4, quiet().picker(picker.clone())).await;
    cluster.node(0).delay_ms.store(u64::MAX / 4, Relaxed);
    for i in 1..4 {
        cluster.node(i).delay_ms.store(5, Relaxed);
    }
    let mut timed_out = 0;
    for i in 0..400 {
        let call = balance.clone().oneshot(i);
        if tokio::time::timeout(Duration::from_millis(timeout_ms), call)
            .await
            .is_err()
        {
            timed_out += 1;
        }
    }
    // About 400 × 5 ms + timeouts: a few seconds, within one 10 s decay period, so one trial call.
    assert_eq!(cluster.hits()[0], timed_out);
    assert!(
        timed_out <= 2,
        "{picker:?}, timeout {timeout_ms} ms: {timed_out} of 400 calls went to the hanging endpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn p2c_peak_ewma_counts_dropped_calls_as_slow() {
    hanging_endpoint_loses_picks_when_its_calls_are_dropped(Picker::p2c_peak_ewma(), 100).await;
}

#[tokio::test(start_paused = true)]
async fn least_peak_ewma_counts_dropped_calls_as_slow() {
    hanging_endpoint_loses_picks_when_its_calls_are_dropped(Picker::least_peak_ewma(), 100).await;
}

/// Callers that give up sooner than `default_rtt`: the dropped trial call still counts.
#[tokio::test(start_paused = true)]
async fn p2c_peak_ewma_counts_calls_dropped_before_default_rtt() {
    hanging_endpoint_loses_picks_when_its_calls_are_dropped(Picker::p2c_peak_ewma(), 20).await;
}

#[tokio::test(start_paused = true)]
async fn least_peak_ewma_counts_calls_dropped_before_default_rtt() {
    hanging_endpoint_loses_picks_when_its_calls_are_dropped(Picker::least_peak_ewma(), 20).await;
}

#[tokio::test(start_paused = true)]
async fn least_peak_ewma_sends_the_slowest_almost_nothing() {
    let (balance, cluster) = cluster(5, quiet().picker(Picker::least_peak_ewma())).await;
    let delays = [1, 2, 3, 50, 200];
    for (i, d) in delays.iter().enumerate() {
        cluster.node(i).delay_ms.store(*d, Relaxed);
    }
    assert_eq!(drive(&balance, 2000).await, 0);
    let hits = cluster.hits();
    // A full scan finds the cheapest every time: after one call each to learn their latency,
    // the 50 ms and 200 ms endpoints are never the cheapest of sequential calls.
    assert!(hits[3] <= 2 && hits[4] <= 2, "{hits:?}");
    assert!(hits[0] > 1500, "{hits:?}");
}

#[tokio::test(start_paused = true)]
async fn least_peak_ewma_counts_fast_failures_as_slow() {
    let (balance, cluster) = cluster(4, quiet().picker(Picker::least_peak_ewma())).await;
    cluster.node(0).fail.store(true, Relaxed);
    for i in 1..4 {
        cluster.node(i).delay_ms.store(20, Relaxed);
    }
    // 2000 calls of 20 ms last 40 s: a trial call per 10 s decay period, and no more.
    let failed = drive(&balance, 2000).await;
    assert!(
        failed <= 6,
        "{failed} calls went to the fast-failing endpoint"
    );
}

#[tokio::test(start_paused = true)]
async fn peak_ewma_readmits_a_recovered_endpoint_within_one_decay_period() {
    let (balance, cluster) = cluster(4, quiet().picker(Picker::p2c_peak_ewma())).await;
    for i in 0..4 {
        cluster.node(i).delay_ms.store(10, Relaxed);
    }
    // Node 0 fails fast for a while: after its trial call, its failure penalty keeps it out.
    cluster.node(0).fail.store(true, Relaxed);
    drive(&balance, 200).await;
    let out = cluster.hits()[0];
    assert!((1..=3).contains(&out), "{out}");
    cluster.node(0).fail.store(false, Relaxed);
    // Once its estimate is a decay period (10 s) old it is tried again and, now fast, readmitted.
    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
    drive(&balance, 400).await;
    let back = cluster.hits()[0] - out;
    assert!(back >= 50, "recovered endpoint got {back} of 400 calls");
}

/// Node 0 answers in 2 s, the others in 10 ms, under 64 calls at a time. Once node 0's estimate
/// is a decay period old it gets a trial call; while that call is in flight node 0 still costs
/// what it was last measured at, so the calls that arrive meanwhile go to the fast endpoints: one
/// trial call per decay period to an endpoint that is still slow, however busy the others are.
async fn a_slow_endpoint_gets_one_trial_call_under_load(picker: Picker) {
    let (balance, cluster) = cluster(4, quiet().picker(picker.clone())).await;
    cluster.node(0).delay_ms.store(2000, Relaxed);
    for i in 1..4 {
        cluster.node(i).delay_ms.store(10, Relaxed);
    }
    // Node 0 gets measured (this waits for its 2 s calls).
    assert_eq!(drive_concurrent(&balance, 2000, 64).await, 0);
    assert!(cluster.hits()[0] > 0);
    // A decay period later its estimate is stale.
    tokio::time::sleep(Duration::from_secs(11)).await;
    cluster.reset();
    let start = tokio::time::Instant::now();
    assert_eq!(drive_concurrent(&balance, 10_000, 64).await, 0);
    // The fast endpoints took those calls in about 1.6 s, within node 0's trial call.
    assert!(start.elapsed() < Duration::from_secs(3));
    let hits = cluster.hits();
    assert_eq!(hits[0], 1, "{picker:?}: {hits:?}");
}

#[tokio::test(start_paused = true)]
async fn p2c_peak_ewma_sends_a_slow_endpoint_one_trial_call_under_load() {
    a_slow_endpoint_gets_one_trial_call_under_load(Picker::p2c_peak_ewma()).await;
}

#[tokio::test(start_paused = true)]
async fn least_peak_ewma_sends_a_slow_endpoint_one_trial_call_under_load() {
    a_slow_endpoint_gets_one_trial_call_under_load(Picker::least_peak_ewma()).await;
}

#[tokio::test(start_paused = true)]
async fn consistent_hash_is_sticky_and_spread() {
    let (balance, cluster) = cluster(
        5,
        quiet()
            .picker(Picker::consistent_hash())
            .hash_key(common::key_of),
    )
    .await;
    let mut owner = Vec::new();
    for key in 0..2000u64 {
        owner.push(balance.clone().oneshot(key).await.unwrap());
        // The same key always lands on the same endpoint.
        assert_eq!(
            balance.clone().oneshot(key).await.unwrap(),
            owner[key as usize]
        );
    }
    // 160 points per endpoint: each owns 20 % ± a few points of the keys.
    for hits in cluster.hits() {
        assert!((2 * 250..=2 * 550).contains(&hits), "{:?}", cluster.hits());
    }

    // Removing one of n endpoints moves only its own keys (≤ 1/n + ε of all keys).
    cluster.tx.send(Change::Remove(3)).unwrap();
    settle().await;
    let mut moved = 0;
    for key in 0..2000u64 {
        let now = balance.clone().oneshot(key).await.unwrap();
        if now != owner[key as usize] {
            assert_eq!(
                owner[key as usize], 3,
                "key {key} moved off a surviving endpoint"
            );
            moved += 1;
        }
    }
    let share = moved as f64 / 2000.0;
    assert!(share <= 0.2 + 0.07, "moved {share}");
    assert!(share > 0.0);
}

#[tokio::test(start_paused = true)]
async fn consistent_hash_skips_an_unavailable_owner() {
    let (balance, cluster) = cluster(
        3,
        BalanceLayer::builder()
            .seed(1)
            .picker(Picker::consistent_hash())
            .hash_key(common::key_of)
            .outlier_detection(OutlierDetection {
                consecutive_failures: Some(1),
                success_rate: None,
                failure_percentage: None,
                latency: None,
                max_ejection_percent: 1.0,
                ..OutlierDetection::default()
            }),
    )
    .await;
    let owner = balance.clone().oneshot(9).await.unwrap();
    cluster.node(owner).fail.store(true, Relaxed);
    assert!(balance.clone().oneshot(9).await.is_err());
    // Ejected now: key 9 goes to the next endpoint on the ring, consistently.
    let next = balance.clone().oneshot(9).await.unwrap();
    assert_ne!(next, owner);
    assert_eq!(balance.clone().oneshot(9).await.unwrap(), next);
}

#[tokio::test(start_paused = true)]
async fn zone_aware_prefers_the_local_zone_and_leaves_it_when_unhealthy() {
    let (tx, stream) = common::channel();
    let balance = BalanceLayer::builder()
        .seed(3)
        .picker(Picker::zone_aware("a"))
        .outlier_detection(OutlierDetection {
            consecutive_failures: Some(1),
            success_rate: None,
            failure_percentage: None,
            latency: None,
            max_ejection_percent: 1.0,
            ..OutlierDetection::default()
        })
        .panic_threshold(0.0)
        .build()
        .unwrap()
        .layer(stream);
    let mut behaviors = Vec::new();
    for (id, zone) in [(0usize, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "c")] {
        let behavior = Arc::new(Behavior::default());
        behaviors.push(behavior.clone());
        let key = Tagged::new(id).with_zone(zone);
        tx.send(Change::Insert(key, Node { id, behavior })).unwrap();
    }
    settle().await;
    let hits = |b: &[Arc<Behavior>]| {
        b.iter()
            .map(|b| b.hits.swap(0, Relaxed))
            .collect::<Vec<_>>()
    };
    for i in 0..200u64 {
        balance.clone().oneshot(i).await.unwrap();
    }
    let h = hits(&behaviors);
    assert_eq!(h[0] + h[1], 200, "all traffic stays in zone a: {h:?}");
    assert!(h[0] > 60 && h[1] > 60, "{h:?}");

    // Zone a loses half its endpoints: 50 % healthy < 70 %, so traffic leaves for b and c.
    behaviors[0].fail.store(true, Relaxed);
    for _ in 0..1_000 {
        if !balance.unhealthy().is_empty() {
            break;
        }
        let _ = balance.clone().oneshot(0).await;
    }
    assert!(
        !balance.unhealthy().is_empty(),
        "no endpoint of zone a marked unhealthy after 1 000 calls"
    );
    hits(&behaviors);
    for i in 0..300u64 {
        balance.clone().oneshot(i).await.unwrap();
    }
    let h = hits(&behaviors);
    assert_eq!(h[0] + h[1], 0, "zone a avoided: {h:?}");
    assert!(h[2] + h[3] > 100 && h[4] > 30, "{h:?}");
}

/// Zones a (local), b and c of two endpoints each; the health check takes out every endpoint of
/// a and b, so two of six are healthy and the balancer panics. Health is then ignored and calls
/// spread over every endpoint (as Envoy, which routes by zone only outside panic): the local
/// zone, healthy only in that panic counts it so, does not keep them all.
#[tokio::test(start_paused = true)]
async fn zone_aware_spreads_over_every_zone_in_panic_mode() {
    let (tx, stream) = common::channel();
    let balance = quiet()
        .seed(3)
        .picker(Picker::zone_aware("a"))
        .health_check(
            HealthCheck {
                interval: Duration::from_secs(5),
                timeout: Duration::from_secs(1),
            },
            |key: &Tagged<usize>, _: Node| {
                let healthy = key.key >= 4;
                async move { healthy }
            },
        )
        .build()
        .unwrap()
        .layer(stream);
    let mut behaviors = Vec::new();
    for (id, zone) in [(0, "a"), (1, "a"), (2, "b"), (3, "b"), (4, "c"), (5, "c")] {
        let node = Node::new(id);
        behaviors.push(node.behavior.clone());
        tx.send(Change::Insert(Tagged::new(id).with_zone(zone), node))
            .unwrap();
    }
    settle().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(balance.unhealthy().len(), 4);
    assert!(balance.is_panicking(), "2 of 6 healthy < 50 %");
    for i in 0..60u64 {
        balance.clone().oneshot(i).await.unwrap();
    }
    let hits: Vec<u32> = behaviors.iter().map(|b| b.hits.load(Relaxed)).collect();
    assert_eq!(hits.iter().sum::<u32>(), 60, "{hits:?}");
    for (zone, pair) in ["a", "b", "c"].iter().zip(hits.chunks(2)) {
        assert!(pair[0] + pair[1] > 0, "zone {zone} took no calls: {hits:?}");
    }
    assert!(hits[0] + hits[1] < 60, "zone a took every call: {hits:?}");
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_stays_weighted_when_a_heavy_endpoint_is_unavailable() {
    // An unavailable endpoint's slots pass to the next slots due: with the heavy endpoint
    // refused, the two of equal weight left share the calls evenly.
    let hits = weighted_without_the_heaviest([100, 1, 1], 1200).await;
    assert!(
        (500..=700).contains(&hits[1]) && (500..=700).contains(&hits[2]),
        "equal weights, unequal shares: {hits:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn weighted_round_robin_keeps_the_weights_of_the_endpoints_left() {
    // Weights 100, 1 and 3 with the heavy endpoint refused: the other two share 1 : 3.
    let hits = weighted_without_the_heaviest([100, 1, 3], 1200).await;
    assert!(
        (200..=400).contains(&hits[1]) && (800..=1000).contains(&hits[2]),
        "weights 1 : 3, shares {hits:?}"
    );
}

/// Sends `calls` calls through weighted round robin over three endpoints of `weights`, the first
/// of them refused by the filter; returns each endpoint's hits.
async fn weighted_without_the_heaviest(weights: [u32; 3], calls: u64) -> Vec<u32> {
    let (tx, stream) = common::channel();
    let balance = quiet()
        .picker(Picker::WeightedRoundRobin)
        .filter(|key: &Tagged<usize>, _: &Node| key.key != 0)
        .build()
        .unwrap()
        .layer(stream);
    let mut behaviors = Vec::new();
    for (id, weight) in weights.into_iter().enumerate() {
        let behavior = Arc::new(Behavior::default());
        behaviors.push(behavior.clone());
        let key = Tagged::new(id).with_weight(weight);
        tx.send(Change::Insert(key, Node { id, behavior })).unwrap();
    }
    settle().await;
    for i in 0..calls {
        balance.clone().oneshot(i).await.unwrap();
    }
    let hits: Vec<u32> = behaviors.iter().map(|b| b.hits.load(Relaxed)).collect();
    assert_eq!(hits[0], 0, "the refused endpoint took calls");
    hits
}

/// Zones come and go (a fleet redeployed zone by zone many times over): a balancer that has seen
/// more than 31 zones still judges each zone it has now on its own. The local zone and zone b
/// have a third of their endpoints available, zone a all of its own: every call goes to zone a.
#[tokio::test(start_paused = true)]
async fn zones_seen_before_do_not_crowd_out_the_zones_there_now() {
    let (tx, stream) = common::channel();
    let refused = [1, 2, 7, 8];
    let balance = quiet()
        .picker(Picker::zone_aware("local"))
        .filter(move |key: &Tagged<usize>, _: &Node| !refused.contains(&key.key))
        .build()
        .unwrap()
        .layer(stream);
    for id in 0..3 {
        tx.send(Change::Insert(
            Tagged::new(id).with_zone("local"),
            Node::new(id),
        ))
        .unwrap();
    }
    for i in 0..40 {
        let key = Tagged::new(100 + i).with_zone(format!("gone-{i}"));
        tx.send(Change::Insert(key.clone(), Node::new(100 + i)))
            .unwrap();
        tx.send(Change::Remove(key)).unwrap();
    }
    let mut behaviors = Vec::new();
    for (id, zone) in [(3, "a"), (4, "a"), (5, "a"), (6, "b"), (7, "b"), (8, "b")] {
        let node = Node::new(id);
        behaviors.push(node.behavior.clone());
        tx.send(Change::Insert(Tagged::new(id).with_zone(zone), node))
            .unwrap();
    }
    settle().await;
    assert_eq!(balance.endpoints().len(), 9);
    for i in 0..300u64 {
        balance.clone().oneshot(i).await.unwrap();
    }
    let hits: Vec<u32> = behaviors.iter().map(|b| b.hits.load(Relaxed)).collect();
    assert_eq!(hits[0] + hits[1] + hits[2], 300, "{hits:?}");
}
