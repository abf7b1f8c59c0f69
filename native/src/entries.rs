//! What the join remembers, as streams/join/state.py and compact.py hold it, and each
//! entry's changelog value byte for byte as streams/join/changelog.py writes it (format 3).

use crate::decode::{self, Payment};
use crate::pack;

/// A pending payment, as its map (pending.rs) holds it: fresh (as read, since the last
/// commit) or packed (compact.py).
#[derive(Clone, Copy)]
pub enum Pending<'a> {
    Fresh(&'a Fresh),
    Packed(&'a [u8]),
}

pub struct Fresh {
    pub t: i64,
    pub flags: u8,
    pub trace: Option<Vec<u8>>,
    pub payment: Payment,
    pub raw: Vec<u8>,
}

impl<'a> Pending<'a> {
    pub fn t(&self) -> i64 {
        match self {
            Pending::Fresh(f) => f.t,
            Pending::Packed(e) => i64::from_be_bytes(e[..8].try_into().expect("8 bytes")),
        }
    }

    pub fn flags(&self) -> u8 {
        match self {
            Pending::Fresh(f) => f.flags,
            Pending::Packed(e) => e[8],
        }
    }

    pub fn trace(&self) -> Option<&'a [u8]> {
        match *self {
            Pending::Fresh(f) => f.trace.as_deref(),
            Pending::Packed(e) => (e[8] & pack::TRACE != 0).then(|| &e[10..10 + e[9] as usize]),
        }
    }

    /// The record a matched pair or recovered payment keeps: the raw JSON of a fresh entry,
    /// the payment part of a packed one.
    pub fn record(&self) -> Vec<u8> {
        match self {
            Pending::Fresh(f) => f.raw.clone(),
            Pending::Packed(e) => part_of(e).to_vec(),
        }
    }

    pub fn payment_id(&self) -> String {
        match self {
            Pending::Fresh(f) => f.payment.payment_id.clone(),
            Pending::Packed(e) => read_part(part_of(e)).map(|f| f.0).unwrap_or_default(),
        }
    }

    /// (payment_id, user_id, amount text, currency) as a match compares them.
    pub fn match_fields(&self) -> (String, String, String, String) {
        match self {
            Pending::Fresh(f) => {
                let p = &f.payment;
                (p.payment_id.clone(), p.user_id.clone(), p.amount.clone(), p.currency.to_string())
            }
            Pending::Packed(e) => read_part(part_of(e)).unwrap_or_default(),
        }
    }

    /// Its compact entry, PERSISTED set (what a commit writes and keeps).
    pub fn packed(&self) -> Vec<u8> {
        match self {
            Pending::Fresh(f) => {
                pack::entry(f.t, &pack::part(&f.payment), f.flags | pack::PERSISTED, f.trace.as_deref())
            }
            Pending::Packed(e) => {
                let mut e = e.to_vec();
                e[8] |= pack::PERSISTED;
                e
            }
        }
    }
}

pub fn part_of(e: &[u8]) -> &[u8] {
    if e[8] & pack::TRACE != 0 {
        &e[10 + e[9] as usize..]
    } else {
        &e[9..]
    }
}

/// The first four fields of a payment part (MessagePack array: payment_id, user_id,
/// amount text, currency), or None if it is not one.
pub fn read_part(part: &[u8]) -> Option<(String, String, String, String)> {
    if part.first()? & 0xf0 != 0x90 {
        return None;
    }
    let mut at = 1;
    let mut next = || -> Option<String> {
        let tag = *part.get(at)?;
        let (len, head) = match tag {
            0xa0..=0xbf => ((tag & 0x1f) as usize, 1),
            0xd9 => (*part.get(at + 1)? as usize, 2),
            0xda => (u16::from_be_bytes(part.get(at + 1..at + 3)?.try_into().ok()?) as usize, 3),
            0xdb => (u32::from_be_bytes(part.get(at + 1..at + 5)?.try_into().ok()?) as usize, 5),
            _ => return None,
        };
        let text = std::str::from_utf8(part.get(at + head..at + head + len)?).ok()?.to_string();
        at += head + len;
        Some(text)
    };
    Some((next()?, next()?, next()?, next()?))
}

/// Whether a record is a packed payment part (compact.is_part): a MessagePack fixarray.
pub fn is_part(record: &[u8]) -> bool {
    record.first().is_some_and(|b| b & 0xf0 == 0x90)
}

/// The payment_id of a record a matched pair or recovered payment keeps.
pub fn payment_id_of(record: &[u8]) -> Option<String> {
    if is_part(record) {
        read_part(record).map(|f| f.0)
    } else {
        decode::payment(record).map(|p| p.payment_id)
    }
}

/// An order kept for a payment still to come, or a matched order kept to spot duplicates.
pub struct Order {
    pub id: u64, // for "is it still the one under its key" (the Python core's `is`)
    pub ts: i64,
    pub raw: Vec<u8>,
    pub cmp: Option<(String, String, String)>, // user_id, amount text, currency
    pub paid_id: Option<String>,
    pub paid_t: i64,
    pub paid_raw: Option<Vec<u8>>,
    pub persisted: bool,
    pub trace: Option<Vec<u8>>,
}

impl Order {
    pub fn expires_at(&self, window_ms: i64) -> i64 {
        self.ts.max(self.paid_t) + window_ms
    }
}

pub struct Recovered {
    pub id: u64,
    pub payment_id: String,
    pub deadline: i64,
    pub raw: Vec<u8>,
    pub late: bool,
    pub persisted: bool,
    pub recovered_at: i64,
    pub trace: Option<Vec<u8>>,
}

// ---------------------------------------------------------------- changelog values

const ORDER_TRACES: u32 = 0x8000_0000;
const ORDER_FIELDS: u32 = 0x4000_0000;
const HAS_RECOVERED_AT: u8 = 2;
const HAS_TRACE: u8 = 4;
const HAS_FIELDS: u8 = 8;

fn trace_field(trace: Option<&[u8]>, out: &mut Vec<u8>) -> bool {
    match trace {
        Some(t) if !t.is_empty() && t.len() <= 255 => {
            out.push(t.len() as u8);
            out.extend_from_slice(t);
            true
        }
        _ => false,
    }
}

/// Each value's text, one length byte and UTF-8; nothing if one is too long.
fn fields(values: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        if v.len() > 255 {
            return Vec::new();
        }
        out.push(v.len() as u8);
        out.extend_from_slice(v.as_bytes());
    }
    out
}

pub fn order_value(o: &Order) -> Vec<u8> {
    let mut trace = Vec::new();
    let traced = trace_field(o.trace.as_deref(), &mut trace);
    let f = match (&o.cmp, &o.paid_raw) {
        (Some((u, a, c)), None) => fields(&[u, a, c]),
        _ => Vec::new(),
    };
    let n = o.raw.len() as u32 | if traced { ORDER_TRACES } else { 0 } | if f.is_empty() { 0 } else { ORDER_FIELDS };
    let mut out = Vec::with_capacity(20 + trace.len() + f.len() + o.raw.len());
    out.extend_from_slice(&o.ts.to_be_bytes());
    out.extend_from_slice(&o.paid_t.to_be_bytes());
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&trace);
    out.extend_from_slice(&f);
    out.extend_from_slice(&o.raw);
    if let Some(p) = &o.paid_raw {
        out.extend_from_slice(p);
    }
    out
}

pub fn recovered_value(r: &Recovered) -> Vec<u8> {
    let mut trace = Vec::new();
    let traced = trace_field(r.trace.as_deref(), &mut trace);
    let f = fields(&[&r.payment_id]);
    let flags = r.late as u8 | HAS_RECOVERED_AT | if traced { HAS_TRACE } else { 0 } | if f.is_empty() { 0 } else { HAS_FIELDS };
    let mut out = Vec::with_capacity(17 + trace.len() + f.len() + r.raw.len());
    out.extend_from_slice(&r.deadline.to_be_bytes());
    out.push(flags);
    out.extend_from_slice(&r.recovered_at.to_be_bytes());
    out.extend_from_slice(&trace);
    out.extend_from_slice(&f);
    out.extend_from_slice(&r.raw);
    out
}

/// A bundle of matched pairs: for each, the lengths of order_id, payment_id and payment
/// record, the order's time and the payment's, then the three.
pub fn bundle_value(pairs: &[(String, &Order)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (oid, o) in pairs {
        let pid = o.paid_id.as_deref().unwrap_or("");
        let raw = o.paid_raw.as_deref().unwrap_or(&[]);
        out.extend_from_slice(&(oid.len() as u16).to_be_bytes());
        out.extend_from_slice(&(pid.len() as u16).to_be_bytes());
        out.extend_from_slice(&(raw.len() as u32).to_be_bytes());
        out.extend_from_slice(&o.ts.to_be_bytes());
        out.extend_from_slice(&o.paid_t.to_be_bytes());
        out.extend_from_slice(oid.as_bytes());
        out.extend_from_slice(pid.as_bytes());
        out.extend_from_slice(raw);
    }
    out
}

/// A bundle of settled pairs (changelog._SETTLED_ENTRY): for each, the length of its
/// order_id, its payment's fingerprint and its window's end, then the order_id.
pub fn settled_value(entries: &[(&str, u64, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|(oid, ..)| 18 + oid.len()).sum());
    for (oid, fp, end) in entries {
        out.extend_from_slice(&(oid.len() as u16).to_be_bytes());
        out.extend_from_slice(&fp.to_be_bytes());
        out.extend_from_slice(&end.to_be_bytes());
        out.extend_from_slice(oid.as_bytes());
    }
    out
}
