use seawall_core::error::NotSent;
use std::fmt;

/// The bulkhead had no free permit: none was free when the call arrived (with `max_wait` zero),
/// or none freed within `max_wait`.
///
/// Zero-sized, so returning it as a [`BoxError`](seawall_core::BoxError) does not allocate.
/// Find it in an error chain with [`seawall_core::error::is`]. The call was rejected before the
/// inner service was called, so its [`source()`](std::error::Error::source) is a [`NotSent`]:
/// a retry above may send even a non-idempotent request again (see
/// [`seawall_core::error::not_sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full(());

impl Full {
    pub(crate) fn new() -> Self {
        Full(())
    }
}

impl fmt::Display for Full {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bulkhead is full")
    }
}

/// The marker every [`Full`] has as its source.
static NOT_SENT: NotSent = NotSent::new();

impl std::error::Error for Full {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&NOT_SENT)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use seawall_core::error::is_not_sent;

    #[test]
    fn zero_sized_and_not_sent() {
        assert_eq!(std::mem::size_of::<Full>(), 0);
        assert_eq!(Full::new().to_string(), "bulkhead is full");
        assert!(is_not_sent(&Full::new()));
        let boxed: seawall_core::BoxError = Full::new().into();
        assert!(is_not_sent(&*boxed));
    }
}
