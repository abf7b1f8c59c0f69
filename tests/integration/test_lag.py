"""Lag as operators see it: `slipguard lag` against Kafka's own ConsumerGroupCommand, and the endpoints."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

from confluent_kafka import Consumer, TopicPartition

from streams.cli import main
from streams.kafka import config
from tests.factories import payment
from tests.integration.conftest import produce
from tests.integration.workers import ROOT, start, stop

STACK = ROOT / "deploy" / "local" / "stack.sh"


def _commit(s, group: str, offsets: dict[int, int]) -> None:
    """Commit offsets for a group that then has no active member."""
    c = Consumer(config.consumer(s, group))
    c.commit(offsets=[TopicPartition(s.payments_topic, p, off) for p, off in offsets.items()], asynchronous=False)
    c.close()


def _kafka_describe(s, group: str) -> dict[tuple[str, int], tuple[str, str, str]]:
    out = subprocess.run(
        ["bash", str(STACK), "kafka-tool", "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
         "--bootstrap-server", s.bootstrap_servers, "--describe", "--group", group],
        capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {}
    for line in out.splitlines():
        cells = line.split()
        if len(cells) >= 6 and cells[0] == group:
            rows[(cells[1], int(cells[2]))] = (cells[3], cells[4], cells[5])
    return rows


def test_slipguard_lag_agrees_with_kafka_consumer_groups_describe(settings, capsys) -> None:
    now = int(time.time() * 1000)
    records = [(f"o{i}".encode(), payment(payment_id=f"p{i}", order_id=f"o{i}").encode(), now - 30_000 + i)
               for i in range(200)]
    produce(settings, settings.payments_topic, records)
    group = f"{settings.join_group}-lagcheck"
    _commit(settings, group, {0: 3, 1: 0, 2: 5})  # p3: nothing committed, so neither tool lists it
    expected = _kafka_describe(settings, group)
    assert expected, "Kafka's tool describes the group"

    assert main(["lag", "--group", group, "--json", f"--bootstrap-servers={settings.bootstrap_servers}"]) == 0
    ours = {(r["topic"], r["partition"]): r for r in json.loads(capsys.readouterr().out)}
    assert set(ours) == set(expected)
    for tp, (cur, end, lag) in expected.items():
        r = ours[tp]
        assert (str(r["current_offset"]), str(r["log_end_offset"])) == (cur, end), tp
        assert str(r["lag"]) == lag or (lag == "-" and r["lag"] is None), (tp, lag, r)

    # Lag in seconds: the age of the next unread record; the one at p1 offset 0 is ~30 s old.
    p1 = ours[(settings.payments_topic, 1)]
    assert p1["lag"] > 0 and 25 <= p1["lag_seconds"] <= 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_join_worker_serves_metrics_health_and_readiness(settings, tmp_path) -> None:
    port = _free_port()
    now = int(time.time() * 1000) - 120_000
    produce(settings, settings.payments_topic,
            [(f"m{i}".encode(), payment(payment_id=f"mp{i}", order_id=f"m{i}").encode(), now) for i in range(5)])
    worker = start(settings, ["join"], tmp_path / "join.log", metrics_port=port, order_timeout="1s", grace="1s")
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                code = _get(port, "/readyz")[0]
                if code == 200 and "slipguard_join_recovered_total 5.0" in _get(port, "/metrics")[1]:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert _get(port, "/readyz")[0] == 200
        assert _get(port, "/healthz") == (200, "ok\n")
        metrics = _get(port, "/metrics")[1]
        assert "slipguard_join_recovered_total 5.0" in metrics
        assert 'slipguard_join_detection_latency_seconds_bucket{le="30.0"}' in metrics
        # Group lag is the exporter's alone (`slipguard lag --serve`): a worker exporting it
        # too would count every partition twice in sum by (group).
        assert "slipguard_consumer_lag_messages{" not in metrics
        assert f'slipguard_join_order_timeout_seconds{{group="{settings.join_group}"}} 1.0' in metrics
    finally:
        assert stop(worker) == 0


def idle_group_with_unread(settings, name: str, unread: int) -> str:
    """A group that committed offset 0 on every payments partition and has no member,
    with `unread` payments in the topic."""
    produce(settings, settings.payments_topic,
            [(f"{name}{i}".encode(), payment(payment_id=f"{name}p{i}", order_id=f"{name}{i}").encode(), None)
             for i in range(unread)])
    group = f"{settings.join_group}-{name}"
    _commit(settings, group, {0: 0, 1: 0, 2: 0, 3: 0})
    return group


def test_lag_exporter_serves_groups_with_no_active_member(settings, tmp_path) -> None:
    group = idle_group_with_unread(settings, "idle", 40)
    port = _free_port()
    exporter = start(settings, ["lag", "--serve", "--group", group, "--interval", "1"], tmp_path / "lag.log",
                     metrics_port=port)
    try:
        total = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and total != 40:
            time.sleep(0.5)
            try:
                text = _get(port, "/metrics")[1]
            except OSError:
                continue
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("slipguard_consumer_lag_messages{") and f'group="{group}"' in line)
        assert total == 40, "every unread record of the idle group is counted"
    finally:
        assert stop(exporter) == 0


def test_a_partition_with_only_transaction_markers_left_has_no_lag(settings) -> None:
    """A committed transaction ends with a marker: a group that read every record has
    committed the offset of the marker, one below the log end. That is no lag."""
    from confluent_kafka import Producer

    from streams.ops.lag import group_lag

    p = Producer(config.producer(settings, transactional_id=f"{settings.join_group}-markers"))
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(5):
        p.produce(settings.recovery_topic, payment(payment_id=f"tp{i}", order_id="m").encode(), b"m", partition=0)
    p.commit_transaction(30)
    group = f"{settings.recover_group}-markers"
    c = Consumer(config.consumer(settings, group))
    c.commit(offsets=[TopicPartition(settings.recovery_topic, 0, 5)], asynchronous=False)
    c.close()
    rows = {r.partition: r for r in group_lag(settings, [group], topics=[settings.recovery_topic])}
    assert rows[0].log_end_offset == 6, "five records and the commit marker"
    assert (rows[0].lag, rows[0].lag_seconds) == (0, 0.0)
