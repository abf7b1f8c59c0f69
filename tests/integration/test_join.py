"""The join on the real broker: `slipguard join` processes, generated traffic, real faults."""

from __future__ import annotations

import base64
import itertools
import re
import signal
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from schemas import Anomaly, DeadLetter, Recovery, recovery_id_for
from streams.kafka.topics import create_topics
from streams.tools.loadgen import Shares, merged, plan, produce
from tests.factories import payment
from tests.integration.conftest import consume_all, isolated
from tests.integration.conftest import produce as produce_raw
from tests.integration.workers import (
    assert_recovered_once,
    late_ids,
    recovered_ids,
    start,
    stop,
    wait_for_progress,
    wait_until_done,
)

TIMEOUT_MS = 5_000


def _settings(base_settings, **over):
    s = isolated(base_settings, **({"order_timeout": "5s", "grace": "1s"} | over))
    create_topics(s)
    return s


def _historical(s, count: int, seed: int, shares: Shares = Shares()):
    """A workload whose deadlines have all passed by the wall clock: a backlog."""
    start_ms = int(time.time() * 1000) - 120_000
    pays, ords, exp = plan(count, start_ms=start_ms, spacing_ms=60_000 / count, timeout_ms=TIMEOUT_MS,
                           shares=shares, seed=seed)
    produce(s, merged(pays, ords))
    return exp


def test_end_to_end_every_missing_order_is_recovered_once_and_late_orders_and_anomalies_reported(
        base_settings, tmp_path) -> None:
    s = _settings(base_settings)
    exp = _historical(s, 4_000, seed=11)
    worker = start(s, ["join"], tmp_path / "join.log")
    try:
        wait_until_done(s, exp.payments + exp.orders)
        ids = recovered_ids(s, len(exp.recovered))
        assert Counter(ids).most_common(1)[0][1] == 1, "each recovery appears once (exactly_once)"
        assert set(ids) == exp.recovered
        assert set(late_ids(s, len(exp.late))) == exp.late
        anomalies = [Anomaly.decode(m.value()) for m in consume_all(s, s.anomalies_topic, sum(exp.anomalies.values()))]
        assert Counter(a.kind for a in anomalies) == Counter(exp.anomalies)
    finally:
        assert stop(worker) == 0, (tmp_path / "join.log").read_text()[-3000:]
    log = (tmp_path / "join.log").read_text()
    assert "stopped cleanly" in log


class _LiveTraffic:
    """Payments and orders produced at their timestamps (from now on), in a background thread."""

    def __init__(self, s, count: int, seed: int, seconds: float, on_delivery=None) -> None:
        """`on_delivery(error, message)`: each record's delivery report (loadgen.produce)."""
        self.seed, self.count, self.start_ms = seed, count, int(time.time() * 1000) + 500
        self.spacing_ms = seconds * 1000 / count
        pays, ords, self.exp = plan(count, start_ms=self.start_ms, spacing_ms=self.spacing_ms,
                                    timeout_ms=TIMEOUT_MS, seed=seed)
        self.total = self.exp.payments + self.exp.orders
        self.error: BaseException | None = None
        self.halt = threading.Event()
        records = itertools.takewhile(lambda _: not self.halt.is_set(), merged(pays, ords))
        self.thread = threading.Thread(target=self._run, args=(s, records, on_delivery), daemon=True)
        self.thread.start()

    def _run(self, s, records, on_delivery) -> None:
        try:
            produce(s, records, realtime=True, on_delivery=on_delivery)
        except BaseException as exc:  # noqa: BLE001 (reported by join())
            self.error = exc

    def running(self) -> bool:
        return self.thread.is_alive()

    def join(self) -> None:
        self.thread.join(120)
        assert self.error is None, f"producing the traffic failed: {self.error}"

    def stop(self) -> None:
        """The rest is not produced (a test that needs no more of it)."""
        self.halt.set()
        self.join()


def _owned(log: Path) -> list[int] | None:
    """The partitions a worker holds now (None: it restored none yet): its log's restored,
    revoked and lost lines replayed. Under KIP-848 an assignment adds and a revocation
    takes away only the partitions that move; under classic each takes all."""
    events = re.findall(r"(restored|revoked|lost) partitions \[([\d, ]*)\]", log.read_text() if log.exists() else "")
    if not any(verb == "restored" for verb, _ in events):
        return None
    held: set[int] = set()
    for verb, found in events:
        parts = {int(x) for x in found.split(",") if x.strip()}
        held = held | parts if verb == "restored" else held - parts
    return sorted(held)


def _wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
def test_kill_9_mid_stream_then_restart_loses_nothing(base_settings, tmp_path, guarantee: str) -> None:
    s = _settings(base_settings, processing_guarantee=guarantee, commit_interval="200ms")
    first = start(s, ["join"], tmp_path / "join-1.log")
    _wait_for(lambda: _owned(tmp_path / "join-1.log") == [0, 1, 2, 3], "the worker owns every partition")
    traffic = _LiveTraffic(s, 30_000, seed=12, seconds=6)
    wait_for_progress(s, traffic.total, 0.25)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert traffic.running(), "killed mid-stream, with work in flight"
    second = start(s, ["join"], tmp_path / "join-2.log")
    try:
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        ids = recovered_ids(s, len(traffic.exp.recovered))
        assert set(ids) == traffic.exp.recovered, "no recovery lost or invented across kill -9"
        if guarantee == "exactly_once":
            assert len(ids) == len(set(ids)), "read_committed readers see each recovery once"
    finally:
        assert stop(second) == 0


def test_two_workers_share_the_load_and_one_dying_loses_nothing(base_settings, tmp_path) -> None:
    s = _settings(base_settings, commit_interval="200ms")
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = start(s, ["join"], a_log, instance_id="worker-a")
    b = start(s, ["join"], b_log, instance_id="worker-b")
    try:
        _wait_for(lambda: _owned(a_log) and _owned(b_log) and sorted(_owned(a_log) + _owned(b_log)) == [0, 1, 2, 3],
                  "the two workers share the partitions")
        traffic = _LiveTraffic(s, 30_000, seed=13, seconds=6)
        wait_for_progress(s, traffic.total, 0.25)
        a.send_signal(signal.SIGKILL)
        a.wait(10)
        assert traffic.running(), "killed mid-stream, with work in flight"
        traffic.join()
        wait_until_done(s, traffic.total, timeout=180)
        assert_recovered_once(s, traffic.exp.recovered)
        assert _owned(b_log) == [0, 1, 2, 3], "the survivor took over the dead worker's partitions"
    finally:
        assert stop(b) == 0


def test_worker_started_after_a_backlog_makes_no_false_recovery(base_settings, tmp_path) -> None:
    """Orders trail their payments by 4 s of event time, and all deadlines passed by the wall clock."""
    s = _settings(base_settings)
    now = int(time.time() * 1000)
    pays, ords, exp = plan(20_000, start_ms=now - 300_000, spacing_ms=5, timeout_ms=TIMEOUT_MS,
                           shares=Shares(jitter_ms=0, late=0, second_payment=0), seed=14)
    ords = [(k, key, v, ts + 4_000) for k, key, v, ts in ords]
    produce(s, pays)  # the whole payments backlog first, then the orders backlog
    produce(s, ords)
    worker = start(s, ["join"], tmp_path / "join.log")
    try:
        wait_until_done(s, len(pays) + len(ords))
        ids = recovered_ids(s, len(exp.recovered))
        assert set(ids) == exp.recovered, f"false recoveries: {len(set(ids) - exp.recovered)}"
    finally:
        assert stop(worker) == 0


def test_idle_order_stream_recovers_within_grace_plus_one_second(base_settings, tmp_path) -> None:
    s = _settings(base_settings, order_timeout="3s", grace="1s")
    worker = start(s, ["join"], tmp_path / "join.log")
    try:
        time.sleep(3)  # joined the group, partitions read to their (empty) end
        now = int(time.time() * 1000)
        payments = [payment(payment_id=f"idle-{i}", order_id=f"idle-o{i}") for i in range(8)]
        produce_raw(s, s.payments_topic, [(p.order_id.encode(), p.encode(), now) for p in payments])
        got = [Recovery.decode(m.value()) for m in consume_all(s, s.recovery_topic, 8, timeout=20)]
        assert sorted(r.payment.payment_id for r in got) == sorted(p.payment_id for p in payments)
        for r in got:
            late_by = (r.detected_at - r.deadline).total_seconds()
            assert 1.0 <= late_by <= 2.0, f"emitted {late_by:.3f}s after the deadline; contract: within GRACE + 1 s"
            assert r.deadline == datetime.fromtimestamp((now + 3_000) / 1000, tz=r.deadline.tzinfo)
            assert r.recovery_id == recovery_id_for(r.payment.payment_id)
    finally:
        assert stop(worker) == 0


def test_malformed_and_invalid_records_go_to_the_dlq_and_processing_goes_on(base_settings, tmp_path) -> None:
    s = _settings(base_settings)
    now = int(time.time() * 1000) - 60_000
    good = payment(payment_id="after-bad", order_id="after-bad")
    bad = [
        (b"k1", b"\xff\xfe not json", now),
        (b"k2", b'{"payment_id": "p", "order_id": "k2"}', now),  # schema-invalid
        (b"wrong-key", payment(payment_id="x", order_id="right-key").encode(), now),
        (b"k3", (b'{"payment_id":"p3","order_id":"k3","user_id":"u","amount":1.5,"currency":"CNY",'
                 b'"status":"succeeded","paid_at":"2026-01-01T00:00:00Z"}'), now),  # amount as a float
    ]
    produce_raw(s, s.payments_topic, [*bad, (b"after-bad", good.encode(), now + 1)])
    produce_raw(s, s.orders_topic, [(b"o-bad", b"[]", now + 2)])
    worker = start(s, ["join"], tmp_path / "join.log")
    try:
        dead = [DeadLetter.decode(m.value()) for m in consume_all(s, s.dlq_topic, 5, timeout=30)]
        assert len(dead) == 5
        by_value = {base64.b64decode(d.value_b64 or ""): d for d in dead}
        for key, value, _ in bad:
            d = by_value[value]
            assert d.source_topic == s.payments_topic and base64.b64decode(d.key_b64 or "") == key
            assert d.error
        assert "order_id" in by_value[bad[2][1]].error and "amount" in by_value[bad[3][1]].error
        assert by_value[b"[]"].source_topic == s.orders_topic
        assert recovered_ids(s, 1, settle=1) == ["after-bad"], "the record after the bad ones is processed"
    finally:
        assert stop(worker) == 0


def test_sigterm_while_waiting_for_the_broker_stops_cleanly_and_promptly(base_settings, tmp_path) -> None:
    """A worker still starting (here: no broker answers, so transactions cannot be
    initialised) treats SIGTERM as a request to stop, not as a crash."""
    s = isolated(base_settings, bootstrap_servers="127.0.0.1:1")
    worker = start(s, ["join"], tmp_path / "join.log")
    _wait_for(lambda: "starting" in (tmp_path / "join.log").read_text(), "the worker starts", timeout=30)
    time.sleep(1)
    sent = time.monotonic()
    assert stop(worker, timeout=30) == 0, (tmp_path / "join.log").read_text()[-2000:]
    assert time.monotonic() - sent < 10
    assert "stopped cleanly" in (tmp_path / "join.log").read_text()


def test_unfetched_tells_records_left_to_fetch_by_the_cached_high_watermark(base_settings) -> None:
    """The merge's question when a hold has lasted HOLD_MAX_SECONDS (librdkafka issue 1854
    can starve a partition for seconds): are records of the other partition left to fetch?
    Asked of a real consumer: before its first fetch (no watermark yet), mid-partition, at
    its end, and once more records arrive and are fetched."""
    import uuid

    from confluent_kafka import Consumer, TopicPartition

    from streams.kafka import config
    from streams.kafka.read import unfetched

    s = _settings(base_settings)
    produce_raw(s, s.orders_topic, [(b"k", b"x%d" % i, None) for i in range(50)])
    c = Consumer(config.consumer(s, f"unfetched-{uuid.uuid4().hex[:8]}", **{"enable.partition.eof": True}))
    c.assign([TopicPartition(s.orders_topic, p, 0) for p in range(s.partitions)])
    part = next(p for p in range(s.partitions) if c.get_watermark_offsets(TopicPartition(s.orders_topic, p),
                                                                           timeout=10)[1] == 50)
    try:
        assert unfetched(c, s.orders_topic, part, 0), "assigned, not fetched yet: counts as left to fetch"
        got = []
        while not got:
            got = [m for m in c.consume(1, timeout=1.0) if m.error() is None]
        assert unfetched(c, s.orders_topic, part, got[-1].offset() + 1), "49 records left"
        ended = False
        while not ended:
            for m in c.consume(100, timeout=1.0):
                ended = ended or (m.error() is not None and m.partition() == part)
        assert not unfetched(c, s.orders_topic, part, 50), "read to its end"
        produce_raw(s, s.orders_topic, [(b"k", b"y", None)])
        deadline = time.monotonic() + 30
        while not unfetched(c, s.orders_topic, part, 50) and time.monotonic() < deadline:
            c.consume(100, timeout=0.2)  # librdkafka fetches it: the cached watermark moves on
        assert unfetched(c, s.orders_topic, part, 50), "a record past offset 50 arrived"
        assert not unfetched(c, s.orders_topic, part, 51)
    finally:
        c.close()
