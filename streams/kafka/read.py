"""Reading what is in a topic now (read_committed, no group): the DLQ tools and `explain`;
and what a consumer has yet to fetch (`unfetched`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.kafka import config
from streams.kafka.consumed import partition_of, position
from streams.settings import Settings

Progress = Callable[[str, int, int], None]  # (what, done, total)


@dataclass(frozen=True, slots=True)
class Record:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


def cached_high(consumer: Consumer, topic: str, partition: int) -> int | None:
    """The high watermark librdkafka keeps for a partition from its last fetch response
    that held it (rd_kafka_get_watermark_offsets: no broker call, about 2-6 us): the high
    watermark even for a read_committed client, not the last stable offset; -1001 before
    the first fetch since assigned, -1 after a fetch that failed. Not refreshed while the
    partition is not fetched (paused, backed off, or the consumer's queue over
    queued.min.messages: librdkafka counts the queue all partitions share), so it says
    what was fetched, not where the log ends now. None if the client does not know the
    partition (revoked)."""
    try:
        return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1])
    except KafkaException:
        return None


def unfetched(consumer: Consumer, topic: str, partition: int, fetched_to: int) -> bool:
    """Whether `consumer` has records of a partition left to fetch past `fetched_to` (the
    next offset the application got), by the high watermark librdkafka keeps from its last
    fetch response (cached_high): no broker call. Not fetched yet since it was assigned
    (no watermark) counts as records left."""
    high = cached_high(consumer, topic, partition)
    if high is None:
        return False
    return high < 0 or high > fetched_to


def partition_count(s: Settings, topic: str) -> int | None:
    c = Consumer(config.consumer(s, f"slipguard-reader-{uuid.uuid4().hex[:8]}"))
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        return None if meta is None or meta.error is not None else len(meta.partitions)
    finally:
        c.close()


def topic_names(s: Settings) -> list[str]:
    """The cluster's topics, Kafka's own (`__*`) left out; none when the broker does not answer."""
    c = Consumer(config.consumer(s, f"slipguard-reader-{uuid.uuid4().hex[:8]}"))
    try:
        return sorted(t for t in c.list_topics(timeout=10).topics if not t.startswith("__"))
    except KafkaException:
        return []
    finally:
        c.close()


def read(s: Settings, topic: str, partitions: list[int] | None = None, *, since_ms: int | None = None,
         progress: Progress | None = None) -> Iterator[Record]:
    """Every committed record of `topic` (or of some of its partitions) up to its end now,
    from the start or from the first record at or after `since_ms`."""
    c = Consumer(config.consumer(s, f"slipguard-reader-{uuid.uuid4().hex[:8]}",
                                 **{"enable.partition.eof": True, "enable.auto.commit": False}))
    try:
        meta = c.list_topics(topic, timeout=10).topics.get(topic)
        if meta is None or meta.error is not None:
            return
        parts = sorted(meta.partitions) if partitions is None else partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        starts = dict.fromkeys(parts, 0)
        if since_ms is not None:
            found = c.offsets_for_times([TopicPartition(topic, p, since_ms) for p in parts], timeout=10)
            starts = {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition]) for tp in found}
        todo = {p for p in parts if ends[p] > starts[p]}
        total = sum(ends[p] - starts[p] for p in todo)
        done = 0
        if not todo:
            return
        c.assign([TopicPartition(topic, p, starts[p]) for p in todo])
        while todo:
            for m in c.consume(1000, timeout=1.0):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(partition_of(m))
                    continue
                done += 1
                _, partition, offset = position(m)
                yield Record(partition, offset, m.timestamp()[1], m.key(), m.value())
                if offset + 1 >= ends[partition]:
                    todo.discard(partition)
            if progress is not None:
                progress(f"{topic}{parts if partitions is not None else ''}", done, total)
    finally:
        c.close()
