"""The event-time merge of a pair: partition p of payments and of orders, fed to the core
in event-time order across the two.

Each partition's fetched records wait in `held` until the other partition has a record
at least as late, or has been read to its end, or the wait grows too big, or too long
while the other has nothing known to be left to fetch. Held records are not processed,
so their offsets are not committed: nothing to persist.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from streams.join.core import PartitionJoin, Side
from streams.join.progress import PartitionEnd
from streams.ops.metrics import JOIN_HOLD_RELEASED as RELEASED
from streams.ops.metrics import JOIN_STAMPED_AHEAD as AHEAD

HOLD_MAX_RECORDS = 100_000  # records one partition of a pair may hold back waiting for the other
HOLD_MAX_SECONDS = 5.0  # how long they may wait, unless the other partition has records left to fetch
MIN_EVENT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: anything older is a wrong clock or unit
_EOF = KafkaError._PARTITION_EOF
log = logging.getLogger("slipguard.join")

Held = deque[tuple[int, Message]]  # (event time, record) fetched, not fed yet
# Whether (partition, side) has records not yet fetched past `fetched_to`, the next offset
# the application got (given: the callback asks nothing of the record path, which the
# native one could not answer while it merges).
Unread = Callable[[int, Side, int], bool]


def _held() -> tuple[Held, Held]:
    return deque(), deque()


def _ends() -> tuple[PartitionEnd, PartitionEnd]:
    return PartitionEnd(), PartitionEnd()


@dataclass
class Pair:
    """What the worker holds for partition p of payments and orders (index: Side)."""

    core: PartitionJoin
    partition: int = 0
    held: tuple[Held, Held] = field(default_factory=_held)
    ends: tuple[PartitionEnd, PartitionEnd] = field(default_factory=_ends)
    holding_since: float | None = None


def hold(pairs: dict[int, Pair], sides: dict[str, Side], msgs: list[Message], latest_ok_ms: int,
         epoch: int, ahead_ms: int | None = None) -> tuple[list[int], list[Message]]:
    """Put a consumed batch into its pairs' `held` queues. Returns how many records per
    side, and the consumer errors other than ends of partition (membership.raise_for
    says what they mean). An end of partition is noted with `epoch` (progress.EndWatch).

    A record stamped after `latest_ok_ms` or before 2000 gets time -1: bound for the DLQ,
    merged first, so it holds up nothing behind it. One stamped after `ahead_ms` (the
    worker's clock + GRACE) but not that far is counted (slipguard_join_records_stamped_
    ahead_total): a producer whose clock is fast, two of whose records in a row in a
    backlog can move progress past orders still unread (docs/concepts/time-safety.md: bad clocks, forged
    records). A record of a partition not held (revoked meanwhile) is dropped: its next
    owner reads it again.
    """
    counts = [0, 0]
    errors: list[Message] = []
    for m in msgs:
        err = m.error()
        side = sides.get(m.topic())  # type: ignore[arg-type]
        pair = pairs.get(m.partition())  # type: ignore[arg-type]
        if err is not None:
            if err.code() != _EOF:
                errors.append(m)
            elif pair is not None and side is not None:
                pair.ends[side].eof(m.offset(), epoch)  # type: ignore[arg-type]
            continue
        if pair is None or side is None:
            continue
        ts = m.timestamp()[1]
        if ts > latest_ok_ms or ts < MIN_EVENT_MS:
            ts = -1
        elif ahead_ms is not None and ts > ahead_ms:
            AHEAD.labels(m.topic()).inc()
        pair.held[side].append((ts, m))
        pair.ends[side].record(m.offset())  # type: ignore[arg-type]
        counts[side] += 1
    return counts, errors


def merge(pair: Pair, now: float, unread: Unread) -> Iterator[tuple[Side, int, Message]]:
    """A pair's held records in event-time order across its two partitions: (side, time, record).

    Records of one partition wait while the other has none held, unless the other has
    nothing more to give now (fetched to its end), or the wait grows too big
    (HOLD_MAX_RECORDS), or too long (HOLD_MAX_SECONDS, counted from the other partition's
    last delivery) while `unread` does not know of records left to fetch in the other
    (its end not seen yet, say with its leader away). A partition with records left only
    waits to be fetched (librdkafka issue 1854 can starve one for seconds in a backlog):
    releasing its pair's records then would only turn them into pending state.
    """
    held_p, held_o = pair.held
    merged = bool(held_p and held_o)
    while held_p and held_o:
        if held_o[0][0] < held_p[0][0]:
            ts, m = held_o.popleft()
            yield Side.ORDER, ts, m
        else:
            ts, m = held_p.popleft()
            yield Side.PAYMENT, ts, m
    side, rest = (Side.PAYMENT, held_p) if held_p else (Side.ORDER, held_o)
    if not rest:
        pair.holding_since = None
        return
    if merged or pair.holding_since is None:
        pair.holding_since = now
    other = Side.ORDER if side == Side.PAYMENT else Side.PAYMENT
    end = pair.ends[other]
    fetched_all = end.fetch_end
    if fetched_all or len(rest) > HOLD_MAX_RECORDS or (
            now - pair.holding_since > HOLD_MAX_SECONDS and not unread(pair.partition, other, end.fetched_to)):
        if not fetched_all:
            RELEASED.labels("records" if len(rest) > HOLD_MAX_RECORDS else "seconds").inc(len(rest))
        while rest:
            ts, m = rest.popleft()
            yield side, ts, m
        pair.holding_since = None
