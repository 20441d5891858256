//! Model checks of the ratio budget's lock-free batching: deposits joining the open batch, opening
//! the next one and filing a full one race each other and the withdrawals that file the open
//! batch, and no deposit is lost or counted twice.
//!
//! Run: `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test -p seawall-retry --release --test loom`
#![cfg(loom)]

use loom::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
};
use seawall_retry::RetryBudget;
use std::time::Duration;

/// Explores every interleaving with up to three preemptions, which covers each compare-and-swap
/// losing a race to each other thread. The longest run takes between 711 and 720 branches, within
/// loom's default limit of 1000 (`LOOM_MAX_BRANCHES`).
fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    builder.check(f);
}

/// Deposits made before the threads start, in no time at all (the budget's clock stands still
/// under loom): the budget then counts requests in batches of [`FLUSH_EVERY`], and the open batch
/// holds [`OPEN`]. So the threads' deposits join it, overfill it racing each other, race to file it
/// (one takes the lock, the other joins the next batch) and open the next one.
const WARM_UP: usize = 45;
/// Requests in a full batch after the warm-up.
const FLUSH_EVERY: u64 = 8;
/// Requests in the open batch after the warm-up: one short of full.
const OPEN: u64 = 7;

/// One retry per request and no reserve, over a window much longer than the model runs: every
/// deposit pays for exactly one withdrawal.
fn budget() -> RetryBudget {
    let budget = RetryBudget::builder()
        .ratio(1.0)
        .min_per_second(0)
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    for _ in 0..WARM_UP {
        budget.deposit();
    }
    // Otherwise the threads race over some other state, perhaps one with nothing to race for.
    assert_eq!(
        budget.batching(),
        Some((FLUSH_EVERY, OPEN)),
        "the warm-up leaves (full batch, open batch)"
    );
    budget
}

/// Withdraws until the budget refuses: how many retries were left.
fn drain(budget: &RetryBudget) -> usize {
    let mut n = 0;
    while budget.try_withdraw() {
        n += 1;
    }
    n
}

#[test]
fn racing_deposits_are_each_counted_once() {
    model(|| {
        let budget = budget();
        let depositors: Vec<_> = (0..2)
            .map(|_| {
                let budget = budget.clone();
                thread::spawn(move || {
                    for _ in 0..3 {
                        budget.deposit();
                    }
                })
            })
            .collect();
        for depositor in depositors {
            depositor.join().unwrap();
        }
        assert_eq!(drain(&budget), WARM_UP + 6);
    });
}

#[test]
fn deposits_racing_a_withdrawal_are_each_counted_once() {
    model(|| {
        let budget = budget();
        let withdrawn = Arc::new(AtomicUsize::new(0));
        let depositor = {
            let budget = budget.clone();
            thread::spawn(move || {
                for _ in 0..3 {
                    budget.deposit();
                }
            })
        };
        let withdrawer = {
            let budget = budget.clone();
            let withdrawn = withdrawn.clone();
            thread::spawn(move || {
                budget.deposit();
                if budget.try_withdraw() {
                    withdrawn.fetch_add(1, Ordering::SeqCst);
                }
                budget.deposit();
            })
        };
        depositor.join().unwrap();
        withdrawer.join().unwrap();
        let withdrawn = withdrawn.load(Ordering::SeqCst);
        assert_eq!(withdrawn, 1, "the warm-up alone pays for it");
        assert_eq!(withdrawn + drain(&budget), WARM_UP + 5);
    });
}
