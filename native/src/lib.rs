//! slipguard's join record path in Rust, for Python (PyO3). See native/README.md.

mod currencies;
mod decode;
mod json;
mod pack;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

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

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CURRENCIES", currencies::CURRENCIES.to_vec())?;
    m.add_function(wrap_pyfunction!(decode_payment, m)?)?;
    m.add_function(wrap_pyfunction!(decode_order, m)?)?;
    m.add_function(wrap_pyfunction!(pack_payment, m)?)?;
    m.add_function(wrap_pyfunction!(plain_amount, m)?)?;
    Ok(())
}
