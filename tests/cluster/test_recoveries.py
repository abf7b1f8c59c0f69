"""The checker's reading of the contract (tests/cluster/recoveries.py, deliveries.py): a
recovery of a payment whose order was produced is late by disorder, late in flight, or
false, at each millisecond edge. Pure: no cluster needed (these run with the unit tests)."""

from __future__ import annotations

import time

import pytest

from tests.cluster.deliveries import Deliveries, Segment, place, seed_of
from tests.cluster.recoveries import (
    IN_FLIGHT_EPSILON_MS,
    NOTHING,
    UNSEEN,
    Kind,
    Landed,
    classify,
    judge,
    progress_before,
)

GRACE = 1_000
DEADLINE = 1_800_000_005_000
DUE = DEADLINE + GRACE  # the progress a recovery needs


# ------------------------------------------------------------------ progress


def test_the_first_record_of_a_partition_confirms_nothing() -> None:
    assert progress_before([DUE + 60_000], [1]) == {1: NOTHING}
    assert progress_before([], [0]) == {0: NOTHING}


def test_progress_is_the_largest_time_two_consecutive_records_both_reach() -> None:
    log = [100, 300, 250, 50, 400]
    assert progress_before(log, range(6)) == {0: NOTHING, 1: NOTHING, 2: 100, 3: 250, 4: 250, 5: 250}


def test_one_record_from_a_fast_clock_moves_nothing() -> None:
    assert progress_before([100, 9_999_999, 110], [3]) == {3: 110}


def test_only_records_strictly_before_the_order_count() -> None:
    log = [100, 200, 300]  # the order at offset 2, stamped 300
    assert progress_before(log, [2]) == {2: 100}


def test_invalid_records_move_nothing_and_the_valid_ones_around_them_pair() -> None:
    assert progress_before([100, None, 200], [3]) == {3: 100}
    assert progress_before([100, None, 9_999_999, None, 120], [5]) == {5: 120}
    assert progress_before([None, None, 500], [3]) == {3: NOTHING}


def test_a_record_the_checker_does_not_see_breaks_the_chain_so_progress_is_never_overstated() -> None:
    """Had the unseen record been stamped 5, the contract's progress would be 100 or 5,
    never 200: the pairs across it are not counted."""
    assert progress_before([200, UNSEEN, 200], [3]) == {3: NOTHING}
    assert progress_before([200, 210, UNSEEN, 300, 310], [5]) == {5: 300}


def test_offsets_past_the_end_see_the_whole_partition() -> None:
    assert progress_before([100, 200], [10, 1]) == {1: NOTHING, 10: 100}


# ------------------------------------------------------------------ one recovery


def _order(progress: int, acked: int, *, offset: int = 7) -> Landed:
    return Landed("o1-1", DEADLINE, 2, offset, DEADLINE - 3_000, acked, progress)


def test_an_order_behind_records_confirming_deadline_plus_grace_is_late_by_disorder() -> None:
    kind, why = judge("p1-1", _order(DUE + 4_000, DEADLINE - 2_000), DUE + 5_000, GRACE)
    assert kind == Kind.LATE_BY_DISORDER, why


def test_progress_exactly_at_deadline_plus_grace_is_enough_and_one_millisecond_short_is_not() -> None:
    long_acked = DEADLINE - 2_000  # so that "in flight" cannot excuse it
    assert judge("p1-1", _order(DUE, long_acked), DUE + 10, GRACE)[0] == Kind.LATE_BY_DISORDER
    assert judge("p1-1", _order(DUE - 1, long_acked), DUE + 10, GRACE)[0] == Kind.FALSE


def test_an_order_acknowledged_after_the_recovery_was_decided_was_in_flight() -> None:
    kind, why = judge("p1-1", _order(NOTHING, DUE + 8_000), DUE + 2_000, GRACE)
    assert kind == Kind.LATE_IN_FLIGHT, why


def test_in_flight_allows_the_epsilon_after_the_acknowledgement_and_not_one_millisecond_more() -> None:
    acked = DUE + 3_000
    assert judge("p1-1", _order(DUE - 500, acked), acked + IN_FLIGHT_EPSILON_MS - 1, GRACE)[0] == Kind.LATE_IN_FLIGHT
    assert judge("p1-1", _order(DUE - 500, acked), acked + IN_FLIGHT_EPSILON_MS, GRACE)[0] == Kind.FALSE


def test_an_order_in_the_log_well_before_the_recovery_with_progress_short_is_a_false_recovery() -> None:
    """A worker merely behind: the order was acknowledged 3 s before the deadline, the
    records before it confirm 1.5 s short of deadline + GRACE, recovered 10 s after."""
    kind, why = judge("p1-1", _order(DUE - 1_500, DEADLINE - 3_000, offset=41), DUE + 10_000, GRACE)
    assert kind == Kind.FALSE
    for evidence in ("p1-1", f"deadline {DEADLINE}", f"recovered_at {DUE + 10_000}", "partition 2", "offset 41",
                     f"stamped {DEADLINE - 3_000}", f"P {DUE - 1_500}", f"acked {DEADLINE - 3_000}",
                     "acknowledged 14000 ms before the recovery", "1500 ms short of deadline + GRACE"):
        assert evidence in why, (evidence, why)
    _, why = judge("p1-1", _order(NOTHING, DEADLINE), DUE + 10, GRACE)
    assert why.endswith("the records before it confirm nothing")


def test_no_recovery_before_the_wall_clock_passes_deadline_plus_grace_whatever_the_records() -> None:
    kind, why = judge("p1-1", _order(DUE + 9_000, DUE + 9_000), DUE - 1, GRACE)
    assert kind == Kind.FALSE and "before the wall clock" in why
    assert judge("p1-1", _order(DUE + 9_000, DUE + 9_000), DUE, GRACE)[0] == Kind.LATE_BY_DISORDER


def test_a_payment_the_plan_neither_recovers_nor_gave_an_order_is_false() -> None:
    assert judge("p1-1b", None, DUE + 10, GRACE)[0] == Kind.FALSE


# ------------------------------------------------------------------ a group's payments


def test_a_groups_payments_are_counted_by_kind_and_the_allowed_ones_become_due() -> None:
    planned = {"p1-1": "o1-1", "p1-2": "o1-2", "p1-3": "o1-3"}  # o1-3 stamped past its deadline
    recovered_at = {"p1-1": DUE + 5, "p1-3": DUE + 9, "p1-4": DUE + 5_000, "p1-5": DUE + 2_000,
                    "p1-6": DUE + 9_000, "p1-7b": DUE + 9}
    orders: dict[str, Landed | None] = {
        "p1-4": Landed("o1-4", DEADLINE, 0, 10, DEADLINE - 1, DEADLINE, DUE + 100),  # behind later records
        "p1-5": Landed("o1-5", DEADLINE, 1, 11, DEADLINE - 1, DUE + 2_500, DUE - 900),  # appended after
        "p1-6": Landed("o1-6", DEADLINE, 1, 12, DEADLINE - 1, DEADLINE - 900, DUE - 900),  # there all along
        "p1-7b": None,
    }
    c = classify(planned, {"o1-3"}, 10, recovered_at, orders, GRACE)
    assert c.counts == {"matched": 7, "recovered_missing": 1, "recovered_late": 1, "late_by_disorder": 1,
                        "late_in_flight": 1, "false": 2}
    assert c.also_recovered == {"p1-4": "o1-4", "p1-5": "o1-5"}
    assert sorted(c.false) == ["p1-6", "p1-7b"]
    assert "partition 1 offset 12" in c.false["p1-6"]


# ------------------------------------------------------------------ delivery reports


def _now() -> int:
    """(Acknowledgements are timed by the wall clock: the plans start now.)"""
    return int(time.time()) * 1000


class _Msg:
    def __init__(self, topic: str, key: bytes, partition: int, offset: int, ts: int) -> None:
        self._t, self._k, self._p, self._o, self._ts = topic, key, partition, offset, ts

    def topic(self) -> str:
        return self._t

    def key(self) -> bytes:
        return self._k

    def partition(self) -> int:
        return self._p

    def offset(self) -> int:
        return self._o

    def timestamp(self) -> tuple[int, int]:
        return 1, self._ts


def test_two_producers_on_one_partition_place_an_order_behind_the_later_records_of_the_other() -> None:
    """Segment 10's batch (orders 0-1) held up by a fault lands behind segment 12's orders
    stamped later; segment 10's payment 1 (deadline 5 s after t0 + 10) was recovered."""
    t0 = _now()
    first, second = Deliveries("orders", 3, t0), Deliveries("orders", 3, t0)
    second(None, _Msg("orders", b"o12-0", 0, 0, t0 + 7_000))  # type: ignore[arg-type]
    second(None, _Msg("orders", b"o12-1", 0, 1, t0 + 7_100))  # type: ignore[arg-type]
    first(None, _Msg("orders", b"o10-0", 0, 2, t0))  # type: ignore[arg-type]
    first(None, _Msg("orders", b"o10-1", 0, 3, t0 + 10))  # type: ignore[arg-type]
    first(None, _Msg("payments", b"o10-2", 0, 0, t0 + 20))  # type: ignore[arg-type]  (not an order: ignored)
    segments = [Segment(10, t0, 10.0, first), Segment(12, t0 + 6_000, 100.0, second)]
    placed = place(segments, ["p10-1", "p10-2", "p99-1", "x"], timeout_ms=5_000)
    assert placed.orders["p10-1"] == Landed("o10-1", t0 + 10 + 5_000, 0, 3, t0 + 10, placed.orders["p10-1"].acked_ms,
                                            t0 + 7_000)  # type: ignore[union-attr]
    assert placed.orders["p10-2"] is None and placed.orders["p99-1"] is None and placed.orders["x"] is None
    assert placed.unseen == 0
    kind, why = judge("p10-1", placed.orders["p10-1"], t0 + 7_050, 1_000)
    assert kind == Kind.LATE_BY_DISORDER, why


def test_records_no_report_accounts_for_are_counted_and_break_the_chain() -> None:
    t0 = _now()
    d = Deliveries("orders", 4, t0)
    for i, offset in enumerate([0, 2, 3]):  # offset 1: a record of nobody's plan
        d(None, _Msg("orders", f"o5-{i}".encode(), 1, offset, t0 + 9_000 + i))  # type: ignore[arg-type]
    placed = place([Segment(5, t0, 1.0, d)], ["p5-2"], timeout_ms=5_000)
    assert placed.unseen == 1
    assert placed.orders["p5-2"].progress_before_ms == NOTHING  # type: ignore[union-attr]


def test_a_report_the_arrays_cannot_hold_is_counted_not_raised() -> None:
    """(An exception in a delivery report would end the traffic's producer.)"""
    d = Deliveries("orders", 2, base_ms=0)
    d(None, _Msg("orders", b"o5-0", 0, 0, 2**40))  # type: ignore[arg-type]  (2**40 ms after the base)
    d(None, _Msg("orders", b"o5-9", 0, 1, 5))  # type: ignore[arg-type]  (not of this plan)
    d(None, _Msg("orders", b"o5-x", 0, 2, 5))  # type: ignore[arg-type]
    assert d.failed == 3 and d.landed(0) is None


@pytest.mark.parametrize(("pid", "seed"), [("p136966-1023", 136966), ("p1-2b", None), ("o1-2", None)])
def test_a_payment_id_names_its_plan(pid: str, seed: int | None) -> None:
    assert seed_of(pid) == seed
