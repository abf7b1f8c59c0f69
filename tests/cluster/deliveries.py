"""Where the traffic's orders landed, from their producers' delivery reports: for each
order of a plan, its partition, offset and timestamp, and the wall time its report came
(no earlier than the broker acknowledged it). From these the checker places the order of
each recovered payment and computes what the records before it confirm
(tests/cluster/recoveries.py), without reading the orders topics back: every record of a
run's orders topics is one of its traffic's."""

from __future__ import annotations

import re
import time
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from confluent_kafka import KafkaError, Message

from streams.tools.loadgen import paid_at_ms
from tests.cluster.recoveries import UNSEEN, Landed, progress_before

_PAYMENT_ID = re.compile(r"p(\d+)-(\d+)")


class Deliveries:
    """One traffic segment's orders as acknowledged, by plan index (order id o<seed>-<i>);
    its producer's `on_delivery`. Times are kept in ms after `base_ms`: 14 bytes an order
    id (the 30-minute soak at 5,000 events/s plans some 4.5 million: about 64 MB)."""

    def __init__(self, orders_topic: str, count: int, base_ms: int | None = None) -> None:
        self.topic, self.base_ms = orders_topic, int(time.time() * 1000) if base_ms is None else base_ms
        self.partition = array("h", [-1]) * count
        self.offset = array("i", [-1]) * count
        self.timestamp = array("i", [0]) * count
        self.acked = array("i", [0]) * count
        self.failed = 0  # reports of failed deliveries, and any the arrays cannot hold (none expected)

    def __call__(self, error: KafkaError | None, msg: Message) -> None:
        acked = int(time.time() * 1000)  # (first: the report is no earlier than the acknowledgement)
        if msg.topic() != self.topic:
            return
        if error is not None:
            self.failed += 1
            return
        try:  # (an exception here would end the traffic's producer)
            key = msg.key()
            i = int(key.rsplit(b"-", 1)[1]) if isinstance(key, bytes) else -1
            if not 0 <= i < len(self.offset):
                raise ValueError(f"not one of this plan's orders: {key!r}")
            self.timestamp[i], self.acked[i] = msg.timestamp()[1] - self.base_ms, acked - self.base_ms
            self.partition[i], self.offset[i] = msg.partition() or 0, msg.offset() or 0
        except (ValueError, OverflowError):
            self.failed += 1

    def landed(self, i: int) -> tuple[int, int, int, int] | None:
        """(partition, offset, timestamp, acked) of order i; None if it was not delivered."""
        if self.offset[i] < 0:
            return None
        return self.partition[i], self.offset[i], self.timestamp[i] + self.base_ms, self.acked[i] + self.base_ms

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        """(partition, offset, timestamp) of each order delivered."""
        base = self.base_ms
        for p, o, t in zip(self.partition, self.offset, self.timestamp, strict=True):
            if o >= 0:
                yield p, o, t + base


@dataclass
class Segment:
    """What the checker keeps of one traffic segment (tests/integration/test_join._LiveTraffic)."""

    seed: int
    start_ms: int
    spacing_ms: float
    deliveries: Deliveries


@dataclass
class Placed:
    """The orders of recovered payments as they landed; `unseen`: records of the orders
    partitions looked at that no delivery report accounts for (expected 0)."""

    orders: dict[str, Landed | None] = field(default_factory=dict)
    unseen: int = 0


def place(segments: Sequence[Segment], payment_ids: Iterable[str], timeout_ms: int) -> Placed:
    """For each payment id (p<seed>-<i>), its order as it landed, with what the records
    before it in its partition confirm; None when its plan produced no order of it."""
    by_seed = {s.seed: s for s in segments}
    out = Placed()
    wanted: dict[str, tuple[int, int, int, int, int]] = {}  # pid -> (partition, offset, ts, acked, deadline)
    for pid in payment_ids:
        m = _PAYMENT_ID.fullmatch(pid)
        seg = by_seed.get(int(m[1])) if m else None
        i = int(m[2]) if m else -1
        where = seg.deliveries.landed(i) if seg is not None and 0 <= i < len(seg.deliveries.offset) else None
        out.orders[pid] = None
        if seg is not None and where is not None:
            wanted[pid] = (*where, paid_at_ms(seg.start_ms, seg.spacing_ms, i) + timeout_ms)
    partitions = {w[0] for w in wanted.values()}
    logs: dict[int, array[int]] = {}
    for seg in segments:
        for p, offset, ts in seg.deliveries:
            if p in partitions:
                log = logs.setdefault(p, array("q"))
                if len(log) <= offset:
                    log.extend([UNSEEN] * (offset + 1 - len(log)))
                log[offset] = ts
    progress = {p: progress_before(log, [w[1] for w in wanted.values() if w[0] == p]) for p, log in logs.items()}
    out.unseen = sum(log.count(UNSEEN) for log in logs.values())
    for pid, (p, offset, ts, acked, deadline) in wanted.items():
        oid = "o" + pid[1:]
        out.orders[pid] = Landed(oid, deadline, p, offset, ts, acked, progress[p][offset])
    return out


def seed_of(payment_id: str) -> int | None:
    """The plan a payment id is of (p<seed>-<i>); None for any other id."""
    m = _PAYMENT_ID.fullmatch(payment_id)
    return int(m[1]) if m else None
