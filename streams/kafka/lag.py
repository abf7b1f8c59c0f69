"""Consumer lag per group, topic and partition, in messages and in seconds.

Computed the way Kafka's own `kafka-consumer-groups --describe` does: the group's
committed offsets (AdminClient, so groups with no active member work too) against each
partition's log end offset (ListOffsets latest). Lag in seconds is the age of the next
unread record (wall clock minus its timestamp), 0 when nothing is unread.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from streams.kafka import config
from streams.settings import Settings


@dataclass(frozen=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    current_offset: int | None  # None: the group has committed nothing here
    log_end_offset: int
    lag: int | None
    lag_seconds: float | None


class LagError(Exception):
    """Lag could not be read (broker unreachable, unknown group, ...)."""


def _committed(admin: AdminClient, group: str, timeout: float) -> dict[tuple[str, int], int]:
    futures = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)], request_timeout=timeout)
    try:
        result = futures[group].result()
    except KafkaException as exc:
        raise LagError(f"cannot read committed offsets of group {group!r}: {exc}") from None
    return {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions or [] if tp.error is None}


def _log_end(admin: AdminClient, tps: list[tuple[str, int]], timeout: float) -> dict[tuple[str, int], int]:
    if not tps:
        return {}
    futures = admin.list_offsets({TopicPartition(t, p): OffsetSpec.latest() for t, p in tps}, request_timeout=timeout)
    return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}


def _next_record_times(s: Settings, wanted: dict[tuple[str, int], int], timeout: float) -> dict[tuple[str, int], int]:
    """Timestamp (ms) of the first record at or after each offset."""
    if not wanted:
        return {}
    c = Consumer(config.consumer(s, "slipguard-lag-probe", **{"enable.partition.eof": True,
                                                              "isolation.level": "read_uncommitted"}))
    out: dict[tuple[str, int], int] = {}
    try:
        c.assign([TopicPartition(t, p, off) for (t, p), off in wanted.items()])
        deadline = time.monotonic() + timeout
        open_tps = set(wanted)
        while open_tps and time.monotonic() < deadline:
            for m in c.consume(len(open_tps), timeout=0.2):
                key = (m.topic(), m.partition())
                if key not in open_tps:
                    continue
                if m.error() is None:
                    out[key] = m.timestamp()[1]
                open_tps.discard(key)
                c.pause([TopicPartition(*key)])
    finally:
        c.close()
    return out


def group_lag(s: Settings, groups: list[str], *, with_seconds: bool = True, timeout: float = 10.0,
              now_ms: int | None = None) -> list[PartitionLag]:
    admin = AdminClient(config.admin(s))
    rows: list[PartitionLag] = []
    for group in groups:
        committed = _committed(admin, group, timeout)
        tps = sorted(committed)
        ends = _log_end(admin, tps, timeout)
        behind = {tp: committed[tp] for tp in tps if committed[tp] >= 0 and ends[tp] > committed[tp]}
        times = _next_record_times(s, behind, timeout) if with_seconds else {}
        now = now_ms if now_ms is not None else int(time.time() * 1000)
        for tp in tps:
            cur = committed[tp] if committed[tp] >= 0 else None
            lag = None if cur is None else max(0, ends[tp] - cur)
            if lag == 0:
                seconds: float | None = 0.0
            elif tp in times:
                seconds = max(0.0, (now - times[tp]) / 1000)
            else:
                seconds = None
            rows.append(PartitionLag(group, tp[0], tp[1], cur, ends[tp], lag, seconds))
    return rows


def as_table(rows: list[PartitionLag]) -> str:
    header = ("GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "LAG-SECONDS")
    lines = [header] + [
        (r.group, r.topic, str(r.partition), "-" if r.current_offset is None else str(r.current_offset),
         str(r.log_end_offset), "-" if r.lag is None else str(r.lag),
         "-" if r.lag_seconds is None else f"{r.lag_seconds:.1f}")
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def as_dicts(rows: list[PartitionLag]) -> list[dict]:
    return [asdict(r) for r in rows]
