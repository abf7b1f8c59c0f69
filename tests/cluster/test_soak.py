"""The soak's schedule and its memory verdict (tests/cluster/schedule.py, memory.py): pure,
run with the unit tests. The soak itself runs on the cluster (`make soak`)."""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

import pytest

from tests.cluster.cluster import ROOT, STACK
from tests.cluster.memory import Sample, Sampler, calm, gauges, judge, table
from tests.cluster.schedule import FAULTS, UNAIMED, Member, eligible, plan
from tests.cluster.soak import METRICS_PORTS, PORTS, PortBlock, main, members

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


@pytest.mark.parametrize("seed", [1, 5, 977])
def test_every_fault_comes_before_any_repeats_the_postgresql_failover_among_them(seed: int) -> None:
    slots = plan(seed, 30 * 60, CAST)
    assert sorted(s.fault for s in slots[:len(FAULTS)]) == sorted(FAULTS)
    assert sorted(s.fault for s in slots[len(FAULTS):2 * len(FAULTS)]) == sorted(FAULTS)
    assert [s.fault for s in slots].count("pg_failover") in (2, 3)  # (each undone before the next: pg-failback)
    without = tuple(f for f in FAULTS if f != "pg_failover")  # (--no-pg-failover)
    assert "pg_failover" not in {s.fault for s in plan(seed, 30 * 60, CAST, faults=without)}


def test_the_soak_refuses_faults_it_does_not_know_before_touching_the_stack(capsys) -> None:
    before = dict(os.environ)
    assert main(["--faults", "pg_failover,no_such_fault"]) == 2
    assert "no_such_fault" in capsys.readouterr().err
    assert main(["--faults", "pg_failover", "--no-pg-failover"]) == 2
    assert dict(os.environ) == before, "the soak's ports are set only for a run"


@pytest.mark.parametrize("seed", range(20))
def test_the_resident_worker_never_leaves_and_no_fault_restarts_it(seed: int) -> None:
    resident = [m.name for m in CAST if m.resident]
    assert resident == ["exactly_once/w1"]
    slots = plan(seed, 30 * 60, CAST)
    assert {s.member for s in slots} <= {m.name for m in CAST} - set(resident)
    assert not [s for s in slots if s.fault == "group_coordinator_kill" and s.target in resident]
    assert not any(m.resident for m in members(1, 1, 2)), "a group of one worker keeps its members' changes"


def test_without_a_resident_the_same_schedules_take_exactly_once_w1_away() -> None:
    """(What the test above guards against: the seeds it uses would take it away.)"""
    cast = [Member(m.name, m.join, m.eos, m.proxy_set) for m in CAST]
    away = [seed for seed in range(20) if any(s.member == "exactly_once/w1" or (
        s.fault == "group_coordinator_kill" and s.target == "exactly_once/w1") for s in plan(seed, 30 * 60, cast))]
    assert len(away) > 10


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
    """One sample at each given minute's end (minute 0: at the traffic's start)."""
    return [Sample(max(0.0, 60.0 * m - 1), name, pid, mb, partitions, state) for m, mb in rss.items()]


FAULTS_RUN = [(0.0, "leader_kill"), (120.0, "slow_broker")]


def test_memory_standing_between_calm_points_is_steady_and_rising_grows() -> None:
    steady = _samples("exactly_once/w1", 11, {0: 60, 1: 90, 2: 140, 3: 120, 4: 180, 5: 124})
    rising = _samples("at_least_once/w1", 12, {0: 60, 1: 90, 2: 110, 3: 120, 4: 130, 5: 160})
    judged, not_judged = judge(steady + rising, [60, 180, 300], 70, FAULTS_RUN)
    by = {j.name: j for j in judged}
    assert not_judged == []
    assert (by["exactly_once/w1"].points, by["exactly_once/w1"].grows) == ([180, 300], False)
    assert by["exactly_once/w1"].peak_mb == 180
    assert by["at_least_once/w1"].grows and by["at_least_once/w1"].rise_mb == 40
    assert "GROWS" in by["at_least_once/w1"].line()


W1 = "exactly_once/w1"
CALM = [180.0, 300.0, 420.0]  # (after FAULTS_RUN's slow broker at 02:00: the baseline is the first)


def test_a_spike_at_the_last_calm_point_that_falls_back_is_steady() -> None:
    """Soak 528620's exactly_once/w1: 192 MB at its first judged calm point, 376 MB at its
    last (after a slow broker), 217 MB a minute later. 217 alone is still over the limit
    (192 + 19): the floor's stretch starts at the calm point before the last."""
    spike = _samples(W1, 11, {0: 60, 1: 90, 2: 150, 3: 192, 4: 200, 5: 195, 6: 250, 7: 376, 8: 217})
    [j], _ = judge(spike, CALM, 70, FAULTS_RUN)
    assert (j.rise_mb, j.grows) == (3, False)
    assert (j.first.rss_mb, j.last.rss_mb, j.floor.rss_mb, j.floor.t, j.stretch) == (192, 376, 195, 299, (300, 479))
    assert j.line() == ("exactly_once/w1 (pid 11): 192 MB at 03:00, floor 195 MB at 04:59 (the lowest from 05:00 to "
                        "07:59; +3 MB, limit 19), state 1,000 -> 1,000 entries; last calm reading 376 MB at 07:00 "
                        "(calm points 03:00, 05:00, 07:00), peak 376 MB: steady")
    two = _samples(W1, 12, {0: 60, 1: 90, 2: 150, 3: 192, 5: 376, 6: 200})  # (read at two calm points only)
    [j], _ = judge(two, CALM[:2], 70, FAULTS_RUN)
    assert (j.grows, j.rise_mb, j.stretch) == (False, 8, (300, 359))


@pytest.mark.parametrize("rss", [
    {3: 192, 4: 202, 5: 212, 6: 222, 7: 232, 8: 242},  # (rising: the floor is where the stretch starts)
    {3: 192, 4: 205, 5: 216, 6: 212, 7: 235, 8: 245},  # (a dip, to 212: still over 192 + 19)
    {3: 192, 4: 205, 5: 215, 6: 225, 7: 400, 8: 240},  # (a spike at the last calm point)
], ids=["rising", "a dip not below the limit", "a spike at the end"])
def test_a_steady_leak_raises_the_floor_and_grows(rss: dict[int, float]) -> None:
    leak = _samples(W1, 11, {0: 60, 1: 90, 2: 150} | rss)
    [j], _ = judge(leak, CALM, 70, FAULTS_RUN)
    assert j.grows and "GROWS" in j.line()
    assert j.rise_mb == min(rss[m] for m in rss if m >= 5) - 192  # (the floor: from 04:59 on)
    [j], _ = judge(leak, CALM[:2], 70, FAULTS_RUN)  # (two calm readings: the stretch from the last)
    assert j.grows and j.rise_mb == min(rss[m] for m in rss if m >= 5) - 192


def test_a_floor_within_the_limit_or_with_more_partitions_is_steady() -> None:
    """The floor decides, whatever the last calm reading: 208 is within 192 + 19; and more
    partitions held at the floor than at the baseline justify more memory."""
    dip = _samples(W1, 11, {0: 60, 1: 90, 2: 150, 3: 192, 4: 205, 5: 215, 6: 208, 7: 235, 8: 245})
    more = (_samples("exactly_once/w2", 12, {0: 60, 1: 90, 2: 150, 3: 192}, partitions=2)
            + _samples("exactly_once/w2", 12, {5: 230, 7: 250}))
    judged, _ = judge(dip + more, CALM, 70, FAULTS_RUN)
    assert [(j.pid, j.grows) for j in judged] == [(11, False), (12, False)]
    assert [j.floor.rss_mb for j in judged] == [208, 230]
    assert "holds more partitions" in judged[1].line()


def test_the_baseline_comes_after_one_fault_of_each_kind() -> None:
    """A burst's high-water mark, reached in the first slow-broker fault, is the baseline."""
    after_first_faults = _samples("exactly_once/w1", 11, {0: 60, 1: 90, 3: 120, 5: 175, 7: 178, 9: 180})
    faults = [(60.0, "leader_kill"), (240.0, "slow_broker"), (420.0, "slow_broker")]
    judged, _ = judge(after_first_faults, [59.5, 179.5, 299.5, 419.5, 540.0], 70, faults)
    assert [(j.points, j.first.rss_mb, j.grows) for j in judged] == [([299.5, 419.5, 540.0], 175, False)]
    judged, not_judged = judge(after_first_faults, [59.5, 179.5, 299.5], 70, [*faults, (500.0, "cut_off")])
    assert judged == [] and "0 calm reading(s) from 08:20 on" in not_judged[0]  # (a cut_off at 08:20 came last)


def test_more_partitions_justify_more_memory_and_a_short_life_is_not_judged() -> None:
    more = _samples("exactly_once/w2", 21, {0: 60, 3: 100}, partitions=2) + _samples("exactly_once/w2", 21, {5: 160})
    young = _samples("writer1", 31, {4: 60, 5: 200})
    judged, not_judged = judge(more + young, [180, 240, 300], 70, FAULTS_RUN[:1])
    assert [(j.name, j.grows) for j in judged] == [("exactly_once/w2", False)]
    assert "holds more partitions" in judged[0].line()
    assert not_judged == ["writer1 (pid 31, 60 -> 200 MB, peak 200): not judged, no leader_kill since it started"]


def test_a_restarted_process_is_judged_on_its_own_and_marked_in_the_table() -> None:
    samples = _samples("writer1", 1, {1: 50, 2: 52, 3: 51}) + _samples("writer1", 2, {5: 300, 6: 301})
    judged, not_judged = judge(samples, [60, 120, 180, 300, 360], 30, [])
    assert [(j.pid, j.grows) for j in judged] == [(1, False)]
    assert not_judged == [("writer1 (pid 2, 300 -> 301 MB, peak 301): not judged, 1 calm reading(s) from 05:24 on, "
                           "2 needed")]
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
        "slipguard_join_buffered_orders NaN",
    ])
    assert gauges(text) == (4, 500)
    assert gauges("") == (None, None)


def test_the_sampler_keeps_each_sample_on_disk_as_it_goes(tmp_path: Path) -> None:
    path = tmp_path / "memory.jsonl"
    sampler = Sampler(lambda: {"me": (os.getpid(), None)}, time.monotonic(), every=0.05, path=path)
    time.sleep(0.3)
    sampler.stop()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) >= 2 and lines[0]["name"] == "me" and lines[0]["rss_mb"] > 1
    assert len(lines) == len(sampler.samples)


# ------------------------------------------------------------------ the soak's ports

EPHEMERAL_FROM = 32768  # Linux's default net.ipv4.ip_local_port_range: 32768-60999


def _stack_defaults() -> dict[str, int]:
    """SLIPGUARD_*_PORT -> its default in stack.sh (NAME=${SLIPGUARD_X:-N})."""
    text = STACK.read_text()
    assert 'CLUSTER_NODES="1 2 3"' in text and 'CLUSTER_SETS="1 2"' in text, "the layout cluster_ports() assumes"
    found = {m[1]: int(m[2]) for m in re.finditer(r"\$\{(SLIPGUARD_\w+PORT):-(\d+)\}", text)}
    return found | {"SLIPGUARD_PG_STANDBY_PORT": found["SLIPGUARD_PG_PORT"] + 1}  # (its default: the primary's + 1)


def _bound(env: dict[str, int]) -> set[int]:
    """Every port a stack on `env` binds: stack.sh's cluster_ports() and PostgreSQL's."""
    out = {env["SLIPGUARD_TOXIPROXY_PORT"], env["SLIPGUARD_PG_PORT"],
           env.get("SLIPGUARD_PG_STANDBY_PORT", env["SLIPGUARD_PG_PORT"] + 1)}
    for i in range(3):
        out |= {env["SLIPGUARD_CLUSTER_INTERNAL_PORT"] + i, env["SLIPGUARD_CLUSTER_CONTROLLER_PORT"] + i,
                env["SLIPGUARD_CLUSTER_PORT"] + i}
        out |= {env["SLIPGUARD_CLUSTER_SET_PORT"] + 10 * (k - 1) + i for k in (1, 2)}
        out |= {env["SLIPGUARD_CLUSTER_LISTENER_PORT"] + 10 * k + i for k in (0, 1, 2)}
    return out


def test_the_soaks_ports_are_below_the_ephemeral_range_and_clear_of_the_stacks_defaults() -> None:
    defaults = _stack_defaults()
    taken = _bound(defaults) | {defaults["SLIPGUARD_KAFKA_PORT"], defaults["SLIPGUARD_KAFKA_CONTROLLER_PORT"],
                                defaults["SLIPGUARD_KAFKA_SECURE_PORT"]}
    ours = _bound(PORTS) | set(METRICS_PORTS)
    assert len(_bound(PORTS)) == 2 + 1 + 3 * (3 + 2 + 3), "no two of the soak's ports are one"
    assert max(ours) < EPHEMERAL_FROM
    assert not ours & taken, sorted(ours & taken)
    assert not set(METRICS_PORTS) & _bound(PORTS)


def test_make_soak_starts_the_stack_on_the_soaks_ports() -> None:
    exported = dict(re.findall(r"^soak: export (SLIPGUARD_\w+) \?= (\d+)$", (ROOT / "Makefile").read_text(), re.M))
    assert {k: int(v) for k, v in exported.items()} == PORTS


def test_a_port_of_the_block_in_use_is_passed_over_and_the_block_is_taken_in_turn() -> None:
    with socket.socket() as busy, socket.socket() as probe:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
        probe.close()
        block = PortBlock([busy.getsockname()[1], free])
        assert [block(), block()] == [free, free]
        with pytest.raises(RuntimeError, match="no free port"):
            PortBlock([busy.getsockname()[1]])()
