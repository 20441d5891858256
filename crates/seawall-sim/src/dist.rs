//! Latency distributions for simulated backends.

use rand::{rngs::SmallRng, Rng};
use rand_distr::{Distribution, LogNormal};
use serde::Deserialize;
use std::time::Duration;

/// How long a backend takes to answer, sampled per call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Latency {
    /// Always `ms`.
    Constant {
        /// Milliseconds.
        ms: f64,
    },
    /// Uniform in `[min_ms, max_ms]`.
    Uniform {
        /// Lower bound, milliseconds.
        min_ms: f64,
        /// Upper bound, milliseconds.
        max_ms: f64,
    },
    /// Whole milliseconds, uniform in `min_ms..max_ms` (`max_ms` excluded), as tower's balance
    /// example draws them (`Duration::from_millis(rng.random_range(0..max_ms))`): with
    /// `max_ms = 1` every call takes 0 ms.
    UniformInt {
        /// Lower bound, milliseconds.
        min_ms: u64,
        /// Upper bound (excluded), milliseconds.
        max_ms: u64,
    },
    /// Log-normal with the given median and shape `sigma` (1.0 is a heavy tail).
    LogNormal {
        /// Median, milliseconds.
        median_ms: f64,
        /// Standard deviation of the underlying normal.
        sigma: f64,
    },
    /// `slow` with probability `slow_fraction`, otherwise `fast`: a bimodal, heavy-tailed service.
    Bimodal {
        /// The common case.
        fast: Box<Latency>,
        /// The rare slow case.
        slow: Box<Latency>,
        /// Probability of the slow case, in `[0, 1]`.
        slow_fraction: f64,
    },
}

/// The longest latency or delay the simulator draws, in milliseconds (an hour): [`check_ms`]
/// holds the latencies, fault delays and fixed hedge delay a scenario gives to it, and
/// [`duration_ms`] clamps every drawn latency to it. Other durations (timeouts, periods,
/// intervals, fault windows) are not held to it.
pub const MAX_MS: f64 = 3_600_000.0;

/// Checks a duration in milliseconds: a number in `[0, MAX_MS]`, naming it otherwise.
pub fn check_ms(name: &str, v: f64) -> Result<(), String> {
    if (0.0..=MAX_MS).contains(&v) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be a number of milliseconds in [0, {MAX_MS}], got {v}"
        ))
    }
}

/// `ms` milliseconds as a duration, clamped to `[0, MAX_MS]` (a log-normal tail can exceed any
/// bound).
pub fn duration_ms(ms: f64) -> Duration {
    let ms = if ms.is_nan() {
        0.0
    } else {
        ms.clamp(0.0, MAX_MS)
    };
    Duration::from_secs_f64(ms / 1000.0)
}

impl Latency {
    /// Checks the parameters, naming the first bad one.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Latency::Constant { ms } => check_ms("ms", *ms),
            Latency::Uniform { min_ms, max_ms } => {
                check_ms("min_ms", *min_ms)?;
                check_ms("max_ms", *max_ms)?;
                if min_ms > max_ms {
                    return Err(format!(
                        "min_ms ({min_ms}) must not exceed max_ms ({max_ms})"
                    ));
                }
                Ok(())
            }
            Latency::UniformInt { min_ms, max_ms } => {
                if *max_ms as f64 > MAX_MS {
                    return Err(format!(
                        "max_ms must be a number of milliseconds in [1, {MAX_MS}], got {max_ms}"
                    ));
                }
                if min_ms >= max_ms {
                    return Err(format!(
                        "min_ms ({min_ms}) must be below max_ms ({max_ms}), which is excluded"
                    ));
                }
                Ok(())
            }
            Latency::LogNormal { median_ms, sigma } => {
                if !(sigma.is_finite() && *sigma >= 0.0) {
                    return Err(format!("sigma must be a finite number >= 0, got {sigma}"));
                }
                if !(*median_ms > 0.0 && *median_ms <= MAX_MS) {
                    return Err(format!(
                        "median_ms must be a number of milliseconds in (0, {MAX_MS}], got {median_ms}"
                    ));
                }
                Ok(())
            }
            Latency::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => {
                if !(0.0..=1.0).contains(slow_fraction) {
                    return Err(format!(
                        "slow_fraction must be in [0, 1], got {slow_fraction}"
                    ));
                }
                fast.validate()?;
                slow.validate()
            }
        }
    }

    /// Draws one latency.
    pub fn sample(&self, rng: &mut SmallRng) -> Duration {
        let ms = match self {
            Latency::Constant { ms } => *ms,
            Latency::Uniform { min_ms, max_ms } => {
                if min_ms == max_ms {
                    *min_ms
                } else {
                    rng.random_range(*min_ms..=*max_ms)
                }
            }
            Latency::UniformInt { min_ms, max_ms } => {
                return Duration::from_millis(rng.random_range(*min_ms..*max_ms))
            }
            Latency::LogNormal { median_ms, sigma } => LogNormal::new(median_ms.ln(), *sigma)
                .map(|d| d.sample(rng))
                .unwrap_or(*median_ms),
            Latency::Bimodal {
                fast,
                slow,
                slow_fraction,
            } => {
                return if rng.random_bool(*slow_fraction) {
                    slow.sample(rng)
                } else {
                    fast.sample(rng)
                }
            }
        };
        duration_ms(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn constant_and_uniform_bounds() {
        let mut rng = SmallRng::seed_from_u64(1);
        assert_eq!(
            Latency::Constant { ms: 5.0 }.sample(&mut rng),
            Duration::from_millis(5)
        );
        let u = Latency::Uniform {
            min_ms: 1.0,
            max_ms: 3.0,
        };
        for _ in 0..1000 {
            let d = u.sample(&mut rng);
            assert!(d >= Duration::from_millis(1) && d <= Duration::from_millis(3));
        }
    }

    #[test]
    fn uniform_int_draws_whole_milliseconds_below_the_maximum() {
        let mut rng = SmallRng::seed_from_u64(4);
        let zero = Latency::UniformInt {
            min_ms: 0,
            max_ms: 1,
        };
        for _ in 0..100 {
            assert_eq!(zero.sample(&mut rng), Duration::ZERO);
        }
        let u = Latency::UniformInt {
            min_ms: 0,
            max_ms: 10,
        };
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let d = u.sample(&mut rng);
            assert_eq!(d.subsec_nanos() % 1_000_000, 0, "{d:?}");
            seen[d.as_millis() as usize] += 1;
        }
        assert!(seen.iter().all(|&n| (800..1_200).contains(&n)), "{seen:?}");
        let empty = Latency::UniformInt {
            min_ms: 5,
            max_ms: 5,
        };
        assert!(empty.validate().unwrap_err().contains("min_ms"));
    }

    #[test]
    fn lognormal_median_is_close() {
        let mut rng = SmallRng::seed_from_u64(2);
        let d = Latency::LogNormal {
            median_ms: 10.0,
            sigma: 1.0,
        };
        let mut v: Vec<f64> = (0..20_001)
            .map(|_| d.sample(&mut rng).as_secs_f64() * 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        let median = v[10_000];
        assert!((9.0..11.0).contains(&median), "median {median}");
    }

    #[test]
    fn validation_names_the_parameter() {
        let bad = Latency::Uniform {
            min_ms: 5.0,
            max_ms: 1.0,
        };
        assert!(bad.validate().unwrap_err().contains("min_ms"));
        let bad = Latency::Bimodal {
            fast: Box::new(Latency::Constant { ms: 1.0 }),
            slow: Box::new(Latency::Constant { ms: 100.0 }),
            slow_fraction: 2.0,
        };
        assert!(bad.validate().unwrap_err().contains("slow_fraction"));
        for bad in [
            Latency::Constant { ms: 1e30 },
            Latency::Constant { ms: -1.0 },
            Latency::Constant { ms: f64::NAN },
        ] {
            assert!(
                bad.validate().unwrap_err().starts_with("ms must be"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_tail_past_the_ceiling_is_clamped_not_a_panic() {
        let mut rng = SmallRng::seed_from_u64(3);
        let wide = Latency::LogNormal {
            median_ms: 10.0,
            sigma: 1000.0,
        };
        assert!(wide.validate().is_ok());
        for _ in 0..100 {
            assert!(wide.sample(&mut rng) <= Duration::from_secs(3600));
        }
    }
}
