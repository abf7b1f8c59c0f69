//! The record path of the pairs a worker holds, one consumed batch per call:
//! streams/join/pipeline.py, merge.py (hold, merge), intake.py and progress.PartitionEnd
//! ported, with the core of each pair native (core.rs). Python keeps consume, produce and
//! the transaction (streams/join/native.py: NativePipeline), and builds the rare outputs:
//! dead letters, recoveries, late orders and anomalies.
//!
//! A record is read from its `confluent_kafka.Message` once it is released by the merge:
//! headers (through the checked call path, so an unreadable header name is an error,
//! never a crash), key and value. The native decoder decides it when it is sure; when it
//! is not, Python's model does (the `fallback` callable: the model's fields, or the
//! model's error for the DLQ).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

use crate::core::{self, Core};
use crate::decode;
use crate::omap::OMap;

const PAYMENT: usize = 0;
const ORDER: usize = 1;
pub const HOLD_MAX_RECORDS: usize = 100_000;
pub const HOLD_MAX_SECONDS: f64 = 5.0;
pub const MIN_EVENT_MS: i64 = 946_684_800_000;
pub const MAX_INPUT_BYTES: usize = 64 * 1024;

/// One input partition of a pair (progress.PartitionEnd).
#[derive(Clone, Copy)]
pub struct End {
    pub fetched_to: i64,
    pub fetch_end: bool,
    pub end_epoch: i64,
    pub at_end: bool,
}

impl Default for End {
    fn default() -> Self {
        Self { fetched_to: 0, fetch_end: false, end_epoch: -1, at_end: false }
    }
}

impl End {
    fn record(&mut self, offset: i64) {
        self.fetched_to = offset + 1;
        self.fetch_end = false;
    }

    fn eof(&mut self, offset: i64, epoch: i64) {
        if self.fetched_to <= offset {
            self.fetch_end = true;
            self.end_epoch = epoch;
            self.fetched_to = offset;
        }
    }

    pub fn stale(&self, epoch: i64) -> bool {
        self.fetch_end && self.end_epoch != epoch
    }

    pub fn confirm(&mut self, end_offset: i64, epoch: i64) -> bool {
        if self.fetch_end && self.fetched_to >= end_offset {
            self.end_epoch = epoch;
            return true;
        }
        false
    }
}

struct Held {
    ts: i64,
    offset: i64,
    msg: Py<PyAny>,
}

pub struct Pair {
    pub partition: i32,
    pub core: Core,
    held: [VecDeque<Held>; 2],
    pub ends: [End; 2],
    holding_since: Option<f64>,
}

impl Pair {
    pub fn new(partition: i32, core: Core) -> Self {
        Self { partition, core, held: [VecDeque::new(), VecDeque::new()], ends: [End::default(); 2], holding_since: None }
    }

    pub fn held(&self) -> usize {
        self.held[0].len() + self.held[1].len()
    }
}

/// Why a record goes to the DLQ; Python words it (streams/join/intake.py) and writes it.
enum Reject {
    Size(usize),
    Key(String),
    Time,
    Model(PyErr),
    Internal(PyErr),
}

#[pyclass]
pub struct Pipeline {
    params: core::Params,
    topics: [String; 2],
    max_future_ms: i64,
    grace_ms: i64,
    eof_code: i64,
    rejected: Py<PyAny>,
    fallback: Py<PyAny>,
    unreadable: Py<PyAny>,
    pub pairs: OMap<i32, Pair>,
    now_ms: i64,
    latest_ok_ms: i64,
    #[pyo3(get)]
    fed: u64,
}

fn side_of(topics: &[String; 2], topic: &Bound<'_, PyAny>) -> Option<usize> {
    let t = topic.cast::<PyString>().ok()?;
    let t = t.to_str().ok()?;
    topics.iter().position(|x| x == t)
}

/// The valid W3C traceparent among a record's headers (schemas.headers.traceparent):
/// none if it has none, more than one, or one that is not valid.
fn traceparent(headers: &Bound<'_, PyList>) -> PyResult<Option<Vec<u8>>> {
    let mut found: Option<Option<Vec<u8>>> = None;
    for h in headers.iter() {
        let h = h.cast_into::<PyTuple>()?;
        let name = h.get_item(0)?;
        let is_trace = name.cast::<PyString>().ok().and_then(|n| n.to_str().ok()).is_some_and(|n| n == "traceparent");
        if !is_trace {
            continue;
        }
        if found.is_some() {
            return Ok(None);
        }
        let value = h.get_item(1)?;
        found = Some(value.cast::<PyBytes>().ok().map(|b| b.as_bytes().to_vec()));
    }
    Ok(found.flatten().filter(|v| valid_traceparent(v)))
}

pub fn valid_traceparent(v: &[u8]) -> bool {
    let hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    v.len() == 55
        && v.starts_with(b"00-")
        && v[35] == b'-'
        && v[52] == b'-'
        && hex(&v[3..35])
        && hex(&v[36..52])
        && hex(&v[53..55])
        && v[3..35].iter().any(|c| *c != b'0')
        && v[36..52].iter().any(|c| *c != b'0')
}

/// What a record's headers weigh: names (UTF-8, lone surrogates as 3 bytes) and values.
fn header_bytes(headers: &Bound<'_, PyList>) -> PyResult<usize> {
    let py = headers.py();
    let mut n = 0;
    for h in headers.iter() {
        let h = h.cast_into::<PyTuple>()?;
        let name = h.get_item(0)?;
        n += match name.cast::<PyString>().ok().and_then(|s| s.to_str().ok()) {
            Some(s) => s.len(),
            None => name.call_method1(intern!(py, "encode"), ("utf-8", "surrogatepass"))?.len()?,
        };
        let value = h.get_item(1)?;
        if !value.is_none() {
            n += value.len()?;
        }
    }
    Ok(n)
}

fn bytes_of<'py>(v: &'py Bound<'py, PyAny>) -> Option<&'py [u8]> {
    v.cast::<PyBytes>().ok().map(|b| b.as_bytes())
}

impl Pipeline {
    /// One record released by the merge: decided by the core, or a reason for the DLQ.
    fn feed(&mut self, py: Python<'_>, part: i32, side: usize, h: Held, letters: &Bound<'_, PyList>,
            offsets: &mut Vec<(usize, i32, i64)>) -> PyResult<()> {
        let m = h.msg.bind(py);
        let (headers, unreadable) = match m.call_method0(intern!(py, "headers")) {
            Ok(v) => (v, None),
            Err(e) => (py.None().into_bound(py), Some(self.unreadable.call1(py, (e,))?)),
        };
        let verdict = catch_unwind(AssertUnwindSafe(|| self.intake(py, part, side, h.ts, m, &headers)))
            .unwrap_or_else(|panic| {
                let why = panic.downcast_ref::<&str>().map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                Err(Reject::Internal(PyRuntimeError::new_err(format!("native core panicked: {why}"))))
            });
        if let Err(reject) = verdict {
            let (kind, detail): (&str, Py<PyAny>) = match reject {
                Reject::Size(n) => ("size", n.into_pyobject(py)?.into_any().unbind()),
                Reject::Key(oid) => ("key", oid.into_pyobject(py)?.into_any().unbind()),
                Reject::Time => ("time", py.None()),
                Reject::Model(e) => ("model", e.into_value(py).into_any()),
                Reject::Internal(e) => ("internal", e.into_value(py).into_any()),
            };
            letters.append((m, headers, unreadable, kind, detail))?;
        }
        match offsets.iter_mut().find(|(s, p, _)| *s == side && *p == part) {
            Some(o) => o.2 = o.2.max(h.offset + 1),
            None => offsets.push((side, part, h.offset + 1)),
        }
        self.fed += 1;
        Ok(())
    }

    fn pair(&mut self, part: i32) -> &mut Pair {
        self.pairs.get_mut(&part).expect("a held record's pair is held")
    }

    /// A record the native decoder is unsure of, as the model decides it: its fields, or
    /// the model's refusal as a rejection (the record's dead letter).
    fn model_fields(&self, py: Python<'_>, side: usize, raw: &[u8]) -> Result<Py<PyAny>, Reject> {
        self.fallback.call1(py, (side, PyBytes::new(py, raw))).map_err(|e| reject(py, &self.rejected, e))
    }

    fn intake(&mut self, py: Python<'_>, part: i32, side: usize, ts: i64, m: &Bound<'_, PyAny>,
              headers: &Bound<'_, PyAny>) -> Result<(), Reject> {
        let internal = Reject::Internal;
        let value = m.call_method0(intern!(py, "value")).map_err(internal)?;
        let key = m.call_method0(intern!(py, "key")).map_err(internal)?;
        let raw = bytes_of(&value).unwrap_or(b"");
        let key = bytes_of(&key);
        let headers = headers.cast::<PyList>().ok();
        let mut size = raw.len() + key.map_or(0, <[u8]>::len);
        if let Some(hs) = headers.filter(|h| !h.is_empty()) {
            size += header_bytes(hs).map_err(internal)?;
        }
        if size > MAX_INPUT_BYTES {
            return Err(Reject::Size(size));
        }
        let trace = match headers.filter(|h| !h.is_empty()) {
            Some(hs) => traceparent(hs).map_err(internal)?,
            None => None,
        };
        if side == PAYMENT {
            let p = match decode::payment(raw) {
                Some(p) => p,
                None => crate::payment_of(self.model_fields(py, side, raw)?.extract(py).map_err(internal)?)
                    .map_err(internal)?,
            };
            check(key, &p.order_id, ts)?;
            self.pair(part).core.on_payment(ts, p, raw, trace.as_deref());
        } else {
            let o = match decode::order(raw) {
                Some(o) => o,
                None => crate::order_of(self.model_fields(py, side, raw)?.extract(py).map_err(internal)?)
                    .map_err(internal)?,
            };
            check(key, &o.order_id, ts)?;
            self.pair(part).core.on_order(ts, o, raw, trace.as_deref());
        }
        Ok(())
    }
}

fn reject(py: Python<'_>, rejected: &Py<PyAny>, e: PyErr) -> Reject {
    if e.get_type(py).is_subclass(rejected.bind(py)).unwrap_or(false) {
        Reject::Model(e)
    } else {
        Reject::Internal(e)
    }
}

fn check(key: Option<&[u8]>, order_id: &str, ts: i64) -> Result<(), Reject> {
    if key != Some(order_id.as_bytes()) {
        return Err(Reject::Key(order_id.to_string()));
    }
    if ts < 0 {
        return Err(Reject::Time);
    }
    Ok(())
}

type Taken<'py> = (Bound<'py, PyList>, (u64, u64), (u64, u64));
type Merged<'py> = (Bound<'py, PyList>, Vec<(usize, i32, i64)>, (u64, u64));

#[pymethods]
impl Pipeline {
    #[new]
    #[pyo3(signature = (timeout_ms, grace_ms, late_horizon_ms, hmac_keys, payments_topic, orders_topic, max_future_ms,
                        eof_code, rejected, fallback, unreadable))]
    #[allow(clippy::too_many_arguments)]
    fn new(timeout_ms: i64, grace_ms: i64, late_horizon_ms: i64, hmac_keys: Vec<Vec<u8>>, payments_topic: String,
           orders_topic: String, max_future_ms: i64, eof_code: i64, rejected: Py<PyAny>, fallback: Py<PyAny>,
           unreadable: Py<PyAny>) -> Self {
        Pipeline {
            params: core::Params { timeout_ms, grace_ms, late_horizon_ms, hmac_keys },
            topics: [payments_topic, orders_topic],
            max_future_ms,
            grace_ms,
            eof_code,
            rejected,
            fallback,
            unreadable,
            pairs: OMap::default(),
            now_ms: 0,
            latest_ok_ms: 0,
            fed: 0,
        }
    }

    /// Step 1 (merge.hold): a consumed batch into the pairs' held queues. Returns the
    /// consumer errors other than ends of partition, the records per side, and those
    /// stamped ahead of the clock + GRACE per side (counted by Python).
    fn take<'py>(&mut self, py: Python<'py>, msgs: &Bound<'py, PyList>, now_ms: i64, epoch: i64) -> PyResult<Taken<'py>> {
        self.now_ms = now_ms;
        self.latest_ok_ms = now_ms + self.max_future_ms;
        let ahead_ms = now_ms + self.grace_ms;
        let errors = PyList::empty(py);
        let (mut counts, mut ahead) = ([0u64; 2], [0u64; 2]);
        for m in msgs.iter() {
            let err = m.call_method0(intern!(py, "error"))?;
            let side = side_of(&self.topics, &m.call_method0(intern!(py, "topic"))?);
            let part: Option<i32> = m.call_method0(intern!(py, "partition"))?.extract().ok();
            let pair = part.and_then(|p| self.pairs.get_mut(&p));
            if !err.is_none() {
                let code: i64 = err.call_method0(intern!(py, "code"))?.extract()?;
                if code != self.eof_code {
                    errors.append(&m)?;
                } else if let (Some(pair), Some(side)) = (pair, side) {
                    let offset: i64 = m.call_method0(intern!(py, "offset"))?.extract()?;
                    pair.ends[side].eof(offset, epoch);
                }
                continue;
            }
            let (Some(pair), Some(side)) = (pair, side) else { continue };
            let stamp = m.call_method0(intern!(py, "timestamp"))?;
            let mut ts: i64 = stamp.cast::<PyTuple>()?.get_item(1)?.extract()?;
            if ts > self.latest_ok_ms || ts < MIN_EVENT_MS {
                ts = -1;
            } else if ts > ahead_ms {
                ahead[side] += 1;
            }
            let offset: i64 = m.call_method0(intern!(py, "offset"))?.extract()?;
            pair.held[side].push_back(Held { ts, offset, msg: m.unbind() });
            pair.ends[side].record(offset);
            counts[side] += 1;
        }
        Ok((errors, (counts[0], counts[1]), (ahead[0], ahead[1])))
    }

    /// Step 2 (merge.merge and the feed): each pair's held records in event-time order
    /// into its core; then which partitions are read to their end (`trusts(epoch)`).
    /// `unread(partition, side, fetched_to)`: records left to fetch past `fetched_to` (given,
    /// so that the callback needs nothing of this object: it is borrowed for the whole call,
    /// and a call back into it would be refused). Returns the dead letters (message,
    /// headers, why unreadable, kind, detail), the next offsets decided per (side,
    /// partition), and the records released by (too many, too long).
    fn merge<'py>(&mut self, py: Python<'py>, monotonic: f64, trusts: &Bound<'py, PyAny>, unread: &Bound<'py, PyAny>)
                  -> PyResult<Merged<'py>> {
        let letters = PyList::empty(py);
        let mut offsets = Vec::new();
        let mut released = (0u64, 0u64);
        let parts: Vec<i32> = self.pairs.iter().map(|(p, _)| *p).collect();
        for part in parts {
            let mut feed: Vec<(usize, Held)> = Vec::new();
            {
                let pair = self.pairs.get_mut(&part).expect("listed");
                if pair.held[0].is_empty() && pair.held[1].is_empty() {
                    // nothing to merge
                } else {
                    let merged = !pair.held[0].is_empty() && !pair.held[1].is_empty();
                    while let (Some(p), Some(o)) = (pair.held[0].front(), pair.held[1].front()) {
                        let side = if o.ts < p.ts { ORDER } else { PAYMENT };
                        feed.push((side, pair.held[side].pop_front().expect("front")));
                    }
                    let side = if pair.held[0].is_empty() { ORDER } else { PAYMENT };
                    if pair.held[side].is_empty() {
                        pair.holding_since = None;
                    } else {
                        if merged || pair.holding_since.is_none() {
                            pair.holding_since = Some(monotonic);
                        }
                        let other = 1 - side;
                        let fetched_all = pair.ends[other].fetch_end;
                        let rest = pair.held[side].len();
                        let release = fetched_all || rest > HOLD_MAX_RECORDS || {
                            monotonic - pair.holding_since.unwrap_or(monotonic) > HOLD_MAX_SECONDS
                                && !unread.call1((part, other, pair.ends[other].fetched_to))?.is_truthy()?
                        };
                        if release {
                            if !fetched_all {
                                if rest > HOLD_MAX_RECORDS { released.0 += rest as u64 } else { released.1 += rest as u64 }
                            }
                            feed.extend(pair.held[side].drain(..).map(|h| (side, h)));
                            pair.holding_since = None;
                        }
                    }
                }
            }
            for (side, h) in feed {
                self.feed(py, part, side, h, &letters, &mut offsets)?;
            }
            let pair = self.pairs.get_mut(&part).expect("listed");
            for side in [PAYMENT, ORDER] {
                let held = !pair.held[side].is_empty();
                let end = &mut pair.ends[side];
                end.at_end = end.fetch_end && !held && trusts.call1((end.end_epoch,))?.is_truthy()?;
            }
        }
        Ok((letters, offsets, released))
    }

    /// Step 3: time for every pair; then every decision since the last call, pair by pair,
    /// and the counts (matched, duplicates, ignored failed).
    fn advance<'py>(&mut self, py: Python<'py>, now_ms: i64) -> PyResult<(Bound<'py, PyList>, (u64, u64, u64))> {
        let out = PyList::empty(py);
        let mut counts = (0, 0, 0);
        for pair in self.pairs.values_mut() {
            let (p_end, o_end) = (pair.ends[PAYMENT].at_end, pair.ends[ORDER].at_end);
            pair.core.advance(now_ms, p_end, o_end);
        }
        for pair in self.pairs.values_mut() {
            for d in std::mem::take(&mut pair.core.decisions) {
                out.append(crate::decision(py, &d)?)?;
            }
            let c = std::mem::take(&mut pair.core.counts);
            counts = (counts.0 + c.matched, counts.1 + c.duplicates, counts.2 + c.ignored_failed);
        }
        Ok((out, counts))
    }

    /// Every pair's net state changes since the last commit: (partition, key, value or None).
    fn changes<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for (part, pair) in self.pairs.iter_mut() {
            for (k, v) in pair.core.take_changes() {
                out.append((*part, PyBytes::new(py, &k), v.as_deref().map(|v| PyBytes::new(py, v))))?;
            }
        }
        Ok(out)
    }

    /// Take restored cores (slipguard_native.Core, emptied here) as pairs.
    fn install(&mut self, restored: &Bound<'_, PyDict>) -> PyResult<()> {
        for (p, c) in restored.iter() {
            let part: i32 = p.extract()?;
            let mut c = c.cast_into::<crate::Core>()?.borrow_mut();
            let core = std::mem::replace(&mut c.inner, Core::new(self.params.clone()));
            self.pairs.insert(part, Pair::new(part, core));
        }
        Ok(())
    }

    fn drop_pairs(&mut self, parts: Vec<i32>) {
        for p in parts {
            self.pairs.remove(&p);
        }
    }

    fn clear(&mut self) {
        self.pairs.clear();
    }

    fn partitions(&self) -> Vec<i32> {
        self.pairs.iter().map(|(p, _)| *p).collect()
    }

    /// (pending, orders, recovered, oldest pending time or None) over every pair.
    fn gauges(&mut self) -> (usize, usize, usize, Option<i64>) {
        let (mut a, mut b, mut c, mut oldest) = (0, 0, 0, None::<i64>);
        for pair in self.pairs.values_mut() {
            let (x, y, z) = pair.core.sizes();
            (a, b, c) = (a + x, b + y, c + z);
            if let Some(t) = pair.core.oldest_pending_time() {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        (a, b, c, oldest)
    }

    fn pending_count(&self) -> usize {
        self.pairs.iter().map(|(_, p)| p.core.sizes().0).sum()
    }

    fn held_count(&self) -> usize {
        self.pairs.iter().map(|(_, p)| p.held()).sum()
    }

    /// The ends seen before `epoch`, as (partition, side): to be confirmed with the leader.
    fn stale_ends(&self, epoch: i64) -> Vec<(i32, usize)> {
        let mut out = Vec::new();
        for (p, pair) in self.pairs.iter() {
            for side in [PAYMENT, ORDER] {
                if pair.ends[side].stale(epoch) {
                    out.push((*p, side));
                }
            }
        }
        out
    }

    fn confirm_end(&mut self, partition: i32, side: usize, end_offset: i64, epoch: i64) -> bool {
        self.pairs.get_mut(&partition).is_some_and(|p| p.ends[side].confirm(end_offset, epoch))
    }

    /// The state of one pair's core, as Core.state() says it (tests).
    fn state<'py>(&mut self, py: Python<'py>, partition: i32) -> PyResult<Bound<'py, PyTuple>> {
        let pair = self.pairs.get_mut(&partition).ok_or_else(|| PyRuntimeError::new_err("no such pair"))?;
        crate::state_of(py, &mut pair.core)
    }
}
