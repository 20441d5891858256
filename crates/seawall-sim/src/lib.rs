//! A deterministic, virtual-time cluster simulator for client-side resilience policies.
//!
//! `seawall-sim` runs N simulated backends as tower services on a paused tokio clock, offers them
//! load through each client under test — naive round robin, tower's `p2c::Balance` with
//! `PendingRequests` or `PeakEwma`, and seawall stacks — and reports what every client did to
//! latency (p50 … max, from hdrhistogram), success, extra load, traffic per backend over time, and
//! how quickly it reacted to faults. Every client runs on an identical, freshly seeded cluster with
//! the same request keys, so differences are the client's doing; the same seed gives the same
//! numbers.
//!
//! Time is virtual: 100,000 requests over minutes of simulated time take under a second per client
//! in release builds (figures in `docs/simulator.md`), and no wall-clock measurement is involved
//! anywhere.
//!
//! ```
//! use seawall_sim::{builtin, run};
//!
//! let scenario = builtin::by_name("hard-down").unwrap().with_requests(2_000);
//! let report = run::run(&scenario, 7).unwrap();
//! println!("{}", report.table());
//! assert_eq!(report.clients.len(), scenario.clients.len());
//! ```
//!
//! Load is open loop (a fixed arrival rate; latency measured from each request's intended send
//! time, so a client that stalls cannot hide its queue — no coordinated omission) or closed loop (a
//! fixed number of callers). See `docs/simulator.md` for the scenario format and what each metric
//! means.
#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]

pub mod backend;
pub mod builtin;
pub mod client;
pub mod dist;
pub mod report;
pub mod run;
pub mod scenario;
pub mod svg;

pub use report::Report;
pub use scenario::Scenario;
