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
# A late horizon short enough that x's pair, once past its window, is not settled (kept as a
# fingerprint: test_late_duplicates.py) by the time its payment is replayed: pending anew.
SHORT = T // 2


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
    h = Harness(horizon=SHORT)
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


def test_an_order_id_pending_again_in_the_bucket_of_its_old_timer_is_timed_out_where_the_old_timer_stands() -> None:
    """x is matched and forgotten, then its payment replayed with an event time in the same
    bucket: the bucket holds x, w, y, x, z. Its first x is looked up again and finds the
    replayed payment, so that comes before y, as timers.py gives it; while the bucket is
    due in part, both x's are kept. (The native core's timers name slots, not order_ids:
    the old slot keeps its order_id for this.)"""
    h = Harness(horizon=SHORT)
    h.pay(BASE, oid="x")
    h.pay(BASE + 1, oid="w")
    h.pay(BASE + 4, oid="y")
    h.order(BASE + 2, oid="x")
    h.payments_to(BASE + 2 * T + G)  # (settled pairs are forgotten by the payments' records)
    h.advance(BASE + 2 * T + G, payments_at_end=True, orders_at_end=False)  # x's pair expires; no order progress
    assert "x" not in h.join.orders and h.recovered_ids() == []
    h.pay(BASE + 3, oid="x", pid="pay-x-again")
    h.pay(BASE + 6, oid="z")
    assert len(h.join.deadlines) == 5
    h.advance(D + G + 2, payments_at_end=True, orders_at_end=True)  # due in part: w's deadline, not the others'
    assert h.recovered_ids() == ["pay-w"]
    assert len(h.join.deadlines) == 4, "x, y, x, z kept"
    h.advance(D + G + 7, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == ["pay-x-again", "pay-y", "pay-z"]
    assert len(h.join.deadlines) == 0


def test_an_old_timer_still_finds_its_order_id_after_the_slots_were_compacted() -> None:
    """As above, with 40 earlier payments timed out between x's match and its replay: most
    of the native core's pending slots free, it compacts them, and x's old timer, moved
    with its slot, still finds the replayed payment first."""
    h = Harness(horizon=SHORT)
    for i in range(40):
        h.pay(BASE - 8 * (i + 1), oid=f"e{i}")
    h.pay(BASE, oid="x")
    h.pay(BASE + 1, oid="w")
    h.pay(BASE + 4, oid="y")
    h.order(BASE + 2, oid="x")
    h.payments_to(BASE + 2 * T + G)  # (settled pairs are forgotten by the payments' records)
    h.advance(BASE + 2 * T + G, payments_at_end=True, orders_at_end=False)  # x's pair expires; no order progress
    h.advance(D - 1 + G, payments_at_end=True, orders_at_end=True)  # every bucket before x's
    assert sorted(h.recovered_ids()) == sorted(f"pay-e{i}" for i in range(40))
    h.pay(BASE + 3, oid="x", pid="pay-x-again")
    h.pay(BASE + 6, oid="z")
    h.advance(D + G + 2, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == ["pay-w"]
    assert len(h.join.deadlines) == 4, "x, y, x, z kept"
    h.advance(D + G + 7, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == ["pay-x-again", "pay-y", "pay-z"]


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


class _Counting(dict):  # type: ignore[type-arg]
    """The pending payments, counting the look-ups `due` makes: the timers' work."""

    looked_up = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def]
        self.looked_up += 1
        return super().get(key, default)


def _scan(timers: Deadlines, due: int, pending: _Counting) -> tuple[list[str], int]:
    """What `due` gives at `due` (removing each, as the core does), and the look-ups it made."""
    before, got = pending.looked_up, []
    for oid, _e, _deadline in timers.due(due, pending):
        got.append(oid)
        del pending[oid]
    return got, pending.looked_up - before


def test_nothing_is_looked_at_before_the_first_bucket_is_due() -> None:
    """A bucket holds the deadlines D .. D + 7: before D no timer is due, and neither
    any_due nor due looks at a single payment (each advance asks)."""
    pending = _Counting(_entries(BASE + 2, BASE + 5))
    timers = Deadlines(T)
    for oid, e in pending.items():
        timers.add(oid, compact.t_of(e))
    assert not timers.any_due(D - 1) and timers.any_due(D)
    assert _scan(timers, D - 1, pending) == ([], 0)
    assert _scan(timers, D + 1, pending) == ([], 2), "at D + 1 the bucket is due in part: both looked at"


def test_a_bucket_due_in_part_is_looked_at_once_at_each_progress_and_whole_once_its_last_ms_is_due() -> None:
    """Progress often stands still between advances: a bucket due in part is scanned
    again only when progress moves (or a payment joins it). At D + 6 the bucket's last
    millisecond (D + 7) is not due yet: it is still due in part."""
    pending = _Counting(_entries(BASE + 2, BASE + 7))  # deadlines D + 2 and D + 7
    timers = Deadlines(T)
    for oid, e in pending.items():
        timers.add(oid, compact.t_of(e))
    assert _scan(timers, D + 2, pending) == (["o0"], 2)
    assert _scan(timers, D + 2, pending) == ([], 0), "the same progress: not scanned again"
    assert _scan(timers, D + 6, pending) == ([], 1), "progress moved: scanned again, the rest still waits"
    assert _scan(timers, D + 6, pending) == ([], 0)
    assert _scan(timers, D + 7, pending) == (["o1"], 1), "whole: the bucket goes"
    assert timers.buckets() == 0 and len(timers) == 0
