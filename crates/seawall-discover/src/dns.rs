//! DNS discovery: A/AAAA or SRV records, re-resolved as their TTL runs out.

use crate::{
    diff::Tracker,
    latest::{self, Publisher},
    Discovery,
};
use futures_util::{future, stream, FutureExt, StreamExt};
use hickory_resolver::{
    config::{NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts},
    lookup::Lookup,
    name_server::TokioConnectionProvider,
    proto::{
        op::ResponseCode,
        rr::{rdata::SRV, Name as DnsName, RData, Record},
        xfer::Protocol,
        ProtoErrorKind,
    },
    ResolveError, ResolveErrorKind, TokioResolver,
};
use seawall_balance::Tagged;
use seawall_core::{
    config::check_positive_duration, deadline::deadline_after, metrics, ConfigError, Name,
};
use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr, SocketAddrV6},
    panic::AssertUnwindSafe,
    time::Duration,
};
use tokio::time::Instant;

/// Default [`min_refresh`](DnsBuilder::min_refresh): 1 s.
pub const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(1);
/// Default [`max_refresh`](DnsBuilder::max_refresh): 60 s.
pub const DEFAULT_MAX_REFRESH: Duration = Duration::from_secs(60);
/// Default [`timeout`](DnsBuilder::timeout) of one DNS query: 2 s.
pub const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
enum Query {
    /// A and AAAA records of `host`, each address with `port`.
    Ip { host: String, port: u16 },
    /// SRV records of `name`: targets, ports and weights; the lowest priority that resolves.
    Srv { name: String },
}

/// What a resolution asks for: `query` with its name parsed once, at build time.
#[derive(Debug)]
enum Parsed {
    /// A and AAAA records of a name, each address with the port.
    Ip(DnsName, u16),
    /// SRV records of a name.
    Srv(DnsName),
}

/// DNS endpoint discovery; see [`Dns::a`] and [`Dns::srv`].
///
/// The name is resolved at once, then again when the answer's TTL runs out (the smallest TTL of the
/// records, CNAMEs leading to them included; one with the most significant bit set counts as 0, RFC
/// 2181), clamped to `[min_refresh, max_refresh]`. A failed resolution (timeout, server failure, or
/// an answer without records) keeps the last good set and is retried after `min_refresh`, doubling
/// up to `max_refresh` while failures last. A resolution that succeeds in part (the lookup of one
/// address family, or of an SRV target, went unanswered or got a server failure, or a search name
/// was passed over beside such a question, see [`Dns::a`]) is published, and counted and retried
/// like a failure: the next follows a backoff when that comes before the TTL runs out. That
/// backoff doubles from `min_refresh` as failed ones do, but is counted apart: resolutions that
/// keep failing in part (a server that never answers AAAA questions) do not lengthen the retry
/// of one that then fails outright, and failed ones leave its count as it was. A lookup of an
/// address family or of an SRV target that fails without an answer (not a search name passed
/// over) starts the count of partial resolutions over, from `min_refresh`, the first time it so
/// fails since a resolution was last published with nothing failing without an answer: once
/// each, however the lookups take turns failing, so the pauses still climb to `max_refresh`. A
/// lookup of an SRV target that first so fails inside a resolution that fails outright starts
/// the count over at the next published resolution. An SRV target gone from the answer is
/// remembered: one that comes back and fails again (an answer that lists a few of many records
/// at random) does not start the count over. Only when more than 256 lookups, and more than
/// eight for each target of the answer, have so failed does a published resolution forget
/// those of targets gone from it (per-pod targets across rollouts): such a target that comes
/// back and fails starts the count over again. Each pause counts from the start of a resolution, not its end:
/// one that waits out a query's timeout does not put the next off.
/// Endpoint keys are [`Tagged`] socket addresses: SRV weights become endpoint weights (for
/// weighted round robin), A/AAAA endpoints weigh 1. A record whose weight changes is the same
/// endpoint: it is inserted again with the new weight, not removed, and the balancer updates it
/// in place.
#[derive(Debug, Clone)]
pub struct Dns;

impl Dns {
    /// Discovers `host`'s A and AAAA records, both asked for together; each address of either
    /// family is an endpoint on `port`. A family the server says has no records adds none. A
    /// family whose answer does not come (a timeout, a server failure, a refusal) keeps the
    /// addresses it had at the last good resolution (none, if it has not answered yet) while the
    /// other family's answer is published: a server that drops or refuses AAAA questions does
    /// not keep an IPv4-only host from being discovered, and one lost AAAA answer does not take
    /// a dual-stack host's IPv6 endpoints away. Such a resolution counts as failed in part (see
    /// [`Dns`]). When neither family answers, or the one that answered has no records and the
    /// other none from before, the resolution fails and keeps the last good set.
    ///
    /// A relative `host` is tried under each search domain of the system's configuration in
    /// turn (see [`nameservers`](DnsBuilder::nameservers)). A name with no records of either
    /// family is passed over, as is one that either family's question says does not exist
    /// (NXDOMAIN, which is about the name, not one record type) unless the other family's answer
    /// has addresses: that NXDOMAIN then says only that its own family has none. hickory answers
    /// a question from the hosts file when the file lists the name with that family (a
    /// Kubernetes `hostAliases` entry with an IPv4 address alone) and asks the server the other,
    /// which may not know the name; a CoreDNS `template` may answer one family and NXDOMAIN the
    /// other. Both answers are waited for, so a name whose one question gets NXDOMAIN while the
    /// other goes unanswered is passed over once that one times out (each such name adds one
    /// [`timeout`](DnsBuilder::timeout) to the resolution, which then counts as failed in part
    /// even when a later name answers, so that the question is asked again on the failure
    /// backoff), unless at the last good resolution the unanswered family had addresses under
    /// that name and the NXDOMAIN's family none: whether the name is there is then not known,
    /// and that family keeps them, as a failed family does (below), the resolution counting as
    /// failed in part. Otherwise a name whose question goes unanswered or fails ends the search.
    ///
    /// A failed family keeps its last addresses only when they came from the name the other
    /// family just answered for: when the host was last found under another name, it keeps none
    /// of them, rather than mixing two names' addresses, and the other family's answer is
    /// published alone (counted as failed in part, so retried on the failure backoff). A host
    /// that moves to a name whose server drops AAAA questions is so followed there.
    ///
    /// A `host` that is an IP address is its own endpoint: it is not looked up, nor resolved
    /// again, and needs no name server (neither [`nameservers`](DnsBuilder::nameservers) nor the
    /// system's configuration). An IPv6 address may name its interface with a numeric scope id
    /// (`fe80::1%2`), which the endpoint keeps; an interface name (`fe80::1%eth0`) is rejected.
    ///
    /// A DNS answer carries no scope id: a link-local address (`fe80::/10`) found by name becomes
    /// an endpoint with scope 0, which cannot be connected to (Linux refuses it with `EINVAL`). No
    /// interface is guessed for it; to reach a link-local endpoint, give it as a scoped address.
    pub fn a(host: impl Into<String>, port: u16) -> DnsBuilder {
        DnsBuilder::new(Query::Ip {
            host: host.into(),
            port,
        })
    }

    /// Discovers the SRV records of `name` (for example `_http._tcp.users.default.svc.cluster.local`):
    /// each target's addresses (A and AAAA) on the record's port, sharing the record's weight. RFC
    /// 2782 weighs records, not addresses: each of a target's `n` addresses gets `1/n` of its
    /// record's weight, so a dual-stack target, or one with several addresses, weighs no more than
    /// a target with one. To keep weights whole, those of a priority are multiplied by the least
    /// common multiple of its targets' address counts (by 2 when a dual-stack target sits beside
    /// IPv4-only ones; by 1, unchanged, when every target has one address), so a change in those
    /// counts may change every weight of the priority. An address that several records name (two
    /// names of one host) weighs the sum of its shares, whatever their order. A record of weight 0
    /// gets a very small share beside records of its priority that weigh more (RFC 2782): it counts
    /// as weight 1, multiplied by the least common multiple like the others (its `n` addresses
    /// share that), while the others' weights, once multiplied by the least common multiple, are
    /// multiplied again: by 100 while their sum is at most 512, else by 65 536 over the power of
    /// two at or above the sum (64 up to 1 024, 32 up to 2 048 and so on, at least 1), so that a
    /// change in one record's weight changes the others' only when the sum crosses a power of two.
    /// The sum is the one after the least common multiple: beside a dual-stack target, records of
    /// weight 0, 300 and 10 count as 2, 600 and 20 before the scale, which for a sum of 620 is 64.
    /// Records that all weigh 0 weigh 1 each, multiplied by the least common multiple. Only the
    /// records of the lowest priority whose targets give an address are used: a higher priority (a
    /// backup) serves only while no target of a lower one does (RFC 2782).
    ///
    /// Each target is resolved on its own, and the targets of a priority all at once (up to 16 at a
    /// time, a lookup that ends making room for the next at once), so up to 16 targets whose server
    /// does not answer hold a resolution up for one [`timeout`](DnsBuilder::timeout) together. A
    /// target the server says has no addresses is left out, and the others still serve; a target
    /// whose lookup fails without such an answer (a timeout, a server failure) keeps the addresses
    /// it had at the last good resolution. So does a family of a target whose question goes
    /// unanswered while the other family's gets NXDOMAIN, when at the last good resolution that
    /// family had addresses under the target and the NXDOMAIN's family none (see [`Dns::a`]);
    /// otherwise the target is left out, as one the server says does not exist, and the
    /// resolution counts as failed in part, so the unanswered question is asked again on the
    /// failure backoff. A target of `"."` means the service is not available there (RFC 2782)
    /// and is left out, as is a record with port 0, which no client can connect to. The
    /// resolution fails, keeping the last good set, only when no target gives an address.
    /// A target's link-local IPv6 address (`fe80::/10`) becomes an endpoint without a scope id,
    /// which cannot be connected to (see [`Dns::a`]); a link-local endpoint is given to
    /// [`Dns::a`] as a scoped address instead.
    ///
    /// A relative `name` is tried under each search domain of the system's configuration in turn
    /// (see [`nameservers`](DnsBuilder::nameservers)), one name at a time: a name the server says
    /// does not exist or has no SRV records is passed over, and one whose question goes
    /// unanswered or gets a server failure or a refusal ends the search (the resolution fails,
    /// keeping the last good set), since that name may have records the server could not give
    /// and a later name may be another service.
    pub fn srv(name: impl Into<String>) -> DnsBuilder {
        DnsBuilder::new(Query::Srv { name: name.into() })
    }
}

/// Builds a DNS [`Discovery`]; see [`Dns`].
pub struct DnsBuilder {
    query: Query,
    nameservers: Option<Vec<SocketAddr>>,
    min_refresh: Duration,
    max_refresh: Duration,
    timeout: Duration,
    name: Option<String>,
}

impl DnsBuilder {
    fn new(query: Query) -> Self {
        DnsBuilder {
            query,
            nameservers: None,
            min_refresh: DEFAULT_MIN_REFRESH,
            max_refresh: DEFAULT_MAX_REFRESH,
            timeout: DEFAULT_DNS_TIMEOUT,
            name: None,
        }
    }

    /// Ask these name servers (UDP, falling back to TCP). Default: the system's configuration
    /// (`/etc/resolv.conf`), with the `system-config` feature; it is not read when the host is an
    /// IP address. Each query goes to every name server at once, and the first answer counts,
    /// positive or negative (a name the fastest server says does not exist does not wait for
    /// the others): the servers must serve the same records. Each query is so sent once per name
    /// server. An IPv6 address keeps its scope id, so a link-local server (`[fe80::1%2]:53`) is
    /// reached through the interface it names.
    ///
    /// The system's configuration also gives the search list (and `ndots`) under which a
    /// relative name is tried, in the resolver's order, as [`Dns::a`] and [`Dns::srv`] describe;
    /// name servers given here come with none, and a relative name is asked about as it is.
    pub fn nameservers(mut self, servers: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.nameservers = Some(servers.into_iter().collect());
        self
    }

    /// The shortest time from the start of one resolution to the start of the next, whatever the
    /// TTL. Default 1 s.
    ///
    /// Against answers with a TTL of 0 (Consul's DNS interface gives its services that TTL by
    /// default) this is the time between queries: it bounds how often the name servers are
    /// asked, so keep it at a sensible value such as the default. Any duration above zero is
    /// accepted, and one of a few nanoseconds sends the queries back to back.
    pub fn min_refresh(mut self, min: Duration) -> Self {
        self.min_refresh = min;
        self
    }

    /// The longest time from the start of one resolution to the start of the next, whatever the
    /// TTL, unless the resolution itself lasts longer (the next then starts as it ends). Default
    /// 60 s.
    pub fn max_refresh(mut self, max: Duration) -> Self {
        self.max_refresh = max;
        self
    }

    /// How long one DNS query may take. Default 2 s. A query without an answer in that time from
    /// any of the name servers (all asked at once) is not sent again: the resolution fails, or
    /// when other lookups answered (the other address family, other SRV targets) stands on them
    /// and what the unanswered one gave last time, and the next resolution follows the failure
    /// backoff.
    ///
    /// A resolution may wait out several timeouts, one after another: the names of the search
    /// list are asked about in turn, each name's A and AAAA questions at once, and a name whose
    /// one question gets NXDOMAIN is passed over only once the other is answered or times out
    /// (see [`Dns::a`]). Against a server that drops AAAA questions, a relative name so waits
    /// one timeout at each search name it is not found under: under Kubernetes' `ndots:5`, with
    /// three or four search domains, a name outside the cluster (`api.example.com`) waits three
    /// or four timeouts (6 to 8 s at the default) before it is asked about as it is, then one
    /// more for its own AAAA question. A fully qualified name (`api.example.com.`) is asked
    /// about alone.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The name for logs and metrics. Default `"discover"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Validates the configuration and starts resolving; `make` turns each discovered address
    /// into an endpoint service (for example a hyper client bound to it). The stream calls
    /// `make` as it yields each insert, inside the runtime this is called in; a panic in `make`
    /// leaves that address out, logged as an error, until the next resolution tries it again
    /// (a host that is an IP address has none).
    ///
    /// The host of [`Dns::a`] must be a DNS name or an IP address (an IPv6 one may have a numeric
    /// scope id, `fe80::1%2`), the name of [`Dns::srv`] a
    /// DNS name (labels may hold underscores, as Docker's service names do): one that can never
    /// resolve (empty, the root, an empty label) is rejected here rather than failing every
    /// resolution.
    ///
    /// Must be called inside a Tokio runtime, whose IO and time drivers resolving needs
    /// (`enable_all`): outside any runtime this returns a [`ConfigError`] for the field
    /// `runtime`. On a runtime without those drivers the resolving task panics: the panic is
    /// logged as an error naming the discovery, with the panic's message, and then the stream
    /// ends (a balancer keeps the endpoints it has). A runtime that shuts down drops the task
    /// without its panicking, even while a panic elsewhere unwinds the thread, and nothing is
    /// logged.
    pub fn build<S, M>(self, make: M) -> Result<Discovery<Tagged<SocketAddr>, S>, ConfigError>
    where
        S: Send + 'static,
        M: FnMut(&Tagged<SocketAddr>) -> S + Send + 'static,
    {
        check_positive_duration("min_refresh", self.min_refresh)?;
        check_positive_duration("timeout", self.timeout)?;
        if self.max_refresh < self.min_refresh {
            return Err(ConfigError::conflict(
                "max_refresh",
                format!(
                    "must not be below min_refresh ({:?}), got {:?}",
                    self.min_refresh, self.max_refresh
                ),
            ));
        }
        if let Query::Ip { port: 0, .. } = self.query {
            return Err(ConfigError::invalid("port", "must not be 0", "0"));
        }
        let parsed = match &self.query {
            Query::Ip { host, port } => match ip_literal(host, *port)? {
                Some(addr) => Err(addr),
                None => Ok(Parsed::Ip(check_dns_name("host", host)?, *port)),
            },
            Query::Srv { name } => Ok(Parsed::Srv(check_dns_name("srv", name)?)),
        };
        let name = match &self.name {
            Some(name) => Name::validate("name", name)?,
            None => Name::default_for("discover"),
        };
        // The stream makes its endpoints, and the resolving task runs, on this runtime.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(ConfigError::conflict(
                "runtime",
                "is required: build must be called inside a Tokio runtime",
            ));
        };
        if let Some(servers) = &self.nameservers {
            if servers.is_empty() {
                return Err(ConfigError::invalid(
                    "nameservers",
                    "must not be empty",
                    "[]",
                ));
            }
            if let Some(server) = servers.iter().find(|server| server.port() == 0) {
                return Err(ConfigError::invalid(
                    "nameservers",
                    "ports must not be 0",
                    server.to_string(),
                ));
            }
        }
        let parsed = match parsed {
            Ok(parsed) => parsed,
            // An address is its own answer: no resolver, no system configuration to read.
            Err(addr) => return Ok(address(addr, name, make)),
        };
        let config = match &self.nameservers {
            Some(servers) => (
                ResolverConfig::from_parts(None, vec![], name_server_group(servers)),
                ResolverOpts::default(),
            ),
            None => system_config()?,
        };
        let (config, opts) = config;
        let servers = config
            .name_servers()
            .iter()
            .filter(|server| server.protocol.is_datagram())
            .count();
        let opts = resolver_opts(opts, self.timeout, servers);
        let resolver =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build();
        let (publisher, latest) = latest::channel();
        let panicked = make_panicked(name);
        let (min, max) = (self.min_refresh, self.max_refresh);
        let task = runtime.spawn(async move {
            // A panic ends the task, and the stream with it once the publisher is dropped:
            // nothing else would say why. It is caught where it happens, not inferred from the
            // publisher being dropped while the thread unwinds: a runtime torn down by a panic
            // elsewhere drops the task so, without its having panicked. The publisher is kept
            // out of the unwinding, and dropped only once the panic is logged, so a reader that
            // sees the stream end finds the error logged already.
            let resolving = run(resolver, parsed, min, max, name, &publisher);
            if let Err(panic) = AssertUnwindSafe(resolving).catch_unwind().await {
                tracing::error!(name = %name, panic = seawall_core::event::panics::message(&*panic), "seawall discover DNS discovery stopped: its task panicked; the balancer keeps the last endpoints");
            }
            drop(publisher);
        });
        Ok(Discovery::lists(
            latest,
            Tracker::with_meta(),
            make,
            panicked,
            Some(task.abort_handle()),
        ))
    }
}

impl fmt::Debug for DnsBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsBuilder")
            .field("query", &self.query)
            .field("nameservers", &self.nameservers)
            .field("min_refresh", &self.min_refresh)
            .field("max_refresh", &self.max_refresh)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// The discovery of an IP address: that one endpoint, published once; there is nothing to
/// resolve, now or later, and the stream stays open, as a name's does.
fn address<S, M>(addr: SocketAddr, name: Name, make: M) -> Discovery<Tagged<SocketAddr>, S>
where
    S: Send + 'static,
    M: FnMut(&Tagged<SocketAddr>) -> S + Send + 'static,
{
    tracing::debug!(name = %name, query = %addr, count = 1, "seawall discover resolved");
    let latest = latest::Latest::open_with(vec![Tagged::new(addr)]);
    let panicked = move |endpoint: &Tagged<SocketAddr>, panic: &str| {
        tracing::error!(name = %name, endpoint = %endpoint.key, %panic, "seawall discover make panicked; leaving the endpoint out (an address is not resolved again)");
    };
    Discovery::lists(latest, Tracker::with_meta(), make, panicked, None)
}

/// Reports a panic in `make` for an endpoint of the discovery `name`.
fn make_panicked(name: Name) -> impl Fn(&Tagged<SocketAddr>, &str) + Send + 'static {
    move |endpoint, panic| {
        tracing::error!(name = %name, endpoint = %endpoint.key, weight = endpoint.weight, %panic, "seawall discover make panicked; leaving the endpoint out until the next resolution");
    }
}

/// The name servers at `servers`, each asked over UDP, falling back to TCP. Each is built from
/// its whole socket address, not its IP and port, so that an IPv6 link-local server keeps the
/// scope id that names its interface.
fn name_server_group(servers: &[SocketAddr]) -> NameServerConfigGroup {
    servers
        .iter()
        .flat_map(|&server| {
            // `new` trusts negative answers: a name one server says does not exist is not asked
            // of the others.
            [Protocol::Udp, Protocol::Tcp].map(|protocol| NameServerConfig::new(server, protocol))
        })
        .collect::<Vec<_>>()
        .into()
}

/// The resolver's options: the system's (`ndots`, `edns0`... from `resolv.conf`) or
/// hickory's defaults, with what discovery needs set over them, for `servers` name servers.
fn resolver_opts(mut opts: ResolverOpts, timeout: Duration, servers: usize) -> ResolverOpts {
    opts.timeout = timeout;
    // hickory's `attempts` counts the retries after the first query: one query, no retry (the
    // refresh schedule retries).
    opts.attempts = 0;
    // Every name server is asked at once, so a query waits one timeout at most: hickory asks two
    // at a time by default, and the next two only once both have timed out.
    opts.num_concurrent_reqs = servers.max(1);
    // Every resolution asks the server: the refresh schedule follows the TTLs itself.
    opts.cache_size = 0;
    // The CNAMEs on the way to the addresses stay in the answer, so their TTLs count.
    opts.preserve_intermediates = true;
    opts
}

/// `host` as an IP address on `port`, when it is one; `None` when it is to be looked up.
///
/// An IPv6 address may carry a numeric scope id (`fe80::1%2`, the interface a link-local address
/// is reached through), which the endpoint keeps; `IpAddr` takes none, `SocketAddrV6` does. A host
/// with a `%` is no DNS name, so one that is not such an address (an interface name as the scope,
/// `fe80::1%eth0`) is rejected.
fn ip_literal(host: &str, port: u16) -> Result<Option<SocketAddr>, ConfigError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Some(SocketAddr::new(ip, port)));
    }
    if !host.contains('%') {
        return Ok(None);
    }
    match format!("[{host}]:{port}").parse::<SocketAddrV6>() {
        Ok(scoped) => Ok(Some(SocketAddr::V6(scoped))),
        Err(_) => Err(ConfigError::invalid(
            "host",
            "must be a DNS name, or an IP address with a numeric scope id (fe80::1%2)",
            format!("{host:?}"),
        )),
    }
}

/// `name` must be a DNS name other than the root: one that a resolution could answer.
///
/// Besides host names (internationalized ones included), labels may hold underscores, as names
/// served by Docker's DNS (`user_api`) and SRV names do.
fn check_dns_name(field: &'static str, name: &str) -> Result<DnsName, ConfigError> {
    match DnsName::from_utf8(name).or_else(|error| DnsName::from_ascii(name).map_err(|_| error)) {
        Ok(parsed) if parsed.num_labels() > 0 => Ok(parsed),
        Ok(_) => Err(ConfigError::invalid(
            field,
            "must be a DNS name other than the root",
            format!("{name:?}"),
        )),
        Err(error) => Err(ConfigError::invalid(
            field,
            format!("must be a DNS name ({error})"),
            format!("{name:?}"),
        )),
    }
}

#[cfg(feature = "system-config")]
fn system_config() -> Result<(ResolverConfig, ResolverOpts), ConfigError> {
    hickory_resolver::system_conf::read_system_conf().map_err(|e| {
        ConfigError::invalid(
            "nameservers",
            "could not be read from the system",
            e.to_string(),
        )
    })
}

#[cfg(not(feature = "system-config"))]
fn system_config() -> Result<(ResolverConfig, ResolverOpts), ConfigError> {
    Err(ConfigError::missing("nameservers"))
}

/// Resolves `query` on its schedule, handing each good resolution's endpoints to the stream;
/// runs until aborted, with the stream.
async fn run(
    resolver: TokioResolver,
    query: Parsed,
    min: Duration,
    max: Duration,
    name: Name,
    publisher: &Publisher<Vec<Tagged<SocketAddr>>>,
) {
    // How many endpoints the last good resolution gave (those a failed one keeps).
    let mut kept = 0;
    let mut known = Known::new();
    // Failed resolutions in a row, and resolutions in a row that some lookup failed in: each
    // has its own backoff, so a host whose AAAA questions never get an answer still retries a
    // failed resolution after `min`.
    let mut failures = 0u32;
    let mut partials = 0u32;
    // The lookups that failed (or were skipped) and have not been seen to answer since: one
    // that fails again is logged at debug level, so a server that never answers AAAA questions
    // warns once, while any other failure still warns (see `go_on_failing`).
    let mut failing = Failing::new();
    // The lookups that failed without an answer since a resolution was last published with
    // nothing failing without an answer: one new to it starts the backoff of partial
    // resolutions over, once (see `Streak`).
    let mut streak = Streak::default();
    loop {
        let started = Instant::now();
        let mut seen = Seen::default();
        let result = resolve(&resolver, &query, &name, &mut known, &failing, &mut seen).await;
        let wait = match result {
            Ok(Resolved {
                endpoints,
                ttl,
                partial,
            }) => {
                go_on_failing(&mut failing, seen.lookups, &seen.made, &seen.asked);
                tracing::debug!(name = %name, ?query, count = endpoints.len(), ?ttl, partial, "seawall discover resolved");
                kept = endpoints.len();
                publisher.publish(endpoints);
                failures = 0;
                let restart = streak.published(seen.unanswered, &seen.asked, partial);
                if partial {
                    // A lookup went unanswered: what it would have said is asked again on the
                    // failure schedule, not only when the TTL runs out. One new to the streak
                    // starts that schedule over, whatever pause the lookups failing for longer
                    // have reached.
                    partials = if restart {
                        1
                    } else {
                        partials.saturating_add(1)
                    };
                    metrics::counter(metrics::DISCOVER_DNS_ERRORS, &name).increment(1);
                    ttl.clamp(min, max).min(backoff(min, max, partials))
                } else {
                    partials = 0;
                    ttl.clamp(min, max)
                }
            }
            Err(error) => {
                // The lookups that failed on the way join those remembered as failing (see
                // `go_on_failing`), and none of those is dropped: no name looked up gave an
                // address. One that never resolves, leaving every retry without an address,
                // warns once.
                failing.extend(seen.lookups);
                streak.failed(seen.unanswered);
                failures = failures.saturating_add(1);
                metrics::counter(metrics::DISCOVER_DNS_ERRORS, &name).increment(1);
                tracing::warn!(name = %name, ?query, %error, kept, "seawall discover DNS resolution failed; keeping the last endpoints");
                backoff(min, max, failures)
            }
        };
        // The pause counts from the resolution's start, about when its answers came: one that
        // waited out a query's timeout does not put the next off. A pause as long as a
        // `Duration` goes (`max_refresh` of `Duration::MAX`) ends far in the future instead of
        // overflowing the clock.
        tokio::time::sleep_until(deadline_after(started, wait)).await;
    }
}

/// The pause after the `failures`-th failed resolution in a row: `min`, doubling up to `max`,
/// however many doublings that takes (a `Duration` reaches its largest value within 100 from
/// 1 ns, so the loop ends soon whatever `failures` is).
fn backoff(min: Duration, max: Duration, failures: u32) -> Duration {
    let mut pause = min;
    for _ in 1..failures {
        if pause >= max || pause.is_zero() {
            break;
        }
        pause = pause.saturating_mul(2);
    }
    pause.min(max)
}

/// How many SRV targets are looked up at once.
const TARGET_LOOKUPS: usize = 16;

/// What each name looked up (the host of [`Dns::a`], each SRV target) had at the last good
/// resolution.
type Known = HashMap<DnsName, Last>;

/// The addresses a name had at the last good resolution, and the name of its search list (see
/// [`search_names`]) that gave them.
#[derive(Debug, Clone)]
struct Last {
    name: DnsName,
    ips: Vec<IpAddr>,
}

/// Lookups that failed or were skipped in a resolution: the name, and what of it (`"A"`,
/// `"AAAA"`, `"target"`, or `"port0"` for a record with port 0 naming it).
type Failing = HashSet<(DnsName, &'static str)>;

/// What a resolution noted of its lookups (see [`resolve`]).
#[derive(Debug, Default)]
struct Seen {
    /// The lookups that failed or were skipped.
    lookups: Failing,
    /// Those of them that failed without an answer (a timeout, a server failure): not an SRV
    /// target the server says has no addresses.
    unanswered: Failing,
    /// The names the resolution had to look up: the host of [`Dns::a`], or every target of the
    /// SRV answer, whatever its priority and whether it was looked up or left out.
    asked: HashSet<DnsName>,
    /// The names whose lookups the resolution made: the host of [`Dns::a`], or the targets
    /// looked up at the SRV priorities it went through (not one named only by a record with port
    /// 0 or a target of "."). A failed lookup of another name (a target gone from the answer, a
    /// backup target while the primaries serve, a target whose record has port 0 for a while)
    /// has not been seen to answer since.
    made: HashSet<DnsName>,
}

/// Notes a published resolution in `failing`, the lookups that failed and have not been seen to
/// answer since: those that failed in it (`lookups`), and those of names whose lookups it did not
/// make (see [`Seen::made`]). A target gone from the answer, or a backup target that is not
/// looked up while the primaries serve, that comes back and fails again does not warn again (an
/// answer that lists some of many records at a time, Route 53 multivalue answers, takes turns
/// among its targets); a lookup made that did not fail is dropped, so one that starts to fail
/// later warns. Bounded as [`Streak`] is: past [`STREAK_LOOKUPS`] lookups, and eight for each name
/// of the answer, those of the names asked (`asked`) alone are kept.
fn go_on_failing(
    failing: &mut Failing,
    lookups: Failing,
    made: &HashSet<DnsName>,
    asked: &HashSet<DnsName>,
) {
    failing.retain(|(name, _)| !made.contains(name));
    failing.extend(lookups);
    if failing.len() > STREAK_LOOKUPS.max(asked.len().saturating_mul(8)) {
        failing.retain(|(name, _)| asked.contains(name));
    }
}

/// The most lookups a streak (see [`Streak`]) holds before it forgets those of names gone from
/// the answer; an answer of more than 32 names allows eight for each instead. A pool of 85 SRV
/// targets, each failing all three ways (`"A"`, `"AAAA"`, `"target"`), that the answer takes
/// turns listing a few of is never trimmed; across rollouts that give each pod a name of its
/// own, the streak holds no more than this, or eight lookups for each name of the answer, plus
/// those of one resolution. The lookups remembered as failing for logging (see
/// [`go_on_failing`]) are bounded the same way.
const STREAK_LOOKUPS: usize = 256;

/// The lookups that failed without an answer (a timeout, a server failure) since a resolution
/// was last published with nothing failing without an answer: a streak of partial and failed
/// resolutions.
///
/// A lookup that so fails for the first time in the streak starts the backoff of partial
/// resolutions over, once, however the lookups take turns failing (a server that loses
/// questions at random), so the pauses still climb to `max_refresh`. The lookups of a name gone
/// from the SRV answer are kept: an answer that lists some of many records at a time (Route 53
/// multivalue answers, eight of more at random; name servers that disagree) takes turns among
/// its targets, and one that comes back and fails again does not start the backoff over. Only
/// when the streak holds more than [`STREAK_LOOKUPS`] lookups, and more than eight for each name
/// of the answer, does a published resolution keep those of the names it had to look up alone
/// (a pod's target after a rollout, with a name of its own, is then forgotten, and starts the
/// backoff over should it come back and fail): the streak stays bounded however long it lasts.
#[derive(Debug, Default)]
struct Streak {
    lookups: Failing,
    /// Whether a lookup new to the streak failed in a failed resolution since the last
    /// published one: the next published resolution starts the backoff over.
    started: bool,
}

impl Streak {
    /// Notes the lookups that failed without an answer in a failed resolution.
    fn failed(&mut self, unanswered: Failing) {
        self.started |= self.note(unanswered);
    }

    /// Notes a published resolution: the lookups that failed in it without an answer, the
    /// names it had to look up, and whether it was `partial`. Returns whether the backoff of
    /// partial resolutions starts over: a lookup new to the streak failed in it, or in a failed
    /// resolution since the last published one. A streak grown past its bound keeps the
    /// lookups of the names asked alone.
    fn published(&mut self, unanswered: Failing, asked: &HashSet<DnsName>, partial: bool) -> bool {
        let restart = self.note(unanswered) | std::mem::take(&mut self.started);
        if partial {
            if self.lookups.len() > STREAK_LOOKUPS.max(asked.len().saturating_mul(8)) {
                self.lookups.retain(|(name, _)| asked.contains(name));
            }
        } else {
            self.lookups.clear();
        }
        restart
    }

    /// Adds `unanswered` to the streak; whether any of them is new to it.
    fn note(&mut self, unanswered: Failing) -> bool {
        let new = unanswered
            .iter()
            .any(|lookup| !self.lookups.contains(lookup));
        self.lookups.extend(unanswered);
        new
    }
}

/// What a resolution found.
struct Resolved {
    endpoints: Vec<Tagged<SocketAddr>>,
    /// The smallest TTL of the records that gave the endpoints (CNAMEs on the way included).
    ttl: Duration,
    /// Whether a lookup failed without the server saying there are no such records (a timeout,
    /// a server failure), a search name passed over beside such a question included: the
    /// endpoints stand on the other answers, and on what the failed lookups gave last time.
    partial: bool,
}

/// One resolution.
///
/// `known` holds the addresses each name looked up had at the last good resolution: a name, or
/// one address family of it, whose lookup fails for a moment (a timeout, a server failure) keeps
/// them, so one lost answer does not drop its endpoints; an SRV target the server says has no
/// addresses is skipped.
///
/// A lookup that fails while others answer, an SRV target left out, or a record with port 0
/// (noted as a `"port0"` lookup of its target) is noted in `seen`, and logged as a warning
/// unless it is in `failing` (it failed before, and has not been seen to answer since), else at
/// debug level. One that fails without an answer (not a target the server says has no
/// addresses) is also noted in `seen` as unanswered. The names the resolution has to look up
/// are noted in `seen` as asked, and those it looks up as made.
async fn resolve(
    resolver: &TokioResolver,
    query: &Parsed,
    name: &Name,
    known: &mut Known,
    failing: &Failing,
    seen: &mut Seen,
) -> Result<Resolved, ResolveError> {
    // Logs a failed lookup (or a record with port 0) and notes it in `seen`, as unanswered when
    // `$unanswered` holds.
    macro_rules! once {
        ($host:expr, $what:expr, $unanswered:expr, $($arg:tt)*) => {{
            let key = ($host.clone(), $what);
            if failing.contains(&key) {
                tracing::debug!($($arg)*)
            } else {
                tracing::warn!($($arg)*)
            }
            if $unanswered {
                seen.unanswered.insert(key.clone());
            }
            seen.lookups.insert(key);
        }};
    }
    // A family of `$host` that failed beside the other family's answer (a `FailedFamily`),
    // logged as `once!` logs, with what became of its last addresses, and noted as unanswered.
    macro_rules! family_failed {
        ($host:expr, $failed:expr) => {{
            let FailedFamily { family, error, kept, dropped } = $failed;
            if *kept > 0 {
                once!($host, *family, true, name = %name, ?query, host = %$host, family, %error, kept, "seawall discover could not resolve one address family; keeping its last addresses")
            } else if *dropped > 0 {
                once!($host, *family, true, name = %name, ?query, host = %$host, family, %error, dropped, "seawall discover could not resolve one address family; leaving its last addresses out, as another search name gave them")
            } else {
                once!($host, *family, true, name = %name, ?query, host = %$host, family, %error, "seawall discover could not resolve one address family; it has no last addresses to keep")
            }
        }};
    }
    // An SRV target that fails wholly is noted as `"target"`: those of `$families` that were
    // failing go on failing through it, as far as logging goes, so that one still failing once
    // the target answers again does not warn again (a target whose AAAA questions never get an
    // answer, and whose A answer is lost once).
    macro_rules! families_go_on_failing {
        ($target:expr, $families:expr) => {
            for family in $families {
                let key = ($target.clone(), family);
                if failing.contains(&key) {
                    seen.lookups.insert(key);
                }
            }
        };
    }
    match query {
        Parsed::Ip(host, port) => {
            seen.asked.insert(host.clone());
            seen.made.insert(host.clone());
            let mut found = lookup_ips(resolver, host, known.get(host))
                .await
                .map_err(|failed| failed.error)?;
            if found.ips.is_empty() {
                // One family has no records and the other failed without an address to keep.
                return Err(found
                    .failed
                    .take()
                    .map_or_else(|| ResolveError::from("no addresses"), |failed| failed.error));
            }
            if let Some(failed) = &found.failed {
                family_failed!(host, failed);
            }
            known.insert(
                host.clone(),
                Last {
                    name: found.name.clone(),
                    ips: found.ips.clone(),
                },
            );
            ip_endpoints(found, *port)
        }
        Parsed::Srv(srv_name) => {
            let (records, mut ttl) = lookup_srv(resolver, srv_name).await?;
            seen.asked
                .extend(records.iter().map(|srv| srv.target().clone()));
            let mut priorities: Vec<u16> = records.iter().map(|r| r.priority()).collect();
            priorities.sort_unstable();
            priorities.dedup();
            // Each target on its own: one that does not resolve leaves the others serving. A
            // target of "." says the service is not offered there (RFC 2782); port 0 is no port
            // to connect to. The lowest priority whose targets give an address is used: a higher
            // one only while none of the lower ones can be reached, as RFC 2782 has clients do.
            let mut endpoints: Vec<Tagged<SocketAddr>> = Vec::new();
            let mut weights: Vec<Weight> = Vec::new();
            let mut index = HashMap::new();
            let mut found = Known::new();
            let mut failed = None;
            let mut partial = false;
            for priority in priorities {
                let usable: Vec<&SRV> = records
                    .iter()
                    .filter(|srv| srv.priority() == priority)
                    .filter(|srv| {
                        let target = srv.target();
                        if target.is_root() {
                            tracing::debug!(name = %name, ?query, port = srv.port(), "seawall discover skipped an SRV record whose target is \".\" (not available)");
                            return false;
                        }
                        if srv.port() == 0 {
                            once!(target, "port0", false, name = %name, ?query, %target, "seawall discover skipped an SRV record with port 0");
                            return false;
                        }
                        true
                    })
                    .collect();
                let mut targets: Vec<&DnsName> = Vec::new();
                for srv in &usable {
                    if !targets.contains(&srv.target()) {
                        targets.push(srv.target());
                    }
                }
                // Only the targets looked up: one whose record is skipped (port 0) has not been
                // seen to answer.
                seen.made.extend(targets.iter().copied().cloned());
                // The targets are looked up at once, each once, up to `TARGET_LOOKUPS` at a
                // time: targets whose server does not answer hold the resolution up for one
                // timeout together, not one each. A lookup that ends makes room for the next at
                // once, whatever the lookups started before it are waiting for (an ordered
                // buffer would keep its answer, and its place, until they end); the answers are
                // put back in the targets' order afterwards.
                let pending: Vec<_> = targets
                    .iter()
                    .enumerate()
                    .map(|(i, &target)| {
                        lookup_ips(resolver, target, known.get(target)).map(move |found| (i, found))
                    })
                    .collect();
                let mut lookups: Vec<_> = stream::iter(pending)
                    .buffer_unordered(TARGET_LOOKUPS)
                    .collect()
                    .await;
                lookups.sort_unstable_by_key(|&(i, _)| i);
                let lookups = lookups.into_iter().map(|(_, lookup)| lookup);
                for (target, lookup) in targets.into_iter().zip(lookups) {
                    let last = match lookup {
                        Ok(addresses) => {
                            ttl =
                                ttl.min(u32::try_from(addresses.ttl.as_secs()).unwrap_or(u32::MAX));
                            partial |= addresses.unanswered;
                            if let Some(family) = addresses.failed {
                                partial = true;
                                if addresses.ips.is_empty() {
                                    families_go_on_failing!(target, [family.family]);
                                    once!(target, "target", true, name = %name, ?query, %target, family = family.family, error = %family.error, "seawall discover skipped an SRV target that does not resolve");
                                    failed = Some(family.error);
                                    continue;
                                }
                                family_failed!(target, &family);
                            }
                            Last {
                                name: addresses.name,
                                ips: addresses.ips,
                            }
                        }
                        Err(LookupFailed { error, unanswered }) => {
                            // A target the server says does not exist is left out; the
                            // resolution still failed in part when a question about one of its
                            // search names went unanswered on the way.
                            let absent = is_absent(&error);
                            partial |= !absent || unanswered;
                            families_go_on_failing!(target, ["A", "AAAA"]);
                            match known.get(target) {
                                Some(last) if !absent => {
                                    once!(target, "target", true, name = %name, ?query, %target, %error, "seawall discover could not resolve an SRV target; keeping its last addresses");
                                    last.clone()
                                }
                                _ => {
                                    once!(target, "target", !absent, name = %name, ?query, %target, %error, "seawall discover skipped an SRV target that does not resolve");
                                    failed = Some(error);
                                    continue;
                                }
                            }
                        }
                    };
                    found.insert(target.clone(), last);
                }
                // RFC 2782 weighs records, not addresses: the `n` addresses of a record's target
                // share its weight, `1/n` each, so a dual-stack target weighs no more than one
                // with a single address. Shares are counted in parts, `parts` to a whole weight,
                // a number every target's address count divides: the weights stay whole.
                let parts = usable
                    .iter()
                    .filter_map(|srv| found.get(srv.target()))
                    .fold(1, |parts, last| lcm(parts, last.ips.len() as u64));
                // An address several records name (two names of one host, one target listed
                // twice) is one endpoint weighing the sum of its shares, as RFC 2782's weighted
                // pick gives it: a weight that does not depend on the records' order, which
                // servers rotate.
                for srv in usable {
                    let Some(Last { ips, .. }) = found.get(srv.target()) else {
                        continue;
                    };
                    let share = parts / ips.len() as u64;
                    for &ip in ips {
                        let addr = SocketAddr::new(ip, srv.port());
                        let i = *index.entry(addr).or_insert_with(|| {
                            endpoints.push(Tagged::new(addr));
                            weights.push(Weight::default());
                            endpoints.len() - 1
                        });
                        weights[i].add(srv.weight(), share);
                    }
                }
                if !endpoints.is_empty() {
                    break;
                }
            }
            if endpoints.is_empty() {
                return Err(
                    failed.unwrap_or_else(|| ResolveError::from("no SRV target has an address"))
                );
            }
            for (endpoint, weight) in endpoints.iter_mut().zip(Weight::scaled(&weights)) {
                endpoint.weight = weight;
            }
            *known = found;
            Ok(Resolved {
                endpoints,
                ttl: Duration::from_secs(ttl.into()),
                partial,
            })
        }
    }
}

/// What the SRV records naming one address weigh, counted in parts of a record's weight (see
/// [`resolve`]): the sum of their weights times their shares, and the shares of those that weigh
/// 0.
#[derive(Debug, Clone, Copy, Default)]
struct Weight {
    sum: u64,
    zeros: u64,
}

impl Weight {
    /// Adds `share` parts of a record of weight `weight`.
    fn add(&mut self, weight: u16, share: u64) {
        if weight == 0 {
            self.zeros = self.zeros.saturating_add(share);
        } else {
            self.sum = self
                .sum
                .saturating_add(u64::from(weight).saturating_mul(share));
        }
    }

    /// The endpoints' weights, given what names each of them (all of one priority).
    ///
    /// RFC 2782 gives a record of weight 0 "a very small chance of being selected" beside
    /// records that weigh more, and records that all weigh 0 equal chances. A balancer's weights
    /// start at 1, so beside a weighted record each weight is scaled up, by at most
    /// [`ZERO_WEIGHT_SCALE`], and a record of weight 0 counts as weight 1, unscaled: its target's
    /// `n` addresses share its parts, `parts / n` each (the address of a target with one weighs 1
    /// only when every target of the priority has one); with no record of weight 0, weights are
    /// taken as they are. The scale keeps the endpoints' weights within [`SCALED_TOTAL`] in all,
    /// so a weighted round robin's schedule has room for every endpoint: it is worked out from
    /// the weights counted in parts, not from the records' own, whose sum is `parts` times
    /// smaller. It is worked out from the power of two at or above the weights' sum, not from the
    /// sum itself: a change in one record's weight leaves the others' as they were unless the sum
    /// crosses a power of two, so their endpoints are not inserted again. A weight past
    /// `u32::MAX` (large SRV weights beside targets with many different address counts) is cut
    /// to it.
    fn scaled(weights: &[Weight]) -> impl Iterator<Item = u32> + '_ {
        let total = weights
            .iter()
            .fold(0u64, |total, w| total.saturating_add(w.sum));
        let mixed = total > 0 && weights.iter().any(|w| w.zeros > 0);
        let scale = if mixed {
            let bound = total.checked_next_power_of_two().unwrap_or(u64::MAX);
            (u64::from(SCALED_TOTAL) / bound).clamp(1, ZERO_WEIGHT_SCALE)
        } else {
            1
        };
        weights.iter().map(move |w| {
            let weight = w.sum.saturating_mul(scale).saturating_add(w.zeros);
            u32::try_from(weight).unwrap_or(u32::MAX)
        })
    }
}

/// What a record's weight is multiplied by at most when its priority also has records of weight
/// 0, which then weigh 1: a hundredth of a record of weight 1.
const ZERO_WEIGHT_SCALE: u64 = 100;

/// The most the scaled weights of the endpoints add up to, besides those of weight 0, unless
/// their own sum is more: a weighted round robin's schedule has one slot per unit of weight.
const SCALED_TOTAL: u32 = 1 << 16;

/// The TTL of `record`, in seconds. TTLs go up to 2^31 - 1: one with the most significant bit
/// set is read as 0, as RFC 2181 (section 8) asks.
fn ttl_of(record: &Record) -> u32 {
    match record.ttl() {
        ttl if ttl > i32::MAX as u32 => 0,
        ttl => ttl,
    }
}

/// The least common multiple of `a` and `b`, both above 0; at most `u64::MAX`.
fn lcm(a: u64, b: u64) -> u64 {
    let (mut x, mut y) = (a, b);
    while y != 0 {
        (x, y) = (y, x % y);
    }
    (a / x).saturating_mul(b)
}

/// The endpoints of an A/AAAA resolution: each address on `port`.
fn ip_endpoints(found: Addresses, port: u16) -> Result<Resolved, ResolveError> {
    if found.ips.is_empty() {
        return Err(ResolveError::from("no addresses"));
    }
    let endpoints = found
        .ips
        .into_iter()
        .map(|ip| Tagged::new(SocketAddr::new(ip, port)))
        .collect();
    Ok(Resolved {
        endpoints,
        ttl: found.ttl,
        partial: found.failed.is_some() || found.unanswered,
    })
}

/// Whether the server answered that the name has no addresses (as opposed to not answering).
fn is_absent(error: &ResolveError) -> bool {
    match error.kind() {
        ResolveErrorKind::Proto(proto) => matches!(
            proto.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NoError | ResponseCode::NXDomain,
                ..
            }
        ),
        _ => false,
    }
}

/// What [`lookup_ips`] found.
struct Addresses {
    /// The name of the search list (see [`search_names`]) that gave them.
    name: DnsName,
    /// The addresses of both families.
    ips: Vec<IpAddr>,
    /// The smallest TTL of the records that gave them (CNAMEs included).
    ttl: Duration,
    /// The family whose lookup failed while the other's was answered: that family's addresses
    /// are the ones it had before under this name.
    failed: Option<FailedFamily>,
    /// Whether a name before this one was passed over while one of its questions went
    /// unanswered or failed (a timeout, a server failure, a refusal): the lookup was not fully
    /// answered, and the resolution counts as failed in part.
    unanswered: bool,
}

/// A [`lookup_ips`] that found no address.
struct LookupFailed {
    /// Why: [`is_absent`] holds when the server says the host has none.
    error: ResolveError,
    /// Whether a name was passed over while one of its questions went unanswered or failed, as
    /// [`Addresses::unanswered`] says: when `error` is absent, the lookup still failed in part.
    unanswered: bool,
}

/// An address family whose lookup failed while the other's was answered (see [`lookup_ips`]).
struct FailedFamily {
    /// `"A"` or `"AAAA"`.
    family: &'static str,
    error: ResolveError,
    /// How many of its addresses from the last good resolution are kept: those of the name the
    /// other family answered for.
    kept: usize,
    /// How many of its addresses from the last good resolution are left out, another name of
    /// the search list having given them.
    dropped: usize,
}

/// The addresses of `host`, both families; an error when neither family answered, or when the
/// server says it has none (then [`is_absent`] holds). When one family failed and the other has
/// no records, the addresses are the failed family's last ones, which may be none. Either way,
/// a name passed over while one of its questions went unanswered or failed is noted
/// (`unanswered`): what that question would have said is not known, so the resolution counts
/// as failed in part, as one whose own lookup fails does, and is asked again soon.
///
/// The names of [`search_names`] are tried in turn, A and AAAA asked for apart, at once, so that
/// each family's answer counts. A name that either family's question says does not exist
/// (NXDOMAIN, which is about the name, not one record type) is passed over once the other
/// question is answered or times out, unless the other family has addresses, in its answer or,
/// when its question failed, in `last` from this name, where the NXDOMAIN's family had none (see
/// [`nxdomain_passing_over`]); so is a name with no address of either family. The first name
/// with an address of either family answers, and one whose question fails (a timeout, a server
/// failure, a refusal) ends the search: the name may have addresses the server could not give,
/// and a later name may be another host. A family the server says has no records adds none. A
/// family whose answer does not come while the other's does adds its addresses in `last`, those
/// of the last good resolution, when they came from this same name, and the other family's
/// answer stands: hickory's `lookup_ip` would answer with the other family alone, and one lost
/// AAAA answer would then take a dual-stack host's IPv6 endpoints away until the next
/// resolution, yet a server that never answers AAAA questions must not keep an IPv4 host from
/// being found. With no `last`, or one that came from another name, the other family's answer
/// stands alone: one family of another name's addresses beside it would be neither name's set,
/// and failing so that the caller keeps all of `last` would keep it until the failed family
/// answers here, which a server that drops AAAA questions never does. The failed family is
/// marked, so the caller asks again soon, and the name found is the one the next lookup keeps
/// addresses under. When neither family answers, the lookup fails.
async fn lookup_ips(
    resolver: &TokioResolver,
    host: &DnsName,
    last: Option<&Last>,
) -> Result<Addresses, LookupFailed> {
    let mut absent = None;
    let mut unanswered = false;
    for name in search_names(resolver, host) {
        let answers = ask_both_families(resolver, &name).await;
        // The addresses this name had at the last good resolution: a failed family keeps its
        // own of them. Another name's are not this name's to keep.
        let kept: &[IpAddr] = match last {
            Some(last) if last.name == name => &last.ips,
            _ => &[],
        };
        if let Some(nxdomain) = nxdomain_passing_over(&answers, kept) {
            unanswered |= answers
                .iter()
                .any(|(_, answer)| answer.as_ref().is_err_and(|error| !is_absent(error)));
            absent = Some(nxdomain);
            continue;
        }
        let mut ips = Vec::new();
        let mut ttl = u32::MAX;
        let mut failed = None;
        for (family, answer) in answers {
            let lookup = match answer {
                Ok(lookup) => lookup,
                Err(error) if is_absent(&error) => {
                    absent = Some(error);
                    continue;
                }
                // Neither family answered.
                Err(error) if failed.is_some() => return Err(LookupFailed { error, unanswered }),
                Err(error) => {
                    failed = Some((family, error));
                    continue;
                }
            };
            for record in lookup.records() {
                // A CNAME that led to the addresses may change sooner than they do: its TTL
                // counts too.
                ttl = ttl.min(ttl_of(record));
                match record.data() {
                    RData::A(a) => ips.push(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => ips.push(IpAddr::V6(aaaa.0)),
                    _ => {}
                }
            }
        }
        if let Some((family, error)) = failed {
            // The other family answered about this name: its addresses stand, and only the
            // failed family's last ones are kept, if they are this name's. None at all is still
            // an answer about the other family, which the caller must not take the failed
            // family's last addresses back over. The last addresses of another name, one
            // family of them beside this name's other family, would be neither name's set, and
            // keeping them all would hold the host at a name it has left for as long as this
            // family fails here.
            let answered = ips.len();
            ips.extend(kept.iter().filter(|ip| is_of(family, ip)));
            let dropped = match last {
                Some(last) if last.name != name => {
                    last.ips.iter().filter(|ip| is_of(family, ip)).count()
                }
                _ => 0,
            };
            let kept = ips.len() - answered;
            return Ok(Addresses {
                name,
                ips,
                ttl: Duration::from_secs(ttl.into()),
                failed: Some(FailedFamily {
                    family,
                    error,
                    kept,
                    dropped,
                }),
                unanswered,
            });
        }
        if !ips.is_empty() {
            return Ok(Addresses {
                name,
                ips,
                ttl: Duration::from_secs(ttl.into()),
                failed: None,
                unanswered,
            });
        }
    }
    Err(LookupFailed {
        error: absent.unwrap_or_else(|| ResolveError::from("no addresses")),
        unanswered,
    })
}

/// Whether `ip` is of `family` (`"A"` or `"AAAA"`).
fn is_of(family: &str, ip: &IpAddr) -> bool {
    ip.is_ipv4() == (family == "A")
}

/// The answers to the A and AAAA questions about `name`, asked at once, each with its family.
/// Both answers are waited for, as [`nxdomain_passing_over`] needs them both.
async fn ask_both_families(
    resolver: &TokioResolver,
    name: &DnsName,
) -> [(&'static str, Result<Lookup, ResolveError>); 2] {
    let v4 = resolver
        .ipv4_lookup(name.clone())
        .map(|answer| answer.map(Lookup::from));
    let v6 = resolver
        .ipv6_lookup(name.clone())
        .map(|answer| answer.map(Lookup::from));
    let (v4, v6) = future::join(v4, v6).await;
    [("A", v4), ("AAAA", v6)]
}

/// The NXDOMAIN answer of `answers` (a name's two families') that passes the name over: one
/// family's, unless the other family has addresses, in its answer or, when its question
/// failed (a timeout, a server failure, a refusal), in `kept`, the name's own from the last
/// good resolution, where the NXDOMAIN's family had none.
///
/// NXDOMAIN is about a name, every record type of it, yet addresses of the other family show
/// the name is there, and the NXDOMAIN then says only that its own family has none: hickory
/// answers a question from its hosts file when the file lists the name with that family, and
/// asks the server the other (a Kubernetes `hostAliases` entry with an IPv4 address alone gets
/// NXDOMAIN for AAAA from the cluster's DNS), and a server may answer one family itself and
/// NXDOMAIN the other (a CoreDNS `template`). So both answers are waited for: a name whose one
/// question gets NXDOMAIN while the other goes unanswered is passed over once that one times
/// out, unless the unanswered family had addresses under this name and the NXDOMAIN's family
/// none. Then whether the name is there is not known, and that family keeps them, as a family
/// that fails beside an answer does: a lost A answer beside a `template`'s NXDOMAIN for AAAA
/// does not make the name gone. An NXDOMAIN for a family that had addresses under this name is
/// news about the name, not a family that never had any: the name is passed over.
fn nxdomain_passing_over(
    answers: &[(&'static str, Result<Lookup, ResolveError>); 2],
    kept: &[IpAddr],
) -> Option<ResolveError> {
    let (gone, nxdomain) = answers.iter().find_map(|(family, answer)| {
        let nxdomain = answer.as_ref().err().filter(|error| is_nxdomain(error))?;
        Some((family, nxdomain))
    })?;
    let had = |family| kept.iter().any(|ip| is_of(family, ip));
    let there = answers.iter().any(|(family, answer)| match answer {
        Ok(lookup) => has_addresses(lookup),
        Err(error) => !is_absent(error) && had(family) && !had(gone),
    });
    (!there).then(|| nxdomain.clone())
}

/// Whether `lookup` holds an address (an A or AAAA record), not only CNAMEs on the way to one.
fn has_addresses(lookup: &Lookup) -> bool {
    lookup
        .record_iter()
        .any(|record| matches!(record.data(), RData::A(_) | RData::AAAA(_)))
}

/// Whether the server answered that the name does not exist (NXDOMAIN), which is about every
/// record type of it.
fn is_nxdomain(error: &ResolveError) -> bool {
    match error.kind() {
        ResolveErrorKind::Proto(proto) => matches!(
            proto.kind(),
            ProtoErrorKind::NoRecordsFound {
                response_code: ResponseCode::NXDomain,
                ..
            }
        ),
        _ => false,
    }
}

/// The SRV records of `name`, with the smallest TTL of the records that gave them (a CNAME's on
/// the way to them included); an error when the server says there are none (then [`is_absent`]
/// holds) or a question fails.
///
/// The names of [`search_names`] are asked about one at a time, as [`lookup_ips`] does: a name
/// the server says does not exist or has no SRV records is passed over, and one whose question
/// fails (a timeout, a server failure, a refusal) ends the search, since the name may have
/// records the server could not give and a later name may be another service. hickory's own
/// search would go on to the next name after any error.
async fn lookup_srv(
    resolver: &TokioResolver,
    srv_name: &DnsName,
) -> Result<(Vec<SRV>, u32), ResolveError> {
    let mut absent = None;
    for name in search_names(resolver, srv_name) {
        let lookup = match resolver.srv_lookup(name).await {
            Ok(lookup) => lookup,
            Err(error) if is_absent(&error) => {
                absent = Some(error);
                continue;
            }
            Err(error) => return Err(error),
        };
        let mut ttl = u32::MAX;
        let mut records = Vec::new();
        // Every record's TTL counts, a CNAME's on the way to the SRV records included.
        for record in lookup.as_lookup().records() {
            ttl = ttl.min(ttl_of(record));
            if let RData::SRV(srv) = record.data() {
                records.push(srv.clone());
            }
        }
        if !records.is_empty() {
            return Ok((records, ttl));
        }
    }
    Err(absent.unwrap_or_else(|| ResolveError::from("no SRV records")))
}

/// The names a lookup of `host` tries, in order, as the resolver's own lookups order them: a
/// fully qualified name alone; otherwise the name under the configured domain and under each
/// search domain, and the name itself, first when it has more than `ndots` labels (or is
/// localhost), else last. Each is fully qualified, so the resolver asks about it alone.
fn search_names(resolver: &TokioResolver, host: &DnsName) -> Vec<DnsName> {
    let mut itself = host.clone();
    itself.set_fqdn(true);
    if host.is_fqdn() {
        return vec![itself];
    }
    let config = resolver.config();
    let itself_first =
        usize::from(host.num_labels()) > resolver.options().ndots || host.is_localhost();
    let mut names = Vec::new();
    if itself_first {
        names.push(itself.clone());
    }
    for domain in config.domain().into_iter().chain(config.search()) {
        if let Ok(mut name) = host.clone().append_domain(domain) {
            name.set_fqdn(true);
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    if !itself_first {
        names.push(itself);
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::proto::rr::{
        rdata::{A, AAAA},
        RecordType,
    };

    #[test]
    fn the_systems_resolver_options_are_kept_under_discoverys_own() {
        let mut system = ResolverOpts::default();
        system.ndots = 5;
        system.edns0 = true;
        system.attempts = 3;
        let opts = resolver_opts(system, Duration::from_millis(1500), 3);
        assert_eq!((opts.ndots, opts.edns0), (5, true));
        assert_eq!(opts.timeout, Duration::from_millis(1500));
        assert_eq!(opts.attempts, 0);
        assert_eq!(opts.cache_size, 0);
        assert_eq!(opts.num_concurrent_reqs, 3);
    }

    /// The streak's key for `family` of `name`.
    fn lookup(name: &str, family: &'static str) -> (DnsName, &'static str) {
        (DnsName::from_ascii(name).unwrap(), family)
    }

    /// The names of `lookups`, as a resolution asking only those would note them.
    fn names<'a>(
        lookups: impl IntoIterator<Item = &'a (DnsName, &'static str)>,
    ) -> HashSet<DnsName> {
        lookups.into_iter().map(|(name, _)| name.clone()).collect()
    }

    #[test]
    fn a_failing_lookup_is_remembered_until_its_name_is_looked_up_again() {
        let primary = dns_name("p.api.test.");
        let backup = lookup("b.api.test.", "AAAA");
        let gone = lookup("g.api.test.", "AAAA");
        let mut failing = Failing::new();
        // The primary fails wholly: the backup is looked up, its AAAA question unanswered; `g`
        // is in the answer and fails too.
        let lookups = Failing::from([
            lookup("p.api.test.", "target"),
            backup.clone(),
            gone.clone(),
        ]);
        go_on_failing(
            &mut failing,
            lookups.clone(),
            &names(&lookups),
            &names(&lookups),
        );
        // The primary serves again, and `g` is gone from the answer: the backup, asked but not
        // looked up, and `g` are still failing; the primary answered.
        let asked = HashSet::from([primary.clone(), backup.0.clone()]);
        go_on_failing(
            &mut failing,
            Failing::new(),
            &HashSet::from([primary]),
            &asked,
        );
        assert_eq!(failing, Failing::from([backup.clone(), gone.clone()]));
        // The backup is looked up again and answers.
        go_on_failing(&mut failing, Failing::new(), &names([&backup]), &asked);
        assert_eq!(failing, Failing::from([gone]));
    }

    #[test]
    fn the_lookups_remembered_as_failing_stay_bounded() {
        // A name that never answers AAAA, beside a new name (one pod per rollout) whose lookup
        // times out, and which is gone from the next answer.
        let constant = lookup("c.api.test.", "AAAA");
        let mut failing = Failing::new();
        for i in 0..10_000 {
            let lookups = Failing::from([
                constant.clone(),
                lookup(&format!("pod-{i}.api.test."), "target"),
            ]);
            let asked = names(&lookups);
            go_on_failing(&mut failing, lookups, &asked, &asked);
            assert!(failing.len() <= STREAK_LOOKUPS, "{}", failing.len());
        }
        assert!(failing.contains(&constant));
    }

    #[test]
    fn a_streak_of_partial_resolutions_forgets_targets_gone_from_the_answer() {
        // Every resolution fails in part: a target that never answers AAAA, beside a new target
        // (one pod per rollout) whose lookup times out, and which is gone from the next answer.
        let mut streak = Streak::default();
        let constant = lookup("c.api.test.", "AAAA");
        let mut trimmed = false;
        for i in 0..10_000 {
            let unanswered = Failing::from([
                constant.clone(),
                lookup(&format!("pod-{i}.api.test."), "target"),
            ]);
            let asked = names(&unanswered);
            let before = streak.lookups.len();
            streak.published(unanswered, &asked, true);
            trimmed |= streak.lookups.len() < before;
            assert!(
                streak.lookups.len() <= STREAK_LOOKUPS,
                "{}",
                streak.lookups.len()
            );
        }
        assert!(trimmed);
        assert!(streak.lookups.contains(&constant));
    }

    #[test]
    fn a_target_gone_from_the_answer_and_back_does_not_start_the_backoff_over() {
        // An answer that lists some of many targets at a time, `x` among them every other time,
        // while neither `c` nor `x` ever answers AAAA.
        let mut streak = Streak::default();
        let with_x = Failing::from([lookup("c.api.test.", "AAAA"), lookup("x.api.test.", "AAAA")]);
        let without_x = Failing::from([lookup("c.api.test.", "AAAA")]);
        assert!(streak.published(with_x.clone(), &names(&with_x), true));
        for _ in 0..5 {
            assert!(!streak.published(without_x.clone(), &names(&without_x), true));
            assert!(!streak.published(with_x.clone(), &names(&with_x), true));
        }
    }

    #[test]
    fn a_target_back_in_the_answer_after_the_streak_was_trimmed_starts_the_backoff_over_again() {
        let mut streak = Streak::default();
        let constant = lookup("c.api.test.", "AAAA");
        let back = lookup("b.api.test.", "target");
        let both = Failing::from([constant.clone(), back.clone()]);
        assert!(streak.published(both.clone(), &names(&both), true));
        // `b` leaves the answer while `c` goes on failing, and a new target times out in each
        // resolution (one pod per rollout) until the streak outgrows its bound.
        for i in 0..STREAK_LOOKUPS {
            let unanswered = Failing::from([
                constant.clone(),
                lookup(&format!("pod-{i}.api.test."), "target"),
            ]);
            let asked = names(&unanswered);
            assert!(streak.published(unanswered, &asked, true));
        }
        assert!(!streak.lookups.contains(&back));
        // `b` comes back and times out: it is new to the streak again.
        assert!(streak.published(both.clone(), &names(&both), true));
        assert!(!streak.published(both.clone(), &names(&both), true));
    }

    #[test]
    fn a_streak_keeps_the_lookups_of_targets_left_out_of_the_answer() {
        // A target whose lookup timed out and that is now skipped (the server says it does not
        // exist) is still in the answer: timing out again does not start the backoff over.
        let mut streak = Streak::default();
        let constant = lookup("c.api.test.", "AAAA");
        let skipped = lookup("s.api.test.", "target");
        let both = Failing::from([constant.clone(), skipped.clone()]);
        let asked = names(&both);
        assert!(streak.published(both.clone(), &asked, true));
        assert!(!streak.published(Failing::from([constant.clone()]), &asked, true));
        assert!(!streak.published(both.clone(), &asked, true));
    }

    #[test]
    fn a_lookup_new_in_a_failed_resolution_starts_the_backoff_over_at_the_next_published_one() {
        let mut streak = Streak::default();
        let constant = lookup("c.api.test.", "AAAA");
        let other = lookup("c.api.test.", "A");
        let asked = names([&constant]);
        assert!(streak.published(Failing::from([constant.clone()]), &asked, true));
        streak.failed(Failing::from([constant.clone(), other.clone()]));
        assert!(streak.published(Failing::from([constant.clone()]), &asked, true));
        assert!(!streak.published(Failing::from([constant.clone()]), &asked, true));
        // A resolution with nothing failing without an answer ends the streak.
        assert!(!streak.published(Failing::new(), &asked, false));
        assert!(streak.lookups.is_empty());
    }

    #[test]
    fn the_backoff_doubles_until_max_however_small_min_is() {
        let (second, minute) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff(second, minute, 1), second);
        assert_eq!(backoff(second, minute, 3), 4 * second);
        assert_eq!(backoff(second, minute, 7), minute);
        let nano = Duration::from_nanos(1);
        assert_eq!(backoff(nano, minute, 36), Duration::from_nanos(1 << 35));
        assert_eq!(backoff(nano, minute, 37), minute);
        assert_eq!(backoff(nano, minute, u32::MAX), minute);
        assert_eq!(backoff(nano, Duration::MAX, u32::MAX), Duration::MAX);
    }

    /// A link-local name server is reached through the interface its scope id names: the id is
    /// kept for both UDP and TCP.
    #[test]
    fn a_name_servers_scope_id_is_kept() {
        let link_local = SocketAddr::from(std::net::SocketAddrV6::new(
            "fe80::1".parse().unwrap(),
            53,
            0,
            3,
        ));
        let plain = SocketAddr::from(([10, 0, 0, 53], 5353));
        let group = name_server_group(&[link_local, plain]);
        let servers: Vec<_> = group
            .iter()
            .map(|server| {
                assert!(server.trust_negative_responses);
                (server.socket_addr, server.protocol)
            })
            .collect();
        assert_eq!(
            servers,
            [
                (link_local, Protocol::Udp),
                (link_local, Protocol::Tcp),
                (plain, Protocol::Udp),
                (plain, Protocol::Tcp),
            ]
        );
    }

    #[test]
    fn search_names_follow_the_resolvers_order() {
        let resolver = |ndots: usize| {
            let mut opts = ResolverOpts::default();
            opts.ndots = ndots;
            let search = ["default.svc.cluster.local.", "svc.cluster.local."]
                .map(|domain| DnsName::from_ascii(domain).unwrap());
            let config = ResolverConfig::from_parts(
                None,
                search.to_vec(),
                NameServerConfigGroup::from_ips_clear(&[IpAddr::from([127, 0, 0, 1])], 53, true),
            );
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
                .with_options(opts)
                .build()
        };
        let names = |resolver: &TokioResolver, host: &str| -> Vec<String> {
            search_names(resolver, &DnsName::from_ascii(host).unwrap())
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        let kubernetes = resolver(5);
        assert_eq!(names(&kubernetes, "users.test."), ["users.test."]);
        assert_eq!(
            names(&kubernetes, "users"),
            [
                "users.default.svc.cluster.local.",
                "users.svc.cluster.local.",
                "users."
            ]
        );
        assert_eq!(
            names(&resolver(1), "users.test"),
            [
                "users.test.",
                "users.test.default.svc.cluster.local.",
                "users.test.svc.cluster.local."
            ]
        );
    }

    #[test]
    fn zero_weights_weigh_a_small_share_within_a_bounded_schedule() {
        // One endpoint per record.
        let weighed = |records: &[u16]| -> Vec<u32> {
            let weights: Vec<Weight> = records
                .iter()
                .map(|&w| {
                    let mut weight = Weight::default();
                    weight.add(w, 1);
                    weight
                })
                .collect();
            Weight::scaled(&weights).collect()
        };
        assert_eq!(weighed(&[3, 1]), [3, 1], "no weight 0: as they are");
        assert_eq!(weighed(&[0, 0]), [1, 1]);
        assert_eq!(weighed(&[1, 0]), [100, 1]);
        let mut many = vec![50; 80];
        many.push(0);
        let scaled = weighed(&many);
        assert_eq!((scaled[0], scaled[80]), (16 * 50, 1));
        assert!(scaled.iter().sum::<u32>() <= SCALED_TOTAL + 1);
        assert_eq!(weighed(&[65_535, 65_535, 0]), [65_535, 65_535, 1]);
        // The scale follows the power of two at or above the sum: 64 from 513 to 1024, so a
        // record's weight does not move while another's changes within those bounds.
        assert_eq!(weighed(&[0, 700, 1]), [1, 700 * 64, 64]);
        assert_eq!(weighed(&[0, 600, 1]), [1, 600 * 64, 64]);
        assert_eq!(weighed(&[0, 511, 1]), [1, 511 * 100, 100]);
        // An address two records name weighs their sum, a record of weight 0 among them 1.
        let mut both = Weight::default();
        both.add(1, 1);
        both.add(0, 1);
        let mut weighted = Weight::default();
        weighted.add(1, 1);
        assert_eq!(
            Weight::scaled(&[both, weighted]).collect::<Vec<_>>(),
            [101, 100]
        );
    }

    #[test]
    fn a_records_addresses_share_its_weight() {
        // Records of weight 0, 1 and 1 whose targets have 2, 1 and 3 addresses: a weight is
        // counted in sixths, and the addresses of each record weigh its share together.
        let parts = [2, 1, 3].into_iter().fold(1, lcm);
        assert_eq!(parts, 6);
        let weights: Vec<Weight> = [(0, 2), (1, 1), (1, 3)]
            .into_iter()
            .flat_map(|(weight, addresses)| {
                let mut each = Weight::default();
                each.add(weight, parts / addresses);
                std::iter::repeat_n(each, addresses as usize)
            })
            .collect();
        assert_eq!(
            Weight::scaled(&weights).collect::<Vec<_>>(),
            [3, 3, 600, 200, 200, 200]
        );
        assert_eq!(lcm(4, 6), 12);
        assert_eq!(lcm(u64::MAX, 2), u64::MAX);
    }

    /// The weights of a priority's records, one target each, given as `(record weight, the
    /// target's address count)`, as `resolve` counts them: the endpoints' weights, record by
    /// record, in order.
    fn srv_weights(records: &[(u16, u64)]) -> Vec<u32> {
        let parts = records.iter().fold(1, |parts, &(_, n)| lcm(parts, n));
        let weights: Vec<Weight> = records
            .iter()
            .flat_map(|&(weight, addresses)| {
                let mut each = Weight::default();
                each.add(weight, parts / addresses);
                std::iter::repeat_n(each, addresses as usize)
            })
            .collect();
        Weight::scaled(&weights).collect()
    }

    #[test]
    fn beside_several_addresses_a_zero_weight_counts_after_the_least_common_multiple() {
        // Records of weight 0 (one address), 300 (A and AAAA) and 10 (one address): weights are
        // counted in halves, 0, 600 and 20. Their sum, 620, is past 512: the weighted records
        // are multiplied by 64, not 100, and the record of weight 0 weighs 1 multiplied by the
        // least common multiple, 2, like the others, not again.
        let weights = srv_weights(&[(0, 1), (300, 2), (10, 1)]);
        assert_eq!(weights, [2, 300 * 64, 300 * 64, 2 * 10 * 64]);
        // Record by record: 1 against 300 × 64 and 10 × 64.
        let (a, b, c) = (weights[0], weights[1] + weights[2], weights[3]);
        assert_eq!((b / a, c / a), (300 * 64, 10 * 64));
        assert_eq!((b % a, c % a), (0, 0));
        // Counted before the least common multiple, the sum of 310 would take the scale of 100;
        // so would 512 here, and its addresses would weigh 2 × 512 × 100 in all, past the bound
        // on the schedule. Taken from the sum after it, 1 024, the scale keeps them within it.
        let weights = srv_weights(&[(0, 1), (512, 2)]);
        assert_eq!(weights, [2, 512 * 64, 512 * 64]);
        assert!(weights[1..].iter().sum::<u32>() <= SCALED_TOTAL);
        // Records that all weigh 0 weigh 1 each, multiplied by the least common multiple: a
        // target's addresses share it.
        assert_eq!(srv_weights(&[(0, 1), (0, 2)]), [2, 1, 1]);
    }

    /// What a test name server answers a question with: records (none for an empty answer),
    /// an error code, or nothing at all (`None`: the question is dropped).
    type Answer = Option<Result<Vec<RData>, ResponseCode>>;

    /// A name server on loopback answering each question as `answer` says.
    async fn serve(answer: fn(&str, RecordType) -> Answer) -> SocketAddr {
        use hickory_resolver::proto::op::{Message, MessageType};
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                let request = Message::from_vec(&buf[..len]).unwrap();
                let query = request.queries()[0].clone();
                let Some(answer) = answer(&query.name().to_string(), query.query_type()) else {
                    continue;
                };
                let mut response = Message::new();
                response
                    .set_id(request.id())
                    .set_message_type(MessageType::Response)
                    .set_recursion_desired(true)
                    .set_recursion_available(true)
                    .add_query(query.clone());
                match answer {
                    Ok(records) => {
                        for data in records {
                            response.add_answer(Record::from_rdata(query.name().clone(), 60, data));
                        }
                    }
                    Err(code) => {
                        response.set_response_code(code);
                    }
                }
                let _ = socket.send_to(&response.to_vec().unwrap(), from).await;
            }
        });
        addr
    }

    /// A resolver asking `server`, with `ndots` 5 and the search list `search`, giving a
    /// question up after `timeout`.
    fn search_resolver(server: SocketAddr, search: &str, timeout: Duration) -> TokioResolver {
        let mut opts = ResolverOpts::default();
        opts.ndots = 5;
        let config = ResolverConfig::from_parts(
            None,
            vec![DnsName::from_ascii(search).unwrap()],
            NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true),
        );
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(resolver_opts(opts, timeout, 1))
            .build()
    }

    fn dns_name(name: &str) -> DnsName {
        DnsName::from_ascii(name).unwrap()
    }

    /// A server failure ends the search, as a timeout does: the name may have addresses the
    /// server could not give (a cluster DNS not yet in sync answers so), and a later name may be
    /// another host. The lookup fails with no answer that the host has no addresses.
    #[tokio::test]
    async fn a_server_failure_ends_the_search() {
        // `users.` has the A record 10.0.0.1 and no AAAA records; every name under
        // `svc.test.` gets a server failure.
        let server = serve(|name, ty| match ty {
            _ if name.ends_with(".svc.test.") => Some(Err(ResponseCode::ServFail)),
            RecordType::A => Some(Ok(vec![RData::A(A::new(10, 0, 0, 1))])),
            _ => Some(Ok(vec![])),
        })
        .await;
        let resolver = search_resolver(server, "ns.svc.test.", Duration::from_secs(5));
        let Err(LookupFailed { error, .. }) = lookup_ips(&resolver, &dns_name("users"), None).await
        else {
            panic!("the search went on past a server failure");
        };
        assert!(!is_absent(&error), "{error}");
        // `users.` itself, tried last, has an address: the search did not get there.
        let Ok(found) = lookup_ips(&resolver, &dns_name("users."), None).await else {
            panic!("no address for users.");
        };
        assert_eq!(found.ips, [IpAddr::from([10, 0, 0, 1])]);
    }

    /// The SRV search asks one name at a time and stops at a server failure, as the address
    /// search does: `_http._tcp.users.ns.svc.test.` gets one, and `_http._tcp.users.`, tried
    /// last, has a record (another service, as far as the resolution can tell). Names under
    /// `gone.test.` do not exist: the search goes on past them.
    #[tokio::test]
    async fn an_srv_server_failure_ends_the_search() {
        let server = serve(|name, ty| match (name, ty) {
            _ if name.ends_with(".svc.test.") => Some(Err(ResponseCode::ServFail)),
            ("_http._tcp.users.", RecordType::SRV) => Some(Ok(vec![RData::SRV(SRV::new(
                10,
                1,
                8080,
                dns_name("users.other.test."),
            ))])),
            ("users.other.test.", RecordType::A) => Some(Ok(vec![RData::A(A::new(10, 0, 0, 3))])),
            ("users.other.test.", _) => Some(Ok(vec![])),
            _ => Some(Err(ResponseCode::NXDomain)),
        })
        .await;
        let query = &Parsed::Srv(dns_name("_http._tcp.users"));
        let resolve_with = |search| {
            let resolver = search_resolver(server, search, Duration::from_secs(5));
            async move {
                let mut known = Known::new();
                resolve(
                    &resolver,
                    query,
                    &Name::default_for("discover"),
                    &mut known,
                    &Failing::new(),
                    &mut Seen::default(),
                )
                .await
                .map(|resolved| resolved.endpoints)
            }
        };
        let Err(error) = resolve_with("ns.svc.test.").await else {
            panic!("the SRV search went on past a server failure");
        };
        assert!(!is_absent(&error), "{error}");
        let Ok(endpoints) = resolve_with("gone.test.").await else {
            panic!("the SRV search did not go on past a name that does not exist");
        };
        assert_eq!(
            endpoints,
            [Tagged::new(SocketAddr::from(([10, 0, 0, 3], 8080)))]
        );
    }

    /// Names under `ns.test.` do not exist, so their A questions get NXDOMAIN, and their AAAA
    /// questions are dropped (a server that does not answer them); `users.` has the addresses
    /// 10.0.0.1 and fd00::1, and `half.` 10.0.0.2, its AAAA questions dropped too.
    fn nxdomain_or_dropped(name: &str, ty: RecordType) -> Answer {
        match (name, ty) {
            (_, RecordType::AAAA) if name.ends_with(".ns.test.") || name == "half." => None,
            (_, RecordType::A) if name.ends_with(".ns.test.") => Some(Err(ResponseCode::NXDomain)),
            ("users.", RecordType::A) => Some(Ok(vec![RData::A(A::new(10, 0, 0, 1))])),
            ("users.", RecordType::AAAA) => Some(Ok(vec![RData::AAAA(AAAA::new(
                0xfd00, 0, 0, 0, 0, 0, 0, 1,
            ))])),
            ("half.", RecordType::A) => Some(Ok(vec![RData::A(A::new(10, 0, 0, 2))])),
            _ => Some(Err(ResponseCode::NXDomain)),
        }
    }

    /// NXDOMAIN is about a name, not one record type: a name whose A question gets it does not
    /// exist, and the search goes on to the next name though its AAAA question went unanswered
    /// (once that question times out).
    #[tokio::test(start_paused = true)]
    async fn a_name_that_does_not_exist_is_passed_over_though_the_other_question_goes_unanswered() {
        let server = serve(nxdomain_or_dropped).await;
        let resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        let users = dns_name("users");
        let both = [IpAddr::from([10, 0, 0, 1]), "fd00::1".parse().unwrap()];
        let Ok(found) = lookup_ips(&resolver, &users, None).await else {
            panic!("users. was not found past users.ns.test.");
        };
        assert_eq!(found.ips, both);
        assert_eq!(found.name, dns_name("users."));
        // Found under `users.ns.test.` before, with both families: the NXDOMAIN for A, a
        // family it had addresses of, is news about the name, which is passed over though its
        // AAAA question goes unanswered. It does not keep its IPv6 address alone.
        let last = Last {
            name: dns_name("users.ns.test."),
            ips: both.to_vec(),
        };
        let Ok(found) = lookup_ips(&resolver, &users, Some(&last)).await else {
            panic!("users. was not found past users.ns.test.");
        };
        assert_eq!(found.name, dns_name("users."));
        assert_eq!(found.ips, both);
    }

    /// Each search name whose A question gets NXDOMAIN while its AAAA question is dropped holds
    /// the lookup up for one timeout, as `DnsBuilder::timeout` says: `half.ns.test.` waits one,
    /// and `half.`, whose AAAA question is dropped too, one more.
    #[tokio::test(start_paused = true)]
    async fn a_search_name_passed_over_beside_a_dropped_question_waits_one_timeout() {
        let server = serve(nxdomain_or_dropped).await;
        let resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        let start = tokio::time::Instant::now();
        let Ok(found) = lookup_ips(&resolver, &dns_name("half"), None).await else {
            panic!("half. was not found past half.ns.test.");
        };
        assert_eq!(found.name, dns_name("half."));
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    /// hickory answers each family's question from its hosts file when the file lists the name
    /// with that family, and asks the server the other: a host listed with an IPv4 address alone
    /// (Kubernetes `hostAliases`) gets its A answer from the file, and NXDOMAIN from a server
    /// that does not know it for AAAA. That NXDOMAIN says only that the name has no IPv6
    /// address: the file's does not pass the name over.
    #[tokio::test(start_paused = true)]
    async fn an_nxdomain_beside_the_other_familys_addresses_says_only_that_this_family_has_none() {
        let server = serve(|_, _| Some(Err(ResponseCode::NXDomain))).await;
        let mut resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        let mut hosts = hickory_resolver::Hosts::default();
        hosts.read_hosts_conf("10.0.0.7 db\n".as_bytes()).unwrap();
        resolver.set_hosts(std::sync::Arc::new(hosts));
        let db = [IpAddr::from([10, 0, 0, 7])];
        for host in ["db.", "db"] {
            let Ok(found) = lookup_ips(&resolver, &dns_name(host), None).await else {
                panic!("{host} was passed over for its AAAA question's NXDOMAIN");
            };
            assert_eq!(found.ips, db, "{host}");
            assert_eq!(found.name, dns_name("db."), "{host}");
            assert!(found.failed.is_none(), "{host}");
        }
    }

    /// A server answering one family itself and NXDOMAIN for the other (a CoreDNS `template`)
    /// has the name: the family answered stands, whichever it is.
    #[tokio::test(start_paused = true)]
    async fn a_name_one_family_answers_is_found_though_the_other_gets_nxdomain() {
        let server = serve(|name, ty| match (name, ty) {
            ("v4only.", RecordType::A) => Some(Ok(vec![RData::A(A::new(10, 0, 0, 2))])),
            ("v6only.", RecordType::AAAA) => Some(Ok(vec![RData::AAAA(AAAA::new(
                0xfd00, 0, 0, 0, 0, 0, 0, 2,
            ))])),
            _ => Some(Err(ResponseCode::NXDomain)),
        })
        .await;
        let resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        for (host, ip) in [
            ("v4only", IpAddr::from([10, 0, 0, 2])),
            ("v6only", "fd00::2".parse().unwrap()),
        ] {
            let Ok(found) = lookup_ips(&resolver, &dns_name(host), None).await else {
                panic!("{host}. was passed over for one family's NXDOMAIN");
            };
            assert_eq!(found.ips, [ip], "{host}");
            assert_eq!(found.name, dns_name(&format!("{host}.")), "{host}");
            assert!(found.failed.is_none(), "{host}");
        }
    }

    /// One resolution of `query` with nothing failing before, `known` as the last ones left it.
    async fn resolve_with(
        resolver: &TokioResolver,
        query: &Parsed,
        known: &mut Known,
    ) -> Result<Resolved, ResolveError> {
        let name = Name::default_for("discover");
        resolve(
            resolver,
            query,
            &name,
            known,
            &Failing::new(),
            &mut Seen::default(),
        )
        .await
    }

    /// While set, `t1.test.`'s A questions go unanswered.
    static DROP_A: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// `_http._tcp.api.test.` has one SRV record, `t1.test.` on port 8080; `t1.test.` has the A
    /// record 10.0.0.1 (its questions dropped while [`DROP_A`] is set), and its AAAA question
    /// gets NXDOMAIN, as a CoreDNS `template` answering A alone gives.
    fn a_alone_else_nxdomain(name: &str, ty: RecordType) -> Answer {
        match (name, ty) {
            ("_http._tcp.api.test.", RecordType::SRV) => Some(Ok(vec![RData::SRV(SRV::new(
                10,
                1,
                8080,
                dns_name("t1.test."),
            ))])),
            ("t1.test.", RecordType::A) if DROP_A.load(std::sync::atomic::Ordering::Relaxed) => {
                None
            }
            ("t1.test.", RecordType::A) => Some(Ok(vec![RData::A(A::new(10, 0, 0, 1))])),
            _ => Some(Err(ResponseCode::NXDomain)),
        }
    }

    /// An NXDOMAIN beside a question that goes unanswered does not say the name is gone when
    /// the unanswered family had addresses under that name: the NXDOMAIN may be its own
    /// family's alone (a CoreDNS `template`), and the unanswered family keeps its addresses, as
    /// a lookup that times out does. A target whose A question times out once so keeps its
    /// address, and the resolution counts as failed in part (retried on the failure backoff);
    /// so does a host.
    #[tokio::test(start_paused = true)]
    async fn an_nxdomain_beside_an_unanswered_family_keeps_that_familys_last_addresses() {
        let server = serve(a_alone_else_nxdomain).await;
        let resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        let queries = [
            (Parsed::Srv(dns_name("_http._tcp.api.test.")), 8080),
            (Parsed::Ip(dns_name("t1.test."), 80), 80),
        ];
        let mut known = [Known::new(), Known::new()];
        for ((query, port), known) in queries.iter().zip(&mut known) {
            let Ok(resolved) = resolve_with(&resolver, query, known).await else {
                panic!("{query:?} did not resolve");
            };
            let t1 = Tagged::new(SocketAddr::from(([10, 0, 0, 1], *port)));
            assert_eq!((resolved.endpoints, resolved.partial), (vec![t1], false));
        }
        DROP_A.store(true, std::sync::atomic::Ordering::Relaxed);
        for ((query, port), known) in queries.iter().zip(&mut known) {
            let Ok(resolved) = resolve_with(&resolver, query, known).await else {
                panic!("{query:?} failed while t1.test.'s A question went unanswered");
            };
            let t1 = Tagged::new(SocketAddr::from(([10, 0, 0, 1], *port)));
            assert_eq!(
                (resolved.endpoints, resolved.partial),
                (vec![t1], true),
                "{query:?}"
            );
        }
    }

    /// A search name passed over while one of its questions went unanswered was not fully
    /// answered: the resolution that finds the host under a later name is published, yet
    /// counts as failed in part (so the next follows the failure backoff), as one whose own
    /// question goes unanswered does. `users.ns.test.`'s A question gets NXDOMAIN and its AAAA
    /// question is dropped; `users.` answers both.
    #[tokio::test(start_paused = true)]
    async fn a_host_found_past_a_name_with_an_unanswered_question_counts_as_failed_in_part() {
        let server = serve(nxdomain_or_dropped).await;
        let resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        let Ok(resolved) = resolve_with(
            &resolver,
            &Parsed::Ip(dns_name("users"), 80),
            &mut Known::new(),
        )
        .await
        else {
            panic!("users. was not found past users.ns.test.");
        };
        let both = [
            SocketAddr::from(([10, 0, 0, 1], 80)),
            "[fd00::1]:80".parse().unwrap(),
        ]
        .map(Tagged::new);
        assert_eq!(
            (resolved.endpoints, resolved.partial),
            (both.to_vec(), true)
        );
    }

    /// `_http._tcp.pair.test.` has two SRV records, `t1.test.` and `t2.test.`, on port 8080,
    /// and `_http._tcp.gone.test.` two, `t1.test.` and `t3.test.`; `t1.test.` has the A record
    /// 10.0.0.1 and NXDOMAIN for AAAA, `t2.test.` NXDOMAIN for A while its AAAA questions are
    /// dropped, and `t3.test.` NXDOMAIN for both.
    fn pair_one_half_unanswered(name: &str, ty: RecordType) -> Answer {
        match (name, ty) {
            ("_http._tcp.pair.test.", RecordType::SRV) => Some(Ok(["t1.test.", "t2.test."]
                .map(|target| RData::SRV(SRV::new(10, 1, 8080, dns_name(target))))
                .to_vec())),
            ("_http._tcp.gone.test.", RecordType::SRV) => Some(Ok(["t1.test.", "t3.test."]
                .map(|target| RData::SRV(SRV::new(10, 1, 8080, dns_name(target))))
                .to_vec())),
            ("t1.test.", RecordType::A) => Some(Ok(vec![RData::A(A::new(10, 0, 0, 1))])),
            ("t2.test.", RecordType::AAAA) => None,
            _ => Some(Err(ResponseCode::NXDomain)),
        }
    }

    /// An SRV target passed over for one family's NXDOMAIN while its other question went
    /// unanswered is left out, as one the server says does not exist, yet the resolution
    /// counts as failed in part: that question's answer is asked for again on the failure
    /// backoff, not only when the TTL runs out. Its last addresses of both families are not
    /// kept: the NXDOMAIN's family had some there, so the name is gone. A target both of whose
    /// questions get NXDOMAIN was fully answered: left out, it fails nothing.
    #[tokio::test(start_paused = true)]
    async fn an_srv_target_passed_over_beside_an_unanswered_question_counts_as_failed_in_part() {
        let server = serve(pair_one_half_unanswered).await;
        let resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        let query = Parsed::Srv(dns_name("_http._tcp.pair.test."));
        let t2 = dns_name("t2.test.");
        let t2_last = Last {
            name: t2.clone(),
            ips: vec![IpAddr::from([10, 0, 0, 2]), "fd00::2".parse().unwrap()],
        };
        let t1 = Tagged::new(SocketAddr::from(([10, 0, 0, 1], 8080)));
        for mut known in [Known::new(), Known::from([(t2, t2_last)])] {
            let Ok(resolved) = resolve_with(&resolver, &query, &mut known).await else {
                panic!("_http._tcp.pair.test. did not resolve");
            };
            assert_eq!(
                (resolved.endpoints, resolved.partial),
                (vec![t1.clone()], true)
            );
        }
        let gone = Parsed::Srv(dns_name("_http._tcp.gone.test."));
        let Ok(resolved) = resolve_with(&resolver, &gone, &mut Known::new()).await else {
            panic!("_http._tcp.gone.test. did not resolve");
        };
        assert_eq!((resolved.endpoints, resolved.partial), (vec![t1], false));
    }

    /// A family that goes unanswered keeps its last addresses only under the name they came
    /// from. Beside another name's answer it keeps none: that answer stands alone, failed in
    /// part (so asked again on the failure backoff), and the name it came from is the one the
    /// next resolution keeps addresses under, so a host that moved to a name whose server drops
    /// AAAA questions is followed there.
    #[tokio::test(start_paused = true)]
    async fn a_failed_family_keeps_its_last_addresses_only_under_the_name_they_came_from() {
        let server = serve(nxdomain_or_dropped).await;
        let resolver = search_resolver(server, "ns.test.", Duration::from_millis(200));
        let half = dns_name("half");
        let v4 = IpAddr::from([10, 0, 0, 2]);
        // What became of the failed family's last addresses, for the log: how many were kept,
        // and how many left out as another name's.
        let kept_and_dropped = |found: &Addresses| {
            let failed = found.failed.as_ref().expect("AAAA failed");
            (failed.family, failed.kept, failed.dropped)
        };
        let Ok(found) = lookup_ips(&resolver, &half, None).await else {
            panic!("half. was not found");
        };
        assert_eq!(kept_and_dropped(&found), ("AAAA", 0, 0));
        assert_eq!(found.ips, [v4]);
        let last = |name: &str| Last {
            name: dns_name(name),
            ips: vec![IpAddr::from([10, 0, 0, 9]), "fd00::9".parse().unwrap()],
        };
        let Ok(found) = lookup_ips(&resolver, &half, Some(&last("half."))).await else {
            panic!("half. was not found");
        };
        assert_eq!(found.ips, [v4, "fd00::9".parse().unwrap()]);
        assert_eq!(kept_and_dropped(&found), ("AAAA", 1, 0));
        let Ok(found) = lookup_ips(&resolver, &half, Some(&last("half.ns.test."))).await else {
            panic!("half. was not found while its last addresses came from another name");
        };
        assert_eq!(kept_and_dropped(&found), ("AAAA", 0, 1));
        assert_eq!((found.name, found.ips), (dns_name("half."), vec![v4]));
        // A resolution so found is published, failed in part, and keeps half.'s addresses
        // under half. for the next one.
        let mut known = Known::from([(half.clone(), last("half.ns.test."))]);
        let Ok(resolved) = resolve(
            &resolver,
            &Parsed::Ip(half.clone(), 80),
            &Name::default_for("discover"),
            &mut known,
            &Failing::new(),
            &mut Seen::default(),
        )
        .await
        else {
            panic!("the resolution failed while its last addresses came from another name");
        };
        assert_eq!(
            (resolved.endpoints, resolved.partial),
            (vec![Tagged::new(SocketAddr::new(v4, 80))], true)
        );
        assert_eq!(
            (&known[&half].name, &known[&half].ips),
            (&dns_name("half."), &vec![v4])
        );
    }
}
