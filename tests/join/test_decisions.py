"""What each decision of the join core carries, to the last field: the order_id, the
records involved, the traceparents of the inputs it came from, the counts.

Same conventions as test_core.py: T = 60 s timeout, G = 5 s grace, a payment at BASE
has its deadline at D = BASE + T.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from schemas import recovery_id_for
from streams.join.core import Flag, Late, Recover
from tests.join.harness import BASE, G, H, Harness, T, at

D = BASE + T
TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # the payment's traceparent
TO = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # the order's
TQ = b"00-11111111111111111111111111111111-2222222222222222-01"  # a second payment's
KEY = b"k" * 32


def test_a_bad_signature_and_a_skewed_payment_are_reported_with_the_payments_trace_and_no_order() -> None:
    h = Harness(key=KEY)
    forged = h.pay(BASE, oid="forged", forged=True, trace=TP)
    skewed = h.pay(BASE, oid="skewed", paid_at=at(BASE - 2 * H), trace=TP)
    assert h.take().anomalies == [Flag("bad_signature", "forged", (forged,), None, (TP,)),
                                  Flag("paid_at_skew", "skewed", (skewed,), None, (TP,))]


@pytest.mark.parametrize("first_is", ["pending", "matched", "recovered"])
def test_a_second_payment_is_reported_with_both_payments_under_its_order_id_and_its_own_trace(first_is: str) -> None:
    h = Harness()
    first = h.pay(BASE, pid="pay-A", trace=TP)
    if first_is == "matched":
        h.order(BASE + 1, trace=TO)
    if first_is == "recovered":
        h.advance(D + G, True, True)
    h.take()
    second = h.pay(BASE + 2_000, pid="pay-B", trace=TQ)
    assert h.take().anomalies == [Flag("duplicate_payment", "ord-1", (first, second), None, (TQ,))]


@pytest.mark.parametrize("arrival", ["order first", "payment first", "payment first, packed by a commit"])
def test_a_mismatch_names_its_order_and_references_both_inputs_the_deciding_one_first(arrival: str) -> None:
    """The deciding input is the one read second: its traceparent comes first."""
    h = Harness()
    if arrival == "order first":
        o = h.order(BASE, oid="m", trace=TO, amount=Decimal("1.00"))
        p = h.pay(BASE, oid="m", trace=TP)
        traces = (TP, TO)
    else:
        p = h.pay(BASE, oid="m", trace=TP)
        if arrival.endswith("commit"):
            h.commit()  # the pending payment is packed: rebuilt for the report
        o = h.order(BASE, oid="m", trace=TO, amount=Decimal("1.00"))
        traces = (TO, TP)
    out = h.take()
    assert out.matched == 1
    assert out.anomalies == [Flag("amount_mismatch", "m", (p,), o, traces)]
    assert out.anomalies[0].payments[0].order_id == "m"


def test_an_order_read_before_its_payment_but_past_the_deadline_is_late_then_the_payment_is_recovered_once() -> None:
    h = Harness()
    o = h.order(D + 1, trace=TO)
    p = h.pay(BASE, trace=TP)
    assert h.take().late == [Late(o, D + 1, "pay-ord-1", recovery_id_for("pay-ord-1"), 1, (TO, TP))]
    h.advance(D + G, True, True)
    assert h.take().recoveries == [Recover(p, D, (TP,))], "the recovery carries the payment's trace"
    h.order(D + 1, trace=TO)  # the order event again, now that the payment is recovered
    out = h.take()
    assert out.late == [] and out.duplicates == 0, "its late order was emitted already: not again"


def test_an_order_read_after_its_payment_past_the_deadline_is_late_once_before_and_after_the_recovery() -> None:
    h = Harness()
    p = h.pay(BASE, trace=TP)
    o = h.order(D + 1, trace=TO)
    assert h.take().late == [Late(o, D + 1, "pay-ord-1", recovery_id_for("pay-ord-1"), 1, (TO, TP))]
    h.order(D + 2)
    assert h.take().late == [], "still pending: the late order was emitted"
    h.advance(D + G, True, True)
    assert h.take().recoveries == [Recover(p, D, (TP,))]
    h.order(D + 3)
    assert h.take().late == [], "recovered: the late order was emitted before"


def test_an_order_read_after_the_recovery_is_late_with_its_own_time() -> None:
    h = Harness()
    h.pay(BASE, trace=TP)
    h.advance(D + G, True, True)
    h.take()
    o = h.order(D + 42_000, trace=TO)
    assert h.take().late == [Late(o, D + 42_000, "pay-ord-1", recovery_id_for("pay-ord-1"), 42_000, (TO, TP))]


def test_a_repeated_order_event_is_dropped_and_counted_once_per_repeat() -> None:
    h = Harness()
    h.order(BASE, oid="o")
    h.order(BASE, oid="o")
    h.order(BASE + 5, oid="o")
    out = h.take()
    assert out.duplicates == 2 and h.join.orders["o"].ts == BASE, "the first one stands"


def test_every_failed_payment_is_counted_as_ignored_signed_or_not() -> None:
    h = Harness(key=KEY)
    for n, forged in enumerate((False, True, False, True)):
        h.pay(BASE + n, oid=f"o{n}", status="failed", forged=forged)
    out = h.take()
    assert out.ignored_failed == 4 and out.anomalies == [] and h.join.sizes() == (0, 0, 0)


# A timestamp where float milliseconds fall under the bound: paid_at is exactly T + 1 ms
# after the event time, but paid_at.timestamp() * 1000 - ts is 60000.99975...
FLOAT_UNDER = 2_194_061_210_666


def test_a_payment_paid_one_millisecond_past_the_timeout_is_skewed_even_where_float_milliseconds_say_less() -> None:
    assert at(FLOAT_UNDER + T + 1).timestamp() * 1000 - FLOAT_UNDER < T + 1  # the premise
    h = Harness()
    p = h.pay(FLOAT_UNDER, paid_at=at(FLOAT_UNDER + T + 1))
    assert h.take().anomalies == [Flag("paid_at_skew", "ord-1", (p,), None, ())]
    h.pay(FLOAT_UNDER, oid="on-the-bound", paid_at=at(FLOAT_UNDER + T))
    assert h.take().anomalies == []
