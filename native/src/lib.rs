//! slipguard's join record path in Rust, for Python (PyO3). See native/README.md.

mod batch;
mod core;
mod currencies;
mod decode;
mod entries;
mod json;
mod omap;
mod pack;
mod pending;
mod settled;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyTuple};

use decode::{Meta, Metadata, Time};

fn meta_dict<'py>(py: Python<'py>, m: &Metadata) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in m {
        match v {
            Meta::Str(s) => d.set_item(k, s)?,
            Meta::Int(i) => d.set_item(k, i)?,
            Meta::Float(f) => d.set_item(k, f)?,
            Meta::Bool(b) => d.set_item(k, b)?,
            Meta::Null => d.set_item(k, py.None())?,
        }
    }
    Ok(d)
}

fn time_tuple(t: Time) -> (i64, i32) {
    (t.epoch_us, t.offset_s)
}

/// A payment as the fast path decodes it, for the differential tests: (payment_id,
/// order_id, user_id, amount text, currency, status, (epoch µs, offset s), metadata or
/// None, signature hex or None); None when unsure.
#[pyfunction]
fn decode_payment<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some(p) = decode::payment(raw) else { return Ok(None) };
    let meta = p.metadata.as_ref().map(|m| meta_dict(py, m)).transpose()?;
    let sig = p.signature.map(|s| s.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let status = if p.succeeded { "succeeded" } else { "failed" };
    let t = (p.payment_id, p.order_id, p.user_id, p.amount, p.currency, status, time_tuple(p.paid_at), meta, sig);
    Ok(Some(t.into_pyobject(py)?.into_any()))
}

/// An order, likewise: (order_id, user_id, amount text, currency, (epoch µs, offset s),
/// metadata or None); None when unsure.
#[pyfunction]
fn decode_order<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Option<Bound<'py, PyAny>>> {
    let Some(o) = decode::order(raw) else { return Ok(None) };
    let meta = o.metadata.as_ref().map(|m| meta_dict(py, m)).transpose()?;
    let t = (o.order_id, o.user_id, o.amount, o.currency, time_tuple(o.created_at), meta);
    Ok(Some(t.into_pyobject(py)?.into_any()))
}

/// A succeeded payment's compact pending entry (compact.entry(t, pack_payment(p), flags,
/// trace)); None when unsure or not succeeded.
#[pyfunction]
#[pyo3(signature = (raw, t, flags=0, trace=None))]
fn pack_payment<'py>(py: Python<'py>, raw: &[u8], t: i64, flags: u8, trace: Option<&[u8]>)
                     -> Option<Bound<'py, PyBytes>> {
    let p = decode::payment(raw)?;
    Some(PyBytes::new(py, &pack::entry(t, &pack::part(&p), flags, trace)))
}

/// The contract's plain amount (the signing string's), for the differential tests.
#[pyfunction]
fn plain_amount(text: &str) -> String {
    decode::plain_amount(text)
}


/// A metadata dict as the models keep it (flat: str, int within ±(2^53-1), float, bool, None).
fn metadata_of(d: Option<&Bound<'_, PyDict>>) -> PyResult<Option<Metadata>> {
    let Some(d) = d else { return Ok(None) };
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let key: String = k.extract()?;
        let value = if v.is_none() {
            Meta::Null
        } else if v.is_instance_of::<PyBool>() {
            Meta::Bool(v.extract()?)
        } else if v.is_instance_of::<PyInt>() {
            Meta::Int(v.extract()?)
        } else if v.is_instance_of::<PyFloat>() {
            Meta::Float(v.extract()?)
        } else {
            Meta::Str(v.extract()?)
        };
        out.push((key, value));
    }
    Ok(Some(out))
}

fn currency_of(code: &str) -> PyResult<&'static str> {
    currencies::CURRENCIES.iter().copied().find(|c| *c == code)
        .ok_or_else(|| PyValueError::new_err(format!("not an ISO 4217 code: {code:?}")))
}

/// A payment's fields as Python gives them for a record the native decoder was unsure of
/// and the model accepted (streams/join/native.py: payment_fields).
pub(crate) type PaymentFields<'py> = (String, String, String, String, String, bool, i64, i32, Option<Bound<'py, PyDict>>, Option<Vec<u8>>);
pub(crate) type OrderFields<'py> = (String, String, String, String, i64, i32, Option<Bound<'py, PyDict>>);

pub(crate) fn payment_of(f: PaymentFields<'_>) -> PyResult<decode::Payment> {
    let (payment_id, order_id, user_id, amount, currency, succeeded, epoch_us, offset_s, meta, sig) = f;
    let signature = match sig {
        None => None,
        Some(s) => Some(<[u8; 32]>::try_from(s.as_slice()).map_err(|_| PyValueError::new_err("a signature is 32 bytes"))?),
    };
    Ok(decode::Payment { payment_id, order_id, user_id, amount, currency: currency_of(&currency)?, succeeded,
                         paid_at: Time { epoch_us, offset_s }, metadata: metadata_of(meta.as_ref())?, signature })
}

pub(crate) fn order_of(f: OrderFields<'_>) -> PyResult<decode::Order> {
    let (order_id, user_id, amount, currency, epoch_us, offset_s, meta) = f;
    Ok(decode::Order { order_id, user_id, amount, currency: currency_of(&currency)?,
                       created_at: Time { epoch_us, offset_s }, metadata: metadata_of(meta.as_ref())? })
}

/// The join's rules for one pair, natively (core::Core), driven record by record: for the
/// differential tests against streams.join.core.PartitionJoin.
#[pyclass]
pub(crate) struct Core {
    pub(crate) inner: core::Core,
}

pub(crate) fn decision<'py>(py: Python<'py>, d: &core::Decision) -> PyResult<Bound<'py, PyTuple>> {
    let bytes = |b: &[u8]| PyBytes::new(py, b);
    let tr = |t: &Vec<Vec<u8>>| PyTuple::new(py, t.iter().map(|x| PyBytes::new(py, x)));
    Ok(match d {
        core::Decision::Recover { order_id, record, deadline, traces } => {
            ("recover", order_id, bytes(record), deadline, tr(traces)?).into_pyobject(py)?
        }
        core::Decision::Late { order, order_ts, payment_id, lateness, traces } => {
            ("late", bytes(order), order_ts, payment_id, lateness, tr(traces)?).into_pyobject(py)?
        }
        core::Decision::Flag { kind, order_id, payments, order, traces } => {
            let pays = PyTuple::new(py, payments.iter().map(|x| PyBytes::new(py, x)))?;
            ("flag", kind, order_id, pays, order.as_deref().map(bytes), tr(traces)?).into_pyobject(py)?
        }
    })
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (timeout_ms, grace_ms, late_horizon_ms, hmac_keys=Vec::new()))]
    fn new(timeout_ms: i64, grace_ms: i64, late_horizon_ms: i64, hmac_keys: Vec<Vec<u8>>) -> Self {
        Core { inner: core::Core::new(core::Params { timeout_ms, grace_ms, late_horizon_ms, hmac_keys }) }
    }

    /// False when the native decoder is unsure of the record (the model decides it).
    #[pyo3(signature = (ts, raw, trace=None))]
    fn on_payment(&mut self, ts: i64, raw: &[u8], trace: Option<&[u8]>) -> bool {
        match decode::payment(raw) {
            Some(p) => {
                self.inner.on_payment(ts, p, raw, trace);
                true
            }
            None => false,
        }
    }

    #[pyo3(signature = (ts, raw, trace=None))]
    fn on_order(&mut self, ts: i64, raw: &[u8], trace: Option<&[u8]>) -> bool {
        match decode::order(raw) {
            Some(o) => {
                self.inner.on_order(ts, o, raw, trace);
                true
            }
            None => false,
        }
    }

    /// A payment the native decoder was unsure of, as the model decoded it (its fields).
    #[pyo3(signature = (ts, fields, raw, trace=None))]
    fn on_payment_fields(&mut self, ts: i64, fields: PaymentFields<'_>, raw: &[u8], trace: Option<&[u8]>) -> PyResult<()> {
        self.inner.on_payment(ts, payment_of(fields)?, raw, trace);
        Ok(())
    }

    #[pyo3(signature = (ts, fields, raw, trace=None))]
    fn on_order_fields(&mut self, ts: i64, fields: OrderFields<'_>, raw: &[u8], trace: Option<&[u8]>) -> PyResult<()> {
        self.inner.on_order(ts, order_of(fields)?, raw, trace);
        Ok(())
    }

    fn advance(&mut self, now_ms: i64, payments_at_end: bool, orders_at_end: bool) {
        self.inner.advance(now_ms, payments_at_end, orders_at_end);
    }

    /// (decisions, (matched, duplicates, ignored_failed)) since the last call.
    fn take_decisions<'py>(&mut self, py: Python<'py>) -> PyResult<(Bound<'py, PyList>, (u64, u64, u64))> {
        let list = PyList::empty(py);
        for d in std::mem::take(&mut self.inner.decisions) {
            list.append(decision(py, &d)?)?;
        }
        let c = std::mem::take(&mut self.inner.counts);
        Ok((list, (c.matched, c.duplicates, c.ignored_failed)))
    }

    /// The net changes since the last call, as changelog records (key, value or None).
    fn take_changes<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let list = PyList::empty(py);
        for (k, v) in self.inner.take_changes() {
            list.append((PyBytes::new(py, &k), v.as_deref().map(|v| PyBytes::new(py, v))))?;
        }
        Ok(list)
    }

    /// Rebuild from the changelog's last value per key, in the order read.
    #[pyo3(signature = (latest, now_ms=0))]
    /// `latest`: a dict of bytes keys to bytes values or None (as the restore reads them),
    /// or a sequence of such pairs. The bytes are read where they are, not copied out first.
    fn restore(&mut self, latest: &Bound<'_, PyAny>, now_ms: i64) -> PyResult<()> {
        let mut held: Vec<(Bound<'_, PyBytes>, Option<Bound<'_, PyBytes>>)> = Vec::new();
        if let Ok(d) = latest.cast::<PyDict>() {
            held.reserve(d.len());
            for (k, v) in d.iter() {
                held.push((k.cast_into::<PyBytes>()?, bytes_or_none(v)?));
            }
        } else {
            for item in latest.try_iter()? {
                let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
                held.push((k.cast_into::<PyBytes>()?, bytes_or_none(v)?));
            }
        }
        let borrowed: Vec<(&[u8], Option<&[u8]>)> =
            held.iter().map(|(k, v)| (k.as_bytes(), v.as_ref().map(|v| v.as_bytes()))).collect();
        self.inner.restore(&borrowed, now_ms).map_err(|core::Unreadable(why)| PyValueError::new_err(why))
    }

    fn sizes(&self) -> (usize, usize, usize) {
        self.inner.sizes()
    }

    fn oldest_pending_time(&mut self) -> Option<i64> {
        self.inner.oldest_pending_time()
    }

    fn timer_count(&self) -> usize {
        self.inner.timer_count()
    }

    /// (entries, deque capacity, table capacity) of the settled pairs (settled.rs's shrink).
    fn settled_capacity(&self) -> (usize, usize, usize) {
        let (slots, index) = self.inner.settled.capacity();
        (self.inner.settled.len(), slots, index)
    }

    /// What it remembers, in the terms of tests/join/test_property.py's _state: pending
    /// {oid: (t, flags without PERSISTED, packed part, trace)}, recovered {oid: (payment_id,
    /// deadline, late, trace)}, orders {oid: (ts, paid_id)}, settled {oid: (fingerprint, end)}.
    fn state<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        state_of(py, &mut self.inner)
    }
}

pub(crate) fn state_of<'py>(py: Python<'py>, core: &mut core::Core) -> PyResult<Bound<'py, PyTuple>> {
    let pending = PyDict::new(py);
    for (oid, e) in core.pending.iter() {
        let packed = e.packed();
        let part = entries::part_of(&packed).to_vec();
        let t = (e.t(), packed[8] & !pack::PERSISTED, PyBytes::new(py, &part), e.trace().map(|t| PyBytes::new(py, t)));
        pending.set_item(oid, t)?;
    }
    let recovered = PyDict::new(py);
    for (oid, r) in core.recovered.iter() {
        recovered.set_item(oid, (&r.payment_id, r.deadline, r.late, r.trace.as_deref().map(|t| PyBytes::new(py, t))))?;
    }
    let orders = PyDict::new(py);
    for (oid, o) in core.orders.iter() {
        orders.set_item(oid, (o.ts, o.paid_id.as_deref()))?;
    }
    let settled = PyDict::new(py);
    for (oid, fp, end) in core.settled.iter() {
        settled.set_item(oid, (fp, end))?;
    }
    PyTuple::new(py, [pending.into_any(), orders.into_any(), recovered.into_any(), settled.into_any()])
}

/// A changelog value as read: bytes, or None (a tombstone).
fn bytes_or_none<'py>(v: Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
    if v.is_none() { Ok(None) } else { Ok(Some(v.cast_into::<PyBytes>()?)) }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CURRENCIES", currencies::CURRENCIES.to_vec())?;
    m.add_function(wrap_pyfunction!(decode_payment, m)?)?;
    m.add_function(wrap_pyfunction!(decode_order, m)?)?;
    m.add_function(wrap_pyfunction!(pack_payment, m)?)?;
    m.add_function(wrap_pyfunction!(plain_amount, m)?)?;
    m.add_class::<Core>()?;
    m.add_class::<batch::Pipeline>()?;
    Ok(())
}
