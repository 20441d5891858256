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
    ///
    /// Listeners hear of a change after it is made, on the thread of the call whose sample made
    /// it: another thread can make the next change and report it first, so changes made at nearly
    /// the same time may be heard out of order. Order them by `generation`: of the changes
    /// heard, the one with the highest generation holds the current limit.
    /// [`BulkheadHandle::limit`](crate::BulkheadHandle::limit) always shows it.
    LimitChanged {
        /// The limit before.
        from: usize,
        /// The limit now.
        to: usize,
        /// The change's place in the order the limit moved: 1 for the bulkhead's first change,
        /// and one more for each change after it, so a gap means a change not heard yet.
        generation: u64,
    },
}
