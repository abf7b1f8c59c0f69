//! The join's rules for one pair of partitions, their state and its changelog, timers and
//! expiry: streams/join/core.py, state.py and timers.py ported, decision for decision and
//! byte for byte (the differential tests in tests/join/test_native.py hold them equal).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::decode::{self, Order as OrderRec, Payment};
use crate::entries::{self, Fresh, Order, Recovered};
use crate::omap::OMap;
use crate::pack;
use crate::pending::{PendingMap, SlotId};
use crate::settled::{fingerprint, Settled};

pub const SHIFT: u32 = 3;
const BUNDLE_MAX_BYTES: usize = 512 * 1024;
const PAIR_OVERHEAD: usize = 28;
const SETTLED_OVERHEAD: usize = 18;

#[derive(Clone)]
pub struct Params {
    pub timeout_ms: i64,
    pub grace_ms: i64,
    pub late_horizon_ms: i64,
    pub hmac_keys: Vec<Vec<u8>>,
}

/// A decision, in the terms the Python side turns into contract messages: records are a
/// payment's raw JSON or its packed part (compact.payment reads either).
pub enum Decision {
    Recover { order_id: String, record: Vec<u8>, deadline: i64, traces: Vec<Vec<u8>> },
    Late { order: Vec<u8>, order_ts: i64, payment_id: String, lateness: i64, traces: Vec<Vec<u8>> },
    Flag { kind: &'static str, order_id: String, payments: Vec<Vec<u8>>, order: Option<Vec<u8>>, traces: Vec<Vec<u8>> },
}

#[derive(Default)]
pub struct Counts {
    pub matched: u64,
    pub duplicates: u64,
    pub ignored_failed: u64,
}

fn traces(items: &[Option<&[u8]>]) -> Vec<Vec<u8>> {
    items.iter().flatten().filter(|t| !t.is_empty()).map(|t| t.to_vec()).collect()
}

/// A partition's progress by its records (progress.Confirmed).
#[derive(Clone, Copy)]
pub struct Confirmed {
    pub time: i64,
    pub last: i64,
}

impl Confirmed {
    fn new() -> Self {
        Self { time: -1, last: -1 }
    }

    fn note(&mut self, ts: i64) {
        let last = std::mem::replace(&mut self.last, ts);
        if last > self.time && ts > self.time {
            self.time = last.min(ts);
        }
    }

    fn at(&self, now: i64, at_end: bool) -> i64 {
        if at_end { now } else { self.time.min(now) }
    }
}

/// Timers of pending payments in deadline buckets (timers.Deadlines). A bucket holds
/// pending slots (pending.rs), where timers.py's hold order_ids: 4 bytes a payment, no
/// copy of its key. A slot stands for the order_id in it: a removed entry's slot stays
/// (a ghost, its order_id alone) until its timer goes, and each timer that goes (a bucket
/// popped, one not kept, their rebuild) releases its slot.
struct Deadlines {
    timeout: i64,
    buckets: HashMap<i64, Vec<SlotId>>,
    heap: BinaryHeap<Reverse<i64>>,
    count: usize,
    partial_due: i64,
}

impl Deadlines {
    fn new(timeout: i64) -> Self {
        Self { timeout, buckets: HashMap::new(), heap: BinaryHeap::new(), count: 0, partial_due: -1 }
    }

    fn add(&mut self, slot: SlotId, t: i64) {
        let number = (t + self.timeout) >> SHIFT;
        match self.buckets.get_mut(&number) {
            Some(b) => b.push(slot),
            None => {
                self.buckets.insert(number, vec![slot]);
                self.heap.push(Reverse(number));
            }
        }
        self.count += 1;
        if self.heap.peek().is_some_and(|Reverse(first)| *first == number) {
            self.partial_due = -1;
        }
    }

    fn any_due(&self, due: i64) -> bool {
        self.heap.peek().is_some_and(|Reverse(n)| n << SHIFT <= due)
    }

    /// Drop the first bucket, its slots released already.
    fn pop_released(&mut self) {
        if let Some(Reverse(n)) = self.heap.pop() {
            self.count -= self.buckets.remove(&n).map_or(0, |b| b.len());
        }
        self.partial_due = -1;
    }

    fn pop(&mut self, pending: &mut PendingMap) {
        if let Some(&Reverse(n)) = self.heap.peek() {
            for &slot in self.buckets.get(&n).into_iter().flatten() {
                pending.release(slot);
            }
        }
        self.pop_released();
    }

    fn rebuild(&mut self, pending: &mut PendingMap) {
        pending.release_all();
        let mut buckets: HashMap<i64, Vec<SlotId>> = HashMap::new();
        let mut order = Vec::new();
        for (slot, e) in pending.iter_slots() {
            let n = (e.t() + self.timeout) >> SHIFT;
            buckets.entry(n).or_insert_with(|| {
                order.push(n);
                Vec::new()
            }).push(slot);
        }
        self.heap = order.into_iter().map(Reverse).collect();
        self.buckets = buckets;
        self.count = pending.len();
        self.partial_due = -1;
    }

    fn tidy(&mut self, pending: &mut PendingMap) {
        if self.count > 64 && self.count > 2 * pending.len() {
            self.rebuild(pending);
        }
    }

    fn oldest(&mut self, pending: &mut PendingMap) -> Option<i64> {
        while let Some(&Reverse(number)) = self.heap.peek() {
            let times: Vec<i64> = self.buckets[&number].iter()
                .filter_map(|&slot| pending.resolve(slot).map(|live| pending.at(live).1.t()))
                .filter(|t| (t + self.timeout) >> SHIFT == number)
                .collect();
            if let Some(&t) = times.iter().min() {
                return Some(t);
            }
            self.pop(pending);
        }
        None
    }

    /// The slots moved (PendingMap::compact).
    fn moved(&mut self, to: &[SlotId]) {
        for slot in self.buckets.values_mut().flatten() {
            *slot = to[*slot as usize];
            debug_assert!(*slot != SlotId::MAX, "a timer's slot is kept");
        }
    }
}

/// Entries of one map by expiry time (timers.Expiry): (expiry, sequence) order; an item
/// whose entry went or was replaced is skipped.
#[derive(Default)]
struct Expiry {
    heap: BinaryHeap<Reverse<(i64, u64, String, u64)>>,
}

impl Expiry {
    fn add(&mut self, expiry: i64, seq: u64, oid: &str, id: u64) {
        self.heap.push(Reverse((expiry, seq, oid.to_string(), id)));
    }

    fn pop_due(&mut self, limit: i64) -> Option<(String, u64)> {
        if self.heap.peek().is_some_and(|Reverse((e, ..))| *e <= limit) {
            let Reverse((_, _, oid, id)) = self.heap.pop()?;
            return Some((oid, id));
        }
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Store {
    Pending = 0,
    Orders = 1,
    Recovered = 2,
}

/// A changelog record: its key and its value (None: a tombstone).
pub type Record = (Vec<u8>, Option<Vec<u8>>);

pub struct Core {
    pub p: Params,
    pub pending: PendingMap,
    pub orders: OMap<String, Order>,
    pub recovered: OMap<String, Recovered>,
    /// Matched pairs past their window (settled.rs), forgotten by the payments partition's records.
    pub settled: Settled,
    dirty: [OMap<String, bool>; 3],
    bundles: BinaryHeap<Reverse<(i64, i64)>>,
    expired_bundles: Vec<i64>,
    /// Settled bundles in the changelog: (last window end, number); numbered with the matched ones.
    settled_bundles: BinaryHeap<Reverse<(i64, i64)>>,
    expired_settled: Vec<i64>,
    next_bundle: i64,
    deadlines: Deadlines,
    order_expiry: Expiry,
    /// Unmatched orders past their window, by the payments partition's progress (see expire).
    kept_orders: Expiry,
    recovered_expiry: Expiry,
    seq: u64,
    ids: u64,
    pub payments: Confirmed,
    pub orders_read: Confirmed,
    pub payments_progress: i64,
    pub decisions: Vec<Decision>,
    pub counts: Counts,
}

impl Core {
    pub fn new(p: Params) -> Self {
        let timeout = p.timeout_ms;
        Self {
            p,
            pending: PendingMap::default(),
            orders: OMap::default(),
            recovered: OMap::default(),
            settled: Settled::default(),
            dirty: [OMap::default(), OMap::default(), OMap::default()],
            bundles: BinaryHeap::new(),
            expired_bundles: Vec::new(),
            settled_bundles: BinaryHeap::new(),
            expired_settled: Vec::new(),
            next_bundle: 0,
            deadlines: Deadlines::new(timeout),
            order_expiry: Expiry::default(),
            kept_orders: Expiry::default(),
            recovered_expiry: Expiry::default(),
            seq: 0,
            ids: 0,
            payments: Confirmed::new(),
            orders_read: Confirmed::new(),
            payments_progress: -1,
            decisions: Vec::new(),
            counts: Counts::default(),
        }
    }

    fn window(&self) -> i64 {
        self.p.timeout_ms + self.p.grace_ms
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn next_id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }

    // ------------------------------------------------------------ change tracking (state.JoinState)

    fn touch(&mut self, store: Store, oid: &str, persisted: bool) {
        let dirty = &mut self.dirty[store as usize];
        let was = dirty.get(&oid.to_string()).copied().unwrap_or(false);
        dirty.insert(oid.to_string(), persisted || was);
    }

    /// A new key: whether the changelog may hold a value for it (a removed entry's, or the
    /// `replaced` one's).
    fn settle(&mut self, store: Store, oid: &str, replaced: bool) -> bool {
        let dirty = &mut self.dirty[store as usize];
        let key = oid.to_string();
        let in_log = dirty.get(&key).copied().unwrap_or(false) || replaced;
        dirty.insert(key, in_log);
        in_log
    }

    fn put_pending(&mut self, oid: &str, mut f: Fresh) {
        // (never over a live one: a payment for an order with one pending is a duplicate or
        // a second payment, insert_fresh asserts it)
        if self.settle(Store::Pending, oid, false) {
            f.flags |= pack::PERSISTED;
        }
        let t = f.t;
        let slot = self.pending.insert_fresh(oid, f);
        self.deadlines.add(slot, t);
    }

    /// (Over an order waiting under its key, matched by a copy of itself: the changelog may
    /// hold the replaced one, so the new one counts as persisted too; state.put.)
    fn put_order(&mut self, oid: &str, mut o: Order) {
        let replaced = self.orders.get(&oid.to_string()).is_some_and(|r| r.persisted);
        o.persisted = self.settle(Store::Orders, oid, replaced);
        let expiry = o.expires_at(self.window());
        let (seq, id) = (self.next_seq(), o.id);
        self.orders.insert(oid.to_string(), o);
        self.order_expiry.add(expiry, seq, oid, id);
    }

    fn put_recovered(&mut self, oid: &str, mut r: Recovered) {
        let replaced = self.recovered.get(&oid.to_string()).is_some_and(|r| r.persisted);
        r.persisted = self.settle(Store::Recovered, oid, replaced);
        let (at, seq, id) = (r.recovered_at, self.next_seq(), r.id);
        self.recovered.insert(oid.to_string(), r);
        self.recovered_expiry.add(at, seq, oid, id);
    }

    fn delete_pending(&mut self, oid: &str) {
        if let Some(flags) = self.pending.remove(oid) {
            self.touch(Store::Pending, oid, flags & pack::PERSISTED != 0);
        }
    }

    fn delete_order(&mut self, oid: &str) -> Option<Order> {
        let o = self.orders.remove(&oid.to_string())?;
        self.touch(Store::Orders, oid, o.persisted);
        Some(o)
    }

    fn delete_recovered(&mut self, oid: &str) {
        if let Some(r) = self.recovered.remove(&oid.to_string()) {
            self.touch(Store::Recovered, oid, r.persisted);
        }
    }

    fn changed_order(&mut self, oid: &str) {
        let persisted = self.orders.get(&oid.to_string()).is_some_and(|o| o.persisted);
        self.touch(Store::Orders, oid, persisted);
    }

    fn changed_recovered(&mut self, oid: &str) {
        let persisted = self.recovered.get(&oid.to_string()).is_some_and(|r| r.persisted);
        self.touch(Store::Recovered, oid, persisted);
    }

    fn mark_late(&mut self, oid: &str) {
        if let Some(flags) = self.pending.set_flag(oid, pack::LATE) {
            self.touch(Store::Pending, oid, flags & pack::PERSISTED != 0);
        }
    }

    /// Net changes since the last call, as changelog records (state.take_changes).
    pub fn take_changes(&mut self) -> Vec<Record> {
        let mut out = Vec::new();
        let dirty = std::mem::take(&mut self.dirty[0]);
        for (oid, &in_log) in dirty.iter() {
            let key = [b"p:".as_slice(), oid.as_bytes()].concat();
            match self.pending.persist(oid) {
                None => {
                    if in_log {
                        out.push((key, None));
                    }
                }
                Some(packed) => out.push((key, Some(packed))),
            }
        }
        let dirty = std::mem::take(&mut self.dirty[1]);
        let mut matched: Vec<String> = Vec::new();
        for (oid, &in_log) in dirty.iter() {
            let key = [b"o:".as_slice(), oid.as_bytes()].concat();
            match self.orders.get_mut(oid) {
                None => {
                    if in_log {
                        out.push((key, None));
                    }
                }
                Some(o) if o.paid_id.is_some() => {
                    if in_log || o.persisted {
                        out.push((key, None));
                    }
                    o.persisted = false; // its bundle holds it
                    matched.push(oid.clone());
                }
                Some(o) => {
                    o.persisted = true;
                    out.push((key, Some(entries::order_value(o))));
                }
            }
        }
        let dirty = std::mem::take(&mut self.dirty[2]);
        for (oid, &in_log) in dirty.iter() {
            let key = [b"r:".as_slice(), oid.as_bytes()].concat();
            match self.recovered.get_mut(oid) {
                Some(r) => {
                    r.persisted = true;
                    out.push((key, Some(entries::recovered_value(r))));
                }
                None => {
                    if in_log {
                        out.push((key, None));
                    }
                }
            }
        }
        for number in std::mem::take(&mut self.expired_bundles) {
            out.push((format!("m:{number:012}").into_bytes(), None));
        }
        for chunk in self.by_size(&matched) {
            let number = self.next_bundle;
            self.next_bundle += 1;
            let window = self.window();
            let pairs: Vec<(String, &Order)> = chunk.iter().map(|oid| (oid.clone(), self.orders.get(oid).expect("live"))).collect();
            let expiry = pairs.iter().map(|(_, o)| o.expires_at(window)).max().unwrap_or(0);
            let value = entries::bundle_value(&pairs);
            self.bundles.push(Reverse((expiry, number)));
            out.push((format!("m:{number:012}").into_bytes(), Some(value)));
        }
        self.settled_changes(&mut out);
        out
    }

    /// Pairs settled since the last commit, in bundles; bundles all forgotten, as tombstones
    /// (state._settled_changes).
    fn settled_changes(&mut self, out: &mut Vec<Record>) {
        for number in std::mem::take(&mut self.expired_settled) {
            out.push((format!("s:{number:012}").into_bytes(), None));
        }
        let entries: Vec<(&str, u64, i64)> = self.settled.fresh().collect();
        if entries.is_empty() {
            self.settled.clear_fresh();
            return;
        }
        let mut chunks: Vec<Vec<(&str, u64, i64)>> = Vec::new();
        let mut current = Vec::new();
        let mut size = 0;
        for e in entries {
            let n = SETTLED_OVERHEAD + e.0.chars().count() * 4;
            if !current.is_empty() && size + n > BUNDLE_MAX_BYTES {
                chunks.push(std::mem::take(&mut current));
                size = 0;
            }
            current.push(e);
            size += n;
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        for chunk in chunks {
            let number = self.next_bundle;
            self.next_bundle += 1;
            let last = chunk.iter().map(|e| e.2).max().unwrap_or(0);
            self.settled_bundles.push(Reverse((last, number)));
            out.push((format!("s:{number:012}").into_bytes(), Some(entries::settled_value(&chunk))));
        }
        self.settled.clear_fresh();
    }

    fn by_size(&self, oids: &[String]) -> Vec<Vec<String>> {
        let mut bundles = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut size = 0;
        for oid in oids {
            let o = self.orders.get(oid).expect("live");
            let n = PAIR_OVERHEAD + oid.chars().count() * 4 + o.paid_id.as_deref().map_or(0, |p| p.chars().count() * 4)
                + o.paid_raw.as_deref().map_or(0, |r| r.len());
            if !current.is_empty() && size + n > BUNDLE_MAX_BYTES {
                bundles.push(std::mem::take(&mut current));
                size = 0;
            }
            current.push(oid.clone());
            size += n;
        }
        if !current.is_empty() {
            bundles.push(current);
        }
        bundles
    }

    // ------------------------------------------------------------ records

    fn signed(&self, p: &Payment) -> bool {
        let Some(sig) = &p.signature else { return false };
        let text = format!("{}|{}|{}|{}|{}|{}|{}", p.payment_id, p.order_id, p.user_id, decode::plain_amount(&p.amount),
                           p.currency, if p.succeeded { "succeeded" } else { "failed" }, p.paid_at.epoch_ms());
        self.p.hmac_keys.iter().any(|key| {
            let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
            mac.update(text.as_bytes());
            mac.verify_slice(sig).is_ok()
        })
    }

    pub fn on_payment(&mut self, ts: i64, p: Payment, raw: &[u8], trace: Option<&[u8]>) {
        if !self.p.hmac_keys.is_empty() && !self.signed(&p) {
            if p.succeeded {
                self.decisions.push(Decision::Flag { kind: "bad_signature", order_id: p.order_id.clone(),
                                                     payments: vec![raw.to_vec()], order: None, traces: traces(&[trace]) });
            } else {
                self.counts.ignored_failed += 1;
            }
            return;
        }
        self.payments.note(ts);
        if !p.succeeded {
            self.counts.ignored_failed += 1;
            return;
        }
        let oid = p.order_id.clone();
        let timeout = self.p.timeout_ms;
        let skew = p.paid_at.epoch_ms() - ts;
        if skew > timeout || -skew > timeout {
            self.decisions.push(Decision::Flag { kind: "paid_at_skew", order_id: oid.clone(), payments: vec![raw.to_vec()],
                                                 order: None, traces: traces(&[trace]) });
        }
        let first = if let Some(e) = self.pending.get(&oid) {
            Some((e.payment_id(), e.record()))
        } else if let Some(o) = self.orders.get(&oid).filter(|o| o.paid_id.is_some()) {
            Some((o.paid_id.clone().unwrap_or_default(), o.paid_raw.clone().unwrap_or_default()))
        } else {
            self.recovered.get(&oid).map(|r| (r.payment_id.clone(), r.raw.clone()))
        };
        if let Some((first_id, first_raw)) = first {
            if first_id == p.payment_id {
                self.counts.duplicates += 1;
            } else {
                self.decisions.push(Decision::Flag { kind: "duplicate_payment", order_id: oid, payments: vec![first_raw, raw.to_vec()],
                                                     order: None, traces: traces(&[trace]) });
            }
            return;
        }
        let deadline = ts + timeout;
        if self.orders.get(&oid).is_some_and(|o| ts - timeout <= o.ts && o.ts <= deadline) {
            self.match_order(&oid, ts, &p, raw, trace);
            return;
        }
        if !self.settled.is_empty() {
            // its pair matched, its window closed: what it kept is a fingerprint, for a payment
            // stamped before its end + the horizon (core.on_payment)
            if let Some((fp, _)) = self.settled_for(&oid, ts) {
                if fp == fingerprint(&p.payment_id) {
                    self.counts.duplicates += 1;
                } else {
                    self.decisions.push(Decision::Flag { kind: "duplicate_payment", order_id: oid, payments: vec![raw.to_vec()],
                                                         order: None, traces: traces(&[trace]) });
                }
                return;
            }
        }
        if let Some(o) = self.orders.get(&oid) {
            if o.ts > deadline {
                let o = self.delete_order(&oid).expect("there");
                self.decisions.push(Decision::Late { order: o.raw.clone(), order_ts: o.ts, payment_id: p.payment_id.clone(),
                                                     lateness: o.ts - deadline, traces: traces(&[o.trace.as_deref(), trace]) });
                let f = Fresh { t: ts, flags: pack::LATE, trace: trace.map(<[u8]>::to_vec), payment: p, raw: raw.to_vec() };
                self.put_pending(&oid, f);
                return;
            }
        }
        let f = Fresh { t: ts, flags: 0, trace: trace.map(<[u8]>::to_vec), payment: p, raw: raw.to_vec() };
        self.put_pending(&oid, f);
    }

    /// The settled pair of the order_id that a record stamped `ts` belongs to: stamped
    /// before its window's end + the horizon (core._settled_for).
    fn settled_for(&self, oid: &str, ts: i64) -> Option<(u64, i64)> {
        self.settled.get(oid).filter(|&(_, end)| ts < end + self.p.late_horizon_ms)
    }

    fn match_order(&mut self, oid: &str, ts: i64, p: &Payment, raw: &[u8], trace: Option<&[u8]>) {
        let o = self.orders.get_mut(&oid.to_string()).expect("there");
        o.paid_id = Some(p.payment_id.clone());
        o.paid_t = ts;
        o.paid_raw = Some(raw.to_vec());
        let cmp = o.cmp.take();
        let order_raw = std::mem::take(&mut o.raw);
        let order_trace = o.trace.take();
        let window = self.p.timeout_ms + self.p.grace_ms;
        let kept = (o.ts + window <= self.payments_progress).then(|| (o.expires_at(window), o.id));
        self.changed_order(oid);
        if let Some((expiry, id)) = kept {
            // kept past its window (expire): a matched pair's life now
            let seq = self.next_seq();
            self.order_expiry.add(expiry, seq, oid, id);
        }
        self.counts.matched += 1;
        if let Some((uid, amount, currency)) = cmp {
            let mine = (&p.user_id, &p.amount, p.currency);
            if *mine.0 != uid || !decode::same_amount(mine.1, &amount) || mine.2 != currency {
                self.mismatch(oid, (&p.user_id, &p.amount, p.currency), (&uid, &amount, &currency), raw.to_vec(), order_raw,
                              traces(&[trace, order_trace.as_deref()]));
            }
        }
    }

    fn mismatch(&mut self, oid: &str, pay: (&str, &str, &str), order: (&str, &str, &str), payment: Vec<u8>,
                order_raw: Vec<u8>, tr: Vec<Vec<u8>>) {
        let kinds = [("user_mismatch", pay.0 != order.0), ("amount_mismatch", !decode::same_amount(pay.1, order.1)),
                     ("currency_mismatch", pay.2 != order.2)];
        for (kind, differs) in kinds {
            if differs {
                self.decisions.push(Decision::Flag { kind, order_id: oid.to_string(), payments: vec![payment.clone()],
                                                     order: Some(order_raw.clone()), traces: tr.clone() });
            }
        }
    }

    pub fn on_order(&mut self, ts: i64, o: OrderRec, raw: &[u8], trace: Option<&[u8]>) {
        self.orders_read.note(ts);
        let oid = o.order_id.clone();
        if let Some(e) = self.pending.get(&oid) {
            let t = e.t();
            let timeout = self.p.timeout_ms;
            let deadline = t + timeout;
            if t - timeout <= ts && ts <= deadline {
                self.match_payment(&oid, t, ts, &o, raw, trace);
                return;
            }
            if ts > deadline {
                if e.flags() & pack::LATE == 0 {
                    let (pid, ptrace) = (e.payment_id(), e.trace().map(<[u8]>::to_vec));
                    self.mark_late(&oid);
                    self.decisions.push(Decision::Late { order: raw.to_vec(), order_ts: ts, payment_id: pid,
                                                         lateness: ts - deadline, traces: traces(&[trace, ptrace.as_deref()]) });
                }
                return;
            }
        }
        if let Some(r) = self.recovered.get_mut(&oid) {
            if !r.late {
                r.late = true;
                let d = Decision::Late { order: raw.to_vec(), order_ts: ts, payment_id: r.payment_id.clone(),
                                         lateness: (ts - r.deadline).max(0), traces: traces(&[trace, r.trace.as_deref()]) };
                self.changed_recovered(&oid);
                self.decisions.push(d);
            }
            return;
        }
        if self.orders.contains_key(&oid) || (!self.settled.is_empty() && self.settled_for(&oid, ts).is_some()) {
            self.counts.duplicates += 1;
            return;
        }
        let id = self.next_id();
        let entry = Order { id, ts, raw: raw.to_vec(), cmp: Some((o.user_id, o.amount, o.currency.to_string())),
                            paid_id: None, paid_t: 0, paid_raw: None, persisted: false, trace: trace.map(<[u8]>::to_vec) };
        self.put_order(&oid, entry);
    }

    fn match_payment(&mut self, oid: &str, t: i64, ts: i64, o: &OrderRec, raw: &[u8], trace: Option<&[u8]>) {
        let e = self.pending.get(oid).expect("there");
        let (pid, uid, amount, currency) = e.match_fields();
        let paid = e.record();
        let ptrace = e.trace().map(<[u8]>::to_vec);
        self.delete_pending(oid);
        let id = self.next_id();
        let entry = Order { id, ts, raw: Vec::new(), cmp: None, paid_id: Some(pid), paid_t: t, paid_raw: Some(paid.clone()),
                            persisted: false, trace: None };
        self.put_order(oid, entry);
        self.changed_order(oid);
        self.counts.matched += 1;
        if uid != o.user_id || currency != o.currency || !decode::same_amount(&amount, &o.amount) {
            self.mismatch(oid, (&uid, &amount, &currency), (&o.user_id, &o.amount, o.currency), paid, raw.to_vec(),
                          traces(&[trace, ptrace.as_deref()]));
        }
    }

    // ------------------------------------------------------------ time

    pub fn advance(&mut self, now: i64, payments_at_end: bool, orders_at_end: bool) {
        let payments_progress = self.payments.at(now, payments_at_end);
        self.payments_progress = self.payments_progress.max(payments_progress);
        let due = self.orders_read.at(now, orders_at_end) - self.p.grace_ms;
        if self.deadlines.any_due(due) {
            self.time_out(due, now);
        }
        self.deadlines.tidy(&mut self.pending);
        self.compact_pending();
        self.expire(payments_progress, self.payments.at(now, false), now);
    }

    /// Compact the pending slots when most are free, the timers' slots moved with them.
    fn compact_pending(&mut self) {
        if let Some(to) = self.pending.compact() {
            self.deadlines.moved(&to);
        }
    }

    fn time_out(&mut self, due: i64, now: i64) {
        while let Some(&Reverse(number)) = self.deadlines.heap.peek() {
            if number << SHIFT > due {
                return;
            }
            let whole = ((number + 1) << SHIFT) - 1 <= due;
            if !whole && due == self.deadlines.partial_due {
                return;
            }
            let slots = self.deadlines.buckets.get(&number).cloned().unwrap_or_default();
            let mut keep = Vec::new();
            for &slot in &slots {
                // the entry pending under the slot's order_id now, if any (the timer's order_id looked up)
                let Some(live) = self.pending.resolve(slot) else {
                    self.pending.release(slot);
                    continue;
                };
                let (oid, e) = self.pending.at(live);
                let deadline = e.t() + self.p.timeout_ms;
                if deadline >> SHIFT != number {
                    self.pending.release(slot);
                    continue;
                }
                if deadline > due {
                    keep.push(slot);
                    continue;
                }
                let oid = oid.to_string();
                self.recover(&oid, deadline, now);
                self.pending.release(slot);
            }
            if !keep.is_empty() {
                self.deadlines.count -= slots.len() - keep.len();
                self.deadlines.buckets.insert(number, keep);
                self.deadlines.partial_due = due;
                return;
            }
            self.deadlines.pop_released();
        }
    }

    fn recover(&mut self, oid: &str, deadline: i64, now: i64) {
        let e = self.pending.get(oid).expect("there");
        let trace = e.trace().map(<[u8]>::to_vec);
        let record = e.record();
        let (payment_id, late) = (e.payment_id(), e.flags() & pack::LATE != 0);
        self.delete_pending(oid);
        let id = self.next_id();
        let r = Recovered { id, payment_id, deadline, raw: record.clone(), late, persisted: false, recovered_at: now,
                            trace: trace.clone() };
        self.put_recovered(oid, r);
        self.decisions.push(Decision::Recover { order_id: oid.to_string(), record, deadline, traces: traces(&[trace.as_deref()]) });
    }

    /// Matched pairs once the payments partition is past their window; unmatched orders
    /// once it is late_horizon past their window (a payment may land behind payments
    /// stamped later than its order's window: it must still match its order, read before
    /// it); matched pairs then settle until it is late_horizon past their window (a
    /// duplicate may land as late): both by the partition's progress, so that a backlog
    /// keeps them as steady traffic does (core._expire); recovered payments late_horizon
    /// after their recovery, by the wall clock. Settled pairs go by `records_progress`
    /// alone, what the partition's records confirm, not the wall clock it takes once read
    /// to its end (a backlog read to its end would take a pair matched in that interval
    /// past the horizon at once, and a payment read again after its offsets commit failed
    /// would be recovered: core._expire).
    fn expire(&mut self, payments_progress: i64, records_progress: i64, now: i64) {
        let window = self.window();
        let horizon = self.p.late_horizon_ms;
        while let Some((oid, id)) = self.order_expiry.pop_due(payments_progress) {
            let Some(o) = self.orders.get(&oid).filter(|o| o.id == id) else { continue };
            let expiry = o.expires_at(window);
            if expiry > payments_progress {
                let seq = self.next_seq();
                self.order_expiry.add(expiry, seq, &oid, id);
            } else if o.paid_id.is_none() && expiry + horizon > payments_progress {
                let seq = self.next_seq();
                self.kept_orders.add(expiry, seq, &oid, id);
            } else {
                let paid = self.delete_order(&oid).and_then(|o| o.paid_id);
                if let Some(pid) = paid.filter(|_| expiry + horizon > records_progress) {
                    // settled: a fingerprint of its payment, until the payments' records are the
                    // horizon past its window (an order_id settled already goes to the end)
                    self.settled.set(&oid, fingerprint(&pid), expiry);
                }
            }
        }
        let forget = records_progress - horizon;
        self.settled.forget(forget);
        while self.settled_bundles.peek().is_some_and(|Reverse((e, _))| *e <= forget) {
            let Reverse((_, n)) = self.settled_bundles.pop().expect("peeked");
            self.expired_settled.push(n);
        }
        let limit = payments_progress - horizon;
        while let Some((oid, id)) = self.kept_orders.pop_due(limit) {
            // (matched by a late payment meanwhile: match_order scheduled it)
            if self.orders.get(&oid).is_some_and(|o| o.id == id && o.paid_id.is_none()) {
                self.delete_order(&oid);
            }
        }
        while self.bundles.peek().is_some_and(|Reverse((e, _))| *e <= payments_progress) {
            let Reverse((_, n)) = self.bundles.pop().expect("peeked");
            self.expired_bundles.push(n);
        }
        let forget_before = now - self.p.late_horizon_ms;
        while let Some((oid, id)) = self.recovered_expiry.pop_due(forget_before) {
            if self.recovered.get(&oid).is_some_and(|r| r.id == id) {
                self.delete_recovered(&oid);
            }
        }
    }

    // ------------------------------------------------------------ gauges

    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.pending.len(), self.orders.len(), self.recovered.len())
    }

    pub fn oldest_pending_time(&mut self) -> Option<i64> {
        let t = self.deadlines.oldest(&mut self.pending);
        self.compact_pending();
        t
    }

    pub fn timer_count(&self) -> usize {
        self.deadlines.count
    }
}

// ---------------------------------------------------------------- restore (changelog.restore_into)

pub struct Unreadable(pub String);

/// A time read from the changelog: milliseconds within ±2^53 (285,000 years), so that it plus
/// any sum of settings (each at most 100 years) cannot wrap. Anything else is unreadable.
fn be_i64(v: &[u8], at: usize) -> Result<i64, Unreadable> {
    let t = v.get(at..at + 8).map(|b| i64::from_be_bytes(b.try_into().expect("8")))
        .ok_or_else(|| Unreadable("short".into()))?;
    if t.unsigned_abs() > 1 << 53 {
        return Err(Unreadable(format!("a time out of range: {t}")));
    }
    Ok(t)
}

/// A packed pending payment as restore takes it: its time, its trace within the value, and
/// a payment part after it; otherwise unreadable (never an index out of range later).
fn check_packed(e: &[u8]) -> Result<(), Unreadable> {
    be_i64(e, 0)?;
    let flags = *e.get(8).ok_or_else(|| Unreadable("short".into()))?;
    let part = if flags & pack::TRACE != 0 {
        let n = *e.get(9).ok_or_else(|| Unreadable("short trace".into()))? as usize;
        e.get(10 + n..).ok_or_else(|| Unreadable("short trace".into()))?
    } else {
        &e[9..]
    };
    entries::read_part(part).map(|_| ()).ok_or_else(|| Unreadable("a packed payment part".into()))
}

fn read_fields(v: &[u8], mut at: usize, count: usize) -> Result<(Vec<String>, usize), Unreadable> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let n = *v.get(at).ok_or_else(|| Unreadable("short fields".into()))? as usize;
        let text = v.get(at + 1..at + 1 + n).ok_or_else(|| Unreadable("short field".into()))?;
        out.push(String::from_utf8(text.to_vec()).map_err(|_| Unreadable("field not UTF-8".into()))?);
        at += 1 + n;
    }
    Ok((out, at))
}

fn read_trace(v: &[u8], at: usize) -> Result<(Option<Vec<u8>>, usize), Unreadable> {
    let n = *v.get(at).ok_or_else(|| Unreadable("short trace".into()))? as usize;
    let t = v.get(at + 1..at + 1 + n).ok_or_else(|| Unreadable("short trace".into()))?;
    Ok(((!t.is_empty()).then(|| t.to_vec()), at + 1 + n))
}

impl Core {
    /// Rebuild from the last value of each changelog key of the partition, in the order
    /// they were read (changelog.restore_into): bundles first (by number), then the keys of
    /// their own, packed pending payments installed together at the end.
    pub fn restore(&mut self, latest: &[(&[u8], Option<&[u8]>)], now: i64) -> Result<(), Unreadable> {
        // matched and settled bundles, in number order (shared): the later one for an order wins
        let mut bundles: Vec<(&[u8], bool, i64, &[u8])> = Vec::new();
        for (key, value) in latest {
            let (Some(prefix), Some(number), Some(v)) = (key.get(..2), key.get(2..), value) else { continue };
            if prefix == b"m:" || prefix == b"s:" {
                let n: i64 = std::str::from_utf8(number).ok().and_then(|t| t.parse().ok())
                    .ok_or_else(|| Unreadable("bundle key".into()))?;
                bundles.push((number, prefix == b"s:", n, v));
            }
        }
        bundles.sort_by(|a, b| a.0.cmp(b.0));
        for (_, settled, n, v) in bundles {
            if settled {
                self.restore_settled(n, v)?;
            } else {
                self.restore_bundle(n, v)?;
            }
        }
        // (borrowed from the values read: each is copied once, into its slot)
        let mut packed: Vec<(&str, &[u8])> = Vec::new();
        for &(key, value) in latest {
            let Some(v) = value else { continue };
            if key.starts_with(b"m:") || key.starts_with(b"s:") {
                continue;
            }
            let oid = std::str::from_utf8(key.get(2..).unwrap_or_default())
                .map_err(|_| Unreadable("key not UTF-8".into()))?;
            match key.get(..2) {
                Some(b"p:") if v.len() > 8 && v[8] & (pack::PERSISTED | pack::COMPACT) == pack::PERSISTED | pack::COMPACT => {
                    check_packed(v)?;
                    packed.push((oid, v));
                }
                Some(b"p:") => self.restore_pending_old(oid, v, now)?,
                Some(b"o:") => self.restore_order(oid, v)?,
                Some(b"r:") => self.restore_recovered(oid, v, now)?,
                _ => return Err(Unreadable(format!("unknown changelog key prefix {:?}", key.get(..2)))),
            }
        }
        // The table sized once: grown entry by entry, each growth hashed every key again
        // (31 % of a restore of 1 M pending payments, perf, 2026-12-07).
        self.pending.reserve(packed.len());
        for (oid, v) in packed {
            self.pending.insert_packed(oid, v);
        }
        self.settled.clear_fresh();
        self.deadlines.rebuild(&mut self.pending);
        self.compact_pending();
        Ok(())
    }

    fn restore_bundle(&mut self, number: i64, v: &[u8]) -> Result<(), Unreadable> {
        let mut at = 0;
        let mut expiry = 0;
        let window = self.window();
        let mut any = false;
        while at < v.len() {
            let head = v.get(at..at + 24).ok_or_else(|| Unreadable("short pair".into()))?;
            let n_oid = u16::from_be_bytes([head[0], head[1]]) as usize;
            let n_pid = u16::from_be_bytes([head[2], head[3]]) as usize;
            let n_raw = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
            let ts = i64::from_be_bytes(head[8..16].try_into().expect("8"));
            let paid_t = i64::from_be_bytes(head[16..24].try_into().expect("8"));
            at += 24;
            let take = |from: usize, n: usize| v.get(from..from + n).ok_or_else(|| Unreadable("short pair".into()));
            let oid = String::from_utf8(take(at, n_oid)?.to_vec()).map_err(|_| Unreadable("oid".into()))?;
            let pid = String::from_utf8(take(at + n_oid, n_pid)?.to_vec()).map_err(|_| Unreadable("pid".into()))?;
            let raw = take(at + n_oid + n_pid, n_raw)?.to_vec();
            at += n_oid + n_pid + n_raw;
            let id = self.next_id();
            let o = Order { id, ts, raw: Vec::new(), cmp: None, paid_id: Some(pid), paid_t, paid_raw: Some(raw),
                            persisted: false, trace: None };
            let e = o.expires_at(window);
            expiry = if any { expiry.max(e) } else { e };
            any = true;
            let seq = self.next_seq();
            if !self.settled.is_empty() {
                self.settled.remove(&oid); // (a bundle written later: the pair is newer)
            }
            self.orders.insert(oid.clone(), o);
            self.order_expiry.add(e, seq, &oid, id);
        }
        self.bundles.push(Reverse((expiry, number)));
        self.next_bundle = self.next_bundle.max(number + 1);
        Ok(())
    }

    /// A bundle of settled pairs (state._install_settled): each order_id, fingerprint and
    /// window end; a pair of the order installed before (its bundle written earlier) gives
    /// way, and one settled before goes to its later place (Settled::set).
    fn restore_settled(&mut self, number: i64, v: &[u8]) -> Result<(), Unreadable> {
        let mut at = 0;
        let mut last = 0;
        let mut any = false;
        while at < v.len() {
            let head = v.get(at..at + SETTLED_OVERHEAD).ok_or_else(|| Unreadable("short settled entry".into()))?;
            let n_oid = u16::from_be_bytes([head[0], head[1]]) as usize;
            let fp = u64::from_be_bytes(head[2..10].try_into().expect("8"));
            let end = be_i64(head, 10)?;
            at += SETTLED_OVERHEAD;
            let oid = v.get(at..at + n_oid).ok_or_else(|| Unreadable("short settled entry".into()))?;
            let oid = std::str::from_utf8(oid).map_err(|_| Unreadable("oid".into()))?;
            at += n_oid;
            if !self.orders.is_empty() {
                let key = oid.to_string();
                if self.orders.get(&key).is_some_and(|o| o.paid_id.is_some()) {
                    self.orders.remove(&key);
                }
            }
            self.settled.set(oid, fp, end);
            last = if any { last.max(end) } else { end };
            any = true;
        }
        self.settled_bundles.push(Reverse((last, number)));
        self.next_bundle = self.next_bundle.max(number + 1);
        Ok(())
    }

    fn restore_order(&mut self, oid: &str, v: &[u8]) -> Result<(), Unreadable> {
        let ts = be_i64(v, 0)?;
        let paid_t = be_i64(v, 8)?;
        let mut n = u32::from_be_bytes(v.get(16..20).ok_or_else(|| Unreadable("short order".into()))?.try_into().expect("4"));
        let mut at = 20;
        let mut trace = None;
        if n & 0x8000_0000 != 0 {
            (trace, at) = read_trace(v, at)?;
        }
        let mut cmp = None;
        if n & 0x4000_0000 != 0 {
            let (f, next) = read_fields(v, at, 3)?;
            at = next;
            cmp = Some((f[0].clone(), f[1].clone(), f[2].clone()));
        }
        n &= !(0x8000_0000 | 0x4000_0000);
        let raw = v.get(at..at + n as usize).ok_or_else(|| Unreadable("short order".into()))?.to_vec();
        let paid = &v[at + n as usize..];
        let paid_raw = (!paid.is_empty()).then(|| paid.to_vec());
        let paid_id = match &paid_raw {
            Some(r) => Some(entries::payment_id_of(r).ok_or_else(|| Unreadable("a pair's payment".into()))?),
            None => None,
        };
        let cmp = match cmp {
            Some(c) => c,
            None => {
                let o = decode::order(&raw).ok_or_else(|| Unreadable("an order the native decoder is unsure of".into()))?;
                (o.user_id, o.amount, o.currency.to_string())
            }
        };
        let id = self.next_id();
        let o = Order { id, ts, raw, cmp: Some(cmp), paid_id, paid_t, paid_raw, persisted: true, trace };
        let (e, seq) = (o.expires_at(self.window()), self.next_seq());
        self.orders.insert(oid.to_string(), o);
        self.order_expiry.add(e, seq, oid, id);
        Ok(())
    }

    fn restore_recovered(&mut self, oid: &str, v: &[u8], now: i64) -> Result<(), Unreadable> {
        let deadline = be_i64(v, 0)?;
        let flags = *v.get(8).ok_or_else(|| Unreadable("short".into()))?;
        let mut at = 9;
        let mut recovered_at = now;
        if flags & 2 != 0 {
            recovered_at = be_i64(v, 9)?;
            at = 17;
        }
        let mut trace = None;
        if flags & 4 != 0 {
            (trace, at) = read_trace(v, at)?;
        }
        let payment_id = if flags & 8 != 0 {
            let (f, next) = read_fields(v, at, 1)?;
            at = next;
            f[0].clone()
        } else {
            entries::payment_id_of(&v[at..]).ok_or_else(|| Unreadable("a recovered payment".into()))?
        };
        let id = self.next_id();
        let r = Recovered { id, payment_id, deadline, raw: v[at..].to_vec(), late: flags & 1 != 0, persisted: true,
                            recovered_at, trace };
        let seq = self.next_seq();
        self.recovered.insert(oid.to_string(), r);
        self.recovered_expiry.add(recovered_at, seq, oid, id);
        Ok(())
    }

    /// A pending payment of formats 1 and 2: its JSON, packed now.
    fn restore_pending_old(&mut self, oid: &str, v: &[u8], now: i64) -> Result<(), Unreadable> {
        let t = be_i64(v, 0)?;
        let flags = *v.get(8).ok_or_else(|| Unreadable("short".into()))?;
        if flags & pack::COMPACT != 0 {  // format 3 written without PERSISTED: as it is, persisted now
            check_packed(v)?;
            let mut e = v.to_vec();
            e[8] |= pack::PERSISTED;
            self.pending.insert_packed(oid, &e);
            return Ok(());
        }
        let mut at = 9;
        if flags & 2 != 0 {
            at = 17;
        }
        let mut trace = None;
        if flags & 4 != 0 {
            (trace, at) = read_trace(v, at)?;
        }
        if flags & 8 != 0 {
            at = read_fields(v, at, 4)?.1;
        }
        let _ = now;
        let record = v.get(at..).ok_or_else(|| Unreadable("short".into()))?;
        let p = decode::payment(record).ok_or_else(|| Unreadable("a payment the native decoder is unsure of".into()))?;
        let e = pack::entry(t, &pack::part(&p), (flags & pack::LATE) | pack::PERSISTED, trace.as_deref());
        self.pending.insert_packed(oid, &e);
        Ok(())
    }
}
