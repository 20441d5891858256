//! The endpoint set: an immutable snapshot rebuilt on each discovery change.

use crate::{endpoint::Endpoint, picker::Picker};
use std::{cmp::Ordering, collections::BinaryHeap, fmt, sync::Arc};

/// The longest weighted round robin schedule; heavier sets are scaled down to fit.
const MAX_SCHEDULE: u64 = 1 << 16;

/// One version of the endpoint set, with what the picker precomputes from it.
pub(crate) struct Snapshot<K, S> {
    pub(crate) endpoints: Vec<Arc<Endpoint<K, S>>>,
    /// Consistent hashing ring: (point, endpoint index), sorted by point.
    pub(crate) ring: Vec<(u64, u32)>,
    /// Weighted round robin schedule: endpoint indices in earliest-deadline-first order.
    pub(crate) schedule: Vec<u32>,
    /// The local zone's id, `u16::MAX` when the picker is not zone-aware.
    pub(crate) local_zone: u16,
}

impl<K, S> Snapshot<K, S> {
    pub(crate) fn empty() -> Self {
        Snapshot {
            endpoints: Vec::new(),
            ring: Vec::new(),
            schedule: Vec::new(),
            local_zone: u16::MAX,
        }
    }

    pub(crate) fn build(
        endpoints: Vec<Arc<Endpoint<K, S>>>,
        picker: &Picker,
        local_zone: u16,
    ) -> Self {
        let ring = match picker {
            Picker::ConsistentHash { replicas } => ring(&endpoints, *replicas),
            _ => Vec::new(),
        };
        let schedule = match picker {
            Picker::WeightedRoundRobin => edf_schedule(&endpoints),
            _ => Vec::new(),
        };
        Snapshot {
            endpoints,
            ring,
            schedule,
            local_zone,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.endpoints.len()
    }
}

impl<K: fmt::Debug, S> fmt::Debug for Snapshot<K, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.endpoints.iter().map(|e| &e.key))
            .finish()
    }
}

/// A Ketama-style ring: `replicas` points per endpoint, placed by hashing the endpoint's key hash
/// with the replica number, so an endpoint's points do not depend on the other endpoints.
fn ring<K, S>(endpoints: &[Arc<Endpoint<K, S>>], replicas: u32) -> Vec<(u64, u32)> {
    let mut ring = Vec::with_capacity(endpoints.len() * replicas as usize);
    for (i, ep) in endpoints.iter().enumerate() {
        for r in 0..replicas {
            let point = crate::endpoint::mix(ep.key_hash ^ crate::endpoint::mix(u64::from(r) + 1));
            ring.push((point, i as u32));
        }
    }
    ring.sort_unstable();
    ring
}

#[derive(PartialEq)]
struct Due {
    deadline: f64,
    index: u32,
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    // Reversed: BinaryHeap is a max-heap and the earliest deadline must come first.
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then_with(|| other.index.cmp(&self.index))
    }
}

/// Earliest deadline first: an endpoint of weight `w` is due every `1/w`; the schedule lists the
/// endpoints in the order they fall due over one cycle (the sum of the weights, at most
/// `MAX_SCHEDULE` slots).
fn edf_schedule<K, S>(endpoints: &[Arc<Endpoint<K, S>>]) -> Vec<u32> {
    if endpoints.is_empty() {
        return Vec::new();
    }
    let total: u64 = endpoints.iter().map(|e| u64::from(e.weight)).sum();
    let len = total.min(MAX_SCHEDULE) as usize;
    let mut heap: BinaryHeap<Due> = endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| Due {
            deadline: 1.0 / f64::from(e.weight),
            index: i as u32,
        })
        .collect();
    let mut schedule = Vec::with_capacity(len);
    while schedule.len() < len {
        let Some(mut due) = heap.pop() else { break };
        schedule.push(due.index);
        due.deadline += 1.0 / f64::from(endpoints[due.index as usize].weight);
        heap.push(due);
    }
    schedule
}
