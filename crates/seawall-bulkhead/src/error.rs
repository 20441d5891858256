use std::fmt;

/// The bulkhead had no free permit: none was free when the call arrived (with `max_wait` zero),
/// or none freed within `max_wait`.
///
/// Zero-sized, so returning it as a [`BoxError`](seawall_core::BoxError) does not allocate.
/// Find it in an error chain with [`seawall_core::error::is`].
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

impl std::error::Error for Full {}
