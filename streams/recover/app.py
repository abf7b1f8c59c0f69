"""`slipguard recover`: the faust-streaming app that writes recovered orders to PostgreSQL.

Reads `orders.recovery` and `orders.late` as a read_committed consumer group, with one
agent (concurrency 1). Records are gathered into batches (up to BATCH_MAX, or
BATCH_WITHIN seconds) and each batch is written in one database transaction. Acks are
manual: a record is acknowledged only after its batch is committed (or, if it cannot be
decoded, after it is in the DLQ), so faust never commits an offset past a record whose
rows are not in PostgreSQL. If PostgreSQL is down the batch is retried with backoff;
nothing is acknowledged meanwhile and the group's lag grows until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import ssl
import time
from typing import Any

import faust
import psycopg
from faust.transport.drivers import aiokafka as faust_aiokafka
from pydantic import ValidationError

from schemas import DeadLetter, LateOrder, Recovery
from schemas.fields import from_epoch_ms
from streams.ops import metrics
from streams.ops.logs import safe_error
from streams.recover.store import Item, write_batch
from streams.settings import Settings

log = logging.getLogger("slipguard.recover")

# Errors a later attempt can get past: the server away, restarting, failing over (a
# read-only standby answers until the new primary is promoted), a connection cut, a
# statement cancelled by its timeout, a serialization failure.
RETRIABLE_DB_ERRORS = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction,
                       psycopg.errors.IdleInTransactionSessionTimeout, psycopg.InterfaceError, OSError)
STATEMENT_TIMEOUT_MS = 30_000
CONNECT = {
    "connect_timeout": 5,
    "target_session_attrs": "read-write",  # with several hosts in the URL, the primary
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
}

BATCH_MAX = 1000
BATCH_WITHIN = 0.2  # seconds
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


# ---------------------------------------------------------------- read_committed consumer
# faust asks aiokafka for read_committed only under its own exactly_once mode; the writer
# acks after the database commit instead, but must still never see aborted or open
# transactions of the join.


class _ReadCommittedConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # aiokafka builds its Fetcher from this in start()
        return consumer


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ReadCommittedConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class RecoverApp(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)


def _credentials(s: Settings) -> Any:
    if s.kafka_security_protocol == "PLAINTEXT":
        return None
    context = None
    if s.kafka_security_protocol.endswith("SSL"):
        context = ssl.create_default_context(cafile=s.kafka_ssl_ca_location)
        if s.kafka_ssl_certificate_location:
            password = s.kafka_ssl_key_password.get_secret_value() if s.kafka_ssl_key_password else None
            context.load_cert_chain(s.kafka_ssl_certificate_location, s.kafka_ssl_key_location, password)
    if s.kafka_security_protocol.startswith("SASL"):
        return faust.SASLCredentials(
            username=s.kafka_sasl_username, password=s.kafka_sasl_password.get_secret_value(),  # type: ignore[union-attr]
            mechanism=s.kafka_sasl_mechanism, ssl_context=context,
        )
    return faust.SSLCredentials(context)


# ---------------------------------------------------------------- the writer


class Writer:
    """Batches, writes and acks; shared by the agent and its flush timer."""

    def __init__(self, s: Settings, app: faust.App) -> None:
        self.s = s
        self.app = app
        self.dlq = app.topic(s.dlq_topic, key_serializer="raw", value_serializer="raw")
        self.events: list[Any] = []
        self.first_at = 0.0
        self.lock = asyncio.Lock()
        self.conn: psycopg.AsyncConnection | None = None
        self.last_loop = time.monotonic()
        self.ready = False

    async def connection(self) -> psycopg.AsyncConnection:
        if self.conn is None or self.conn.closed:
            self.conn = await psycopg.AsyncConnection.connect(self.s.database_url.get_secret_value(), **CONNECT)
            # A statement that hangs (a failover, a lock) is cancelled and retried, not waited on forever.
            await self.conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            await self.conn.commit()
        return self.conn

    async def add(self, stream: Any, event: Any) -> None:
        if not self.events:
            self.first_at = time.monotonic()
        self.events.append(event)
        if len(self.events) >= BATCH_MAX:
            await self.flush(stream)

    async def flush_if_due(self, stream: Any) -> None:
        self.last_loop = time.monotonic()
        if self.events and time.monotonic() - self.first_at >= BATCH_WITHIN:
            await self.flush(stream)

    async def flush(self, stream: Any) -> None:
        async with self.lock:
            events, self.events = self.events, []
            if not events:
                return
            started = time.monotonic()
            items, poison = self._decode(events)
            for event, error, summary in poison:
                await self._dead_letter(event, error, summary)
            if items:
                await self._write(items)
            for event in events:
                await stream.ack(event)
            metrics.WRITER_BATCH_SECONDS.observe(time.monotonic() - started)

    def _decode(self, events: list[Any]) -> tuple[list[tuple[Item, Any]], list[tuple[Any, str, str]]]:
        items, poison = [], []
        for event in events:
            msg = event.message
            model = Recovery if msg.topic == self.s.recovery_topic else LateOrder
            try:
                items.append((Item(msg.topic, msg.partition, msg.offset, model.decode(event.value)), event))
            except (ValidationError, ValueError, TypeError) as exc:
                poison.append((event, str(exc).replace("\n", " | ")[:3900], safe_error(exc)))
        return items, poison

    async def _write(self, items: list[tuple[Item, Any]]) -> None:
        """Write a batch; retry while PostgreSQL is unavailable. If PostgreSQL rejects the
        batch itself (a row it cannot store), write its records one by one and send the
        one it rejects to the DLQ: one bad record neither stalls nor loses the others."""
        delay = RETRY_FIRST
        while True:
            try:
                conn = await self.connection()
                outcomes = await write_batch(conn, [item for item, _ in items], self.s.hmac_key)
                for outcome, n in outcomes.items():
                    metrics.WRITER_ROWS.labels(outcome).inc(n)
                return
            except psycopg.errors.DataError as exc:  # and other errors of the data, below
                await self._isolate(items, exc)
                return
            except psycopg.errors.IntegrityError as exc:
                await self._isolate(items, exc)
                return
            except psycopg.errors.ProgrammingError as exc:  # no table, no permission: retrying cannot fix it
                _fatal(f"PostgreSQL refused the writer's statements ({type(exc).__name__}: "
                       f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); run `slipguard db migrate` "
                       "and check the writer role's grants (README: the database); nothing was acknowledged")
            except RETRIABLE_DB_ERRORS as exc:
                metrics.WRITER_DB_ERRORS.inc()
                metrics.WRITER_RETRIES.inc()
                log.warning("PostgreSQL unavailable (%s); retrying the batch of %d in %.1fs, nothing acknowledged",
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                            len(items), delay)
                if self.conn is not None:
                    await self.conn.close()
                    self.conn = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                self.last_loop = time.monotonic()

    async def _isolate(self, items: list[tuple[Item, Any]], exc: Exception) -> None:
        metrics.WRITER_DB_ERRORS.inc()
        if len(items) > 1:
            log.warning("PostgreSQL rejected a batch of %d (%s); writing its records one by one",
                        len(items), type(exc).__name__)
            for one in items:
                await self._write([one])
            return
        item, event = items[0]
        error = f"PostgreSQL rejected the record: {str(exc).strip()}"[:3900]
        await self._dead_letter(event, error, f"PostgreSQL rejected the record: {type(exc).__name__}")

    async def _dead_letter(self, event: Any, error: str, summary: str) -> None:
        msg = event.message
        dead = DeadLetter.of(topic=msg.topic, partition=msg.partition, offset=msg.offset, timestamp_ms=_ms(msg.timestamp),
                             headers=list(msg.headers.items() if isinstance(msg.headers, dict) else msg.headers or []), key=msg.key, value=msg.value, error=error,
                             failed_at=from_epoch_ms(int(time.time() * 1000)))
        fut = await self.dlq.send(key=f"{msg.topic}:{msg.partition}:{msg.offset}".encode(), value=dead.encode())
        await fut  # delivered before the record is acknowledged
        metrics.DLQ_RECORDS.labels("recover", "invalid").inc()
        log.warning("record sent to the DLQ: %s", summary,
                    extra={"topic": msg.topic, "partition": msg.partition, "offset": msg.offset})


def _ms(seconds: float | None) -> int | None:
    """faust gives a record's timestamp in (float) seconds."""
    return None if seconds is None else round(seconds * 1000)


def _fatal(message: str) -> None:
    """Stop the writer with one clear line. Nothing of the current batch was acknowledged,
    so its records are read again by whoever runs next; exiting at once keeps faust from
    going on with a dead agent."""
    from streams.ops.logs import redact

    log.critical("%s", message)
    print(f"slipguard recover: {redact(message)}", file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)


def build_app(s: Settings) -> tuple[faust.App, Writer]:
    brokers = ";".join(f"kafka://{h.strip()}" for h in s.bootstrap_servers.split(","))
    app = RecoverApp(
        s.recover_group,
        broker=brokers,
        broker_credentials=_credentials(s),
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_allow_declare=False,
        topic_disable_leader=True,
        web_enabled=False,
        store="memory://",
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
    writer = Writer(s, app)
    topics = app.topic(s.recovery_topic, s.late_topic, key_serializer="raw", value_serializer="raw")

    @app.agent(topics, concurrency=1, name="slipguard-recovery-writer")
    async def write(stream: Any) -> None:
        stream.enable_acks = False  # acked by the writer after the database commit
        app._writer_stream = stream  # type: ignore[attr-defined]
        async for event in stream.events():
            await writer.add(stream, event)

    @app.timer(0.05)
    async def flush_due() -> None:
        stream = getattr(app, "_writer_stream", None)
        if stream is not None:
            await writer.flush_if_due(stream)

    @app.timer(1.0)
    async def readiness() -> None:
        if not writer.lock.locked():  # a batch being retried updates it itself
            writer.last_loop = time.monotonic()
        try:
            assigned = app.consumer.assignment()
        except Exception:  # noqa: BLE001 (consumer not started yet)
            assigned = set()
        writer.ready = bool(assigned)
        for topic in (s.recovery_topic, s.late_topic):
            metrics.ASSIGNED_PARTITIONS.labels(s.recover_group, topic).set(sum(1 for tp in assigned if tp.topic == topic))

    @app.on_partitions_assigned.connect
    async def assigned(app: Any, assigned: Any, **kwargs: Any) -> None:
        metrics.REBALANCES.labels(s.recover_group, "assign").inc()

    @app.on_partitions_revoked.connect
    async def revoked(app: Any, revoked: Any, **kwargs: Any) -> None:
        metrics.REBALANCES.labels(s.recover_group, "revoke").inc()

    return app, writer
