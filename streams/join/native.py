"""The native record path (native/, the slipguard_native module built from Rust), as the
join uses it: None where it is not built (the Python core runs), and the conversions
between the models and what the native core takes and gives.

The native core decides a record it decodes itself; a record its decoder is unsure of
(escapes, exponents, anything unusual) is decoded by the model in Python and handed over
as its fields (`payment_fields`, `order_fields`), so both paths decide every record the
model accepts. tests/join/test_native_core.py holds the native core to
streams/join/core.py decision for decision and changelog record for changelog record.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any

from schemas import Order, Payment

NATIVE: ModuleType | None
try:
    import slipguard_native

    NATIVE = slipguard_native
except ImportError:  # not built (no cargo where it was installed): the Python core runs
    NATIVE = None

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

PaymentFields = tuple[str, str, str, str, str, bool, int, int, dict[str, Any] | None, bytes | None]
OrderFields = tuple[str, str, str, str, int, int, dict[str, Any] | None]


def _when(t: datetime) -> tuple[int, int]:
    """An aware time as microseconds since the epoch and its offset in seconds."""
    offset = t.utcoffset()
    assert offset is not None, "the models keep aware times"
    return (t - EPOCH) // _US, offset // timedelta(seconds=1)


def payment_fields(p: Payment) -> PaymentFields:
    """A payment as the native core's on_payment_fields takes it."""
    us, offset = _when(p.paid_at)
    sig = None if p.signature is None else bytes.fromhex(p.signature)
    return (p.payment_id, p.order_id, p.user_id, str(p.amount), p.currency, p.status == "succeeded", us, offset,
            p.metadata, sig)


def order_fields(o: Order) -> OrderFields:
    us, offset = _when(o.created_at)
    return o.order_id, o.user_id, str(o.amount), o.currency, us, offset, o.metadata
