"""murmur2 as Kafka's Java client computes it (UtilsTest.testMurmur2's vectors)."""

from __future__ import annotations

import pytest

from streams.kafka.partition import murmur2, partition_for


@pytest.mark.parametrize(("text", "expected"), [
    ("21", -973932308), ("foobar", -790332482), ("a-little-bit-long-string", -985981536),
    ("a-little-bit-longer-string", -1486304829), ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    ("abc", 479470107),
])
def test_murmur2_matches_the_java_client(text: str, expected: int) -> None:
    assert murmur2(text.encode()) == expected


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    assert partition_for(b"21", 6) == (-973932308 & 0x7FFFFFFF) % 6
    assert {partition_for(f"o-{i}".encode(), 6) for i in range(200)} == set(range(6))
