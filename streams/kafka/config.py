"""The one place where Kafka client configurations are built.

Every consumer, producer and admin client slipguard makes takes its config from here,
so security settings reach all of them and defaults stay consistent.
"""

from __future__ import annotations

from typing import Any

from streams.settings import Settings


def common(settings: Settings) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
        "client.id": "slipguard",
    }
    if settings.kafka_sasl_mechanism:
        conf["sasl.mechanism"] = settings.kafka_sasl_mechanism
    if settings.kafka_sasl_username:
        conf["sasl.username"] = settings.kafka_sasl_username
    if settings.kafka_sasl_password:
        conf["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    for name in ("ca", "certificate", "key"):
        value = getattr(settings, f"kafka_ssl_{name}_location")
        if value:
            conf[f"ssl.{name}.location"] = value
    if settings.kafka_ssl_key_password:
        conf["ssl.key.password"] = settings.kafka_ssl_key_password.get_secret_value()
    return conf


def admin(settings: Settings) -> dict[str, Any]:
    return common(settings)


def producer(settings: Settings, *, transactional_id: str | None = None, **overrides: Any) -> dict[str, Any]:
    conf = common(settings) | {
        # Java clients' default partitioner: a key lands on the same partition whoever produced it.
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "compression.type": "lz4",
        "batch.num.messages": 10_000,
        "queue.buffering.max.messages": 1_000_000,
        # Explicit, and below every topic's max.message.bytes (Kafka's default 1,048,588,
        # which `topics create` sets and the join checks, topics.too_small_for_the_join): a
        # record or batch the broker would refuse is refused here first.
        "message.max.bytes": 1_000_000,
        "batch.size": 1_000_000,
    }
    if transactional_id:
        conf["transactional.id"] = transactional_id
        conf["transaction.timeout.ms"] = 60_000
    return conf | overrides


SESSION_TIMEOUT_MS = 10_000  # a crashed member's partitions move after this long (both group protocols)
HEARTBEAT_INTERVAL_MS = 1_000
FETCH_QUEUE_BACKOFF_MS = 10  # a partition that finds the fetch queue full asks again this soon (consumer())


def consumer(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    conf = common(settings) | {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
        "max.poll.interval.ms": 300_000,
        "fetch.min.bytes": 1,
        "queued.min.messages": 100_000,
        # A partition whose fetch finds the local queue at queued.min.messages (or
        # queued.max.messages.kbytes) is not fetched again for fetch.queue.backoff.ms, 1 s
        # by default; a consumer reading a backlog empties such a queue in well under a
        # second, then waits. With 10 ms: a restore of 1 M changelog records read in
        # 1.7-1.9 s instead of 2.8-3.1 (2026-12-07, local broker); the join's spread bench
        # released 18,000-198,000 records into pending state with 1 s (one partition of a
        # pair left unfetched for seconds, librdkafka issue 1854), none with 10 ms, at the
        # same events/s and CPU. Every consumer here reads to an end it cares about.
        "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
    }
    return conf | overrides
