//! Turning successive endpoint lists into inserts and removes.

use std::{collections::HashSet, hash::Hash};

/// The set last published, and what changed when a new list arrives.
#[derive(Debug)]
pub(crate) struct Tracker<K> {
    current: HashSet<K>,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    pub(crate) fn new() -> Self {
        Tracker {
            current: HashSet::new(),
        }
    }

    /// Replaces the set with `next`; returns the keys added and the keys removed, in a stable
    /// order (the order of `next` for additions).
    pub(crate) fn update(&mut self, next: impl IntoIterator<Item = K>) -> (Vec<K>, Vec<K>) {
        let mut seen = HashSet::new();
        let mut added = Vec::new();
        for key in next {
            if seen.insert(key.clone()) && !self.current.contains(&key) {
                added.push(key);
            }
        }
        let removed: Vec<K> = self
            .current
            .iter()
            .filter(|k| !seen.contains(*k))
            .cloned()
            .collect();
        self.current = seen;
        (added, removed)
    }

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
}
