//! Backoff: how long to wait before each retry.
//!
//! Three strategies, all capped by a maximum delay (see AWS's "Exponential Backoff And Jitter",
//! Brooker 2015, for why jitter matters: without it, clients that failed together retry together):
//!
//! | strategy | delay before retry `n` (0-based) |
//! |---|---|
//! | [`Backoff::constant`] | `delay` |
//! | [`Backoff::exponential`] (default, full jitter) | uniform in `[0, min(max_delay, base × multiplier^n)]` |
//! | `exponential` with [`Jitter::Equal`] | half of the ceiling plus uniform in `[0, ceiling / 2]` |
//! | `exponential` with [`Jitter::None`] | `min(max_delay, base × multiplier^n)` |
//! | [`Backoff::decorrelated`] | `min(max_delay, uniform in [base, 3 × previous])`, the first previous being `base` |
//!
//! Randomness comes from a seeded `SmallRng` (from `rand`), so a test that fixes the seed
//! sees the same delays every run:
//!
//! ```
//! use seawall_retry::backoff::Backoff;
//! use std::time::Duration;
//!
//! let backoff = Backoff::exponential(Duration::from_millis(100))
//!     .with_max_delay(Duration::from_secs(1));
//! let first: Vec<Duration> = backoff.delays(42).take(5).collect();
//! let again: Vec<Duration> = backoff.delays(42).take(5).collect();
//! assert_eq!(first, again);
//! // Full jitter: each delay lies in [0, min(1s, 100ms × 2^n)].
//! for (n, d) in first.iter().enumerate() {
//!     assert!(*d <= Duration::from_millis(100 << n).min(Duration::from_secs(1)));
//! }
//! ```

use rand::{rngs::SmallRng, Rng, SeedableRng};
use seawall_core::{config, ConfigError};
use std::time::Duration;

/// The default base delay of [`Backoff::default`]: 50 ms.
pub const DEFAULT_BASE: Duration = Duration::from_millis(50);
/// The default cap on any one delay: 2 s.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(2);
/// The default growth factor of exponential backoff: 2.
pub const DEFAULT_MULTIPLIER: f64 = 2.0;

/// How exponential backoff randomises its delays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Jitter {
    /// No randomness: exactly the capped exponential delay. Clients that failed together retry
    /// together; use only when there is one client.
    None,
    /// Uniform in `[0, ceiling]` (the default): the least total work and the best spread.
    Full,
    /// `ceiling / 2` plus uniform in `[0, ceiling / 2]`: never retries almost at once.
    Equal,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Constant,
    Exponential { multiplier: f64, jitter: Jitter },
    Decorrelated,
}

/// A backoff strategy: the delays between attempts. See the [module docs](self).
///
/// Built with [`constant`](Backoff::constant), [`exponential`](Backoff::exponential) or
/// [`decorrelated`](Backoff::decorrelated) and refined with the `with_*` methods. Values are
/// checked when the layer that uses the backoff is built.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    kind: Kind,
    base: Duration,
    max_delay: Duration,
}

impl Backoff {
    /// The same delay before every retry. Zero retries at once.
    pub fn constant(delay: Duration) -> Self {
        Backoff {
            kind: Kind::Constant,
            base: delay,
            max_delay: delay.max(DEFAULT_MAX_DELAY),
        }
    }

    /// Exponential backoff with full jitter: retry `n` waits a uniform random time in
    /// `[0, min(max_delay, base × 2^n)]`. The default strategy, with a base of 50 ms and a
    /// `max_delay` of 2 s.
    pub fn exponential(base: Duration) -> Self {
        Backoff {
            kind: Kind::Exponential {
                multiplier: DEFAULT_MULTIPLIER,
                jitter: Jitter::Full,
            },
            base,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }

    /// Decorrelated jitter: each delay is drawn uniformly from `[base, 3 × previous delay]` and
    /// then capped at `max_delay` (2 s unless set), so once the delays have grown a share of them
    /// is the cap itself. Spreads retries about as well as full jitter while never retrying
    /// sooner than `base`.
    pub fn decorrelated(base: Duration) -> Self {
        Backoff {
            kind: Kind::Decorrelated,
            base,
            max_delay: DEFAULT_MAX_DELAY,
        }
    }

    /// Caps every delay at `max_delay`.
    pub fn with_max_delay(mut self, max_delay: Duration) -> Self {
        self.max_delay = max_delay;
        self
    }

    /// The growth factor of exponential backoff (2 unless set). No effect on other strategies.
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        if let Kind::Exponential { jitter, .. } = self.kind {
            self.kind = Kind::Exponential { multiplier, jitter };
        }
        self
    }

    /// The jitter of exponential backoff ([`Jitter::Full`] unless set). No effect on other
    /// strategies.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        if let Kind::Exponential { multiplier, .. } = self.kind {
            self.kind = Kind::Exponential { multiplier, jitter };
        }
        self
    }

    /// The base delay.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap on any one delay.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// Checks the values; every layer does this when it is built.
    ///
    /// ```
    /// use seawall_retry::backoff::Backoff;
    /// use std::time::Duration;
    ///
    /// let err = Backoff::exponential(Duration::from_secs(5))
    ///     .with_max_delay(Duration::from_secs(1))
    ///     .validate()
    ///     .unwrap_err();
    /// assert_eq!(err.to_string(), "max_delay must be at least the base delay (5s), got 1s");
    ///
    /// // The default cap is 2 s: a longer base needs a cap of its own.
    /// let err = Backoff::exponential(Duration::from_secs(5)).validate().unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "max_delay must be at least the base delay (5s), got 2s \
    ///      (2s unless set with with_max_delay)"
    /// );
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.kind {
            Kind::Constant => {}
            Kind::Exponential { multiplier, .. } => {
                config::check_positive_duration("base", self.base)?;
                config::check_at_least_f64("multiplier", multiplier, 1.0)?;
            }
            Kind::Decorrelated => {
                config::check_positive_duration("base", self.base)?;
            }
        }
        if self.max_delay < self.base {
            // The cap may be the default, never set by hand: say where it may have come from.
            let hint = if self.max_delay == DEFAULT_MAX_DELAY {
                " (2s unless set with with_max_delay)"
            } else {
                ""
            };
            return Err(ConfigError::conflict(
                "max_delay",
                format!(
                    "must be at least the base delay ({:?}), got {:?}{hint}",
                    self.base, self.max_delay
                ),
            ));
        }
        Ok(())
    }

    /// The delays of one request's retries, drawn from a random generator seeded with `seed`.
    ///
    /// The iterator never ends; take as many as there are retries.
    pub fn delays(&self, seed: u64) -> Delays {
        Delays {
            backoff: *self,
            rng: SmallRng::seed_from_u64(seed),
            retry: 0,
            previous: self.base,
        }
    }
}

impl Default for Backoff {
    /// Exponential with full jitter, base 50 ms, multiplier 2, capped at 2 s.
    fn default() -> Self {
        Backoff::exponential(DEFAULT_BASE)
    }
}

/// The delays of one request's retries; see [`Backoff::delays`].
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    rng: SmallRng,
    retry: u32,
    previous: Duration,
}

impl Delays {
    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let b = &self.backoff;
        let cap = nanos(b.max_delay);
        let delay = match b.kind {
            Kind::Constant => nanos(b.base).min(cap),
            Kind::Exponential { multiplier, jitter } => {
                let ceiling = exponential_ceiling(nanos(b.base), multiplier, self.retry, cap);
                match jitter {
                    Jitter::None => ceiling,
                    Jitter::Full => self.rng.random_range(0..=ceiling),
                    Jitter::Equal => {
                        let half = ceiling / 2;
                        (ceiling - half) + self.rng.random_range(0..=half)
                    }
                }
            }
            Kind::Decorrelated => {
                // Drawn up to three times the previous delay, then capped (not drawn below the
                // cap), as Brooker's formula has it.
                let base = nanos(b.base).min(cap);
                let upper = nanos(self.previous).saturating_mul(3).max(base);
                self.rng.random_range(base..=upper).min(cap)
            }
        };
        self.retry = self.retry.saturating_add(1);
        let delay = Duration::from_nanos(delay);
        self.previous = delay;
        delay
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// `min(cap, base × multiplier^retry)` in nanoseconds, without overflow.
fn exponential_ceiling(base: u64, multiplier: f64, retry: u32, cap: u64) -> u64 {
    let exp = i32::try_from(retry).unwrap_or(i32::MAX);
    let value = base as f64 * multiplier.powi(exp);
    if !value.is_finite() || value >= cap as f64 {
        cap
    } else {
        value as u64
    }
}

/// A duration in nanoseconds, saturating at `u64::MAX` (584 years).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn constant_is_constant_and_capped() {
        let b = Backoff::constant(100 * MS);
        assert!(b.validate().is_ok());
        assert!(b.delays(1).take(10).all(|d| d == 100 * MS));
        let b = Backoff::constant(Duration::ZERO);
        assert!(b.validate().is_ok());
        assert!(b.delays(1).take(3).all(|d| d.is_zero()));
    }

    #[test]
    fn exponential_without_jitter_doubles_up_to_cap() {
        let b = Backoff::exponential(10 * MS)
            .with_jitter(Jitter::None)
            .with_max_delay(100 * MS);
        let got: Vec<_> = b.delays(0).take(6).collect();
        assert_eq!(
            got,
            [10 * MS, 20 * MS, 40 * MS, 80 * MS, 100 * MS, 100 * MS]
        );
        let b = b.with_multiplier(3.0);
        let got: Vec<_> = b.delays(0).take(4).collect();
        assert_eq!(got, [10 * MS, 30 * MS, 90 * MS, 100 * MS]);
    }

    #[test]
    fn full_and_equal_jitter_bounds() {
        for seed in 0..200 {
            let b = Backoff::exponential(10 * MS).with_max_delay(200 * MS);
            for (n, d) in b.delays(seed).take(8).enumerate() {
                let ceiling = (10 * MS * (1 << n)).min(200 * MS);
                assert!(d <= ceiling, "retry {n}: {d:?} > {ceiling:?}");
            }
            let b = b.with_jitter(Jitter::Equal);
            for (n, d) in b.delays(seed).take(8).enumerate() {
                let ceiling = (10 * MS * (1 << n)).min(200 * MS);
                assert!(d <= ceiling && d >= ceiling / 2, "retry {n}: {d:?}");
            }
        }
    }

    #[test]
    fn decorrelated_bounds() {
        for seed in 0..200 {
            let b = Backoff::decorrelated(10 * MS).with_max_delay(500 * MS);
            let mut previous = 10 * MS;
            for d in b.delays(seed).take(12) {
                assert!(d >= 10 * MS, "{d:?}");
                assert!(d <= (previous * 3).min(500 * MS).max(10 * MS), "{d:?}");
                previous = d;
            }
        }
    }

    /// Brooker's decorrelated jitter: `sleep = min(cap, random_between(base, sleep × 3))`. The
    /// draw spans `[base, 3 × previous]` even when that reaches past the cap, and is then capped,
    /// so once the delays have grown a share of them is exactly the cap.
    #[test]
    fn decorrelated_draws_up_to_three_times_the_previous_delay_then_caps() {
        for seed in 0..50 {
            let (base, cap) = (nanos(10 * MS), nanos(100 * MS));
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut sleep = base;
            let want: Vec<Duration> = (0..20)
                .map(|_| {
                    sleep = rng.random_range(base..=sleep * 3).min(cap);
                    Duration::from_nanos(sleep)
                })
                .collect();
            let b = Backoff::decorrelated(10 * MS).with_max_delay(100 * MS);
            let got: Vec<Duration> = b.delays(seed).take(20).collect();
            assert_eq!(got, want, "seed {seed}");
        }
        // With a cap below three times the base, at least half the draws land on the cap.
        let b = Backoff::decorrelated(10 * MS).with_max_delay(20 * MS);
        let at_cap = b.delays(1).take(100).filter(|d| *d == 20 * MS).count();
        assert!(at_cap >= 40, "{at_cap} of 100 delays at the cap");
    }

    /// Full jitter draws uniformly from `[0, ceiling]` and equal jitter adds a draw from
    /// `[0, ceiling / 2]` to the other half of the ceiling (the larger half, for an odd number
    /// of nanoseconds), where the ceiling is `min(cap, base × multiplier^n)`: one draw a delay,
    /// from the generator seeded with the seed. A multiplier of 1.5 gives an odd ceiling at the
    /// eighth retry (170 859 375 ns) before the cap is reached.
    #[test]
    fn full_and_equal_jitter_draw_from_the_documented_ranges() {
        let (base, cap) = (10 * MS, 200 * MS);
        // base × 1.5^n, exact in nanoseconds up to n = 7, then capped.
        let ceilings: Vec<u64> = (0..12)
            .map(|n| {
                let exact = 10_000_000 * 3u64.pow(n) / 2u64.pow(n);
                exact.min(nanos(cap))
            })
            .collect();
        assert_eq!(ceilings[7], 170_859_375);
        assert_eq!(ceilings[8], nanos(cap));
        let exponential = Backoff::exponential(base)
            .with_multiplier(1.5)
            .with_max_delay(cap);
        for seed in 0..200 {
            let mut rng = SmallRng::seed_from_u64(seed);
            let want: Vec<Duration> = ceilings
                .iter()
                .map(|&c| Duration::from_nanos(rng.random_range(0..=c)))
                .collect();
            let got: Vec<Duration> = exponential.delays(seed).take(12).collect();
            assert_eq!(got, want, "full jitter, seed {seed}");

            let mut rng = SmallRng::seed_from_u64(seed);
            let want: Vec<Duration> = ceilings
                .iter()
                .map(|&c| Duration::from_nanos(c.div_ceil(2) + rng.random_range(0..=c / 2)))
                .collect();
            let b = exponential.with_jitter(Jitter::Equal);
            let got: Vec<Duration> = b.delays(seed).take(12).collect();
            assert_eq!(got, want, "equal jitter, seed {seed}");
        }
    }

    /// Over many seeds, the delay before one retry spreads across its whole range: full jitter
    /// averages half the ceiling and reaches down to about zero, equal jitter averages three
    /// quarters and reaches down to about half, both at a step below the cap and at one far
    /// past it (where only the cap bounds the draw).
    #[test]
    fn jittered_delays_spread_over_their_whole_range() {
        const SEEDS: u64 = 10_000;
        let b = Backoff::exponential(100 * MS).with_max_delay(Duration::from_secs(1));
        // Retry 0: ceiling 100 ms. Retry 6: 6.4 s uncapped, 1 s capped.
        for (retry, ceiling) in [(0, 100 * MS), (6, Duration::from_secs(1))] {
            for (jitter, mean_share, low_share) in
                [(Jitter::Full, 0.5, 0.0), (Jitter::Equal, 0.75, 0.5)]
            {
                let draws: Vec<f64> = (0..SEEDS)
                    .map(|seed| {
                        let d = b.with_jitter(jitter).delays(seed).nth(retry).unwrap();
                        d.as_secs_f64() / ceiling.as_secs_f64()
                    })
                    .collect();
                let what = format!("{jitter:?} jitter, retry {retry}");
                let mean = draws.iter().sum::<f64>() / SEEDS as f64;
                let min = draws.iter().copied().fold(f64::INFINITY, f64::min);
                let max = draws.iter().copied().fold(0.0, f64::max);
                assert!(
                    (mean - mean_share).abs() < 0.01,
                    "{what}: mean {mean} of the ceiling"
                );
                assert!(
                    min >= low_share && min < low_share + 0.01,
                    "{what}: min {min}"
                );
                assert!(max <= 1.0 && max > 0.99, "{what}: max {max}");
                let at_ceiling = draws.iter().filter(|&&d| d == 1.0).count();
                assert!(
                    at_ceiling <= 1,
                    "{what}: {at_ceiling} draws exactly at the ceiling"
                );
            }
        }
    }

    #[test]
    fn seeds_repeat_and_differ() {
        let b = Backoff::default();
        let a: Vec<_> = b.delays(7).take(5).collect();
        assert_eq!(a, b.delays(7).take(5).collect::<Vec<_>>());
        assert_ne!(a, b.delays(8).take(5).collect::<Vec<_>>());
    }

    #[test]
    fn huge_values_do_not_overflow() {
        let b = Backoff::exponential(Duration::from_secs(1))
            .with_multiplier(1e300)
            .with_jitter(Jitter::None)
            .with_max_delay(Duration::MAX);
        let got: Vec<_> = b.delays(0).take(3).collect();
        assert_eq!(got[0], Duration::from_secs(1));
        assert!(got[2] >= got[1]);
        let b = Backoff::decorrelated(Duration::from_secs(1)).with_max_delay(Duration::MAX);
        assert_eq!(b.delays(3).take(200).count(), 200);
    }

    #[test]
    fn validation_names_fields() {
        let e = Backoff::exponential(Duration::ZERO).validate().unwrap_err();
        assert_eq!(e.field(), "base");
        let e = Backoff::exponential(MS)
            .with_multiplier(0.5)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "multiplier");
        let e = Backoff::exponential(MS)
            .with_multiplier(f64::NAN)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "multiplier");
        let e = Backoff::decorrelated(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "base");
        let e = Backoff::decorrelated(10 * MS)
            .with_max_delay(MS)
            .validate()
            .unwrap_err();
        assert_eq!(e.field(), "max_delay");
    }
}
