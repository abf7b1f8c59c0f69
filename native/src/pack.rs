//! A pending payment's compact form, byte for byte as streams/join/compact.py writes it
//! (changelog format 3): the same bytes in memory and in the changelog, so a Python worker
//! restores what a native one wrote and the other way round.
//!
//!     >qB header: event time t (ms), flags (LATE 1, TRACE 4, COMPACT 16, PERSISTED 128)
//!     [TRACE: one length byte, the traceparent]
//!     the payment part: msgspec's MessagePack of (payment_id, user_id, amount text,
//!     currency, paid_at (UTC timestamp extension), paid_at's offset in seconds,
//!     metadata or nil, signature as 32 bytes or nil)

use crate::decode::{Meta, Metadata, Payment};

pub const LATE: u8 = 1;
pub const TRACE: u8 = 4;
pub const COMPACT: u8 = 16;
pub const PERSISTED: u8 = 128;
const MAX_TRACE: usize = 255;

pub fn entry(t: i64, part: &[u8], flags: u8, trace: Option<&[u8]>) -> Vec<u8> {
    let flags = COMPACT | (flags & (LATE | PERSISTED));
    let mut out = Vec::with_capacity(10 + part.len() + trace.map_or(0, |t| t.len() + 1));
    out.extend_from_slice(&t.to_be_bytes());
    match trace {
        Some(tr) if !tr.is_empty() && tr.len() <= MAX_TRACE => {
            out.push(flags | TRACE);
            out.push(tr.len() as u8);
            out.extend_from_slice(tr);
        }
        _ => out.push(flags),
    }
    out.extend_from_slice(part);
    out
}

pub fn part(p: &Payment) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(0x98); // an array of 8
    str_(&mut out, &p.payment_id);
    str_(&mut out, &p.user_id);
    str_(&mut out, &p.amount);
    str_(&mut out, p.currency);
    timestamp(&mut out, p.paid_at.epoch_us);
    int(&mut out, p.paid_at.offset_s as i64);
    match &p.metadata {
        Some(m) => map(&mut out, m),
        None => out.push(0xc0),
    }
    match &p.signature {
        Some(sig) => {
            out.push(0xc4);
            out.push(32);
            out.extend_from_slice(sig);
        }
        None => out.push(0xc0),
    }
    out
}

fn str_(out: &mut Vec<u8>, s: &str) {
    let n = s.len();
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n < 256 {
        out.push(0xd9);
        out.push(n as u8);
    } else if n < 65_536 {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
}

/// msgspec's choice: the smallest encoding, unsigned for 0 and above.
fn int(out: &mut Vec<u8>, v: i64) {
    if (0..128).contains(&v) {
        out.push(v as u8);
    } else if (-32..0).contains(&v) {
        out.push(v as i8 as u8);
    } else if v >= 0 {
        if v < 256 {
            out.push(0xcc);
            out.push(v as u8);
        } else if v < 65_536 {
            out.push(0xcd);
            out.extend_from_slice(&(v as u16).to_be_bytes());
        } else if v < 1 << 32 {
            out.push(0xce);
            out.extend_from_slice(&(v as u32).to_be_bytes());
        } else {
            out.push(0xcf);
            out.extend_from_slice(&(v as u64).to_be_bytes());
        }
    } else if v >= -128 {
        out.push(0xd0);
        out.push(v as i8 as u8);
    } else if v >= -32_768 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= -(1 << 31) {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// The timestamp extension (-1): 32 bits of seconds when there is no fraction, 64 bits
/// (nanoseconds and 34 bits of seconds) up to 2514, 96 bits otherwise (msgspec's choice).
fn timestamp(out: &mut Vec<u8>, epoch_us: i64) {
    let secs = epoch_us.div_euclid(1_000_000);
    let nanos = (epoch_us.rem_euclid(1_000_000) * 1000) as u64;
    if (0..1 << 34).contains(&secs) {
        if nanos == 0 && secs < 1 << 32 {
            out.extend_from_slice(&[0xd6, 0xff]);
            out.extend_from_slice(&(secs as u32).to_be_bytes());
        } else {
            out.extend_from_slice(&[0xd7, 0xff]);
            out.extend_from_slice(&((nanos << 34) | secs as u64).to_be_bytes());
        }
    } else {
        out.extend_from_slice(&[0xc7, 12, 0xff]);
        out.extend_from_slice(&(nanos as u32).to_be_bytes());
        out.extend_from_slice(&secs.to_be_bytes());
    }
}

fn map(out: &mut Vec<u8>, m: &Metadata) {
    let n = m.len();
    if n < 16 {
        out.push(0x80 | n as u8);
    } else {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    }
    for (k, v) in m {
        str_(out, k);
        match v {
            Meta::Str(s) => str_(out, s),
            Meta::Int(i) => int(out, *i),
            Meta::Float(f) => {
                out.push(0xcb);
                out.extend_from_slice(&f.to_be_bytes());
            }
            Meta::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
            Meta::Null => out.push(0xc0),
        }
    }
}
