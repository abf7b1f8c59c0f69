"""Changelog records for the join's state: one compacted key per entry.

Key: b"p:" / b"o:" / b"r:" + order_id (pending payment, buffered order, recovered
payment). Value: a small fixed header and the record's original bytes; None deletes.
The original bytes are kept as they came so that nothing is re-encoded on the hot path.
"""

from __future__ import annotations

import struct

from schemas import Order, Payment
from streams.join.core import (
    ORDER,
    PAYMENT,
    RECOVERED,
    BufferedOrder,
    PendingPayment,
    RecoveredPayment,
    order_cmp,
    payment_cmp,
)

PREFIX = {PAYMENT: b"p:", ORDER: b"o:", RECOVERED: b"r:"}
KIND = {v: k for k, v in PREFIX.items()}
_TS_FLAG = struct.Struct(">qB")
_ORDER = struct.Struct(">qqI")  # order ts, paid_t, length of the order's bytes


class ChangelogFormatError(ValueError):
    """A changelog record that this version cannot read (written by something else?)."""


def encode_key(kind: int, oid: str) -> bytes:
    return PREFIX[kind] + oid.encode()


def encode_value(kind: int, entry: object) -> bytes:
    if kind == PAYMENT:
        assert isinstance(entry, PendingPayment)
        return _TS_FLAG.pack(entry.t, entry.late) + entry.raw
    if kind == ORDER:
        assert isinstance(entry, BufferedOrder)
        return _ORDER.pack(entry.ts, entry.paid_t, len(entry.raw)) + entry.raw + (entry.paid_raw or b"")
    assert isinstance(entry, RecoveredPayment)
    return _TS_FLAG.pack(entry.deadline, entry.late) + entry.raw


def decode(key: bytes, value: bytes | None) -> tuple[int, str, object | None]:
    """(kind, order_id, entry or None for a tombstone)."""
    kind = KIND.get(key[:2])
    if kind is None:
        raise ChangelogFormatError(f"unknown changelog key prefix {key[:2]!r}")
    oid = key[2:].decode()
    if value is None:
        return kind, oid, None
    if kind == ORDER:
        ts, paid_t, n = _ORDER.unpack_from(value)
        start = _ORDER.size
        raw, paid_raw = value[start : start + n], value[start + n :] or None
        paid_id = Payment.decode(paid_raw).payment_id if paid_raw else None
        return kind, oid, BufferedOrder(ts, raw, order_cmp(Order.decode(raw)), paid_id, paid_t, paid_raw)
    t, late = _TS_FLAG.unpack_from(value)
    raw = value[_TS_FLAG.size :]
    p = Payment.decode(raw)
    if kind == PAYMENT:
        return kind, oid, PendingPayment(p.payment_id, t, raw, payment_cmp(p), bool(late))
    return kind, oid, RecoveredPayment(p.payment_id, t, raw, bool(late))
