"""Drive a PartitionJoin with terse calls and explicit timestamps (ms).

Where the native core is built, every Harness also drives a native Core (its twin) with
the same records, the same clock and the same commits, and holds it to the Python one after
every call: the same state, sizes and oldest pending time, and at each take() the same
decisions and counts. So every example test written against the Harness (test_core,
test_decisions, test_lifetimes, test_timers and more) runs against both cores, the Python
one's output checked by the test, the native one's by equality with it. SLIPGUARD_CORE=python
leaves the twin out; Harness(twin=False) too, for a test that reaches into the Python
core's insides."""

from __future__ import annotations

import os
from datetime import timedelta
from decimal import Decimal
from typing import Any

from schemas import Order, Payment
from schemas.fields import epoch_ms
from streams.join import changelog, native
from streams.join.core import Decisions, JoinParams, PartitionJoin
from streams.join.native import NATIVE, order_fields, payment_fields
from tests.factories import T0, order, payment
from tests.join.twins import native_decisions, python_decisions, python_state

T = 60_000
G = 5_000
H = 3_600_000
BASE = epoch_ms(T0)
FAR = BASE + 1_000 * T  # a wall clock far ahead of every record


def at(ms: int):
    return T0 + timedelta(milliseconds=ms - BASE)


class Harness:
    def __init__(self, timeout: int = T, grace: int = G, horizon: int = H, key: bytes | None = None,
                 twin: bool = True) -> None:
        self.join = PartitionJoin(JoinParams(timeout, grace, horizon, (key,) if key else ()))
        self.key = key
        self.out = Decisions()
        self.twin: Any = None
        if twin and NATIVE is not None and os.environ.get("SLIPGUARD_CORE") != "python":
            self.twin = NATIVE.Core(timeout, grace, horizon, [key] if key else [])
        self.twin_decisions: list[tuple] = []
        self.twin_counts = [0, 0, 0]

    def _check(self) -> None:
        """The twin's state against the Python core's, after every call."""
        if self.twin is None:
            return
        decisions, counts = self.twin.take_decisions()
        self.twin_decisions += decisions
        self.twin_counts = [a + b for a, b in zip(self.twin_counts, counts, strict=True)]
        state = self.twin.state()
        assert state == python_state(self.join), "the native core's state differs"
        assert list(state[3]) == list(self.join.settled), "settled pairs lined up otherwise (to be forgotten)"
        assert self.twin.sizes() == self.join.sizes()
        assert self.twin.oldest_pending_time() == self.join.oldest_pending_time()
        assert self.twin.timer_count() == len(self.join.deadlines), "the timers count what Python's count"

    def pay(self, ts: int, oid: str = "ord-1", pid: str | None = None, status: str = "succeeded",
            forged: bool = False, trace: bytes | None = None, **over) -> Payment:
        """With a key, payments are signed unless `forged` (then the signature is wrong)."""
        over.setdefault("paid_at", at(ts))
        p = payment(payment_id=pid or f"pay-{oid}", order_id=oid, status=status, **over)
        if forged:
            p = p.model_copy(update={"signature": "0" * 64})
        elif self.key is not None and "signature" not in over:
            p = p.model_copy(update={"signature": p.expected_signature(self.key)})
        return self.feed_payment(ts, p, trace)

    def feed_payment(self, ts: int, p: Payment, trace: bytes | None = None) -> Payment:
        """A payment built by the test, as it is, to both cores."""
        raw = p.encode()
        self.join.on_payment(ts, p, raw, self.out, trace)
        if self.twin is not None and not self.twin.on_payment(ts, raw, trace):
            self.twin.on_payment_fields(ts, payment_fields(p), raw, trace)
        self._check()
        return p

    def payments_to(self, ts: int) -> None:
        """Two failed payments stamped `ts`, which leave nothing behind: the payments'
        records confirm `ts` (progress.Confirmed), what settled pairs are forgotten by."""
        for i in range(2):
            self.pay(ts, oid=f"tick-{ts}-{i}", status="failed")

    def order(self, ts: int, oid: str = "ord-1", trace: bytes | None = None, **over) -> Order:
        o = order(order_id=oid, created_at=at(ts), **over)
        raw = o.encode()
        self.join.on_order(ts, o, raw, self.out, trace)
        if self.twin is not None and not self.twin.on_order(ts, raw, trace):
            self.twin.on_order_fields(ts, order_fields(o), raw, trace)
        self._check()
        return o

    def advance(self, now: int = FAR, payments_at_end: bool = False, orders_at_end: bool = False) -> None:
        """now: the wall clock; by default far ahead of every record, so that records alone move progress."""
        self.join.advance(now, payments_at_end, orders_at_end, self.out)
        if self.twin is not None:
            self.twin.advance(now, payments_at_end, orders_at_end)
        self._check()

    def commit(self) -> list:
        """A commit: the Python core's changes (Change objects), the twin's the same bytes."""
        changes = self.join.state.take_changes()
        if self.twin is not None:
            assert self.twin.take_changes() == [changelog.encode(c) for c in changes], "the same changelog records"
        return changes

    def restore(self, latest: dict[bytes, bytes | None], now: int = 0) -> None:
        """Both cores rebuilt from the last value of each changelog key, as a worker restores."""
        self.join = PartitionJoin(self.join.params)
        changelog.restore_into(self.join, latest, now)
        if self.twin is not None:
            self.twin = native.restore(self.join.params, latest, now)
        self._check()

    def take(self) -> Decisions:
        out, self.out = self.out, Decisions()
        if self.twin is not None:
            assert native_decisions(self.twin_decisions) == python_decisions(out), "the native core decided otherwise"
            assert tuple(self.twin_counts) == (out.matched, out.duplicates, out.ignored_failed)
            self.twin_decisions, self.twin_counts = [], [0, 0, 0]
        return out

    def recovered_ids(self) -> list[str]:
        return [r.payment.payment_id for r in self.take().recoveries]


__all__ = ["BASE", "Decimal", "G", "H", "Harness", "T", "at"]
