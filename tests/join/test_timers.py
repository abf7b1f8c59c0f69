"""The pending payments' timers (streams/join/timers.py): deadlines in buckets of 8 ms,
due in part or whole, stale order_ids skipped and rebuilt away.

BASE and T are multiples of 8 ms, so a payment at BASE + k (k < 8) has its deadline in
the bucket that starts at D = BASE + T.
"""

from __future__ import annotations

from streams.join import compact
from streams.join.timers import Deadlines
from tests.join.harness import BASE, G, Harness, T

D = BASE + T


def test_a_bucket_due_in_part_gives_what_is_due_and_keeps_the_rest_whatever_their_order() -> None:
    h = Harness()
    h.pay(BASE + 5, oid="a")  # deadline D + 5, first in the bucket
    h.pay(BASE + 2, oid="b")  # deadline D + 2, behind it
    h.advance(D + G + 3, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == ["pay-b"]
    h.advance(D + G + 4, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == []
    h.advance(D + G + 5, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == ["pay-a"]


def test_a_payment_already_past_due_when_read_is_recovered_at_the_next_advance_beside_one_still_waiting() -> None:
    """The orders partition's progress stands at D + G + 3 (two order records): a payment
    with its deadline at D + 2 read now is due at once, though its bucket was scanned at
    this very progress and one in it (D + 5) still waits."""
    h = Harness()
    h.pay(BASE + 5, oid="a")
    h.order(D + G + 3, oid="x")
    h.order(D + G + 3, oid="y")
    h.advance()
    assert h.recovered_ids() == []
    h.pay(BASE + 2, oid="b")
    h.advance()
    assert h.recovered_ids() == ["pay-b"]


def test_the_stale_timer_of_a_replayed_order_id_holds_up_no_other_payment_in_its_bucket() -> None:
    """x is matched and forgotten; its payment is replayed much later (pending anew, in a
    later bucket). Its old timer, still in the bucket before y's, is skipped, not a stop."""
    h = Harness()
    h.pay(BASE, oid="x")
    h.pay(BASE + 1, oid="y")
    h.order(BASE + 1, oid="x")
    h.advance(BASE + 2 * T + G, payments_at_end=True, orders_at_end=False)  # x's pair expires; no order progress
    assert "x" not in h.join.orders and h.recovered_ids() == []
    h.pay(BASE + 2 * T + G, oid="x", pid="pay-x-again")
    h.order(D + G + 1, oid="z1")
    h.order(D + G + 1, oid="z2")
    h.advance()
    assert h.recovered_ids() == ["pay-y"]


def _entries(*times: int) -> dict[str, compact.Pending]:
    return {f"o{i}": compact.entry(t, b"") for i, t in enumerate(times)}


def test_the_timers_count_what_their_buckets_hold_after_a_bucket_is_due_in_part() -> None:
    pending = _entries(BASE + 5, BASE + 2, BASE + 100)
    timers = Deadlines(T)
    for oid, e in pending.items():
        timers.add(oid, compact.t_of(e))
    assert len(timers) == 3 and timers.buckets() == 2
    due = []
    for oid, _e, deadline in timers.due(D + 3, pending):
        due.append((oid, deadline))
        del pending[oid]
    assert due == [("o1", D + 2)]
    assert len(timers) == 2, "o0 kept in the first bucket, o2 in the next"


def _timers(count: int, live: int) -> tuple[Deadlines, dict[str, compact.Pending]]:
    """`count` timers, of which the first `live` are pending payments still."""
    pending = _entries(*(BASE + 100 * i for i in range(count)))
    timers = Deadlines(T)
    for oid, e in pending.items():
        timers.add(oid, compact.t_of(e))
    return timers, dict(list(pending.items())[:live])


def test_stale_timers_are_dropped_once_past_64_they_are_more_than_twice_the_live_ones() -> None:
    for count, live, kept in ((10, 4, 10), (64, 0, 64), (65, 32, 32), (66, 33, 66), (67, 33, 33)):
        timers, pending = _timers(count, live)
        timers.tidy(pending)
        assert len(timers) == kept, (count, live)
        assert timers.buckets() == kept


def test_holds_tells_whether_a_payments_timer_is_in_its_bucket() -> None:
    timers = Deadlines(T)
    timers.add("a", BASE)
    assert timers.holds("a", BASE) and timers.holds("a", BASE + 7)  # the same bucket
    assert not timers.holds("b", BASE) and not timers.holds("a", BASE + 8)
