"""A payment that lands late in its own partition, behind payments stamped later (one of
several producers held up by a broker fault), found in the soak (soak-239874, exactly_once
07:19:02.665, at_least_once 07:19:15.135, ...): its order, stamped before it and read
before it, had been forgotten when the payments partition's progress passed the order's
window, so the payment went pending and was recovered by the orders' progress although
its order had matched it ("whichever arrives first", the contract's "Join semantics").

The soak's shape, with its settings (ORDER_TIMEOUT 5 s, GRACE 1 s): the order at
07:18:54.821 (orders 1 @ 90551), the payment at 07:18:55.386 (payments 1 @ 98456, about
2,000 records behind payments stamped up to 07:19:01.5), recovered at 07:19:02.665.
"""

from __future__ import annotations

from tests.join.harness import BASE, Harness

TIMEOUT, GRACE, HORIZON = 5_000, 1_000, 300_000
ORDER = BASE  # 07:18:54.821
PAID = BASE + 565  # 07:18:55.386


def _others(h: Harness, start: int, end: int, prefix: str) -> None:
    """Payments of other orders, each with its order, stamped start..end (one every 100 ms)."""
    for i, ts in enumerate(range(start, end + 1, 100)):
        h.order(ts - 50, oid=f"{prefix}{i}")
        h.pay(ts, oid=f"{prefix}{i}")


def test_a_payment_landing_behind_later_payments_still_matches_its_order_read_before_it() -> None:
    h = Harness(TIMEOUT, GRACE, HORIZON)
    h.order(ORDER, oid="o-18907")
    h.advance(ORDER + 100)
    # The other producers' payments (and their orders) go on; the held-up one's do not.
    _others(h, PAID + 100, PAID + 6_100, "other")
    h.advance(PAID + 6_200)  # payments confirmed past the order's window (ORDER + 6 s)
    h.pay(PAID, oid="o-18907", pid="p-18907")  # the held-up producer delivers
    _others(h, PAID + 6_200, PAID + 7_300, "next")  # orders confirm deadline + GRACE
    h.advance(PAID + 7_300)
    out = h.take()
    assert "p-18907" not in [r.payment.payment_id for r in out.recoveries], "its order was read before it"
    assert out.matched >= 1
    assert "o-18907" not in h.join.orders, "matched past its window: the pair goes at once"


def test_an_unmatched_order_is_forgotten_the_late_horizon_after_its_window() -> None:
    """(By the payments' progress: the clock once they are read to their end.)"""
    h = Harness(TIMEOUT, GRACE, HORIZON)
    h.order(ORDER, oid="lonely")
    _others(h, PAID + 100, PAID + 6_100, "other")
    h.advance(ORDER + TIMEOUT + GRACE + HORIZON - 1, True, True)
    assert "lonely" in h.join.orders
    h.advance(ORDER + TIMEOUT + GRACE + HORIZON, True, True)
    assert "lonely" not in h.join.orders


def test_a_duplicate_landing_behind_later_payments_is_dropped() -> None:
    """p239912-18846: paid at 07:18:55.338 (payments 1 @ 96483), matched with its order;
    the same payment again at 07:18:55.825 (@ 98463), delivered with the held-up batch.
    (Likewise p88775-18574 in soak-88769: the order at orders 0 @ 17795, the payment at
    payments 0 @ 19444 and again, stamped 249 ms later, @ 22227; recovered 4 s after the
    duplicate's deadline.) Its pair is settled past its window (test_late_duplicates.py)."""
    h = Harness(TIMEOUT, GRACE, HORIZON)
    h.order(ORDER + 120, oid="o-18846")
    h.pay(PAID - 48, oid="o-18846", pid="p-18846")
    assert h.take().matched == 1
    _others(h, PAID + 100, PAID + 6_100, "other")
    h.advance(PAID + 6_200)
    assert "o-18846" not in h.join.orders, "the pair is past its window"
    h.pay(PAID + 439, oid="o-18846", pid="p-18846")
    _others(h, PAID + 6_200, PAID + 7_300, "next")
    h.advance(PAID + 7_300)
    out = h.take()
    assert "p-18846" not in [r.payment.payment_id for r in out.recoveries]
    assert out.duplicates == 1 and not [a for a in out.anomalies if a.order_id == "o-18846"]
    assert "o-18846" not in h.join.pending


def test_a_second_payment_landing_behind_later_payments_is_an_anomaly_not_a_recovery() -> None:
    """p88775-18288b (soak-88769, exactly_once): a second distinct payment for an order
    whose first had matched, stamped a second later, delivered by a held-up producer once
    the payments partition was past the pair's window: it went pending and was recovered.
    By the contract it is a `duplicate_payment` anomaly; the report carries the second
    payment alone (what a settled pair keeps of the first is a fingerprint)."""
    h = Harness(TIMEOUT, GRACE, HORIZON)
    h.order(ORDER, oid="o-18288")
    h.pay(PAID, oid="o-18288", pid="p-18288")
    assert h.take().matched == 1
    _others(h, PAID + 100, PAID + 6_100, "other")
    h.advance(PAID + 6_200)
    second = h.pay(PAID + 1_000, oid="o-18288", pid="p-18288b")
    _others(h, PAID + 6_200, PAID + 8_300, "next")
    h.advance(PAID + 8_300)
    out = h.take()
    assert "p-18288b" not in [r.payment.payment_id for r in out.recoveries]
    flags = [(a.kind, a.order_id, a.payments) for a in out.anomalies if a.order_id == "o-18288"]
    assert flags == [("duplicate_payment", "o-18288", (second,))]
    assert "o-18288" not in h.join.pending


def test_an_order_and_its_payment_both_held_up_match_when_the_order_is_read_first() -> None:
    """p240088-16770 (soak-239874, exactly_once, broker 2 killed at 07:41:03: it led both
    partitions 0): the order (stamped 07:40:54.673) landed at orders 0 @ 491527 behind
    orders confirming 07:41:03.034, the payment (07:40:54.682) at payments 0 @ 523360
    behind payments confirming 07:41:04.219. The join read the order first, forgot it once
    the payments' progress passed its window, and recovered the payment at 07:41:04.802;
    no late order was ever written (none on orders.late, committed or aborted), which is
    what shows the order was read before the payment. By the contract the payment matches
    ("whichever arrives first"); the checker counted the recovery late by disorder, by the
    orders partition alone, and so missed its late order instead (12 of them)."""
    order_ts, paid = BASE + 9_873, BASE + 9_882  # 07:40:54.673 and .682 (BASE as 07:40:44.800)
    h = Harness(TIMEOUT, GRACE, HORIZON)
    _others(h, order_ts - 1_000, order_ts - 100, "before")  # the partitions' records until the kill
    h.advance(order_ts)
    # The held-up producers deliver: the others' records stamped up to 9 s later first, then ours.
    _others(h, order_ts + 100, order_ts + 9_400, "other")
    h.advance(order_ts + 9_400)
    h.order(order_ts, oid="o-16770")
    h.advance(order_ts + 9_500)  # the payments' progress is past the order's window by now
    h.pay(paid, oid="o-16770", pid="p-16770")
    h.advance(order_ts + 10_000)
    h.advance(order_ts + 20_000, payments_at_end=True, orders_at_end=True)
    out = h.take()
    assert "p-16770" not in [r.payment.payment_id for r in out.recoveries], "its order was read before it"
    assert "o-16770" not in [x.order.order_id for x in out.late]
