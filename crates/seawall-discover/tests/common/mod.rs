//! What the DNS tests share: an authoritative DNS server on loopback that answers from a table the
//! test edits, and bounded waits.
//!
//! Sockets are involved, so DNS tests run in real time with generous, bounded waits, or in paused
//! time where only the timers matter.
//!
//! Paused time relies on the server answering within the runtime's check for I/O: with no task
//! ready, a paused runtime polls its sockets once without waiting and moves the clock to the next
//! timer (a query's timeout, say) only if that poll woke no task. Linux delivers a UDP datagram
//! on loopback into the receiving socket's queue before `send_to` returns, so a question is ready
//! for the server at that poll, and the server's answer, sent as soon as the server task reads
//! the question, is ready for the resolver at the next one: no query times out for lack of an
//! answer while the clock moves. If delivery were deferred (on another kernel, or one that hands
//! loopback packets to a separate thread), the clock could pass a query's timeout before its
//! answer was read, and paused tests would see timeouts the zone never caused.

#![allow(dead_code, unreachable_pub)]

use futures_util::StreamExt;
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{
        rdata::{A, AAAA, CNAME, SRV},
        Name, RData, Record, RecordType,
    },
};
use seawall::balance::Tagged;
use seawall::discover::{Change, Discovery, DnsBuilder};
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::Duration,
};
use tokio::net::UdpSocket;
use tower::service_fn;

type Table = HashMap<(String, RecordType), Vec<RData>>;

/// A tiny authoritative DNS server: answers A, AAAA and SRV questions from a table the test
/// edits, following a CNAME to its target, or with an error code the test sets. A name with no
/// records of any type is NXDOMAIN; a name with records of other types only gets an empty answer
/// (NODATA).
#[derive(Clone, Default)]
pub struct Zone {
    records: Arc<Mutex<Table>>,
    asked: Arc<Mutex<HashMap<RecordType, u32>>>,
    /// When each question arrived, and its type (Tokio time, so paused tests can read it).
    log: Arc<Mutex<Vec<(tokio::time::Instant, RecordType)>>>,
    /// CNAME records: each alias's target and the record's TTL.
    cnames: Arc<Mutex<HashMap<String, (String, u32)>>>,
    silent: Arc<Mutex<HashSet<String>>>,
    silent_types: Arc<Mutex<HashSet<(String, RecordType)>>>,
    /// Questions answered with an error code instead of records.
    codes: Arc<Mutex<HashMap<(String, RecordType), ResponseCode>>>,
    /// While set, questions go unanswered (an outage).
    pub down: Arc<AtomicBool>,
    /// Questions received, answered or not.
    pub queries: Arc<AtomicU32>,
    /// The TTL of every record in answers, in seconds.
    pub ttl: Arc<AtomicU32>,
}

impl Zone {
    /// A zone whose records all have a TTL of `secs` seconds.
    pub fn with_ttl(secs: u32) -> Self {
        let zone = Zone::default();
        zone.ttl.store(secs, Relaxed);
        zone
    }

    fn set(&self, host: &str, ty: RecordType, data: Vec<RData>) {
        self.records
            .lock()
            .unwrap()
            .insert((host.to_owned(), ty), data);
    }

    pub fn set_a(&self, host: &str, ips: &[[u8; 4]]) {
        let data = ips
            .iter()
            .map(|ip| RData::A(A(Ipv4Addr::from(*ip))))
            .collect();
        self.set(host, RecordType::A, data);
    }

    pub fn set_aaaa(&self, host: &str, ips: &[Ipv6Addr]) {
        let data = ips.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect();
        self.set(host, RecordType::AAAA, data);
    }

    /// SRV records of `name`: `(priority, weight, port, target)` each.
    pub fn set_srv(&self, name: &str, targets: &[(u16, u16, u16, &str)]) {
        let data = targets
            .iter()
            .map(|&(priority, weight, port, target)| {
                RData::SRV(SRV::new(
                    priority,
                    weight,
                    port,
                    Name::from_ascii(target).unwrap(),
                ))
            })
            .collect();
        self.set(name, RecordType::SRV, data);
    }

    /// Makes `alias` a CNAME of `target` (a name in this zone), with its own TTL: questions about
    /// `alias` are answered with the CNAME record and `target`'s records of the type asked for,
    /// as a recursive server answers them.
    pub fn set_cname(&self, alias: &str, target: &str, ttl: u32) {
        self.cnames
            .lock()
            .unwrap()
            .insert(alias.to_owned(), (target.to_owned(), ttl));
    }

    /// While `on`, questions about `host` go unanswered (that name's server is unreachable).
    pub fn silence(&self, host: &str, on: bool) {
        let mut silent = self.silent.lock().unwrap();
        if on {
            silent.insert(host.to_owned());
        } else {
            silent.remove(host);
        }
    }

    /// While `on`, questions of type `ty` about `host` go unanswered; its other types are still
    /// answered (one family's answer lost on the way).
    pub fn silence_type(&self, host: &str, ty: RecordType, on: bool) {
        let mut silent = self.silent_types.lock().unwrap();
        if on {
            silent.insert((host.to_owned(), ty));
        } else {
            silent.remove(&(host.to_owned(), ty));
        }
    }

    /// While `code` is set, questions of type `ty` about `host` are answered with that response
    /// code and no records (`ResponseCode::Refused`, `ResponseCode::ServFail`).
    pub fn respond_with(&self, host: &str, ty: RecordType, code: Option<ResponseCode>) {
        let mut codes = self.codes.lock().unwrap();
        match code {
            Some(code) => codes.insert((host.to_owned(), ty), code),
            None => codes.remove(&(host.to_owned(), ty)),
        };
    }

    /// How many questions of type `ty` arrived.
    pub fn asked(&self, ty: RecordType) -> u32 {
        self.asked.lock().unwrap().get(&ty).copied().unwrap_or(0)
    }

    /// When each question of type `ty` arrived, as offsets from `start`.
    pub fn asked_at(&self, ty: RecordType, start: tokio::time::Instant) -> Vec<Duration> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, t)| *t == ty)
            .map(|(at, _)| at.saturating_duration_since(start))
            .collect()
    }

    /// Waits (bounded) until `n` more questions of type `ty` have arrived.
    pub async fn more_questions(&self, ty: RecordType, n: u32) {
        let before = self.asked(ty);
        eventually("more resolutions", || self.asked(ty) >= before + n).await;
    }

    /// SRV discovery of `service` against this zone, served on loopback, refreshing every
    /// 20–50 ms, with a query timeout of 2 s: a target whose lookup times out is left out of a
    /// resolution, so the timeout is long enough for every answered lookup to arrive in time.
    pub async fn srv_discovery(&self, service: &str) -> Discovery<Tagged<SocketAddr>, Endpoint> {
        self.srv_discovery_with_timeout(service, Duration::from_secs(2))
            .await
    }

    /// [`srv_discovery`](Self::srv_discovery) with a query timeout of `timeout`, for tests that
    /// silence a target and need its lookups to time out quickly. With a short timeout a first
    /// resolution may leave a target out: read it with [`first_changes`].
    pub async fn srv_discovery_with_timeout(
        &self,
        service: &str,
        timeout: Duration,
    ) -> Discovery<Tagged<SocketAddr>, Endpoint> {
        let server = self.serve().await;
        seawall::discover::Dns::srv(format!("{service}."))
            .nameservers([server])
            .min_refresh(Duration::from_millis(20))
            .max_refresh(Duration::from_millis(50))
            .timeout(timeout)
            .build(make)
            .unwrap()
    }

    /// Starts answering on a UDP socket on 127.0.0.1; the server runs until the runtime ends. It
    /// answers from the task that reads the question, with no timer between, so in paused time
    /// the answer is ready at the runtime's next check for I/O (see the module docs).
    pub async fn serve(&self) -> SocketAddr {
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
                let Ok(request) = Message::from_vec(&buf[..len]) else {
                    continue;
                };
                {
                    let mut asked = zone.asked.lock().unwrap();
                    let mut log = zone.log.lock().unwrap();
                    for query in request.queries() {
                        *asked.entry(query.query_type()).or_insert(0) += 1;
                        log.push((tokio::time::Instant::now(), query.query_type()));
                    }
                }
                if zone.down.load(Relaxed) || zone.silenced(&request) {
                    continue; // an outage: no answer at all
                }
                let response = zone.answer(&request);
                let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    fn silenced(&self, request: &Message) -> bool {
        let silent = self.silent.lock().unwrap();
        let silent_types = self.silent_types.lock().unwrap();
        request.queries().iter().any(|q| {
            let host = q.name().to_string();
            let host = host.trim_end_matches('.');
            silent.contains(host) || silent_types.contains(&(host.to_owned(), q.query_type()))
        })
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
        let records = self.records.lock().unwrap();
        let cnames = self.cnames.lock().unwrap();
        let codes = self.codes.lock().unwrap();
        let mut known = false;
        for query in request.queries() {
            response.add_query(query.clone());
            let asked = query.name().to_string();
            if let Some(code) =
                codes.get(&(asked.trim_end_matches('.').to_owned(), query.query_type()))
            {
                response.set_response_code(*code);
                return response;
            }
            let mut owner = query.name().clone();
            let mut host = owner.to_string().trim_end_matches('.').to_owned();
            if let Some((target, cname_ttl)) = cnames.get(&host) {
                let target_name = Name::from_ascii(format!("{target}.")).unwrap();
                response.add_answer(Record::from_rdata(
                    owner,
                    *cname_ttl,
                    RData::CNAME(CNAME(target_name.clone())),
                ));
                known = true;
                owner = target_name;
                host = target.clone();
            }
            known |= records.keys().any(|(name, _)| *name == host);
            if let Some(data) = records.get(&(host, query.query_type())) {
                for rdata in data {
                    response.add_answer(Record::from_rdata(owner.clone(), ttl, rdata.clone()));
                }
            }
        }
        if !known {
            response.set_response_code(ResponseCode::NXDomain);
        }
        response
    }
}

/// Points the SRV records of `service` at two targets, `a.api.test.` (10.1.0.1, port 8001) and
/// `b.api.test.` (10.1.0.2, port 8002), each of weight 1.
pub fn two_targets(zone: &Zone, service: &str) {
    zone.set_srv(
        service,
        &[(10, 1, 8001, "a.api.test."), (10, 1, 8002, "b.api.test.")],
    );
    zone.set_a("a.api.test", &[[10, 1, 0, 1]]);
    zone.set_a("b.api.test", &[[10, 1, 0, 2]]);
}

/// Sends `n` calls through `balance` and counts the answers (each endpoint answers with its
/// address).
pub async fn count_answers<S>(balance: &S, n: usize) -> HashMap<SocketAddr, usize>
where
    S: tower::Service<(), Response = SocketAddr> + Clone,
    S::Error: std::fmt::Debug,
{
    let mut counts = HashMap::new();
    for _ in 0..n {
        let answer = tower::ServiceExt::oneshot(balance.clone(), ())
            .await
            .unwrap();
        *counts.entry(answer).or_insert(0) += 1;
    }
    counts
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Waits (bounded) until `check` holds.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

pub type Endpoint = tower::util::BoxCloneSyncService<(), SocketAddr, seawall::BoxError>;

/// Discovery by `dns` from `server` alone, each question given up after 500 ms.
pub fn discover_with_timeout(
    dns: DnsBuilder,
    server: SocketAddr,
) -> Discovery<Tagged<SocketAddr>, Endpoint> {
    dns.nameservers([server])
        .timeout(Duration::from_millis(500))
        .build(make)
        .unwrap()
}

/// An endpoint service that answers with its address.
pub fn make(key: &Tagged<SocketAddr>) -> Endpoint {
    let addr = key.key;
    tower::util::BoxCloneSyncService::new(service_fn(move |()| async move {
        Ok::<_, seawall::BoxError>(addr)
    }))
}

pub fn sorted(mut keys: Vec<Tagged<SocketAddr>>) -> Vec<SocketAddr> {
    keys.sort();
    keys.into_iter().map(|k| k.key).collect()
}

/// A change reduced to what the tests compare: `('+', address, weight)` or `('-', address, weight)`.
pub type Seen = (char, SocketAddr, u32);

pub fn seen<S>(change: &Change<Tagged<SocketAddr>, S>) -> Seen {
    match change {
        Change::Insert(k, _) => ('+', k.key, k.weight),
        Change::Remove(k) => ('-', k.key, k.weight),
    }
}

/// The next change, waiting at most 5 s for it.
pub async fn next_change<S>(discovery: &mut Discovery<Tagged<SocketAddr>, S>) -> Seen {
    match tokio::time::timeout(Duration::from_secs(5), discovery.next()).await {
        Ok(Some(Ok(change))) => seen(&change),
        Ok(_) => panic!("the discovery ended"),
        Err(_) => panic!("timed out waiting for a discovery change"),
    }
}

/// The next two changes, in order of [`Seen`] (an insert before a remove), whichever was sent
/// first.
pub async fn next_two_changes<S>(discovery: &mut Discovery<Tagged<SocketAddr>, S>) -> Vec<Seen> {
    let mut changes = vec![next_change(discovery).await, next_change(discovery).await];
    changes.sort();
    changes
}

/// The changes already queued, without waiting. One resolution's changes are sent together, with
/// no await between them, so on the tests' current-thread runtime this gives the rest of a
/// resolution once its first change has arrived.
pub fn queued<S>(discovery: &mut Discovery<Tagged<SocketAddr>, S>) -> Vec<Seen> {
    let mut out = Vec::new();
    while let Some(Some(Ok(change))) = futures_util::FutureExt::now_or_never(discovery.next()) {
        out.push(seen(&change));
    }
    out
}

/// The first resolution's changes: waits (bounded) for the first, then takes the rest queued with
/// it, sorted.
pub async fn first_resolution<S>(discovery: &mut Discovery<Tagged<SocketAddr>, S>) -> Vec<Seen> {
    let mut out = vec![next_change(discovery).await];
    out.extend(queued(discovery));
    out.sort();
    out
}

/// The first `n` changes, whether one resolution or several sent them (each waited for at most
/// 5 s), then the rest queued with the last, sorted.
pub async fn first_changes<S>(
    discovery: &mut Discovery<Tagged<SocketAddr>, S>,
    n: usize,
) -> Vec<Seen> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(next_change(discovery).await);
    }
    out.extend(queued(discovery));
    out.sort();
    out
}

/// One event's fields: each name with its value's `Debug` text.
type EventFields = Vec<(String, String)>;

/// The events at one level a tracing subscriber saw, each as its fields' names and values.
#[derive(Clone)]
pub struct Logged {
    level: tracing::Level,
    events: Arc<Mutex<Vec<EventFields>>>,
}

impl Logged {
    /// A subscriber keeping the events at `level`.
    pub fn at(level: tracing::Level) -> Self {
        Logged {
            level,
            events: Arc::default(),
        }
    }

    /// Each event seen, its fields as `name=value ` text.
    pub fn fields(&self) -> Vec<String> {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .map(|fields| {
                fields
                    .iter()
                    .map(|(name, value)| format!("{name}={value} "))
                    .collect()
            })
            .collect()
    }

    /// How many events seen had `message` as their message.
    pub fn count(&self, message: &str) -> usize {
        let events = self.events.lock().unwrap();
        events
            .iter()
            .filter(|fields| fields.iter().any(|(n, v)| n == "message" && v == message))
            .count()
    }
}

impl tracing::Subscriber for Logged {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Fields(EventFields);
        impl tracing::field::Visit for Fields {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push((field.name().to_owned(), format!("{value:?}")));
            }
        }
        if *event.metadata().level() == self.level {
            let mut fields = Fields(Vec::new());
            event.record(&mut fields);
            self.events.lock().unwrap().push(fields.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}
