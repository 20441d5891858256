//! Endpoint discovery for client-side balancers.
//!
//! Each source here produces a [`Discovery`]: a stream of `Change::Insert` / `Change::Remove`
//! that is a [`tower::discover::Discover`], ready for `seawall::balance::BalanceLayer` (or tower's
//! own balancer). Where the source yields addresses, a function you give turns each new address
//! into an endpoint service, for example a hyper client bound to it.
//!
//! | source | changes | use it for |
//! |---|---|---|
//! | [`fixed`] | the endpoints given, once | tests, fixed fleets |
//! | [`from_list`] | the addresses given, once, each made into a service | a static list from configuration |
//! | [`watch()`] | the latest list the application publishes on a `tokio::sync::watch` channel, as a difference from the endpoints sent | service registries with their own client (Consul, Eureka, etcd watches) |
//! | [`Dns::a`] | A/AAAA records, re-resolved as their TTL runs out | Kubernetes headless services, Consul DNS |
//! | [`Dns::srv`] | SRV records (targets, ports, weights), re-resolved likewise | Consul and Kubernetes SRV names |
//!
//! DNS discovery keeps the last good set when a resolution fails: a DNS outage does not empty
//! the balancer.
//!
//! Sources that change over time keep only their latest list for the stream, and the stream
//! compares it with the set it has sent when it is read, calling `make` for the keys it inserts
//! then: a stream read slowly, or not yet (tower's `p2c::Balance` reads discovery only while it
//! is polled for readiness), sees the latest set, not every set in between, and holds no more
//! than the changes left of the list it is reading and the newest list (two lists, when the
//! source offers one more before the stream takes the last), however often DNS answers or the
//! watch channel change. A list that comes while those changes are still being read waits until
//! they are out, and drops those it no longer calls for, so `make` is not called for a key it has
//! left out; lists coming faster than the stream is read hold none of a list's changes back. New
//! keys are inserted before old ones are removed, whatever was skipped (a list that drops every
//! insert left before one of them has gone out drops the removes left too, and makes them again
//! after its own inserts), so a balancer never finds its set empty while the whole set turns
//! over, unless `make` panics for every new key (below).
//!
//! A panic in `make` for such a source is caught where the stream calls it: that endpoint is
//! left out (an endpoint whose weight or zone changed keeps the one it had), an error is logged
//! (naming the address, for DNS; a watched key needs no `Debug`, so its error names none), the
//! rest of the list is sent, and the next list (the next resolution, the next value on the watch
//! channel) tries it again. The keys the list dropped are still removed, so when `make` panics
//! for every new key of a list that replaces the whole set, the balancer is left with none.
//! [`from_list`] calls `make` as it is called, so a panic there reaches its caller.
//!
//! # Defaults (DNS)
//!
//! | option | default |
//! |---|---|
//! | `nameservers` | the system's (`/etc/resolv.conf`), with the default `system-config` feature |
//! | `min_refresh` | 1 s |
//! | `max_refresh` | 60 s |
//! | `timeout` | 2 s per query, one attempt |
//! | `name` | `"discover"` |
//!
//! # Example
//!
//! ```
//! use seawall::balance::{BalanceLayer, Picker};
//! use seawall::discover;
//! use std::{net::SocketAddr, time::Duration};
//! use tower::{service_fn, Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), seawall::BoxError> {
//! let (publish, addresses) = tokio::sync::watch::channel(vec![
//!     "10.0.0.1:80".parse::<SocketAddr>()?,
//!     "10.0.0.2:80".parse()?,
//! ]);
//! // One service per address; a real client binds a connection pool to it.
//! let discovery = discover::watch(addresses, |addr: &SocketAddr| {
//!     let addr = *addr;
//!     service_fn(move |_req: ()| async move { Ok::<_, seawall::BoxError>(addr) })
//! });
//! let balancer = BalanceLayer::builder()
//!     .picker(Picker::RoundRobin)
//!     .max_wait(Duration::from_secs(1))
//!     .build()?
//!     .layer(discovery);
//!
//! let first = balancer.clone().oneshot(()).await?;
//! assert!(first.port() == 80);
//!
//! // The registry says the fleet changed: the balancer follows, even while idle.
//! publish.send(vec!["10.0.0.3:80".parse()?])?;
//! while balancer.endpoints() != vec!["10.0.0.3:80".parse::<SocketAddr>()?] {
//!     tokio::task::yield_now().await;
//! }
//! assert_eq!(balancer.clone().oneshot(()).await?, "10.0.0.3:80".parse()?);
//! # Ok(())
//! # }
//! ```
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod diff;
mod discovery;
mod dns;
mod latest;

pub use discovery::{fixed, from_list, watch, Discovery};
pub use dns::{Dns, DnsBuilder, DEFAULT_DNS_TIMEOUT, DEFAULT_MAX_REFRESH, DEFAULT_MIN_REFRESH};
pub use seawall_balance::{Change, Tagged};
