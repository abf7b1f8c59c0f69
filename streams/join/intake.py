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
from streams.join.core import Side
from streams.join.merge import MIN_EVENT_MS

# Payments and orders are a few hundred bytes; a valid one can carry ignored extra fields,
# so the raw record is capped: every state entry and output then fits a 1 MB record.
MAX_INPUT_BYTES = 64 * 1024
# The fast path first (None: unsure), then the model itself, which decides (schemas.fast).
_FAST = (fast.payment, fast.order)
_MODEL = (Payment, Order)
# What a record can fail with on its way in; each goes to the DLQ with its reason.
REJECTED = (ValidationError, ValueError, TypeError, UnicodeDecodeError)


def accept(side: Side, ts: int, m: Message, latest_ok_ms: int, max_future_ms: int) -> Payment | Order:
    """The record as a model, or one of REJECTED saying why not. `ts` is -1 when
    merge.hold found the timestamp out of bounds."""
    raw = m.value()
    if raw is not None and len(raw) > MAX_INPUT_BYTES:
        raise ValueError(f"record value of {len(raw)} bytes is over the join's limit of {MAX_INPUT_BYTES} "
                         "bytes for one payment or order")
    rec = _FAST[side](raw)
    if rec is None:
        rec = _MODEL[side].decode(raw)
    if m.key() != rec.order_id.encode():
        raise ValueError(f"record key {m.key()!r} is not the order_id {rec.order_id!r}: producers must key by order_id")
    if ts < 0:
        raise ValueError(bad_time(m.timestamp()[1], latest_ok_ms - max_future_ms, max_future_ms))
    return rec


def bad_time(ts: int, now_ms: int, max_future_ms: int) -> str:
    if ts < 0:
        return "record has no timestamp; the join needs the Kafka timestamp as event time"
    if ts < MIN_EVENT_MS:
        return f"record timestamp {ts} ms is before 2000-01-01; a wrong clock or unit at the producer"
    return (f"record timestamp {ts} ms is {(ts - now_ms) / 1000:.0f} s ahead of this worker's clock, more than "
            f"SLIPGUARD_MAX_FUTURE ({max_future_ms / 1000:.0f} s); a wrong clock or unit (microseconds?) "
            "at the producer")
