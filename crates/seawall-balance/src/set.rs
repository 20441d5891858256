//! The endpoint set: an immutable snapshot rebuilt once for each set of discovery changes applied
//! together (see `Shared::apply_batch`).

use crate::{endpoint::Endpoint, picker::Picker};
use std::{
    cmp::Ordering,
    collections::BinaryHeap,
    fmt,
    sync::{atomic::AtomicUsize, Arc},
};

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
    /// How many of the endpoints health keeps out of the pick. Counted before the set is
    /// published and kept up, under the health lock, while it is the set in force: a pick judges
    /// panic mode on the count and the size of the same set.
    pub(crate) unhealthy: AtomicUsize,
}

impl<K, S> Snapshot<K, S> {
    pub(crate) fn empty() -> Self {
        Snapshot {
            endpoints: Vec::new(),
            ring: Vec::new(),
            schedule: Vec::new(),
            local_zone: u16::MAX,
            unhealthy: AtomicUsize::new(0),
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
            unhealthy: AtomicUsize::new(0),
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
    /// Slots the endpoint has had so far.
    turns: u32,
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

fn edf_schedule<K, S>(endpoints: &[Arc<Endpoint<K, S>>]) -> Vec<u32> {
    let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
    edf_order(&weights)
}

/// Earliest deadline first: an endpoint of weight `w` is due every `1/w`, first at half that; the
/// schedule lists the endpoints' indices in the order they fall due over one cycle (the sum of the
/// weights, at most `MAX_SCHEDULE` slots). Starting each endpoint half a period in interleaves
/// them: weights 5, 1 and 1 give `0 0 0 1 2 0 0`, not `0 0 0 0 0 1 2`.
fn edf_order(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    let len = total.min(MAX_SCHEDULE) as usize;
    let mut heap: BinaryHeap<Due> = weights
        .iter()
        .enumerate()
        .map(|(i, &w)| Due {
            deadline: 0.5 / f64::from(w),
            index: i as u32,
            turns: 0,
        })
        .collect();
    let mut schedule = Vec::with_capacity(len);
    while schedule.len() < len {
        let Some(mut due) = heap.pop() else { break };
        schedule.push(due.index);
        // Worked out afresh each time rather than summed, so equal deadlines stay equal.
        due.turns += 1;
        due.deadline = (f64::from(due.turns) + 0.5) / f64::from(weights[due.index as usize]);
        heap.push(due);
    }
    schedule
}

#[cfg(test)]
mod tests {
    use super::edf_order;

    #[test]
    fn a_heavy_endpoint_is_interleaved_with_the_light_ones() {
        assert_eq!(edf_order(&[5, 1, 1]), [0, 0, 0, 1, 2, 0, 0]);
        assert_eq!(edf_order(&[2, 1]), [0, 1, 0]);
        assert_eq!(edf_order(&[1, 1, 1]), [0, 1, 2]);
    }

    #[test]
    fn every_endpoint_gets_its_weight_in_slots() {
        let weights = [7, 3, 1, 12, 5];
        let order = edf_order(&weights);
        assert_eq!(order.len(), 28);
        for (i, &w) in weights.iter().enumerate() {
            assert_eq!(
                order.iter().filter(|&&j| j as usize == i).count(),
                w as usize
            );
        }
        // No endpoint gets more than two slots in a row.
        let longest = order
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap();
        assert!(longest <= 2, "{order:?}");
    }

    #[test]
    fn no_endpoints_no_schedule() {
        assert!(edf_order(&[]).is_empty());
    }
}
