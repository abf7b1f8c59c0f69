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
//! - a ghost: the slice of a removed entry cut to its order_id, while a timer names it;
//! - free: an empty slice (dropped when the slots are compacted).
//!
//! The deadline timers (core.rs's Deadlines) name a payment by its slot, not by a copy of
//! its order_id. timers.py's buckets hold order_ids, and a bucket's order_id is looked up
//! again when the bucket comes up: a payment removed, then pending again under the same
//! order_id, is found there under the old timer. A ghost keeps that: its slot stays, with
//! the order_id to look up, until the timer naming it goes (release), and compact() says
//! where the slots it keeps have moved. Each slot in use is named by exactly one timer:
//! a live one by the timer added with it (or by rebuild), a ghost by its live one's.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use hashbrown::HashTable;

use crate::entries::{Fresh, Pending};

/// A slot's index, as the timers hold it.
pub type SlotId = u32;

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

    fn is_ghost(&self) -> bool {
        matches!(self, Slot::Stored(b) if !b.is_empty() && split(b).1.is_empty())
    }

    /// Its order_id and entry; None when a ghost or free.
    fn get(&self) -> Option<(&[u8], Pending<'_>)> {
        match self {
            Slot::Stored(b) if b.is_empty() => None,
            Slot::Stored(b) => match split(b) {
                (_, []) => None,
                (key, entry) => Some((key, Pending::Packed(entry))),
            },
            Slot::Fresh(f) => Some((f.key.as_bytes(), Pending::Fresh(&f.fresh))),
        }
    }

    /// Its order_id: a live entry's or a ghost's.
    fn key(&self) -> Option<&[u8]> {
        match self {
            Slot::Stored(b) if b.is_empty() => None,
            Slot::Stored(b) => Some(split(b).0),
            Slot::Fresh(f) => Some(f.key.as_bytes()),
        }
    }

    /// The ghost of a live slot: its order_id alone.
    fn haunt(&mut self) {
        match self {
            Slot::Stored(b) => {
                let keep = b.len() - split(b).1.len();
                let mut v = Vec::from(std::mem::take(b));
                v.truncate(keep);
                *b = v.into_boxed_slice();
            }
            Slot::Fresh(f) => *self = Slot::Stored(stored(f.key.as_bytes(), &[])),
        }
    }
}

pub struct PendingMap {
    slots: Vec<Slot>,
    index: HashTable<SlotId>, // the live slots
    hasher: RandomState,
    free: usize,
}

impl Default for PendingMap {
    fn default() -> Self {
        Self { slots: Vec::new(), index: HashTable::new(), hasher: RandomState::new(), free: 0 }
    }
}

impl PendingMap {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Room for `n` more entries, the index sized at once.
    pub fn reserve(&mut self, n: usize) {
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.reserve(n, |&j| hasher.hash_one(slots[j as usize].key().expect("indexed")));
        self.slots.reserve(n);
    }

    fn find(&self, key: &str) -> Option<usize> {
        let (slots, key) = (&self.slots, key.as_bytes());
        self.index.find(self.hasher.hash_one(key), |&i| slots[i as usize].key() == Some(key)).map(|&i| i as usize)
    }

    /// The live slot a timer's slot stands for: itself if live; for a ghost, the entry
    /// pending under its order_id now, if any.
    pub fn resolve(&self, slot: SlotId) -> Option<SlotId> {
        let s = &self.slots[slot as usize];
        if s.get().is_some() {
            return Some(slot);
        }
        debug_assert!(s.is_ghost(), "a timer names a slot in use");
        let key = s.key()?;
        self.index.find(self.hasher.hash_one(key), |&i| self.slots[i as usize].key() == Some(key)).copied()
    }

    /// A live slot's order_id and entry.
    pub fn at(&self, slot: SlotId) -> (&str, Pending<'_>) {
        let (k, e) = self.slots[slot as usize].get().expect("a live slot");
        (std::str::from_utf8(k).expect("a key from a str"), e)
    }

    /// The timer naming this slot went: a ghost's slot is free now.
    pub fn release(&mut self, slot: SlotId) {
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.get().is_none(), "a live slot keeps its timer");
        if s.is_ghost() {
            *s = Slot::free();
            self.free += 1;
        }
    }

    /// Every timer went (their rebuild): every ghost's slot is free now.
    pub fn release_all(&mut self) {
        for s in self.slots.iter_mut().filter(|s| s.is_ghost()) {
            *s = Slot::free();
            self.free += 1;
        }
    }

    pub fn get(&self, key: &str) -> Option<Pending<'_>> {
        self.find(key).and_then(|i| self.slots[i].get()).map(|(_, e)| e)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_some()
    }

    /// A payment read since the last commit, under a key not pending: it goes to the end.
    /// Its slot, for its timer.
    pub fn insert_fresh(&mut self, key: &str, fresh: Fresh) -> SlotId {
        debug_assert!(!self.contains_key(key), "a new key (its timer names the slot)");
        self.insert(key, Slot::Fresh(Box::new(FreshSlot { key: key.to_string(), fresh })))
    }

    /// A packed entry (pack.rs: at least its 9-byte header); a new key goes to the end, an
    /// existing one keeps its place (restore, which rebuilds the timers after).
    pub fn insert_packed(&mut self, key: &str, entry: &[u8]) {
        debug_assert!(entry.len() > 9, "a packed entry");
        self.insert(key, Slot::Stored(stored(key.as_bytes(), entry)));
    }

    fn insert(&mut self, key: &str, slot: Slot) -> SlotId {
        if let Some(i) = self.find(key) {
            self.slots[i] = slot;
            return i as SlotId;
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        let i = SlotId::try_from(slots.len()).expect("fewer than 2^32 slots");
        self.index.insert_unique(hasher.hash_one(key.as_bytes()), i, |&j| {
            hasher.hash_one(slots[j as usize].key().expect("indexed"))
        });
        self.slots.push(slot);
        i
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

    /// Remove the entry (its slot a ghost until its timer goes); its flags, or None if
    /// there was none.
    pub fn remove(&mut self, key: &str) -> Option<u8> {
        let (slots, key) = (&self.slots, key.as_bytes());
        let entry = self.index.find_entry(self.hasher.hash_one(key), |&i| slots[i as usize].key() == Some(key)).ok()?;
        let (i, _) = entry.remove();
        let slot = &mut self.slots[i as usize];
        let flags = slot.get().expect("indexed").1.flags();
        slot.haunt();
        Some(flags)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, Pending<'_>)> {
        self.slots.iter().filter_map(|s| s.get()).map(|(k, e)| (std::str::from_utf8(k).expect("a key from a str"), e))
    }

    /// The live slots and their entries, in order.
    pub fn iter_slots(&self) -> impl Iterator<Item = (SlotId, Pending<'_>)> {
        (0..).zip(self.slots.iter()).filter_map(|(i, s)| s.get().map(|(_, e)| (i, e)))
    }

    /// When most slots are free: drop them, keeping the order. Where each slot went
    /// (SlotId::MAX: a free one), for the timers; None when it waits.
    pub fn compact(&mut self) -> Option<Vec<SlotId>> {
        if self.slots.len() <= 32 || self.free * 2 <= self.slots.len() {
            return None;
        }
        let mut next: SlotId = 0;
        let moved: Vec<SlotId> = self.slots.iter().map(|s| {
            if s.is_free() {
                return SlotId::MAX;
            }
            next += 1;
            next - 1
        }).collect();
        self.slots.retain(|s| !s.is_free());
        self.slots.shrink_to(self.slots.len() * 3 / 2);
        self.free = 0;
        for i in self.index.iter_mut() {
            *i = moved[*i as usize];
        }
        Some(moved)
    }
}
