//! One endpoint of a balancer: its service, its metadata and its lock-free statistics.

use std::{
    fmt,
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    sync::atomic::{
        AtomicBool, AtomicU32, AtomicU64,
        Ordering::{Acquire, Relaxed, Release},
    },
    sync::Arc,
};

/// What a balancer needs to know about an endpoint key beyond its identity.
///
/// Weighted round robin reads [`weight`](EndpointMeta::weight) and zone-aware picking reads
/// [`zone`](EndpointMeta::zone). Implemented for the usual key types (every endpoint weighs 1 and
/// has no zone); wrap a key in [`Tagged`] to give it a weight and a zone, as `seawall-discover`
/// does for DNS SRV records.
pub trait EndpointMeta {
    /// The endpoint's static weight, at least 1 (0 is read as 1). Default 1.
    fn weight(&self) -> u32 {
        1
    }

    /// The zone (availability zone, rack, region) the endpoint runs in. Default none.
    fn zone(&self) -> Option<&str> {
        None
    }
}

macro_rules! plain_meta {
    ($($t:ty),*) => { $(impl EndpointMeta for $t {})* };
}
plain_meta!(
    SocketAddr,
    IpAddr,
    String,
    &'static str,
    u8,
    u16,
    u32,
    u64,
    usize,
    i32,
    i64
);

/// An endpoint key with a weight and a zone.
///
/// The endpoint's identity is `key` alone: two `Tagged` with the same `key` are equal, hash alike
/// and order as equal whatever their weights and zones. A new weight or zone (an SRV record
/// whose weight changed) is so the same endpoint with new metadata, not another endpoint:
/// discovery sends it as an insert of a key already in the set, which the balancer applies in
/// place (the endpoint keeps its statistics and health), and state kept per key elsewhere (a
/// `BreakerSet`'s breakers, the consistent hash ring's points) stays with the endpoint. Compare
/// the fields to tell weights and zones apart.
#[derive(Debug, Clone)]
pub struct Tagged<K> {
    /// The endpoint's identity (an address, a name).
    pub key: K,
    /// The endpoint's weight (see [`EndpointMeta::weight`]).
    pub weight: u32,
    /// The endpoint's zone.
    pub zone: Option<Arc<str>>,
}

impl<K> Tagged<K> {
    /// `key` with weight 1 and no zone.
    pub fn new(key: K) -> Self {
        Tagged {
            key,
            weight: 1,
            zone: None,
        }
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    pub fn with_zone(mut self, zone: impl Into<Arc<str>>) -> Self {
        self.zone = Some(zone.into());
        self
    }
}

impl<K: PartialEq> PartialEq for Tagged<K> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<K: Eq> Eq for Tagged<K> {}

impl<K: Hash> Hash for Tagged<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<K: PartialOrd> PartialOrd for Tagged<K> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        self.key.partial_cmp(&other.key)
    }
}

impl<K: Ord> Ord for Tagged<K> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key.cmp(&other.key)
    }
}

impl<K> EndpointMeta for Tagged<K> {
    fn weight(&self) -> u32 {
        self.weight
    }

    fn zone(&self) -> Option<&str> {
        self.zone.as_deref()
    }
}

impl<K: fmt::Display> fmt::Display for Tagged<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.key, f)
    }
}

/// Bounds every endpoint key meets.
pub trait Key: Hash + Eq + Clone + fmt::Debug + EndpointMeta + Send + Sync + 'static {}
impl<K> Key for K where K: Hash + Eq + Clone + fmt::Debug + EndpointMeta + Send + Sync + 'static {}

pub(crate) const NONE: u64 = u64::MAX;

/// An endpoint in a balancer's set. Shared by snapshots: statistics survive set changes.
pub(crate) struct Endpoint<K, S> {
    pub(crate) key: K,
    pub(crate) service: S,
    pub(crate) weight: u32,
    pub(crate) zone: u16,
    pub(crate) key_hash: u64,
    /// Shared with the endpoint this one replaced, when discovery inserted a key already in the
    /// set (a new weight, zone or service for the same endpoint): its load, latency and health
    /// carry over, and calls still in flight on the old version count on the new one.
    pub(crate) stats: Arc<Stats>,
}

/// Lock-free per-endpoint statistics. Times are nanoseconds since the balancer's epoch.
#[derive(Debug)]
pub(crate) struct Stats {
    pub(crate) outstanding: AtomicU32,
    /// PeakEWMA of latency in nanoseconds and when it was made, one [`Estimate`] word; [`NONE`]
    /// before the first sample.
    pub(crate) peak: AtomicU64,
    /// Plain EWMA of successful calls' latency in nanoseconds and when it was made, one
    /// [`Estimate`] word, for latency ejection; [`NONE`] before the first sample.
    pub(crate) latency: AtomicU64,
    /// Successful timed calls since the endpoint was added or returned from an ejection, up to
    /// the last outlier detection pass, which adds in
    /// [`interval_samples`](Stats::interval_samples).
    pub(crate) latency_samples: AtomicU32,
    /// Successful timed calls since the last outlier detection pass, which resets it. A u64:
    /// `interval` has no upper bound, and 100,000 calls a second pass `u32::MAX` in 12 hours.
    pub(crate) interval_samples: AtomicU64,
    /// Their summed latency in units of [`INTERVAL_UNIT_NS`] (each call's rounded to the
    /// nearest), shifted left by [`INTERVAL_TAG_BITS`], and in the bits below it how many calls
    /// the sum holds (modulo 2^8), so that the pass can tell which calls it counted have not
    /// added their latency yet (see [`take_interval_latency`](Stats::take_interval_latency)).
    /// Reset with [`interval_samples`](Stats::interval_samples). The 56 bits of 256 ns units
    /// hold 2^64 ns, over 580 years, of summed latency per interval.
    pub(crate) interval_latency: AtomicU64,
    /// Since when the latency has been an outlier; [`NONE`] when it is not.
    pub(crate) slow_since: AtomicU64,
    pub(crate) successes: AtomicU32,
    pub(crate) failures: AtomicU32,
    pub(crate) consecutive_failures: AtomicU32,
    /// Ejected by outlier detection (success rate, failure percentage, consecutive, latency).
    pub(crate) ejected: AtomicBool,
    pub(crate) ejected_at: AtomicU64,
    pub(crate) multiplier: AtomicU32,
    /// The active health check's verdict.
    pub(crate) probe_ok: AtomicBool,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            outstanding: AtomicU32::new(0),
            peak: AtomicU64::new(NONE),
            latency: AtomicU64::new(NONE),
            latency_samples: AtomicU32::new(0),
            interval_samples: AtomicU64::new(0),
            interval_latency: AtomicU64::new(0),
            slow_since: AtomicU64::new(NONE),
            successes: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected: AtomicBool::new(false),
            ejected_at: AtomicU64::new(0),
            multiplier: AtomicU32::new(0),
            probe_ok: AtomicBool::new(true),
        }
    }
}

impl Stats {
    /// Whether health checks let this endpoint take traffic.
    #[inline]
    pub(crate) fn healthy(&self) -> bool {
        !self.ejected.load(Relaxed) && self.probe_ok.load(Relaxed)
    }

    /// Finagle's PeakEWMA cost: the decayed peak latency times (outstanding + 1).
    ///
    /// An endpoint never measured, or whose estimate no call has refreshed for a whole decay
    /// period, is stale. A stale endpoint with no call in flight costs nothing, so the next pick
    /// that draws it sends it one trial call, whose answer replaces the estimate. While calls are
    /// in flight it costs what it was last measured at (decayed as ever), at least `default_ns`;
    /// `default_ns` if it was never measured. Without the trial, an endpoint whose estimate is
    /// high (a failure penalty, a slow spell) draws no calls, so nothing measures it again and it
    /// stays out for many decay periods after it has recovered; and under light load a new
    /// endpoint would lose every pick to peers measured faster than `default_ns`. Without the
    /// old estimate during the trial, an endpoint still slow would look like `default_ns` and,
    /// while its trial call is out, draw every call its busier peers cost more than that for.
    ///
    /// A trial call dropped in flight uses the trial up (see
    /// [`record_dropped`](Stats::record_dropped)): the endpoint then costs its estimate while
    /// idle, and at least `default_ns` per call while calls are in flight, until it answers.
    #[inline]
    pub(crate) fn peak_cost(&self, now: u64, tau_ns: f64, default_ns: f64) -> f64 {
        let outstanding = self.outstanding.load(Relaxed) as f64;
        let Some(estimate) = Estimate::read(self.peak.load(Relaxed)) else {
            return if outstanding == 0.0 {
                0.0
            } else {
                default_ns * (outstanding + 1.0)
            };
        };
        let (dt, _) = estimate.age(tick(now));
        let stale = dt >= tau_ns;
        if stale && outstanding == 0.0 {
            return 0.0;
        }
        let ewma = estimate.value * (-dt / tau_ns).exp();
        if (stale || estimate.unanswered) && outstanding > 0.0 {
            return ewma.max(default_ns) * (outstanding + 1.0);
        }
        ewma * (outstanding + 1.0)
    }

    /// Records a latency sample in the PeakEWMA: a sample above the current value (the decayed
    /// estimate the picker sees) replaces it, a lower one is averaged in with weight decaying over
    /// `tau`, and one arriving after a whole `tau` without samples replaces a stale estimate.
    /// `read` is the time in nanoseconds the caller read when the call ended, and `clock` reads
    /// it again: see [`now`].
    #[inline]
    pub(crate) fn record_peak(&self, read: u64, clock: impl Fn() -> u64, rtt_ns: f64, tau_ns: f64) {
        update(&self.peak, |bits| {
            next_peak(bits, now(bits, read, &clock, tau_ns), rtt_ns, tau_ns)
        });
    }

    /// Records a call dropped in flight after `elapsed_ns`. It is no answer (a hedge that lost
    /// may be dropped at once), only a bound: the endpoint takes at least that long.
    ///
    /// On an endpoint measured within the decay period it can only raise the estimate, to
    /// `elapsed_ns` when that is above the decayed estimate; a shorter one changes nothing, not
    /// even the estimate's time, so an estimate still goes stale a decay period after its last
    /// sample however many calls are dropped meanwhile.
    ///
    /// On an endpoint never measured or stale, the call was its trial, and dropping it uses the
    /// trial up: the estimate becomes `elapsed_ns`, as of now and marked unanswered (a stale
    /// estimate is not kept: a hedge that lost at once does not renew an old penalty). Until a
    /// decay period passes or the endpoint answers, it then costs that estimate while idle
    /// rather than nothing, so an endpoint that never answers callers who give up before
    /// `default_rtt` loses its picks to peers faster than the callers' patience, and it costs at
    /// least `default_ns` per call in flight, as during the trial, so a call dropped at once does
    /// not make it look fast under load. Its next answer replaces the estimate, as a trial's
    /// answer does: a new endpoint whose first call was a hedge that lost is measured by its
    /// next answer, as its peers were. `read` and `clock` are as for
    /// [`record_peak`](Stats::record_peak).
    #[inline]
    pub(crate) fn record_dropped(
        &self,
        read: u64,
        clock: impl Fn() -> u64,
        elapsed_ns: f64,
        tau_ns: f64,
    ) {
        let _ = self.peak.fetch_update(Relaxed, Relaxed, |bits| {
            let now = now(bits, read, &clock, tau_ns);
            let Some(estimate) = Estimate::read(bits) else {
                return Some(Estimate::unanswered(elapsed_ns, now));
            };
            let (dt, at) = estimate.age(now);
            let current = estimate.value * (-dt / tau_ns).exp();
            if dt >= tau_ns {
                // A stale estimate is no longer believed (the endpoint cost nothing while idle):
                // the drop's bound replaces it, so a call dropped at once leaves the endpoint
                // free to be tried again rather than renewing an old penalty.
                return Some(Estimate::unanswered(elapsed_ns, at));
            }
            (elapsed_ns > current).then(|| estimate.raised_to(elapsed_ns, at))
        });
    }

    /// Records a successful call's latency in the plain EWMA used by latency ejection and in
    /// the interval's count and sum; `read` and `clock` are as for
    /// [`record_peak`](Stats::record_peak).
    pub(crate) fn record_latency(
        &self,
        read: u64,
        clock: impl Fn() -> u64,
        rtt_ns: f64,
        tau_ns: f64,
    ) {
        update(&self.latency, |bits| {
            next_latency(bits, now(bits, read, &clock, tau_ns), rtt_ns, tau_ns)
        });
        self.count_interval_call();
        self.add_interval_latency(rtt_ns);
    }

    /// A call's first step in the interval: it counts itself.
    #[inline]
    fn count_interval_call(&self) {
        self.interval_samples.fetch_add(1, Relaxed);
    }

    /// A call's second step: it adds its latency to the sum and one to the tag. Release: a pass
    /// that takes the sum with it sees the call's count too.
    #[inline]
    fn add_interval_latency(&self, rtt_ns: f64) {
        self.interval_latency
            .fetch_add((interval_units(rtt_ns) << INTERVAL_TAG_BITS) | 1, Release);
    }

    /// The mean latency in nanoseconds of the successful calls since the last outlier detection
    /// pass, `None` if there were none; resets the interval and adds its calls to
    /// [`latency_samples`](Stats::latency_samples). Called by the pass alone.
    ///
    /// A call counts itself, then adds its latency; the pass takes the sum, then the count. A
    /// call whose latency is in the sum taken has its count in the count taken (the sum's
    /// acquire sees it), but a call between its two steps may be counted with its latency still
    /// to come: it would leave this interval a count without its latency (a mean too low, read as
    /// "not slow") and the next a latency without its count (a mean too high). The tag tells
    /// how many such calls there are, as long as fewer than 2^8 are between their steps at
    /// once: the count taken less the calls in the sum, modulo 2^8. Their counts are put back,
    /// so each such call lands whole in the next interval. The tag's carries into the sum (one
    /// 256 ns unit each 2^8 calls, as it counts from 0 at each take) are taken off again.
    pub(crate) fn take_interval_latency(&self) -> Option<f64> {
        let tagged = self.interval_latency.swap(0, Acquire);
        let counted = self.interval_samples.swap(0, Relaxed);
        let pending = counted.wrapping_sub(tagged) & INTERVAL_TAG_MASK;
        if pending > 0 {
            self.interval_samples.fetch_add(pending, Relaxed);
        }
        let samples = counted - pending;
        let units = (tagged >> INTERVAL_TAG_BITS).saturating_sub(samples >> INTERVAL_TAG_BITS);
        let total = self
            .latency_samples
            .load(Relaxed)
            .saturating_add(u32::try_from(samples).unwrap_or(u32::MAX));
        self.latency_samples.store(total, Relaxed);
        (samples > 0).then(|| units as f64 * INTERVAL_UNIT_NS / samples as f64)
    }

    /// The latency EWMA in nanoseconds, if any call has completed.
    pub(crate) fn latency_ns(&self) -> Option<f64> {
        Estimate::read(self.latency.load(Relaxed)).map(|e| e.value)
    }
}

/// The low bits of [`Stats::interval_latency`] that count the calls its sum holds.
const INTERVAL_TAG_BITS: u32 = 8;

const INTERVAL_TAG_MASK: u64 = (1 << INTERVAL_TAG_BITS) - 1;

/// The unit [`Stats::interval_latency`] sums latencies in, in nanoseconds: 2^8, so that its 56
/// bits of sum hold as many nanoseconds as a u64.
const INTERVAL_UNIT_NS: f64 = (1u64 << INTERVAL_TAG_BITS) as f64;

/// `rtt_ns` in units of [`INTERVAL_UNIT_NS`], rounded to the nearest (saturating, as `as` does).
#[inline]
fn interval_units(rtt_ns: f64) -> u64 {
    (rtt_ns / INTERVAL_UNIT_NS).round() as u64
}

/// The tick an update of the estimate `bits` is made at: that of `read`, the time its caller
/// read, unless the estimate looks a decay period old or more at `read`, when the clock is read
/// again. An estimate written after `read` by an update that read the clock later, while this
/// thread was held up for longer than [`AHEAD`] allows, would look about 78 hours old (its tick
/// ahead of `read`'s wraps); read again, the clock shows it as new. The clock is read only then,
/// so an update of an estimate in use costs no second reading.
#[inline]
fn now(bits: u64, read: u64, clock: &impl Fn() -> u64, tau_ns: f64) -> u32 {
    let now = tick(read);
    match Estimate::read(bits) {
        Some(estimate) if estimate.age(now).0 >= tau_ns => tick(clock()),
        _ => now,
    }
}

/// How many bits of a time in nanoseconds an [`Estimate`] drops: it keeps time in ticks of
/// 2^16 ns (about 66 µs), so 32 bits of ticks wrap after 2^48 ns (about 78 hours).
const TICK_SHIFT: u32 = 16;

/// One tick in nanoseconds.
const TICK_NS: f64 = (1u64 << TICK_SHIFT) as f64;

/// How far ahead of a reading of the clock an estimate may have been made: by an update that
/// read the clock later and wrote first, or before a pick that read it once and then polled
/// endpoints. Such a race takes microseconds; 2^14 ticks (about 1 s) leave room for a thread
/// descheduled in between (a container's CPU quota throttles it for up to its period, often
/// 100 ms). Ticks further ahead are ticks that wrapped: a long time. So an estimate left alone
/// for a multiple of the wrap (78 hours) is taken for a new one only in the second before each
/// multiple.
const AHEAD: u32 = 1 << 14;

/// The tick a time in nanoseconds falls in, wrapping.
#[inline]
fn tick(now_ns: u64) -> u32 {
    (now_ns >> TICK_SHIFT) as u32
}

/// A latency estimate and the tick it was made at, packed in one word (the value's `f32` bits
/// high, the tick low) so that both change in one compare and swap and a reader sees them as
/// they were made together. The value is never negative: its sign bit marks an estimate made by
/// calls dropped in flight alone, since the endpoint last answered or went stale.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    value: f64,
    at: u32,
    /// Made by dropped calls alone (see [`Stats::record_dropped`]): a bound, which the
    /// endpoint's next answer replaces.
    unanswered: bool,
}

/// The sign bit of an estimate's `f32`, which marks it [unanswered](Estimate::unanswered).
const UNANSWERED: u32 = 1 << 31;

impl Estimate {
    /// The estimate in `bits`, `None` for [`NONE`] (no `f32` value has all bits set).
    #[inline]
    fn read(bits: u64) -> Option<Self> {
        let value = (bits >> 32) as u32;
        (bits != NONE).then(|| Estimate {
            value: f64::from(f32::from_bits(value & !UNANSWERED)),
            at: bits as u32,
            unanswered: value & UNANSWERED != 0,
        })
    }

    /// The word for an estimate of `value` made at tick `at`.
    #[inline]
    fn write(value: f64, at: u32) -> u64 {
        (u64::from((value as f32).to_bits()) << 32) | u64::from(at)
    }

    /// The word for an [unanswered](Estimate::unanswered) estimate of `value` made at tick `at`.
    #[inline]
    fn unanswered(value: f64, at: u32) -> u64 {
        Estimate::write(value, at) | (u64::from(UNANSWERED) << 32)
    }

    /// The word for this estimate raised to `value` at tick `at`, still unanswered if it was.
    #[inline]
    fn raised_to(self, value: f64, at: u32) -> u64 {
        if self.unanswered {
            Estimate::unanswered(value, at)
        } else {
            Estimate::write(value, at)
        }
    }

    /// The nanoseconds from when the estimate was made to tick `now`, and the later of the two
    /// ticks. An estimate made after `now` was read (by a racing update) is as of now.
    #[inline]
    fn age(self, now: u32) -> (f64, u32) {
        let ticks = now.wrapping_sub(self.at);
        if ticks > u32::MAX - AHEAD {
            (0.0, self.at)
        } else {
            (f64::from(ticks) * TICK_NS, now)
        }
    }
}

/// Sets `cell` to `next(bits)`, where `bits` is the word it holds, in one compare and swap. An
/// update that raced another (a failure penalty, the sweep's reset) is worked out again from the
/// word the other left, never stored over it; and since an estimate and its time are one word,
/// an update decays the estimate it finds by the time since that estimate was made, whichever
/// update made it.
#[inline]
fn update(cell: &AtomicU64, mut next: impl FnMut(u64) -> u64) {
    let _ = cell.fetch_update(Relaxed, Relaxed, |bits| Some(next(bits)));
}

/// The PeakEWMA word `bits` after a sample of `rtt_ns` at tick `now`.
#[inline]
fn next_peak(bits: u64, now: u32, rtt_ns: f64, tau_ns: f64) -> u64 {
    let Some(estimate) = Estimate::read(bits) else {
        return Estimate::write(rtt_ns, now);
    };
    let (dt, at) = estimate.age(now);
    let w = (-dt / tau_ns).exp();
    let current = estimate.value * w;
    if rtt_ns > current || dt >= tau_ns || estimate.unanswered {
        // A higher sample is the new peak; after a whole decay period without samples the old
        // estimate is stale, and one made by dropped calls alone is no answer: the new sample
        // replaces either.
        Estimate::write(rtt_ns, at)
    } else {
        averaged(bits, current * w + rtt_ns * (1.0 - w), at)
    }
}

/// The latency EWMA word `bits` after a sample of `rtt_ns` at tick `now`.
#[inline]
fn next_latency(bits: u64, now: u32, rtt_ns: f64, tau_ns: f64) -> u64 {
    let Some(estimate) = Estimate::read(bits) else {
        return Estimate::write(rtt_ns, now);
    };
    let (dt, at) = estimate.age(now);
    let w = (-dt / tau_ns).exp();
    let value = estimate.value * w + rtt_ns * (1.0 - w);
    if dt >= tau_ns {
        // Written with the new time whatever it is, so an estimate samples keep equal to it
        // is never older than a decay period (its ticks never wrap).
        return Estimate::write(value, at);
    }
    averaged(bits, value, at)
}

/// The word for an estimate averaged to `value` at tick `at`, or `bits` unchanged when `value`
/// rounds to the estimate `bits` holds. Samples close together (one a tick, over a long decay)
/// each move the estimate by less than half an `f32` step: written with the new tick, each
/// would be rounded away and the estimate would stop short of the samples. Left with its old
/// tick, the estimate ages until a sample's weight is enough to move it.
#[inline]
fn averaged(bits: u64, value: f64, at: u32) -> u64 {
    if (value as f32).to_bits() == (bits >> 32) as u32 {
        bits
    } else {
        Estimate::write(value, at)
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Endpoint<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("key", &self.key)
            .field("weight", &self.weight)
            .field("stats", &self.stats)
            .finish()
    }
}

/// A stable 64-bit hash: FNV-1a, whose output its specification fixes, over the values the
/// key's `Hash` writes, integers as little-endian bytes and `usize`/`isize` as 64-bit ones. So
/// rings agree across processes, Rust releases and platforms for keys whose `Hash` writes the
/// same values (std's `DefaultHasher` may change between releases, and writes integers in the
/// platform's width and byte order).
pub(crate) fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    let mut hasher = Canonical(fnv::FnvHasher::default());
    value.hash(&mut hasher);
    hasher.finish()
}

/// Feeds the hasher it wraps the same bytes for the same values on every platform: integers as
/// little-endian bytes, `usize` and `isize` widened to 64 bits.
struct Canonical<H>(H);

macro_rules! canonical_writes {
    ($($method:ident($ty:ty $(as $wide:ty)?)),* $(,)?) => {
        $(
            #[inline]
            fn $method(&mut self, value: $ty) {
                self.0.write(&(value $(as $wide)?).to_le_bytes());
            }
        )*
    };
}

impl<H: Hasher> Hasher for Canonical<H> {
    #[inline]
    fn finish(&self) -> u64 {
        self.0.finish()
    }

    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        self.0.write(bytes);
    }

    canonical_writes! {
        write_u8(u8),
        write_u16(u16),
        write_u32(u32),
        write_u64(u64),
        write_u128(u128),
        write_usize(usize as u64),
        write_i8(i8),
        write_i16(i16),
        write_i32(i32),
        write_i64(i64),
        write_i128(i128),
        write_isize(isize as i64),
    }
}

/// A bit mixer (splitmix64's finalizer), so user keys that are small integers spread over the ring.
#[inline]
pub(crate) fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn tagged_is_identified_by_its_key_alone() {
        let a = Tagged::new(1u32).with_weight(3);
        let b = Tagged::new(1u32).with_weight(5).with_zone("b");
        assert_eq!(a, b);
        assert_eq!(a.cmp(&b), std::cmp::Ordering::Equal);
        assert_eq!(stable_hash(&a), stable_hash(&b));
        assert_eq!(HashSet::from([a.clone(), b]).len(), 1);
        assert_ne!(a, Tagged::new(2u32).with_weight(3));
        assert!(a < Tagged::new(2u32));
    }

    /// The ring's hash is fixed by FNV-1a's specification over a canonical byte stream: a change
    /// of algorithm, of integer width or of byte order changes these values.
    #[test]
    fn stable_hash_gives_the_same_values_everywhere() {
        assert_eq!(stable_hash(&7usize), stable_hash(&7u64));
        assert_eq!(stable_hash(&-7isize), stable_hash(&-7i64));
        assert_eq!(stable_hash(&7usize), 0x4bd7_a317_074c_5b62);
        assert_eq!(stable_hash(&7u32), 0x6d35_7266_9b2c_de42);
        assert_eq!(stable_hash("10.0.0.1:80"), 0xa46d_681b_5828_bace);
        assert_eq!(
            stable_hash(&Tagged::new(7u64).with_weight(3)),
            stable_hash(&7u64)
        );
    }

    /// Socket addresses: std hashes an IP address as an integer read from its octets in the
    /// platform's byte order, so these hold on little-endian platforms.
    #[cfg(target_endian = "little")]
    #[test]
    fn stable_hash_of_socket_addresses_is_fixed() {
        let v4: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(stable_hash(&v4), 0x2439_a1d2_416a_f73c);
        assert_eq!(stable_hash(&v6), 0x386e_b279_5483_6111);
    }

    const TAU: f64 = 10e9;
    const DEFAULT: f64 = 30e6;
    const SECOND: u64 = 1_000_000_000;

    /// Equal but for the rounding of an estimate to `f32`.
    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-6 * a.abs().max(b.abs())
    }

    /// Equal but for the rounding of an estimate to `f32` and of its times to ticks: an age read
    /// in whole ticks is off by less than a tick, which changes a decay over `tau_ns` by less
    /// than `TICK_NS / tau_ns` of the value.
    fn close_decayed(a: f64, b: f64, tau_ns: f64) -> bool {
        let tolerance = f64::from(f32::EPSILON) + TICK_NS / tau_ns;
        (a - b).abs() <= tolerance * a.abs().max(b.abs())
    }

    /// A failure penalty of 1 s, decayed for 9 s of a 10 s decay, costs 407 ms: a 500 ms sample
    /// is above that and replaces it.
    #[test]
    fn a_sample_above_the_decayed_estimate_replaces_it() {
        let stats = Stats::default();
        stats.record_peak(0, || 0, 1e9, TAU);
        let seen = stats.peak_cost(9 * SECOND, TAU, DEFAULT);
        assert!((seen - 406.6e6).abs() < 0.1e6, "{seen}");
        stats.record_peak(9 * SECOND, || 9 * SECOND, 500e6, TAU);
        assert_eq!(stats.peak_cost(9 * SECOND, TAU, DEFAULT), 500e6);
    }

    /// A sample below the decayed estimate lowers it, never raises it.
    #[test]
    fn a_sample_below_the_decayed_estimate_is_averaged_in() {
        let stats = Stats::default();
        stats.record_peak(0, || 0, 1e9, TAU);
        let seen = stats.peak_cost(9 * SECOND, TAU, DEFAULT);
        stats.record_peak(9 * SECOND, || 9 * SECOND, 300e6, TAU);
        let after = stats.peak_cost(9 * SECOND, TAU, DEFAULT);
        assert!(300e6 < after && after < seen, "{after} of {seen}");
    }

    /// A call dropped in flight is no measurement of the endpoint: a dropped call shorter than
    /// the estimate leaves it, a longer one raises it.
    #[test]
    fn a_dropped_call_only_raises_the_estimate() {
        let stats = Stats::default();
        stats.record_peak(0, || 0, 100e6, TAU);
        let seen = stats.peak_cost(SECOND, TAU, DEFAULT);
        stats.record_dropped(SECOND, || SECOND, 1e3, TAU);
        assert!(close(stats.peak_cost(SECOND, TAU, DEFAULT), seen));
        stats.record_dropped(SECOND, || SECOND, 2e9, TAU);
        assert_eq!(stats.peak_cost(SECOND, TAU, DEFAULT), 2e9);
    }

    /// A failure penalty recorded by another call between this update's read and its write is
    /// not overwritten: the update is worked out again from the penalty.
    #[test]
    fn an_update_racing_a_penalty_keeps_it() {
        let stats = Stats::default();
        stats.record_peak(0, || 0, 10e6, TAU);
        let mut raced = false;
        update(&stats.peak, |bits| {
            if !raced {
                raced = true;
                stats.record_peak(SECOND, || SECOND, 1e9, TAU);
            }
            next_peak(bits, tick(SECOND), 1e6, TAU)
        });
        assert_eq!(stats.peak_cost(SECOND, TAU, DEFAULT), 1e9);
    }

    /// Two updates racing on a stale penalty: the one that writes first finds it as old as it
    /// is and replaces it, and the other is worked out again from the sample the first left
    /// (as of now), not from the penalty nor with the penalty's age.
    #[test]
    fn an_update_racing_another_sees_each_estimate_as_old_as_it_is() {
        let stats = Stats::default();
        stats.record_peak(0, || 0, 1e9, TAU);
        let mut raced = false;
        update(&stats.peak, |bits| {
            if !raced {
                raced = true;
                stats.record_peak(14 * SECOND, || 14 * SECOND, 1e6, TAU);
            }
            next_peak(bits, tick(14 * SECOND), 0.5e6, TAU)
        });
        assert_eq!(stats.peak_cost(14 * SECOND, TAU, DEFAULT), 1e6);
        // Read as a pair: the sample is as of 14 s, and decays from then on.
        let later = stats.peak_cost(19 * SECOND, TAU, DEFAULT);
        assert!(close_decayed(later, 1e6 * (-0.5f64).exp(), TAU), "{later}");
    }

    /// An estimate made by an update that read the clock after this one did is as of now: it is
    /// not decayed, and keeps its time, though the other thread was held up for a while. One
    /// whose tick is ahead by more than such a race takes (up to about a second) is one whose
    /// ticks wrapped since: old, so an estimate left alone for a multiple of the wrap reads as
    /// old but for a second, not for longer.
    #[test]
    fn an_estimate_ahead_of_the_clock_is_as_of_now() {
        let made = Estimate {
            value: 1e6,
            at: tick(10 * SECOND),
            unanswered: false,
        };
        for ahead in [SECOND / 100, SECOND / 10, SECOND / 2] {
            assert_eq!(
                made.age(tick(10 * SECOND - ahead)),
                (0.0, made.at),
                "{ahead}"
            );
        }
        let (dt, at) = made.age(tick(10 * SECOND + SECOND));
        assert!((dt - 1e9).abs() <= TICK_NS, "{dt}");
        assert_eq!(at, tick(11 * SECOND));
        for behind in [2 * SECOND, 5 * SECOND, 3600 * SECOND] {
            let (dt, _) = made.age(tick(10 * SECOND + (1 << 48) - behind));
            assert!(dt > 3600e9, "{behind} ns short of a wrap: {dt}");
        }
    }

    /// An update whose thread read the clock, then was descheduled (a throttled container) while
    /// another call recorded a failure penalty: the penalty is newer than the update's reading,
    /// not 78 hours old, so the update keeps it, and a latency sample keeps the EWMA it finds.
    /// Within [`AHEAD`] the estimate is taken as of the reading; beyond, the clock is read again.
    #[test]
    fn an_update_that_read_the_clock_before_a_pause_keeps_a_newer_estimate() {
        for pause in [20_000_000, 5 * SECOND] {
            let stats = Stats::default();
            stats.record_peak(SECOND, || SECOND, 10e6, TAU);
            stats.record_peak(SECOND + pause, || SECOND + pause, 1e9, TAU);
            stats.record_peak(SECOND, || SECOND + pause, 1e6, TAU);
            let cost = stats.peak_cost(SECOND + pause, TAU, DEFAULT);
            assert!(cost > 0.99e9, "{pause}: {cost}");
            stats.record_latency(SECOND + pause, || SECOND + pause, 900e6, TAU);
            stats.record_latency(SECOND, || SECOND + pause, 1e6, TAU);
            let latency = stats.latency_ns().unwrap();
            assert!(latency > 800e6, "{pause}: {latency}");
        }
    }

    /// Samples of 1 ms at one per tick, from an estimate of 2 ms with a 300 s decay: each moves
    /// the estimate by less than half an `f32` step, yet both estimates converge on 1 ms as
    /// the decay says, rather than stop where one sample's step rounds away.
    #[test]
    fn samples_too_close_together_to_move_an_estimate_still_add_up() {
        const TAU: f64 = 300e9;
        let stats = Stats::default();
        stats.record_peak(0, || 0, 2e6, TAU);
        stats.record_latency(0, || 0, 2e6, TAU);
        // ln(100) decay periods take the estimate to within 1 % of the samples; a few more.
        let ticks = (5.0 * TAU / TICK_NS) as u64;
        for t in 1..=ticks {
            let now = t << TICK_SHIFT;
            stats.record_peak(now, || now, 1e6, TAU);
            stats.record_latency(now, || now, 1e6, TAU);
        }
        let now = ticks << TICK_SHIFT;
        let peak = stats.peak_cost(now, TAU, DEFAULT);
        assert!((peak - 1e6).abs() < 0.01e6, "peak {peak}");
        let latency = stats.latency_ns().unwrap();
        assert!((latency - 1e6).abs() < 0.01e6, "latency {latency}");
    }

    /// The pass reads the mean of the calls since the last pass, starts a new interval, and
    /// counts the calls towards `minimum_samples`; an interval without calls has no mean.
    #[test]
    fn the_interval_mean_is_taken_once() {
        let stats = Stats::default();
        // Whole units of 256 ns, which the interval sums in.
        stats.record_latency(0, || 0, 2.048e6, TAU);
        stats.record_latency(SECOND, || SECOND, 4.096e6, TAU);
        assert_eq!(stats.take_interval_latency(), Some(3.072e6));
        assert_eq!(stats.take_interval_latency(), None);
        stats.record_latency(2 * SECOND, || 2 * SECOND, 1.024e6, TAU);
        assert_eq!(stats.take_interval_latency(), Some(1.024e6));
        // Others are rounded to the nearest unit: off by at most half of one.
        stats.record_latency(3 * SECOND, || 3 * SECOND, 1e6, TAU);
        let mean = stats.take_interval_latency().unwrap();
        assert!((mean - 1e6).abs() <= 128.0, "{mean}");
        assert_eq!(stats.latency_samples.load(Relaxed), 4);
    }

    /// A pass that takes the interval while a call is between counting itself and adding its
    /// latency: the call's count and its latency land in the same take, a later one, so no
    /// interval has a count without its latency (a mean of 0, "not slow") or a latency without
    /// its count (a mean too high, a false slow streak).
    #[test]
    fn a_call_recorded_across_a_pass_lands_whole_in_one_interval() {
        let stats = Stats::default();
        stats.count_interval_call();
        assert_eq!(stats.take_interval_latency(), None);
        stats.add_interval_latency(5.12e6);
        assert_eq!(stats.take_interval_latency(), Some(5.12e6));
        assert_eq!(stats.take_interval_latency(), None);

        stats.record_latency(0, || 0, 5.12e6, TAU);
        stats.count_interval_call();
        assert_eq!(stats.take_interval_latency(), Some(5.12e6));
        stats.add_interval_latency(5.12e6);
        stats.record_latency(0, || 0, 5.12e6, TAU);
        assert_eq!(stats.take_interval_latency(), Some(5.12e6));
        assert_eq!(stats.latency_samples.load(Relaxed), 4);

        // More calls than the tag counts to: its carries do not reach the mean.
        for _ in 0..300 {
            stats.record_latency(0, || 0, 5.12e6, TAU);
        }
        stats.count_interval_call();
        assert_eq!(stats.take_interval_latency(), Some(5.12e6));
        stats.add_interval_latency(5.12e6);
        assert_eq!(stats.take_interval_latency(), Some(5.12e6));
        assert_eq!(stats.latency_samples.load(Relaxed), 305);
    }

    /// An interval long enough for more than `u32::MAX` calls (100,000 a second for 12 hours)
    /// counts them all: its mean is that of its calls, not one over a count that wrapped to 0.
    #[test]
    fn an_interval_of_more_than_u32_max_calls_keeps_its_mean() {
        let stats = Stats::default();
        let calls = u64::from(u32::MAX);
        stats.interval_samples.store(calls, Relaxed);
        let one = (4_000 << INTERVAL_TAG_BITS) | 1;
        stats.interval_latency.store(calls * one, Relaxed);
        stats.record_latency(0, || 0, 1.024e6, TAU);
        assert_eq!(stats.take_interval_latency(), Some(1.024e6));
        assert_eq!(stats.latency_samples.load(Relaxed), u32::MAX);
    }

    /// Summed latency past 2^56 ns (a mean of 2^48 ns over 300 calls; or 100,000 calls a second
    /// for an hour at 200 ms) keeps its mean: the sum counts 256 ns units.
    #[test]
    fn a_sum_of_latencies_past_2_pow_56_ns_keeps_its_mean() {
        let stats = Stats::default();
        let rtt = (1u64 << 48) as f64;
        for _ in 0..300 {
            stats.record_latency(0, || 0, rtt, TAU);
        }
        assert_eq!(stats.take_interval_latency(), Some(rtt));
    }

    /// The sweep resetting a returning endpoint's latency between a call's read and its write:
    /// the call's sample starts the fresh record rather than bring the old one back.
    #[test]
    fn a_latency_sample_racing_the_reset_starts_the_fresh_record() {
        let stats = Stats::default();
        stats.record_latency(0, || 0, 900e6, TAU);
        let mut raced = false;
        update(&stats.latency, |bits| {
            if !raced {
                raced = true;
                stats.latency.store(NONE, Relaxed);
            }
            next_latency(bits, tick(SECOND), 1e6, TAU)
        });
        assert_eq!(stats.latency_ns(), Some(1e6));
    }

    /// An endpoint never measured, or measured too long ago, costs `default_rtt` while a call is
    /// in flight: a trial call dropped after a microsecond leaves it there while calls are in
    /// flight, rather than making it the cheapest endpoint of all.
    #[test]
    fn a_call_dropped_at_once_does_not_make_an_endpoint_look_fast() {
        let never = Stats::default();
        never.record_dropped(SECOND, || SECOND, 1e3, TAU);
        never.outstanding.store(1, Relaxed);
        assert_eq!(never.peak_cost(SECOND, TAU, DEFAULT), 2.0 * DEFAULT);
        never.outstanding.store(3, Relaxed);
        assert_eq!(never.peak_cost(SECOND, TAU, DEFAULT), 4.0 * DEFAULT);
        let stale = Stats::default();
        stale.record_peak(0, || 0, 1e6, TAU);
        stale.record_dropped(20 * SECOND, || 20 * SECOND, 1e3, TAU);
        stale.outstanding.store(1, Relaxed);
        assert_eq!(stale.peak_cost(20 * SECOND, TAU, DEFAULT), 2.0 * DEFAULT);
    }

    /// A trial call dropped before `default_rtt` (a caller's 20 ms timeout) uses the trial up:
    /// the endpoint costs the time the call took while idle, not nothing, until a decay period
    /// later, when it is stale again and gets its next trial.
    #[test]
    fn a_dropped_trial_call_uses_the_trial_up() {
        let never = Stats::default();
        never.record_dropped(SECOND, || SECOND, 20e6, TAU);
        assert!(close(never.peak_cost(SECOND, TAU, DEFAULT), 20e6));
        let later = never.peak_cost(9 * SECOND, TAU, DEFAULT);
        assert!(close_decayed(later, 20e6 * (-0.8f64).exp(), TAU), "{later}");
        assert_eq!(never.peak_cost(12 * SECOND, TAU, DEFAULT), 0.0);

        let stale = Stats::default();
        stale.record_peak(0, || 0, 5e6, TAU);
        stale.record_dropped(20 * SECOND, || 20 * SECOND, 20e6, TAU);
        assert!(close(stale.peak_cost(20 * SECOND, TAU, DEFAULT), 20e6));
        assert_eq!(stale.peak_cost(31 * SECOND, TAU, DEFAULT), 0.0);
    }

    /// A stale failure penalty whose trial call is dropped keeps the endpoint at the penalty
    /// decayed to the drop, for another decay period: nothing says it has recovered.
    #[test]
    fn a_dropped_trial_call_replaces_a_stale_penalty_with_its_bound() {
        let stale = 11 * SECOND;
        let stats = Stats::default();
        stats.record_peak(0, || 0, 1e9, TAU);
        assert_eq!(stats.peak_cost(stale, TAU, DEFAULT), 0.0, "stale and idle");
        stats.record_dropped(stale, || stale, 20e6, TAU);
        let cost = stats.peak_cost(stale, TAU, DEFAULT);
        assert!(close(cost, 20e6), "{cost}");
        // A hedge that lost at once does not renew the old penalty for another decay period:
        // the endpoint costs next to nothing idle, and is tried again.
        let stats = Stats::default();
        stats.record_peak(0, || 0, 1e9, TAU);
        stats.record_dropped(stale, || stale, 1e3, TAU);
        let cost = stats.peak_cost(stale, TAU, DEFAULT);
        assert!(close(cost, 1e3), "{cost}");
    }

    /// An estimate made by dropped calls alone is no answer: the endpoint's next answer replaces
    /// it, lower or not, as a trial's answer replaces a stale estimate; calls dropped meanwhile
    /// only raise it.
    #[test]
    fn an_answer_replaces_an_estimate_made_by_dropped_calls() {
        let stats = Stats::default();
        stats.record_dropped(SECOND, || SECOND, 20e6, TAU);
        stats.record_dropped(SECOND, || SECOND, 5e6, TAU);
        assert!(close(stats.peak_cost(SECOND, TAU, DEFAULT), 20e6));
        stats.record_dropped(SECOND, || SECOND, 25e6, TAU);
        assert!(close(stats.peak_cost(SECOND, TAU, DEFAULT), 25e6));
        stats.record_peak(SECOND, || SECOND, 1e6, TAU);
        assert_eq!(stats.peak_cost(SECOND, TAU, DEFAULT), 1e6);
        // Measured now: a lower answer is averaged in, and a call in flight costs the estimate.
        stats.record_peak(SECOND, || SECOND, 0.5e6, TAU);
        assert!(close(stats.peak_cost(SECOND, TAU, DEFAULT), 1e6));
        stats.outstanding.store(1, Relaxed);
        assert!(close(stats.peak_cost(SECOND, TAU, DEFAULT), 2e6));
    }

    /// A new endpoint whose first call is a hedge that lost at once, then answers in 1 ms, is
    /// measured at 1 ms, as its peers are, not at `default_rtt`.
    #[test]
    fn a_call_dropped_at_once_leaves_a_new_endpoint_to_be_measured() {
        let stats = Stats::default();
        stats.record_dropped(SECOND, || SECOND, 1e3, TAU);
        stats.record_peak(SECOND + 1_000_000, || SECOND + 1_000_000, 1e6, TAU);
        assert_eq!(stats.peak_cost(SECOND + 1_000_000, TAU, DEFAULT), 1e6);
    }

    /// A call dropped in flight for longer than `default_rtt` bounds an endpoint never measured:
    /// it costs at least that long.
    #[test]
    fn a_call_dropped_late_measures_a_new_endpoint() {
        let stats = Stats::default();
        stats.record_dropped(SECOND, || SECOND, 2e9, TAU);
        assert_eq!(stats.peak_cost(SECOND, TAU, DEFAULT), 2e9);
    }

    /// Calls dropped at once do not refresh an estimate: it goes stale a decay period after the
    /// last sample, and the endpoint gets its trial call.
    #[test]
    fn calls_dropped_at_once_do_not_keep_an_estimate_from_going_stale() {
        let stats = Stats::default();
        stats.record_peak(0, || 0, 100e6, TAU);
        for s in 1..10 {
            stats.record_dropped(s * SECOND, || s * SECOND, 1e3, TAU);
        }
        assert_eq!(stats.peak_cost(11 * SECOND, TAU, DEFAULT), 0.0);
    }
}
