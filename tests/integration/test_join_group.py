"""Many join workers in one group: default settings coexist, a duplicate instance id is named."""

from __future__ import annotations

import time

from tests.integration.test_join import _LiveTraffic, _owned, _settings, _wait_for
from tests.integration.workers import assert_recovered_once, start, stop, wait_for_progress, wait_until_done


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
                  and sorted(sum((_owned(p) for p in logs[:3]), [])) == list(range(12)),
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
        for w, log in zip(workers[1:], logs[1:]):
            assert w.poll() is None, log.read_text()[-3000:]
            assert "Traceback" not in log.read_text()
    finally:
        for w, log in zip(workers[1:], logs[1:]):
            assert stop(w) == 0, log.read_text()[-3000:]


def test_two_workers_given_the_same_instance_id_are_reported_in_one_line(base_settings, tmp_path) -> None:
    """Being fenced once proves nothing (the coordinator also fences a producer whose
    transaction outlived a broker outage); fenced three times in a minute, with an
    instance id configured, is another live worker with that id."""
    s = _settings(base_settings, commit_interval="200ms")
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
        traffic.join()
    finally:
        for w in (a, b):
            if w.poll() is None:
                stop(w)


def test_kip_848_consumer_protocol_keeps_pairs_together_and_recovers_every_payment_once(base_settings,
                                                                                      tmp_path) -> None:
    """group.protocol=consumer with the broker's range assignor: incremental rebalances,
    still co-partitioned (a worker checks it and stops if not), transactions intact."""
    s = _settings(base_settings, commit_interval="200ms", group_protocol="consumer")
    logs = [tmp_path / f"w{i}.log" for i in range(3)]
    workers = [start(s, ["join"], logs[i], instance_id=None) for i in range(2)]
    try:
        _wait_for(lambda: all(_owned(p) is not None for p in logs[:2]), "both workers restored partitions", timeout=90)
        traffic = _LiveTraffic(s, 20_000, seed=43, seconds=8)
        wait_for_progress(s, traffic.total, 0.2)
        workers.append(start(s, ["join"], logs[2], instance_id=None))  # a third joins mid-stream
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered)
        assert _owned(logs[2]), "the third worker got partitions"
        for w, log in zip(workers, logs):
            assert w.poll() is None and "Traceback" not in log.read_text(), log.read_text()[-3000:]
    finally:
        for w, log in zip(workers, logs):
            assert stop(w) == 0, log.read_text()[-3000:]
