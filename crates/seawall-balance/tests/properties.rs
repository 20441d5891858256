//! Properties over random configurations: weights honoured exactly, consistent hashing moves only
//! the removed endpoint's keys, ejection limits always hold.
//!
//! Cases: `SEAWALL_PROPTEST_CASES` (default 48).

mod common;

use common::{Behavior, Node};
use proptest::prelude::*;
use seawall::balance::{BalanceLayer, Change, OutlierDetection, Picker, Tagged};
use std::sync::{atomic::Ordering::Relaxed, Arc};
use tower::{Layer, ServiceExt};

fn config() -> ProptestConfig {
    let cases = std::env::var("SEAWALL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    seeded(cases)
}

/// Proptest's configuration with `cases` cases and a fixed seed, so that every run tries the same
/// cases; a seed in `PROPTEST_RNG_SEED` still takes precedence.
fn seeded(cases: u32) -> ProptestConfig {
    use proptest::test_runner::RngSeed;
    let mut config = ProptestConfig::with_cases(cases);
    // `ProptestConfig::default()` reads `PROPTEST_RNG_SEED`; without it the seed is random.
    if config.rng_seed == RngSeed::Random {
        config.rng_seed = RngSeed::Fixed(0x05EA_0A11);
    }
    config
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn weighted_round_robin_gives_each_endpoint_its_weight(
        weights in proptest::collection::vec(1u32..8, 1..7),
        cycles in 1u32..4,
    ) {
        runtime().block_on(async {
            let (tx, stream) = common::channel();
            let balance = BalanceLayer::builder()
                .picker(Picker::WeightedRoundRobin)
                .outlier_detection(OutlierDetection::disabled())
                .build()
                .unwrap()
                .layer(stream);
            let mut behaviors = Vec::new();
            for (id, &w) in weights.iter().enumerate() {
                let behavior = Arc::new(Behavior::default());
                behaviors.push(behavior.clone());
                tx.send(Change::Insert(Tagged::new(id).with_weight(w), Node { id, behavior }))
                    .unwrap();
            }
            common::settle().await;
            let total: u32 = weights.iter().sum::<u32>() * cycles;
            for i in 0..total {
                balance.clone().oneshot(u64::from(i)).await.unwrap();
            }
            let hits: Vec<u32> = behaviors.iter().map(|b| b.hits.load(Relaxed)).collect();
            let want: Vec<u32> = weights.iter().map(|w| w * cycles).collect();
            prop_assert_eq!(hits, want);
            Ok(())
        })?;
    }

    #[test]
    fn removing_an_endpoint_moves_only_its_keys(n in 3usize..9, removed in 0usize..9, seed in any::<u64>()) {
        let removed = removed % n;
        runtime().block_on(async {
            let (balance, cluster) = common::cluster(
                n,
                BalanceLayer::builder()
                    .seed(seed)
                    .picker(Picker::consistent_hash())
                    .hash_key(common::key_of)
                    .outlier_detection(OutlierDetection::disabled()),
            )
            .await;
            let keys = 600u64;
            let mut owner = Vec::new();
            for key in 0..keys {
                owner.push(balance.clone().oneshot(key.wrapping_mul(seed | 1)).await.unwrap());
            }
            cluster.tx.send(Change::Remove(removed)).unwrap();
            common::settle().await;
            let mut moved = 0;
            for key in 0..keys {
                let now = balance.clone().oneshot(key.wrapping_mul(seed | 1)).await.unwrap();
                if now != owner[key as usize] {
                    prop_assert_eq!(owner[key as usize], removed);
                    moved += 1;
                }
            }
            let share = f64::from(moved) / keys as f64;
            prop_assert!(share <= 1.0 / n as f64 + 0.12, "moved {} of keys with n = {}", share, n);
            Ok(())
        })?;
    }

    #[test]
    fn ejection_limits_hold(
        failing in proptest::collection::vec(any::<bool>(), 2..10),
        max_percent in 0.0f64..=1.0,
    ) {
        let n = failing.len();
        runtime().block_on(async {
            let (balance, cluster) = common::cluster(
                n,
                BalanceLayer::builder()
                    .seed(3)
                    .picker(Picker::RoundRobin)
                    .panic_threshold(0.0)
                    .outlier_detection(OutlierDetection {
                        consecutive_failures: Some(1),
                        success_rate: None,
                        failure_percentage: None,
                        latency: None,
                        max_ejection_percent: max_percent,
                        ..OutlierDetection::default()
                    }),
            )
            .await;
            for (i, &f) in failing.iter().enumerate() {
                cluster.node(i).fail.store(f, Relaxed);
            }
            common::drive(&balance, 4 * n).await;
            let ejected = balance.unhealthy().len();
            let failing_count = failing.iter().filter(|f| **f).count();
            // At most max_percent of the endpoints (one always allowed), never all of them,
            // and only failing ones.
            let limit = ((max_percent * n as f64).ceil() as usize).max(1);
            prop_assert!(ejected <= limit, "{} ejected, limit {}", ejected, limit);
            prop_assert!(ejected < n);
            prop_assert!(ejected <= failing_count);
            prop_assert!(balance.unhealthy().iter().all(|&i| failing[i]));
            Ok(())
        })?;
    }
}
