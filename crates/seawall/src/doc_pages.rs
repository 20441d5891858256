//! The README and the guide's pages under `docs/`, read in as doc comments so that `cargo test
//! --doc` compiles each of their Rust blocks and runs it (unless it is marked `no_run`): an example
//! that no longer matches the API fails the tests. Built only for doctests, and only with every
//! concern's feature on (`full`), as the pages use them all.

#![cfg(feature = "full")]

#[doc = include_str!("../../../README.md")]
pub struct Readme;

#[doc = include_str!("../../../docs/architecture.md")]
pub struct ArchitecturePage;

#[doc = include_str!("../../../docs/timeout.md")]
pub struct TimeoutPage;

#[doc = include_str!("../../../docs/fallback.md")]
pub struct FallbackPage;

#[doc = include_str!("../../../docs/circuit-breaker.md")]
pub struct CircuitBreakerPage;

#[doc = include_str!("../../../docs/bulkhead.md")]
pub struct BulkheadPage;

#[doc = include_str!("../../../docs/rate-limit.md")]
pub struct RateLimitPage;

#[doc = include_str!("../../../docs/retry.md")]
pub struct RetryPage;

#[doc = include_str!("../../../docs/hedging.md")]
pub struct HedgingPage;

#[doc = include_str!("../../../docs/load-balancing.md")]
pub struct LoadBalancingPage;

#[doc = include_str!("../../../docs/composition.md")]
pub struct CompositionPage;

#[doc = include_str!("../../../docs/observability.md")]
pub struct ObservabilityPage;

#[doc = include_str!("../../../docs/simulator.md")]
pub struct SimulatorPage;

#[doc = include_str!("../../../docs/benchmarks.md")]
pub struct BenchmarksPage;
