"""The join's producer: its transactional identity, its transaction, and what to do when
it fails (abort, or a new producer under the same transactional.id)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import cast

from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition

from schemas.headers import OutHeaders
from streams.join import Denied, JoinFailed
from streams.kafka import config
from streams.kafka.calls import Wedged, bounded
from streams.retry import Retry, Stopped
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

TXN_RETRY_SECONDS = 60.0  # how long a commit is retried before the transaction is given up
ABORT_RETRY_SECONDS = 30.0  # how long an abort is retried before the producer is replaced
CALL_SLACK = 10.0  # a transactional call's hard deadline beyond its own timeout (which librdkafka may ignore)
FAILURE_LOG_S = 10.0  # failed deliveries to one topic with one error: one line this often (_log_failure)
FENCED_LIMIT, FENCED_WINDOW = 3, 60.0  # fenced this often this fast: another worker has our instance id
# Errors that mean another producer took this worker's transactional.id (or the
# coordinator bumped its epoch after a transaction outlived its timeout).
FENCED = frozenset({KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH})
# Delivery errors that reading the batch again cannot fix: stop with one line, not a loop.
UNFIXABLE = frozenset({KafkaError.MSG_SIZE_TOO_LARGE,
                       KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                       KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, KafkaError.RECORD_LIST_TOO_LARGE,
                       KafkaError.INVALID_RECORD, KafkaError.UNKNOWN_TOPIC_OR_PART})


def is_fenced(err: KafkaError) -> bool:
    return err.code() in FENCED


def duplicate_instance(s: Settings) -> str:
    return (f"another worker of group {s.join_group} runs with SLIPGUARD_INSTANCE_ID={s.instance_id} and took "
            "over its identity; give each worker its own instance id, or leave it unset")


class JoinProducer:
    """A producer (transactional with exactly_once) that survives being fenced, failing
    fatally or hanging: `replace()` starts a new one under the same transactional.id."""

    def __init__(self, settings: Settings, stopping: Callable[[], bool], *, delivery_timeout_s: float = 300.0) -> None:
        """`delivery_timeout_s` (at_least_once): librdkafka's message.timeout.ms, how long a
        record may take to be delivered before it fails (fence.Fence)."""
        self.s, self.stopping = settings, stopping
        self.eos = settings.processing_guarantee == "exactly_once"
        self.in_txn = False
        self.delivery_failures = 0
        self.unfixable: tuple[str, KafkaError] | None = None  # a delivery error that retrying cannot fix
        self.fenced_at: list[float] = []  # when this worker's producer was last fenced
        self._failures_logged: dict[tuple[str, int], list[float]] = {}  # (topic, code) -> [logged at, not logged since]
        # Unique per process unless SLIPGUARD_INSTANCE_ID is set: zombie fencing comes from
        # the consumer group (KIP-447), and a stable id lets a restarted worker fence its
        # own predecessor at once instead of waiting for the broker to abort its transaction.
        self.transactional_id = f"{settings.join_group}-{settings.worker_id()}"
        self.conf = config.producer(
            settings, transactional_id=self.transactional_id if self.eos else None,
            **({"transaction.timeout.ms": 10_000} if self.eos
               else {"message.timeout.ms": int(delivery_timeout_s * 1000)}),
            **{"delivery.report.only.error": True, "on_delivery": self._on_delivery, "linger.ms": 50},
        )
        self.producer = Producer(self.conf)

    def init_transactions(self, timeout: float | None = 60.0) -> bool:
        """Fence an earlier incarnation with the same transactional.id and abort its open
        transaction. Waits while the coordinator is loading (None: as long as it takes);
        False if a stop came first."""
        def retriable(exc: BaseException) -> bool:
            return isinstance(exc, KafkaException) and exc.args[0].retriable()

        try:
            Retry("initialise transactions", deadline=timeout, retriable=retriable, first_delay=0.0, max_delay=0.0,
                  stopping=self.stopping, quiet_for=30.0).call(lambda: self.producer.init_transactions(1))
        except Stopped:
            return False
        except KafkaException as exc:
            if exc.args[0].code() == KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
                raise Denied("TRANSACTIONAL_ID", self.transactional_id, exc.args[0].str()) from None
            raise JoinFailed(f"cannot initialise transactions: {exc.args[0]}") from exc
        return True

    def begin(self) -> None:
        if self.eos and not self.in_txn:
            self.producer.begin_transaction()
            self.in_txn = True

    def produce(self, topic: str, key: bytes | str, value: bytes | None, partition: int = -1,
                headers: OutHeaders | None = None) -> None:
        def once() -> None:
            if headers:  # (confluent-kafka's stubs take a list of values that may be str or None too)
                self.producer.produce(topic, value, key, partition,
                                      headers=cast(list[tuple[str, str | bytes | None]], headers))
            else:
                self.producer.produce(topic, value, key, partition)

        try:
            once()
        except BufferError:  # the local queue is full: let deliveries drain, as long as it takes
            Retry(f"produce to {topic}", deadline=None, retriable=lambda e: isinstance(e, BufferError),
                  first_delay=0.05, max_delay=0.05, sleep=self.producer.poll, quiet_for=60.0,
                  stopping=self.stopping).call(once)

    def offer(self, topic: str, key: bytes | str, value: bytes | None, partition: int) -> bool:
        """Produce one record now, or False when the local queue is full (after letting
        deliveries drain for a moment): the caller decides whether to wait longer."""
        try:
            self.producer.produce(topic, value, key, partition)
        except BufferError:
            self.producer.poll(0.05)
            return False
        return True

    def bound_delivery(self, seconds: float) -> None:
        """at_least_once: records fail if not delivered within `seconds` (message.timeout.ms),
        from the next one produced on. The producer is made anew; what the old one holds is
        delivered first (at its own bound)."""
        ms = int(seconds * 1000)
        if self.eos or self.conf.get("message.timeout.ms") == ms:
            return
        self.producer.flush(self.conf["message.timeout.ms"] / 1000 + 2)
        self.conf["message.timeout.ms"] = ms
        self.producer = Producer(self.conf)

    def poll(self) -> None:
        self.producer.poll(0)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.delivery_failures += 1
            if err.code() in UNFIXABLE and self.unfixable is None:
                self.unfixable = (msg.topic() or "", err)
            if err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):  # purged on purpose
                self._log_failure(msg.topic() or "", err)

    def _log_failure(self, topic: str, err: KafkaError) -> None:
        """One line per topic and error every FAILURE_LOG_S, with how many were not logged:
        a transaction's records time out together (the soak logged 209 identical lines in
        one millisecond when a coordinator went away), and the line that matters, the
        commit's, follows them."""
        now, key = time.monotonic(), (topic, err.code())
        last = self._failures_logged.get(key)
        if last is not None and now - last[0] < FAILURE_LOG_S:
            last[1] += 1
            return
        more = f" ({int(last[1])} more since the last line)" if last is not None and last[1] else ""
        log.error("delivery to %s failed: %s%s", topic, err, more)
        self._failures_logged[key] = [now, 0]

    def commit_transaction(self, offsets: list[TopicPartition], group_metadata: object) -> None:
        """Add the consumed offsets to the open transaction, and commit it."""
        if offsets:
            self.retrying(lambda: self.producer.send_offsets_to_transaction(offsets, group_metadata, 10),
                          "send offsets to the transaction", hard=10 + CALL_SLACK)
        self.retrying(lambda: self.producer.commit_transaction(30), "commit the transaction", hard=30 + CALL_SLACK)
        self.in_txn = False

    def flush_all(self) -> None:
        """at_least_once: everything produced is delivered, or KafkaException."""
        remaining = self.producer.flush(60)
        if remaining or self.delivery_failures:
            failed, self.delivery_failures = self.delivery_failures, 0
            raise KafkaException(
                KafkaError(KafkaError._MSG_TIMED_OUT, f"{remaining} records undelivered, {failed} failed"))

    def retrying(self, call: Callable[[], object], what: str, *, hard: float,
                 limit: float = TXN_RETRY_SECONDS) -> None:
        """A transactional call whose retriable errors (broker unreachable, coordinator
        moving) are retried for up to `limit` seconds: it resumes where it was, and the
        transaction stays intact. Rewinding instead would leave the open transaction to be
        committed later with the batch's outputs in it twice. Abortable and fatal errors,
        and retriable ones past the limit, go to the caller. Each attempt has a hard
        deadline (`hard` seconds, calls.bounded)."""
        def retriable(exc: BaseException) -> bool:
            if not isinstance(exc, KafkaException):
                return False
            err = exc.args[0]
            return err.retriable() and not err.txn_requires_abort() and not err.fatal()

        Retry(what, deadline=limit, retriable=retriable, first_delay=0.1, max_delay=1.0,
              stopping=self.stopping).call(lambda: bounded(call, what, hard, stopping=self.stopping))

    def abort(self) -> None:
        """Abort the open transaction. A producer that cannot (the broker away for long, a
        coordinator it never finds again, a call that hangs) is replaced: the new one's
        init_transactions fences it and aborts its transaction."""
        try:
            self.retrying(lambda: self.producer.abort_transaction(10), "abort the transaction",
                          limit=ABORT_RETRY_SECONDS, hard=10 + CALL_SLACK)
        except (KafkaException, Wedged) as exc:
            self.replace(exc, wedged=isinstance(exc, Wedged))
            return
        self.in_txn = False

    def replace(self, cause: BaseException, *, wedged: bool = False) -> None:
        """Start over with a new producer of the same transactional.id. A wedged old
        producer is left alone (a call may still be inside it).

        Fencing alone does not prove another worker has this transactional.id: the
        transaction coordinator also bumps the epoch when it aborts a transaction that
        outlived transaction.timeout.ms (a broker outage), and librdkafka reports that as
        fenced. Fenced again and again within a minute, with an instance id configured,
        it does: then one clear line, not a fencing loop. Stopped: a stop came first."""
        if cause.args and isinstance(cause.args[0], KafkaError) and is_fenced(cause.args[0]):
            now = time.monotonic()
            self.fenced_at = [t for t in self.fenced_at if now - t < FENCED_WINDOW] + [now]
            if self.s.instance_id and len(self.fenced_at) >= FENCED_LIMIT:
                raise JoinFailed(duplicate_instance(self.s)) from cause
        log.warning("starting over with a new producer (%s)", cause.args[0] if cause.args else cause)
        if not wedged:
            with contextlib.suppress(KafkaException):  # a fatally failed producer may refuse; it is dropped either way
                self.producer.purge()
        self.producer = Producer(self.conf)
        self.in_txn = False
        if self.eos and not self.init_transactions(timeout=None):
            raise Stopped(f"stopped while starting a new producer ({cause})") from cause

    def close(self) -> None:
        self.producer.flush(10)
