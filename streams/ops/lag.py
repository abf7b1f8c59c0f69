"""Consumer lag per group, topic and partition, in messages and in seconds.

Computed the way Kafka's own `kafka-consumer-groups --describe` does: the group's
committed offsets against each partition's log end offset (high watermark). Lag in
seconds is the age of the next unread record (wall clock minus its timestamp), 0 when
nothing is unread.

Which client calls, and why these:
* Committed offsets come from `Consumer.committed()` on a consumer that carries the
  group's id and never subscribes (so it never joins the group, and works for groups
  with no active member). Not `AdminClient.list_consumer_group_offsets`: librdkafka
  dereferences a consumer-group handle an admin client does not have when OffsetFetch
  answers NOT_COORDINATOR or COORDINATOR_NOT_AVAILABLE, which every fresh cluster,
  broker restart and coordinator move produces (librdkafka issue 5040, SIGSEGV).
* Log ends come from `Consumer.get_watermark_offsets()` on a read_uncommitted consumer.
  Not `AdminClient.list_offsets`: admin requests that time out while a broker is away
  can trip `rd_kafka_enq_once_del_source_return: Assertion 'eonce->refcnt > 0'`
  (librdkafka issues 4605 and 3663) and abort the process.
* Coordinator errors (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE,
  COORDINATOR_LOAD_IN_PROGRESS) and timeouts are retried until the call's deadline.

Transactional topics: the records after a group's committed offset may be only
transaction markers (a committed transaction ends with one). The next-record probe reads
read_committed; when it finds nothing to read up to the log end, the partition's lag is
0 in messages and in seconds, where Kafka's tool counts the markers.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass

from confluent_kafka import OFFSET_END, Consumer, KafkaError, KafkaException, TopicPartition

from streams.kafka import config
from streams.kafka.acls import denied
from streams.kafka.calls import group_refused, topic_refused, transient
from streams.kafka.consumed import offset_of
from streams.kafka.topics import not_found
from streams.retry import Retry
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
    """Lag could not be read (broker unreachable, unknown topic, ...)."""


def _retry(what: str, timeout: float) -> Retry:
    return Retry(what, deadline=timeout, retriable=transient, first_delay=0.2, max_delay=1.0)


def group_topics(s: Settings, group: str) -> list[str]:
    """The topics slipguard's own groups read; other groups need `topics` given."""
    known = {s.join_group: [s.payments_topic, s.orders_topic], s.recover_group: [s.recovery_topic, s.late_topic]}
    return known.get(group, [])


class LagReader:
    """Reads committed offsets, log ends and next-record times; one reader per refresh."""

    def __init__(self, s: Settings, timeout: float = 10.0) -> None:
        self.s, self.timeout = s, timeout
        self._ends = Consumer(config.consumer(s, f"slipguard-lag-{uuid.uuid4().hex[:8]}",
                                              **{"isolation.level": "read_uncommitted"}))

    def close(self) -> None:
        self._ends.close()

    def partitions(self, topics: list[str]) -> list[tuple[str, int]]:
        def query() -> list[tuple[str, int]]:
            meta = self._ends.list_topics(timeout=min(5.0, self.timeout))
            absent = [t for t in topics if t not in meta.topics]
            for t in absent:
                if topic_refused(self._ends, t, min(5.0, self.timeout)):  # left out of the listing
                    raise LagError(denied(self.s, "lag", "TOPIC", t))
            if absent:  # the broker answered and has no such topic: retrying will not make one
                raise LagError(not_found(self.s, absent, meta.topics))
            out = []
            for t in topics:
                tm = meta.topics[t]
                if tm.error is not None:  # (a leader away: retried)
                    raise KafkaException(tm.error)
                out += [(t, p) for p in sorted(tm.partitions)]
            return out

        try:
            return _retry(f"list the partitions of {', '.join(topics)}", self.timeout).call(query)
        except KafkaException as exc:
            raise LagError(f"cannot read the partitions of {', '.join(topics)}: {exc.args[0]}") from None

    def all_topics(self) -> list[str]:
        try:
            meta = _retry("list topics", self.timeout).call(lambda: self._ends.list_topics(timeout=5))
        except KafkaException as exc:
            raise LagError(f"cannot list topics: {exc.args[0]}") from None
        return sorted(t for t in meta.topics if not t.startswith("__"))

    def committed(self, group: str, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """The group's committed offsets (only partitions where it committed something)."""
        if not tps:
            return {}
        # read_uncommitted: OffsetFetch without require_stable, as Kafka's tool asks; a
        # read_committed client would wait out every open transaction's pending offsets.
        c = Consumer(config.consumer(self.s, group, **{"isolation.level": "read_uncommitted"}))
        try:
            got = _retry(f"read the committed offsets of group {group!r}", self.timeout).call(
                lambda: c.committed([TopicPartition(t, p) for t, p in tps], timeout=min(5.0, self.timeout)))
        except KafkaException as exc:
            if group_refused(c, exc.args[0]):
                raise LagError(denied(self.s, "lag", "GROUP", group)) from None
            raise LagError(f"cannot read committed offsets of group {group!r}: {exc.args[0]}") from None
        finally:
            c.close()
        return {(tp.topic, tp.partition): tp.offset for tp in got if tp.error is None and tp.offset >= 0}

    def log_ends(self, tps: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Every partition's log end (high watermark) in one call: librdkafka sends one
        ListOffsets per leader, all at once, so a slow broker costs one of its round trips,
        not one per partition it leads (a partition at a time, a broker answering 1 s late
        kept the exporter's figures 31-36 s old). (Not AdminClient.list_offsets:
        confluent-kafka-python issue 1901, memory growing with each call.)"""
        if not tps:
            return {}

        def query() -> dict[tuple[str, int], int]:
            got = self._ends.offsets_for_times([TopicPartition(t, p, OFFSET_END) for t, p in tps],
                                               timeout=min(5.0, self.timeout))
            for tp in got:
                if tp.error is not None:
                    raise KafkaException(tp.error)
            return {(tp.topic, tp.partition): tp.offset for tp in got}

        try:
            return _retry(f"read the ends of {len(tps)} partitions", self.timeout).call(query)
        except KafkaException as exc:
            raise LagError(f"cannot read the log ends: {exc.args[0]}") from None

    def next_record_times(self, wanted: dict[tuple[str, int], int], ends: dict[tuple[str, int], int]
                          ) -> dict[tuple[str, int], int | None]:
        """Timestamp (ms) of the first committed record at or after each offset; None when
        there is none up to the log end (only transaction markers left)."""
        if not wanted:
            return {}
        c = Consumer(config.consumer(self.s, f"slipguard-lag-probe-{uuid.uuid4().hex[:8]}",
                                     **{"enable.partition.eof": True, "isolation.level": "read_committed"}))
        out: dict[tuple[str, int], int | None] = {}
        try:
            c.assign([TopicPartition(t, p, off) for (t, p), off in wanted.items()])
            deadline = time.monotonic() + self.timeout
            open_tps = set(wanted)
            while open_tps and time.monotonic() < deadline:
                for m in c.consume(len(open_tps), timeout=0.2):
                    topic, partition = m.topic(), m.partition()
                    if topic is None or partition is None:
                        continue  # a client error that concerns no partition
                    key = (topic, partition)
                    if key not in open_tps:
                        continue
                    err = m.error()
                    if err is None:
                        out[key] = m.timestamp()[1]
                    elif err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                        raise LagError(denied(self.s, "lag", "TOPIC", key[0]))
                    elif err.code() == KafkaError._PARTITION_EOF:
                        if offset_of(m) < ends[key]:
                            continue  # stopped at an open transaction; its records are not readable yet
                        out[key] = None
                    else:
                        continue
                    open_tps.discard(key)
                    c.pause([TopicPartition(*key)])
        finally:
            c.close()
        return out


def group_lag(s: Settings, groups: list[str], *, topics: list[str] | None = None, with_seconds: bool = True,
              timeout: float = 10.0, now_ms: int | None = None) -> list[PartitionLag]:
    """Lag of each group on the topics it reads (its own for slipguard's groups, else
    `topics`, else every topic in the cluster), for partitions where it committed."""
    reader = LagReader(s, timeout)
    rows: list[PartitionLag] = []
    try:
        for group in groups:
            names = topics or group_topics(s, group) or reader.all_topics()
            committed = reader.committed(group, reader.partitions(names))
            rows += _rows(reader, group, committed, with_seconds, now_ms)
    finally:
        reader.close()
    return rows


def _rows(reader: LagReader, group: str, committed: dict[tuple[str, int], int], with_seconds: bool,
          now_ms: int | None) -> list[PartitionLag]:
    tps = sorted(committed)
    ends = reader.log_ends(tps)
    behind = {tp: committed[tp] for tp in tps if ends[tp] > committed[tp]}
    times = reader.next_record_times(behind, ends) if with_seconds else {}
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    rows = []
    for tp in tps:
        cur = committed[tp]
        lag = max(0, ends[tp] - cur)
        seconds: float | None = None
        if lag == 0 or (tp in times and times[tp] is None):
            lag, seconds = 0, 0.0  # nothing left to read but, perhaps, transaction markers
        elif (next_ms := times.get(tp)) is not None:
            seconds = max(0.0, (now - next_ms) / 1000)
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
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def as_dicts(rows: list[PartitionLag]) -> list[dict]:
    return [asdict(r) for r in rows]
