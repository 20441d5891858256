/// What a bulkhead reports to its listeners (see [`BulkheadConfigBuilder::on_event`]).
///
/// [`BulkheadConfigBuilder::on_event`]: crate::BulkheadConfigBuilder::on_event
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BulkheadEvent {
    /// A call was rejected with [`Full`](crate::Full).
    Rejected {
        /// Whether the call waited `max_wait` before it was rejected (`false`: rejected at once).
        waited: bool,
    },
    /// An adaptive limit moved.
    LimitChanged {
        /// The limit before.
        from: usize,
        /// The limit now.
        to: usize,
    },
}
