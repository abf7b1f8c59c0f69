"""`slipguard recover`: the faust-streaming app around the recovery writer (writer.py).

Reads `orders.recovery` and `orders.late` as a read_committed consumer group
(faust_compat.py), with one agent (concurrency 1) and manual acks: the writer
acknowledges a record only after its batch is committed in PostgreSQL.
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import faust

from schemas.headers import OutHeaders
from streams.kafka.versions import ssl_context
from streams.ops import metrics
from streams.recover.faust_compat import ReadCommittedApp
from streams.recover.writer import Ack, MakeWriter, Record, Writer
from streams.settings import Settings


def _credentials(s: Settings) -> Any:
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    context = ssl_context(s)
    if s.kafka_security_protocol.startswith("SASL"):
        password = s.kafka_sasl_password
        assert password is not None, "Settings: SASL needs a password"  # (its validator makes sure)
        return faust.SASLCredentials(
            username=s.kafka_sasl_username, password=password.get_secret_value(),
            mechanism=s.kafka_sasl_mechanism, ssl_context=context,
        )
    return faust.SSLCredentials(context)


def _ms(seconds: float | None) -> int | None:
    """faust gives a record's timestamp in (float) seconds."""
    return None if seconds is None else round(seconds * 1000)


def record_of(event: Any) -> Record:
    msg = event.message
    headers = msg.headers.items() if isinstance(msg.headers, dict) else msg.headers or []
    return Record(msg.topic, msg.partition, msg.offset, _ms(msg.timestamp), list(headers), msg.key, msg.value,
                  token=event)


def build_app(s: Settings, make_writer: MakeWriter = Writer) -> tuple[faust.App, Writer]:
    brokers = ";".join(f"kafka://{h.strip()}" for h in s.bootstrap_servers.split(","))
    app = ReadCommittedApp(
        s.recover_group,
        broker=brokers,
        broker_credentials=_credentials(s),
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        store="memory://",
        # faust makes a data directory at start (default: `<app>-data` in the working
        # directory); the writer keeps nothing there, so a private one under $TMPDIR, which
        # lets it run with a read-only root filesystem (the image's /tmp is an emptyDir).
        datadir=tempfile.mkdtemp(prefix="slipguard-faust-"),
        key_serializer="raw",
        value_serializer="raw",
        broker_commit_interval=1.0,
        # A killed member's partitions move within ~10 s rather than faust's default 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        # A subscribed topic missing from the metadata at the group join is picked up at the
        # next refresh: every 30 s, not aiokafka's default 5 min.
        consumer_metadata_max_age_ms=30_000,
        stream_wait_empty=False,  # unacked records stay unacked at shutdown: they are read again
        producer_acks=-1,
    )
    dlq = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw")

    async def send_dead_letter(key: bytes, value: bytes, headers: OutHeaders) -> None:
        await (await dlq.send(key=key, value=value, headers=headers))  # delivered before the record is acknowledged

    writer = make_writer(s, send_dead_letter)
    stream_ack: Ack | None = None  # the agent's stream.ack, once it runs: the timer flushes with it too
    topics = app.topic(s.recovery_topic, s.late_topic, key_serializer="raw", value_serializer="raw")

    @app.agent(topics, concurrency=1, name="slipguard-recovery-writer")
    async def write(stream: Any) -> None:
        nonlocal stream_ack
        stream.enable_acks = False  # acked by the writer after the database commit
        stream_ack = stream.ack
        async for event in stream.events():
            await writer.add(record_of(event), stream.ack)

    @app.timer(0.05)
    async def flush_due() -> None:
        if stream_ack is not None:
            await writer.flush_if_due(stream_ack)

    def holding() -> None:
        """Readiness and the assigned-partitions gauges, from the consumer's assignment."""
        try:
            assigned = app.consumer.assignment()
        except Exception:  # noqa: BLE001 (consumer not started yet)
            assigned = set()
        writer.assigned = bool(assigned)
        for topic in (s.recovery_topic, s.late_topic):
            held = sum(1 for tp in assigned if tp.topic == topic)
            metrics.ASSIGNED_PARTITIONS.labels(s.recover_group, topic).set(held)

    @app.timer(1.0)
    async def readiness() -> None:
        if not writer.lock.locked():  # a batch being retried updates it itself
            writer.last_loop = time.monotonic()
        holding()

    @app.on_partitions_assigned.connect
    async def assigned(_app: Any, /, *_args: Any, **_kwargs: Any) -> None:
        metrics.REBALANCES.labels(s.recover_group, "assign").inc()
        holding()  # ready, and its gauges set, as soon as partitions are held: not at the next tick

    @app.on_partitions_revoked.connect
    async def revoked(_app: Any, /, *_args: Any, **_kwargs: Any) -> None:
        metrics.REBALANCES.labels(s.recover_group, "revoke").inc()

    return app, writer
