"""The soak's schedule and its memory verdict (tests/cluster/schedule.py, memory.py): pure,
run with the unit tests. The soak itself runs on the cluster (`make soak`)."""

from __future__ import annotations

import pytest

from tests.cluster.memory import Sample, calm, gauges, judge, table
from tests.cluster.schedule import FAULTS, UNAIMED, Member, eligible, plan
from tests.cluster.soak import members

CAST = members(2, 1, 2)


@pytest.mark.parametrize("seed", [1, 2, 3, 42, 977])
def test_each_slot_aims_its_fault_at_a_process_running_then_and_members_leave_and_come_back(seed: int) -> None:
    slots = plan(seed, 30 * 60, CAST)
    assert [s.at for s in slots] == [60 + 120 * k for k in range(15)]
    away = None
    for s in slots:
        running = [m for m in CAST if m.name != away]
        if s.fault in UNAIMED:
            assert s.target is None
        else:
            assert s.target in [m.name for m in eligible(s.fault, running)], (s, away)
        if away is None:
            assert s.change in ("stop", "kill")
            away = s.member
        else:
            assert (s.change, s.member) == ("start", away)
            away = None


def test_every_fault_comes_before_any_repeats_and_the_postgresql_failover_only_when_asked() -> None:
    kinds = [f for f in FAULTS if f != "pg_failover"]
    slots = plan(5, 30 * 60, CAST)
    assert sorted(s.fault for s in slots[:len(kinds)]) == sorted(kinds)
    assert "pg_failover" not in {s.fault for s in slots}
    assert "pg_failover" in {s.fault for s in plan(5, 30 * 60, CAST, faults=tuple(FAULTS))}


def test_the_schedule_is_the_seeds() -> None:
    assert plan(7, 600, CAST) == plan(7, 600, CAST)
    assert any(plan(7, 1800, CAST) != plan(s, 1800, CAST) for s in (8, 9))


def test_a_cut_off_is_aimed_only_at_a_worker_with_a_proxy_set_of_its_own() -> None:
    running = [m for m in CAST if m.name != "exactly_once/w1"]
    assert [m.name for m in eligible("cut_off", running)] == ["at_least_once/w1"]
    assert [m.name for m in eligible("txn_coordinator_kill", running)] == ["exactly_once/w2"]
    with pytest.raises(ValueError, match="no fault"):
        plan(1, 600, [Member("writer1", join=False)], faults=("cut_off",))


def test_a_point_is_calm_when_nothing_happened_in_the_half_minute_before_it() -> None:
    busy = [(60.0, 100.0), (105.0, 125.0), (180.0, 230.0)]
    assert calm([59.5, 150.0, 179.5, 200.0, 300.0], busy) == [59.5, 179.5, 300.0]
    assert calm([154.0, 156.0], busy) == [156.0]  # (the change settled at 125)


def _samples(name: str, pid: int, rss: dict[int, float], partitions: int = 4, state: int = 1000) -> list[Sample]:
    """One sample at each given minute's end."""
    return [Sample(60.0 * m - 1, name, pid, mb, partitions, state) for m, mb in rss.items()]


def test_memory_standing_between_calm_points_is_steady_and_rising_grows() -> None:
    steady = _samples("exactly_once/w1", 11, {1: 90, 2: 140, 3: 120, 4: 180, 5: 124})
    rising = _samples("at_least_once/w1", 12, {1: 90, 2: 110, 3: 120, 4: 130, 5: 160})
    judged = {j.name: j for j in judge(steady + rising, points=[60, 180, 300], warm_up=70)}
    assert (judged["exactly_once/w1"].points, judged["exactly_once/w1"].grows) == ([180, 300], False)
    assert judged["at_least_once/w1"].grows and judged["at_least_once/w1"].rise_mb == 40
    assert "GROWS" in judged["at_least_once/w1"].line()


def test_more_partitions_justify_more_memory_and_a_short_life_is_not_judged() -> None:
    more = _samples("exactly_once/w2", 21, {1: 90, 3: 100}, partitions=2) + _samples("exactly_once/w2", 21, {5: 160})
    young = _samples("writer1", 31, {4: 60, 5: 200})
    judged = judge(more + young, points=[180, 240, 300], warm_up=70)
    assert [(j.name, j.grows) for j in judged] == [("exactly_once/w2", False)]
    assert "holds more partitions" in judged[0].line()


def test_a_restarted_process_is_judged_on_its_own_and_marked_in_the_table() -> None:
    samples = _samples("writer1", 1, {1: 50, 2: 52, 3: 51}) + _samples("writer1", 2, {5: 300, 6: 301})
    assert [(j.pid, j.grows) for j in judge(samples, points=[60, 120, 180, 300, 360], warm_up=30)] == [(1, False)]
    rows = table(samples, 6, {4: "M"}, lambda s: f"{s.rss_mb:.0f}")
    assert rows[1].split() == ["q", "q", "q", "M", "q", "q"]
    assert rows[2].split() == ["writer1", "50", "52", "51", "-", "300*", "301"]


def test_gauges_read_partitions_and_state_from_a_workers_metrics() -> None:
    text = "\n".join([
        "# HELP slipguard_join_pending_payments Payments waiting for their order",
        "slipguard_join_pending_payments 120.0",
        "slipguard_join_buffered_orders 300.0",
        "slipguard_join_recovered_remembered 80.0",
        'slipguard_assigned_partitions{group="g",topic="p"} 2.0',
        'slipguard_assigned_partitions{group="g",topic="o"} 2.0',
        "slipguard_join_pending_payments_created 1.7e9",
    ])
    assert gauges(text) == (4, 500)
    assert gauges("") == (None, None)
