"""The join's Kafka runtime: consume, feed the core, produce its decisions, commit.

One process is one member of the join consumer group. Payments and orders are
co-partitioned (same partition count, keyed by order_id, murmur2), and the range
assignor gives partition p of both topics to the same member; the state of pair p lives
in a PartitionJoin and in partition p of the compacted changelog topic.
"""

from __future__ import annotations

import gc
import json
import logging
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from pydantic import ValidationError

from schemas import Anomaly, DeadLetter, LateOrder, Order, Payment, Recovery, recovery_id_for
from schemas.base import check_no_duplicate_keys
from schemas.fields import from_epoch_ms
from streams.ops import metrics
from streams.join import changelog
from streams.join.core import ORDER, PAYMENT, Decisions, JoinParams, PartitionJoin
from streams.kafka import config
from streams.kafka.topics import TopicLayoutError, ensure_join_topics
from streams.ops.logs import safe_error
from streams.retry import Retry, Stopped
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

_EOF = KafkaError._PARTITION_EOF
_NOT_ALLOWED = {KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION}
BACKLOG_COMMIT_FACTOR = 5  # commit interval multiplier while batches come back full
HOLD_MAX_RECORDS = 100_000  # records one partition of a pair may hold back waiting for the other
HOLD_MAX_SECONDS = 5.0  # how long they may wait
TXN_RETRY_SECONDS = 60.0  # how long a commit is retried before the transaction is given up
ABORT_RETRY_SECONDS = 30.0  # how long an abort is retried before the producer is replaced
CALL_SLACK = 10.0  # a transactional call's hard deadline beyond its own timeout (which librdkafka may ignore)
STOP_GRACE = 5.0  # how long a hanging call may hold up a requested stop
# Payments and orders are a few hundred bytes; a valid one can carry ignored extra fields,
# so the raw record is capped: every state entry and output then fits a 1 MB record.
MAX_INPUT_BYTES = 64 * 1024
MIN_EVENT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: anything older is a wrong clock or unit
RESTORE_STALL_SECONDS = 120.0  # a restore without progress for this long gives up
# Delivery errors that reading the batch again cannot fix: stop with one line, not a loop.
UNFIXABLE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE,
                       KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                       KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.RECORD_LIST_TOO_LARGE,
                       KafkaError.INVALID_RECORD, KafkaError.UNKNOWN_TOPIC_OR_PART})
FENCED_LIMIT, FENCED_WINDOW = 3, 60.0  # fenced this often this fast: another worker has our instance id
# Errors that mean another producer took this worker's transactional.id (or the
# coordinator bumped its epoch after a transaction outlived its timeout).
FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
# Straight to pydantic-core: the model classes' wrappers cost a visible share per record.
_VALIDATE = {PAYMENT: Payment.__pydantic_validator__.validate_json, ORDER: Order.__pydantic_validator__.validate_json}


def tune_gc() -> None:
    """Fewer cyclic-GC passes: the join allocates per record but makes no cycles, and each
    pass walks the (large) state. Measured: about 5-10 % less CPU per event."""
    gc.set_threshold(100_000, 50, 1_000)


def _bad_time(ts: int, now_ms: int, max_future_ms: int) -> str:
    if ts < 0:
        return "record has no timestamp; the join needs the Kafka timestamp as event time"
    if ts < MIN_EVENT_MS:
        return f"record timestamp {ts} ms is before 2000-01-01; a wrong clock or unit at the producer"
    return (f"record timestamp {ts} ms is {(ts - now_ms) / 1000:.0f} s ahead of this worker's clock, more than "
            f"SLIPGUARD_MAX_FUTURE ({max_future_ms / 1000:.0f} s); a wrong clock or unit (microseconds?) "
            "at the producer")


class JoinFailed(Exception):
    """The worker cannot go on (another worker with its instance id, a broken topic layout)."""


class Wedged(Exception):
    """A client call did not return within its hard deadline."""


def group_protocol_conf(protocol: str) -> dict[str, object]:
    """Both give partition p of payments and orders to the same member (co-partitioning):
    classic with the client-side range assignor (eager: every member revokes everything on
    every change); consumer (KIP-848) with the broker's range assignor, which moves only
    the partitions that change owner. Under KIP-848 the session timeout is the broker's
    (group.consumer.session.timeout.ms, 45 s by default), so a crashed member's partitions
    move later than with classic's 10 s."""
    if protocol == "consumer":
        return {"group.protocol": "consumer", "group.remote.assignor": "range",
                "session.timeout.ms": None, "heartbeat.interval.ms": None, "partition.assignment.strategy": None}
    return {"partition.assignment.strategy": "range"}


def is_fenced(err: KafkaError) -> bool:
    return err.code() in FENCED


def duplicate_instance(s: Settings) -> str:
    return (f"another worker of group {s.join_group} runs with SLIPGUARD_INSTANCE_ID={s.instance_id} and took "
            "over its identity; give each worker its own instance id, or leave it unset")


@dataclass
class PairState:
    """What the worker holds for partition p of payments and orders.

    Records are fed to the core in event-time order across the two partitions: each
    partition's fetched records wait in `held` until the other partition has a record
    at least as late (or has been read to its end, or the wait is too long or too big).
    Held records are not processed, so their offsets are not committed: nothing to persist.
    """

    core: PartitionJoin
    next_offset: dict[int, int] = field(default_factory=dict)  # kind -> next offset to commit (processed)
    at_end: list[bool] = field(default_factory=lambda: [False, False])  # kind -> nothing unread or unprocessed
    held: tuple[deque, deque] = field(default_factory=lambda: (deque(), deque()))  # kind -> (ts, record) fetched, not fed
    fetched_to: list[int] = field(default_factory=lambda: [0, 0])  # kind -> next offset fetched
    fetch_end: list[bool] = field(default_factory=lambda: [False, False])  # kind -> fetched to the partition's end
    holding_since: float | None = None


def merge(pair: PairState, feed, out: Decisions, now: float) -> None:
    """Feed a pair's held records to `feed` in event-time order across its two partitions.

    Records of one partition wait while the other has none held, unless the other has
    nothing more to give now (read to its end), or the wait grows too long or too big. The
    wait is counted from the other partition's last delivery, not from the first hold.
    """
    held_p, held_o = pair.held
    merged = bool(held_p and held_o)
    while held_p and held_o:
        if held_o[0][0] < held_p[0][0]:
            feed(pair, ORDER, *held_o.popleft(), out)
        else:
            feed(pair, PAYMENT, *held_p.popleft(), out)
    kind, rest = (PAYMENT, held_p) if held_p else (ORDER, held_o)
    if not rest:
        pair.holding_since = None
        return
    if merged or pair.holding_since is None:
        pair.holding_since = now
    if pair.fetch_end[1 - kind] or len(rest) > HOLD_MAX_RECORDS or now - pair.holding_since > HOLD_MAX_SECONDS:
        while rest:
            feed(pair, kind, *rest.popleft(), out)
        pair.holding_since = None


class JoinWorker:
    def __init__(self, settings: Settings, *, now_ms=lambda: int(time.time() * 1000)) -> None:
        self.s = settings
        self.now_ms = now_ms
        self.eos = settings.processing_guarantee == "exactly_once"
        self.params = JoinParams(settings.order_timeout, settings.grace, settings.late_horizon, settings.hmac_key)
        self.topics = {settings.payments_topic: PAYMENT, settings.orders_topic: ORDER}
        self.topic_of = {PAYMENT: settings.payments_topic, ORDER: settings.orders_topic}
        self.pairs: dict[int, PairState] = {}
        self.stopping = False
        self.in_txn = False
        self.uncommitted = False
        self.last_commit = time.monotonic()
        self.restored = False  # assigned partitions restored
        self.broker_up = True  # from librdkafka's statistics: a broker connection is up
        self.latest_ok_ms = now_ms() + settings.max_future  # records stamped later go to the DLQ
        self.last_loop = time.monotonic()

        group = settings.join_group
        metrics.JOIN_ORDER_TIMEOUT.labels(group).set(settings.order_timeout / 1000)
        self.abandoned = False  # stopped mid-commit: nothing more may be committed by this process
        consumer_conf = {
            "enable.partition.eof": True,
            "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 1_048_576,
            # Readiness follows the broker connections (see _on_stats).
            "statistics.interval.ms": 1_000, "stats_cb": self._on_stats,
        }
        consumer_conf |= group_protocol_conf(settings.group_protocol)
        # No static membership (group.instance.id) with the classic protocol: after a broker
        # outage longer than the session timeout, librdkafka rejoins and is then fenced by
        # its own new membership ("Static consumer fenced by other consumer with same
        # group.instance.id", a fatal error; librdkafka issue 3437), seen here on a broker
        # killed and restarted under load.
        self.consumer = Consumer({k: v for k, v in config.consumer(settings, group, **consumer_conf).items()
                                  if v is not None})
        self.restorer = Consumer(config.consumer(settings, f"{group}-restore", **{"enable.partition.eof": True}))
        # Log ends of the changelog for restore. A consumer's watermark query, not the admin
        # client's list_offsets: admin requests that time out while the broker is away can
        # abort the process inside librdkafka (enq_once assertion, librdkafka issue 4605).
        self.watermarks = self._new_watermarks()
        self.delivery_failures = 0
        self.fenced_at: list[float] = []  # when this worker's producer was last fenced
        self.unfixable: tuple[str, KafkaError] | None = None  # a delivery error that retrying cannot fix
        self.staged: dict[object, int] = {}  # counter -> outputs produced but not committed yet
        self.staged_latencies: list[float] = []
        # Unique per process unless SLIPGUARD_INSTANCE_ID is set: zombie fencing comes from
        # the consumer group (KIP-447), and a stable id lets a restarted worker fence its
        # own predecessor at once instead of waiting for the broker to abort its transaction.
        self.transactional_id = f"{group}-{settings.worker_id()}"
        self.producer_conf = config.producer(
            settings, transactional_id=self.transactional_id if self.eos else None,
            **({"transaction.timeout.ms": 10_000} if self.eos else {}),
            **{"delivery.report.only.error": True, "on_delivery": self._on_delivery, "linger.ms": 50},
        )
        self.producer = Producer(self.producer_conf)

    # ------------------------------------------------------------ lifecycle

    def run(self, *, max_seconds: float | None = None) -> None:
        """Consume until stop() (SIGTERM/SIGINT) or max_seconds; then commit and leave the group."""
        self.subscribe()
        started = time.monotonic()
        try:
            while not self.stopping:
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
                try:
                    self.step()
                except KafkaException as exc:
                    self._on_client_error(exc)
                except Stopped as exc:
                    self._abandon(exc)
            self.commit()
        except JoinFailed:
            self.abandoned = True  # nothing more is committed or flushed by this process
            raise
        finally:
            self.close()

    def subscribe(self) -> None:
        """Start: check the topics (creating the changelog if missing), initialise
        transactions (exactly_once), then join the group."""
        try:
            said = ensure_join_topics(self.s, stopping=lambda: self.stopping)
        except TopicLayoutError as exc:
            raise JoinFailed(str(exc)) from None
        if said is None:
            return  # stopped
        log.info("%s", said)
        if self.eos and not self._init_transactions():
            return
        s = self.s
        self.consumer.subscribe([s.payments_topic, s.orders_topic], on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _init_transactions(self, timeout: float | None = 60.0) -> bool:
        """Fence an earlier incarnation with the same transactional.id and abort its open
        transaction. Waits (a coordinator may still be loading; None: as long as it takes)
        in short steps, so a stop request is seen; False if stopped first."""
        give_up = None if timeout is None else time.monotonic() + timeout
        while not self.stopping:
            try:
                self.producer.init_transactions(1)
                return True
            except KafkaException as exc:
                err = exc.args[0]
                if not err.retriable() or (give_up is not None and time.monotonic() > give_up):
                    raise JoinFailed(f"cannot initialise transactions: {err}") from exc
        return False

    @property
    def ready(self) -> bool:
        """/readyz: assigned partitions restored, and the broker reachable."""
        return self.restored and self.broker_up

    def _on_stats(self, stats_json: str) -> None:
        # Served from consume(), once a second: which brokers (not bootstrap stand-ins) are up.
        try:
            brokers = json.loads(stats_json).get("brokers", {}).values()
        except ValueError:
            return
        self.broker_up = any(b.get("state") == "UP" for b in brokers if b.get("nodeid", -1) >= 0)

    def stop(self, *_: object) -> None:
        self.stopping = True

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def close(self) -> None:
        try:
            self.consumer.close()  # leaves the group; on_revoke commits what is left
        finally:
            self.restorer.close()
            self.watermarks.close()
            if not self.abandoned:
                self.producer.flush(10)

    def _on_client_error(self, exc: KafkaException) -> None:
        """A client error outside the commit (a produce or begin_transaction refused).

        A fatal producer error (fenced included): a new producer, and the uncommitted work
        is read again (see _replace_producer for a duplicate instance id). Anything else:
        the open transaction, if any, is aborted and the work read again.
        """
        err = exc.args[0]
        log.warning("Kafka client error outside a commit (%s); reading the uncommitted work again", err)
        metrics.JOIN_COMMITS.labels("aborted").inc()
        if self.eos and (err.fatal() or is_fenced(err)):
            self._replace_producer(exc)
        elif self.in_txn:
            self._abort()
        self.uncommitted = False
        self._rewind()

    # ------------------------------------------------------------ the loop

    def step(self) -> None:
        """One batch: consume, decide, produce; commit when the interval has passed."""
        msgs = self.consumer.consume(self.s.batch_size, timeout=0.05)
        self.last_loop = time.monotonic()
        self.latest_ok_ms = self.now_ms() + self.s.max_future
        self.producer.poll(0)
        out = Decisions()
        if msgs:
            self._process(msgs, out)
        self._feed_pairs(out)
        now = self.now_ms()
        for pair in self.pairs.values():
            pair.core.advance(now, pair.at_end[PAYMENT], pair.at_end[ORDER], out)
        if out:
            self._emit(out, now)
        if out.matched:
            self._stage(metrics.JOIN_MATCHED, out.matched)
        if out.duplicates:
            self._stage(metrics.JOIN_DUPLICATES, out.duplicates)
        if self.uncommitted:
            elapsed_ms = (time.monotonic() - self.last_commit) * 1000
            # Caught up, commit every interval: outputs become visible quickly. Working
            # through a backlog (full batches), commit less often: each commit is a few
            # broker round trips in which nothing is processed.
            backlog = len(msgs) >= self.s.batch_size
            if elapsed_ms >= self.s.commit_interval * (BACKLOG_COMMIT_FACTOR if backlog else 1):
                self.commit()

    def _process(self, msgs: list[Message], out: Decisions) -> None:
        topics = self.topics
        pairs = self.pairs
        limit = self.latest_ok_ms
        counts = [0, 0]
        for m in msgs:
            err = m.error()
            kind = topics.get(m.topic())
            pair = pairs.get(m.partition())
            if err is not None:
                if err.code() == _EOF and kind is not None:
                    # The end-of-partition event follows the partition's records in the batch.
                    if pair is not None and pair.fetched_to[kind] <= m.offset():
                        pair.fetch_end[kind] = True
                    continue
                if err.fatal() or err.code() == KafkaError._FATAL:
                    # The consumer cannot be used again; its partitions go to the other
                    # members, and a supervisor starts this worker anew.
                    raise JoinFailed(f"the Kafka consumer failed fatally ({err.str()}); exiting so that the "
                                     "worker is started again")
                log.warning("consumer error: %s", err)
                continue
            if pair is None:
                continue  # revoked meanwhile; the new owner reads it again
            ts = m.timestamp()[1]
            if ts > limit or ts < MIN_EVENT_MS:
                ts = -1  # bound for the DLQ: merged first, so it holds up nothing behind it
            pair.held[kind].append((ts, m))  # type: ignore[index]  (read the timestamp once)
            pair.fetched_to[kind] = m.offset() + 1  # type: ignore[index]
            pair.fetch_end[kind] = False  # type: ignore[index]
            counts[kind] += 1  # type: ignore[index]
        if counts[PAYMENT]:
            metrics.JOIN_RECORDS.labels(self.s.payments_topic).inc(counts[PAYMENT])
        if counts[ORDER]:
            metrics.JOIN_RECORDS.labels(self.s.orders_topic).inc(counts[ORDER])

    def _feed_pairs(self, out: Decisions) -> None:
        """Feed each pair's held records to its core, merging the two partitions by event time."""
        now = time.monotonic()
        for pair in self.pairs.values():
            held_p, held_o = pair.held
            if held_p or held_o:
                self._begin()
                merge(pair, self._feed_one, out, now)
                self.uncommitted = True
            pair.at_end[PAYMENT] = pair.fetch_end[PAYMENT] and not held_p
            pair.at_end[ORDER] = pair.fetch_end[ORDER] and not held_o

    def _feed_one(self, pair: PairState, kind: int, ts: int, m: Message, out: Decisions) -> None:
        pair.next_offset[kind] = m.offset() + 1
        raw = m.value()
        try:
            if raw is not None and len(raw) > MAX_INPUT_BYTES:
                raise ValueError(f"record value of {len(raw)} bytes is over the join's limit of {MAX_INPUT_BYTES} "
                                 "bytes for one payment or order")
            rec = _VALIDATE[kind](raw)
            check_no_duplicate_keys(raw, rec)
            if m.key() != rec.order_id.encode():
                raise ValueError(f"record key {m.key()!r} is not the order_id {rec.order_id!r}: "
                                 "producers must key by order_id")
            if ts < 0:  # _process marked it: no timestamp, or one out of bounds
                raise ValueError(_bad_time(m.timestamp()[1], self.latest_ok_ms - self.s.max_future,
                                           self.s.max_future))
        except (ValidationError, ValueError, TypeError, UnicodeDecodeError) as exc:
            self._dead_letter(m, exc)
            return
        if kind == PAYMENT:
            pair.core.on_payment(ts, rec, raw, out)
        else:
            pair.core.on_order(ts, rec, raw, out)

    # ------------------------------------------------------------ outputs

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_failures += 1
            if err.code() in UNFIXABLE and self.unfixable is None:
                self.unfixable = (msg.topic(), err)
            if err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):  # purged on purpose
                log.error("delivery to %s failed: %s", msg.topic(), err)

    def _begin(self) -> None:
        if self.eos and not self.in_txn:
            self.producer.begin_transaction()
            self.in_txn = True

    def _produce(self, topic: str, key: bytes | str, value: bytes, partition: int | None = None) -> None:
        while True:
            try:
                if partition is None:
                    self.producer.produce(topic, value, key)
                else:
                    self.producer.produce(topic, value, key, partition)
                return
            except BufferError:
                self.producer.poll(0.05)  # local queue full: let deliveries drain

    def _emit(self, out: Decisions, now: int) -> None:
        self._begin()
        s = self.s
        detected = from_epoch_ms(now)
        for r in out.recoveries:
            p = r.payment
            msg = Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                           deadline=from_epoch_ms(r.deadline_ms), detected_at=detected)
            self._produce(s.recovery_topic, p.order_id, msg.encode())
            self.staged_latencies.append(max(0.0, (now - r.deadline_ms) / 1000))
        for late in out.late:
            msg = LateOrder(order_id=late.order.order_id, order=late.order, payment_id=late.payment_id,
                            recovery_id=late.recovery_id, lateness_seconds=late.lateness_ms / 1000)
            self._produce(s.late_topic, late.order.order_id, msg.encode())
        for a in out.anomalies:
            msg = Anomaly(kind=a.kind, order_id=a.order_id, payments=list(a.payments), order=a.order,  # type: ignore[arg-type]
                          detected_at=detected)
            self._produce(s.anomalies_topic, a.order_id, msg.encode())
            self._stage(metrics.JOIN_ANOMALIES.labels(a.kind), 1)
        if out.recoveries:
            self._stage(metrics.JOIN_RECOVERED, len(out.recoveries))
            log.debug("recovered %d payment(s) without an order", len(out.recoveries))
        if out.late:
            self._stage(metrics.JOIN_LATE, len(out.late))
        self.uncommitted = True

    def _dead_letter(self, m: Message, exc: Exception) -> None:
        dead = DeadLetter.of(topic=m.topic(), partition=m.partition(), offset=m.offset(), timestamp_ms=m.timestamp()[1],
                             headers=m.headers(), key=m.key(), value=m.value(), error=str(exc),
                             failed_at=from_epoch_ms(self.now_ms()))
        self._produce(self.s.dlq_topic, f"{m.topic()}:{m.partition()}:{m.offset()}", dead.encode())
        reason = "invalid" if isinstance(exc, ValidationError) else "rejected"
        self._stage(metrics.DLQ_RECORDS.labels("join", reason), 1)
        log.warning("record sent to the DLQ: %s", safe_error(exc),
                    extra={"topic": m.topic(), "partition": m.partition(), "offset": m.offset()})

    # ------------------------------------------------------------ commit

    def commit(self, *, handing_over: bool = False) -> None:
        """Commit one interval's work. The order of effects is the point:

        1. write the net state changes of every pair to its changelog partition;
        2. exactly_once: send the consumed offsets to the transaction and commit it, so
           outputs, state and offsets become visible together, or not at all;
           at_least_once: flush outputs, then state, and only then commit offsets, so a
           crash repeats work (same recovery_id) but never loses it.

        A failed commit is aborted and its work read again (abortable error, or retriable
        for too long); a producer that is fenced, fatally failed, or hangs in a call past
        its hard deadline is replaced. A stop request while a commit cannot complete
        abandons it: the broker completes or aborts the open transaction, and whoever owns
        the partitions next reads from the last committed offsets.
        """
        if self.abandoned or (not self.uncommitted and not self.in_txn):
            return
        try:
            written = self._write_and_commit()
            metrics.JOIN_CHANGELOG_RECORDS.inc(written)
            metrics.JOIN_COMMITS.labels("committed").inc()
            self._count_committed()
        except KafkaException as exc:
            metrics.JOIN_COMMITS.labels("aborted").inc()
            self._recover_from_failed_commit(exc, rewind=not handing_over)
        except Wedged as exc:
            metrics.JOIN_COMMITS.labels("aborted").inc()
            self._replace_producer(exc, wedged=True)
            if not handing_over:
                self._rewind()
        except Stopped as exc:
            self._abandon(exc)
        finally:
            self.staged.clear()  # committed and counted above, or dropped with the work
            self.staged_latencies.clear()
            self.uncommitted = False
            self.last_commit = time.monotonic()
            self._update_gauges()

    def _stage(self, counter, amount: int) -> None:
        """Counters of outputs count what was committed: staged here until the commit."""
        self.staged[counter] = self.staged.get(counter, 0) + amount

    def _count_committed(self) -> None:
        for counter, amount in self.staged.items():
            counter.inc(amount)
        for seconds in self.staged_latencies:
            metrics.JOIN_DETECTION_LATENCY.observe(seconds)

    def _write_and_commit(self) -> int:
        offsets = self._offsets()
        if not self.eos:
            self.producer.flush()
        self._begin()
        written = 0
        topic = self.s.changelog_topic
        produce = self.producer.produce
        encode_key, encode_value = changelog.encode_key, changelog.encode_value
        for p, pair in self.pairs.items():
            for kind, oid, entry in pair.core.take_changes():
                key = encode_key(kind, oid)
                value = None if entry is None else encode_value(kind, entry)
                try:
                    produce(topic, value, key, p)
                except BufferError:
                    self._produce(topic, key, value, p)  # type: ignore[arg-type]  (waits for room)
                written += 1
        if self.eos:
            if offsets:
                meta = self.consumer.consumer_group_metadata()
                self._retrying(lambda: self.producer.send_offsets_to_transaction(offsets, meta, 10),
                               "send offsets to the transaction", limit=TXN_RETRY_SECONDS, hard=10 + CALL_SLACK)
            self._retrying(lambda: self.producer.commit_transaction(30), "commit the transaction",
                           limit=TXN_RETRY_SECONDS, hard=30 + CALL_SLACK)
            self.in_txn = False
        else:
            remaining = self.producer.flush(60)
            if remaining or self.delivery_failures:
                failed, self.delivery_failures = self.delivery_failures, 0
                raise KafkaException(KafkaError(KafkaError._MSG_TIMED_OUT,
                                                f"{remaining} records undelivered, {failed} failed"))
            if offsets:
                self.consumer.commit(offsets=offsets, asynchronous=False)
        return written

    def _retrying(self, call, what: str, *, limit: float, hard: float) -> None:
        """A transactional call whose retriable errors (broker unreachable, coordinator
        moving) are retried for up to `limit` seconds: it resumes where it was, and the
        transaction stays intact. Rewinding instead would leave the open transaction to be
        committed later with the batch's outputs in it twice. Abortable and fatal errors,
        and retriable ones past the limit, go to the caller.

        Each attempt has a hard deadline (`hard` seconds): librdkafka's
        send_offsets_to_transaction ignores its own timeout when the group coordinator is
        down (librdkafka issues 5456 and 5511), and blocked there a worker never processed
        again after a broker was killed and ignored SIGTERM."""
        def retriable(exc: BaseException) -> bool:
            if not isinstance(exc, KafkaException):
                return False
            err = exc.args[0]
            return err.retriable() and not err.txn_requires_abort() and not err.fatal()

        Retry(what, deadline=limit, retriable=retriable, first_delay=0.1, max_delay=1.0,
              stopping=lambda: self.stopping).call(lambda: self._bounded(call, what, hard))

    def _bounded(self, call, what: str, seconds: float):
        """Run a blocking client call with a hard deadline (and at most STOP_GRACE seconds
        once a stop is requested); past it, raise Wedged and leave the call to its thread."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["result"] = call()
            except BaseException as exc:  # noqa: BLE001 (handed to the caller below)
                box["error"] = exc

        thread = threading.Thread(target=target, name=f"kafka-call: {what}", daemon=True)
        thread.start()
        started = time.monotonic()
        give_up = started + seconds
        while True:
            thread.join(0.2)
            if not thread.is_alive():
                break
            now = time.monotonic()
            if self.stopping:
                give_up = min(give_up, now + STOP_GRACE)
            if now > give_up:
                raise Wedged(f"{what} did not return within {now - started:.0f}s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("result")

    def _abort(self) -> None:
        """Abort the open transaction. A producer that cannot (the broker away for long, a
        coordinator it never finds again, a call that hangs) is replaced: the new one's
        init_transactions fences it and aborts its transaction."""
        try:
            self._retrying(lambda: self.producer.abort_transaction(10), "abort the transaction",
                           limit=ABORT_RETRY_SECONDS, hard=10 + CALL_SLACK)
        except (KafkaException, Wedged) as exc:
            self._replace_producer(exc, wedged=isinstance(exc, Wedged))
            return
        self.in_txn = False

    def _replace_producer(self, cause: BaseException, *, wedged: bool = False) -> None:
        """Start over with a new producer of the same transactional.id; its
        init_transactions fences the old one and aborts the old one's open transaction. A
        wedged old producer is left alone (a call may still be inside it).

        Fencing alone does not prove another worker has this transactional.id: the
        transaction coordinator also bumps the epoch when it aborts a transaction that
        outlived transaction.timeout.ms (a broker outage), and librdkafka reports that as
        fenced. Fenced again and again within a minute, with an instance id configured,
        it does: then one clear line, not a fencing loop."""
        if cause.args and isinstance(cause.args[0], KafkaError) and is_fenced(cause.args[0]):
            now = time.monotonic()
            self.fenced_at = [t for t in self.fenced_at if now - t < FENCED_WINDOW] + [now]
            if self.s.instance_id and len(self.fenced_at) >= FENCED_LIMIT:
                raise JoinFailed(duplicate_instance(self.s)) from cause
        log.warning("starting over with a new producer (%s)", cause.args[0] if cause.args else cause)
        if not wedged:
            try:
                self.producer.purge()
            except KafkaException:
                pass  # a fatally failed producer may refuse; it is dropped either way
        self.producer = Producer(self.producer_conf)
        self.in_txn = False
        if self.eos and not self._init_transactions(timeout=None):
            self._abandon(cause)

    def _abandon(self, cause: BaseException) -> None:
        log.warning("stopping with a commit that could not complete (%s); the broker completes or aborts "
                    "its transaction, and the partitions' next owner reads from the last committed offsets",
                    cause.args[0] if cause.args else cause)
        self.abandoned = True
        self.stopping = True

    def _offsets(self) -> list[TopicPartition]:
        return [TopicPartition(self.topic_of[kind], p, off)
                for p, pair in self.pairs.items() for kind, off in pair.next_offset.items()]

    def _recover_from_failed_commit(self, exc: KafkaException, *, rewind: bool) -> None:
        err = exc.args[0]
        if self.unfixable is not None:
            topic, cause = self.unfixable
            raise JoinFailed(f"cannot write to {topic}: {cause.str()}; reading the batch again would fail the same "
                             "way. Check the topic's max.message.bytes and this principal's ACLs") from exc
        if self.eos and not err.fatal() and not is_fenced(err):  # abortable, or retriable for too long
            log.warning("transaction failed (%s); aborting it and reading the batch again", err)
            self._abort()
        elif self.eos:  # fatal: this producer cannot be used again
            self._replace_producer(exc)
        else:
            log.warning("commit failed (%s); reading the uncommitted records again", err)
        if rewind and not self.abandoned:
            self._rewind()

    def _rewind(self) -> None:
        """Forget uncommitted work: restore state from the changelog and seek to committed offsets."""
        self.staged.clear()
        self.staged_latencies.clear()
        assigned = self.consumer.assignment()
        parts = sorted({tp.partition for tp in assigned})
        self._restore(parts)
        committed = self._patiently(lambda: self.consumer.committed(assigned, timeout=10),
                                    "read the group's committed offsets")
        for tp in committed:
            try:
                self.consumer.seek(TopicPartition(tp.topic, tp.partition,
                                                  tp.offset if tp.offset >= 0 else OFFSET_BEGINNING))
            except KafkaException as exc:  # revoked meanwhile: its next owner starts from the committed offset
                log.warning("cannot rewind %s [%d]: %s", tp.topic, tp.partition, exc.args[0])

    # ------------------------------------------------------------ rebalance

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.s.join_group, "assign").inc()
        # Incremental (KIP-848): only the partitions added; a pair already held is not restored again.
        parts = sorted({tp.partition for tp in partitions} - set(self.pairs))
        self.restored = False
        self._check_co_partitioned()
        log.info("assigned partitions %s; restoring their state", parts)
        self._restore(parts)
        self._update_gauges()
        self.restored = not self.stopping

    def _check_co_partitioned(self) -> None:
        """Payments, orders and the changelog must have equal partition counts: the join
        pairs partition p of each. Checked on every assignment (partitions may be added)."""
        topics = [self.s.payments_topic, self.s.orders_topic, self.s.changelog_topic]
        meta = self._patiently(lambda: self.watermarks.list_topics(timeout=10), "read topic metadata")
        counts = {t: len(meta.topics[t].partitions) if t in meta.topics and meta.topics[t].error is None else 0
                  for t in topics}
        if len(set(counts.values())) != 1:
            found = ", ".join(f"{t}={n}" for t, n in counts.items())
            raise JoinFailed(f"payments, orders and the changelog must have the same partition count to be "
                             f"joined; found {found}. Stop every join worker, make the counts equal "
                             "(see README: adding partitions), then start them again")

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.s.join_group, "revoke").inc()
        log.info("revoked partitions %s; committing and handing them over", sorted({tp.partition for tp in partitions}))
        self.commit(handing_over=True)  # hand the partitions over with everything done so far committed
        for p in {tp.partition for tp in partitions}:
            self.pairs.pop(p, None)
        self._update_gauges()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        metrics.REBALANCES.labels(self.s.join_group, "lost").inc()
        log.warning("partitions lost (session timed out?); dropping uncommitted work")
        if self.in_txn:
            self._abort()
        for p in {tp.partition for tp in partitions}:
            self.pairs.pop(p, None)
        self.uncommitted = False

    def _restore(self, parts: list[int]) -> None:
        """Rebuild the state of each pair from its changelog partition, read to its end.

        Read (read_committed) to the log end as it is now, not to the last stable offset:
        the previous owner's last transaction may still be completing, its state committed
        but its markers not yet written. An open transaction of a dead worker holds the
        stable end back until the broker aborts it (transaction.timeout.ms, checked every
        10 s by default). So the restore waits as long as it makes progress or is waiting
        for that, gives up after RESTORE_STALL_SECONDS without any, and stops at once on a
        stop request (installing nothing: the partitions' next owner restores them).
        """
        if not parts:
            return
        started = time.monotonic()
        topic = self.s.changelog_topic
        fresh = {p: PairState(PartitionJoin(self.params)) for p in parts}
        self.restorer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        try:
            latest = self._read_changelog(topic, parts)
        finally:
            self.restorer.unassign()
        if latest is None:
            return  # stopped
        now = self.now_ms()
        for p, entries in latest.items():
            changelog.restore_into(fresh[p].core, entries, now)
        self.pairs.update(fresh)
        took = time.monotonic() - started
        metrics.JOIN_RESTORE_SECONDS.observe(took)
        sizes = [fresh[p].core.sizes() for p in parts]
        log.info("restored partitions %s in %.2fs: %d pending payments, %d orders, %d recovered remembered",
                 parts, took, sum(x[0] for x in sizes), sum(x[1] for x in sizes), sum(x[2] for x in sizes))

    def _read_changelog(self, topic: str, parts: list[int]) -> dict[int, dict[bytes, bytes | None]] | None:
        high = self._log_ends(topic, parts)
        waiting = {p for p in parts if high[p] > 0}
        latest: dict[int, dict[bytes, bytes | None]] = {p: {} for p in parts}
        last_progress = time.monotonic()
        while waiting:
            if self.stopping:
                return None
            now = time.monotonic()
            self.last_loop = now  # restoring is the loop's work: /healthz stays 200 while it progresses
            if now - last_progress > RESTORE_STALL_SECONDS:
                raise JoinFailed(f"restoring {topic} partitions {sorted(waiting)} made no progress for "
                                 f"{RESTORE_STALL_SECONDS:.0f}s; is the broker reachable and the topic readable?")
            for m in self.restorer.consume(10_000, timeout=0.5):
                err = m.error()
                if err is not None:
                    if err.code() == _EOF and m.offset() >= high.get(m.partition(), 0):
                        waiting.discard(m.partition())
                    elif err.code() != _EOF:
                        log.warning("changelog read error: %s", err)
                    continue
                last_progress = now
                latest[m.partition()][m.key()] = m.value()
                if m.offset() + 1 >= high[m.partition()]:
                    waiting.discard(m.partition())
        return latest

    def _new_watermarks(self) -> Consumer:
        return Consumer(config.consumer(self.s, f"{self.s.join_group}-watermarks",
                                        **{"isolation.level": "read_uncommitted"}))

    def _log_ends(self, topic: str, parts: list[int]) -> dict[int, int]:
        """Each partition's high watermark, from a read_uncommitted consumer: for a
        read_committed client librdkafka answers with the last stable offset instead. The
        query can ignore its timeout while a partition's leader is away (librdkafka issue
        2588, confluent-kafka-python issue 413), so it has a hard deadline too."""
        def ends() -> dict[int, int]:
            return {p: self.watermarks.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}

        def query() -> dict[int, int]:
            try:
                return self._bounded(ends, f"read the end of {topic}", 10 + CALL_SLACK)
            except (KafkaException, Wedged) as exc:
                # Next time a fresh client, in case this one's metadata is stale (seen as
                # FENCED_LEADER_EPOCH after the broker was frozen and came back). A wedged
                # one is left to its thread, not closed under it.
                if not isinstance(exc, Wedged):
                    self.watermarks.close()
                self.watermarks = self._new_watermarks()
                if isinstance(exc, Wedged):
                    raise KafkaException(KafkaError(KafkaError._TIMED_OUT, str(exc))) from exc
                raise

        return self._patiently(query, f"read the end of {topic}")

    def _patiently(self, call, what: str, timeout: float = 60.0):
        """A read from the broker whose errors are transient but for authorization (a topic
        just created, a leader or coordinator moving, a broker coming back): retried for
        up to `timeout` seconds; a stop request ends it (Stopped)."""
        def retriable(exc: BaseException) -> bool:
            return isinstance(exc, KafkaException) and exc.args[0].code() not in _NOT_ALLOWED

        try:
            return Retry(what, deadline=timeout, retriable=retriable, first_delay=0.2, max_delay=1.0,
                         stopping=lambda: self.stopping).call(call)
        except KafkaException as exc:
            raise JoinFailed(f"cannot {what}: {exc.args[0]}") from exc

    def _update_gauges(self) -> None:
        pending = orders = recovered = 0
        oldest = None
        for pair in self.pairs.values():
            a, b, c = pair.core.sizes()
            pending, orders, recovered = pending + a, orders + b, recovered + c
            first = pair.core.oldest_pending_time()
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        metrics.JOIN_PENDING_PAYMENTS.set(pending)
        metrics.JOIN_PENDING_ORDERS.set(orders)
        metrics.JOIN_RECOVERED_REMEMBERED.set(recovered)
        metrics.JOIN_OLDEST_PENDING.set(0 if oldest is None else max(0.0, (self.now_ms() - oldest) / 1000))
        for topic in (self.s.payments_topic, self.s.orders_topic):
            metrics.ASSIGNED_PARTITIONS.labels(self.s.join_group, topic).set(len(self.pairs))

