//! A map that iterates in insertion order the way a Python dict does: a key removed and
//! added again goes to the end. The native core iterates its maps where the Python core
//! iterates its dicts (timer rebuilds, the changelog's net changes), so that both write
//! the same records in the same order.
//!
//! Built as CPython builds a dict: the entries in a vector in insertion order, and a hash
//! table of indices into it (hashbrown's HashTable), so each key is stored once.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};

use hashbrown::HashTable;

pub struct OMap<K, V> {
    slots: Vec<Option<(K, V)>>,
    index: HashTable<u32>, // slot indices (4 bytes, not 8, a key in the table)
    hasher: RandomState,
}

impl<K: Hash + Eq, V> Default for OMap<K, V> {
    fn default() -> Self {
        Self { slots: Vec::new(), index: HashTable::new(), hasher: RandomState::new() }
    }
}

impl<K: Hash + Eq, V> OMap<K, V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn find(&self, k: &K) -> Option<usize> {
        let slots = &self.slots;
        self.index.find(self.hasher.hash_one(k), |&i| slots[i as usize].as_ref().is_some_and(|(key, _)| key == k))
            .map(|&i| i as usize)
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.find(k).and_then(|i| self.slots[i].as_ref().map(|(_, v)| v))
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.find(k)?;
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.find(k).is_some()
    }

    /// Set the value; a new key goes to the end, an existing one keeps its place.
    pub fn insert(&mut self, k: K, v: V) {
        if let Some(i) = self.find(&k) {
            self.slots[i] = Some((k, v));
            return;
        }
        let hash = self.hasher.hash_one(&k);
        let (slots, hasher) = (&self.slots, &self.hasher);
        let i = u32::try_from(slots.len()).expect("fewer than 2^32 slots");
        self.index.insert_unique(hash, i, |&j| hasher.hash_one(&slots[j as usize].as_ref().expect("indexed").0));
        self.slots.push(Some((k, v)));
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let slots = &self.slots;
        let entry = self.index.find_entry(self.hasher.hash_one(k), |&i| {
            slots[i as usize].as_ref().is_some_and(|(key, _)| key == k)
        }).ok()?;
        let (i, _) = entry.remove();
        let (_, v) = self.slots[i as usize].take()?;
        if self.slots.len() > 32 && self.index.len() * 2 < self.slots.len() {
            self.compact();
        }
        Some(v)
    }

    pub fn clear(&mut self) {
        self.slots.clear();
        self.index.clear();
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().filter_map(|s| s.as_ref().map(|(k, v)| (k, v)))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.slots.iter_mut().filter_map(|s| s.as_mut().map(|(k, v)| (&*k, v)))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.iter_mut().map(|(_, v)| v)
    }

    /// Drop the emptied slots, keeping the order, and index the rest again.
    fn compact(&mut self) {
        self.slots.retain(|s| s.is_some());
        self.slots.shrink_to(self.slots.len() * 3 / 2);
        self.index.clear();
        let (slots, hasher) = (&self.slots, &self.hasher);
        for (i, s) in (0u32..).zip(slots.iter()) {
            let k = &s.as_ref().expect("kept").0;
            self.index.insert_unique(hasher.hash_one(k), i, |&j| hasher.hash_one(&slots[j as usize].as_ref().expect("kept").0));
        }
    }
}
