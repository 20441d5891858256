//! Turning successive endpoint lists into inserts and removes.

use seawall_balance::EndpointMeta;
use std::{collections::HashSet, hash::Hash};

/// The set last published, and what changed when a new list arrives.
#[derive(Debug)]
pub(crate) struct Tracker<K> {
    current: HashSet<K>,
    /// Whether two equal keys also carry the same metadata; when not, the key is inserted again.
    same: fn(&K, &K) -> bool,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    /// A tracker that compares keys by equality alone.
    pub(crate) fn new() -> Self {
        Tracker {
            current: HashSet::new(),
            same: |_, _| true,
        }
    }

    /// A tracker that also inserts again a key whose weight or zone changed (a weight of 0 is
    /// the same as 1, as the balancer reads it).
    pub(crate) fn with_meta() -> Self
    where
        K: EndpointMeta,
    {
        Tracker {
            current: HashSet::new(),
            same: |a, b| a.weight().max(1) == b.weight().max(1) && a.zone() == b.zone(),
        }
    }

    /// What `next` changes against the set: the keys to insert (new, or equal to a key in the
    /// set but with other metadata), in the order of `next`, and the keys to remove, in no
    /// particular order. Of equal keys in `next`, the first counts. The set itself changes
    /// only as each change is [`inserted`](Self::inserted) or [`removed`](Self::removed).
    pub(crate) fn diff(&self, next: impl IntoIterator<Item = K>) -> (Vec<K>, Vec<K>) {
        let mut seen = HashSet::new();
        let mut inserted = Vec::new();
        for key in next {
            if seen.contains(&key) {
                continue;
            }
            if self
                .current
                .get(&key)
                .is_none_or(|old| !(self.same)(old, &key))
            {
                inserted.push(key.clone());
            }
            seen.insert(key);
        }
        let removed: Vec<K> = self
            .current
            .iter()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        (inserted, removed)
    }

    /// Which of the changes still to send from an earlier comparison `next` calls for too: for
    /// each key of `inserts`, whether `next` has it with the same metadata; for each key of
    /// `removes`, whether `next` leaves it out. Of equal keys in `next`, the first counts.
    pub(crate) fn still_called_for<'a>(
        &self,
        next: &[K],
        inserts: impl IntoIterator<Item = &'a K>,
        removes: impl IntoIterator<Item = &'a K>,
    ) -> (Vec<bool>, Vec<bool>)
    where
        K: 'a,
    {
        let mut listed = HashSet::with_capacity(next.len());
        for key in next {
            // `insert` keeps the key already there: the first of equal keys counts.
            listed.insert(key);
        }
        let inserts = inserts
            .into_iter()
            .map(|key| {
                listed
                    .get(key)
                    .is_some_and(|listed| (self.same)(listed, key))
            })
            .collect();
        let removes = removes
            .into_iter()
            .map(|key| !listed.contains(key))
            .collect();
        (inserts, removes)
    }

    /// Records `key` as in the set, with its metadata.
    pub(crate) fn inserted(&mut self, key: K) {
        self.current.replace(key);
    }

    /// Records `key` as out of the set.
    pub(crate) fn removed(&mut self, key: &K) {
        self.current.remove(key);
    }

    /// Replaces the set with `next`; returns what changed, as [`diff`](Self::diff) does.
    pub(crate) fn update(&mut self, next: impl IntoIterator<Item = K>) -> (Vec<K>, Vec<K>) {
        let (inserted, removed) = self.diff(next);
        for key in &inserted {
            self.inserted(key.clone());
        }
        for key in &removed {
            self.removed(key);
        }
        (inserted, removed)
    }

    /// How many keys the set holds.
    pub(crate) fn len(&self) -> usize {
        self.current.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_removes_and_ignores_duplicates() {
        let mut t = Tracker::new();
        assert_eq!(t.update([1, 2, 2, 3]), (vec![1, 2, 3], vec![]));
        let (added, mut removed) = t.update([3, 4]);
        removed.sort();
        assert_eq!((added, removed), (vec![4], vec![1, 2]));
        assert_eq!(t.update([4, 3]), (vec![], vec![]));
        assert_eq!(t.len(), 2);
        let (added, mut removed) = t.update([]);
        removed.sort();
        assert_eq!((added, removed), (vec![], vec![3, 4]));
    }

    /// A key equal by `id` alone, with a weight and a zone.
    #[derive(Debug, Clone)]
    struct Meta(u32, u32, Option<&'static str>);

    impl PartialEq for Meta {
        fn eq(&self, other: &Self) -> bool {
            self.0 == other.0
        }
    }

    impl Eq for Meta {}

    impl Hash for Meta {
        fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
            self.0.hash(state);
        }
    }

    impl EndpointMeta for Meta {
        fn weight(&self) -> u32 {
            self.1
        }

        fn zone(&self) -> Option<&str> {
            self.2
        }
    }

    fn parts(keys: Vec<Meta>) -> Vec<(u32, u32, Option<&'static str>)> {
        keys.into_iter().map(|k| (k.0, k.1, k.2)).collect()
    }

    #[test]
    fn a_changed_weight_or_zone_is_inserted_again_without_a_remove() {
        let mut t = Tracker::with_meta();
        let (added, removed) = t.update([Meta(1, 3, None), Meta(2, 1, None)]);
        assert_eq!(
            (parts(added), parts(removed)),
            (vec![(1, 3, None), (2, 1, None)], vec![])
        );
        let (added, removed) = t.update([Meta(1, 5, None), Meta(2, 1, Some("b"))]);
        assert_eq!(
            (parts(added), parts(removed)),
            (vec![(1, 5, None), (2, 1, Some("b"))], vec![])
        );
        // The metadata now published is the new one: the same list again changes nothing.
        let (added, removed) = t.update([Meta(2, 1, Some("b")), Meta(1, 5, None)]);
        assert_eq!((parts(added), parts(removed)), (vec![], vec![]));
        // Of equal keys in one list, the first counts.
        let (added, removed) =
            t.update([Meta(1, 7, None), Meta(1, 5, None), Meta(2, 1, Some("b"))]);
        assert_eq!((parts(added), parts(removed)), (vec![(1, 7, None)], vec![]));
        // A plain tracker does not look at metadata.
        let mut plain = Tracker::new();
        plain.update([Meta(1, 3, None)]);
        assert_eq!(parts(plain.update([Meta(1, 5, None)]).0), vec![]);
    }

    #[test]
    fn pending_changes_a_newer_list_still_calls_for() {
        let t = Tracker::with_meta();
        let next = [
            Meta(1, 2, None),
            Meta(1, 9, None),
            Meta(2, 1, None),
            Meta(4, 1, None),
        ];
        let inserts = [Meta(1, 2, None), Meta(2, 1, Some("b")), Meta(3, 1, None)];
        let removes = [Meta(4, 1, None), Meta(5, 1, None)];
        assert_eq!(
            t.still_called_for(&next, &inserts, &removes),
            // 1 with the first weight listed; 2 in another zone; 3 left out. 4 listed again.
            (vec![true, false, false], vec![false, true])
        );
        // Weights of 0 and 1 are the same, as the balancer reads them.
        let zero = [Meta(1, 0, None)];
        assert_eq!(
            t.still_called_for(&zero, &[Meta(1, 1, None)], &[]),
            (vec![true], vec![])
        );
    }

    #[test]
    fn a_weight_of_zero_is_the_same_as_one() {
        let mut t = Tracker::with_meta();
        t.update([Meta(1, 0, None)]);
        assert_eq!(parts(t.update([Meta(1, 1, None)]).0), vec![]);
        assert_eq!(parts(t.update([Meta(1, 0, None)]).0), vec![]);
        assert_eq!(parts(t.update([Meta(1, 2, None)]).0), vec![(1, 2, None)]);
    }
}
