"""The join worker's place in its consumer group: which protocol, which identity, and what
to do when the coordinator refuses either; and what a consumer error means for the worker.

Payments and orders are co-partitioned, so both protocols give partition p of each to
the same member: classic with the client-side range assignor (eager: every member
revokes everything on every change); consumer (KIP-848) with the broker's range
assignor, which moves only the partitions that change owner. Under KIP-848 the session
timeout is the group's (group.consumer.session.timeout.ms, 45 s by default; the join
asks for 10 s as a group config, streams/kafka/groups.py), so a crashed member's
partitions move later than with classic unless that is granted.

Static membership (group.instance.id = SLIPGUARD_INSTANCE_ID) with KIP-848 only: a worker
stopped cleanly leaves with epoch -2, the broker keeps its partitions for it for the
session timeout, and the same instance started again takes them back with no rebalance
(a rolling restart moves nothing). After kill -9 the broker refuses the instance id
(UNRELEASED_INSTANCE_ID, fatal in librdkafka) until the dead member's session expires:
the worker starts a new consumer and asks again. Not with classic: after a broker outage
longer than the session timeout, librdkafka rejoins and is then fenced by its own new
membership (a fatal error; librdkafka issue 3437).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message

from streams.join import Denied, InstanceHeld, JoinFailed, ProtocolRefused
from streams.kafka import config
from streams.kafka.groups import group_timeouts_s, tune_group_timeouts
from streams.kafka.versions import offers_kip848
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

HELD_RETRY_S = 2.0  # a refused instance id: ask again after this long
HELD_MARGIN_S = 5.0  # still refused 2 x the session timeout + this: another live worker has the id


def group_protocol_conf(protocol: str, instance_id: str | None = None) -> dict[str, object]:
    """The consumer settings of a group protocol (None: leave librdkafka's default)."""
    if protocol == "consumer":
        return {"group.protocol": "consumer", "group.remote.assignor": "range", "group.instance.id": instance_id,
                "session.timeout.ms": None, "heartbeat.interval.ms": None, "partition.assignment.strategy": None}
    return {"partition.assignment.strategy": "range"}


def consumer_error(err: KafkaError, topic: str | None) -> JoinFailed | None:
    """What a consumer error (other than an end of partition) means for the worker: an
    exception to raise (it cannot go on as it is), or None (logged, the consumer retries)."""
    code, text = err.code(), err.str()
    if code == KafkaError.UNRELEASED_INSTANCE_ID or (code == KafkaError._FATAL and "instance ID is still used" in text):
        return InstanceHeld(text)
    if code in (KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE) or (
            code == KafkaError._FATAL and "ConsumerGroupHeartbeat" in text and "not supported" in text):
        return ProtocolRefused(text)
    if err.fatal() or code == KafkaError._FATAL:
        # The consumer cannot be used again; its partitions go to the other members, and a
        # supervisor starts this worker anew.
        return JoinFailed(f"the Kafka consumer failed fatally ({text}); exiting so that the worker is started again")
    if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
        return Denied("TOPIC", topic, text)
    if code == KafkaError.GROUP_AUTHORIZATION_FAILED:
        return Denied("GROUP", None, text)
    log.warning("consumer error: %s", err)
    return None


def raise_for(errors: list[Message]) -> None:
    """Raise what the first consumer error that stops the worker means (see consumer_error)."""
    for m in errors:
        failed = consumer_error(m.error(), m.topic())  # type: ignore[arg-type]
        if failed is not None:
            raise failed


class Membership:
    """The worker's consumer: made with the group protocol and identity asked for, made
    anew when the coordinator refuses them (`instance_held`, `protocol_refused`)."""

    def __init__(self, settings: Settings, stats: Callable[[str], None], stopping: Callable[[], bool],
                 alive: Callable[[], None]) -> None:
        """`stats`: librdkafka's statistics, once a second; `alive()`: called while it waits on purpose."""
        self.s, self.stats, self.stopping, self.alive = settings, stats, stopping, alive
        # auto: KIP-848 where the broker offers it; refused, classic (protocol_refused).
        self.protocol = "classic" if settings.group_protocol == "classic" else "consumer"
        self.consumer = Consumer(self.conf())
        self.held_since: float | None = None  # the instance id refused since (monotonic)
        self.session_s = 45.0  # the group's KIP-848 session timeout (tune_group_timeouts)
        self._window_s = (config.SESSION_TIMEOUT_MS - config.HEARTBEAT_INTERVAL_MS) / 1000  # KIP-848: read at join
        self.callbacks: dict[str, Any] = {}

    @property
    def window_s(self) -> float:
        """How long the coordinator keeps a member that has stopped heartbeating after it
        last confirmed it (fence.Fence): the session timeout less one
        heartbeat interval. Classic: the member's own; KIP-848: the group's, read at join
        (the join's wanted 10 s and 1 s when they cannot be read)."""
        return self._window_s if self.protocol == "consumer" else \
            (config.SESSION_TIMEOUT_MS - config.HEARTBEAT_INTERVAL_MS) / 1000

    def conf(self) -> dict[str, Any]:
        conf = {"enable.partition.eof": True, "fetch.max.bytes": 52_428_800, "max.partition.fetch.bytes": 1_048_576,
                # (fetch.queue.backoff.ms: config.consumer's 10 ms. The partitions' fetch
                # queues all forward to one queue, and each partition compares that queue's
                # length with queued.min.messages: with librdkafka's 1 s, an unlucky one can
                # go unfetched for seconds while its pair's other partition is fetched.)
                # Readiness follows the broker connections (the worker's stats callback).
                "statistics.interval.ms": 1_000, "stats_cb": self.stats,
                **group_protocol_conf(self.protocol, self.s.instance_id)}
        return {k: v for k, v in config.consumer(self.s, self.s.join_group, **conf).items() if v is not None}

    def join(self, **callbacks: Any) -> None:
        """Check the protocol, tune the group, subscribe (`callbacks`: on_assign, on_revoke, on_lost)."""
        self.callbacks = callbacks
        if self.protocol == "consumer" and offers_kip848(self.s) is False:
            self.protocol_refused(ProtocolRefused("no broker version of ConsumerGroupHeartbeat that librdkafka "
                                                  "speaks: Kafka before 4.0"), subscribe=False)
        if self.protocol == "consumer":
            said, self.session_s = tune_group_timeouts(self.s, self.s.join_group)
            log.log(logging.INFO if self.session_s <= config.SESSION_TIMEOUT_MS / 1000 else logging.WARNING, "%s", said)
            session, heartbeat = group_timeouts_s(self.s, self.s.join_group) or (
                config.SESSION_TIMEOUT_MS / 1000, config.HEARTBEAT_INTERVAL_MS / 1000)
            self._window_s = session - heartbeat
        self._subscribe()

    def _subscribe(self) -> None:
        static = self.protocol == "consumer" and self.s.instance_id
        log.info("joining group %s with group protocol %s%s", self.s.join_group, self.protocol,
                 f" as static member {self.s.instance_id}" if static else "")
        self.consumer.subscribe([self.s.payments_topic, self.s.orders_topic], **self.callbacks)

    def accepted(self) -> None:
        """An assignment came: the instance id, if it was refused, is ours again."""
        if self.held_since is not None:
            log.info("SLIPGUARD_INSTANCE_ID=%s accepted after %.0fs", self.s.instance_id,
                     time.monotonic() - self.held_since)
            self.held_since = None

    def instance_held(self, exc: InstanceHeld) -> None:
        """The coordinator refuses SLIPGUARD_INSTANCE_ID: held by a killed predecessor until
        its session expires, or by a live worker given the same id. The refused consumer
        cannot be used again (a fatal error): wait, start a new one and ask again. A
        predecessor's session expires within the session timeout; refused for twice that
        (plus HELD_MARGIN_S), the id is a live worker's: stop with one line."""
        now = time.monotonic()
        if self.held_since is None:
            self.held_since = now
            log.warning("the group coordinator refuses SLIPGUARD_INSTANCE_ID=%s: another member still holds it "
                        "(a predecessor killed without leaving holds it until its session expires, the broker's "
                        "group.consumer.session.timeout.ms); asking again every %.0fs", self.s.instance_id,
                        HELD_RETRY_S)
        elif now - self.held_since > 2 * self.session_s + HELD_MARGIN_S:
            raise JoinFailed(f"another live worker of group {self.s.join_group} runs with SLIPGUARD_INSTANCE_ID="
                             f"{self.s.instance_id}: the group coordinator still refuses it after "
                             f"{now - self.held_since:.0f}s; give each worker its own id") from exc
        self._renew(wait=HELD_RETRY_S)

    def protocol_refused(self, exc: ProtocolRefused, *, subscribe: bool = True) -> None:
        """The broker does not offer KIP-848 (its ApiVersions before joining, see
        streams/kafka/versions.py, or a fatal error at the first heartbeat): with `auto`,
        join with classic instead (one line); asked for `consumer` explicitly, stop with
        one line."""
        if self.s.group_protocol == "consumer":
            raise JoinFailed(f"the broker refuses the KIP-848 consumer group protocol ({exc}): it needs Kafka 4.0 "
                             "or later with `consumer` in group.coordinator.rebalance.protocols; set "
                             "SLIPGUARD_GROUP_PROTOCOL=classic (or auto) for this cluster") from None
        log.warning("the broker does not offer the KIP-848 consumer group protocol (Kafka before 4.0, or "
                    "group.coordinator.rebalance.protocols without consumer): group %s joins with the classic "
                    "protocol (eager range assignor: every rebalance moves and restores every partition)",
                    self.s.join_group)
        self.protocol = "classic"
        self._renew(wait=0.0, subscribe=subscribe)

    def _renew(self, *, wait: float, subscribe: bool = True) -> None:
        """A consumer that failed fatally cannot be used again: close it, wait, start anew."""
        self.consumer.close()
        give_up = time.monotonic() + wait
        while not self.stopping() and time.monotonic() < give_up:
            self.alive()  # waiting on purpose: alive (/healthz), not ready
            time.sleep(0.1)
        self.consumer = Consumer(self.conf())
        if subscribe and not self.stopping():
            self._subscribe()
