//! A query goes to every name server at once, so servers that do not answer hold a resolution up
//! for one timeout together, however many there are.

mod common;

use common::{make, Zone};
use hickory_proto::rr::RecordType;
use seawall::discover::Dns;
use std::time::Duration;

#[tokio::test(start_paused = true)]
async fn every_name_server_is_asked_at_once() {
    let zones: Vec<Zone> = (0..3)
        .map(|_| {
            let zone = Zone::with_ttl(60);
            zone.set_a("api.test", &[[10, 0, 0, 1]]);
            zone.silence("api.test", true);
            zone
        })
        .collect();
    let mut servers = Vec::new();
    for zone in &zones {
        servers.push(zone.serve().await);
    }
    let start = tokio::time::Instant::now();
    let _discovery = Dns::a("api.test.", 80)
        .nameservers(servers)
        .timeout(Duration::from_secs(2))
        .min_refresh(Duration::from_secs(10))
        .build(make)
        .unwrap();
    // Past the first query's timeout, before the next resolution.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for zone in &zones {
        assert_eq!(zone.asked_at(RecordType::A, start), vec![Duration::ZERO]);
    }
}
