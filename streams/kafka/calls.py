"""Calling the Kafka client when the broker is not calm: which errors a later attempt can
get past, a retried read, and a hard deadline for calls that can ignore their timeout."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException

from streams.retry import Retry

T = TypeVar("T")

# Errors that a later attempt can get past: the coordinator is moving or loading, the
# broker is away or restarting, a leader is being elected.
RETRIABLE = frozenset({
    KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._WAIT_COORD,
    KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.REQUEST_TIMED_OUT, KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH,
    KafkaError._NOENT, KafkaError._RESOLVE, KafkaError.UNSTABLE_OFFSET_COMMIT,
})
# Errors no retry gets past: permissions.
NOT_ALLOWED = frozenset({KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED,
                         KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.SASL_AUTHENTICATION_FAILED,
                         KafkaError._AUTHENTICATION})
STOP_GRACE = 5.0  # how long a hanging call may hold up a requested stop


class Wedged(Exception):
    """A client call did not return within its hard deadline."""


def transient(exc: BaseException) -> bool:
    """A Kafka error a later attempt can get past."""
    return isinstance(exc, KafkaException) and (exc.args[0].code() in RETRIABLE or exc.args[0].retriable())


def allowed(exc: BaseException) -> bool:
    """Any Kafka error but a permission refused: a read that is worth trying again while
    a topic is being created, a leader or coordinator moves, or a broker comes back."""
    return isinstance(exc, KafkaException) and exc.args[0].code() not in NOT_ALLOWED


def patiently(call: Callable[[], T], what: str, *, timeout: float = 60.0,
              retriable: Callable[[BaseException], bool] = allowed,
              stopping: Callable[[], bool] = lambda: False) -> T:
    """A read from the broker, retried for up to `timeout` seconds (a stop request ends
    it with retry.Stopped); the last error goes to the caller."""
    return Retry(what, deadline=timeout, retriable=retriable, first_delay=0.2, max_delay=1.0,
                 stopping=stopping).call(call)


def bounded(call: Callable[[], T], what: str, seconds: float, *, stopping: Callable[[], bool] = lambda: False) -> T:
    """Run a blocking client call with a hard deadline (and at most STOP_GRACE seconds
    once a stop is requested); past it, raise Wedged and leave the call to its thread.

    For calls that can ignore their own timeout while the broker is away:
    send_offsets_to_transaction when the group coordinator is down (librdkafka issues
    5456 and 5511), get_watermark_offsets while a leader is away (librdkafka 2588)."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(call())
        except BaseException as exc:  # noqa: BLE001 (handed to the caller below)
            error.append(exc)

    thread = threading.Thread(target=target, name=f"kafka-call: {what}", daemon=True)
    thread.start()
    started = time.monotonic()
    give_up = started + seconds
    while True:
        thread.join(0.2)
        if not thread.is_alive():
            break
        now = time.monotonic()
        if stopping():
            give_up = min(give_up, now + STOP_GRACE)
        if now > give_up:
            raise Wedged(f"{what} did not return within {now - started:.0f}s")
    if error:
        raise error[0]
    return result[0]


def topic_refused(client: Any, topic: str, timeout: float = 5.0) -> bool:
    """The metadata of `topic` alone (any confluent-kafka client): True if the broker's
    authorizer refuses it to this principal (it answers so whether or not the topic exists).
    A full listing just leaves such a topic out."""
    meta = client.list_topics(topic=topic, timeout=timeout).topics.get(topic)
    return meta is not None and meta.error is not None and meta.error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def group_refused(consumer: Any, failed: KafkaError) -> bool:
    """After a group call (committed()) failed: was the group refused? librdkafka retries a
    refused FindCoordinator until the call times out, then hands the refusal over as an
    error event on the consumer."""
    event = consumer.poll(0.5)
    errors = [failed] + ([event.error()] if event is not None and event.error() is not None else [])
    return any(e.code() == KafkaError.GROUP_AUTHORIZATION_FAILED for e in errors)
