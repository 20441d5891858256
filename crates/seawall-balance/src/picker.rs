//! Pickers: how a balancer chooses an endpoint for a call.
//!
//! | picker | choice | source |
//! |---|---|---|
//! | [`Picker::RoundRobin`] | next endpoint in turn | Ribbon `RoundRobinRule` |
//! | [`Picker::Random`] | uniformly random | Ribbon `RandomRule` |
//! | [`Picker::WeightedRoundRobin`] | in turn, in proportion to [`EndpointMeta::weight`](crate::EndpointMeta::weight), earliest deadline first | Envoy's weighted round robin |
//! | [`Picker::LeastOutstanding`] | fewest calls in flight over all endpoints | Ribbon `BestAvailableRule` |
//! | [`Picker::P2cOutstanding`] | best of `choices` random endpoints by calls in flight | Mitzenmacher, *The Power of Two Choices* (2001) |
//! | [`Picker::P2cPeakEwma`] | best of `choices` random endpoints by PeakEWMA latency × (calls in flight + 1) | Finagle's `P2CPeakEwma` |
//! | [`Picker::LeastPeakEwma`] | cheapest of all endpoints by PeakEWMA latency × (calls in flight + 1) | Ribbon `BestAvailableRule` with Finagle's cost |
//! | [`Picker::ConsistentHash`] | the endpoint owning the request's key on a hash ring | Karger et al. (1997), Ketama |
//! | [`Picker::ZoneAware`] | the local zone while it is healthy enough, otherwise the healthy zones | Ribbon `ZoneAvoidanceRule` |
//!
//! Every picker skips endpoints that health checking has taken out (unless the balancer is in
//! panic mode) and never allocates.

use crate::{endpoint::mix, set::Snapshot};
use rand::{rngs::SmallRng, Rng};
use seawall_core::{config::check_range, ConfigError};
use std::{sync::Arc, time::Duration};

/// How a balancer picks an endpoint; see the [module docs](self).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Picker {
    /// Each endpoint in turn, starting from a place drawn from the balancer's seed.
    RoundRobin,
    /// A uniformly random endpoint.
    Random,
    /// Each endpoint in turn, as often as its weight says (earliest deadline first: an endpoint of
    /// weight `w` is due every `1/w`). An unavailable endpoint's calls go to the available ones,
    /// still in proportion to their weights.
    WeightedRoundRobin,
    /// The endpoint with the fewest calls in flight; ties go to one of the tied endpoints, each
    /// as likely as the others.
    LeastOutstanding,
    /// The endpoint with the fewest calls in flight among `choices` drawn at random.
    P2cOutstanding {
        /// How many endpoints to draw (2 is the classic power of two choices).
        choices: usize,
    },
    /// The cheapest endpoint among `choices` drawn at random, where cost is the PeakEWMA latency
    /// times (calls in flight + 1). A failed call counts as taking at least `failure_penalty`, so
    /// an endpoint that fails fast looks slow rather than attractive.
    P2cPeakEwma {
        /// How many endpoints to draw.
        choices: usize,
        /// How fast old latencies are forgotten (the EWMA's time constant).
        decay: Duration,
        /// The latency assumed, per call in flight, for an endpoint that has not answered yet
        /// (idle, it costs nothing, or what its last dropped call took).
        default_rtt: Duration,
        /// The latency a failed call is recorded as, at least.
        failure_penalty: Duration,
    },
    /// The cheapest of *all* available endpoints, where cost is the PeakEWMA latency times (calls
    /// in flight + 1), as for [`P2cPeakEwma`](Picker::P2cPeakEwma). A scan costs O(endpoints)
    /// per pick, so this suits sets of tens of endpoints, where it keeps traffic off slow
    /// endpoints far better than two random choices do.
    LeastPeakEwma {
        /// How fast old latencies are forgotten (the EWMA's time constant).
        decay: Duration,
        /// The latency assumed, per call in flight, for an endpoint that has not answered yet
        /// (idle, it costs nothing, or what its last dropped call took).
        default_rtt: Duration,
        /// The latency a failed call is recorded as, at least.
        failure_penalty: Duration,
    },
    /// The endpoint owning the request's key (see
    /// [`hash_key`](crate::BalanceConfigBuilder::hash_key)) on a ring with `replicas` points per
    /// endpoint. A request without a key goes to a random endpoint. When the owner is unavailable
    /// the next endpoint on the ring takes the call. Endpoint keys are hashed with FNV-1a over
    /// the values their `Hash` writes (integers as little-endian, `usize` as 64 bits), so rings
    /// agree across processes, Rust releases and platforms for keys whose `Hash` writes the same
    /// values: integers and strings everywhere, `SocketAddr` on little-endian platforms (std
    /// hashes an IP address as an integer read in the platform's byte order).
    ConsistentHash {
        /// Points per endpoint on the ring; more points spread keys more evenly.
        replicas: u32,
    },
    /// Endpoints in `local_zone` while at least `min_healthy_share` of them are healthy; otherwise
    /// the zones that are healthy enough (every available endpoint when none is). Within the
    /// chosen zones, power of two choices by calls in flight. A call that every local endpoint
    /// has turned away (none ready) goes on to the other zones the same way. Zones come from
    /// [`EndpointMeta::zone`](crate::EndpointMeta::zone). The first 31 zones in the set at once
    /// are judged each on its own; the endpoints without a zone are judged together as one more
    /// zone, which also takes in the endpoints of every zone beyond the 31st. In panic mode zones
    /// are left aside, as in Envoy: power of two choices over every endpoint the filter lets
    /// through.
    ZoneAware {
        /// The caller's own zone.
        local_zone: Arc<str>,
        /// The share of a zone's endpoints that must be healthy for the zone to take traffic.
        min_healthy_share: f64,
    },
}

impl Picker {
    /// Power of two choices by calls in flight.
    pub fn p2c() -> Self {
        Picker::P2cOutstanding { choices: 2 }
    }

    /// Power of two choices by PeakEWMA with the defaults: decay 10 s, default latency 30 ms,
    /// failure penalty 1 s.
    pub fn p2c_peak_ewma() -> Self {
        Picker::P2cPeakEwma {
            choices: 2,
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
        }
    }

    /// The cheapest endpoint of all by PeakEWMA, with [`p2c_peak_ewma`](Picker::p2c_peak_ewma)'s
    /// defaults.
    pub fn least_peak_ewma() -> Self {
        Picker::LeastPeakEwma {
            decay: Duration::from_secs(10),
            default_rtt: Duration::from_millis(30),
            failure_penalty: Duration::from_secs(1),
        }
    }

    /// Consistent hashing with 160 points per endpoint (Ketama's figure).
    pub fn consistent_hash() -> Self {
        Picker::ConsistentHash { replicas: 160 }
    }

    /// Zone-aware picking preferring `local_zone` while 70 % of it is healthy.
    pub fn zone_aware(local_zone: impl Into<Arc<str>>) -> Self {
        Picker::ZoneAware {
            local_zone: local_zone.into(),
            min_healthy_share: 0.7,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self {
            Picker::P2cOutstanding { choices } => {
                check_range("picker.choices", *choices, 1, 64)?;
            }
            Picker::LeastPeakEwma {
                decay,
                default_rtt,
                failure_penalty,
            } => check_peak_ewma(*decay, *default_rtt, *failure_penalty)?,
            Picker::P2cPeakEwma {
                choices,
                decay,
                default_rtt,
                failure_penalty,
            } => {
                check_range("picker.choices", *choices, 1, 64)?;
                check_peak_ewma(*decay, *default_rtt, *failure_penalty)?;
            }
            Picker::ConsistentHash { replicas } => {
                check_range("picker.replicas", *replicas, 1, 10_000)?;
            }
            Picker::ZoneAware {
                local_zone,
                min_healthy_share,
            } => {
                seawall_core::config::check_fraction(
                    "picker.min_healthy_share",
                    *min_healthy_share,
                )?;
                if local_zone.is_empty() {
                    return Err(ConfigError::invalid(
                        "picker.local_zone",
                        "must not be empty",
                        "\"\"",
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn uses_latency(&self) -> bool {
        matches!(
            self,
            Picker::P2cPeakEwma { .. } | Picker::LeastPeakEwma { .. }
        )
    }
}

impl Default for Picker {
    /// [`Picker::p2c_peak_ewma`].
    fn default() -> Self {
        Picker::p2c_peak_ewma()
    }
}

/// What a pick needs besides the snapshot.
pub(crate) struct PickCx<'a, K> {
    pub(crate) rng: &'a mut SmallRng,
    pub(crate) hash: Option<u64>,
    /// Nanoseconds since the balancer's epoch (read only by PeakEWMA).
    pub(crate) now: u64,
    pub(crate) round_robin: &'a std::sync::atomic::AtomicUsize,
    pub(crate) available: &'a dyn Fn(usize, &K) -> bool,
    /// Whether the balancer is in panic mode: health is ignored, so `available` holds for every
    /// endpoint the filter lets through and a zone's health says nothing.
    pub(crate) panic: bool,
    /// Endpoints this pick must not choose though they are available (tried already and not
    /// ready): they still count as available where a picker judges the set (a zone's health).
    pub(crate) skip: &'a Skip,
}

/// Places in a set of endpoints, as bits: in place for the first 256, on the heap only beyond.
#[derive(Debug, Default)]
pub(crate) struct Skip {
    words: [u64; Skip::IN_PLACE],
    more: Vec<u64>,
}

impl Skip {
    const IN_PLACE: usize = 4;

    /// No places.
    pub(crate) const fn new() -> Self {
        Skip {
            words: [0; Skip::IN_PLACE],
            more: Vec::new(),
        }
    }

    /// Whether place `i` is in the set.
    #[inline]
    pub(crate) fn contains(&self, i: usize) -> bool {
        let word = match self.words.get(i / 64) {
            Some(&word) => word,
            None => self.more.get(i / 64 - Self::IN_PLACE).copied().unwrap_or(0),
        };
        word >> (i % 64) & 1 == 1
    }

    /// Adds place `i`; returns whether it was not in the set already.
    pub(crate) fn insert(&mut self, i: usize) -> bool {
        let word = match self.words.get_mut(i / 64) {
            Some(word) => word,
            None => {
                let at = i / 64 - Self::IN_PLACE;
                if self.more.len() <= at {
                    self.more.resize(at + 1, 0);
                }
                &mut self.more[at]
            }
        };
        let bit = 1 << (i % 64);
        let new = *word & bit == 0;
        *word |= bit;
        new
    }
}

/// Tuning read on the hot path, precomputed from the [`Picker`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) tau_ns: f64,
    pub(crate) default_ns: f64,
    pub(crate) penalty_ns: f64,
}

impl Tuning {
    pub(crate) fn new(picker: &Picker) -> Self {
        match picker {
            Picker::P2cPeakEwma {
                decay,
                default_rtt,
                failure_penalty,
                ..
            }
            | Picker::LeastPeakEwma {
                decay,
                default_rtt,
                failure_penalty,
            } => Tuning {
                tau_ns: decay.as_nanos() as f64,
                default_ns: default_rtt.as_nanos() as f64,
                penalty_ns: failure_penalty.as_nanos() as f64,
            },
            _ => Tuning {
                tau_ns: 10e9,
                default_ns: 30e6,
                penalty_ns: 1e9,
            },
        }
    }
}

fn check_peak_ewma(
    decay: Duration,
    default_rtt: Duration,
    failure_penalty: Duration,
) -> Result<(), ConfigError> {
    seawall_core::config::check_positive_duration("picker.decay", decay)?;
    seawall_core::config::check_positive_duration("picker.default_rtt", default_rtt)?;
    check_range(
        "picker.failure_penalty",
        failure_penalty,
        Duration::ZERO,
        Duration::from_secs(3600),
    )?;
    Ok(())
}

pub(crate) const MAX_ZONES: usize = 32;

impl Picker {
    /// Picks an available endpoint of `set`, or `None` when none is available.
    pub(crate) fn pick<K, S>(
        &self,
        set: &Snapshot<K, S>,
        tuning: &Tuning,
        cx: &mut PickCx<'_, K>,
    ) -> Option<usize> {
        let n = set.endpoints.len();
        if n == 0 {
            return None;
        }
        let usable = |i: usize| (cx.available)(i, &set.endpoints[i].key);
        let avail = |i: usize| !cx.skip.contains(i) && usable(i);
        match self {
            Picker::RoundRobin => {
                // An unavailable endpoint's turn goes to the next call's turn, so the others
                // stay even.
                let mut at = 0;
                for _ in 0..n {
                    at = cx
                        .round_robin
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if avail(at % n) {
                        return Some(at % n);
                    }
                }
                scan(n, at % n, &avail)
            }
            Picker::Random => sample(n, cx.rng, &avail),
            Picker::WeightedRoundRobin => {
                let len = set.schedule.len();
                if len == 0 {
                    return None;
                }
                // An unavailable endpoint's slots pass to the next slots due.
                for _ in 0..len.min(4 * n) {
                    let at = cx
                        .round_robin
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let i = set.schedule[at % len] as usize;
                    if avail(i) {
                        return Some(i);
                    }
                }
                // None of those slots is due to an available endpoint (a heavy endpoint is out):
                // draw among the available ones in proportion to their weights.
                weighted(n, cx.rng, &avail, |i| set.endpoints[i].weight)
            }
            Picker::LeastOutstanding => least(n, cx.rng, &avail, |i| {
                set.endpoints[i]
                    .stats
                    .outstanding
                    .load(std::sync::atomic::Ordering::Relaxed)
            }),
            Picker::P2cOutstanding { choices } => best_of(n, *choices, cx.rng, &avail, |i| {
                set.endpoints[i]
                    .stats
                    .outstanding
                    .load(std::sync::atomic::Ordering::Relaxed) as f64
            }),
            Picker::P2cPeakEwma { choices, .. } => {
                let now = cx.now;
                best_of(n, *choices, cx.rng, &avail, |i| {
                    set.endpoints[i]
                        .stats
                        .peak_cost(now, tuning.tau_ns, tuning.default_ns)
                })
            }
            Picker::LeastPeakEwma { .. } => {
                let now = cx.now;
                least(n, cx.rng, &avail, |i| {
                    set.endpoints[i]
                        .stats
                        .peak_cost(now, tuning.tau_ns, tuning.default_ns)
                })
            }
            Picker::ConsistentHash { .. } => match cx.hash {
                Some(key) => {
                    let ring = &set.ring;
                    if ring.is_empty() {
                        return None;
                    }
                    let point = mix(key);
                    let at = ring.partition_point(|&(h, _)| h < point);
                    // The owner, or the next distinct endpoint clockwise.
                    for step in 0..ring.len() {
                        let i = ring[(at + step) % ring.len()].1 as usize;
                        if avail(i) {
                            return Some(i);
                        }
                    }
                    None
                }
                None => sample(n, cx.rng, &avail),
            },
            // In panic mode health (ejections, failed health checks) is ignored, and zones are
            // left aside with it, as Envoy routes by zone only outside panic mode: calls spread
            // over every endpoint the filter still lets through (an open breaker still keeps its
            // endpoint out).
            Picker::ZoneAware { .. } if cx.panic => {
                best_of(n, 2, cx.rng, &avail, |i| outstanding(set, i))
            }
            Picker::ZoneAware {
                min_healthy_share, ..
            } => {
                let mut healthy = [0u32; MAX_ZONES];
                let mut total = [0u32; MAX_ZONES];
                for (i, ep) in set.endpoints.iter().enumerate() {
                    let z = (ep.zone as usize).min(MAX_ZONES - 1);
                    total[z] += 1;
                    if usable(i) {
                        healthy[z] += 1;
                    }
                }
                let ok = |z: usize| {
                    total[z] > 0
                        && healthy[z] > 0
                        && healthy[z] as f64 >= *min_healthy_share * total[z] as f64
                };
                let local = set.local_zone as usize;
                let zone_of = |i: usize| (set.endpoints[i].zone as usize).min(MAX_ZONES - 1);
                if local < MAX_ZONES && ok(local) {
                    let in_local = |i: usize| zone_of(i) == local && avail(i);
                    if let Some(i) = best_of(n, 2, cx.rng, &in_local, |i| outstanding(set, i)) {
                        return Some(i);
                    }
                    // Every local endpoint was tried and is busy: the calls it cannot take go
                    // to the healthy zones as when it is unhealthy, spread by power of two
                    // choices.
                }
                let in_good = |i: usize| zone_of(i) != local && ok(zone_of(i)) && avail(i);
                best_of(n, 2, cx.rng, &in_good, |i| outstanding(set, i))
                    .or_else(|| best_of(n, 2, cx.rng, &avail, |i| outstanding(set, i)))
            }
        }
    }
}

fn outstanding<K, S>(set: &Snapshot<K, S>, i: usize) -> f64 {
    set.endpoints[i]
        .stats
        .outstanding
        .load(std::sync::atomic::Ordering::Relaxed) as f64
}

/// The first index from `start` on (wrapping) that is available.
#[inline]
fn scan(n: usize, start: usize, avail: &dyn Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|step| (start + step) % n).find(|&i| avail(i))
}

/// A uniformly random available index, `None` only when none is: a few random draws, then one
/// pass over every index that draws among the available ones (reservoir sampling), so an
/// available endpoint that follows unavailable ones in the set is not favoured.
#[inline]
fn sample(n: usize, rng: &mut SmallRng, avail: &dyn Fn(usize) -> bool) -> Option<usize> {
    for _ in 0..4 {
        let i = rng.random_range(0..n);
        if avail(i) {
            return Some(i);
        }
    }
    weighted(n, rng, avail, |_| 1)
}

/// The available index of least `cost`. Ties go to one of the tied indices drawn uniformly
/// (reservoir sampling: the `k`-th tie replaces the choice with probability `1/k`): taking the
/// first would favour an endpoint that follows busy ones, and, for PeakEWMA after a quiet spell
/// (every idle endpoint's stale estimate costs 0), send every client's next call to one endpoint.
#[inline]
fn least<T: PartialOrd>(
    n: usize,
    rng: &mut SmallRng,
    avail: &dyn Fn(usize) -> bool,
    cost: impl Fn(usize) -> T,
) -> Option<usize> {
    let mut best: Option<(usize, T)> = None;
    let mut ties = 0u32;
    for i in 0..n {
        if !avail(i) {
            continue;
        }
        let c = cost(i);
        match &best {
            Some((_, b)) if c > *b => {}
            Some((_, b)) if c == *b => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((i, c));
                }
            }
            _ => {
                best = Some((i, c));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

/// A random available index, drawn in proportion to `weight` in one pass (weighted reservoir
/// sampling: the `k`-th available index replaces the choice so far with probability
/// `weight / the weights seen so far`).
#[inline]
fn weighted(
    n: usize,
    rng: &mut SmallRng,
    avail: &dyn Fn(usize) -> bool,
    weight: impl Fn(usize) -> u32,
) -> Option<usize> {
    let mut total = 0u64;
    let mut chosen = None;
    for i in 0..n {
        if !avail(i) {
            continue;
        }
        let w = u64::from(weight(i).max(1));
        total += w;
        if rng.random_range(0..total) < w {
            chosen = Some(i);
        }
    }
    chosen
}

/// The most choices a pick may draw ([`Picker::P2cOutstanding`] and [`Picker::P2cPeakEwma`]
/// accept at most 64).
const MAX_CHOICES: usize = 64;

/// The lowest-cost of `choices` distinct random available indices (fewer when fewer are
/// available).
#[inline]
fn best_of(
    n: usize,
    choices: usize,
    rng: &mut SmallRng,
    avail: &dyn Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let first = sample(n, rng, avail)?;
    let choices = choices.clamp(1, MAX_CHOICES).min(n);
    if choices == 1 {
        return Some(first);
    }
    let mut best = (first, cost(first));
    if choices == 2 {
        // The usual power of two choices, without the list of drawn indices to fill.
        if let Some(i) = sample_other(n, rng, avail, &[first]) {
            if cost(i) < best.1 {
                best.0 = i;
            }
        }
        return Some(best.0);
    }
    let mut drawn = [first; MAX_CHOICES];
    for k in 1..choices {
        let Some(i) = sample_other(n, rng, avail, &drawn[..k]) else {
            break;
        };
        drawn[k] = i;
        let c = cost(i);
        if c < best.1 {
            best = (i, c);
        }
    }
    Some(best.0)
}

/// A uniformly random available index not in `drawn`, `None` only when there is none: a few
/// random draws, then one pass that draws among the rest (reservoir sampling), so a pick among
/// few available endpoints (most filtered out, a small local zone) still compares several.
#[inline]
fn sample_other(
    n: usize,
    rng: &mut SmallRng,
    avail: &dyn Fn(usize) -> bool,
    drawn: &[usize],
) -> Option<usize> {
    for _ in 0..4 {
        let i = rng.random_range(0..n);
        if !drawn.contains(&i) && avail(i) {
            return Some(i);
        }
    }
    weighted(n, rng, &|i| !drawn.contains(&i) && avail(i), |_| 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::{stable_hash, Endpoint, Stats};
    use rand::SeedableRng;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    fn snapshot(loads: &[u32], zones: &[u16], picker: &Picker) -> Snapshot<usize, ()> {
        let endpoints = loads
            .iter()
            .enumerate()
            .map(|(i, &load)| {
                let stats = Stats::default();
                stats.outstanding.store(load, Relaxed);
                Arc::new(Endpoint {
                    key: i,
                    service: (),
                    weight: 1,
                    zone: zones.get(i).copied().unwrap_or(u16::MAX - 1),
                    key_hash: stable_hash(&i),
                    stats: Arc::new(stats),
                })
            })
            .collect();
        Snapshot::build(endpoints, picker, 0)
    }

    /// How often each endpoint of `set` is picked over `picks` picks, with `avail` saying which
    /// endpoints may take calls.
    fn counts(
        picker: &Picker,
        set: &Snapshot<usize, ()>,
        avail: &dyn Fn(usize, &usize) -> bool,
        picks: usize,
    ) -> Vec<usize> {
        let mut rng = SmallRng::seed_from_u64(7);
        let rr = AtomicUsize::new(0);
        let tuning = Tuning::new(picker);
        let mut counts = vec![0; set.len()];
        for _ in 0..picks {
            let mut cx = PickCx {
                rng: &mut rng,
                hash: None,
                now: 0,
                round_robin: &rr,
                available: avail,
                panic: false,
                skip: &Skip::default(),
            };
            if let Some(i) = picker.pick(set, &tuning, &mut cx) {
                counts[i] += 1;
            }
        }
        counts
    }

    /// Places in place and on the heap are kept apart and added once.
    #[test]
    fn skip_holds_places_far_apart() {
        let mut skip = Skip::default();
        for i in [0, 63, 64, 255, 256, 1000] {
            assert!(!skip.contains(i), "{i}");
            assert!(skip.insert(i), "{i}");
            assert!(!skip.insert(i), "{i}");
        }
        let held: Vec<usize> = (0..2000).filter(|&i| skip.contains(i)).collect();
        assert_eq!(held, [0, 63, 64, 255, 256, 1000]);
    }

    /// Two idle endpoints among busy ones: whichever places they hold in the set, each takes
    /// half of the picks.
    #[test]
    fn least_outstanding_breaks_ties_evenly() {
        let picker = Picker::LeastOutstanding;
        let set = snapshot(&[0, 5, 5, 5, 0], &[], &picker);
        let picked = counts(&picker, &set, &|_, _| true, 10_000);
        // Binomial(10 000, 0.5): sd 50; 6 sd bounds.
        assert!((4700..=5300).contains(&picked[0]), "{picked:?}");
        assert_eq!(picked[0] + picked[4], 10_000, "{picked:?}");
    }

    /// Idle endpoints whose estimates have gone stale all cost nothing: each takes an even share
    /// of the picks, not the first of them all.
    #[test]
    fn least_peak_ewma_breaks_ties_evenly() {
        let picker = Picker::least_peak_ewma();
        let set = snapshot(&[0, 0, 0, 0], &[], &picker);
        let picked = counts(&picker, &set, &|_, _| true, 10_000);
        // Binomial(10 000, 0.25): sd 43; 6 sd bounds.
        for count in &picked {
            assert!((2240..=2760).contains(count), "{picked:?}");
        }
    }

    /// Power of two choices with three of twenty endpoints available (a filter or health keeps
    /// the rest out): both choices are drawn among the three, so the busy one never wins.
    #[test]
    fn p2c_draws_two_choices_when_few_endpoints_are_available() {
        let picker = Picker::p2c();
        let mut loads = [0; 20];
        loads[0] = 9;
        let set = snapshot(&loads, &[], &picker);
        let picked = counts(&picker, &set, &|i, _| i < 3, 10_000);
        assert_eq!(picked[0], 0, "{picked:?}");
        assert_eq!(picked[1] + picked[2], 10_000, "{picked:?}");
    }

    /// Zone-aware picking within a local zone of three endpoints out of thirty is still power of
    /// two choices: the busy local endpoint never wins.
    #[test]
    fn zone_aware_draws_two_choices_in_a_small_local_zone() {
        let picker = Picker::zone_aware("a");
        let mut loads = [0; 30];
        loads[0] = 9;
        let mut zones = [1; 30];
        zones[..3].fill(0);
        let set = snapshot(&loads, &zones, &picker);
        let picked = counts(&picker, &set, &|_, _| true, 10_000);
        assert_eq!(picked[0], 0, "{picked:?}");
        assert_eq!(picked[1] + picked[2], 10_000, "{picked:?}");
    }

    /// Three choices of four endpoints are three distinct endpoints: the idle one is among them,
    /// and wins, three times in four.
    #[test]
    fn p2c_choices_are_distinct() {
        let picker = Picker::P2cOutstanding { choices: 3 };
        let set = snapshot(&[9, 0, 5, 5], &[], &picker);
        let picked = counts(&picker, &set, &|_, _| true, 10_000);
        // Binomial(10 000, 0.75): sd 43; 6 sd bounds.
        assert!((7240..=7760).contains(&picked[1]), "{picked:?}");
        assert_eq!(picked[0], 0, "{picked:?}");
    }
}
