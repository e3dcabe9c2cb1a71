//! A map with a maximum size, for state kept per client in process memory
//! (rate-limit budgets, strikes, bans of the memory backend, the edge's
//! fallback counters). A flood of distinct clients must cost bounded
//! memory: when the map is full, entries that no longer matter (stale) are
//! dropped first, then the least valuable ones (lowest rank) until a
//! sixteenth of the room is free again, so the O(n) clean-up runs at most
//! once per n/16 insertions.

use std::collections::HashMap;
use std::hash::Hash;

/// See the module docs.
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    map: HashMap<K, V>,
    max: usize,
}

impl<K: Eq + Hash + Clone, V> BoundedMap<K, V> {
    /// An empty map holding at most `max` entries (at least 16).
    pub fn new(max: usize) -> Self {
        Self {
            map: HashMap::new(),
            max: max.max(16),
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.get(k)
    }

    pub fn get_mut<Q>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.get_mut(k)
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.map.remove(k)
    }

    pub fn retain(&mut self, f: impl FnMut(&K, &mut V) -> bool) {
        self.map.retain(f);
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.map.values()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.map.iter()
    }

    /// The entry under `k`, set to `v` when absent (an existing value is
    /// kept, the caller overwrites it through the returned reference),
    /// making room first when the map is full (see the module docs).
    pub fn insert<R: Ord>(
        &mut self,
        k: K,
        v: V,
        stale: impl Fn(&V) -> bool,
        rank: impl Fn(&V) -> R,
    ) -> &mut V {
        if !self.map.contains_key(&k) && self.map.len() >= self.max {
            self.make_room(stale, rank);
        }
        self.map.entry(k).or_insert(v)
    }

    /// The entry under `k`, created with `make` (making room as `insert`
    /// does) when absent.
    pub fn get_or_insert_with<Q, R: Ord>(
        &mut self,
        k: &Q,
        make: impl FnOnce() -> V,
        stale: impl Fn(&V) -> bool,
        rank: impl Fn(&V) -> R,
    ) -> &mut V
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        if !self.map.contains_key(k) {
            if self.map.len() >= self.max {
                self.make_room(stale, rank);
            }
            self.map.insert(k.to_owned(), make());
        }
        self.map
            .get_mut(k)
            .expect("the entry was just made present")
    }

    fn make_room<R: Ord>(&mut self, stale: impl Fn(&V) -> bool, rank: impl Fn(&V) -> R) {
        let target = self.max - self.max / 16;
        self.map.retain(|_, v| !stale(v));
        if self.map.len() <= target {
            return;
        }
        let excess = self.map.len() - target;
        let mut ranked: Vec<(R, K)> = self.map.iter().map(|(k, v)| (rank(v), k.clone())).collect();
        ranked.select_nth_unstable_by(excess - 1, |a, b| a.0.cmp(&b.0));
        for (_, k) in ranked.into_iter().take(excess) {
            self.map.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_grows_past_its_maximum_and_drops_stale_then_lowest_ranked() {
        let mut m: BoundedMap<u32, u32> = BoundedMap::new(64);
        for i in 0..10_000u32 {
            m.insert(i, i, |v| *v < 10, |v| *v);
            assert!(m.len() <= 64);
        }
        // The newest (highest ranked) entries survive.
        assert!(m.get(&9_999).is_some());
        assert!(m.get(&0).is_none());
        // Stale entries go first, even when they rank high.
        let mut m: BoundedMap<u32, (bool, u32)> = BoundedMap::new(16);
        for i in 0..16u32 {
            m.insert(i, (i == 15, i), |v| v.0, |v| v.1);
        }
        m.insert(100, (false, 0), |v| v.0, |v| v.1);
        assert!(m.get(&15).is_none(), "the stale entry was dropped");
        assert!(m.get(&0).is_some(), "no live entry had to go");
        assert_eq!(m.len(), 16);
        let v = m.get_or_insert_with(&7, || (false, 0), |v| v.0, |v| v.1);
        assert_eq!(v.1, 7, "an existing entry is returned, not replaced");
    }
}
