//! A new list that replaces endpoints: the new ones are inserted before the old ones are removed,
//! so a balancer applying the changes one at a time never sees its set empty (or smaller than
//! both lists) while it turns over.

mod common;

use common::{addr, first_resolution, next_change, queued, Zone};
use futures_util::StreamExt;
use seawall::discover::{watch, Change, Dns};
use std::{sync::atomic::Ordering::Relaxed, time::Duration};

#[tokio::test(start_paused = true)]
async fn dns_inserts_the_new_addresses_before_removing_the_old() {
    let zone = Zone::default();
    zone.ttl.store(1, Relaxed);
    zone.set_a("users.test", &[[10, 0, 0, 1]]);
    let server = zone.serve().await;
    let mut discovery = Dns::a("users.test.", 80)
        .nameservers([server])
        .build(common::make)
        .unwrap();
    assert_eq!(
        first_resolution(&mut discovery).await,
        vec![('+', addr("10.0.0.1:80"), 1)]
    );

    // The only address moves (a failover, a redeploy).
    zone.set_a("users.test", &[[10, 0, 0, 2], [10, 0, 0, 3]]);
    let mut changes = vec![next_change(&mut discovery).await];
    changes.extend(queued(&mut discovery));
    assert_eq!(changes.len(), 3, "{changes:?}");
    assert_eq!(changes[2], ('-', addr("10.0.0.1:80"), 1), "{changes:?}");
}

#[tokio::test(start_paused = true)]
async fn watch_inserts_the_new_keys_before_removing_the_old() {
    let (publish, list) = tokio::sync::watch::channel(vec![1u32]);
    let mut discovery = watch(list, |k: &u32| *k);
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Insert(1, 1)))
    ));
    publish.send(vec![2]).unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Insert(2, 2)))
    ));
    assert!(matches!(
        discovery.next().await,
        Some(Ok(Change::Remove(1)))
    ));
}
