"""Kafka's murmur2 partitioner (streams/kafka/partition.py), under the names the tests use;
its values are checked against the Java client's own test vectors in
tests/kafka/test_partition.py, and against where librdkafka puts records in
tests/integration/test_roundtrip.py."""

from __future__ import annotations

from streams.kafka.partition import murmur2
from streams.kafka.partition import partition_for as java_partition

__all__ = ["java_partition", "murmur2"]
