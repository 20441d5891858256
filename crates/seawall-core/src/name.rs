//! Policy instance names.
//!
//! Every policy (one timeout layer, one breaker, one bulkhead...) has a [`Name`]. It labels tracing
//! events, listener calls and metrics (the `name` label), so it should be low cardinality: name a
//! policy after the dependency it protects (`"users-api"`), never after a request.

use crate::config::ConfigError;
use std::{
    collections::HashSet,
    fmt,
    sync::{Mutex, OnceLock},
};

/// The longest name accepted, in bytes.
pub const MAX_LEN: usize = 64;

/// How many distinct names a process may create. Names label metrics, so they must be few; a
/// program that builds names from request data is stopped here with a [`ConfigError`].
pub const MAX_DISTINCT: usize = 4096;

/// A validated policy instance name. `Copy`: passing it around costs nothing.
///
/// Names are 1 to 64 characters of ASCII letters, digits, `-`, `_`, `.`, `:` and `/`. Each distinct
/// name is stored once for the life of the process (as a metrics registry keeps its labels), so the
/// hot path of a policy never touches a reference count to report under its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(&'static str);

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
        intern(field, name).map(Name)
    }

    /// The name a seawall concern uses when none is given: its own name (`"timeout"`,
    /// `"breaker"`, ...).
    ///
    /// Unlike [`Name::new`], this neither checks the name in release builds nor counts it toward
    /// [`MAX_DISTINCT`], so it is only for a fixed literal that `new` would accept. A name from
    /// configuration or request data goes through [`Name::new`].
    #[doc(hidden)]
    pub const fn default_for(concern: &'static str) -> Self {
        debug_assert!(
            is_valid(concern.as_bytes()),
            "an invalid default policy name"
        );
        Name(concern)
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &'static str {
        self.0
    }
}

/// Whether `name` follows the rules [`Name::validate`] checks, in a `const` context.
const fn is_valid(name: &[u8]) -> bool {
    if name.is_empty() || name.len() > MAX_LEN {
        return false;
    }
    let mut i = 0;
    while i < name.len() {
        let c = name[i];
        if !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':' | b'/')) {
            return false;
        }
        i += 1;
    }
    true
}

fn intern(field: &'static str, name: &str) -> Result<&'static str, ConfigError> {
    static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let mut names = NAMES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(&known) = names.get(name) {
        return Ok(known);
    }
    if names.len() >= MAX_DISTINCT {
        return Err(ConfigError::invalid(
            field,
            "must be one of at most 4096 distinct policy names per process (names label metrics; do not build them from request data)",
            format!("{name:?}"),
        ));
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    Ok(leaked)
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        self.0
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
    fn the_const_check_agrees_with_validate() {
        let long = "a".repeat(65);
        for name in [
            "",
            "timeout",
            "per_try_timeout",
            "a b",
            "é",
            "svc.ns:8080",
            "a/b_c",
            &long[..64],
            &long,
        ] {
            assert_eq!(
                is_valid(name.as_bytes()),
                Name::new(name).is_ok(),
                "{name:?}"
            );
        }
    }

    #[test]
    fn same_name_is_stored_once() {
        let a = Name::new("stored-once").unwrap();
        let b = Name::new(String::from("stored-once")).unwrap();
        assert_eq!(a, b);
        assert!(std::ptr::eq(a.as_str(), b.as_str()));
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
