"""Where a consumed message is from: str and int for records and partition events, a
clear error for a client error that names no partition."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, Message

from streams.kafka.consumed import NoPosition, Position, offset_of, partition_of, position, topic_of


def test_a_record_and_an_end_of_partition_give_their_topic_partition_and_offset() -> None:
    record = Message(topic="payments", partition=2, offset=7, value=b"{}")
    end = Message(topic="payments", partition=3, offset=40, error=KafkaError(KafkaError._PARTITION_EOF))
    assert position(record) == Position("payments", 2, 7)
    assert position(end) == Position("payments", 3, 40)
    assert (topic_of(record), partition_of(record), offset_of(record)) == ("payments", 2, 7)


def test_offset_zero_and_partition_zero_are_positions_not_missing() -> None:
    assert position(Message(topic="t", partition=0, offset=0)) == ("t", 0, 0)


def test_an_error_that_names_no_partition_raises_naming_the_error() -> None:
    down = Message(error=KafkaError(KafkaError._ALL_BROKERS_DOWN))
    for ask in (position, topic_of, partition_of, offset_of):
        with pytest.raises(NoPosition, match="All broker connections are down"):
            ask(down)


def test_a_message_with_a_topic_but_no_offset_raises_for_the_offset_only() -> None:
    refused = Message(topic="orders", partition=1, error=KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))
    assert topic_of(refused) == "orders"
    assert partition_of(refused) == 1
    with pytest.raises(NoPosition, match="without its offset"):
        offset_of(refused)
    with pytest.raises(NoPosition, match="without its offset"):
        position(refused)
