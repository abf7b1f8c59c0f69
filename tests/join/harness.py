"""Drive a PartitionJoin with terse calls and explicit timestamps (ms)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from schemas import Order, Payment
from schemas.fields import epoch_ms
from streams.join.core import Decisions, JoinParams, PartitionJoin
from tests.factories import T0, order, payment

T = 60_000
G = 5_000
H = 3_600_000
BASE = epoch_ms(T0)
FAR = BASE + 1_000 * T  # a wall clock far ahead of every record


def at(ms: int):
    return T0 + timedelta(milliseconds=ms - BASE)


class Harness:
    def __init__(self, timeout: int = T, grace: int = G, horizon: int = H, key: bytes | None = None) -> None:
        self.join = PartitionJoin(JoinParams(timeout, grace, horizon, (key,) if key else ()))
        self.key = key
        self.out = Decisions()

    def pay(self, ts: int, oid: str = "ord-1", pid: str | None = None, status: str = "succeeded",
            forged: bool = False, trace: bytes | None = None, **over) -> Payment:
        """With a key, payments are signed unless `forged` (then the signature is wrong)."""
        over.setdefault("paid_at", at(ts))
        p = payment(payment_id=pid or f"pay-{oid}", order_id=oid, status=status, **over)
        if forged:
            p = p.model_copy(update={"signature": "0" * 64})
        elif self.key is not None and "signature" not in over:
            p = p.model_copy(update={"signature": p.expected_signature(self.key)})
        self.join.on_payment(ts, p, p.encode(), self.out, trace)
        return p

    def order(self, ts: int, oid: str = "ord-1", trace: bytes | None = None, **over) -> Order:
        o = order(order_id=oid, created_at=at(ts), **over)
        self.join.on_order(ts, o, o.encode(), self.out, trace)
        return o

    def advance(self, now: int = FAR, payments_at_end: bool = False, orders_at_end: bool = False) -> None:
        """now: the wall clock; by default far ahead of every record, so that records alone move progress."""
        self.join.advance(now, payments_at_end, orders_at_end, self.out)

    def take(self) -> Decisions:
        out, self.out = self.out, Decisions()
        return out

    def recovered_ids(self) -> list[str]:
        return [r.payment.payment_id for r in self.take().recoveries]


__all__ = ["BASE", "Decimal", "G", "H", "Harness", "T", "at"]
