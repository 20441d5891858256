//! Configuration validation.
//!
//! Every seawall builder validates what it is given and returns [`ConfigError`] naming the field,
//! the rule broken and the value given, for example
//! `failure_rate_threshold must be in (0, 1], got 1.5`. No user-supplied value makes a builder
//! panic. The `check_*` helpers here are what the builders use, so the messages read alike.

use std::{borrow::Cow, fmt::Debug, time::Duration};

/// A configuration value was rejected by a builder.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A value broke a rule.
    #[error("{field} {rule}, got {value}")]
    Invalid {
        /// The field, as the builder method that sets it is named.
        field: &'static str,
        /// The rule broken, phrased to follow the field name ("must be in (0, 1]").
        rule: Cow<'static, str>,
        /// The value given, formatted.
        value: String,
    },
    /// A required value was not given.
    #[error("{field} is required")]
    Missing {
        /// The field, as the builder method that sets it is named.
        field: &'static str,
    },
    /// Two values contradict each other.
    #[error("{field} {rule}")]
    Conflict {
        /// The field whose value conflicts.
        field: &'static str,
        /// What it conflicts with ("must not exceed max_delay (1s), got 2s").
        rule: String,
    },
}

impl ConfigError {
    /// A value broke a rule.
    pub fn invalid(
        field: &'static str,
        rule: impl Into<Cow<'static, str>>,
        value: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            field,
            rule: rule.into(),
            value: value.into(),
        }
    }

    /// A required value was not given.
    pub fn missing(field: &'static str) -> Self {
        ConfigError::Missing { field }
    }

    /// Two values contradict each other.
    pub fn conflict(field: &'static str, rule: impl Into<String>) -> Self {
        ConfigError::Conflict {
            field,
            rule: rule.into(),
        }
    }

    /// The field the error is about.
    pub fn field(&self) -> &'static str {
        match self {
            ConfigError::Invalid { field, .. }
            | ConfigError::Missing { field }
            | ConfigError::Conflict { field, .. } => field,
        }
    }
}

/// `value` must lie in `(0, 1]`: a rate or a share.
pub fn check_rate(field: &'static str, value: f64) -> Result<f64, ConfigError> {
    if value > 0.0 && value <= 1.0 {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            field,
            "must be in (0, 1]",
            value.to_string(),
        ))
    }
}

/// `value` must lie in `[0, 1]`.
pub fn check_fraction(field: &'static str, value: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            field,
            "must be in [0, 1]",
            value.to_string(),
        ))
    }
}

/// `value` must be finite and at least `min`.
pub fn check_at_least_f64(field: &'static str, value: f64, min: f64) -> Result<f64, ConfigError> {
    if value.is_finite() && value >= min {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            field,
            format!("must be a finite number of at least {min}"),
            value.to_string(),
        ))
    }
}

/// `value` must lie in `min..=max`.
pub fn check_range<T>(field: &'static str, value: T, min: T, max: T) -> Result<T, ConfigError>
where
    T: PartialOrd + Debug,
{
    if value >= min && value <= max {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            field,
            format!("must be in {min:?}..={max:?}"),
            format!("{value:?}"),
        ))
    }
}

/// `value` must be greater than zero.
pub fn check_positive_duration(
    field: &'static str,
    value: Duration,
) -> Result<Duration, ConfigError> {
    if value > Duration::ZERO {
        Ok(value)
    } else {
        Err(ConfigError::invalid(
            field,
            "must be greater than zero",
            format!("{value:?}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_field_rule_and_value() {
        let err = check_rate("failure_rate_threshold", 1.5).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failure_rate_threshold must be in (0, 1], got 1.5"
        );
        assert_eq!(err.field(), "failure_rate_threshold");

        let err = check_rate("failure_rate_threshold", f64::NAN).unwrap_err();
        assert_eq!(
            err.to_string(),
            "failure_rate_threshold must be in (0, 1], got NaN"
        );

        let err = check_fraction("jitter", -0.1).unwrap_err();
        assert_eq!(err.to_string(), "jitter must be in [0, 1], got -0.1");

        let err = check_range("permitted_probes", 0u32, 1, 1000).unwrap_err();
        assert_eq!(
            err.to_string(),
            "permitted_probes must be in 1..=1000, got 0"
        );

        let err = check_positive_duration("wait_duration", Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            "wait_duration must be greater than zero, got 0ns"
        );

        let err = check_at_least_f64("multiplier", f64::INFINITY, 1.0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "multiplier must be a finite number of at least 1, got inf"
        );

        assert_eq!(
            ConfigError::missing("timeout").to_string(),
            "timeout is required"
        );
        assert_eq!(
            ConfigError::conflict("base_delay", "must not exceed max_delay (1s), got 2s")
                .to_string(),
            "base_delay must not exceed max_delay (1s), got 2s"
        );
    }

    #[test]
    fn accepts_values_in_range() {
        assert_eq!(check_rate("r", 1.0), Ok(1.0));
        assert_eq!(check_fraction("f", 0.0), Ok(0.0));
        assert_eq!(check_range("n", 5u32, 1, 10), Ok(5));
        assert!(check_positive_duration("d", Duration::from_nanos(1)).is_ok());
    }
}
