//! Sliding windows of call outcomes, lock-free and O(1) to record into.
//!
//! Two kinds, as in Resilience4j's `COUNT_BASED` and `TIME_BASED` windows:
//!
//! - count windows: the last `N` calls. A ring of `N` one-byte slots and one packed aggregate word
//!   (calls, failures and slow calls, 21 bits each). Recording claims the next slot with a
//!   `fetch_add`, compare-and-swaps the outcome in, and applies *new minus evicted* to the
//!   aggregate with one more `fetch_add` (both skipped when the slot already holds the same
//!   outcome, the steady state of a healthy dependency), so the aggregate always equals the sum of
//!   the slots once every recorder has finished, under any interleaving. Between a recorder's
//!   write and its add, another recorder that wrapped around the ring may have subtracted the same
//!   slot first, so a field can be briefly negative: the aggregate is decoded as balanced signed
//!   digits and clamped, never misread. Each slot also holds the low 5 bits of the breaker
//!   generation it was written in, or emptied for: a reset tags every slot with the generation
//!   it starts, and a recorder writes only over a slot of its own generation, so a result of the
//!   generation that ended is dropped, however late it comes, rather than counted in the fresh
//!   window (unless 32 generations pass between the recorder's check of the generation and its
//!   write).
//! - time windows: the calls of the last `T`, in `B` buckets of `T / B`. Each bucket is one word
//!   holding a 14-bit epoch stamp, a 5-bit scale `s` and three 15-bit counters (calls, failures,
//!   slow calls), updated by compare-and-swap: a bucket whose stamp is older than the recorder's
//!   epoch is restarted in the same CAS, so no count is lost at a bucket boundary. Reading sums
//!   `counter << s` over the `B` buckets whose stamps fall inside the window, so every bucket weighs
//!   in by the calls it stands for. A record does not read every bucket: the first record of each
//!   epoch sums the `B - 1` buckets before its own once and caches the sums (behind a sequence
//!   lock that no record waits on: one that finds the cache being written reads every bucket
//!   instead), and every record of the epoch adds its own bucket to them. So the counts a record
//!   sees miss a call recorded into an earlier bucket after the epoch's first record (one whose
//!   time was read just before the epoch began, on another thread) until the next epoch's first
//!   record, for at most one bucket's duration; reading the window's counts (`snapshot`) sees it
//!   at once. A reset drops the cache with the buckets.
//!
//! A bucket counts exactly up to 32,767 calls (`s = 0`). Past that it keeps a sample, as an
//! approximate counter does (Morris, 1978): a bucket of scale `s` keeps a call with probability
//! 2^-s, and a full bucket halves its three counters (all rounded up or all down, at random) and
//! moves to `s + 1`, so a stored unit stands for 2^s calls and the counts stay unbiased. A call
//! kept at scale `k` adds 2^k, a variance of 2^k - 1 per call, and about 16,384 × 2^k calls pass
//! at each scale, so a bucket that has counted `N` calls has a variance below `N^2 / 44,000`
//! whatever its volume: its count errs by about 0.5 % (one standard error) and its failure or
//! slow-call rate `r` by about `sqrt(r(1 - r) / 44,000)`, a quarter of a percentage point at
//! `r` = 50 %. A window errs no more than its most sampled bucket. Followed over millions of calls,
//! the rate read strays up to about 0.7 points from the true one. A window whose buckets hold at
//! most 32,767 calls each is exact. The random bits come from a per-thread SplitMix64 generator,
//! drawn only for calls into a sampling bucket. A bucket stops counting at 32,767 × 2^31
//! (7 × 10^13) calls; sums past `u32::MAX` calls are scaled down together, keeping the rates.
//!
//! Neither kind waits for another thread (the time window's sequence lock is only ever tried) or
//! allocates after construction. Time enters as nanoseconds since the
//! machine's origin, given by the caller.

use crate::sync::{AtomicU64, AtomicU8, Ordering, Padded};

/// Calls, failures and slow calls in a window.
///
/// A time window counts a sample of the calls of a bucket that has more than 32,767 (see the
/// [module docs](self)), and scales all three down together past `u32::MAX` calls.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Calls counted (successes and failures; ignored calls are not counted).
    pub calls: u32,
    /// Failed calls.
    pub failures: u32,
    /// Calls that took at least the slow-call duration, whether they succeeded or failed.
    pub slow: u32,
}

/// A window of either kind.
#[derive(Debug)]
// One window per breaker; the count window is large only by its deliberate cache-line padding.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records one counted outcome of a call of breaker generation `generation` at `now`
    /// (nanoseconds) and returns the window's counts after it; `None` when a count window was
    /// emptied for a later generation (the outcome is dropped). A time window has no room to
    /// tell, and records it.
    #[inline]
    pub(crate) fn record(
        &self,
        failure: bool,
        slow: bool,
        generation: u64,
        now: impl FnOnce() -> u64,
    ) -> Option<Counts> {
        match self {
            Window::Count(w) => w.record(failure, slow, generation),
            Window::Time(w) => Some(w.record(failure, slow, now())),
        }
    }

    /// The counts at `now`.
    pub(crate) fn counts(&self, now: impl FnOnce() -> u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now()),
        }
    }

    /// Empties the window for breaker generation `generation`.
    pub(crate) fn reset(&self, generation: u64, now: impl FnOnce() -> u64) {
        match self {
            Window::Count(w) => w.reset(generation),
            Window::Time(w) => w.reset(now()),
        }
    }

    /// Whether recording or reading needs the current time.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Window::Time(_))
    }
}

// ===== impl CountWindow =====

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;

/// The largest count window: fields of the packed aggregate must stay below 2^20 in magnitude.
pub(crate) const MAX_COUNT_WINDOW: u32 = 1_000_000;

const SLOT_CALL: u8 = 1;
const SLOT_FAILURE: u8 = 2;
const SLOT_SLOW: u8 = 4;
/// A slot's top 5 bits: the low bits of the generation it was written in or emptied for.
const SLOT_TAG_SHIFT: u32 = 3;

/// The tag of a slot of breaker generation `generation`.
#[inline]
fn slot_tag(generation: u64) -> u8 {
    (generation << SLOT_TAG_SHIFT) as u8
}

/// The last `N` calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    head: Padded<AtomicU64>,
    aggregate: Padded<AtomicU64>,
}

#[inline]
fn pack(calls: u64, failures: u64, slow: u64) -> u64 {
    calls
        .wrapping_add(failures << FIELD_BITS)
        .wrapping_add(slow << (2 * FIELD_BITS))
}

#[inline]
fn slot_value(slot: u8) -> u64 {
    pack(
        (slot & SLOT_CALL != 0) as u64,
        (slot & SLOT_FAILURE != 0) as u64,
        (slot & SLOT_SLOW != 0) as u64,
    )
}

#[inline]
fn sign_extend(value: u64, bits: u32) -> i64 {
    let shift = 64 - bits;
    ((value << shift) as i64) >> shift
}

/// Decodes the aggregate as three balanced signed digits (each field may be transiently negative),
/// clamped at zero.
#[inline]
fn decode(mut word: u64) -> Counts {
    let calls = sign_extend(word & FIELD_MASK, FIELD_BITS);
    word = word.wrapping_sub(calls as u64) >> FIELD_BITS;
    let failures = sign_extend(word & FIELD_MASK, FIELD_BITS);
    word = word.wrapping_sub(failures as u64) >> FIELD_BITS;
    let slow = sign_extend(word, 64 - 2 * FIELD_BITS);
    Counts {
        calls: calls.max(0) as u32,
        failures: failures.max(0) as u32,
        slow: slow.max(0) as u32,
    }
}

impl CountWindow {
    /// A window of the last `size` calls; `size` is in `1..=MAX_COUNT_WINDOW`.
    pub(crate) fn new(size: u32) -> Self {
        debug_assert!((1..=MAX_COUNT_WINDOW).contains(&size));
        CountWindow {
            slots: (0..size.max(1)).map(|_| AtomicU8::new(0)).collect(),
            head: Padded(AtomicU64::new(0)),
            aggregate: Padded(AtomicU64::new(0)),
        }
    }

    /// Records one outcome of a call of generation `generation`; `None`, recording nothing,
    /// when its slot was emptied for another generation since.
    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool, generation: u64) -> Option<Counts> {
        let tag = slot_tag(generation);
        let slot = tag | SLOT_CALL | (failure as u8 * SLOT_FAILURE) | (slow as u8 * SLOT_SLOW);
        let index = self.head.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let cell = &self.slots[index as usize];
        let mut evicted = cell.load(Ordering::Acquire);
        loop {
            // The common case (a success replacing a success) changes nothing: skip both writes.
            // The aggregate equals the sum of the slots either way, since a slot and the
            // aggregate only ever change together.
            if evicted == slot {
                return Some(self.counts());
            }
            if evicted & !(SLOT_CALL | SLOT_FAILURE | SLOT_SLOW) != tag {
                return None;
            }
            match cell.compare_exchange_weak(evicted, slot, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => evicted = actual,
            }
        }
        let delta = slot_value(slot).wrapping_sub(slot_value(evicted));
        let after = self
            .aggregate
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        Some(decode(after))
    }

    #[inline]
    pub(crate) fn counts(&self) -> Counts {
        decode(self.aggregate.load(Ordering::Acquire))
    }

    /// Empties every slot for generation `generation`, taking each one's contribution out of
    /// the aggregate, so concurrent recorders cannot make the aggregate drift from the slots.
    /// A recorder of an earlier generation that comes to a slot after this finds it tagged
    /// with `generation`, and records nothing.
    pub(crate) fn reset(&self, generation: u64) {
        let empty = slot_tag(generation);
        for slot in self.slots.iter() {
            let evicted = slot_value(slot.swap(empty, Ordering::AcqRel));
            if evicted != 0 {
                self.aggregate.fetch_sub(evicted, Ordering::AcqRel);
            }
        }
    }

    /// The sum of the slots, for invariant checks in tests.
    #[cfg(any(test, loom))]
    #[allow(dead_code)]
    pub(crate) fn recount(&self) -> Counts {
        let sum = self.slots.iter().fold(0u64, |acc, s| {
            acc.wrapping_add(slot_value(s.load(Ordering::Acquire)))
        });
        decode(sum)
    }
}

// ===== impl TimeWindow =====

// A bucket word, from the top: a 14-bit epoch stamp, a 5-bit scale `s`, then calls, failures and
// slow calls in 15 bits each. The bucket holds `counter << s` of each.
const COUNT_BITS: u32 = 15;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const CALLS_SHIFT: u32 = 2 * COUNT_BITS;
const FAILURES_SHIFT: u32 = COUNT_BITS;
const SCALE_SHIFT: u32 = 3 * COUNT_BITS;
const SCALE_BITS: u32 = 5;
const MAX_SCALE: u64 = (1 << SCALE_BITS) - 1;
const STAMP_SHIFT: u32 = SCALE_SHIFT + SCALE_BITS;
const STAMP_BITS: u32 = u64::BITS - STAMP_SHIFT;
const STAMP_MASK: u64 = (1 << STAMP_BITS) - 1;
/// Half the stamps: a stamp less than this far behind an epoch is older than it.
const STAMP_HALF: u64 = 1 << (STAMP_BITS - 1);

/// The most buckets a time window may have.
pub(crate) const MAX_BUCKETS: u32 = 1000;

// Every bucket's stamp stays within two windows of the newest epoch, and a recorder more than a
// window behind the newest epoch records nothing. So a recorder tells an older stamp from a newer
// one while two windows are less than half the stamps, and while the newest epoch moves on by less
// than half the stamps minus a window (7,192 epochs with 1,000 buckets) between the recorder's
// check and its write; and a reader never takes a stamp up to three windows away for its own.
const _: () = assert!(2 * (MAX_BUCKETS as u64) < STAMP_HALF);
const _: () = assert!(3 * (MAX_BUCKETS as u64) <= STAMP_MASK);

/// The calls of the last `T`, in buckets.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[AtomicU64]>,
    /// The full epoch each bucket was last restarted for: tells a bucket whose 14-bit stamp
    /// matches by coincidence after a long idle period from a fresh one.
    epochs: Box<[AtomicU64]>,
    bucket_nanos: u64,
    /// One more than the newest epoch recorded into, 0 before the first record.
    newest: AtomicU64,
    /// The sum of the buckets other than one epoch's, taken by that epoch's first record.
    others: Others,
}

/// The summed buckets of the window that ends at `epoch`, but for `epoch`'s own: a record of
/// `epoch` adds its own bucket to these instead of reading every bucket.
///
/// A sequence lock. `seq` is odd while the one thread that took it writes the fields, and goes
/// up by 2 with every write and every reset of the window; a reader uses the fields only when
/// `seq` reads the same even number before and after them. Every field is written with release
/// and read with acquire ordering, so a reader that sees any field of a later write sees that
/// write's odd `seq` too. A reset adds 2 to `seq` (whether or not a write holds it), and then
/// stores [`NO_EPOCH`]: a write that took the lock before the reset fails to publish (its `seq`
/// moved) and stores [`NO_EPOCH`] too, its record reading every bucket instead, and one that took
/// it after sums the emptied buckets.
#[derive(Debug)]
struct Others {
    seq: AtomicU64,
    epoch: AtomicU64,
    /// Calls, exactly.
    calls: AtomicU64,
    /// Failures and slow calls, 32 bits each, both shifted right as far as `calls` must be to fit
    /// in 32 bits (see [`Counts::from_wide`]). Past 2^32 calls this drops their low bits, which
    /// the record's own bucket is then added to: [`TimeWindow::record`] tells how far that is
    /// from summing every bucket.
    failures_slow: AtomicU64,
}

/// The epoch of no sum: the window was reset, or a sum was taken across a reset.
const NO_EPOCH: u64 = u64::MAX;

/// Calls, failures and slow calls, summed over buckets.
type Sums = (u64, u64, u64);

/// How far sums of `calls` calls are shifted right to fit a `u32`.
#[inline]
fn wide_shift(calls: u64) -> u32 {
    (u64::BITS - calls.leading_zeros()).saturating_sub(u32::BITS)
}

#[inline]
fn stamp_of(epoch: u64) -> u64 {
    epoch & STAMP_MASK
}

/// An empty bucket stamped `stamp`.
#[inline]
fn empty_bucket(stamp: u64) -> u64 {
    stamp << STAMP_SHIFT
}

/// What one call adds to a bucket's counters.
#[inline]
fn one_call(failure: bool, slow: bool) -> u64 {
    (1 << CALLS_SHIFT) | ((failure as u64) << FAILURES_SHIFT) | slow as u64
}

/// Reads a bucket; tests count the reads, to check how many buckets a record looks at.
#[inline]
fn load_bucket(bucket: &AtomicU64) -> u64 {
    #[cfg(all(test, not(loom)))]
    tests::BUCKET_LOADS.with(|loads| loads.set(loads.get() + 1));
    bucket.load(Ordering::Acquire)
}

#[inline]
fn counter(word: u64, shift: u32) -> u64 {
    (word >> shift) & COUNT_MASK
}

#[inline]
fn scale_of(word: u64) -> u64 {
    (word >> SCALE_SHIFT) & MAX_SCALE
}

/// How many epochs bucket `i` of `len` is behind the bucket at `base`, the current epoch's
/// (`current % len`): the current epoch minus the epoch bucket `i` holds within the window.
#[inline]
fn back(base: u64, i: u64, len: u64) -> u64 {
    if i <= base {
        base - i
    } else {
        base + len - i
    }
}

/// Whether a bucket stamped `stamp` is older than `epoch` (wrapping comparison of stamps).
#[inline]
fn is_older(stamp: u64, epoch: u64) -> bool {
    let d = stamp_of(epoch).wrapping_sub(stamp) & STAMP_MASK;
    d != 0 && d < STAMP_HALF
}

/// `word`, a bucket of the recorder's epoch, with one more call in it; `None` when the call is
/// not kept. A bucket of scale `s` keeps a call with probability 2^-s, decided by the top `s` bits
/// of `random` (drawn once per call, on first need). A full bucket halves its counters and takes
/// the next scale first, rounding all three halves up or all three down at random.
#[inline]
fn with_call(word: u64, failure: bool, slow: bool, random: &mut Option<u64>) -> Option<u64> {
    let calls = counter(word, CALLS_SHIFT);
    let scale = scale_of(word);
    if scale == 0 && calls < COUNT_MASK {
        return Some(word + one_call(failure, slow));
    }
    let full = calls == COUNT_MASK;
    let next_scale = scale + full as u64;
    if next_scale > MAX_SCALE {
        return None;
    }
    let random = *random.get_or_insert_with(random_bits);
    if random >> (64 - next_scale) != 0 {
        return None;
    }
    let mut word = word;
    if full {
        let up = random & 1;
        let half = |shift: u32| ((counter(word, shift) + up) >> 1) << shift;
        word = empty_bucket(word >> STAMP_SHIFT)
            | (next_scale << SCALE_SHIFT)
            | half(CALLS_SHIFT)
            | half(FAILURES_SHIFT)
            | half(0);
    }
    Some(word + one_call(failure, slow))
}

/// 64 random bits from a per-thread SplitMix64 generator (Steele, Lea and Flood, 2014). Each
/// thread starts at its own point, taken in turn from one counter, so threads sample
/// independently of each other; the first thread's sequence is the same in every run.
fn random_bits() -> u64 {
    const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    static NEXT_THREAD: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    std::thread_local! {
        static STATE: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    }
    STATE.with(|state| {
        let start = || mix(NEXT_THREAD.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let z = state.get().unwrap_or_else(start).wrapping_add(GOLDEN);
        state.set(Some(z));
        mix(z)
    })
}

impl Counts {
    /// Sums wider than a `u32`, scaled down together when `calls` does not fit, which keeps the
    /// rates.
    fn from_wide(calls: u64, failures: u64, slow: u64) -> Self {
        let shift = wide_shift(calls);
        Counts {
            calls: (calls >> shift) as u32,
            failures: (failures >> shift) as u32,
            slow: (slow >> shift) as u32,
        }
    }
}

impl TimeWindow {
    /// A window of `buckets` buckets of `bucket_nanos` each.
    pub(crate) fn new(bucket_nanos: u64, buckets: u32) -> Self {
        debug_assert!((1..=MAX_BUCKETS).contains(&buckets));
        TimeWindow {
            buckets: (0..buckets.max(1)).map(|_| AtomicU64::new(0)).collect(),
            epochs: (0..buckets.max(1)).map(|_| AtomicU64::new(0)).collect(),
            bucket_nanos: bucket_nanos.max(1),
            newest: AtomicU64::new(0),
            // True of epoch 0, which has no buckets before it.
            others: Others {
                seq: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                calls: AtomicU64::new(0),
                failures_slow: AtomicU64::new(0),
            },
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    /// Records one call at `now` and returns the window's counts after it: the sum of the other
    /// buckets taken by the first record of its epoch (see [`others`](Self::others)) plus its own
    /// bucket, so a record reads a few words whatever the number of buckets.
    ///
    /// Below 2^32 calls in the window these are the counts [`counts`](Self::counts) reads (but
    /// for a call the cached sum missed, see [`others`](Self::others)). Past that, the cache
    /// keeps failures and slow calls shifted as far as its calls must be (see [`Others`]), so
    /// each may come out one scaled unit below what `counts` reads: as the scaled calls are at
    /// least 2^31, a rate lower by at most 2^-31.
    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool, now: u64) -> Counts {
        let epoch = now / self.bucket_nanos;
        let newest = self.newest.load(Ordering::Acquire);
        if newest <= epoch {
            let previous = self.newest.fetch_max(epoch + 1, Ordering::AcqRel);
            if previous <= epoch {
                self.advance(previous, epoch);
            }
        } else if epoch + self.len() < newest {
            // Outside the window that ends at the newest epoch; its bucket may hold a stamp too
            // far ahead to compare with.
            return self.counts(now);
        }
        let index = (epoch % self.len()) as usize;
        let bucket = &self.buckets[index];
        let mut random = None;
        let mut current = load_bucket(bucket);
        // The bucket as this call left it, holding `epoch`'s calls.
        let own = loop {
            let stamp = current >> STAMP_SHIFT;
            let restart = is_older(stamp, epoch);
            // Published before the restart, so a concurrent cleaner that sees the restarted bucket
            // knows it is fresh. A bucket already restarted for a later epoch belongs to a window
            // this call is outside of, however its stamp compares after a long stall.
            if restart && self.epochs[index].fetch_max(epoch, Ordering::AcqRel) > epoch {
                return self.counts(now);
            }
            let next = if stamp == stamp_of(epoch) {
                match with_call(current, failure, slow, &mut random) {
                    Some(next) => next,
                    None => break current,
                }
            } else if restart {
                empty_bucket(stamp_of(epoch)) + one_call(failure, slow)
            } else {
                // A later epoch owns this bucket: this call is already outside its window.
                return self.counts(now);
            };
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break next,
                Err(actual) => current = actual,
            }
        };
        let Some((calls, failures, slow)) = self.others(epoch) else {
            return self.counts(now);
        };
        let scale = scale_of(own);
        Counts::from_wide(
            calls + (counter(own, CALLS_SHIFT) << scale),
            failures + (counter(own, FAILURES_SHIFT) << scale),
            slow + (counter(own, 0) << scale),
        )
    }

    /// The sum of the buckets of the window that ends at `epoch`, but for `epoch`'s own: the one
    /// cached for `epoch`, or, when the cache holds an earlier epoch or predates a reset, a fresh
    /// sum that replaces it. `None` when another thread is replacing the cache, the cache holds a
    /// later epoch (this record is late), or a reset came while this record summed the buckets:
    /// the caller then reads every bucket.
    ///
    /// Each epoch's first record takes the sum, so a call recorded into an earlier bucket after
    /// that (one whose time was read just before the epoch began, on another thread) is missing
    /// from the counts later records of the epoch see, until the next epoch's first record sums
    /// the buckets again: for at most one bucket's duration. [`counts`](Self::counts) reads every
    /// bucket and sees it at once.
    #[inline]
    fn others(&self, epoch: u64) -> Option<Sums> {
        let others = &self.others;
        let seq = others.seq.load(Ordering::Acquire);
        let cached = others.epoch.load(Ordering::Acquire);
        let calls = others.calls.load(Ordering::Acquire);
        let failures_slow = others.failures_slow.load(Ordering::Acquire);
        let whole = seq & 1 == 0 && others.seq.load(Ordering::Acquire) == seq;
        if whole && cached == epoch {
            let shift = wide_shift(calls);
            let failures = (failures_slow >> u32::BITS) << shift;
            let slow = (failures_slow & u64::from(u32::MAX)) << shift;
            return Some((calls, failures, slow));
        }
        self.sum_others(epoch, seq, whole && (cached == NO_EPOCH || cached < epoch))
    }

    /// Sums the buckets of the window that ends at `epoch` but for `epoch`'s own, and caches the
    /// sums, when `stale` and this thread takes the lock (`seq` is the even value it read). `None`
    /// when it does not, or when a reset came while it summed.
    #[cold]
    #[inline(never)]
    fn sum_others(&self, epoch: u64, seq: u64, stale: bool) -> Option<Sums> {
        let others = &self.others;
        if !stale
            || others
                .seq
                .compare_exchange(seq, seq + 1, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return None;
        }
        let len = self.len();
        let base = epoch % len;
        let (mut calls, mut failures, mut slow) = (0u64, 0u64, 0u64);
        for (i, bucket) in self.buckets.iter().enumerate() {
            let back = back(base, i as u64, len);
            if back == 0 {
                continue;
            }
            let Some(expected) = epoch.checked_sub(back) else {
                continue;
            };
            let word = load_bucket(bucket);
            // The full epoch, read after the bucket (a restarter writes it first), tells a bucket
            // of `expected` from one whose stamp matches after a long idle period, in case this
            // sum runs while the record that ended that period still cleans the buckets.
            if word >> STAMP_SHIFT == stamp_of(expected)
                && self.epochs[i].load(Ordering::Acquire) >= expected
            {
                let scale = scale_of(word);
                calls += counter(word, CALLS_SHIFT) << scale;
                failures += counter(word, FAILURES_SHIFT) << scale;
                slow += counter(word, 0) << scale;
            }
        }
        #[cfg(all(test, not(loom)))]
        if let Some(hook) = tests::BEFORE_PUBLISH.with(|hook| hook.take()) {
            hook(self);
        }
        let shift = wide_shift(calls);
        others.calls.store(calls, Ordering::Release);
        others.failures_slow.store(
            ((failures >> shift) << u32::BITS) | (slow >> shift),
            Ordering::Release,
        );
        others.epoch.store(epoch, Ordering::Release);
        if others
            .seq
            .compare_exchange(seq + 1, seq + 2, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            // A reset came while the buckets were summed: the sums may hold calls it emptied,
            // so neither the cache nor this record may use them.
            others.epoch.store(NO_EPOCH, Ordering::Release);
            others.seq.fetch_add(1, Ordering::AcqRel);
            return None;
        }
        Some((calls, failures, slow))
    }

    /// Time moved on from `previous` (one more than the newest epoch recorded) to `epoch`: restamp
    /// the buckets of the epochs skipped in between, so that every bucket's stamp stays within two
    /// windows of the newest epoch and a 14-bit stamp is never mistaken for a much older one.
    fn advance(&self, previous: u64, epoch: u64) {
        let len = self.len();
        if previous + len <= epoch + 1 {
            // Nothing recorded for a whole window (or ever): every bucket is stale, whatever its
            // stamp says after a long idle period. Keep only a bucket restarted for the epoch it
            // would hold now or a later one: concurrent recorders may already have written it,
            // at this epoch or, when this cleaning runs late, at a later one.
            let base = epoch % len;
            for (i, bucket) in self.buckets.iter().enumerate() {
                let expected = epoch - back(base, i as u64, len);
                let stale = stamp_of(expected.wrapping_sub(len));
                let mut current = bucket.load(Ordering::Acquire);
                while current >> STAMP_SHIFT != stale
                    && !self.restarted_since(i, current >> STAMP_SHIFT, expected)
                {
                    match bucket.compare_exchange_weak(
                        current,
                        empty_bucket(stale),
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => break,
                        Err(actual) => current = actual,
                    }
                }
            }
            return;
        }
        for skipped in previous.max(1)..epoch {
            let bucket = &self.buckets[(skipped % len) as usize];
            let mut current = bucket.load(Ordering::Acquire);
            while is_older(current >> STAMP_SHIFT, skipped) {
                match bucket.compare_exchange_weak(
                    current,
                    empty_bucket(stamp_of(skipped)),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        self.epochs[(skipped % len) as usize].fetch_max(skipped, Ordering::AcqRel);
                        break;
                    }
                    Err(actual) => current = actual,
                }
            }
        }
    }

    /// Whether bucket `i`, stamped `stamp`, was restarted for epoch `expected` or a later one.
    /// Its full epoch tells a recent restart from a stamp that only looks recent after a long
    /// idle period; a restarter publishes it before restamping the bucket.
    fn restarted_since(&self, i: usize, stamp: u64, expected: u64) -> bool {
        self.epochs[i].load(Ordering::Acquire) >= expected && !is_older(stamp, expected)
    }

    /// The counts of the window that ends at `now`.
    pub(crate) fn counts(&self, now: u64) -> Counts {
        let current = now / self.bucket_nanos;
        let newest = self.newest.load(Ordering::Acquire);
        let len = self.len();
        if newest == 0 || current >= newest - 1 + len {
            return Counts::default();
        }
        // At most 1,000 buckets of 2^46 calls each: the sums fit in a u64.
        let base = current % len;
        let (mut calls, mut failures, mut slow) = (0u64, 0u64, 0u64);
        for (i, bucket) in self.buckets.iter().enumerate() {
            let back = back(base, i as u64, len);
            let Some(expected) = current.checked_sub(back) else {
                continue;
            };
            let word = load_bucket(bucket);
            if word >> STAMP_SHIFT == stamp_of(expected) {
                let scale = scale_of(word);
                calls += counter(word, CALLS_SHIFT) << scale;
                failures += counter(word, FAILURES_SHIFT) << scale;
                slow += counter(word, 0) << scale;
            }
        }
        Counts::from_wide(calls, failures, slow)
    }

    /// Empties the window as seen from `now`: every bucket gets a stamp older than the window.
    /// Then drops the cached sum of the other buckets (see [`Others`]), so that a record that
    /// sees the reset (one of the generation it starts) does not use a sum taken before it.
    pub(crate) fn reset(&self, now: u64) {
        let current = now / self.bucket_nanos;
        let len = self.len();
        let base = current % len;
        for (i, bucket) in self.buckets.iter().enumerate() {
            // The epoch one window before the one this bucket would hold now.
            let stale = current.wrapping_sub(back(base, i as u64, len) + len);
            bucket.store(empty_bucket(stamp_of(stale)), Ordering::Release);
        }
        self.others.seq.fetch_add(2, Ordering::AcqRel);
        self.others.epoch.store(NO_EPOCH, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    std::thread_local! {
        /// Buckets read by this thread's windows.
        pub(super) static BUCKET_LOADS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
        /// Run once by this thread's next sum of the other buckets, between summing and publishing.
        pub(super) static BEFORE_PUBLISH: std::cell::Cell<Option<fn(&TimeWindow)>> =
            const { std::cell::Cell::new(None) };
    }

    #[test]
    fn a_record_reads_a_few_buckets_whatever_the_window() {
        // 1 ms window of 1,000 buckets of 1 µs, each holding calls.
        let w = TimeWindow::new(1_000, 1_000);
        for epoch in 4_001..=5_000u64 {
            w.record(epoch % 3 == 0, epoch % 5 == 0, epoch * 1_000);
        }
        // The epoch's first record has summed the buckets before it; later ones read their own.
        for (i, now) in [5_000_100, 5_000_500, 5_000_999].into_iter().enumerate() {
            BUCKET_LOADS.with(|loads| loads.set(0));
            let c = w.record(i == 1, false, now);
            let loads = BUCKET_LOADS.with(|loads| loads.get());
            assert!(loads <= 2, "a record read {loads} buckets");
            assert_eq!(c, w.counts(now));
        }
    }

    #[test]
    fn a_record_after_a_reset_does_not_use_the_sum_taken_before() {
        let w = TimeWindow::new(1_000, 2);
        w.record(true, false, 5_000);
        // The first record of epoch 6 sums the bucket of epoch 5.
        let c = w.record(false, false, 6_000);
        assert_eq!((c.calls, c.failures), (2, 1));
        w.reset(6_000);
        let c = w.record(false, false, 6_100);
        assert_eq!((c.calls, c.failures), (1, 0));
        assert_eq!(c, w.counts(6_100));
    }

    #[test]
    fn a_record_that_sums_across_a_reset_reads_the_emptied_window() {
        let w = TimeWindow::new(1_000, 2);
        w.record(true, false, 5_000);
        // The first record of epoch 6 sums the bucket of epoch 5, and a reset empties the window
        // before the sum is published: the sum holds a failure the reset took out.
        BEFORE_PUBLISH.with(|hook| hook.set(Some(|w| w.reset(6_000))));
        let c = w.record(false, false, 6_000);
        assert!(
            BEFORE_PUBLISH.with(|hook| hook.get()).is_none(),
            "no sum was taken"
        );
        assert_eq!(c, w.counts(6_000));
        assert_eq!(c, Counts::default());
    }

    #[test]
    fn a_record_sees_what_reading_every_bucket_sees() {
        // Records at times that move on by up to two windows (and now and then by much more,
        // past the stamps' range), and resets: on one thread a record's counts are the window's.
        let mut rng = 0x5EA_3A11u64;
        let mut next = move |bound: u64| {
            rng = rng
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (rng >> 33) % bound
        };
        for buckets in [1, 2, 3, 10, 64] {
            let w = TimeWindow::new(100, buckets);
            let mut now = 0u64;
            for _ in 0..5_000 {
                now += match next(100) {
                    0 => 100 * 40_000 + next(100 * 1_000),
                    _ => next(2 * 100 * buckets as u64 + 1),
                };
                if next(50) == 0 {
                    w.reset(now);
                }
                let c = w.record(next(3) == 0, next(4) == 0, now);
                assert_eq!(c, w.counts(now), "{buckets} buckets at {now}");
            }
        }
    }

    #[test]
    fn a_bucket_is_as_far_behind_as_its_epoch() {
        for len in 1..=40u64 {
            for current in 0..120u64 {
                for i in 0..len {
                    assert_eq!(back(current % len, i, len), (current + len - i) % len);
                }
            }
        }
    }

    #[test]
    fn packing_decodes_negative_fields() {
        let v = pack(3, 0, 2).wrapping_sub(pack(0, 1, 0));
        assert_eq!(
            decode(v),
            Counts {
                calls: 3,
                failures: 0,
                slow: 2
            }
        );
        let v = pack(1, 1, 1);
        assert_eq!(
            decode(v),
            Counts {
                calls: 1,
                failures: 1,
                slow: 1
            }
        );
        let big = MAX_COUNT_WINDOW as u64 - 1;
        assert_eq!(decode(pack(big, big, big)).slow, big as u32);
    }

    #[test]
    fn count_window_keeps_last_n() {
        let w = CountWindow::new(3);
        let record = |failure, slow| w.record(failure, slow, 0).unwrap();
        assert_eq!(record(true, false).failures, 1);
        record(false, true);
        let c = record(false, false);
        assert_eq!((c.calls, c.failures, c.slow), (3, 1, 1));
        let c = record(false, false); // evicts the failure
        assert_eq!((c.calls, c.failures, c.slow), (3, 0, 1));
        let c = record(true, false); // evicts the slow call
        assert_eq!((c.calls, c.failures, c.slow), (3, 1, 0));
        assert_eq!(w.recount(), w.counts());
        w.reset(1);
        assert_eq!(w.counts(), Counts::default());
        let c = w.record(true, true, 1).unwrap();
        assert_eq!((c.calls, c.failures, c.slow), (1, 1, 1));
    }

    #[test]
    fn count_window_drops_an_outcome_of_an_ended_generation() {
        let w = CountWindow::new(2);
        w.record(true, false, 0).unwrap();
        w.reset(1);
        // Late, from generation 0, into slots emptied for 1: dropped, wherever it lands.
        assert_eq!(w.record(true, false, 0), None);
        assert_eq!(w.record(false, false, 0), None);
        assert_eq!(w.counts(), Counts::default());
        let c = w.record(true, false, 1).unwrap();
        assert_eq!((c.calls, c.failures), (1, 1));
        // Generation 1's own outcomes replace each other as ever, as do those of a generation
        // 32 later, whose tag is the same.
        let c = w.record(false, false, 1).unwrap();
        assert_eq!((c.calls, c.failures), (2, 1));
        let c = w.record(false, false, 33).unwrap();
        assert_eq!((c.calls, c.failures), (2, 0));
        assert_eq!(w.recount(), w.counts());
    }

    #[test]
    fn time_window_expires_buckets() {
        // 1 s window in 10 buckets of 100 ms.
        let ms = 1_000_000;
        let w = TimeWindow::new(100 * ms, 10);
        assert_eq!(w.counts(0), Counts::default());
        w.record(true, false, 0);
        w.record(false, false, 50 * ms);
        let c = w.record(false, true, 950 * ms);
        assert_eq!((c.calls, c.failures, c.slow), (3, 1, 1));
        // At 1000 ms the first bucket (0..100 ms) has left the window.
        let c = w.counts(1000 * ms);
        assert_eq!((c.calls, c.failures, c.slow), (1, 0, 1));
        let c = w.counts(1999 * ms);
        assert_eq!(c.calls, 0);
        // Reusing a bucket restarts it.
        let c = w.record(true, false, 2000 * ms);
        assert_eq!((c.calls, c.failures), (1, 1));
        w.reset(2000 * ms);
        assert_eq!(w.counts(2000 * ms), Counts::default());
        let c = w.record(false, false, 2001 * ms);
        assert_eq!((c.calls, c.failures), (1, 0));
    }

    #[test]
    fn time_window_survives_stamp_wraparound() {
        let w = TimeWindow::new(1, 4);
        w.record(true, false, 1);
        // 65,536 epochs later (a multiple of the 16,384 stamps) the old stamp would alias;
        // restamping on the way prevents it.
        let c = w.record(false, false, 1 + 65_536);
        assert_eq!((c.calls, c.failures), (1, 0));
        for t in [2, 3, 4] {
            assert_eq!(w.counts(65_536 + t).failures, 0);
        }
    }

    #[test]
    fn time_window_samples_a_full_bucket_without_bias() {
        let w = TimeWindow::new(1_000, 1);
        for i in 0..1_000_000u32 {
            w.record(i % 4 == 0, i % 8 == 1, 10);
        }
        // Six standard errors: threads draw their own random bits, so runs differ.
        let c = w.counts(10);
        assert!(c.calls.abs_diff(1_000_000) < 30_000, "{c:?}");
        let rate = |n: u32| n as f64 / c.calls as f64;
        assert!((rate(c.failures) - 0.25).abs() < 0.015, "{c:?}");
        assert!((rate(c.slow) - 0.125).abs() < 0.015, "{c:?}");
    }

    #[test]
    fn threads_sample_independently() {
        // A full bucket, then one failure from each of 1,000 threads: each is kept with
        // probability 1/2 and then stands for 2, so about 1,000 failures (a standard deviation
        // of about 32).
        let w = TimeWindow::new(1_000_000_000, 1);
        for _ in 0..COUNT_MASK {
            w.record(false, false, 0);
        }
        std::thread::scope(|scope| {
            for _ in 0..1_000 {
                scope.spawn(|| w.record(true, false, 0));
            }
        });
        let c = w.counts(0);
        assert!(c.failures.abs_diff(1_000) < 200, "{c:?}");
    }

    #[test]
    fn a_call_behind_a_restarted_bucket_leaves_it_alone() {
        // 1 ms window of 1,000 buckets of 1 µs; the bucket of epoch 0 was restarted for
        // epoch 9,000.
        let w = TimeWindow::new(1_000, 1_000);
        w.record(true, false, 9_000_000);
        let before = w.counts(9_000_000);
        assert_eq!(before.calls, 1);
        // A recorder of epoch 0 that stalled past its window check: its bucket's stamp
        // (9,000 mod 2^14) reads as older than epoch 0 to a 14-bit comparison.
        w.newest.store(1, Ordering::Release);
        w.record(false, false, 0);
        w.newest.store(9_001, Ordering::Release);
        assert_eq!(w.counts(9_000_000), before);
    }

    #[test]
    fn time_window_weighs_busy_buckets_by_their_calls() {
        // Two buckets of 1 s: 100,000 successes, then 34,464 failures: 25.6 % failures.
        let s = 1_000_000_000;
        let w = TimeWindow::new(s, 2);
        for _ in 0..100_000 {
            w.record(false, false, 0);
        }
        for _ in 0..34_464 {
            w.record(true, false, s);
        }
        // Six standard errors: threads draw their own random bits, so runs differ.
        let c = w.counts(s);
        assert!(c.calls.abs_diff(134_464) < 3_500, "{c:?}");
        let rate = c.failures as f64 / c.calls as f64;
        assert!((rate - 34_464.0 / 134_464.0).abs() < 0.013, "{rate}");
        // Once the first bucket leaves the window, the second counts alone.
        let c = w.counts(2 * s);
        assert_eq!(c.failures, c.calls);
        assert!(c.calls.abs_diff(34_464) < 1_100, "{c:?}");
    }

    #[test]
    fn time_window_counts_are_exact_until_a_bucket_is_full() {
        let w = TimeWindow::new(1_000, 2);
        let n = COUNT_MASK as u32;
        for i in 0..n {
            w.record(i % 3 == 0, i % 5 == 0, 10);
        }
        for i in 0..n {
            w.record(i % 2 == 0, false, 1_010);
        }
        let c = w.counts(1_010);
        assert_eq!(
            c,
            Counts {
                calls: 2 * n,
                failures: n.div_ceil(3) + n.div_ceil(2),
                slow: n.div_ceil(5),
            }
        );
    }

    #[test]
    fn sampling_keeps_the_call_count_unbiased() {
        // Many buckets just past their first halvings: their mean count is the true count.
        let (windows, calls) = (200u64, 40_000u32);
        let mut total = 0u64;
        for _ in 0..windows {
            let w = TimeWindow::new(1_000, 1);
            for _ in 0..calls {
                w.record(false, false, 0);
            }
            total += w.counts(0).calls as u64;
        }
        let mean = total as f64 / windows as f64;
        assert!((mean / calls as f64 - 1.0).abs() < 0.002, "{mean}");
    }

    #[test]
    fn a_full_bucket_halves_its_counters_together() {
        let word = empty_bucket(7) | (3 << SCALE_SHIFT) | (COUNT_MASK << CALLS_SHIFT) | 5;
        // Top bits zero: the call is kept at scale 4; the low bit rounds the halves up.
        let next = with_call(word, true, false, &mut Some(1)).unwrap();
        assert_eq!(next >> STAMP_SHIFT, 7);
        assert_eq!(scale_of(next), 4);
        assert_eq!(counter(next, CALLS_SHIFT), COUNT_MASK.div_ceil(2) + 1);
        assert_eq!(counter(next, FAILURES_SHIFT), 1);
        assert_eq!(counter(next, 0), 3);
        let next = with_call(word, false, false, &mut Some(0)).unwrap();
        assert_eq!(counter(next, CALLS_SHIFT), COUNT_MASK / 2 + 1);
        assert_eq!(counter(next, 0), 2);
        // A top bit set: not kept.
        assert_eq!(with_call(word, true, false, &mut Some(1 << 60)), None);
        // The last scale stops counting.
        let last = empty_bucket(7) | (MAX_SCALE << SCALE_SHIFT) | (COUNT_MASK << CALLS_SHIFT);
        assert_eq!(with_call(last, true, false, &mut Some(0)), None);
    }

    #[test]
    fn sums_past_u32_are_scaled_down_together() {
        let w = TimeWindow::new(1, 1000);
        w.record(false, false, 999);
        let full = (MAX_SCALE << SCALE_SHIFT)
            | (COUNT_MASK << CALLS_SHIFT)
            | ((COUNT_MASK / 4) << FAILURES_SHIFT)
            | (COUNT_MASK / 2);
        for (epoch, bucket) in w.buckets.iter().enumerate() {
            bucket.store(
                empty_bucket(stamp_of(epoch as u64)) | full,
                Ordering::Release,
            );
        }
        let c = w.counts(999);
        assert!(c.calls > u32::MAX / 2, "{c:?}");
        let rate = |n: u32| n as f64 / c.calls as f64;
        assert!((rate(c.failures) - 0.25).abs() < 1e-3, "{c:?}");
        assert!((rate(c.slow) - 0.5).abs() < 1e-3, "{c:?}");
    }
}
