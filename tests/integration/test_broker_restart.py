"""The broker restarts (cleanly, and killed -9) while slipguard runs: nothing crashes.

A restarted broker's group coordinators answer NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE
and COORDINATOR_LOAD_IN_PROGRESS until they have loaded `__consumer_offsets`; admin
requests in flight time out. Both used to kill slipguard's processes inside librdkafka
(SIGSEGV in `rd_kafka_cgrp_op` from `AdminClient.list_consumer_group_offsets`, librdkafka
issue 5040; an `enq_once` assertion from admin requests timing out). The stack's one
broker is restarted with deploy/local/stack.sh; each test leaves it running.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from streams.kafka import config
from streams.ops.lag import LagError, group_lag
from streams.kafka.topics import create_topics
from tests.integration.conftest import isolated
from tests.integration.test_join import _LiveTraffic
from tests.integration.test_lag import _free_port, _get, idle_group_with_unread
from tests.integration.workers import (
    ROOT,
    assert_recovered_once,
    start,
    stop,
    wait_for_progress,
    wait_until_done,
)

STACK = ROOT / "deploy" / "local" / "stack.sh"


def restart_broker(how: str) -> None:
    subprocess.run(["bash", str(STACK), "kafka-restart", how], check=True, capture_output=True, timeout=240)


def _commit(s, group: str, offsets: dict[int, int]) -> None:
    c = Consumer(config.consumer(s, group))
    c.commit(offsets=[TopicPartition(s.payments_topic, p, off) for p, off in offsets.items()], asynchronous=False)
    c.close()


def _wait_for(condition, what: str, log, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}: " + log.read_text()[-3000:]
        time.sleep(0.2)


def _exported_total(port: int, group: str) -> float | None:
    try:
        text = _get(port, "/metrics")[1]
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("slipguard_consumer_lag_messages{") and f'group="{group}"' in line]
    return sum(values) if values else None


def test_lag_reading_survives_broker_restarts_in_process_and_in_the_exporter(settings, tmp_path) -> None:
    group = idle_group_with_unread(settings, "restarts", 60)
    port = _free_port()
    exporter = start(settings, ["lag", "--serve", "--group", group, "--topic", settings.payments_topic,
                                "--interval", "0.2"], tmp_path / "lag.log", metrics_port=port)
    # Poll in this process too, as fast as it goes: a native crash here fails the whole run.
    polls = {"ok": 0, "errors": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            try:
                group_lag(settings, [group], topics=[settings.payments_topic], timeout=3)
                polls["ok"] += 1
            except LagError:
                polls["errors"] += 1

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        for how in ("clean", "hard", "hard"):
            time.sleep(2)
            restart_broker(how)
            deadline = time.monotonic() + 90
            while _exported_total(port, group) != 60 or exporter.poll() is not None:
                assert exporter.poll() is None, f"the lag exporter died after a {how} restart: " + \
                    (tmp_path / "lag.log").read_text()[-2000:]
                assert time.monotonic() < deadline, f"the exporter did not serve the group's lag after a {how} restart"
                time.sleep(0.5)
        ok_before = polls["ok"]
        deadline = time.monotonic() + 30
        while polls["ok"] == ok_before:
            assert time.monotonic() < deadline, "in-process lag reads did not resume"
            time.sleep(0.2)
    finally:
        done.set()
        poller.join(30)
        assert stop(exporter) == 0
    assert polls["ok"] > 3


def _readiness(port: int) -> int | None:
    try:
        return _get(port, "/readyz")[0]
    except OSError:
        return None


class _Readiness:
    """Polls a worker's /readyz in the background and remembers what it answered."""

    def __init__(self, port: int) -> None:
        self.port, self.seen, self._done = port, [], threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._done.is_set():
            self.seen.append(_readiness(self.port))
            time.sleep(0.25)

    def stop(self) -> None:
        self._done.set()
        self.thread.join(5)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_join_rides_out_a_killed_and_restarted_broker_under_live_traffic(base_settings, tmp_path, guarantee) -> None:
    """kill -9 of the broker mid-stream, started again (~15 s away): the worker stays up,
    says it is not ready while the broker is away and ready after, and every recovery
    appears (once, with exactly_once)."""
    s = isolated(base_settings, order_timeout="5s", grace="1s", commit_interval="200ms",
                 processing_guarantee=guarantee)
    create_topics(s)
    port = _free_port()
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log, metrics_port=port)
    try:
        _wait_for(lambda: _readiness(port) == 200, "the worker is ready", log)
        traffic = _LiveTraffic(s, 24_000, seed=31, seconds=20)
        wait_for_progress(s, traffic.total, 0.15)
        readiness = _Readiness(port)
        mid_stream = traffic.running()  # at the kill; a loaded broker can take 30 s to come back
        restart_broker("hard")
        assert mid_stream, "the broker was killed mid-stream"
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        readiness.stop()
        assert_recovered_once(s, traffic.exp.recovered, once=guarantee == "exactly_once", timeout=120)
        assert worker.poll() is None, "the worker stayed up: " + log.read_text()[-3000:]
        assert 503 in readiness.seen, "not ready while the broker was away"
        _wait_for(lambda: _readiness(port) == 200, "ready again after the restart", log)
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]


def test_workers_on_a_freshly_formatted_broker_recover_every_payment_once(base_settings, tmp_path) -> None:
    """A brand-new cluster (its coordinators still loading when the workers start): the
    case that crashed `make demo` in 3 of 6 runs. Two join workers with default settings
    and a lag exporter start at once, right after the broker is formatted."""
    restart_broker("fresh")
    s = isolated(base_settings, order_timeout="5s", grace="1s", commit_interval="200ms")
    create_topics(s)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    workers = [start(s, ["join"], path, instance_id=None) for path in logs]
    port = _free_port()
    exporter = start(s, ["lag", "--serve", "--interval", "0.5"], tmp_path / "lag.log", metrics_port=port)
    try:
        traffic = _LiveTraffic(s, 12_000, seed=32, seconds=8)
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered, timeout=120)
        for w, path in zip(workers, logs):
            assert w.poll() is None, path.read_text()[-3000:]
        assert exporter.poll() is None, (tmp_path / "lag.log").read_text()[-3000:]
        _wait_for(lambda: _exported_total(port, s.join_group) == 0, "the exporter shows the group caught up",
                  tmp_path / "lag.log")
    finally:
        for w, path in zip(workers, logs):
            assert stop(w) == 0, path.read_text()[-3000:]
        assert stop(exporter) == 0
