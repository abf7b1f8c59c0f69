"""The join core by example: exact timestamps around every edge of the contract.

In the spirit of Kafka Streams' KStreamKStreamLeftJoinTest: T = 60 s timeout,
G = 5 s grace, payment at BASE, so its deadline is BASE + T and it may be recovered
once the orders partition is seen at BASE + T + G.
"""

from __future__ import annotations

from decimal import Decimal

import pytest

from streams.join import changelog, compact
from streams.join.core import Decisions, JoinParams, PartitionJoin
from streams.join.state import Store
from tests.factories import payment_signed
from tests.join.harness import BASE, G, H, Harness, T, at
from tests.schemas.test_fast import _same

D = BASE + T  # the payment's deadline


def test_order_after_its_payment_matches_and_is_never_recovered() -> None:
    h = Harness()
    h.pay(BASE)
    h.order(BASE + 1_000)
    h.advance(BASE + 10 * T, payments_at_end=True, orders_at_end=True)
    out = h.take()
    assert out.matched == 1 and out.recoveries == [] and out.late == [] and out.anomalies == []


def test_order_before_its_payment_matches() -> None:
    h = Harness()
    h.order(BASE - 1_000)
    h.pay(BASE)
    h.advance(BASE + 10 * T, True, True)
    out = h.take()
    assert out.matched == 1 and out.recoveries == []


@pytest.mark.parametrize(("order_ts", "matches"), [
    (D - 1, True), (D, True), (D + 1, False),
    (BASE - T + 1, True), (BASE - T, True), (BASE - T - 1, False),
])
def test_window_edges_are_inclusive(order_ts: int, matches: bool) -> None:
    h = Harness()
    h.pay(BASE)
    h.order(order_ts)
    h.advance(BASE + 10 * T, True, True)
    out = h.take()
    assert (out.matched == 1) is matches
    assert [r.payment.payment_id for r in out.recoveries] == ([] if matches else ["pay-ord-1"])


def test_order_before_the_payment_but_outside_the_window_does_not_match() -> None:
    h = Harness()
    h.order(BASE - T - 1)
    h.pay(BASE)
    h.order(D + G, oid="other")
    h.order(D + G, oid="another")
    h.advance()
    assert h.recovered_ids() == ["pay-ord-1"]


@pytest.mark.parametrize(("first", "second", "recovered"), [
    (D + G - 1, D + G - 1, False), (D + G, D + G, True), (D + G + 1, D + G + 1, True),
    (D + G - 1, D + G + 5_000, False), (D + G + 5_000, D + G - 1, False), (D + G + 5_000, D + G, True),
])
def test_two_consecutive_order_records_past_deadline_plus_grace_time_the_payment_out(
        first: int, second: int, recovered: bool) -> None:
    h = Harness()
    h.pay(BASE)
    h.order(first, oid="someone-else")
    h.order(second, oid="another")
    h.advance(payments_at_end=False, orders_at_end=False)  # the wall clock well past the records
    assert h.recovered_ids() == (["pay-ord-1"] if recovered else [])


def test_the_first_order_record_read_confirms_nothing_by_itself() -> None:
    h = Harness()
    h.pay(BASE)
    h.order(D + G + 10 * T, oid="someone-else")
    h.advance(payments_at_end=False, orders_at_end=False)
    assert h.recovered_ids() == [], "one record: no progress"
    h.order(D + G, oid="another")
    h.advance(payments_at_end=False, orders_at_end=False)
    assert h.recovered_ids() == ["pay-ord-1"], "two: progress is the smaller of their times"


def test_progress_is_the_largest_time_two_consecutive_records_both_reach_never_a_lone_one() -> None:
    """Records at D+G+9T, BASE, D+G+8T, D+G: the pairs reach BASE, BASE, D+G; the two far
    ahead are never adjacent, so progress is D+G, not D+G+8T."""
    h = Harness()
    h.pay(BASE)
    h.pay(D + G + T, oid="later")
    for ts, oid in ((D + G + 9 * T, "a"), (BASE, "b"), (D + G + 8 * T, "c")):
        h.order(ts, oid=oid)
        h.advance(payments_at_end=False, orders_at_end=False)
        assert h.recovered_ids() == []
    h.order(D + G, oid="d")
    h.advance(payments_at_end=False, orders_at_end=False)
    assert h.recovered_ids() == ["pay-ord-1"], "the later payment waits: its deadline is not confirmed"
    assert h.join.orders_read.time == D + G


def test_payments_progress_needs_two_records_too_before_it_expires_an_order() -> None:
    """(An unmatched order is kept LATE_HORIZON past its window, by the same progress.)"""
    h = Harness()
    h.order(BASE)
    h.pay(BASE + 2 * H, oid="fast-clock")  # alone: expires nothing
    h.advance(payments_at_end=False, orders_at_end=False)
    assert "ord-1" in h.join.orders
    h.pay(BASE + T + G + H, oid="next")
    h.advance(payments_at_end=False, orders_at_end=False)
    assert "ord-1" not in h.join.orders, "two payments past its window and the horizon: expired"


@pytest.mark.parametrize(("now", "recovered"), [(D + G - 1, False), (D + G, True)])
def test_idle_order_partition_read_to_its_end_times_out_by_the_wall_clock(now: int, recovered: bool) -> None:
    h = Harness()
    h.pay(BASE)
    h.advance(now, payments_at_end=True, orders_at_end=True)
    assert h.recovered_ids() == (["pay-ord-1"] if recovered else [])


def test_order_waiting_unread_in_a_backlog_never_causes_a_recovery() -> None:
    h = Harness()
    h.pay(BASE)
    # Hours of wall clock pass, but the orders partition is not read to its end.
    for now in (D + G, D + 10 * G, BASE + 100 * T):
        h.advance(now, payments_at_end=True, orders_at_end=False)
    assert h.recovered_ids() == []
    h.order(BASE + 30_000)  # the backlog is read: there it was
    h.advance(BASE + 100 * T, True, True)
    out = h.take()
    assert out.matched == 1 and out.recoveries == []


def test_slow_payments_partition_still_finds_orders_read_long_before() -> None:
    h = Harness()
    for i in range(5):
        h.order(BASE + i, oid=f"o{i}")
    h.order(BASE + 100 * T, oid="far-ahead")  # orders are far ahead of payments
    h.advance(BASE + 100 * T, payments_at_end=False, orders_at_end=True)
    for i in range(5):
        h.pay(BASE + i, oid=f"o{i}")
    h.advance(BASE + 100 * T, payments_at_end=True, orders_at_end=True)
    out = h.take()
    assert out.matched == 5 and out.recoveries == []


def test_late_order_whose_time_is_past_the_deadline_is_emitted_before_the_recovery() -> None:
    h = Harness()
    h.pay(BASE)
    h.order(D + 1)  # read before the payment is due: late, and the payment will still be recovered
    out = h.take()
    assert [(x.payment_id, x.lateness_ms) for x in out.late] == [("pay-ord-1", 1)] and out.recoveries == []
    h.order(D + G)
    h.order(D + G, oid="other")
    h.advance()
    out = h.take()
    assert [r.payment.payment_id for r in out.recoveries] == ["pay-ord-1"]
    assert out.late == [], "a late order is emitted once"


def test_order_read_after_the_recovery_is_late_even_inside_the_window() -> None:
    h = Harness()
    h.pay(BASE)
    h.order(D + G, oid="other")
    h.order(D + G, oid="another")
    h.advance()
    assert h.recovered_ids() == ["pay-ord-1"]
    h.order(BASE + 1_000)  # out of order by more than the grace
    out = h.take()
    assert [(x.order.order_id, x.recovery_id, x.lateness_ms) for x in out.late] == [
        ("ord-1", out.late[0].recovery_id, 0)
    ]
    assert out.matched == 0
    h.order(BASE + 1_000)
    assert h.take().late == [], "a repeated late order is not emitted twice"


def test_late_order_after_recovery_reports_its_lateness() -> None:
    h = Harness()
    h.pay(BASE)
    h.advance(D + G, True, True)
    assert h.recovered_ids() == ["pay-ord-1"]
    h.order(D + 42_000)
    assert [x.lateness_ms for x in h.take().late] == [42_000]


def test_order_that_was_read_before_its_payment_but_is_past_the_deadline_is_late() -> None:
    h = Harness()
    h.order(D + 1)
    h.pay(BASE)
    out = h.take()
    assert [x.lateness_ms for x in out.late] == [1] and out.matched == 0
    h.advance(D + G, True, True)
    assert h.recovered_ids() == ["pay-ord-1"]


def test_recovered_payments_are_remembered_for_the_late_horizon_after_the_recovery_only() -> None:
    h = Harness()
    h.pay(BASE)
    h.advance(D + G, True, True)  # recovered when the wall clock is at D + G
    assert h.recovered_ids() == ["pay-ord-1"]
    h.advance(D + G + H - 1, True, True)
    assert h.join.sizes()[2] == 1
    h.advance(D + G + H, True, True)
    assert h.join.sizes() == (0, 0, 0)
    h.order(D + G + H + 1)
    assert h.take().late == [], "past the horizon the order is no longer recognised"


def test_a_payment_hours_old_recovered_in_a_catch_up_still_recognises_its_late_order() -> None:
    """The horizon runs from the recovery by the wall clock, not from the deadline: a
    backlog two hours old is recovered now, and its order, read seconds later, is late."""
    h = Harness()
    now = BASE + 2 * H
    h.pay(BASE)
    h.order(BASE + 2 * H - 11_000, oid="someone-else")  # the backlog: orders read far past the deadline
    h.order(BASE + 2 * H - 10_000, oid="another")
    h.advance(now, payments_at_end=False, orders_at_end=False)
    assert h.recovered_ids() == ["pay-ord-1"]
    h.order(BASE + 2 * H - 5_000)  # its order, stamped late, read 5 s later
    h.advance(now + 5_000, payments_at_end=False, orders_at_end=False)
    late = h.take().late
    assert [x.payment_id for x in late] == ["pay-ord-1"]


# ---------------------------------------------------------------- bad clocks and forged records


def test_an_order_stamped_30_minutes_ahead_times_out_nothing_before_the_wall_clock_does() -> None:
    h = Harness()
    for i in range(20):
        h.pay(BASE + i, oid=f"o{i}")
    h.order(BASE + 30 * 60_000, oid="wrong-clock")  # a producer whose clock is 30 min fast, twice
    h.order(BASE + 30 * 60_000, oid="wrong-clock-2")
    h.advance(BASE + 1_000, payments_at_end=False, orders_at_end=False)
    assert h.recovered_ids() == [], "progress never runs ahead of the wall clock"
    h.advance(D + G - 1, payments_at_end=False, orders_at_end=False)
    assert h.recovered_ids() == []
    h.advance(D + G, payments_at_end=False, orders_at_end=False)
    assert h.recovered_ids() == ["pay-o0"], "once the wall clock passes deadline + grace, in order"


def test_a_record_stamped_ahead_still_matches_by_its_own_timestamp() -> None:
    h = Harness()
    h.pay(BASE + 10 * 60_000)  # stamped 10 min ahead of the wall clock
    h.order(BASE + 10 * 60_000 + 1_000)
    h.advance(BASE, True, True)
    out = h.take()
    assert out.matched == 1 and out.recoveries == []


def test_a_forged_payment_stamped_ahead_moves_no_progress_and_evicts_no_order() -> None:
    key = b"k" * 32
    h = Harness(key=key)
    h.order(BASE, oid="real")
    forged = h.pay(BASE + 30 * 60_000, oid="forged", signature="0" * 64)
    assert [a.kind for a in h.take().anomalies] == ["bad_signature"]
    assert forged.status == "succeeded"
    h.advance(BASE + 2_000, payments_at_end=False, orders_at_end=False)
    assert "real" in h.join.orders, "the buffered order is still there for its payment"
    assert h.join.payments.time < BASE + 30 * 60_000
    signed = payment_signed(key, order_id="real", paid_at=at(BASE + 2_000))
    h.feed_payment(BASE + 2_000, signed)
    assert h.take().matched == 1


def test_a_forged_failed_payment_moves_no_progress_either() -> None:
    h = Harness(key=b"k" * 32)
    h.pay(BASE + 30 * 60_000, oid="x", status="failed", signature="0" * 64)
    assert h.join.payments.time == -1


def test_one_far_future_order_does_not_hold_up_the_expiry_of_those_behind_it() -> None:
    h = Harness()
    h.order(BASE + 50 * 60_000, oid="far")  # first in, expires last
    for i in range(1_000):
        h.order(BASE + i, oid=f"o{i}")
    # (an unmatched order is kept the late horizon longer, by the payments' progress: test_payment_disorder)
    h.pay(BASE + T + G + H + 2_000, oid="late-payment")
    h.pay(BASE + T + G + H + 2_000, oid="late-payment-2")
    h.advance(BASE + T + G + H + 2_000, payments_at_end=False, orders_at_end=False)
    assert set(h.join.orders) == {"far"}, "everything past its window expired, whatever was inserted first"


def test_duplicate_payment_is_dropped() -> None:
    h = Harness()
    h.pay(BASE, pid="pay-A")
    h.pay(BASE, pid="pay-A")
    h.pay(BASE + 10, pid="pay-A")
    h.advance(D + G, True, True)
    out = h.take()
    assert [r.payment.payment_id for r in out.recoveries] == ["pay-A"] and out.duplicates == 2 and out.anomalies == []


@pytest.mark.parametrize("state", ["pending", "matched", "recovered"])
def test_second_distinct_payment_for_an_order_is_an_anomaly_not_a_recovery(state: str) -> None:
    h = Harness()
    h.pay(BASE, pid="pay-A")
    if state == "matched":
        h.order(BASE + 1)
    if state == "recovered":
        h.advance(D + G, True, True)
    first = h.take()
    h.pay(BASE + 2_000, pid="pay-B")
    h.advance(BASE + 10 * T, True, True)
    out = h.take()
    assert [(a.kind, [p.payment_id for p in a.payments]) for a in out.anomalies] == [
        ("duplicate_payment", ["pay-A", "pay-B"])
    ]
    recovered = [r.payment.payment_id for r in first.recoveries + out.recoveries]
    assert recovered == ([] if state == "matched" else ["pay-A"])


def test_failed_payments_need_no_order_and_are_not_the_first_payment() -> None:
    h = Harness()
    h.pay(BASE, pid="pay-F", status="failed")
    h.pay(BASE + 1, pid="pay-S")
    h.advance(D + G + 1, True, True)
    out = h.take()
    assert [r.payment.payment_id for r in out.recoveries] == ["pay-S"]
    assert out.anomalies == [] and out.ignored_failed == 1


@pytest.mark.parametrize(("order_over", "kinds"), [
    ({"amount": Decimal("10.5")}, []),  # 10.50 and 10.5 are the same amount
    ({"amount": Decimal("11")}, ["amount_mismatch"]),
    ({"currency": "USD"}, ["currency_mismatch"]),
    ({"user_id": "user-2"}, ["user_mismatch"]),
    ({"user_id": "user-2", "amount": Decimal("1")}, ["user_mismatch", "amount_mismatch"]),
])
@pytest.mark.parametrize("order_first", [False, True])
def test_mismatched_pair_is_matched_and_reported(order_over: dict, kinds: list[str], order_first: bool) -> None:
    h = Harness()
    if order_first:
        h.order(BASE + 1, **order_over)
        h.pay(BASE)
    else:
        h.pay(BASE)
        h.order(BASE + 1, **order_over)
    h.advance(BASE + 10 * T, True, True)
    out = h.take()
    assert out.matched == 1 and out.recoveries == []
    assert [a.kind for a in out.anomalies] == kinds
    for a in out.anomalies:
        assert a.order is not None and a.payments[0].payment_id == "pay-ord-1"


def test_payment_with_a_bad_signature_is_reported_and_never_recovered() -> None:
    key = b"k3y"
    h = Harness(key=key)
    good = h.pay(BASE, oid="good", signature=None)  # unsigned: bad
    signed_probe = good.model_copy(update={"order_id": "signed", "payment_id": "pay-signed"})
    signed = signed_probe.model_copy(update={"signature": signed_probe.expected_signature(key)})
    h.feed_payment(BASE, signed)
    # signature of another payment
    forged = signed.model_copy(update={"order_id": "forged", "payment_id": "pay-forged"})
    h.feed_payment(BASE, forged)
    h.advance(D + G, True, True)
    out = h.take()
    assert [r.payment.payment_id for r in out.recoveries] == ["pay-signed"]
    assert sorted(a.order_id for a in out.anomalies if a.kind == "bad_signature") == ["forged", "good"]


def test_during_a_key_rotation_a_payment_signed_with_either_key_is_valid() -> None:
    new, old, other = b"new-key-16-bytes", b"old-key-16-bytes", b"not-either-key!!"
    core = PartitionJoin(JoinParams(T, G, H, (new, old)))
    out = Decisions()
    for oid, key in (("by-new", new), ("by-old", old), ("by-other", other)):
        p = payment_signed(key, order_id=oid)
        core.on_payment(BASE, p, p.encode(), out)
    core.advance(D + G, True, True, out)
    assert sorted(r.payment.order_id for r in out.recoveries) == ["by-new", "by-old"]
    assert [(a.kind, a.order_id) for a in out.anomalies] == [("bad_signature", "by-other")]


@pytest.mark.parametrize(("paid_at", "skewed"), [
    (BASE - T, False), (BASE - T - 1, True), (BASE + T, False), (BASE + T + 1, True), (BASE - 2 * H, True),
    (BASE - T - 0.5, True), (BASE + T + 0.9, False),  # paid_at_ms is whole milliseconds, rounded down
])
def test_a_payment_whose_paid_at_is_more_than_the_timeout_from_its_event_time_is_an_anomaly(
        paid_at: int, skewed: bool) -> None:
    h = Harness()
    p = h.pay(BASE, paid_at=at(paid_at))
    out = h.take()
    assert [(a.kind, a.payments) for a in out.anomalies] == ([("paid_at_skew", (p,))] if skewed else [])
    h.advance(D + G, True, True)
    assert h.recovered_ids() == ["pay-ord-1"], "otherwise handled as usual"


def test_a_signed_payment_replayed_hours_later_is_flagged_and_keeps_its_recovery_id() -> None:
    """The review's case: a matched, signed payment re-published two hours later (same
    bytes, a new timestamp) was recovered silently. It is flagged; its recovery keeps the
    recovery_id of its payment_id, so the writer writes nothing twice."""
    from schemas import recovery_id_for

    key = b"k" * 32
    h = Harness(key=key)
    original = h.pay(BASE)
    h.order(BASE + 1_000)
    assert h.take().matched == 1
    replay_at = BASE + 2 * H
    h.advance(replay_at, True, True)  # the pair's window is long closed: it is forgotten
    assert h.join.sizes() == (0, 0, 0)
    h.feed_payment(replay_at, original)
    assert [(a.kind, a.payments) for a in h.take().anomalies] == [("paid_at_skew", (original,))]
    h.advance(replay_at + T + G, True, True)
    [recovery] = h.take().recoveries
    assert recovery.payment == original and recovery_id_for(recovery.payment.payment_id) == recovery_id_for("pay-ord-1")


def test_a_failed_or_forged_payment_is_never_flagged_for_skew() -> None:
    h = Harness(key=b"k" * 32)
    h.pay(BASE, oid="failed", status="failed", paid_at=at(BASE - 2 * H))
    h.pay(BASE, oid="forged", forged=True, paid_at=at(BASE - 2 * H))
    assert [a.kind for a in h.take().anomalies] == ["bad_signature"]


def test_unmatched_orders_expire_once_payments_are_past_their_window_and_the_horizon_past_it() -> None:
    """Payments past the window alone keep it (a payment may still land behind them:
    test_payment_disorder); the payments' progress the late horizon past it forgets it:
    the wall clock once they are read to their end, not while they are behind (a backlog)."""
    h = Harness()
    h.order(BASE)
    h.advance(BASE + T + G - 1, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes()[1] == 1
    h.advance(BASE + T + G, payments_at_end=True, orders_at_end=True)
    h.advance(BASE + T + G + H - 1, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes()[1] == 1
    h.advance(BASE + T + G + H, payments_at_end=False, orders_at_end=True)
    assert h.join.sizes()[1] == 1
    h.advance(BASE + T + G + H, payments_at_end=True, orders_at_end=True)
    assert h.join.sizes()[1] == 0


def test_state_stays_bounded_over_a_long_stream() -> None:
    h = Harness()
    for i in range(5_000):
        ts = BASE + i * 100
        h.pay(ts, oid=f"o{i}")
        if i % 10:
            h.order(ts + 50, oid=f"o{i}")
        h.advance(ts, True, True)
    pending, orders, _recovered = h.join.sizes()
    window_records = (T + G) // 100
    assert pending <= window_records and orders <= window_records + 1
    timers = h.join.deadlines
    assert len(timers) <= 2 * pending + 64
    assert sum(map(len, timers._buckets.values())) == len(timers)  # the count is what the buckets hold
    assert sorted(timers._heap) == sorted(timers._buckets)


# ---------------------------------------------------------------- changelog


def _changes(h: Harness) -> list[tuple[int, object, object]]:
    """take_changes() as (store, key, order ids of a bundle | "value" | None)."""
    out = []
    for c in h.commit():
        value = c.value
        shown = [v[0] for v in value] if isinstance(value, list) else (None if value is None else "value")
        out.append((c.store, c.key, shown))
    return out


def test_a_payment_matched_within_one_commit_interval_never_reaches_the_changelog() -> None:
    h = Harness()
    h.pay(BASE, oid="a")
    h.order(BASE + 1, oid="a")
    h.order(BASE + 2, oid="b")
    h.pay(BASE + 3, oid="b")
    assert _changes(h) == [(Store.MATCHED, 0, ["a", "b"])], "only one bundle of the matched pairs is written"


def test_persisted_entries_are_tombstoned_once_gone() -> None:
    h = Harness()
    h.pay(BASE)
    h.order(BASE - 1, oid="early")
    assert _changes(h) == [(Store.PENDING, "ord-1", "value"), (Store.ORDERS, "early", "value")]
    h.order(BASE + 1)  # the persisted pending payment is matched
    h.pay(BASE, oid="early")  # the persisted unmatched order is matched
    assert sorted(_changes(h), key=str) == sorted(
        [(Store.PENDING, "ord-1", None), (Store.ORDERS, "early", None), (Store.MATCHED, 0, ["ord-1", "early"])],
        key=str)
    assert h.commit() == []


def test_a_bundle_is_deleted_once_all_its_pairs_have_expired() -> None:
    h = Harness()
    h.pay(BASE, oid="a")
    h.order(BASE, oid="a")
    h.pay(BASE + 10_000, oid="b")
    h.order(BASE + 10_000, oid="b")
    assert _changes(h) == [(Store.MATCHED, 0, ["a", "b"])]
    h.advance(BASE + T + G + 9_999, payments_at_end=True, orders_at_end=True)
    # (a is settled: test_late_duplicates)
    assert _changes(h) == [(Store.SETTLED, 1, ["a"])] and h.join.sizes()[1] == 1, "b still needs the bundle"
    h.advance(BASE + T + G + 10_000, payments_at_end=True, orders_at_end=True)
    assert _changes(h) == [(Store.MATCHED, 0, None), (Store.SETTLED, 2, ["b"])] and h.join.sizes()[1] == 0


def test_bundles_are_capped_by_encoded_bytes_whatever_the_payments_weigh() -> None:
    """2,000 pairs of ~700-byte payments made a 1.4 MB record before; now no bundle's
    encoded value exceeds BUNDLE_MAX_BYTES, and every pair is in exactly one bundle."""
    from streams.join.state import BUNDLE_MAX_BYTES

    h = Harness()
    heavy = {f"k{i:02d}": "x" * 48 for i in range(12)}  # 12 metadata values of 48 characters
    for i in range(3_000):
        h.pay(BASE + i, oid=f"o{i}", metadata=heavy)
        h.order(BASE + i, oid=f"o{i}")
    bundles = [(c.key, c.value) for c in h.commit() if c.store == Store.MATCHED]
    sizes = [len(changelog.encode_value(Store.MATCHED, v)) for _, v in bundles]
    assert len(bundles) >= 3 and max(sizes) <= BUNDLE_MAX_BYTES
    assert sorted(oid for _, v in bundles for oid, _ in v) == sorted(f"o{i}" for i in range(3_000))


def test_state_restored_from_the_changelog_makes_the_same_decisions() -> None:
    live = Harness()
    live.pay(BASE, oid="a")
    live.pay(BASE, oid="b")
    live.order(BASE + 5, oid="b")
    live.order(BASE + 7, oid="c")
    live.pay(BASE, oid="r")
    live.order(D + G - 1, oid="x")
    live.advance(BASE + T + G, payments_at_end=False, orders_at_end=False)
    log: dict[bytes, bytes | None] = {}
    for change in live.commit():
        key, value = changelog.encode(change)
        log[key] = value
    live.take()

    clone = Harness()
    clone.restore(log)
    assert clone.join.sizes() == live.join.sizes()

    for h in (live, clone):
        h.pay(BASE + 100, oid="c")  # matches the buffered order c
        h.pay(BASE + 1, oid="b", pid="pay-other")  # b was matched: a second payment
        h.order(BASE + 2, oid="a")  # a is pending: matches
        h.advance(BASE + 10 * T, True, True)
    a, b = live.take(), clone.take()
    assert (a.matched, [x.kind for x in a.anomalies], [r.payment for r in a.recoveries]) == (
        b.matched, [x.kind for x in b.anomalies], [r.payment for r in b.recoveries])
    assert a.matched == 2 and [x.kind for x in a.anomalies] == ["duplicate_payment"]
    assert [r.payment.order_id for r in a.recoveries] == ["r"]


# ---------------------------------------------------------------- trace context

TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TO = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_a_recovery_carries_its_payments_trace_also_after_a_restore() -> None:
    live = Harness()
    live.pay(BASE, oid="a", trace=TP)
    log: dict[bytes, bytes | None] = {}
    for change in live.commit():
        key, value = changelog.encode(change)
        log[key] = value
    restored = Harness()
    restored.restore(log)
    restored.advance(BASE + T + G, payments_at_end=True, orders_at_end=True)
    assert [r.traces for r in restored.take().recoveries] == [(TP,)]


def test_a_late_order_and_a_mismatch_reference_both_inputs_the_deciding_one_first() -> None:
    h = Harness()
    h.pay(BASE, oid="late", trace=TP)
    h.advance(BASE + T + G, payments_at_end=True, orders_at_end=True)
    h.order(BASE + T + G + 1, oid="late", trace=TO)
    assert [x.traces for x in h.take().late] == [(TO, TP)]
    h.order(BASE, oid="m", trace=TO, amount=Decimal("1.00"))
    h.pay(BASE, oid="m", trace=TP, amount=Decimal("2.00"))
    assert [(a.kind, a.traces) for a in h.take().anomalies] == [("amount_mismatch", (TP, TO))]


def test_entries_without_a_trace_and_with_one_round_trip_through_the_changelog() -> None:
    h = Harness()
    h.pay(BASE, oid="p1", trace=TP)
    h.pay(BASE, oid="p2")
    h.order(BASE - T - 1, oid="o1", trace=TO)
    h.order(BASE - T - 1, oid="o2")
    restored = PartitionJoin(JoinParams(T, G, H))
    for change in h.commit():
        restored.restore(changelog.decode(*changelog.encode(change)))
    assert {k: compact.trace_of(e) for k, e in restored.pending.items()} == {"p1": TP, "p2": None}
    assert {k: e.trace for k, e in restored.orders.items()} == {"o1": TO, "o2": None}


def test_pending_payments_go_to_the_changelog_as_they_are_kept_and_older_records_still_read() -> None:
    """Format 3: a pending payment's changelog value is its compact entry, restored as it is
    (nothing parsed); formats 1 (no fields) and 2 (fields) decode by parsing the payment."""
    import struct

    h = Harness()
    p = h.pay(BASE, oid="a", amount=Decimal("12.30"), trace=TP)
    h.order(BASE - T - 1, oid="o", amount=Decimal("7"))
    changes = {c.key: c for c in h.commit()}
    key, value = changelog.encode(changes["a"])
    assert value is h.join.pending["a"] and compact.flags_of(value) & compact.PERSISTED
    assert changelog.decode(key, value).value == value
    decoded = changelog.decode(*changelog.encode(changes["o"])).value
    assert decoded.cmp == changes["o"].value.cmp and decoded.raw == changes["o"].value.raw
    older = struct.pack(">qB", BASE, 0) + p.encode()  # format 1: before fields (and traces)
    fields = b"".join(bytes((len(f),)) + f
                      for f in (p.payment_id.encode(), p.user_id.encode(), b"12.30", p.currency.encode()))
    format2 = struct.pack(">qB", BASE, 1 | 4 | 8) + bytes((len(TP),)) + TP + fields + p.encode()  # late, trace, fields
    for old, late, trace in ((older, False, None), (format2, True, TP)):
        entry = changelog.decode(b"p:a", old).value
        assert compact.t_of(entry) == BASE and compact.trace_of(entry) == trace
        assert compact.flags_of(entry) == compact.COMPACT | compact.PERSISTED | late | (compact.TRACE if trace else 0)
        assert compact.payment(compact.part_of(entry), "a") == p
    assert compact.part_of(changelog.decode(b"p:a", older).value) == compact.part_of(value)


def test_payments_packed_at_a_commit_are_the_same_payments_after_a_match_a_recovery_and_a_restore() -> None:
    """A payment pending across a commit is packed (compact.py); the matched pair and the
    recovered payment it becomes keep the packed form, in memory and in the changelog.
    What the join says of them later (a recovery, a second payment's anomaly) carries the
    payment as it was read, before and after a restore."""
    h = Harness()
    paid = {oid: h.pay(BASE, oid=oid, trace=TP, amount=Decimal("12.30"), metadata={"round": 7, "x": -0.0})
            for oid in ("m", "r", "w")}
    log = {}

    def commit() -> None:
        for change in h.commit():
            key, value = changelog.encode(change)
            log[key] = value

    commit()
    assert all(type(e) is bytes for e in h.join.pending.values()), "packed at the commit"
    h.order(BASE + 10, oid="m", amount=Decimal("12.3"))  # matched: 12.3 is 12.30
    h.pay(BASE + T + G, oid="z")
    h.order(BASE + T + G, oid="z")
    h.order(BASE + T + G, oid="y")
    h.advance()
    out = h.take()
    assert out.matched == 2 and not out.anomalies
    assert [(r.payment, r.traces) for r in out.recoveries] == [(paid["r"], (TP,)), (paid["w"], (TP,))]
    commit()
    restored = Harness()
    restored.restore({k: v for k, v in log.items() if v is not None}, BASE)
    for again in (h, restored):
        for oid in ("m", "r"):
            again.pay(BASE + 20, oid=oid)  # the same payment_id: a duplicate, dropped
            second = again.pay(BASE + 20, oid=oid, pid=f"second-{oid}")
            flagged = again.take()
            assert flagged.duplicates == 1
            [flag] = flagged.anomalies
            assert flag.kind == "duplicate_payment" and flag.payments == (paid[oid], second)
            _same(flag.payments[0], paid[oid])


def test_a_matched_pair_keeps_what_a_restored_one_keeps_whichever_came_first() -> None:
    """Matched pairs stay for the window (to spot duplicates): they keep the first payment
    and the times, not the order's record, fields or trace, as a restored pair (a bundle)."""
    h = Harness()
    h.pay(BASE, oid="p", trace=TP)
    h.order(BASE + 1, oid="p", trace=TO, user_id="someone-else")
    h.order(BASE, oid="o", trace=TO)
    h.pay(BASE + 1, oid="o", trace=TP, currency="USD")
    out = h.take()
    assert out.matched == 2 and sorted(a.kind for a in out.anomalies) == ["currency_mismatch", "user_mismatch"]
    for oid in ("p", "o"):
        e = h.join.orders[oid]
        assert (e.raw, e.cmp, e.trace, e.paid_id) == (b"", None, None, f"pay-{oid}")


def test_the_oldest_pending_payment_is_found_past_buckets_of_matched_ones_which_go() -> None:
    """The gauge is read after every commit: buckets whose payments all matched since are
    dropped on the way (looked at once), and a later timeout is still found and fired."""
    h = Harness()
    for i in range(200):
        h.pay(BASE + i * 10, oid=f"m{i}")
        h.order(BASE + i * 10 + 1, oid=f"m{i}")
    h.pay(BASE + 5_000, oid="waits")
    assert h.join.oldest_pending_time() == BASE + 5_000
    assert h.join.deadlines.buckets() == 1 and len(h.join.deadlines) == 1, "the matched ones' buckets went"
    h.pay(BASE + 3_000, oid="older")  # an earlier bucket again
    assert h.join.oldest_pending_time() == BASE + 3_000
    h.order(BASE + 5_000 + T + G, oid="other")
    h.order(BASE + 5_000 + T + G, oid="another")
    h.advance()
    assert sorted(r.payment.order_id for r in h.take().recoveries) == ["older", "waits"]
