//! Sliding windows of call outcomes, lock-free and O(1) to record into.
//!
//! Two kinds, as in Resilience4j's `COUNT_BASED` and `TIME_BASED` windows:
//!
//! - count windows: the last `N` calls. A ring of `N` one-byte slots and one packed aggregate word
//!   (calls, failures and slow calls, 21 bits each). Recording claims the next slot with a
//!   `fetch_add`, swaps the outcome in, and applies *new minus evicted* to the aggregate with one
//!   more `fetch_add` (both skipped when the slot already holds the same outcome, the steady state
//!   of a healthy dependency), so the aggregate always equals the sum of the slots once every recorder has
//!   finished, under any interleaving. Between a recorder's swap and its add, another recorder that
//!   wrapped around the ring may have subtracted the same slot first, so a field can be briefly
//!   negative: the aggregate is decoded as balanced signed digits and clamped, never misread.
//! - time windows: the calls of the last `T`, in `B` buckets of `T / B`. Each bucket is one word
//!   holding a 16-bit epoch stamp and three 16-bit counters, updated by compare-and-swap: a bucket
//!   whose stamp is older than the recorder's epoch is restarted in the same CAS, so no count is lost
//!   at a bucket boundary. Reading sums the `B` buckets whose stamps fall inside the window. A bucket
//!   that reaches 65,535 calls halves its three counters before adding (rates are kept, counts become
//!   approximate beyond that).
//!
//! Neither kind takes a lock or allocates after construction. Time enters as nanoseconds since the
//! breaker's start, given by the caller.

use crate::sync::{AtomicU64, AtomicU8, Ordering, Padded};

/// Calls, failures and slow calls in a window.
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
    /// Records one counted outcome at `now` (nanoseconds) and returns the window's counts after it.
    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool, now: impl FnOnce() -> u64) -> Counts {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => w.record(failure, slow, now()),
        }
    }

    /// The counts at `now`.
    pub(crate) fn counts(&self, now: impl FnOnce() -> u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now()),
        }
    }

    /// Empties the window.
    pub(crate) fn reset(&self, now: impl FnOnce() -> u64) {
        match self {
            Window::Count(w) => w.reset(),
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

    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool) -> Counts {
        let slot = SLOT_CALL | (failure as u8 * SLOT_FAILURE) | (slow as u8 * SLOT_SLOW);
        let index = self.head.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64;
        let cell = &self.slots[index as usize];
        // The common case (a success replacing a success) changes nothing: skip both writes. The
        // aggregate equals the sum of the slots either way, since a slot and the aggregate only
        // ever change together.
        if cell.load(Ordering::Acquire) == slot {
            return self.counts();
        }
        let evicted = cell.swap(slot, Ordering::AcqRel);
        let delta = slot_value(slot).wrapping_sub(slot_value(evicted));
        let after = self
            .aggregate
            .fetch_add(delta, Ordering::AcqRel)
            .wrapping_add(delta);
        decode(after)
    }

    #[inline]
    pub(crate) fn counts(&self) -> Counts {
        decode(self.aggregate.load(Ordering::Acquire))
    }

    /// Empties every slot, taking each one's contribution out of the aggregate, so concurrent
    /// recorders cannot make the aggregate drift from the slots.
    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            let evicted = slot.swap(0, Ordering::AcqRel);
            if evicted != 0 {
                self.aggregate
                    .fetch_sub(slot_value(evicted), Ordering::AcqRel);
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

const STAMP_SHIFT: u32 = 48;
const COUNT_MASK: u64 = 0xFFFF;

/// The most calls one time-window bucket counts: a full bucket halves its counters.
pub(crate) const MAX_BUCKET_CALLS: u32 = COUNT_MASK as u32;

/// The most buckets a time window may have (stamps are 16 bits; twice the window must fit).
pub(crate) const MAX_BUCKETS: u32 = 1000;

/// The calls of the last `T`, in buckets.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[AtomicU64]>,
    /// The full epoch each bucket was last restarted for: tells a bucket whose 16-bit stamp
    /// matches by coincidence after a long idle period from a fresh one.
    epochs: Box<[AtomicU64]>,
    bucket_nanos: u64,
    /// One more than the newest epoch recorded into, 0 before the first record.
    newest: AtomicU64,
}

#[inline]
fn stamp_of(epoch: u64) -> u64 {
    epoch & 0xFFFF
}

#[inline]
fn bucket_word(stamp: u64, calls: u64, failures: u64, slow: u64) -> u64 {
    (stamp << STAMP_SHIFT) | (calls << 32) | (failures << 16) | slow
}

/// Whether a bucket stamped `stamp` is older than `epoch` (16-bit wrapping comparison).
#[inline]
fn is_older(stamp: u64, epoch: u64) -> bool {
    let d = stamp_of(epoch).wrapping_sub(stamp) & 0xFFFF;
    d != 0 && d < 0x8000
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
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool, now: u64) -> Counts {
        let epoch = now / self.bucket_nanos;
        if self.newest.load(Ordering::Acquire) <= epoch {
            let previous = self.newest.fetch_max(epoch + 1, Ordering::AcqRel);
            if previous <= epoch {
                self.advance(previous, epoch);
            }
        }
        let add = bucket_word(0, 1, failure as u64, slow as u64);
        let index = (epoch % self.len()) as usize;
        let bucket = &self.buckets[index];
        let mut current = bucket.load(Ordering::Acquire);
        loop {
            let stamp = current >> STAMP_SHIFT;
            let restart = is_older(stamp, epoch);
            if restart {
                // Published before the restart, so a concurrent cleaner that sees the restarted
                // bucket knows it is fresh.
                self.epochs[index].fetch_max(epoch, Ordering::AcqRel);
            }
            let next = if stamp == stamp_of(epoch) {
                let mut word = current;
                if (word >> 32) & COUNT_MASK == COUNT_MASK {
                    // Full: halve the three counters, which keeps the rates.
                    let halve = |shift: u32| ((word >> shift) & COUNT_MASK) / 2;
                    word = bucket_word(stamp, halve(32), halve(16), halve(0));
                }
                word + add
            } else if restart {
                bucket_word(stamp_of(epoch), 0, 0, 0) + add
            } else {
                // A later epoch owns this bucket: this call is already outside its window.
                break;
            };
            match bucket.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(actual) => current = actual,
            }
        }
        self.counts(now)
    }

    /// Time moved on from `previous` (one more than the newest epoch recorded) to `epoch`: restamp
    /// the buckets of the epochs skipped in between, so that every bucket's stamp stays within two
    /// windows of the newest epoch and a 16-bit stamp is never mistaken for a much older one.
    fn advance(&self, previous: u64, epoch: u64) {
        let len = self.len();
        if previous + len <= epoch + 1 {
            // Nothing recorded for a whole window (or ever): every bucket is stale, whatever its
            // stamp says after a long idle period. Keep only a bucket restarted for the epoch it
            // would hold now or a later one: concurrent recorders may already have written it,
            // at this epoch or, when this cleaning runs late, at a later one.
            for (i, bucket) in self.buckets.iter().enumerate() {
                let expected = epoch - (epoch + len - i as u64 % len) % len;
                let stale = stamp_of(expected.wrapping_sub(len));
                let mut current = bucket.load(Ordering::Acquire);
                while current >> STAMP_SHIFT != stale
                    && !self.restarted_since(i, current >> STAMP_SHIFT, expected)
                {
                    match bucket.compare_exchange_weak(
                        current,
                        bucket_word(stale, 0, 0, 0),
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
                    bucket_word(stamp_of(skipped), 0, 0, 0),
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
        let mut counts = Counts::default();
        if newest == 0 || current >= newest - 1 + len {
            return counts;
        }
        for (i, bucket) in self.buckets.iter().enumerate() {
            let back = (current + len - i as u64 % len) % len;
            let Some(expected) = current.checked_sub(back) else {
                continue;
            };
            let word = bucket.load(Ordering::Acquire);
            if word >> STAMP_SHIFT == stamp_of(expected) {
                counts.calls += ((word >> 32) & COUNT_MASK) as u32;
                counts.failures += ((word >> 16) & COUNT_MASK) as u32;
                counts.slow += (word & COUNT_MASK) as u32;
            }
        }
        counts
    }

    /// Empties the window as seen from `now`: every bucket gets a stamp older than the window.
    pub(crate) fn reset(&self, now: u64) {
        let current = now / self.bucket_nanos;
        let len = self.len();
        for (i, bucket) in self.buckets.iter().enumerate() {
            let back = (current + len - i as u64 % len) % len;
            // The epoch one window before the one this bucket would hold now.
            let stale = current.wrapping_sub(back + len);
            bucket.store(bucket_word(stamp_of(stale), 0, 0, 0), Ordering::Release);
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

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
        assert_eq!(w.record(true, false).failures, 1);
        w.record(false, true);
        let c = w.record(false, false);
        assert_eq!((c.calls, c.failures, c.slow), (3, 1, 1));
        let c = w.record(false, false); // evicts the failure
        assert_eq!((c.calls, c.failures, c.slow), (3, 0, 1));
        let c = w.record(true, false); // evicts the slow call
        assert_eq!((c.calls, c.failures, c.slow), (3, 1, 0));
        assert_eq!(w.recount(), w.counts());
        w.reset();
        assert_eq!(w.counts(), Counts::default());
        let c = w.record(true, true);
        assert_eq!((c.calls, c.failures, c.slow), (1, 1, 1));
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
        // 65,536 epochs later the old stamp would alias; restamping on the way prevents it.
        let c = w.record(false, false, 1 + 65_536);
        assert_eq!((c.calls, c.failures), (1, 0));
        for t in [2, 3, 4] {
            assert_eq!(w.counts(65_536 + t).failures, 0);
        }
    }

    #[test]
    fn time_window_halves_full_buckets() {
        let w = TimeWindow::new(1_000, 1);
        for i in 0..70_000u32 {
            w.record(i % 4 == 0, false, 10);
        }
        let c = w.counts(10);
        assert!(c.calls < 65_536 && c.calls > 30_000, "{c:?}");
        let rate = c.failures as f64 / c.calls as f64;
        assert!((rate - 0.25).abs() < 0.01, "{rate}");
    }
}
