"""The broker restarts (cleanly, and killed -9) while slipguard runs: nothing crashes.

A restarted broker's group coordinators answer NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE
and COORDINATOR_LOAD_IN_PROGRESS until they have loaded `__consumer_offsets`; admin
requests in flight time out. Both used to kill slipguard's processes inside librdkafka
(SIGSEGV in `rd_kafka_cgrp_op` from `AdminClient.list_consumer_group_offsets`, librdkafka
issue 5040; an `enq_once` assertion from admin requests timing out). The stack's one
broker is restarted with deploy/local/stack.sh; each test leaves it running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from streams.kafka import config
from streams.kafka.topics import create_topics
from streams.ops.lag import LagError, group_lag
from tests.factories import order, payment
from tests.integration.conftest import isolated, produce
from tests.integration.test_join import _LiveTraffic
from tests.integration.test_lag import _free_port, _get, idle_group_with_unread
from tests.integration.workers import (
    ROOT,
    assert_recovered_once,
    recovered_ids,
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


def _ready_worker(s, tmp_path):
    """A join worker on fresh topics, once it says it is ready: (process, metrics port, log)."""
    create_topics(s)
    port = _free_port()
    log = tmp_path / "join.log"
    worker = start(s, ["join"], log, metrics_port=port)
    try:
        _wait_for(lambda: _readiness(port) == 200, "the worker is ready", log)
    except BaseException:
        stop(worker)
        raise
    return worker, port, log


@pytest.mark.parametrize(("guarantee", "protocol"), [("exactly_once", "classic"), ("at_least_once", "consumer")])
def test_join_rides_out_a_killed_and_restarted_broker_under_live_traffic(base_settings, tmp_path, guarantee,
                                                                         protocol) -> None:
    """kill -9 of the broker mid-stream, started again (~15 s away): the worker stays up,
    says it is not ready while the broker is away and ready after, and every recovery
    appears (once, with exactly_once). With KIP-848 the worker is a static member (its
    instance id is set): the membership survives the outage (classic static membership
    does not, librdkafka 3437, which is why classic runs without it)."""
    s = isolated(base_settings, order_timeout="5s", grace="1s", commit_interval="200ms",
                 processing_guarantee=guarantee, group_protocol=protocol)
    assert s.instance_id, "started with an instance id: a static member under KIP-848"
    worker, port, log = _ready_worker(s, tmp_path)
    try:
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
        assert "refuses SLIPGUARD_INSTANCE_ID" not in log.read_text(), "the static member kept its membership"
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]


def _outage(how: str) -> None:
    """The broker away for about 15 s: killed -9 and started again, or frozen (SIGSTOP:
    connections stay up and nothing answers) and thawed."""
    if how == "freeze":
        subprocess.run(["bash", str(STACK), "kafka-freeze"], check=True, capture_output=True, timeout=60)
        try:
            time.sleep(15)
        finally:
            subprocess.run(["bash", str(STACK), "kafka-thaw"], check=True, capture_output=True, timeout=60)
    else:
        restart_broker(how)


@pytest.mark.parametrize("how", ["hard", "freeze"])
def test_an_end_of_partition_seen_before_a_broker_outage_recovers_nothing_and_an_idle_one_is_confirmed(
        base_settings, tmp_path, how) -> None:
    """Quiet topics, every partition read to its end. Two payments are pending when the
    broker goes away; the order of one of them is produced while it is away (buffered in
    its producer, delivered after). Its deadline passes during the outage. An end seen
    before the outage must not count: that payment is never recovered (the old code
    recovered it while the broker was away). The other's order never comes: it is
    recovered once the broker is back, although no record arrives on any partition after
    the outage to signal a new end (the worker asks the leaders for the ends)."""
    s = isolated(base_settings, order_timeout="8s", grace="1s", commit_interval="200ms",
                 processing_guarantee="at_least_once", group_protocol="consumer")
    worker, _port, log = _ready_worker(s, tmp_path)
    try:
        now = int(time.time() * 1000)
        lost = payment(payment_id="p-lost", order_id="o-lost")
        answered = payment(payment_id="p-late", order_id="o-late")
        produce(s, s.payments_topic, [(p.order_id.encode(), p.encode(), now) for p in (lost, answered)])
        late = order(order_id="o-late")
        orders = Producer(config.producer(s))
        orders.list_topics(s.orders_topic, timeout=10)  # connected before the broker goes

        def order_while_away() -> None:
            time.sleep(1.5)
            orders.produce(s.orders_topic, key=late.order_id.encode(), value=late.encode(), timestamp=now + 1_000)
            orders.poll(0)

        time.sleep(1.0)  # the worker has read both payments and is at every partition's end
        threading.Thread(target=order_while_away, daemon=True).start()
        _outage(how)  # the payments' deadlines (+ grace) pass 8 s into it; noticed within 4 s
        assert orders.flush(60) == 0, "the order buffered during the outage was delivered"
        ids = recovered_ids(s, 1, timeout=60, settle=5)
        assert ids == ["p-lost"], f"recovered {ids}: p-late's order was on its way, p-lost's never came"
        assert worker.poll() is None, log.read_text()[-3000:]
    finally:
        assert stop(worker) == 0, log.read_text()[-3000:]


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_an_end_of_partition_seen_before_the_worker_stood_still_recovers_nothing(base_settings, tmp_path,
                                                                                guarantee) -> None:
    """The same two payments, every partition read to its end; this time the broker stays
    up and the worker stands still (SIGSTOP, 6 s: within its session) while p-late's
    order is produced, promptly, inside its window. Its deadline + GRACE passes during
    the stall. The end seen before it must not count: p-late is matched, never recovered
    (the cluster's group-coordinator kill held a worker in a commit for 20 s, and it then
    recovered 141 payments whose orders had been in the log all that time); p-lost is
    recovered once the worker runs again."""
    s = isolated(base_settings, order_timeout="4s", grace="1s", commit_interval="200ms",
                 processing_guarantee=guarantee, group_protocol="consumer")
    worker, _port, log = _ready_worker(s, tmp_path)
    try:
        now = int(time.time() * 1000)
        lost = payment(payment_id="p-lost", order_id="o-lost")
        answered = payment(payment_id="p-late", order_id="o-late")
        produce(s, s.payments_topic, [(p.order_id.encode(), p.encode(), now) for p in (lost, answered)])
        time.sleep(1.0)  # the worker has read both payments and is at every partition's end
        os.killpg(worker.pid, signal.SIGSTOP)
        try:
            produce(s, s.orders_topic, [(b"o-late", order(order_id="o-late").encode(), now + 1_000)])
            time.sleep(6)  # deadline + GRACE (now + 5 s) passes
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        ids = recovered_ids(s, 1, timeout=60, settle=5)
        assert ids == ["p-lost"], f"recovered {ids}: p-late's order was in the log before its deadline"
        assert "stood still" in log.read_text(), "the worker noticed it stood still"
        assert worker.poll() is None, log.read_text()[-3000:]
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
        for w, path in zip(workers, logs, strict=True):
            assert w.poll() is None, path.read_text()[-3000:]
        assert exporter.poll() is None, (tmp_path / "lag.log").read_text()[-3000:]
        _wait_for(lambda: _exported_total(port, s.join_group) == 0, "the exporter shows the group caught up",
                  tmp_path / "lag.log")
    finally:
        for w, path in zip(workers, logs, strict=True):
            assert stop(w) == 0, path.read_text()[-3000:]
        assert stop(exporter) == 0
