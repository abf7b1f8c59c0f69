"""Changelog records for the join's state, in a compacted topic.

Key: b"p:" / b"o:" / b"r:" + order_id (pending payment, unmatched order, recovered
payment), value: a small fixed header and the record's original bytes. Key b"m:" +
number: a bundle of matched pairs (order_id, payment_id, times, the first payment's
bytes). A None value deletes. Original bytes are kept as they came, so nothing is
re-encoded on the hot path.
"""

from __future__ import annotations

import struct

from schemas import Order, Payment
from streams.join.core import (
    MATCHED,
    ORDER,
    PAYMENT,
    RECOVERED,
    BufferedOrder,
    PendingPayment,
    RecoveredPayment,
    order_cmp,
    payment_cmp,
)

PREFIX = {PAYMENT: b"p:", ORDER: b"o:", RECOVERED: b"r:", MATCHED: b"m:"}
KIND = {v: k for k, v in PREFIX.items()}
_TS_FLAG = struct.Struct(">qB")
_ORDER = struct.Struct(">qqI")  # order ts, paid_t, length of the order's bytes
_PAIR = struct.Struct(">HHIqq")  # lengths of order_id, payment_id, payment bytes; order ts, paid_t
_RECOVERED_AT = struct.Struct(">q")
# Flag byte of payment and recovered entries: bit 0 late; bit 1 a recovered_at follows
# (wall-clock ms of the recovery). Records written before it existed have bit 1 clear
# and still decode: their recovery time is taken as the restore's wall clock (they are
# remembered a little longer, never shorter).
_LATE, _HAS_RECOVERED_AT = 1, 2


class ChangelogFormatError(ValueError):
    """A changelog record that this version cannot read (written by something else?)."""


def encode_key(kind: int, key: str | int) -> bytes:
    if kind == MATCHED:
        return b"m:%012d" % key  # type: ignore[str-format]
    return PREFIX[kind] + key.encode()  # type: ignore[union-attr]


def encode_value(kind: int, entry: object) -> bytes:
    if kind == MATCHED:
        parts = []
        for oid, pair in entry:  # type: ignore[attr-defined]
            o, pid, raw = oid.encode(), pair.paid_id.encode(), pair.paid_raw
            parts.append(_PAIR.pack(len(o), len(pid), len(raw), pair.ts, pair.paid_t) + o + pid + raw)
        return b"".join(parts)
    if kind == PAYMENT:
        assert isinstance(entry, PendingPayment)
        return _TS_FLAG.pack(entry.t, entry.late) + entry.raw
    if kind == ORDER:
        assert isinstance(entry, BufferedOrder)
        return _ORDER.pack(entry.ts, entry.paid_t, len(entry.raw)) + entry.raw + (entry.paid_raw or b"")
    assert isinstance(entry, RecoveredPayment)
    return (_TS_FLAG.pack(entry.deadline, entry.late | _HAS_RECOVERED_AT) + _RECOVERED_AT.pack(entry.recovered_at)
            + entry.raw)


def decode(key: bytes, value: bytes | None, now_ms: int = 0) -> tuple[int, str | int, object | None]:
    """(kind, order_id or bundle number, entry or None for a tombstone). `now_ms`: the
    recovery time given to recovered entries written before it was recorded."""
    kind = KIND.get(key[:2])
    if kind is None:
        raise ChangelogFormatError(f"unknown changelog key prefix {key[:2]!r}")
    if kind == MATCHED:
        number = int(key[2:])
        return kind, number, None if value is None else _decode_pairs(value)
    oid = key[2:].decode()
    if value is None:
        return kind, oid, None
    if kind == ORDER:
        ts, paid_t, n = _ORDER.unpack_from(value)
        start = _ORDER.size
        raw, paid_raw = value[start : start + n], value[start + n :] or None
        paid_id = Payment.decode(paid_raw).payment_id if paid_raw else None
        return kind, oid, BufferedOrder(ts, raw, order_cmp(Order.decode(raw)), paid_id, paid_t, paid_raw)
    t, flags = _TS_FLAG.unpack_from(value)
    at = _TS_FLAG.size
    recovered_at = now_ms
    if flags & _HAS_RECOVERED_AT:
        (recovered_at,) = _RECOVERED_AT.unpack_from(value, at)
        at += _RECOVERED_AT.size
    raw = value[at:]
    p = Payment.decode(raw)
    late = bool(flags & _LATE)
    if kind == PAYMENT:
        return kind, oid, PendingPayment(p.payment_id, t, raw, payment_cmp(p), late)
    return kind, oid, RecoveredPayment(p.payment_id, t, raw, late, recovered_at=recovered_at)


def _decode_pairs(value: bytes) -> list[tuple[str, BufferedOrder]]:
    pairs = []
    at, end = 0, len(value)
    while at < end:
        n_oid, n_pid, n_raw, ts, paid_t = _PAIR.unpack_from(value, at)
        at += _PAIR.size
        oid = value[at : at + n_oid].decode()
        at += n_oid
        pid = value[at : at + n_pid].decode()
        at += n_pid
        raw = value[at : at + n_raw]
        at += n_raw
        # A matched pair never matches again: the order's own bytes and fields are not needed.
        pairs.append((oid, BufferedOrder(ts, b"", None, pid, paid_t, raw)))  # type: ignore[arg-type]
    return pairs


def restore_into(core: object, latest: dict[bytes, bytes | None], now_ms: int = 0) -> None:
    """Rebuild a PartitionJoin from the last value of each changelog key of its partition.

    Bundles of matched pairs go first, oldest first; entries under their own keys override them.
    """
    bundle_prefix = PREFIX[MATCHED]
    for key in sorted(k for k in latest if k.startswith(bundle_prefix)):
        kind, number, pairs = decode(key, latest[key])
        if pairs is not None:
            core.restore(kind, number, pairs)  # type: ignore[attr-defined]
    for key, value in latest.items():
        if key.startswith(bundle_prefix):
            continue
        kind, oid, entry = decode(key, value, now_ms)
        if entry is not None:
            core.restore(kind, oid, entry)  # type: ignore[attr-defined]
