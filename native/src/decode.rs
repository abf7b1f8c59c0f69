//! Payments and orders decoded with the contract's rules, as schemas/fast.py does: a record
//! is returned only when the models would accept it with these very values; otherwise
//! `None`, "unsure", and the pydantic models decide (accept, or say why not). Differential
//! tests (tests/join/test_native.py) hold this to schemas/fast.py and the models.

use crate::currencies::CURRENCIES;
use crate::json::{self, Value};
use std::borrow::Cow;

pub const SAFE_INT: i64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq)]
pub enum Meta {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

pub type Metadata = Vec<(String, Meta)>;

/// An instant with the offset it was written with: RFC 3339 text as Python's datetime
/// holds it (microseconds since the epoch, UTC; the offset in seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Time {
    pub epoch_us: i64,
    pub offset_s: i32,
}

impl Time {
    /// Whole Unix milliseconds, rounded down (schemas.fields.epoch_ms).
    pub fn epoch_ms(&self) -> i64 {
        self.epoch_us.div_euclid(1000)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Payment {
    pub payment_id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount: String, // the text, as the model's Decimal keeps it ("12.50")
    pub currency: &'static str,
    pub succeeded: bool,
    pub paid_at: Time,
    pub metadata: Option<Metadata>,
    pub signature: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub order_id: String,
    pub user_id: String,
    pub amount: String,
    pub currency: &'static str,
    pub created_at: Time,
    pub metadata: Option<Metadata>,
}

type Fields<'a> = Vec<(Cow<'a, str>, Value<'a>)>;

/// Each known field at most once, no unknown one; None if the record has another shape.
fn pick<'a, const N: usize>(fields: Fields<'a>, names: [&str; N]) -> Option<[Option<Value<'a>>; N]> {
    let mut found: [Option<Value<'a>>; N] = std::array::from_fn(|_| None);
    for (key, value) in fields {
        let at = names.iter().position(|n| *n == key)?;
        if found[at].is_some() {
            return None; // a repeated key: the model says so (DuplicateKeyError)
        }
        found[at] = Some(value);
    }
    Some(found)
}

fn text(v: Option<Value<'_>>) -> Option<Cow<'_, str>> {
    match v? {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

fn identifier(v: Option<Value<'_>>) -> Option<String> {
    let s = text(v)?;
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b[1..].iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
    ok.then(|| s.into_owned())
}

/// `[0-9]{1,12}(\.[0-9]{1,4})?` and not zero.
fn amount(v: Option<Value<'_>>) -> Option<String> {
    let s = text(v)?;
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (s.as_ref(), None),
    };
    let digits = |t: &str, max: usize| !t.is_empty() && t.len() <= max && t.bytes().all(|c| c.is_ascii_digit());
    if !digits(int, 12) || !frac.map_or(true, |f| digits(f, 4)) {
        return None;
    }
    if !s.bytes().any(|c| matches!(c, b'1'..=b'9')) {
        return None;
    }
    // As str(Decimal(text)): leading zeros of the whole part go, trailing ones stay.
    let whole = int.trim_start_matches('0');
    let whole = if whole.is_empty() { "0" } else { whole };
    Some(match frac {
        Some(f) => format!("{whole}.{f}"),
        None => whole.to_string(),
    })
}

fn currency(v: Option<Value<'_>>) -> Option<&'static str> {
    let s = text(v)?;
    CURRENCIES.binary_search(&s.as_ref()).ok().map(|i| CURRENCIES[i])
}

/// RFC 3339 with an offset, as schemas.fields.RFC3339 says it and datetime.fromisoformat
/// reads it (upper-case T and Z only: the lower-case ones are left to the model).
pub fn time(s: &str) -> Option<Time> {
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        part.iter().all(|c| c.is_ascii_digit()).then(|| part.iter().fold(0i64, |n, c| n * 10 + (c - b'0') as i64))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if year < 1 || !(1..=12).contains(&month) || day < 1 || day > days_in(year, month) || hour > 23 || minute > 59
        || second > 59
    {
        return None;
    }
    let mut at = 19;
    let mut micros = 0i64;
    if b[at] == b'.' {
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if !(1..=6).contains(&digits) {
            return None;
        }
        micros = num(at + 1, digits)? * 10i64.pow(6 - digits as u32);
        at += 1 + digits;
    }
    let offset = match b.get(at..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(at + 1, 2)?, num(at + 4, 2)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some(Time { epoch_us: seconds * 1_000_000 + micros, offset_s: offset as i32 })
}

fn days_in(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn timestamp(v: Option<Value<'_>>) -> Option<Time> {
    time(&text(v)?)
}

/// schemas.fields.Metadata: at most 32 keys of 1-64 characters (no NUL); values a string
/// of at most 1,024 characters (no NUL), a number within +-(2^53 - 1), a bool or null.
/// Absent and null are both None (the models keep no metadata for either).
fn metadata(v: Option<Value<'_>>) -> Option<Option<Metadata>> {
    let fields = match v {
        None | Some(Value::Null) => return Some(None),
        Some(Value::Obj(fields)) => fields,
        Some(_) => return None,
    };
    if fields.len() > 32 {
        return None;
    }
    let mut out = Vec::with_capacity(fields.len());
    for (key, value) in fields {
        let chars = key.chars().count();
        if chars == 0 || chars > 64 || key.contains('\0') || out.iter().any(|(k, _)| *k == key) {
            return None;
        }
        let value = match value {
            Value::Str(s) if s.chars().count() <= 1024 && !s.contains('\0') => Meta::Str(s.into_owned()),
            Value::Int(n) if (-SAFE_INT..=SAFE_INT).contains(&n) => Meta::Int(n),
            Value::Float(f) if f.abs() <= SAFE_INT as f64 => Meta::Float(f),
            Value::Bool(b) => Meta::Bool(b),
            Value::Null => Meta::Null,
            _ => return None,
        };
        out.push((key.into_owned(), value));
    }
    Some(Some(out))
}

fn signature(v: Option<Value<'_>>) -> Option<Option<[u8; 32]>> {
    let s = match v {
        None | Some(Value::Null) => return Some(None),
        Some(Value::Str(s)) => s,
        Some(_) => return None,
    };
    let b = s.as_bytes();
    if b.len() != 64 || !b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(Some(out))
}

const PAYMENT_FIELDS: [&str; 9] =
    ["payment_id", "order_id", "user_id", "amount", "currency", "status", "paid_at", "metadata", "signature"];
const ORDER_FIELDS: [&str; 6] = ["order_id", "user_id", "amount", "currency", "created_at", "metadata"];

pub fn payment(raw: &[u8]) -> Option<Payment> {
    let [pid, oid, uid, amt, cur, status, paid, meta, sig] = pick(json::parse(raw).ok()?, PAYMENT_FIELDS)?;
    let succeeded = match text(status)?.as_ref() {
        "succeeded" => true,
        "failed" => false,
        _ => return None,
    };
    Some(Payment {
        payment_id: identifier(pid)?,
        order_id: identifier(oid)?,
        user_id: identifier(uid)?,
        amount: amount(amt)?,
        currency: currency(cur)?,
        succeeded,
        paid_at: timestamp(paid)?,
        metadata: metadata(meta)?,
        signature: signature(sig)?,
    })
}

pub fn order(raw: &[u8]) -> Option<Order> {
    let [oid, uid, amt, cur, created, meta] = pick(json::parse(raw).ok()?, ORDER_FIELDS)?;
    Some(Order {
        order_id: identifier(oid)?,
        user_id: identifier(uid)?,
        amount: amount(amt)?,
        currency: currency(cur)?,
        created_at: timestamp(created)?,
        metadata: metadata(meta)?,
    })
}

/// An amount as the contract's signing string writes it: the plain decimal without
/// trailing zeros (`10.50` -> `10.5`, `10.00` -> `10`, `007.5` -> `7.5`).
pub fn plain_amount(text: &str) -> String {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    if frac.is_empty() { int.to_string() } else { format!("{int}.{frac}") }
}

/// Two amounts as Decimals compare them (`12.3` == `12.30`).
pub fn same_amount(a: &str, b: &str) -> bool {
    a == b || plain_amount(a) == plain_amount(b)
}
