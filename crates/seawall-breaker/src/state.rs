//! The circuit breaker state machine, free of tower and tokio types.
//!
//! [`Machine`] decides whether a call may go ahead ([`Machine::acquire`]) and takes its outcome
//! afterwards ([`Machine::complete`]). Time enters as nanoseconds on a monotonic clock with any
//! origin (a tokio `Instant`'s distance from some start, Unix-epoch nanoseconds, a test's
//! counter), read through a closure only when a decision needs it, so the Closed path of a count
//! window without a slow-call rule reads no clock at all. The machine counts time from its first
//! reading of the clock (or from the origin it was built with, see [`Machine::with_origin`]); the
//! times it reports ([`Machine::deadline`], [`Rejected::retry_at`]) are on the caller's clock. It
//! can guard code that is not a tower service as well.
//!
//! # Layout
//!
//! - `state`: one word, `generation << 4 | mode`. Every state change is a compare-and-swap that bumps
//!   the generation, so of two threads that both see a reason to change state only one does.
//! - `until`: when the current Open period ends, or when the current HalfOpen gives up on its
//!   probes, in milliseconds from the machine's origin, tagged with the low 24 bits of the
//!   generation it belongs to. Written right after the state change; until it is, the state's
//!   deadline reads as not yet reached.
//!   HalfOpen's bound guards against probes that hang, so it runs only while a probe does: the
//!   change writes `NO_BOUND`, a probe admitted while none is in flight writes the bound, and a
//!   probe that ends (answered short of the verdict, ignored or cancelled) leaving none in
//!   flight writes `NO_BOUND` again (see `Machine::stop_bound`), so the next probe starts a
//!   fresh bound.
//!   Every change writes its tag (with no deadline in other states), as it does `probes`' tag, so
//!   a tag never falls far enough behind to wrap around and read as a newer generation's.
//! - `probes`: HalfOpen's trial calls in one word — generation tag, slots taken, results, failures
//!   and slow results — updated by compare-and-swap, so the cap on probes admitted is exact and
//!   exactly one thread sees the last result and takes the verdict.
//! - `trips`: the trips since the breaker last closed, which the Open wait grows with, tagged
//!   with the generation whose change wrote them (every change does, keeping the count but for
//!   changes to Closed, which write 0, and to Open, which add one). A change writes only over an
//!   older tag, so a trip of a Closed generation whose change has not written its 0 yet is not
//!   undone by that late write; an Open entered from Closed counts one trip, whatever it reads.
//! - the sliding [`window`](crate::window) and a consecutive-failure counter, both atomics. A
//!   change to Closed empties them before it is published, tagging the counter and a count window's
//!   slots with the generation it enters (see [Generations](#generations)), under `closing`: a
//!   flag, holding the state word the change is from, held from a check that the state is still
//!   that word until its compare-and-swap, so a change that loses the race cannot empty the window
//!   of a Closed generation that won it. Only changes to Closed take the flag: an operator's
//!   (`reset`, `metrics_only`), which waits while another change holds it, and a HalfOpen's verdict
//!   of Closed, which the completion of its last probe takes, on whatever thread completes the
//!   call. A verdict does not wait for a holder changing from the same state (an operator emptying
//!   a large window, say): that holder's compare-and-swap, or a change that beats it, is sure to
//!   leave the state, so the verdict would lose; it gives way, and the new generation drops its
//!   probes' results. It waits only for a holder changing from another state, which is about to
//!   find that it lost (a stale verdict would not publish anything, so giving way to it could leave
//!   the HalfOpen without a verdict).
//!
//! # Generations
//!
//! A [`Permit`] remembers the generation it was issued in. Its result is dropped when the
//! generation has moved on: a slow call admitted while Closed cannot trip a breaker that has since
//! opened, probed and closed again, and a probe that outlived its HalfOpen cannot decide the next
//! one. That holds too for a Closed call that passes its check of the generation just before a
//! change to Closed (a reset, a verdict, a switch to MetricsOnly) is published, and records its
//! result while that change empties the window: the change tags the run of consecutive failures,
//! and each slot of a count window, with the generation it enters, and a result is recorded only
//! over its own generation's tag. (A slot keeps the low 5 bits of the generation: a recorder that
//! stalled between its check and its write while 32 generations passed could write into a later
//! one.) A time window's buckets have no room for a tag: there such a result may be counted in the
//! fresh window, though not in its run of failures. A result that passes its check just before a
//! change to another state (a trip, a manual Disabled or ForcedOpen) is counted in the window and
//! run the breaker keeps, for [`Machine::snapshot`], until it next closes. None of these changes
//! state by itself: every change is a compare-and-swap from the generation the recorder saw.
//!
//! The design follows Resilience4j's `CircuitBreakerStateMachine` (count and time windows, slow
//! calls, manual states) and Finagle's `FailureAccrualFactory` (jittered, growing, capped waits).

use crate::{
    config::BreakerConfig,
    sync::{self, AtomicU64, Ordering, Padded},
    window::{Counts, Window},
};
use rand::{rngs::SmallRng, Rng, SeedableRng};
use seawall_core::Outcome;
use std::{cell::Cell, fmt, num::NonZeroU64, time::Duration};

/// The state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls flow; outcomes are recorded in the sliding window.
    Closed,
    /// Calls are rejected without reaching the inner service until the wait is over.
    Open,
    /// A bounded number of trial calls go through; their results decide Closed or Open.
    HalfOpen,
    /// Manual: every call goes through and nothing is recorded.
    Disabled,
    /// Manual: every call is rejected.
    ForcedOpen,
    /// Manual: every call goes through; outcomes are recorded and the changes the breaker would
    /// make are reported (as [`Transition`]s with `metrics_only` set), never acted on.
    MetricsOnly,
}

impl State {
    /// The value of the state gauge: 0 Closed, 1 Open, 2 HalfOpen, 3 Disabled, 4 ForcedOpen,
    /// 5 MetricsOnly. Breakers that share a name show the most severe of their states on the
    /// gauge (ForcedOpen, Open, HalfOpen, MetricsOnly, Disabled, then Closed), a dropped breaker's
    /// state is taken off, and the gauge is 0 when none is left; see `docs/circuit-breaker.md` in
    /// the repository. A `BreakerSet`'s breakers leave this gauge alone: they are counted in
    /// `seawall_breaker_keys_open` instead.
    pub fn as_gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
            State::Disabled => 3.0,
            State::ForcedOpen => 4.0,
            State::MetricsOnly => 5.0,
        }
    }

    /// Lowercase name, as used in logs: `"closed"`, `"half_open"`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Disabled => "disabled",
            State::ForcedOpen => "forced_open",
            State::MetricsOnly => "metrics_only",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A state change, as given to listeners: from and to which state, in which generation, for how
/// long and, on a change to Open or ForcedOpen, [why](OpenReason).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Transition {
    /// The state before.
    pub from: State,
    /// The state after.
    pub to: State,
    /// Whether this is a change a breaker in [`State::MetricsOnly`] would have made: `from` and
    /// `to` are then the states of its automatic machine (Closed, Open or HalfOpen).
    pub metrics_only: bool,
    /// The generation the breaker entered. A reset of a Closed breaker starts a generation with
    /// no transition, so the generations listeners see may skip. Every change enters a higher
    /// generation than the changes before it, so this orders the transitions of one breaker that
    /// reach a listener out of order (see
    /// [`BreakerConfigBuilder::on_transition`](crate::BreakerConfigBuilder::on_transition)).
    pub generation: u64,
    /// When `to` is Open: how long it stays open (after backoff and jitter). When `to` is
    /// HalfOpen: how long it waits for the probes in flight, counted from the first one admitted
    /// while none was out (and again from the next one, once none is in flight).
    pub wait: Option<Duration>,
    /// Why the breaker opened: `Some` exactly when `to` is Open (with `metrics_only` too, for the
    /// trip the breaker would have made) or ForcedOpen, `None` otherwise.
    pub reason: Option<OpenReason>,
}

/// Why a breaker opened, as given in [`Transition::reason`].
///
/// The rates are those the breaker compared with its thresholds when it tripped, so a rate is at
/// least its threshold, less at most 1e-12 (thresholds are compared in whole parts per million,
/// see [`failure_rate_threshold`](crate::BreakerConfigBuilder::failure_rate_threshold)). When several
/// rules hold at once the first of the variants below that holds is given: the failure rate, then
/// the slow-call rate, then the run of failures; in HalfOpen, the probes' failures, then their
/// slow calls.
///
/// Only the breaker makes these: the variants with fields are `#[non_exhaustive]`, so match them
/// with `..`. Two reasons are equal when their variants and fields are, rates compared bit for bit.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum OpenReason {
    /// Closed: the failure rate of the sliding window reached
    /// [`failure_rate_threshold`](crate::BreakerConfigBuilder::failure_rate_threshold), with at
    /// least `minimum_calls` calls in the window.
    #[non_exhaustive]
    FailureRate {
        /// Failed calls over calls in the window, when the breaker tripped.
        rate: f64,
        /// The threshold it reached.
        threshold: f64,
    },
    /// Closed: the slow-call rate of the sliding window reached
    /// [`slow_call_rate_threshold`](crate::BreakerConfigBuilder::slow_call_rate_threshold), with
    /// at least `minimum_calls` calls in the window.
    #[non_exhaustive]
    SlowCallRate {
        /// Slow calls over calls in the window, when the breaker tripped.
        rate: f64,
        /// The threshold it reached.
        threshold: f64,
    },
    /// Closed: a run of failures in a row reached
    /// [`consecutive_failures`](crate::BreakerConfigBuilder::consecutive_failures).
    #[non_exhaustive]
    ConsecutiveFailures {
        /// The failures in the run.
        failures: u32,
    },
    /// HalfOpen: the probes' results are in and too many failed: their failure rate reached
    /// `failure_rate_threshold` or, with no failure-rate rule, one failed under the
    /// consecutive-failures rule.
    #[non_exhaustive]
    ProbesFailed {
        /// Probes that failed.
        failures: u32,
        /// Probe results the verdict was taken on.
        probes: u32,
    },
    /// HalfOpen: the probes' results are in and their slow-call rate reached
    /// `slow_call_rate_threshold`.
    #[non_exhaustive]
    ProbesSlow {
        /// Probes that were slow.
        slow_calls: u32,
        /// Probe results the verdict was taken on.
        probes: u32,
    },
    /// HalfOpen: probes in flight did not answer within
    /// [`max_wait_in_half_open`](crate::BreakerConfigBuilder::max_wait_in_half_open).
    ProbesTimedOut,
    /// Manual: forced open ([`BreakerHandle::force_open`](crate::BreakerHandle::force_open)).
    Forced,
}

// By `key`, so rates compare bit for bit and equality is an equivalence even for a NaN.
impl PartialEq for OpenReason {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for OpenReason {}

impl OpenReason {
    /// Lowercase name, as used in logs: `"failure_rate"`, `"slow_call_rate"`,
    /// `"consecutive_failures"`, `"probes_failed"`, `"probes_slow"`, `"probes_timed_out"`,
    /// `"forced"`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenReason::FailureRate { .. } => "failure_rate",
            OpenReason::SlowCallRate { .. } => "slow_call_rate",
            OpenReason::ConsecutiveFailures { .. } => "consecutive_failures",
            OpenReason::ProbesFailed { .. } => "probes_failed",
            OpenReason::ProbesSlow { .. } => "probes_slow",
            OpenReason::ProbesTimedOut => "probes_timed_out",
            OpenReason::Forced => "forced",
        }
    }

    /// The measured rate and the threshold it reached, for a trip on the failure or slow-call
    /// rate of the sliding window.
    pub fn rate(self) -> Option<(f64, f64)> {
        match self {
            OpenReason::FailureRate { rate, threshold }
            | OpenReason::SlowCallRate { rate, threshold } => Some((rate, threshold)),
            _ => None,
        }
    }

    /// The variant's name and its fields as bits, for [`PartialEq`].
    fn key(self) -> (&'static str, u64, u64) {
        let (a, b) = match self {
            OpenReason::FailureRate { rate, threshold }
            | OpenReason::SlowCallRate { rate, threshold } => (rate.to_bits(), threshold.to_bits()),
            OpenReason::ConsecutiveFailures { failures } => (failures.into(), 0),
            OpenReason::ProbesFailed { failures, probes } => (failures.into(), probes.into()),
            OpenReason::ProbesSlow { slow_calls, probes } => (slow_calls.into(), probes.into()),
            OpenReason::ProbesTimedOut | OpenReason::Forced => (0, 0),
        };
        (self.as_str(), a, b)
    }
}

impl fmt::Display for OpenReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            OpenReason::FailureRate { rate, threshold } => {
                write!(f, "failure rate {rate} reached {threshold}")
            }
            OpenReason::SlowCallRate { rate, threshold } => {
                write!(f, "slow-call rate {rate} reached {threshold}")
            }
            OpenReason::ConsecutiveFailures { failures } => {
                write!(f, "{failures} failures in a row")
            }
            OpenReason::ProbesFailed { failures, probes } => {
                write!(f, "{failures} of {probes} probes failed")
            }
            OpenReason::ProbesSlow { slow_calls, probes } => {
                write!(f, "{slow_calls} of {probes} probes were slow")
            }
            OpenReason::ProbesTimedOut => f.write_str("probes timed out"),
            OpenReason::Forced => f.write_str("forced open"),
        }
    }
}

/// What the machine tells its owner about, besides return values.
///
/// The tower layer uses it for tracing, metrics, listeners and waking waiting callers; tests use
/// it to count transitions. `()` ignores everything.
pub trait Observer {
    /// The machine changed state (or, in MetricsOnly, would have). Called on the thread that
    /// made the change, after the change: another thread can make the next change and report it
    /// first, so changes may be reported out of order; [`Transition::generation`] orders them.
    fn on_transition(&self, transition: &Transition) {
        let _ = transition;
    }

    /// A HalfOpen probe slot was handed back (an ignored or cancelled probe): a waiting caller may
    /// now be admitted.
    fn on_probe_released(&self) {}

    /// A HalfOpen's bound started (with a probe admitted while none was in flight):
    /// [`Machine::deadline`] may now have a value to wait for (read it: the bound may be stopped
    /// again already, when that probe ended at once).
    fn on_bound_started(&self) {}
}

impl Observer for () {}

/// Leave to make one call, from [`Machine::acquire`]. Hand it back with [`Machine::complete`]
/// (a permit that is dropped instead counts as an ignored call, except that a probe slot it held
/// is not handed back: the tower layer wraps it in a guard that does).
#[derive(PartialEq, Eq)]
#[must_use = "a permit must be completed with Machine::complete"]
pub struct Permit {
    /// `generation << 4 | shadowed << 2 | kind`, `kind` never 0: one word, so a permit moves in a
    /// register and `Option<Permit>` needs no more room.
    word: NonZeroU64,
}

/// What a [`Permit`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermitKind {
    /// A call in Closed: its outcome goes into the sliding window.
    Counted,
    /// A trial call in HalfOpen: its outcome goes into the verdict, and it holds one probe slot.
    Probe,
    /// A call that is not recorded: Disabled, or one that MetricsOnly would have rejected.
    Free,
}

const PERMIT_COUNTED: u64 = 1;
const PERMIT_PROBE: u64 = 2;
const PERMIT_FREE: u64 = 3;
const PERMIT_KIND_MASK: u64 = 3;
// MetricsOnly let through a call it would have rejected.
const PERMIT_SHADOWED: u64 = 4;
const PERMIT_GENERATION_SHIFT: u32 = 4;

impl Permit {
    #[inline]
    fn new(generation: u64, kind: PermitKind, shadowed: bool) -> Self {
        let kind = match kind {
            PermitKind::Counted => PERMIT_COUNTED,
            PermitKind::Probe => PERMIT_PROBE,
            PermitKind::Free => PERMIT_FREE,
        };
        Permit::from_word(
            (generation << PERMIT_GENERATION_SHIFT) | (shadowed as u64 * PERMIT_SHADOWED) | kind,
        )
    }

    #[inline]
    fn from_word(word: u64) -> Self {
        Permit {
            word: NonZeroU64::new(word).expect("a permit's kind is never 0"),
        }
    }

    /// What this permit stands for.
    #[inline]
    pub fn kind(&self) -> PermitKind {
        match self.word.get() & PERMIT_KIND_MASK {
            PERMIT_COUNTED => PermitKind::Counted,
            PERMIT_PROBE => PermitKind::Probe,
            _ => PermitKind::Free,
        }
    }

    /// The generation the permit was issued in.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.word.get() >> PERMIT_GENERATION_SHIFT
    }

    /// Whether MetricsOnly let this call through in place of a rejection.
    #[inline]
    pub(crate) fn shadowed(&self) -> bool {
        self.word.get() & PERMIT_SHADOWED != 0
    }

    /// Whether this is a Closed call's permit of `generation`, neither a probe nor shadowed.
    #[inline]
    pub(crate) fn is_counted_in(&self, generation: u64) -> bool {
        self.word.get() == (generation << PERMIT_GENERATION_SHIFT) | PERMIT_COUNTED
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("generation", &self.generation())
            .field("kind", &self.kind())
            .field("shadowed", &self.shadowed())
            .finish()
    }
}

/// The breaker did not admit a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    retry_at: Option<u64>,
}

impl Rejected {
    /// When (nanoseconds, on the clock the machine is given) the breaker may admit calls again
    /// without a manual change: the end of the Open wait, or HalfOpen's bound on its probes.
    /// `None` when it is not known yet, or when the breaker is forced open.
    pub fn retry_at(&self) -> Option<u64> {
        self.retry_at
    }
}

/// A point-in-time view of a breaker.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Snapshot {
    /// The current state.
    pub state: State,
    /// The state of the automatic machine: in MetricsOnly, the state the breaker would be in;
    /// otherwise the same as `state`.
    pub machine_state: State,
    /// Counted calls in the sliding window.
    pub calls: u32,
    /// Failed calls in the sliding window.
    pub failures: u32,
    /// Slow calls in the sliding window.
    pub slow_calls: u32,
    /// `failures / calls`, 0 when the window is empty.
    pub failure_rate: f64,
    /// `slow_calls / calls`, 0 when the window is empty.
    pub slow_call_rate: f64,
    /// Failures in a row (when the consecutive-failures rule is on).
    pub consecutive_failures: u32,
    /// Calls rejected since the breaker was built.
    pub rejected: u64,
    /// Calls MetricsOnly would have rejected since the breaker was built.
    pub would_have_rejected: u64,
    /// Probe slots taken in the current HalfOpen, by probes in flight or answered (0 in other
    /// states); `probe_results` of them have answered.
    pub probes_in_use: u32,
    /// Probe results in the current HalfOpen (0 in other states).
    pub probe_results: u32,
    /// Trips since the breaker last closed (the wait grows with them).
    pub trips: u32,
    /// How long the breaker has been in its current state.
    pub time_in_state: Duration,
    /// The current generation.
    pub generation: u64,
}

// ===== state word =====

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const DISABLED: u64 = 3;
const FORCED_OPEN: u64 = 4;
/// Set with CLOSED, OPEN or HALF_OPEN: the automatic machine runs in MetricsOnly.
const SHADOW: u64 = 8;
const MODE_BITS: u32 = 4;
const MODE_MASK: u64 = (1 << MODE_BITS) - 1;
/// `closing` when no change to Closed holds it: no state word (its mode would be 15).
const NOT_CLOSING: u64 = u64::MAX;

#[inline]
fn pack_state(generation: u64, mode: u64) -> u64 {
    (generation << MODE_BITS) | mode
}

#[inline]
fn mode_of(word: u64) -> u64 {
    word & MODE_MASK
}

#[inline]
fn generation_of(word: u64) -> u64 {
    word >> MODE_BITS
}

fn public_state(mode: u64) -> State {
    match mode {
        CLOSED => State::Closed,
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        DISABLED => State::Disabled,
        FORCED_OPEN => State::ForcedOpen,
        _ => State::MetricsOnly,
    }
}

// ===== tagged words =====

const TAG_BITS: u32 = 24;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;
const UNTIL_BITS: u32 = 40;
const UNTIL_MASK: u64 = (1 << UNTIL_BITS) - 1;
const NANOS_PER_MILLI: u64 = 1_000_000;
/// The origin of a machine that has not read its clock yet.
const NO_ORIGIN: u64 = u64::MAX;
/// The deadline of a HalfOpen with no probe in flight: the end of the range, which reads as no
/// bound at all (see [`Machine::half_open_bound`]).
const NO_BOUND: u64 = UNTIL_MASK;

/// A deadline `wait` after `from` (nanoseconds), as stored: whole milliseconds, rounded up, cut
/// to the end of the range.
fn until_ms(from: u64, wait: u64) -> u64 {
    from.saturating_add(wait)
        .div_ceil(NANOS_PER_MILLI)
        .min(UNTIL_MASK)
}

#[inline]
fn tag_of(generation: u64) -> u64 {
    generation & TAG_MASK
}

/// Whether `tag` belongs to a generation before `generation` (24-bit wrapping comparison).
#[inline]
fn tag_is_older(tag: u64, generation: u64) -> bool {
    let d = tag_of(generation).wrapping_sub(tag) & TAG_MASK;
    d != 0 && d < (1 << (TAG_BITS - 1))
}

// probes word: tag (24) | taken (10) | results (10) | failures (10) | slow (10)
const PROBE_TAG_SHIFT: u32 = 40;
const TAKEN_SHIFT: u32 = 30;
const RESULTS_SHIFT: u32 = 20;
const PROBE_FAILURES_SHIFT: u32 = 10;
const PROBE_FIELD: u64 = 0x3FF;

// trips word: tag (24) | count (32)
const TRIPS_TAG_SHIFT: u32 = 32;

// consecutive-failure run: generation (low 32 bits) | failures (32)
const RUN_MASK: u64 = u32::MAX as u64;

/// A run of no failures of Closed `generation`.
#[inline]
fn run_tag(generation: u64) -> u64 {
    generation << 32
}

#[inline]
fn probe_field(word: u64, shift: u32) -> u64 {
    (word >> shift) & PROBE_FIELD
}

/// Reads the clock at most once.
struct Now<F> {
    clock: F,
    cached: Cell<Option<u64>>,
}

impl<F: Fn() -> u64> Now<F> {
    fn new(clock: F) -> Self {
        Now {
            clock,
            cached: Cell::new(None),
        }
    }

    #[inline]
    fn get(&self) -> u64 {
        match self.cached.get() {
            Some(now) => now,
            None => {
                let now = (self.clock)();
                self.cached.set(Some(now));
                now
            }
        }
    }
}

/// The rules, in the units the machine computes with.
#[derive(Debug)]
struct Rules {
    minimum_calls: u32,
    /// Thresholds in parts per million, so rates compare exactly in integers.
    failure_ppm: Option<u64>,
    slow_ppm: Option<u64>,
    slow_nanos: u64,
    consecutive: Option<u32>,
    wait_nanos: u64,
    max_wait_nanos: u64,
    multiplier: f64,
    jitter: f64,
    probes: u64,
    half_open_nanos: u64,
    seed: u64,
    /// The thresholds as configured, for [`OpenReason`] (the machine compares `failure_ppm` and
    /// `slow_ppm`).
    failure_rate: Option<f64>,
    slow_rate: Option<f64>,
}

/// A rate threshold in whole parts per million: the threshold in ppm less an allowance of a
/// millionth of a ppm, rounded up (and at least 1). The allowance keeps a threshold that is a
/// whole number of ppm in decimal (`0.07`) at that number despite its binary rounding, so the
/// breaker never trips more than 1e-12 below the configured rate: a threshold at most that far
/// above a whole number of ppm is rounded down to it (`0.5 + 1e-13` is 500,000 ppm).
fn ppm(rate: f64) -> u64 {
    ((rate * 1_000_000.0 - 1e-6).ceil() as u64).max(1)
}

/// Whether `n` of `calls` reach a threshold of `ppm` parts per million (never without one).
#[inline]
fn rate_reached(n: u32, calls: u32, ppm: Option<u64>) -> bool {
    ppm.is_some_and(|ppm| n as u64 * 1_000_000 >= ppm * calls as u64)
}

fn nanos(d: Duration) -> u64 {
    d.as_nanos().min(u64::MAX as u128) as u64
}

/// The breaker's state machine. See the [module docs](self).
pub struct Machine {
    /// Read by every call; written only on state changes.
    state: Padded<AtomicU64>,
    until: AtomicU64,
    entered: AtomicU64,
    /// The caller's clock reading the machine counts time from ([`NO_ORIGIN`] until the first).
    origin: AtomicU64,
    probes: Padded<AtomicU64>,
    window: Window,
    /// The run of consecutive failures, tagged (above [`RUN_MASK`]) with the low 32 bits of the
    /// Closed generation it belongs to.
    consecutive: AtomicU64,
    /// The state word a change to Closed is from, while it empties the window and publishes the
    /// change; [`NOT_CLOSING`] otherwise.
    closing: AtomicU64,
    /// Trips since the breaker last closed, tagged (above [`TRIPS_TAG_SHIFT`]) with the low 24
    /// bits of the generation whose change wrote them.
    trips: AtomicU64,
    rejected: Padded<AtomicU64>,
    would_have_rejected: AtomicU64,
    rules: Rules,
}

impl fmt::Debug for Machine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("state", &self.state())
            .field("generation", &self.generation())
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Machine {
    /// A Closed machine following `config`, counting time from its first reading of the clock.
    ///
    /// The clock given to its methods must be monotonic and count nanoseconds; its origin does
    /// not matter. Deadlines are kept in whole milliseconds for about 34.8 years from the first
    /// reading.
    pub fn new(config: &BreakerConfig) -> Self {
        Self::starting(config, NO_ORIGIN)
    }

    /// A Closed machine following `config`, counting time from `origin`, a reading of the clock
    /// its methods are given (readings before it count as `origin`). Otherwise the same as
    /// [`new`](Self::new), which takes its first reading of the clock as the origin.
    pub fn with_origin(config: &BreakerConfig, origin: u64) -> Self {
        Self::starting(config, origin.min(NO_ORIGIN - 1))
    }

    fn starting(config: &BreakerConfig, origin: u64) -> Self {
        let rules = Rules {
            minimum_calls: config.minimum_calls,
            failure_ppm: config.failure_rate.map(ppm),
            slow_ppm: config.slow_rate.map(ppm),
            slow_nanos: nanos(config.slow_call_duration),
            consecutive: config.consecutive_failures,
            wait_nanos: nanos(config.wait),
            max_wait_nanos: nanos(config.max_wait),
            multiplier: config.multiplier,
            jitter: config.jitter,
            probes: config.permitted_probes as u64,
            half_open_nanos: nanos(config.max_wait_in_half_open),
            seed: config.seed(),
            failure_rate: config.failure_rate,
            slow_rate: config.slow_rate,
        };
        Machine {
            state: Padded(AtomicU64::new(pack_state(0, CLOSED))),
            until: AtomicU64::new(0),
            entered: AtomicU64::new(0),
            origin: AtomicU64::new(origin),
            probes: Padded(AtomicU64::new(0)),
            window: config.build_window(),
            consecutive: AtomicU64::new(run_tag(0)),
            closing: AtomicU64::new(NOT_CLOSING),
            trips: AtomicU64::new(0),
            rejected: Padded(AtomicU64::new(0)),
            would_have_rejected: AtomicU64::new(0),
            rules,
        }
    }

    /// Whether the Closed path needs a clock: the time of a call's completion (a time window)
    /// or the call's duration (a slow-call rule; the window alone does not look at durations).
    /// When it does not, [`complete`](Self::complete) of a Closed call reads no clock and the
    /// elapsed time it is given is not looked at.
    pub fn needs_clock(&self) -> bool {
        self.window.needs_clock() || self.rules.slow_ppm.is_some()
    }

    /// The current state (without applying a deadline that has passed; see [`tick`](Self::tick)).
    pub fn state(&self) -> State {
        public_state(mode_of(self.state.load(Ordering::Acquire)))
    }

    /// The current generation.
    #[inline]
    pub fn generation(&self) -> u64 {
        generation_of(self.state.load(Ordering::Acquire))
    }

    /// `now` on the caller's clock, in nanoseconds from the machine's origin (set here by the
    /// first reading).
    #[inline]
    fn since_origin(&self, now: u64) -> u64 {
        match self.origin.load(Ordering::Relaxed) {
            NO_ORIGIN => self.set_origin(now),
            origin => now.saturating_sub(origin),
        }
    }

    #[cold]
    #[inline(never)]
    fn set_origin(&self, now: u64) -> u64 {
        let origin = now.min(NO_ORIGIN - 1);
        match self
            .origin
            .compare_exchange(NO_ORIGIN, origin, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => now - origin,
            // Another thread's reading came first.
            Err(origin) => now.saturating_sub(origin),
        }
    }

    /// A time `since` nanoseconds after the machine's origin, on the caller's clock.
    #[inline]
    fn on_clock(&self, since: u64) -> u64 {
        match self.origin.load(Ordering::Relaxed) {
            NO_ORIGIN => since,
            origin => origin.saturating_add(since),
        }
    }

    /// Asks to make one call at `now`. Moves Open → HalfOpen when the wait is over and HalfOpen →
    /// Open when its probes have outlived their bound. A rejection is counted in
    /// [`rejected`](Self::rejected).
    #[inline]
    pub fn acquire<O: Observer + ?Sized>(
        &self,
        now: impl Fn() -> u64,
        observer: &O,
    ) -> Result<Permit, Rejected> {
        self.admit(now, observer, true)
    }

    /// As [`acquire`](Self::acquire), but a rejection (or a call MetricsOnly lets through in
    /// place of one) is not counted: the tower layer asks in `poll_ready`, where a rejection may
    /// still turn into a wait (backpressure) or an admission (the breaker recovers before the
    /// call), and counts it once a caller gets it or the call is made.
    #[inline]
    pub(crate) fn acquire_uncounted<O: Observer + ?Sized>(
        &self,
        now: impl Fn() -> u64,
        observer: &O,
    ) -> Result<Permit, Rejected> {
        self.admit(now, observer, false)
    }

    /// Counts one rejection handed to a caller.
    #[inline]
    pub(crate) fn count_rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one call MetricsOnly let through in place of a rejection.
    #[inline]
    pub(crate) fn count_would_have_rejected(&self) {
        self.would_have_rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// A permit for a call in Closed, if the breaker is Closed (not MetricsOnly): the admission
    /// [`acquire`](Self::acquire) would give, without a clock or an observer.
    #[inline]
    pub(crate) fn closed_permit(&self) -> Option<Permit> {
        let word = self.state.load(Ordering::Acquire);
        (mode_of(word) == CLOSED)
            .then(|| Permit::new(generation_of(word), PermitKind::Counted, false))
    }

    #[inline]
    fn admit<O: Observer + ?Sized>(
        &self,
        now: impl Fn() -> u64,
        observer: &O,
        count: bool,
    ) -> Result<Permit, Rejected> {
        match self.closed_permit() {
            Some(permit) => Ok(permit),
            None => self.admit_unusual(now, observer, count),
        }
    }

    /// [`admit`](Self::admit) in every state but Closed.
    #[inline(never)]
    fn admit_unusual<O: Observer + ?Sized>(
        &self,
        now: impl Fn() -> u64,
        observer: &O,
        count: bool,
    ) -> Result<Permit, Rejected> {
        let now = Now::new(|| self.since_origin(now()));
        loop {
            let word = self.state.load(Ordering::Acquire);
            let generation = generation_of(word);
            let mode = mode_of(word);
            let permit = |kind| Permit::new(generation, kind, false);
            match mode & !SHADOW {
                CLOSED => return Ok(permit(PermitKind::Counted)),
                DISABLED => return Ok(permit(PermitKind::Free)),
                FORCED_OPEN => {
                    if count {
                        self.count_rejected();
                    }
                    return Err(Rejected { retry_at: None });
                }
                OPEN => {
                    let until = self.until_of(generation);
                    match until {
                        Some(until) if now.get() >= until => {
                            let to = HALF_OPEN | (mode & SHADOW);
                            self.transition(word, to, now.get(), observer, None);
                        }
                        // No deadline of this Open: either the change into it has not written
                        // it yet, or a newer generation has written its own, and then the
                        // breaker has left this Open (for a HalfOpen with a slot free, say):
                        // the state is read again rather than the call turned away.
                        None if self.state.load(Ordering::Acquire) != word => {}
                        _ => return self.reject(mode, generation, until, count),
                    }
                }
                _ => {
                    let deadline = self.half_open_bound(generation);
                    if let Some(deadline) = deadline.filter(|&deadline| now.get() >= deadline) {
                        // Open as of the bound, not of now: a HalfOpen that ran out unattended
                        // has served its Open wait meanwhile, and this call may be its probe.
                        let to = OPEN | (mode & SHADOW);
                        let reason = Some(OpenReason::ProbesTimedOut);
                        self.transition(word, to, deadline, observer, reason);
                        continue;
                    }
                    match self.take_probe(generation) {
                        Some(true) => {
                            // Asked after the slot is taken, whatever `deadline` said: a probe
                            // that ended meanwhile may have stopped the bound read above.
                            if self.start_bound(generation, now.get()).is_some() {
                                observer.on_bound_started();
                            }
                            return Ok(permit(PermitKind::Probe));
                        }
                        Some(false) => return self.reject(mode, generation, deadline, count),
                        None => {}
                    }
                }
            }
        }
    }

    #[inline]
    fn reject(
        &self,
        mode: u64,
        generation: u64,
        retry_at: Option<u64>,
        count: bool,
    ) -> Result<Permit, Rejected> {
        if mode & SHADOW != 0 {
            if count {
                self.count_would_have_rejected();
            }
            Ok(Permit::new(generation, PermitKind::Free, true))
        } else {
            if count {
                self.count_rejected();
            }
            Err(Rejected {
                retry_at: retry_at.map(|at| self.on_clock(at)),
            })
        }
    }

    /// Whether [`acquire`](Self::acquire) at `now` would let a call through, taking nothing and
    /// changing nothing: a slot free in HalfOpen, or an Open wait that is over.
    pub fn permits(&self, now: impl Fn() -> u64) -> bool {
        let now = Now::new(|| self.since_origin(now()));
        loop {
            let word = self.state.load(Ordering::Acquire);
            if self.permits_in(word, || now.get()) {
                return true;
            }
            // A deadline or probe slots already of a newer generation say nothing of `word`'s:
            // when the state has moved since it was read, the answer is for the new state.
            if self.state.load(Ordering::Acquire) == word {
                return false;
            }
        }
    }

    /// [`permits`](Self::permits), for the state word `word`.
    fn permits_in(&self, word: u64, now: impl Fn() -> u64) -> bool {
        let mode = mode_of(word);
        if mode & SHADOW != 0 {
            return true;
        }
        let generation = generation_of(word);
        match mode {
            CLOSED | DISABLED => true,
            FORCED_OPEN => false,
            OPEN => self
                .until_of(generation)
                .is_some_and(|until| now() >= until),
            _ => {
                if let Some(deadline) = self.half_open_bound(generation) {
                    let now = now();
                    if now >= deadline {
                        // The probes outlived their bound: the breaker is open as of then, in
                        // the next generation, and the next call after that Open wait is a
                        // probe. The wait is the one that change will draw.
                        let wait = self.open_wait(self.trips(), generation + 1);
                        let until_ms = until_ms(deadline, wait);
                        return now >= until_ms.saturating_mul(NANOS_PER_MILLI);
                    }
                }
                let probes = self.probes.load(Ordering::Acquire);
                let tag = probes >> PROBE_TAG_SHIFT;
                tag_is_older(tag, generation)
                    || (tag == tag_of(generation)
                        && probe_field(probes, TAKEN_SHIFT) < self.rules.probes)
            }
        }
    }

    /// Takes a probe slot of HalfOpen `generation`: `Some(true)` taken, `Some(false)` all taken,
    /// `None` the machine has left that HalfOpen.
    fn take_probe(&self, generation: u64) -> Option<bool> {
        let mut word = self.probes.load(Ordering::Acquire);
        loop {
            let tag = word >> PROBE_TAG_SHIFT;
            let next = if tag_is_older(tag, generation) {
                // The thread that entered this HalfOpen has not reset the slots yet: help it.
                (tag_of(generation) << PROBE_TAG_SHIFT) | (1 << TAKEN_SHIFT)
            } else if tag != tag_of(generation) {
                return None;
            } else if probe_field(word, TAKEN_SHIFT) >= self.rules.probes {
                return Some(false);
            } else {
                word + (1 << TAKEN_SHIFT)
            };
            match self
                .probes
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(true),
                Err(actual) => word = actual,
            }
        }
    }

    /// Starts the bound of HalfOpen `generation` at `now`, unless it is running already (or a
    /// newer generation wrote its deadline). Returns the word written if this call started it.
    fn start_bound(&self, generation: u64, now: u64) -> Option<u64> {
        let tag = tag_of(generation);
        let bound = until_ms(now, self.rules.half_open_nanos);
        let unset = (tag << UNTIL_BITS) | NO_BOUND;
        let mut word = self.until.load(Ordering::Acquire);
        // The change into this HalfOpen may not have written its tag yet: writing the bound
        // first is fine, the change leaves a deadline of its own generation in place.
        while word == unset || tag_is_older(word >> UNTIL_BITS, generation) {
            let started = (tag << UNTIL_BITS) | bound;
            match self.until.compare_exchange_weak(
                word,
                started,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return (bound != NO_BOUND).then_some(started),
                Err(actual) => word = actual,
            }
        }
        None
    }

    /// Hands back a permit with the call's outcome and how long it took. `now` is read only when
    /// the outcome needs a time (a time window, a slow-call rule, a probe's bound).
    #[inline]
    pub fn complete<O: Observer + ?Sized>(
        &self,
        permit: Permit,
        outcome: Outcome,
        elapsed: Duration,
        now: impl Fn() -> u64,
        observer: &O,
    ) {
        match permit.kind() {
            PermitKind::Free => {}
            PermitKind::Counted => {
                if outcome == Outcome::Ignored {
                    return;
                }
                let word = self.state.load(Ordering::Acquire);
                if generation_of(word) != permit.generation() {
                    return;
                }
                let now = Now::new(|| self.since_origin(now()));
                let failure = outcome == Outcome::Failure;
                let slow = self.is_slow_call(elapsed);
                // Dropped when a change to Closed has since tagged the call's slot of a count
                // window, or the run of failures, with the generation it enters.
                let generation = permit.generation();
                let Some(counts) = self.window.record(failure, slow, generation, || now.get())
                else {
                    return;
                };
                let mut trip = self.rates_trip(counts);
                let mut run = 0;
                if let Some(limit) = self.rules.consecutive {
                    let Some(extended) = self.extend_run(failure, generation) else {
                        return;
                    };
                    run = extended;
                    trip |= failure && run >= limit;
                }
                if trip {
                    self.trip(word, counts, run, now.get(), observer);
                }
            }
            PermitKind::Probe => self.complete_probe(permit, outcome, elapsed, now, observer),
        }
    }

    #[inline(never)]
    fn complete_probe<O: Observer + ?Sized>(
        &self,
        permit: Permit,
        outcome: Outcome,
        elapsed: Duration,
        now: impl Fn() -> u64,
        observer: &O,
    ) {
        let word = self.state.load(Ordering::Acquire);
        if generation_of(word) != permit.generation() {
            return;
        }
        let now = self.since_origin(now());
        if let Some(deadline) = self
            .half_open_bound(permit.generation())
            .filter(|&deadline| now >= deadline)
        {
            // The probes outlived their bound: this result is too late to count, and the
            // breaker has been open since the bound.
            let to = OPEN | (mode_of(word) & SHADOW);
            let reason = Some(OpenReason::ProbesTimedOut);
            self.transition(word, to, deadline, observer, reason);
            return;
        }
        let tag = tag_of(permit.generation());
        let mut probes = self.probes.load(Ordering::Acquire);
        loop {
            if probes >> PROBE_TAG_SHIFT != tag {
                return;
            }
            let next = match outcome {
                Outcome::Ignored => probes - (1 << TAKEN_SHIFT),
                _ => {
                    probes
                        + (1 << RESULTS_SHIFT)
                        + ((outcome == Outcome::Failure) as u64) * (1 << PROBE_FAILURES_SHIFT)
                        + self.is_slow_call(elapsed) as u64
                }
            };
            match self.probes.compare_exchange_weak(
                probes,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    probes = next;
                    break;
                }
                Err(actual) => probes = actual,
            }
        }
        // With no probe left in flight (every slot taken has a result) the bound stops: it
        // gives up on probes that hang, and a HalfOpen waiting for its next call has none.
        let in_flight = probe_field(probes, TAKEN_SHIFT) > probe_field(probes, RESULTS_SHIFT);
        if outcome == Outcome::Ignored {
            if !in_flight {
                self.stop_bound(permit.generation(), now, observer);
            }
            observer.on_probe_released();
            return;
        }
        let results = probe_field(probes, RESULTS_SHIFT);
        if results < self.rules.probes {
            if !in_flight {
                self.stop_bound(permit.generation(), now, observer);
            }
            return;
        }
        let failures = probe_field(probes, PROBE_FAILURES_SHIFT);
        let slow = probes & PROBE_FIELD;
        let failed = match self.rules.failure_ppm {
            Some(ppm) => failures * 1_000_000 >= ppm * results,
            None => self.rules.consecutive.is_some() && failures > 0,
        };
        let reason = if failed {
            Some(OpenReason::ProbesFailed {
                failures: failures as u32,
                probes: results as u32,
            })
        } else if self
            .rules
            .slow_ppm
            .is_some_and(|ppm| slow * 1_000_000 >= ppm * results)
        {
            Some(OpenReason::ProbesSlow {
                slow_calls: slow as u32,
                probes: results as u32,
            })
        } else {
            None
        };
        let to = if reason.is_some() { OPEN } else { CLOSED };
        self.change(
            word,
            to | (mode_of(word) & SHADOW),
            now,
            observer,
            true,
            reason,
        );
    }

    /// Stops the bound of HalfOpen `generation`, whose last probe in flight just ended (handed
    /// back, or answered short of the verdict): with no probe in flight there is nothing to give
    /// up on, and the next probe starts a fresh bound. Called at `now`, after the update.
    ///
    /// A call may take a slot meanwhile. If it takes it after the re-read below (a
    /// read-modify-write, so it is ordered against every take), it reads `NO_BOUND` and starts
    /// the bound itself. If it took it before, it may have seen the old bound still in place and
    /// left it; the re-read sees its slot and starts the bound again, from `now`. That probe may
    /// end before the new bound is written, its own stop finding none to stop, so the slots are
    /// read again after the write, and a bound with no probe in flight is stopped in turn (the
    /// loop goes round only as often as probes come and go meanwhile). Either way a probe in
    /// flight has a bound and none is left running without one, and `until` changes only by
    /// compare-and-swap from a word of this generation, so a newer generation's deadline is left
    /// alone. (Of several stops, the one whose swap lands last makes the re-read that settles
    /// it.) Until the swap the old bound still reads as running: a bound that ends in that
    /// instant reopens the breaker, as it would have with the probe still out.
    #[cold]
    fn stop_bound<O: Observer + ?Sized>(&self, generation: u64, now: u64, observer: &O) {
        let tag = tag_of(generation);
        let unset = (tag << UNTIL_BITS) | NO_BOUND;
        let in_flight = |probes: u64| {
            probes >> PROBE_TAG_SHIFT == tag
                && probe_field(probes, TAKEN_SHIFT) > probe_field(probes, RESULTS_SHIFT)
        };
        let mut word = self.until.load(Ordering::Acquire);
        loop {
            if word >> UNTIL_BITS != tag
                || word == unset
                || self
                    .until
                    .compare_exchange(word, unset, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
            {
                // No bound of this generation to stop (not started, stopped already, or a
                // newer generation's), or another thread changed it first and owns what follows.
                return;
            }
            if !in_flight(self.probes.fetch_add(0, Ordering::AcqRel)) {
                return;
            }
            // A probe took a slot meanwhile: bound it from now.
            let Some(started) = self.start_bound(generation, now) else {
                return;
            };
            observer.on_bound_started();
            // That probe may have ended before the bound was written, its own stop finding
            // none to stop: read the slots again (ordered against every take and result, as
            // above), and stop the bound just written if no probe is left in flight.
            if in_flight(self.probes.fetch_add(0, Ordering::AcqRel)) {
                return;
            }
            word = started;
        }
    }

    /// Adds a failure of a call of Closed `generation` to the run of consecutive failures, or ends
    /// the run with a success. Returns the run after it, or `None` when a change to Closed has
    /// restarted the run for a later generation since the call's check (its result is dropped).
    #[inline]
    fn extend_run(&self, failure: bool, generation: u64) -> Option<u32> {
        let tag = run_tag(generation);
        let mut run = self.consecutive.load(Ordering::Acquire);
        loop {
            if run & !RUN_MASK != tag {
                return None;
            }
            let next = match failure {
                true => tag | (run & RUN_MASK).saturating_add(1).min(RUN_MASK),
                // A success in a run already ended (the steady state) writes nothing.
                false if run == tag => return Some(0),
                false => tag,
            };
            match self.consecutive.compare_exchange_weak(
                run,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((next & RUN_MASK) as u32),
                Err(actual) => run = actual,
            }
        }
    }

    /// Whether a call that took `elapsed` counts as slow (always `false` without a slow-call rule).
    #[inline]
    pub fn is_slow_call(&self, elapsed: Duration) -> bool {
        self.rules.slow_ppm.is_some() && nanos(elapsed) >= self.rules.slow_nanos
    }

    #[inline]
    fn rates_trip(&self, counts: Counts) -> bool {
        if counts.calls < self.rules.minimum_calls {
            return false;
        }
        rate_reached(counts.failures, counts.calls, self.rules.failure_ppm)
            || rate_reached(counts.slow, counts.calls, self.rules.slow_ppm)
    }

    /// The deadline of `generation` (end of Open, or HalfOpen's bound), if it has been written.
    #[inline]
    fn until_of(&self, generation: u64) -> Option<u64> {
        let until = self.until.load(Ordering::Acquire);
        (until >> UNTIL_BITS == tag_of(generation))
            .then(|| (until & UNTIL_MASK).saturating_mul(NANOS_PER_MILLI))
    }

    /// HalfOpen `generation`'s bound: its deadline, unless no probe is in flight ([`NO_BOUND`]:
    /// a HalfOpen without a probe out has nothing to give up on, and waits for its next call
    /// however long that takes) or it was
    /// cut to the end of the deadline range (a clock some 34.8 years past the machine's origin).
    /// Then the probes decide alone: a bound already due would reopen the breaker, whose wait, as
    /// cut, is over at once, and so round forever.
    fn half_open_bound(&self, generation: u64) -> Option<u64> {
        self.until_of(generation)
            .filter(|&deadline| deadline < UNTIL_MASK * NANOS_PER_MILLI)
    }

    /// When (nanoseconds, on the clock the machine is given) the current state's deadline falls:
    /// the end of Open, or HalfOpen's bound while it runs (while a probe is in flight, from the
    /// first one admitted while none was out). `None` in other states, in a HalfOpen with no
    /// bound running, or just after a change before the deadline is written.
    pub fn deadline(&self) -> Option<u64> {
        let word = self.state.load(Ordering::Acquire);
        let deadline = match mode_of(word) & !SHADOW {
            OPEN => self.until_of(generation_of(word)),
            HALF_OPEN => self.half_open_bound(generation_of(word)),
            _ => None,
        };
        deadline.map(|deadline| self.on_clock(deadline))
    }

    /// Applies a deadline that has passed at `now`: Open → HalfOpen, HalfOpen → Open (only while
    /// a bound runs, see [`deadline`](Self::deadline)). Returns the state after.
    pub fn tick<O: Observer + ?Sized>(&self, now: u64, observer: &O) -> State {
        let now = Now::new(|| self.since_origin(now));
        loop {
            let word = self.state.load(Ordering::Acquire);
            let mode = mode_of(word);
            let next = match mode & !SHADOW {
                OPEN => HALF_OPEN,
                HALF_OPEN => OPEN,
                _ => return public_state(mode),
            };
            let deadline = match next {
                OPEN => self.half_open_bound(generation_of(word)),
                _ => self.until_of(generation_of(word)),
            };
            match deadline {
                Some(deadline) if now.get() >= deadline => {
                    // A HalfOpen that ran out is open as of its bound; an Open whose wait is
                    // over starts its probe window now.
                    let at = if next == OPEN { deadline } else { now.get() };
                    let reason = (next == OPEN).then_some(OpenReason::ProbesTimedOut);
                    self.transition(word, next | (mode & SHADOW), at, observer, reason);
                }
                // A deadline already of a newer generation says nothing of `word`'s: when the
                // state has moved since it was read, look at the new state.
                _ if self.state.load(Ordering::Acquire) != word => {}
                _ => return public_state(mode),
            }
        }
    }

    /// Forces the breaker open: every call is rejected until another manual change.
    pub fn force_open<O: Observer + ?Sized>(&self, now: u64, observer: &O) {
        self.manual(FORCED_OPEN, false, now, observer)
    }

    /// Disables the breaker: every call goes through, nothing is recorded, until another manual
    /// change. (Hystrix and others call this *forced closed*.)
    pub fn disable<O: Observer + ?Sized>(&self, now: u64, observer: &O) {
        self.manual(DISABLED, false, now, observer)
    }

    /// Switches to MetricsOnly: every call goes through; outcomes are recorded from a fresh window
    /// and the changes the breaker would make are reported, never acted on. In MetricsOnly
    /// already, it changes nothing and the window is kept, as with every manual change but
    /// [`reset`](Self::reset).
    pub fn metrics_only<O: Observer + ?Sized>(&self, now: u64, observer: &O) {
        self.manual(CLOSED | SHADOW, false, now, observer)
    }

    /// Back to Closed with a fresh window and the first wait, from any state. Always starts a new
    /// generation, so results of calls admitted before are dropped (with a time window, one that
    /// completes while the reset empties the window may still be counted in it; see the
    /// [module docs](self#generations)); a Closed breaker stays Closed, and the observer hears of
    /// no transition.
    pub fn reset<O: Observer + ?Sized>(&self, now: u64, observer: &O) {
        self.manual(CLOSED, true, now, observer)
    }

    fn manual<O: Observer + ?Sized>(&self, to: u64, always: bool, now: u64, observer: &O) {
        let now = self.since_origin(now);
        loop {
            let word = self.state.load(Ordering::Acquire);
            let mode = mode_of(word);
            let already = mode == to || (to & SHADOW != 0 && mode & SHADOW != 0);
            let reason = (to == FORCED_OPEN).then_some(OpenReason::Forced);
            if (already && !always) || self.transition(word, to, now, observer, reason) {
                return;
            }
        }
    }

    /// Moves from `from` (a state word) to `to` (a mode) in the next generation, if no one else
    /// changed the state first, for `reason` (given when `to` is Open or ForcedOpen). Returns
    /// whether this call made the change.
    #[inline]
    fn transition<O: Observer + ?Sized>(
        &self,
        from: u64,
        to: u64,
        now: u64,
        observer: &O,
        reason: Option<OpenReason>,
    ) -> bool {
        self.change(from, to, now, observer, false, reason)
    }

    /// Trips Closed (or MetricsOnly's Closed) `word` at `now`: the window's `counts` or the `run`
    /// of failures after the call just recorded reached a threshold. The reason is worked out
    /// here, off the path of calls that do not trip.
    #[cold]
    #[inline(never)]
    fn trip<O: Observer + ?Sized>(
        &self,
        word: u64,
        counts: Counts,
        run: u32,
        now: u64,
        observer: &O,
    ) {
        let rules = &self.rules;
        let over = |n: u32, ppm: Option<u64>| {
            counts.calls >= rules.minimum_calls && rate_reached(n, counts.calls, ppm)
        };
        let rate = |n: u32| n as f64 / counts.calls.max(1) as f64;
        let reason = match (rules.failure_rate, rules.slow_rate) {
            (Some(threshold), _) if over(counts.failures, rules.failure_ppm) => {
                OpenReason::FailureRate {
                    rate: rate(counts.failures),
                    threshold,
                }
            }
            (_, Some(threshold)) if over(counts.slow, rules.slow_ppm) => OpenReason::SlowCallRate {
                rate: rate(counts.slow),
                threshold,
            },
            _ => OpenReason::ConsecutiveFailures { failures: run },
        };
        let to = OPEN | (mode_of(word) & SHADOW);
        self.transition(word, to, now, observer, Some(reason));
    }

    /// [`transition`](Self::transition); a change to Closed that `gives_way` (a HalfOpen's
    /// verdict) does not wait for another change from `from` to publish (see
    /// [`lock_closing`](Self::lock_closing)), and returns `false` at once.
    #[cold]
    #[inline(never)]
    fn change<O: Observer + ?Sized>(
        &self,
        from: u64,
        to: u64,
        now: u64,
        observer: &O,
        gives_way: bool,
        reason: Option<OpenReason>,
    ) -> bool {
        debug_assert_eq!(
            reason.is_some(),
            matches!(to & !SHADOW, OPEN | FORCED_OPEN),
            "a reason is given exactly for a change to Open or ForcedOpen"
        );
        let generation = generation_of(from) + 1;
        let closes = to & !SHADOW == CLOSED;
        match to & !SHADOW {
            // The window is emptied before the new Closed is published, so no result of the new
            // generation is lost to the reset, and none is counted with the old window's. The run
            // of failures and a count window's slots are tagged with the new generation: a result
            // of the old one that passed its check of the generation and comes to them after this
            // is dropped (see `Machine::complete`). Under `closing`, and only while the state is
            // still `from`: no other change to Closed can be published meanwhile, so a change that
            // loses the race below has emptied no window a newer Closed generation records into
            // (nothing records in the others).
            CLOSED => {
                if !self.lock_closing(from, gives_way) {
                    return false;
                }
                if self.state.load(Ordering::Acquire) != from {
                    self.closing.store(NOT_CLOSING, Ordering::Release);
                    return false;
                }
                self.window.reset(generation, || now);
                // A swap where a store would do: loom's model may order a plain store before a
                // compare-and-swap that ran earlier without reading it, and so keep a stale
                // failure that the store has in fact overwritten.
                self.consecutive.swap(run_tag(generation), Ordering::AcqRel);
            }
            HALF_OPEN => self.advance_probes(generation),
            _ => {}
        }
        let next = pack_state(generation, to);
        let changed = self
            .state
            .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if closes {
            self.closing.store(NOT_CLOSING, Ordering::Release);
        }
        if !changed {
            return false;
        }
        let from_mode = mode_of(from);
        let (trips, wait) = match to & !SHADOW {
            OPEN => {
                // An Open entered from Closed is the first trip since the breaker closed, even
                // when the change into that Closed has not written its count yet.
                let earlier = match from_mode & !SHADOW {
                    CLOSED => 0,
                    _ => self.trips(),
                };
                (Some(earlier + 1), Some(self.open_wait(earlier, generation)))
            }
            HALF_OPEN => (None, Some(self.rules.half_open_nanos)),
            CLOSED => (Some(0), None),
            _ => (None, None),
        };
        // Written before the deadline: a change out of this state, which waits for the deadline,
        // finds them.
        self.advance_trips(generation, trips);
        // Every change tags the deadline and the probe slots with its generation, even when it
        // has no deadline or probes: a tag left behind by more than half the tags' range would
        // read as newer than every generation after it, and the next Open would never get its
        // deadline, or the next HalfOpen its probe slots.
        let until = match to & !SHADOW {
            HALF_OPEN => NO_BOUND,
            _ => wait.map_or(0, |wait| until_ms(now, wait)),
        };
        self.advance_until(generation, until);
        if to & !SHADOW != HALF_OPEN {
            self.advance_probes(generation);
        }
        self.entered.store(now, Ordering::Release);
        if from_mode == to {
            // A reset of a Closed breaker: a new generation with an empty window, in the same
            // state, so nothing to report (Resilience4j's reset reports no transition from
            // CLOSED either).
            return true;
        }
        let metrics_only = from_mode & SHADOW != 0 && to & SHADOW != 0;
        let state = |mode: u64| match metrics_only {
            true => public_state(mode & !SHADOW),
            false => public_state(mode),
        };
        observer.on_transition(&Transition {
            from: state(from_mode),
            to: state(to),
            metrics_only,
            generation,
            wait: wait.map(Duration::from_nanos),
            reason,
        });
        true
    }

    /// Takes `closing` for a change from `from`, waiting while another change to Closed holds it.
    /// Returns `false`, without the flag, when the change `gives_way` and the holder changes from
    /// `from` too: the holder then finds the state still `from` and swaps it, or finds (or swaps
    /// against) a change that already left it. Either way the state leaves `from`, so this change
    /// would lose its compare-and-swap after the wait. A holder changing from another word may be
    /// a stale change that will publish nothing: that one is waited for (it mostly finds out at
    /// once, from its check that the state is still its word).
    fn lock_closing(&self, from: u64, gives_way: bool) -> bool {
        loop {
            match self.closing.compare_exchange_weak(
                NOT_CLOSING,
                from,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(holder) if gives_way && holder == from => return false,
                Err(_) => sync::yield_now(),
            }
        }
    }

    /// The Open wait after `trips` earlier trips, before jitter, in nanoseconds.
    fn grown_wait(&self, trips: u32) -> f64 {
        let rules = &self.rules;
        let grown = rules.wait_nanos as f64 * rules.multiplier.powi(trips.min(4096) as i32);
        grown.min(rules.max_wait_nanos as f64)
    }

    /// The wait of Open `generation`, after `trips` earlier trips since the breaker last closed.
    /// Its jitter is drawn from the seed and the generation alone, so the wait of an Open not
    /// entered yet can be told in advance (see [`permits`](Self::permits)).
    fn open_wait(&self, trips: u32, generation: u64) -> u64 {
        let rules = &self.rules;
        let mut wait = self.grown_wait(trips);
        if rules.jitter > 0.0 {
            let mut rng = SmallRng::seed_from_u64(
                rules.seed ^ generation.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            );
            wait *= 1.0 - rules.jitter * rng.random::<f64>();
        }
        (wait as u64).max(1)
    }

    /// Trips since the breaker last closed.
    fn trips(&self) -> u32 {
        self.trips.load(Ordering::Acquire) as u32
    }

    /// Tags the trips with `generation`, setting their count to `count` (keeping it when `None`),
    /// unless a newer generation already did: a change that closed the breaker and a trip of
    /// the Closed it entered may write in either order.
    fn advance_trips(&self, generation: u64, count: Option<u32>) {
        let mut word = self.trips.load(Ordering::Acquire);
        while tag_is_older(word >> TRIPS_TAG_SHIFT, generation) {
            let count = count.unwrap_or(word as u32);
            match self.trips.compare_exchange_weak(
                word,
                (tag_of(generation) << TRIPS_TAG_SHIFT) | count as u64,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// Tags the probe slots with `generation`, unless a newer generation already did.
    fn advance_probes(&self, generation: u64) {
        let mut word = self.probes.load(Ordering::Acquire);
        while tag_is_older(word >> PROBE_TAG_SHIFT, generation) {
            match self.probes.compare_exchange_weak(
                word,
                tag_of(generation) << PROBE_TAG_SHIFT,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// Writes the deadline of `generation`, unless it has one already (a HalfOpen's first probe
    /// can start its bound before the change writes) or a newer generation wrote its own.
    fn advance_until(&self, generation: u64, until_ms: u64) {
        let next = (tag_of(generation) << UNTIL_BITS) | until_ms;
        let mut word = self.until.load(Ordering::Acquire);
        loop {
            if !tag_is_older(word >> UNTIL_BITS, generation) {
                return;
            }
            match self
                .until
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => word = actual,
            }
        }
    }

    /// The counts of the sliding window at `now`.
    pub fn counts(&self, now: u64) -> Counts {
        self.window.counts(|| self.since_origin(now))
    }

    /// Calls rejected since the machine was built.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    /// A point-in-time view at `now`.
    pub fn snapshot(&self, now: u64) -> Snapshot {
        let now = self.since_origin(now);
        let word = self.state.load(Ordering::Acquire);
        let mode = mode_of(word);
        let generation = generation_of(word);
        let counts = self.window.counts(|| now);
        let rate = |n: u32| match counts.calls {
            0 => 0.0,
            calls => n as f64 / calls as f64,
        };
        let probes = self.probes.load(Ordering::Acquire);
        let half_open =
            mode & !SHADOW == HALF_OPEN && probes >> PROBE_TAG_SHIFT == tag_of(generation);
        let probe = |shift| match half_open {
            true => probe_field(probes, shift) as u32,
            false => 0,
        };
        Snapshot {
            state: public_state(mode),
            machine_state: public_state(if mode & SHADOW != 0 {
                mode & !SHADOW
            } else {
                mode
            }),
            calls: counts.calls,
            failures: counts.failures,
            slow_calls: counts.slow,
            failure_rate: rate(counts.failures),
            slow_call_rate: rate(counts.slow),
            consecutive_failures: (self.consecutive.load(Ordering::Relaxed) & RUN_MASK) as u32,
            rejected: self.rejected.load(Ordering::Relaxed),
            would_have_rejected: self.would_have_rejected.load(Ordering::Relaxed),
            probes_in_use: probe(TAKEN_SHIFT),
            probe_results: probe(RESULTS_SHIFT),
            trips: self.trips(),
            time_in_state: Duration::from_nanos(
                now.saturating_sub(self.entered.load(Ordering::Acquire)),
            ),
            generation,
        }
    }

    /// Checks the count window's aggregate against its slots (tests only).
    #[cfg(loom)]
    #[doc(hidden)]
    pub fn window_is_consistent(&self) -> bool {
        match &self.window {
            Window::Count(w) => w.recount() == w.counts(),
            Window::Time(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{ppm, OpenReason};

    #[test]
    fn a_reason_equals_itself_even_with_a_nan_rate() {
        let r = OpenReason::FailureRate {
            rate: f64::NAN,
            threshold: 0.5,
        };
        assert_eq!(r, r);
        let slow = OpenReason::SlowCallRate {
            rate: f64::NAN,
            threshold: 0.5,
        };
        assert_ne!(r, slow);
        assert_ne!(
            OpenReason::ProbesFailed {
                failures: 1,
                probes: 2
            },
            OpenReason::ProbesSlow {
                slow_calls: 1,
                probes: 2
            }
        );
        assert_eq!(OpenReason::Forced, OpenReason::Forced);
        assert_ne!(OpenReason::Forced, OpenReason::ProbesTimedOut);
    }

    #[test]
    fn reasons_have_stable_names_and_say_what_happened() {
        let rate = OpenReason::FailureRate {
            rate: 0.6,
            threshold: 0.5,
        };
        assert_eq!(rate.as_str(), "failure_rate");
        assert_eq!(rate.rate(), Some((0.6, 0.5)));
        assert_eq!(rate.to_string(), "failure rate 0.6 reached 0.5");
        let slow = OpenReason::SlowCallRate {
            rate: 1.0,
            threshold: 0.8,
        };
        assert_eq!(slow.as_str(), "slow_call_rate");
        assert_eq!(slow.rate(), Some((1.0, 0.8)));
        let probes = OpenReason::ProbesFailed {
            failures: 2,
            probes: 3,
        };
        assert_eq!(probes.rate(), None);
        assert_eq!(probes.to_string(), "2 of 3 probes failed");
        let names: Vec<_> = [
            OpenReason::ConsecutiveFailures { failures: 5 },
            OpenReason::ProbesSlow {
                slow_calls: 1,
                probes: 1,
            },
            OpenReason::ProbesTimedOut,
            OpenReason::Forced,
        ]
        .iter()
        .map(|r| r.as_str())
        .collect();
        assert_eq!(
            names,
            [
                "consecutive_failures",
                "probes_slow",
                "probes_timed_out",
                "forced"
            ]
        );
    }

    #[test]
    fn thresholds_round_up_to_whole_ppm() {
        assert_eq!(ppm(1e-7), 1);
        assert_eq!(ppm(1.4e-6), 2);
        assert_eq!(ppm(0.5), 500_000);
        assert_eq!(ppm(1.0), 1_000_000);
        // Every threshold that is a whole number of ppm in decimal keeps that number.
        for k in 1..=1_000_000u64 {
            assert_eq!(ppm(k as f64 / 1e6), k, "{k} ppm");
        }
        // One at most 1e-12 above a whole number of ppm is rounded down to it, never further.
        assert_eq!(ppm(0.5 + 1e-13), 500_000);
        for k in (1..=1_000_000u64).step_by(997) {
            for above in [1e-13, 5e-13, 9e-13, 2e-12, 5e-12, 1e-9, 4e-7] {
                let threshold = k as f64 / 1e6 + above;
                let tripping = ppm(threshold) as f64 / 1e6;
                assert!(
                    tripping >= threshold - 1e-12,
                    "{threshold} trips at {tripping}"
                );
            }
        }
    }
}
