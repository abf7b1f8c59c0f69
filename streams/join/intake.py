"""What the join accepts as a payment or an order: one decoded, checked record, or a
reason for the DLQ.

The pydantic models are the contract; the checks here are what the join adds: a size
limit, the key is the order_id, and the Kafka timestamp (the event time) is plausible.
Records are decoded by schemas.fast where it is sure of the model's answer, by the model
itself otherwise (so every rejection and its reason are the model's).
"""

from __future__ import annotations

from confluent_kafka import Message
from pydantic import ValidationError

from schemas import Order, Payment, fast
from schemas.headers import Headers
from streams.join.core import Side
from streams.join.merge import MIN_EVENT_MS

# Payments and orders are a few hundred bytes; a valid one can carry ignored extra fields,
# so the record (key, value and headers) is capped: every state entry and output then
# fits a record well under 1 MB (an anomaly holds three inputs), whatever came in.
MAX_INPUT_BYTES = 64 * 1024
# The fast path first (None: unsure), then the model itself, which decides (schemas.fast).
_FAST = (fast.payment, fast.order)
_MODEL = (Payment, Order)
# What a record can fail with on its way in; each goes to the DLQ with its reason.
REJECTED = (ValidationError, ValueError, TypeError, UnicodeDecodeError)


def accept(side: Side, ts: int, m: Message, headers: Headers | None, latest_ok_ms: int,
           max_future_ms: int) -> Payment | Order:
    """The record as a model, or one of REJECTED saying why not. `ts` is -1 when
    merge.hold found the timestamp out of bounds; `headers`: the record's, as read once."""
    raw = m.value()
    key = m.key()
    size = (len(raw) if raw is not None else 0) + (len(key) if key is not None else 0)
    if headers:
        size += header_bytes(headers)
    if size > MAX_INPUT_BYTES:
        raise ValueError(too_big(size))
    value = raw if raw is not None else b""  # a tombstone: the model says why not
    rec = _FAST[side](value)
    if rec is None:
        rec = _MODEL[side].decode(value)
    if key != rec.order_id.encode():
        raise ValueError(wrong_key(key, rec.order_id))
    if ts < 0:
        raise ValueError(bad_time(m.timestamp()[1], latest_ok_ms - max_future_ms, max_future_ms))
    return rec


def too_big(size: int) -> str:
    return (f"record of {size} bytes (key, value and headers) is over the join's limit of {MAX_INPUT_BYTES} bytes "
            "for one payment or order")


def wrong_key(key: bytes | None, order_id: str) -> str:
    return f"record key {key!r} is not the order_id {order_id!r}: producers must key by order_id"


def header_bytes(headers: Headers) -> int:
    """What a record's headers weigh: names (UTF-8) and values."""
    return sum(len(name.encode("utf-8", "surrogatepass")) + (len(value) if value is not None else 0)
               for name, value in headers)


def bad_time(ts: int, now_ms: int, max_future_ms: int) -> str:
    if ts < 0:
        return "record has no timestamp; the join needs the Kafka timestamp as event time"
    if ts < MIN_EVENT_MS:
        return f"record timestamp {ts} ms is before 2000-01-01; a wrong clock or unit at the producer"
    return (f"record timestamp {ts} ms is {(ts - now_ms) / 1000:.0f} s ahead of this worker's clock, more than "
            f"SLIPGUARD_MAX_FUTURE ({max_future_ms / 1000:.0f} s); a wrong clock or unit (microseconds?) "
            "at the producer")
