"""Where a message from a consumer (or a delivery report) comes from, as `str` and `int`.

confluent-kafka types `Message.topic()`, `.partition()` and `.offset()` as Optional: one
class stands for records, partition events (the end of a partition) and client errors,
and only an error that concerns no partition (all brokers down, a fatal error) lacks
them. These say so once, so that the code around a consumer gets values a type checker
can follow instead of an ignore per call; asked of a message that has none, they raise
NoPosition, which is a defect of the caller (it did not look at `m.error()` first).

`offset_of` and `partition_of` cost one call each, for the per-record path; `position`
gives all three.
"""

from __future__ import annotations

from typing import NamedTuple

from confluent_kafka import Message


class Position(NamedTuple):
    topic: str
    partition: int
    offset: int  # a record's own; at the end of a partition, the offset it ends at


class NoPosition(ValueError):
    """The message names no partition: a client error, neither a record nor a partition's event."""

    def __init__(self, m: Message, missing: str) -> None:
        super().__init__(f"a consumed message without its {missing} (error: {m.error()}); only a record or a "
                         "partition's event has one: look at m.error() before asking where it is from")


def position(m: Message) -> Position:
    """Topic, partition and offset of a record or a partition's event (end of partition)."""
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    if topic is None:
        raise NoPosition(m, "topic")
    if partition is None:
        raise NoPosition(m, "partition")
    if offset is None:
        raise NoPosition(m, "offset")
    return Position(topic, partition, offset)


def topic_of(m: Message) -> str:
    """The topic of a record, a partition's event or a delivery report (set even when the delivery failed)."""
    topic = m.topic()
    if topic is None:
        raise NoPosition(m, "topic")
    return topic


def partition_of(m: Message) -> int:
    partition = m.partition()
    if partition is None:
        raise NoPosition(m, "partition")
    return partition


def offset_of(m: Message) -> int:
    offset = m.offset()
    if offset is None:
        raise NoPosition(m, "offset")
    return offset
