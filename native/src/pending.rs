//! The pending payments by order_id, in insertion order as a Python dict keeps them (see
//! omap.rs for why the order matters), with each order_id and its packed entry in one
//! allocation: memory per pending payment is a target (docs/benchmarks.md).
//!
//! Built like OMap: the slots in insertion order, and a hash table of u32 indices into
//! them. A slot is one of
//!
//! - packed: one boxed slice, `[order_id's length, LEB128][order_id][packed entry]`, the
//!   entry as compact.py packs it (at least its 9-byte header; pack.rs);
//! - fresh (read since the last commit): the order_id and the payment as decoded, boxed;
//! - free: an empty slice (its entry went; dropped when the slots are compacted).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::entries::{Fresh, Pending};

enum Slot {
    Stored(Box<[u8]>),
    Fresh(Box<FreshSlot>),
}

struct FreshSlot {
    key: String,
    fresh: Fresh,
}

// A slot is two words: the fresh box goes where the slice's length is, its null pointer says which.
const _: () = assert!(std::mem::size_of::<Slot>() == 16);

/// The order_id and the rest of a stored slot.
fn split(b: &[u8]) -> (&[u8], &[u8]) {
    let (mut n, mut shift, mut at) = (0usize, 0, 0);
    loop {
        let byte = b[at];
        n |= ((byte & 0x7f) as usize) << shift;
        at += 1;
        if byte & 0x80 == 0 {
            break;
        }
        shift += 7;
    }
    (&b[at..at + n], &b[at + n..])
}

fn stored(key: &[u8], entry: &[u8]) -> Box<[u8]> {
    let mut out = Vec::with_capacity(key.len() + entry.len() + 2);
    let mut n = key.len();
    while n >= 0x80 {
        out.push((n & 0x7f) as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(key);
    out.extend_from_slice(entry);
    out.into_boxed_slice()
}

impl Slot {
    fn free() -> Self {
        Slot::Stored(Box::default())
    }

    fn is_free(&self) -> bool {
        matches!(self, Slot::Stored(b) if b.is_empty())
    }

    /// Its order_id and entry; None when free.
    fn get(&self) -> Option<(&[u8], Pending<'_>)> {
        match self {
            Slot::Stored(b) if b.is_empty() => None,
            Slot::Stored(b) => {
                let (key, entry) = split(b);
                Some((key, Pending::Packed(entry)))
            }
            Slot::Fresh(f) => Some((f.key.as_bytes(), Pending::Fresh(&f.fresh))),
        }
    }

    fn key(&self) -> Option<&[u8]> {
        self.get().map(|(k, _)| k)
    }
}

pub struct PendingMap {
    slots: Vec<Slot>,
    index: HashTable<u32>,
    hasher: RandomState,
}

impl Default for PendingMap {
    fn default() -> Self {
        Self { slots: Vec::new(), index: HashTable::new(), hasher: RandomState::new() }
    }
}

impl PendingMap {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn find(&self, key: &str) -> Option<usize> {
        let (slots, key) = (&self.slots, key.as_bytes());
        self.index.find(self.hasher.hash_one(key), |&i| slots[i as usize].key() == Some(key)).map(|&i| i as usize)
    }

    pub fn get(&self, key: &str) -> Option<Pending<'_>> {
        self.find(key).and_then(|i| self.slots[i].get()).map(|(_, e)| e)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// A payment read since the last commit; a new key goes to the end, an existing one
    /// keeps its place.
    pub fn insert_fresh(&mut self, key: &str, fresh: Fresh) {
        self.insert(key, Slot::Fresh(Box::new(FreshSlot { key: key.to_string(), fresh })));
    }

    /// A packed entry (pack.rs: at least its 9-byte header), likewise.
    pub fn insert_packed(&mut self, key: &str, entry: &[u8]) {
        debug_assert!(entry.len() > 9, "a packed entry");
        self.insert(key, Slot::Stored(stored(key.as_bytes(), entry)));
    }

    fn insert(&mut self, key: &str, slot: Slot) {
        if let Some(i) = self.find(key) {
            self.slots[i] = slot;
            return;
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        let i = u32::try_from(slots.len()).expect("fewer than 2^32 slots");
        self.index.insert_unique(hasher.hash_one(key.as_bytes()), i, |&j| {
            hasher.hash_one(slots[j as usize].key().expect("indexed"))
        });
        self.slots.push(slot);
    }

    /// Set a flag bit of the entry; its flags after, or None if there is none.
    pub fn set_flag(&mut self, key: &str, bit: u8) -> Option<u8> {
        let i = self.find(key)?;
        match &mut self.slots[i] {
            Slot::Stored(b) => {
                let at = b.len() - split(b).1.len() + 8;
                b[at] |= bit;
                Some(b[at])
            }
            Slot::Fresh(f) => {
                f.fresh.flags |= bit;
                Some(f.fresh.flags)
            }
        }
    }

    /// Pack the entry if fresh and set its PERSISTED bit (a commit writes it): its packed
    /// entry, or None if there is none.
    pub fn persist(&mut self, key: &str) -> Option<Vec<u8>> {
        let i = self.find(key)?;
        let slot = &mut self.slots[i];
        let packed = slot.get().expect("indexed").1.packed();
        match slot {
            Slot::Stored(b) => {
                let at = b.len() - packed.len();
                b[at + 8] = packed[8];
            }
            Slot::Fresh(_) => *slot = Slot::Stored(stored(key.as_bytes(), &packed)),
        }
        Some(packed)
    }

    /// Remove the entry; its flags, or None if there was none.
    pub fn remove(&mut self, key: &str) -> Option<u8> {
        let (slots, key) = (&self.slots, key.as_bytes());
        let entry = self.index.find_entry(self.hasher.hash_one(key), |&i| slots[i as usize].key() == Some(key)).ok()?;
        let (i, _) = entry.remove();
        let slot = std::mem::replace(&mut self.slots[i as usize], Slot::free());
        let flags = slot.get().expect("indexed").1.flags();
        if self.slots.len() > 32 && self.index.len() * 2 < self.slots.len() {
            self.compact();
        }
        Some(flags)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Pending<'_>)> {
        self.slots.iter().filter_map(|s| s.get()).map(|(k, e)| (std::str::from_utf8(k).expect("a key from a str"), e))
    }

    /// Drop the free slots, keeping the order, and index the rest again.
    fn compact(&mut self) {
        self.slots.retain(|s| !s.is_free());
        self.slots.shrink_to(self.slots.len() * 3 / 2);
        self.index.clear();
        let (slots, hasher) = (&self.slots, &self.hasher);
        for (i, s) in (0u32..).zip(slots.iter()) {
            let k = s.key().expect("kept");
            self.index.insert_unique(hasher.hash_one(k), i, |&j| hasher.hash_one(slots[j as usize].key().expect("kept")));
        }
    }
}
