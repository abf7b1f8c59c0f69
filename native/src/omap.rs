//! A map that iterates in insertion order the way a Python dict does: a key removed and
//! added again goes to the end. The native core iterates its maps where the Python core
//! iterates its dicts (timer rebuilds, the changelog's net changes), so that both write
//! the same records in the same order.

use std::collections::HashMap;
use std::hash::Hash;

pub struct OMap<K, V> {
    slots: Vec<Option<(K, V)>>,
    index: HashMap<K, usize>,
}

impl<K: Hash + Eq + Clone, V> Default for OMap<K, V> {
    fn default() -> Self {
        Self { slots: Vec::new(), index: HashMap::new() }
    }
}

impl<K: Hash + Eq + Clone, V> OMap<K, V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        self.index.get(k).and_then(|&i| self.slots[i].as_ref().map(|(_, v)| v))
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = *self.index.get(k)?;
        self.slots[i].as_mut().map(|(_, v)| v)
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.index.contains_key(k)
    }

    /// Set the value; a new key goes to the end, an existing one keeps its place.
    pub fn insert(&mut self, k: K, v: V) {
        if let Some(&i) = self.index.get(&k) {
            self.slots[i] = Some((k, v));
            return;
        }
        self.index.insert(k.clone(), self.slots.len());
        self.slots.push(Some((k, v)));
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.index.remove(k)?;
        let (_, v) = self.slots[i].take()?;
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

    fn compact(&mut self) {
        self.slots.retain(|s| s.is_some());
        for (i, s) in self.slots.iter().enumerate() {
            if let Some((k, _)) = s {
                *self.index.get_mut(k).expect("indexed") = i;
            }
        }
    }
}
