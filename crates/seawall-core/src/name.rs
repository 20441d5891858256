//! Policy instance names.
//!
//! Every policy (one timeout layer, one breaker, one bulkhead...) has a [`Name`]. It labels tracing
//! events, listener calls and metrics (the `name` label), so it should be low cardinality: name a
//! policy after the dependency it protects (`"users-api"`), never after a request.

use crate::config::ConfigError;
use std::{fmt, sync::Arc};

/// The longest name accepted, in bytes.
pub const MAX_LEN: usize = 64;

/// A validated, cheaply cloned policy instance name.
///
/// Names are 1 to 64 characters of ASCII letters, digits, `-`, `_`, `.`, `:` and `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Arc<str>);

impl Name {
    /// Validates `name`.
    ///
    /// ```
    /// use seawall_core::Name;
    /// assert_eq!(Name::new("users-api").unwrap().as_str(), "users-api");
    /// assert!(Name::new("").is_err());
    /// assert!(Name::new("has space").is_err());
    /// ```
    pub fn new(name: impl AsRef<str>) -> Result<Self, ConfigError> {
        Self::validate("name", name.as_ref())
    }

    /// Validates `name`, reporting `field` in the error.
    pub fn validate(field: &'static str, name: &str) -> Result<Self, ConfigError> {
        if name.is_empty() {
            return Err(ConfigError::invalid(field, "must not be empty", "\"\""));
        }
        if name.len() > MAX_LEN {
            return Err(ConfigError::invalid(
                field,
                "must be at most 64 bytes",
                format!("{} bytes", name.len()),
            ));
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '/');
        if !name.chars().all(ok) {
            return Err(ConfigError::invalid(
                field,
                "must contain only ASCII letters, digits, '-', '_', '.', ':' or '/'",
                format!("{name:?}"),
            ));
        }
        Ok(Name(Arc::from(name)))
    }

    /// The name used when none is given: the concern's own name (`"timeout"`, `"breaker"`, ...).
    pub fn default_for(concern: &'static str) -> Self {
        Name(Arc::from(concern))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn shared(&self) -> Arc<str> {
        self.0.clone()
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_names_naming_the_field() {
        let err = Name::new("").unwrap_err();
        assert_eq!(err.field(), "name");
        assert_eq!(err.to_string(), "name must not be empty, got \"\"");
        let err = Name::new("a".repeat(65)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "name must be at most 64 bytes, got 65 bytes"
        );
        let err = Name::new("a b").unwrap_err();
        assert!(
            err.to_string().starts_with("name must contain only"),
            "{err}"
        );
    }

    #[test]
    fn accepts_usual_names() {
        for n in [
            "users",
            "users-api",
            "svc.ns:8080",
            "a/b_c",
            &"x".repeat(64),
        ] {
            assert_eq!(Name::new(n).unwrap().as_str(), n);
        }
    }
}
