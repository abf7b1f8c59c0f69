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

from confluent_kafka import Consumer, TopicPartition

from streams.kafka import config
from streams.kafka.lag import LagError, group_lag
from tests.factories import payment
from tests.integration.conftest import produce
from tests.integration.test_lag import _free_port, _get
from tests.integration.workers import ROOT, start, stop

STACK = ROOT / "deploy" / "local" / "stack.sh"


def restart_broker(how: str) -> None:
    subprocess.run(["bash", str(STACK), "kafka-restart", how], check=True, capture_output=True, timeout=240)


def _commit(s, group: str, offsets: dict[int, int]) -> None:
    c = Consumer(config.consumer(s, group))
    c.commit(offsets=[TopicPartition(s.payments_topic, p, off) for p, off in offsets.items()], asynchronous=False)
    c.close()


def _exported_total(port: int, group: str) -> float | None:
    try:
        text = _get(port, "/metrics")[1]
    except OSError:
        return None
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("slipguard_consumer_lag_messages{") and f'group="{group}"' in line]
    return sum(values) if values else None


def test_lag_reading_survives_broker_restarts_in_process_and_in_the_exporter(settings, tmp_path) -> None:
    produce(settings, settings.payments_topic,
            [(f"r{i}".encode(), payment(payment_id=f"rp{i}", order_id=f"r{i}").encode(), None) for i in range(60)])
    group = f"{settings.join_group}-restarts"
    _commit(settings, group, {0: 0, 1: 0, 2: 0, 3: 0})
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
