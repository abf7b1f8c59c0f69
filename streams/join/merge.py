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
from collections.abc import Callable
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from streams.join import Denied, InstanceHeld, JoinFailed, ProtocolRefused
from streams.join.core import Decisions, PartitionJoin, Side
from streams.ops.metrics import JOIN_HOLD_RELEASED as RELEASED
from streams.ops.metrics import JOIN_STAMPED_AHEAD as AHEAD

HOLD_MAX_RECORDS = 100_000  # records one partition of a pair may hold back waiting for the other
HOLD_MAX_SECONDS = 5.0  # how long they may wait, unless the other partition has records left to fetch
MIN_EVENT_MS = 946_684_800_000  # 2000-01-01T00:00:00Z: anything older is a wrong clock or unit
_EOF = KafkaError._PARTITION_EOF
log = logging.getLogger("slipguard.join")

Feed = Callable[["Pair", Side, int, Message, Decisions], None]
Unread = Callable[["Pair", Side], bool]  # whether a partition of the pair has records not yet fetched


@dataclass
class Pair:
    """What the worker holds for partition p of payments and orders (index: Side)."""

    core: PartitionJoin
    partition: int = 0
    next_offset: dict[Side, int] = field(default_factory=dict)  # next offset to commit (processed)
    at_end: list[bool] = field(default_factory=lambda: [False, False])  # nothing unread or unprocessed
    held: tuple[deque, deque] = field(default_factory=lambda: (deque(), deque()))  # (ts, record) fetched, not fed
    fetched_to: list[int] = field(default_factory=lambda: [0, 0])  # next offset fetched
    fetch_end: list[bool] = field(default_factory=lambda: [False, False])  # fetched to the partition's end
    end_epoch: list[int] = field(default_factory=lambda: [-1, -1])  # EndWatch.epoch the end was seen in
    holding_since: float | None = None


def hold(pairs: dict[int, Pair], sides: dict[str, Side], msgs: list[Message], latest_ok_ms: int,
         epoch: int = 0, ahead_ms: int | None = None) -> list[int]:
    """Put a consumed batch into its pairs' `held` queues; returns how many records per side.
    An end of partition is noted with `epoch` (ends.EndWatch: whether it can be trusted).

    A record stamped after `latest_ok_ms` or before 2000 gets time -1: bound for the DLQ,
    merged first, so it holds up nothing behind it. One stamped after `ahead_ms` (the
    worker's clock + GRACE) but not that far is counted (slipguard_join_records_stamped_
    ahead_total): a producer whose clock is fast, which in a backlog can move progress
    past orders still unread (README: bad clocks, forged records). A record of a partition
    not held (revoked meanwhile) is dropped: its next owner reads it again.
    """
    counts = [0, 0]
    for m in msgs:
        err = m.error()
        side = sides.get(m.topic())  # type: ignore[arg-type]
        pair = pairs.get(m.partition())  # type: ignore[arg-type]
        if err is not None:
            if err.code() == _EOF and side is not None:
                # The end-of-partition event follows the partition's records in the batch.
                if pair is not None and pair.fetched_to[side] <= m.offset():  # type: ignore[operator]
                    pair.fetch_end[side] = True
                    pair.end_epoch[side] = epoch
                    pair.fetched_to[side] = m.offset()  # type: ignore[assignment]  # past transaction markers
                continue
            if err.code() == KafkaError.UNRELEASED_INSTANCE_ID or (
                    err.code() == KafkaError._FATAL and "instance ID is still used" in err.str()):
                raise InstanceHeld(err.str())
            if err.code() in (KafkaError.UNSUPPORTED_VERSION, KafkaError._UNSUPPORTED_FEATURE) or (
                    err.code() == KafkaError._FATAL and "ConsumerGroupHeartbeat" in err.str()
                    and "not supported" in err.str()):
                raise ProtocolRefused(err.str())
            if err.fatal() or err.code() == KafkaError._FATAL:
                # The consumer cannot be used again; its partitions go to the other members,
                # and a supervisor starts this worker anew.
                raise JoinFailed(f"the Kafka consumer failed fatally ({err.str()}); exiting so that the worker "
                                 "is started again")
            if err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED:
                raise Denied("TOPIC", m.topic(), err.str())
            if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                raise Denied("GROUP", None, err.str())
            log.warning("consumer error: %s", err)
            continue
        if pair is None or side is None:
            continue
        ts = m.timestamp()[1]
        if ts > latest_ok_ms or ts < MIN_EVENT_MS:
            ts = -1
        elif ahead_ms is not None and ts > ahead_ms:
            AHEAD.labels(m.topic()).inc()
        pair.held[side].append((ts, m))
        pair.fetched_to[side] = m.offset() + 1  # type: ignore[operator]
        pair.fetch_end[side] = False
        counts[side] += 1
    return counts


def merge(pair: Pair, feed: Feed, out: Decisions, now: float, unread: Unread) -> None:
    """Feed a pair's held records to `feed` in event-time order across its two partitions.

    Records of one partition wait while the other has none held, unless the other has
    nothing more to give now (read to its end), or the wait grows too big
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
            feed(pair, Side.ORDER, *held_o.popleft(), out)
        else:
            feed(pair, Side.PAYMENT, *held_p.popleft(), out)
    side, rest = (Side.PAYMENT, held_p) if held_p else (Side.ORDER, held_o)
    if not rest:
        pair.holding_since = None
        return
    if merged or pair.holding_since is None:
        pair.holding_since = now
    other = Side.ORDER if side == Side.PAYMENT else Side.PAYMENT
    if pair.fetch_end[other] or len(rest) > HOLD_MAX_RECORDS or (
            now - pair.holding_since > HOLD_MAX_SECONDS and not unread(pair, other)):
        if not pair.fetch_end[other]:
            RELEASED.labels("records" if len(rest) > HOLD_MAX_RECORDS else "seconds").inc(len(rest))
        while rest:
            feed(pair, side, *rest.popleft(), out)
        pair.holding_since = None
