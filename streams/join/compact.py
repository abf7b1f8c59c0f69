"""Pending payments in one compact record each: what the join keeps, and what its changelog
carries, for a payment waiting for its order.

A pending payment used to be an object holding the payment's raw JSON beside the fields
the join compares (815 B of memory each, measured). It is now one `bytes` value under
its order_id, the same bytes in memory and in the changelog (format 3, flag bit
`COMPACT`): a fixed header, the payment record's traceparent if it had one, then the
payment itself as a MessagePack array of the fields the order_id and the status do not
already say (the order_id is the key; a pending payment always succeeded):

    >qB header: event time t (ms), flags (LATE, TRACE, COMPACT, PERSISTED)
    [TRACE: one length byte, the traceparent]
    [payment_id, user_id, amount text, currency, paid_at (UTC, µs), paid_at's offset in
     seconds, metadata or nil, signature as 32 bytes or nil]

A payment pending since the last commit is a `Fresh` entry instead: the decoded model
and its raw record, as the join read them. The commit (JoinState.take_changes) packs each
fresh entry it writes into its compact record, so only payments that wait across a commit
are packed, and what waits is compact: most payments in a flowing stream meet their order
before the next commit and are never packed (packing costs about 0.8 µs, reading a packed
one back at a match 0.5 µs).

The payment was validated when it was read, so it is rebuilt without validating again
(`model_construct`), equal field by field to what the model decoded: amounts keep their
text (12.50 stays 12.50), times their instant and offset. tests/join/test_compact.py
checks that on generated payments. It is rebuilt only when the join emits something
about it (a recovery, a duplicate, a mismatch); a match reads three fields.

Matched pairs and recovered payments that come from a pending payment keep this payment
part (`payment_part`) instead of the raw JSON; `payment()` reads either form, told apart
by the first byte (a MessagePack array here, never the first byte of a JSON text).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec

from schemas import Payment, fast

HEADER = struct.Struct(">qB")
LATE, TRACE, COMPACT, PERSISTED = 1, 4, 16, 128  # flag bits (1 and 4 as in format 2)
MAX_TRACE = 255

_Fields = tuple[str, str, str, str, datetime, int, dict[str, Any] | None, bytes | None]
_encode = msgspec.msgpack.Encoder().encode
_decode: Callable[[bytes], _Fields] = msgspec.msgpack.Decoder(_Fields).decode
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_UTC = UTC
_OFFSETS: dict[int, timezone] = {0: _UTC}
_ARRAY = range(0x90, 0xA0)  # MessagePack fixarray (8 fields): the first byte of a payment part


class Fresh:
    """A payment pending since the last commit: as read, not packed yet."""

    __slots__ = ("flags", "payment", "raw", "t", "trace")

    def __init__(self, t: int, flags: int, trace: bytes | None, payment: Payment, raw: bytes) -> None:
        self.t, self.flags, self.trace, self.payment, self.raw = t, flags, trace, payment, raw

    def packed(self) -> bytes:
        """Its compact entry, with the same flags."""
        return entry(self.t, pack_payment(self.payment), self.flags, self.trace)


Pending = bytes | Fresh  # a pending payment: packed, or fresh since the last commit


def pack_payment(p: Payment) -> bytes:
    """The payment part: a succeeded payment without its order_id."""
    at = p.paid_at
    offset = at.utcoffset()
    sig = p.signature
    return _encode((p.payment_id, p.user_id, str(p.amount), p.currency, at,
                    offset.days * 86_400 + offset.seconds if offset else 0, p.metadata,
                    bytes.fromhex(sig) if sig is not None else None))


def entry(t: int, part: bytes, flags: int = 0, trace: bytes | None = None) -> bytes:
    """A pending payment: header, trace, payment part. `flags`: LATE and PERSISTED as
    wanted (True counts as LATE); COMPACT and TRACE are set here."""
    flags = COMPACT | (flags & (LATE | PERSISTED))
    if trace and len(trace) <= MAX_TRACE:
        return _pack_header(t, flags | TRACE) + bytes((len(trace),)) + trace + part
    return _pack_header(t, flags) + part


# ---------------------------------------------------------------- a pending entry, either form
# Every reading of a pending entry goes through these: nothing else knows its layout.


def t_of(e: Pending) -> int:
    return e.t if isinstance(e, Fresh) else _unpack_header(e)[0]


def flags_of(e: Pending) -> int:
    return e.flags if isinstance(e, Fresh) else e[8]


def with_flag(e: bytes, bit: int) -> bytes:
    """The entry with a flag bit set (itself if it is set already)."""
    return e if e[8] & bit else e[:8] + bytes((e[8] | bit,)) + e[9:]


def flagged(e: Pending, bit: int) -> Pending:
    """`e` with a flag bit set: a fresh entry in place, a packed one anew."""
    if isinstance(e, Fresh):
        e.flags |= bit
        return e
    return with_flag(e, bit)


def trace_of(e: Pending) -> bytes | None:
    if isinstance(e, Fresh):
        return e.trace
    return e[10 : 10 + e[9]] if e[8] & TRACE else None


def part_of(e: bytes) -> bytes:
    """The payment part of a packed pending entry."""
    return e[10 + e[9] :] if e[8] & TRACE else e[9:]


def record_of(e: Pending) -> bytes:
    """What a matched pair or a recovered payment keeps of it: the raw record of a fresh
    entry, the payment part of a packed one (payment() reads either)."""
    return e.raw if isinstance(e, Fresh) else part_of(e)


def payment_id_in(e: Pending) -> str:
    return e.payment.payment_id if isinstance(e, Fresh) else _decode(part_of(e))[0]


def payment_in(e: Pending, order_id: str) -> Payment:
    return e.payment if isinstance(e, Fresh) else payment(part_of(e), order_id)


def match_fields(e: Pending, order_amount: Decimal) -> tuple[str, str, Decimal, str, bytes]:
    """(payment_id, user_id, amount, currency, record) of a pending payment, as a match
    compares them; a packed amount spelled as the order's is the order's Decimal (one
    Decimal less to make, 0.1 us)."""
    if isinstance(e, Fresh):
        p = e.payment
        return p.payment_id, p.user_id, p.amount, p.currency, e.raw
    part = part_of(e)
    pid, uid, text, currency = _decode(part)[:4]
    return pid, uid, order_amount if text == str(order_amount) else Decimal(text), currency, part


def fields(part: bytes) -> _Fields:
    return _decode(part)


def cmp_of(part: bytes) -> tuple[str, Decimal, str]:
    """(user_id, amount, currency) of a payment part: what a matched pair must agree on."""
    f = _decode(part)
    return f[1], Decimal(f[2]), f[3]


def is_part(record: bytes) -> bool:
    """A packed payment part (not a payment's JSON)."""
    return record[0] in _ARRAY


def payment_id_of(record: bytes) -> str:
    """The payment_id of a payment part or a raw payment record."""
    if record[0] in _ARRAY:
        return _decode(record)[0]
    return fast.decode(Payment, record).payment_id


def payment(record: bytes, order_id: str) -> Payment:
    """The Payment of a payment part (with its order_id) or of a raw payment record."""
    if record[0] not in _ARRAY:
        return fast.decode(Payment, record)
    pid, uid, amount, currency, at, offset, metadata, sig = _decode(record)
    if offset:
        tz = _OFFSETS.get(offset)
        if tz is None:
            tz = _OFFSETS[offset] = timezone(timedelta(seconds=offset))
        at = at.astimezone(tz)
    values: dict[str, Any] = {"payment_id": pid, "order_id": order_id, "user_id": uid, "amount": Decimal(amount),
              "currency": currency, "status": "succeeded", "paid_at": at}
    if metadata is not None:
        values["metadata"] = metadata
    if sig is not None:
        values["signature"] = sig.hex()
    return Payment.model_construct(**values)
