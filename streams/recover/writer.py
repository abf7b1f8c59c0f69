"""The recovery writer's logic, free of faust: batches, PostgreSQL, dead letters, acks.

Records are gathered into batches (up to BATCH_MAX, or BATCH_WITHIN seconds) and each
batch is written in one database transaction. A record is acknowledged only after its
batch is committed (or, if it cannot be decoded or stored, after it is in the DLQ), so
no offset is ever committed past a record whose rows are not in PostgreSQL. If
PostgreSQL is down the batch is retried with backoff; nothing is acknowledged meanwhile
and the group's lag grows until it is back. A failure retrying cannot fix (a dead letter
the DLQ refuses, a bug) stops the writer at once with one line, nothing of its batch
acknowledged (Writer._commit).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from pydantic import ValidationError

from schemas import DeadLetter, LateOrder, Recovery, dlq, fast
from schemas.fields import from_epoch_ms
from schemas.headers import OutHeaders, headers_for, traceparent
from streams.ops import metrics
from streams.ops.logs import redact, safe_error
from streams.recover.rules import dead_letter_reason
from streams.recover.store import Item, write_batch
from streams.retry import Retry
from streams.settings import Settings

log = logging.getLogger("slipguard.recover")

# Errors a later attempt can get past: the server away, restarting, failing over (a
# read-only standby answers until the new primary is promoted), a connection cut, a
# statement cancelled by its timeout, a serialization failure.
RETRIABLE_DB_ERRORS = (psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction,
                       psycopg.errors.IdleInTransactionSessionTimeout, psycopg.InterfaceError, OSError)
# Errors of the data: PostgreSQL refuses this batch, and would refuse it again.
DATA_ERRORS = (psycopg.errors.DataError, psycopg.errors.IntegrityError)
STATEMENT_TIMEOUT_MS = 30_000
TOMBSTONE = "record: no value (a tombstone), where a recovery or a late order was expected"
CONNECT: dict[str, str | int] = {  # libpq's connection parameters
    "connect_timeout": 5,
    "target_session_attrs": "read-write",  # with several hosts in the URL, the primary
    "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
}

BATCH_MAX = 1000
BATCH_WITHIN = 0.2  # seconds
RETRY_FIRST, RETRY_MAX = 0.2, 5.0


@dataclass(frozen=True, slots=True)
class Record:
    """A consumed record, as the writer needs it; `token` is what `ack` is given."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    headers: list[tuple[str, bytes]]
    key: bytes | None
    value: bytes | None
    token: Any = None


class DeadLetterNotSent(Exception):
    """The DLQ did not take a record's dead letter."""

    def __init__(self, record: Record, dlq_topic: str, exc: BaseException) -> None:
        super().__init__(f"the dead letter of {record.topic}:{record.partition}:{record.offset} was not delivered to "
                         f"{dlq_topic} ({type(exc).__name__}: {_first_line(exc)})")


Ack = Callable[[Any], Awaitable[None]]
# (key, value, headers) of a dead letter; returns once it is delivered
SendDeadLetter = Callable[[bytes, bytes, OutHeaders], Awaitable[None]]
MakeWriter = Callable[[Settings, SendDeadLetter], "Writer"]  # Writer, or one with parts left out (a benchmark's)


class Writer:
    """Batches, writes and acks; shared by the consumer's loop and its flush timer."""

    def __init__(self, s: Settings, send_dead_letter: SendDeadLetter) -> None:
        self.s = s
        self.send_dead_letter = send_dead_letter
        self.records: list[Record] = []
        self.first_at = 0.0
        self.lock = asyncio.Lock()  # held while a batch is written
        self.gate = asyncio.Lock()  # one batch handed over at a time
        self.in_flight: asyncio.Future[None] | None = None
        self.conn: psycopg.AsyncConnection | None = None
        self.last_loop = time.monotonic()
        self.assigned = False  # partitions held (app.py)
        self.database_took_last = True  # the last write tried was committed (or none was tried yet)

    @property
    def ready(self) -> bool:
        """/readyz: partitions held, and PostgreSQL not away: false from the first failed attempt
        to write a batch (the database down, failing over, read-only) until one succeeds."""
        return self.assigned and self.database_took_last

    async def connection(self) -> psycopg.AsyncConnection:
        if self.conn is None or self.conn.closed:
            url = self.s.database_url.get_secret_value()
            self.conn = await psycopg.AsyncConnection.connect(make_conninfo(url, **CONNECT))
            # A statement that hangs (a failover, a lock) is cancelled and retried, not waited on forever.
            await self.conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            await self.conn.commit()
        return self.conn

    async def add(self, record: Record, ack: Ack) -> None:
        if not self.records:
            self.first_at = time.monotonic()
        self.records.append(record)
        if len(self.records) >= BATCH_MAX:
            await self._start(ack)

    async def flush_if_due(self, ack: Ack) -> None:
        self.last_loop = time.monotonic()
        if self.records and time.monotonic() - self.first_at >= BATCH_WITHIN:
            await self._start(ack)

    async def flush(self, ack: Ack) -> None:
        """Write and acknowledge everything gathered so far; returns when it is done."""
        await self._start(ack)
        await self._drain()

    async def _start(self, ack: Ack) -> None:
        """Hand the gathered records to the database and go on gathering the next batch
        while they are written: at most one batch is in flight, and the previous one is
        committed and acknowledged before the next starts, so acks stay in order."""
        async with self.gate:
            await self._drain()
            records, self.records = self.records, []
            if records:
                self.in_flight = asyncio.ensure_future(self._commit(records, ack))

    async def _drain(self) -> None:
        if self.in_flight is not None:
            task, self.in_flight = self.in_flight, None
            await task  # (a batch that failed has stopped the writer already: _commit)

    async def _commit(self, records: list[Record], ack: Ack) -> None:
        """Write and acknowledge a batch, or stop the writer. This runs in a task that is
        awaited only when the next batch is handed over: an error left in it would wait for
        a batch that may never come (the writer silent, nothing acknowledged, /healthz 200).
        Database errors are handled in _write (retried while PostgreSQL is away; a record it
        refuses to the DLQ; no table or grant: stopped). What reaches here retrying cannot
        fix: a dead letter the DLQ did not take (the producer retries retriable errors
        itself, for faust's producer_request_timeout; what is left is a letter too large, a
        topic missing or not allowed, a stopped producer), or a bug. So the writer stops
        with one line, nothing of the batch acknowledged, and the supervisor restarts it."""
        try:
            await self._write_and_ack(records, ack)
        except DeadLetterNotSent as exc:
            _fatal(f"{exc}; nothing of this batch of {len(records)} was acknowledged (check the DLQ topic: its "
                   "max.message.bytes, its existence, this principal's ACLs)")
        except Exception as exc:
            log.error("writing a batch failed", exc_info=exc)
            _fatal(f"writing a batch failed ({type(exc).__name__}: {_first_line(exc)}); nothing of this batch of "
                   f"{len(records)} was acknowledged")

    async def _write_and_ack(self, records: list[Record], ack: Ack) -> None:
        async with self.lock:
            started = time.monotonic()
            items, poison = self._decode(records)
            for record, error, summary in poison:
                await self._dead_letter(record, error, summary)
            if items:
                await self._write(items)
            for record in records:
                await ack(record.token)
            metrics.WRITER_BATCH_SECONDS.observe(time.monotonic() - started)

    def _decode(self, records: list[Record]) -> tuple[list[tuple[Item, Record]], list[tuple[Record, str, str]]]:
        """Each record as an item to store, or as poison: (record, error, summary for the log)."""
        items, poison = [], []
        for record in records:
            unreadable = unreadable_names(record.headers)
            if unreadable:
                shown = ", ".join(repr(name[:64]) for name in unreadable[:3])
                error = (f"a header name is not UTF-8 ({shown}): the contract's header names are UTF-8; the "
                         "headers so named are left out of this letter")
                poison.append((record, error, "a header name is not UTF-8"))
                continue
            if record.value is None:
                poison.append((record, TOMBSTONE, TOMBSTONE))
                continue
            try:
                message: Recovery | LateOrder = (
                    fast.decode(Recovery, record.value) if record.topic == self.s.recovery_topic
                    else fast.decode(LateOrder, record.value))
            except (ValidationError, ValueError, TypeError) as exc:
                full = safe_error(exc) if self.s.minimise_personal_data else str(exc).replace("\n", " | ")[:3900]
                poison.append((record, full, safe_error(exc)))
                continue
            unfit = dead_letter_reason(message)
            if unfit is not None:
                full, summary = unfit
                poison.append((record, summary if self.s.minimise_personal_data else full, summary))
            else:
                items.append((Item(record.topic, record.partition, record.offset, message), record))
        return items, poison

    async def _write(self, items: list[tuple[Item, Record]]) -> None:
        """Write a batch; retry while PostgreSQL is unavailable. If PostgreSQL rejects the
        batch itself (a row it cannot store), write its records one by one and send the
        one it rejects to the DLQ: one bad record neither stalls nor loses the others."""
        async def attempt() -> None:
            self.last_loop = time.monotonic()
            try:
                conn = await self.connection()
                outcomes = await write_batch(conn, [item for item, _ in items], self.s.hmac_keys)
            except RETRIABLE_DB_ERRORS:
                if self.conn is not None:
                    await self.conn.close()
                    self.conn = None
                raise
            self.database_took_last = True
            for outcome, n in outcomes.items():
                metrics.WRITER_ROWS.labels(outcome).inc(n)

        def unavailable(exc: BaseException, delay: float) -> None:
            self.database_took_last = False
            metrics.WRITER_DB_ERRORS.inc()
            metrics.WRITER_RETRIES.inc()
            log.warning("PostgreSQL unavailable (%s); retrying the batch of %d in %.1fs, nothing acknowledged",
                        _first_line(exc), len(items), delay)

        try:
            await Retry("write a batch to PostgreSQL", deadline=None, first_delay=RETRY_FIRST, max_delay=RETRY_MAX,
                        retriable=lambda exc: isinstance(exc, RETRIABLE_DB_ERRORS), on_retry=unavailable).acall(attempt)
        except DATA_ERRORS as exc:
            await self._isolate(items, exc)
        except psycopg.errors.ProgrammingError as exc:  # no table, no permission: retrying cannot fix it
            _fatal(f"PostgreSQL refused the writer's statements ({type(exc).__name__}: {_first_line(exc)}); run "
                   "`slipguard db migrate` and check the writer role's grants (docs/concepts/writer.md); nothing was "
                   "acknowledged")

    async def _isolate(self, items: list[tuple[Item, Record]], exc: Exception) -> None:
        metrics.WRITER_DB_ERRORS.inc()
        if len(items) > 1:
            log.warning("PostgreSQL rejected a batch of %d (%s); writing its records one by one",
                        len(items), type(exc).__name__)
            for one in items:
                await self._write([one])
            return
        _, record = items[0]
        # (PostgreSQL's message can quote the row's values: only its kind when minimising.)
        detail = type(exc).__name__ if self.s.minimise_personal_data else str(exc).strip()
        error = f"PostgreSQL rejected the record: {detail}"[:3900]
        await self._dead_letter(record, error, f"PostgreSQL rejected the record: {type(exc).__name__}")

    def dead_letter_of(self, record: Record, error: str) -> tuple[bytes, bytes, OutHeaders]:
        """The DLQ record (key, value, headers) of one input record."""
        readable = [(name, value) for name, value in record.headers if not _unreadable(name)]
        value = dlq.encoded(topic=record.topic, partition=record.partition, offset=record.offset,
                            timestamp_ms=record.timestamp_ms, headers=readable, key=record.key,
                            value=record.value, error=error, failed_at=from_epoch_ms(int(time.time() * 1000)),
                            minimise=self.s.minimise_personal_data,
                            headers_unreadable=len(readable) < len(record.headers))
        key = f"{record.topic}:{record.partition}:{record.offset}".encode()
        return key, value, headers_for(DeadLetter, [traceparent(record.headers)])

    async def _dead_letter(self, record: Record, error: str, summary: str) -> None:
        try:
            # delivered before the record is acknowledged
            await self.send_dead_letter(*self.dead_letter_of(record, error))
        except Exception as exc:
            raise DeadLetterNotSent(record, self.s.dlq_topic, exc) from exc
        metrics.DLQ_RECORDS.labels("recover", "invalid").inc()
        log.warning("record sent to the DLQ: %s", summary,
                    extra={"topic": record.topic, "partition": record.partition, "offset": record.offset})


def _unreadable(name: str) -> bool:
    # Only a name decoded with surrogateescape holds lone surrogates, which UTF-8 cannot encode.
    if name.isascii():
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def unreadable_names(headers: list[tuple[str, bytes]]) -> list[bytes]:
    """The header names of a record that were not UTF-8 on the wire, as they were: the
    reader decodes such a name with surrogateescape (faust_compat.py)."""
    return [name.encode("utf-8", "surrogateescape") for name, _ in headers if _unreadable(name)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _fatal(message: str) -> None:
    """Stop the writer with one clear line. Nothing of the current batch was acknowledged,
    so its records are read again by whoever runs next; exiting at once keeps the
    consumer from going on with a dead writer."""
    log.critical("%s", message)
    print(f"slipguard recover: {redact(message)}", file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(1)
