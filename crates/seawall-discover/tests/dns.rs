//! DNS discovery against a real DNS server on loopback, started by the test: records change
//! mid-test and the endpoint set follows; an outage keeps the last set.
//!
//! Sockets are involved, so these tests run in real time with generous, bounded waits.

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        rdata::{A, SRV},
        Name, RData, Record, RecordType,
    },
};
use seawall::balance::{BalanceLayer, Picker, Tagged};
use seawall::discover::{Change, Discovery, Dns};
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr},
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::net::UdpSocket;
use tower::{service_fn, Layer, ServiceExt};

type Table = HashMap<(String, RecordType), Vec<RData>>;

/// A tiny authoritative DNS server: answers A and SRV questions from a table the test edits.
#[derive(Clone, Default)]
struct Zone {
    records: Arc<Mutex<Table>>,
    down: Arc<AtomicBool>,
    queries: Arc<AtomicU32>,
    ttl: Arc<AtomicU32>,
}

impl Zone {
    fn set_a(&self, host: &str, ips: &[[u8; 4]]) {
        let data = ips
            .iter()
            .map(|ip| RData::A(A(Ipv4Addr::from(*ip))))
            .collect();
        self.records
            .lock()
            .unwrap()
            .insert((host.to_owned(), RecordType::A), data);
    }

    fn set_srv(&self, name: &str, targets: &[(u16, u16, u16, &str)]) {
        let data = targets
            .iter()
            .map(|&(priority, weight, port, target)| {
                RData::SRV(SRV::new(
                    priority,
                    weight,
                    port,
                    Name::from_str(target).unwrap(),
                ))
            })
            .collect();
        self.records
            .lock()
            .unwrap()
            .insert((name.to_owned(), RecordType::SRV), data);
    }

    async fn serve(&self) -> SocketAddr {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((len, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                zone.queries.fetch_add(1, Relaxed);
                if zone.down.load(Relaxed) {
                    continue; // an outage: no answer at all
                }
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                let response = zone.answer(&request);
                let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    fn answer(&self, request: &Message) -> Message {
        let mut response = Message::new();
        response
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(OpCode::Query)
            .set_authoritative(true)
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true);
        let ttl = self.ttl.load(Relaxed);
        let mut found = false;
        for query in request.queries() {
            response.add_query(query.clone());
            let host = query.name().to_string();
            let host = host.trim_end_matches('.').to_owned();
            let records = self.records.lock().unwrap();
            if let Some(data) = records.get(&(host, query.query_type())) {
                for rdata in data {
                    found = true;
                    response.add_answer(Record::from_rdata(
                        query.name().clone(),
                        ttl,
                        rdata.clone(),
                    ));
                }
            }
        }
        if !found {
            response.set_response_code(ResponseCode::NXDomain);
        }
        response
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Waits (bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

type Endpoint = tower::util::BoxCloneSyncService<(), SocketAddr, seawall::BoxError>;

fn make(key: &Tagged<SocketAddr>) -> Endpoint {
    let addr = key.key;
    tower::util::BoxCloneSyncService::new(service_fn(move |()| async move {
        Ok::<_, seawall::BoxError>(addr)
    }))
}

fn sorted(mut keys: Vec<Tagged<SocketAddr>>) -> Vec<SocketAddr> {
    keys.sort();
    keys.into_iter().map(|k| k.key).collect()
}

#[tokio::test]
async fn a_records_follow_changes_and_survive_an_outage() {
    let zone = Zone::default();
    zone.ttl.store(0, Relaxed);
    zone.set_a("users.test", &[[10, 0, 0, 1], [10, 0, 0, 2]]);
    let server = zone.serve().await;
    let discovery = Dns::a("users.test.", 8080)
        .nameservers([server])
        .min_refresh(Duration::from_millis(50))
        .max_refresh(Duration::from_millis(200))
        .timeout(Duration::from_millis(200))
        .build(make)
        .unwrap();
    let balance = BalanceLayer::builder()
        .picker(Picker::RoundRobin)
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap()
        .layer(discovery);
    let first = balance.clone().oneshot(()).await.unwrap();
    assert!(first == addr("10.0.0.1:8080") || first == addr("10.0.0.2:8080"));
    eventually("both records", || {
        sorted(balance.endpoints()) == vec![addr("10.0.0.1:8080"), addr("10.0.0.2:8080")]
    })
    .await;

    // Records change mid-test: one goes, one comes.
    zone.set_a("users.test", &[[10, 0, 0, 2], [10, 0, 0, 3]]);
    eventually("the new records", || {
        sorted(balance.endpoints()) == vec![addr("10.0.0.2:8080"), addr("10.0.0.3:8080")]
    })
    .await;

    // DNS outage: queries go unanswered, the set stays.
    zone.down.store(true, Relaxed);
    let before = zone.queries.load(Relaxed);
    eventually("queries during the outage", || {
        zone.queries.load(Relaxed) >= before + 3
    })
    .await;
    assert_eq!(
        sorted(balance.endpoints()),
        vec![addr("10.0.0.2:8080"), addr("10.0.0.3:8080")]
    );
    assert!(balance.clone().oneshot(()).await.is_ok());

    // An answer without records is a failure too: the last good set stays.
    zone.down.store(false, Relaxed);
    zone.set_a("users.test", &[]);
    let before = zone.queries.load(Relaxed);
    eventually("answered queries", || {
        zone.queries.load(Relaxed) >= before + 3
    })
    .await;
    assert_eq!(balance.endpoints().len(), 2);

    // Back: the set follows the server again.
    zone.set_a("users.test", &[[10, 0, 0, 9]]);
    eventually("recovery", || {
        sorted(balance.endpoints()) == vec![addr("10.0.0.9:8080")]
    })
    .await;
}

#[tokio::test]
async fn the_ttl_paces_re_resolution_within_min_and_max() {
    let zone = Zone::default();
    zone.ttl.store(3600, Relaxed);
    zone.set_a("slow.test", &[[10, 0, 0, 1]]);
    let server = zone.serve().await;
    let mut discovery: Discovery<Tagged<SocketAddr>, Endpoint> = Dns::a("slow.test.", 80)
        .nameservers([server])
        .min_refresh(Duration::from_millis(20))
        .max_refresh(Duration::from_millis(300))
        .timeout(Duration::from_millis(200))
        .build(make)
        .unwrap();
    use futures_util::StreamExt;
    let change = discovery.next().await.unwrap().unwrap();
    assert!(matches!(change, Change::Insert(ref k, _) if k.key == addr("10.0.0.1:80")));
    // TTL 1 h is capped at max_refresh 300 ms: a handful of queries in a second, not 50.
    let start = zone.queries.load(Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let asked = zone.queries.load(Relaxed) - start;
    assert!((2..=6).contains(&asked), "{asked} queries");
}

#[tokio::test]
async fn srv_records_give_ports_and_weights_of_the_lowest_priority() {
    let zone = Zone::default();
    zone.ttl.store(1, Relaxed);
    zone.set_srv(
        "_http._tcp.api.test",
        &[
            (10, 3, 8001, "a.api.test."),
            (10, 1, 8002, "b.api.test."),
            (20, 1, 8003, "backup.api.test."),
        ],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
    zone.set_a("backup.api.test", &[[10, 1, 0, 3]]);
    let server = zone.serve().await;
    let discovery = Dns::srv("_http._tcp.api.test.")
        .nameservers([server])
        .min_refresh(Duration::from_millis(50))
        .max_refresh(Duration::from_millis(100))
        .timeout(Duration::from_millis(200))
        .build(make)
        .unwrap();
    let balance = BalanceLayer::builder()
        .picker(Picker::WeightedRoundRobin)
        .build()
        .unwrap()
        .layer(discovery);
    eventually("srv endpoints", || balance.endpoints().len() == 2).await;
    let mut keys = balance.endpoints();
    keys.sort();
    assert_eq!(
        keys,
        vec![
            Tagged::new(addr("10.1.0.1:8001")).with_weight(3),
            Tagged::new(addr("10.1.0.2:8002")).with_weight(1),
        ]
    );
    let mut counts = HashMap::new();
    for _ in 0..40 {
        *counts
            .entry(balance.clone().oneshot(()).await.unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(counts[&addr("10.1.0.1:8001")], 30);
    assert_eq!(counts[&addr("10.1.0.2:8002")], 10);

    // The primary targets disappear: the backup priority takes over.
    zone.set_srv("_http._tcp.api.test", &[(20, 1, 8003, "backup.api.test.")]);
    eventually("backup", || {
        balance.endpoints() == vec![Tagged::new(addr("10.1.0.3:8003"))]
    })
    .await;
}

#[tokio::test]
async fn invalid_configuration_is_rejected() {
    let err = Dns::a("x.test", 80)
        .nameservers([addr("127.0.0.1:53")])
        .min_refresh(Duration::from_secs(10))
        .max_refresh(Duration::from_secs(1))
        .build(make)
        .unwrap_err();
    assert_eq!(err.field(), "max_refresh");
    let err = Dns::a("x.test", 80)
        .nameservers([])
        .build(make)
        .unwrap_err();
    assert_eq!(err.field(), "nameservers");
    let err = Dns::a("x.test", 80)
        .nameservers([addr("127.0.0.1:53")])
        .min_refresh(Duration::ZERO)
        .build(make)
        .unwrap_err();
    assert_eq!(err.field(), "min_refresh");
}
