"""Many join workers in one group: default settings coexist, a duplicate instance id is named."""

from __future__ import annotations

import re
import signal
import time

import pytest

from streams.join.native import NATIVE
from tests.integration.test_join import _LiveTraffic, _owned, _settings, _wait_for
from tests.integration.workers import (
    assert_recovered_once,
    group_timeouts,
    release,
    start,
    stop,
    wait_for_progress,
    wait_until_done,
)


def native_built() -> bool:
    return NATIVE is not None


# The last release before changelog format 4 (settled pairs' bundles): it reads formats 2
# and 3 only. (c5563cba8cefdfa301a4a5d63de53c1b21038e20, the last before format 3, was
# rolled to format 3 here until format 4 came.)
BEFORE_FORMAT_4 = "832d1be2ac353f829862b5dbf58bbe385d762cc8"


def test_three_workers_on_twelve_partitions_scale_out_and_recover_every_payment_once(base_settings, tmp_path) -> None:
    """Scale-out as users run it: three workers with default settings (no
    SLIPGUARD_INSTANCE_ID, so each process gets its own transactional.id and none fences
    another) share 12 partitions; under load one leaves and another joins, and every
    recovery appears once."""
    s = _settings(base_settings, commit_interval="200ms", partitions=12)
    logs = [tmp_path / f"w{i}.log" for i in range(4)]
    workers = [start(s, ["join"], logs[i], instance_id=None) for i in range(3)]
    try:
        _wait_for(lambda: all(_owned(p) is not None for p in logs[:3])
                  and sorted(q for p in logs[:3] for q in _owned(p)) == list(range(12)),
                  "three workers share the partitions", timeout=90)
        traffic = _LiveTraffic(s, 30_000, seed=41, seconds=10)
        wait_for_progress(s, traffic.total, 0.2)
        assert stop(workers[0]) == 0, logs[0].read_text()[-3000:]  # one leaves cleanly mid-stream
        workers.append(start(s, ["join"], logs[3], instance_id=None))  # another joins
        assert traffic.running(), "membership changed under live traffic"
        _wait_for(lambda: _owned(logs[3]), "the worker that joined got partitions", timeout=60)
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered)
        for w, log in zip(workers[1:], logs[1:], strict=True):
            assert w.poll() is None, log.read_text()[-3000:]
            assert "Traceback" not in log.read_text()
    finally:
        for w, log in zip(workers[1:], logs[1:], strict=False):  # fewer workers if it failed before one joined
            assert stop(w) == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_two_workers_given_the_same_instance_id_are_reported_in_one_line(base_settings, tmp_path,
                                                                         protocol: str) -> None:
    """classic: being fenced once proves nothing (the coordinator also fences a producer
    whose transaction outlived a broker outage); fenced three times in a minute, with an
    instance id configured, is another live worker with that id. KIP-848: the second is
    refused the id as a static member; a killed predecessor's session would have expired
    within the session timeout (10 s), so still refused after twice that, it stops."""
    s = _settings(base_settings, commit_interval="200ms", group_protocol=protocol)
    if protocol == "consumer":
        group_timeouts(s, session_ms=6_000, heartbeat_ms=1_000)  # the local floors: given up after 17 s
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = start(s, ["join"], a_log, instance_id="same")
    _wait_for(lambda: _owned(a_log) == [0, 1, 2, 3], "the first worker owns the partitions")
    b = start(s, ["join"], b_log, instance_id="same")
    try:
        # Steady traffic, so both keep committing: each commit of one fences the other,
        # until one of them sees it happen again and again and stops.
        traffic = _LiveTraffic(s, 40_000, seed=42, seconds=40)
        deadline = time.monotonic() + 90
        while a.poll() is None and b.poll() is None:
            assert time.monotonic() < deadline, "neither worker noticed the duplicate id"
            time.sleep(0.2)
        loser, log = (a, a_log) if a.poll() is not None else (b, b_log)
        text = log.read_text()
        assert loser.returncode == 1
        assert "runs with SLIPGUARD_INSTANCE_ID=same" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        survivor = b if loser is a else a
        time.sleep(3)
        assert survivor.poll() is None, "the other one goes on"
        traffic.stop()
    finally:
        for w in (a, b):
            if w.poll() is None:
                stop(w)


def test_a_classic_group_moves_to_kip_848_under_load_and_recovers_every_payment_once(base_settings,
                                                                                      tmp_path) -> None:
    """An upgrade from a release whose default was classic: two classic workers under
    load, a worker with the default protocol (KIP-848 here) joins, then the classic ones
    are replaced one by one (the broker converts the group online, KIP-848's migration).
    Pairs stay together (each worker checks co-partitioning on every assignment and would
    stop), transactions stay intact: every recovery once."""
    s = _settings(base_settings, commit_interval="200ms")
    logs = [tmp_path / f"w{i}.log" for i in range(4)]
    workers = [start(s, ["join"], logs[i], instance_id=None, group_protocol="classic") for i in range(2)]
    try:
        _wait_for(lambda: all(_owned(p) for p in logs[:2]), "both classic workers restored partitions", timeout=90)
        traffic = _LiveTraffic(s, 24_000, seed=43, seconds=12)
        wait_for_progress(s, traffic.total, 0.1)
        workers.append(start(s, ["join"], logs[2], instance_id=None, group_protocol=None))  # the new default
        _wait_for(lambda: _owned(logs[2]), "the KIP-848 worker got partitions", timeout=60)
        assert stop(workers[0]) == 0, logs[0].read_text()[-3000:]
        workers.append(start(s, ["join"], logs[3], instance_id=None, group_protocol=None))
        assert stop(workers[1]) == 0, logs[1].read_text()[-3000:]
        assert traffic.running(), "all of it under live traffic"
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered)
        assert sorted(_owned(logs[2]) + _owned(logs[3])) == [0, 1, 2, 3], "the new workers hold every partition"
        for w, log in zip(workers[2:], logs[2:], strict=True):
            text = log.read_text()
            assert w.poll() is None and "Traceback" not in text, text[-3000:]
            assert "group protocol consumer" in text, text[-3000:]
    finally:
        for w, log in zip(workers, logs, strict=False):  # fewer workers if it failed before the last started
            if w.poll() is None:
                assert stop(w) == 0, log.read_text()[-3000:]


def _holds(log) -> list[int]:
    return _owned(log) or []


def _revoked(log) -> list[int]:
    return [int(x) for found in re.findall(r"revoked partitions \[([\d, ]*)\]", log.read_text())
            for x in found.split(",") if x.strip()]


def test_kip_848_restart_with_the_same_instance_id_moves_no_other_members_partitions(base_settings,
                                                                                   tmp_path) -> None:
    """Static membership (KIP-848, SLIPGUARD_INSTANCE_ID): a worker stopped and started
    again takes its own partitions back with no rebalance of the others; one killed -9 and
    started at once is refused its id until the dead member's session expires, asks again
    by itself, then takes them back. The other worker's own partitions never move, and
    every recovery appears once."""
    s = _settings(base_settings, commit_interval="200ms", group_protocol="consumer")
    group_timeouts(s, session_ms=8_000, heartbeat_ms=1_000)
    logs = {name: tmp_path / f"{name}.log" for name in ("s0", "s1", "s1-again", "s1-third")}
    keeper = start(s, ["join"], logs["s0"], instance_id="s-0")
    mover = start(s, ["join"], logs["s1"], instance_id="s-1")
    try:
        _wait_for(lambda: _holds(logs["s0"]) and _holds(logs["s1"])
                  and _holds(logs["s0"]) + _holds(logs["s1"]) == [0, 1, 2, 3],
                  "both workers restored their partitions", timeout=90)
        own, theirs = _holds(logs["s0"]), _holds(logs["s1"])
        revoked_before = _revoked(logs["s0"])  # the second worker's arrival
        traffic = _LiveTraffic(s, 24_000, seed=44, seconds=24)
        wait_for_progress(s, traffic.total, 0.1)

        assert stop(mover) == 0, logs["s1"].read_text()[-3000:]  # a clean restart
        mover = start(s, ["join"], logs["s1-again"], instance_id="s-1")
        _wait_for(lambda: _holds(logs["s1-again"]) == theirs, "the restarted worker took its partitions back", 60)
        assert _revoked(logs["s0"]) == revoked_before, "a clean restart moved none of the other worker's partitions"

        mover.send_signal(signal.SIGKILL)  # a crash, and a restart at once
        mover.wait(10)
        mover = start(s, ["join"], logs["s1-third"], instance_id="s-1")
        _wait_for(lambda: _holds(logs["s1-third"]) == theirs, "the id was released and the partitions came back", 60)
        text = logs["s1-third"].read_text()
        assert "refuses SLIPGUARD_INSTANCE_ID=s-1" in text and "accepted after" in text, text[-3000:]
        assert not set(_revoked(logs["s0"])[len(revoked_before):]) & set(own), "the other's own partitions never moved"
        assert traffic.running(), "all of it under live traffic"

        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered)
        for w, name in ((keeper, "s0"), (mover, "s1-third")):
            assert w.poll() is None and "Traceback" not in logs[name].read_text(), logs[name].read_text()[-3000:]
    finally:
        for w, name in ((keeper, "s0"), (mover, "s1-third")):
            if w.poll() is None:
                assert stop(w) == 0, logs[name].read_text()[-3000:]


def _restored_pending(log) -> int:
    """Pending payments a worker restored, summed over its restore lines."""
    found = re.findall(r"restored partitions \[[\d, ]*\] in [\d.]+s: (\d+) pending", log.read_text())
    return sum(int(n) for n in found)


def test_a_rolling_upgrade_to_changelog_format_4_and_a_rollback_under_load_lose_and_double_nothing(base_settings,
                                                                                                 tmp_path) -> None:
    """Workers of the release before format 4 (run from this repository's history, on its
    Python core: the native module built here is this release's) and of this one in one
    group under live traffic, as docs/upgrades.md says: the new release first writes
    format 3, and an old worker restores what it wrote (a pod rolled back); then the old
    ones are replaced, and the last writes format 4 and restores what the others left.
    Pending state crosses releases and formats at every step; every recovery once."""
    old = release(BEFORE_FORMAT_4, tmp_path / "old")
    s = _settings(base_settings, commit_interval="200ms")
    logs = {name: tmp_path / f"{name}.log" for name in ("old1", "old2", "new1", "new2", "new3")}
    workers = {name: start(s, ["join"], logs[name], root=old, instance_id=None, core="python",
                     changelog_format=None)
               for name in ("old1", "old2")}

    def add(name: str, fmt: int) -> None:
        workers[name] = start(s, ["join"], logs[name], instance_id=None, changelog_format=fmt)
        _wait_for(lambda: _owned(logs[name]), f"{name} got partitions", timeout=60)

    def leave(name: str) -> None:
        assert stop(workers[name]) == 0, logs[name].read_text()[-3000:]

    try:
        _wait_for(lambda: all(_owned(logs[n]) for n in ("old1", "old2")), "the old workers hold partitions", timeout=90)
        traffic = _LiveTraffic(s, 36_000, seed=44, seconds=30)
        wait_for_progress(s, traffic.total, 0.1)
        add("new1", 3)  # the first roll: this release, writing format 3
        wait_for_progress(s, traffic.total, 0.25)
        before = _restored_pending(logs["old1"]) + _restored_pending(logs["old2"])
        leave("new1")  # rolled back: the old workers restore what it wrote
        _wait_for(lambda: sorted(_owned(logs["old1"]) + _owned(logs["old2"])) == [0, 1, 2, 3],
                  "the old workers took its partitions back", timeout=60)
        assert _restored_pending(logs["old1"]) + _restored_pending(logs["old2"]) > before, \
            "the old release restored pending payments the new one wrote"
        leave("old1")
        add("new2", 3)
        leave("old2")
        wait_for_progress(s, traffic.total, 0.6)
        add("new3", 4)  # the second roll: format 4, no old worker left
        leave("new2")
        assert traffic.running(), "all of it under live traffic"
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered)
        assert _owned(logs["new3"]) == [0, 1, 2, 3] and _restored_pending(logs["new3"]) > 0
        for name, log in logs.items():
            assert "Traceback" not in log.read_text(), f"{name}: {log.read_text()[-3000:]}"
    finally:
        for name, w in workers.items():
            if w.poll() is None:
                assert stop(w) == 0, logs[name].read_text()[-3000:]


@pytest.mark.skipif(not native_built(), reason="the native core is not built here (make venv builds it where cargo is)")
def test_native_and_python_workers_restore_each_others_changelog_in_a_rolling_upgrade_under_load(base_settings,
                                                                                                tmp_path) -> None:
    """The changelog format is shared by the two cores: Python workers, then native ones
    rolled in one by one under live traffic, then one rolled back to Python, then native
    again. Each restores pending state the other core wrote; every recovery once."""
    s = _settings(base_settings, commit_interval="200ms")
    names = ("py1", "py2", "rs1", "py3", "rs2", "rs3")
    logs = {name: tmp_path / f"{name}.log" for name in names}
    workers = {}

    def add(name: str) -> None:
        workers[name] = start(s, ["join"], logs[name], instance_id=None,
                              core="native" if name.startswith("rs") else "python")
        _wait_for(lambda: _owned(logs[name]), f"{name} got partitions", timeout=60)

    def leave(name: str) -> None:
        assert stop(workers[name]) == 0, logs[name].read_text()[-3000:]

    try:
        add("py1")
        add("py2")
        traffic = _LiveTraffic(s, 36_000, seed=45, seconds=30)
        wait_for_progress(s, traffic.total, 0.1)
        leave("py1")
        add("rs1")  # native restores what Python wrote
        wait_for_progress(s, traffic.total, 0.3)
        leave("py2")  # rs1 takes every partition: pending state of both cores' writing
        _wait_for(lambda: _owned(logs["rs1"]) == [0, 1, 2, 3], "rs1 holds every partition", timeout=60)
        wait_for_progress(s, traffic.total, 0.45)
        add("py3")  # rolled back: Python restores what native wrote
        leave("rs1")
        _wait_for(lambda: _owned(logs["py3"]) == [0, 1, 2, 3], "py3 holds every partition", timeout=60)
        wait_for_progress(s, traffic.total, 0.6)
        add("rs2")
        add("rs3")
        leave("py3")
        assert traffic.running(), "all of it under live traffic"
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered)
        for name in ("rs1", "py3"):
            assert _restored_pending(logs[name]) > 0, f"{name} restored pending payments the other core wrote"
        for name, log in logs.items():
            text = log.read_text()
            core = "native" if name.startswith("rs") else "python"
            assert f"join core: {core}" in text, f"{name} ran the {core} core: {text[:2000]}"
            assert "Traceback" not in text, f"{name}: {text[-3000:]}"
    finally:
        for name, w in workers.items():
            if w.poll() is None:
                assert stop(w) == 0, logs[name].read_text()[-3000:]
