//! Matched pairs past their window, "settled" (streams/join/state.py's settled): each its
//! order_id, a 64-bit fingerprint of its payment_id and its window's end, kept until the
//! payments partition's records are the late horizon past that end (what they confirm, not
//! the wall clock its progress is once read to its end: core.rs's expire), so that a
//! duplicate of its payment, or a second payment for its order, landing late is still
//! recognised.
//!
//! The Python core keeps a dict and a deque of the order_ids in the order they settled,
//! forgotten from the front. Here the entries themselves are in that order, in a deque,
//! with a hash table of their positions (absolute: `base` is the first's), so an entry is
//! its order_id (boxed), its fingerprint and its end, 32 bytes, plus about 10 bytes of
//! table. A removal from the middle (a restore giving the order to a later pair, or an
//! order_id settled again) leaves the slot empty; an order_id set again goes to the end.

use std::collections::hash_map::RandomState;
use std::collections::VecDeque;
use std::hash::BuildHasher;

use hashbrown::HashTable;
use sha2::{Digest, Sha256};


/// 64 bits of the payment_id's SHA-256 (state.fingerprint).
pub fn fingerprint(payment_id: &str) -> u64 {
    let digest = Sha256::digest(payment_id.as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

struct Slot {
    key: Option<Box<str>>, // None: removed (by a restore)
    fp: u64,
    end: i64,
}

/// Below this, neither the deque nor the table is shrunk.
const MIN_CAPACITY: usize = 64;

// An entry is 32 bytes: the boxed order_id's pointer and length, the fingerprint, the end.
const _: () = assert!(std::mem::size_of::<Slot>() == 32);

pub struct Settled {
    slots: VecDeque<Slot>,
    base: u64,
    index: HashTable<u64>,
    hasher: RandomState,
    /// The position from which slots settled since the last commit (state.py's
    /// _new_settled): a pair settles at the end, and one settled again moves there, so the
    /// fresh ones are the live slots from here on, in order, without a table of their own.
    fresh_from: u64,
}

impl Default for Settled {
    fn default() -> Self {
        Self { slots: VecDeque::new(), base: 0, index: HashTable::new(), hasher: RandomState::new(), fresh_from: 0 }
    }
}

impl Settled {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    fn find(&self, oid: &str) -> Option<u64> {
        let (slots, base) = (&self.slots, self.base);
        self.index.find(self.hasher.hash_one(oid), |&pos| slots[(pos - base) as usize].key.as_deref() == Some(oid))
            .copied()
    }

    /// (fingerprint, window end) of the order's settled pair.
    pub fn get(&self, oid: &str) -> Option<(u64, i64)> {
        let pos = self.find(oid)?;
        let s = &self.slots[(pos - self.base) as usize];
        Some((s.fp, s.end))
    }

    /// Settle, or settle again: an order_id present leaves its place (emptied) for the end,
    /// and `fresh` (state.settle: a restore lines them up so). Ends before 0 are 0, as the
    /// Python core keeps them.
    pub fn set(&mut self, oid: &str, fp: u64, end: i64) {
        let end = end.max(0);
        if self.find(oid).is_some() {
            self.remove(oid);
        }
        let pos = self.base + self.slots.len() as u64;
        let hash = self.hasher.hash_one(oid);
        let (slots, base, hasher) = (&self.slots, self.base, &self.hasher);
        self.index.insert_unique(hash, pos, |&p| {
            hasher.hash_one(slots[(p - base) as usize].key.as_deref().expect("indexed"))
        });
        self.slots.push_back(Slot { key: Some(oid.into()), fp, end });
    }

    /// The order's settled pair goes (a restore: a later record of the order wins).
    pub fn remove(&mut self, oid: &str) {
        let hash = self.hasher.hash_one(oid);
        let (slots, base) = (&self.slots, self.base);
        if let Ok(entry) = self.index.find_entry(hash, |&pos| slots[(pos - base) as usize].key.as_deref() == Some(oid)) {
            let (pos, _) = entry.remove();
            self.slots[(pos - self.base) as usize].key = None;
        }
    }

    /// Forget from the front those whose window ended at or before `limit`; one with a
    /// later end stops it (state.forget_settled).
    pub fn forget(&mut self, limit: i64) {
        while let Some(front) = self.slots.front() {
            if let Some(key) = &front.key {
                if front.end > limit {
                    break;
                }
                let (hash, base) = (self.hasher.hash_one(&**key), self.base);
                if let Ok(entry) = self.index.find_entry(hash, |&pos| pos == base) {
                    entry.remove();
                }
            }
            self.slots.pop_front();
            self.base += 1;
        }
        self.shrink();
    }

    /// Give memory back after a burst: the deque and the table each shrink to twice their
    /// length once it falls below a quarter of their capacity (amortised: a shrink follows
    /// at least as many removals as it moves entries), never below MIN_CAPACITY.
    fn shrink(&mut self) {
        let (len, cap) = (self.slots.len(), self.slots.capacity());
        if cap > MIN_CAPACITY && len < cap / 4 {
            self.slots.shrink_to((len * 2).max(MIN_CAPACITY));
        }
        let (len, cap) = (self.index.len(), self.index.capacity());
        if cap > MIN_CAPACITY && len < cap / 4 {
            let (slots, base, hasher) = (&self.slots, self.base, &self.hasher);
            self.index.shrink_to((len * 2).max(MIN_CAPACITY), |&pos| {
                hasher.hash_one(slots[(pos - base) as usize].key.as_deref().expect("indexed"))
            });
        }
    }

    /// (deque capacity, table capacity), for the tests of shrink().
    pub fn capacity(&self) -> (usize, usize) {
        (self.slots.capacity(), self.index.capacity())
    }

    /// (order_id, fingerprint, end) of each settled since the last clear_fresh, in order.
    pub fn fresh(&self) -> impl Iterator<Item = (&str, u64, i64)> {
        let start = (self.fresh_from.saturating_sub(self.base) as usize).min(self.slots.len());
        self.slots.range(start..).filter_map(|s| s.key.as_deref().map(|k| (k, s.fp, s.end)))
    }

    /// Everything settled so far is written (a commit's changes taken, or a restore).
    pub fn clear_fresh(&mut self) {
        self.fresh_from = self.base + self.slots.len() as u64;
    }

    /// (order_id, fingerprint, end) of each, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, i64)> {
        self.slots.iter().filter_map(|s| s.key.as_deref().map(|k| (k, s.fp, s.end)))
    }
}
