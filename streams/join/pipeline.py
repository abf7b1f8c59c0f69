"""The record path of the pairs a worker holds, from a consumed batch to what is produced.

Kafka-free: the worker (worker.py) consumes, commits and says what it knows of the
partitions' ends; this does the rest, in order, one batch at a time:

1. `take`: the batch into each pair's held queues (merge.hold), counted per topic; the
   consumer errors in it are returned (membership.raise_for says what they mean);
2. `merge`: each pair's held records in event-time order (merge.merge) through intake
   and the core (`feed`): a record is decided or dead-lettered, and only then is its
   offset stored (checkpoint.Checkpoint.store_offset); then which partitions are read to
   their end (progress.PartitionEnd);
3. `advance`: time for every pair, then the decisions produced (outputs.Outputs).

Tests drive it the same way (tests/join/test_fuzz.py), with a recorder for the sink.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

from confluent_kafka import Message

from schemas import headers as record_headers
from streams.join import changelog, intake
from streams.join.core import Decisions, JoinParams, PartitionJoin, Side
from streams.join.merge import Pair, Unread, hold, merge
from streams.join.outputs import Outputs, Sink
from streams.ops import metrics
from streams.settings import Settings

log = logging.getLogger("slipguard.join")

Record = tuple[int, bytes, bytes | None]  # a changelog record: (partition, key, value or None)


class InternalError(Exception):
    """The join failed on a record it had accepted: a defect of slipguard, not of the
    record. The record goes to the DLQ with this error, and the partition moves on."""


class Pipeline:
    """The pairs a worker holds (partition p of payments and orders each) and the path of
    their records, into `sink` (the checkpoint: outputs, offsets, counters)."""

    def __init__(self, settings: Settings, params: JoinParams, sink: Sink) -> None:
        self.s, self.params, self.sink = settings, params, sink
        self.outputs = Outputs(settings, sink)
        self.sides = {settings.payments_topic: Side.PAYMENT, settings.orders_topic: Side.ORDER}
        self.topic_of = (settings.payments_topic, settings.orders_topic)
        self.pairs: dict[int, Pair] = {}
        self.now_ms = 0  # the worker's clock at the batch taken last
        self.latest_ok_ms = 0  # records stamped later go to the DLQ (SLIPGUARD_MAX_FUTURE)
        self.fed = 0  # records decided or dead-lettered, since the start

    # ------------------------------------------------------------ the steps

    def take(self, msgs: list[Message], now_ms: int, epoch: int) -> list[Message]:
        """Step 1: a consumed batch into the pairs' held queues; `epoch`: progress.EndWatch's.
        Returns the consumer errors among them."""
        self.now_ms, self.latest_ok_ms = now_ms, now_ms + self.s.max_future
        counts, errors = hold(self.pairs, self.sides, msgs, self.latest_ok_ms, epoch, now_ms + self.s.grace)
        for side, n in enumerate(counts):
            if n:
                metrics.JOIN_RECORDS.labels(self.topic_of[side]).inc(n)
        return errors

    def merge(self, monotonic: float, trusts: Callable[[int], bool], unread: Unread) -> Decisions:
        """Step 2: each pair's held records, in event-time order, into its core; then which
        of its partitions are read to their end (`trusts`: progress.EndWatch.trusts)."""
        out = Decisions()
        feed = self.feed
        for pair in self.pairs.values():
            held_p, held_o = pair.held
            if held_p or held_o:
                for side, ts, m in merge(pair, monotonic, unread):
                    feed(pair, side, ts, m, out)
            pair.ends[Side.PAYMENT].update(bool(held_p), trusts)
            pair.ends[Side.ORDER].update(bool(held_o), trusts)
        return out

    def advance(self, out: Decisions, now_ms: int) -> None:
        """Step 3: time for every pair (timeouts, expiry), then every decision produced."""
        for pair in self.pairs.values():
            pair.core.advance(now_ms, pair.ends[Side.PAYMENT].at_end, pair.ends[Side.ORDER].at_end, out)
        self.outputs.emit(out, now_ms)

    def feed(self, pair: Pair, side: Side, ts: int, m: Message, out: Decisions) -> None:
        """One record: accepted into the core, or to the DLQ with why. Its offset moves
        only once that is done, so a failure on the way (a produce refused) reads it again."""
        headers, unreadable = record_headers.read(m)
        rec = None
        try:
            rec = intake.accept(side, ts, m, headers, self.latest_ok_ms, self.s.max_future)
        except intake.REJECTED as exc:
            self.outputs.dead_letter(m, headers, unreadable, exc, self.now_ms)
        except Exception as exc:  # noqa: BLE001 (a defect must not kill the worker or stall the partition)
            self._internal_error(m, headers, unreadable, exc)
        if rec is not None:
            trace = record_headers.traceparent(headers) if headers else None
            try:
                if side == Side.PAYMENT:
                    pair.core.on_payment(ts, rec, m.value(), out, trace)  # type: ignore[arg-type]
                else:
                    pair.core.on_order(ts, rec, m.value(), out, trace)  # type: ignore[arg-type]
            except Exception as exc:  # noqa: BLE001 (as above)
                self._internal_error(m, headers, unreadable, exc)
        self.sink.store_offset(self.topic_of[side], pair.partition, m.offset() + 1)  # type: ignore[operator]
        self.fed += 1

    def _internal_error(self, m: Message, headers: record_headers.Headers | None, unreadable: str | None,
                        exc: Exception) -> None:
        internal_error(self.outputs, m, headers, unreadable, exc, self.now_ms)

    # ------------------------------------------------------------ commits and ownership

    def changes(self) -> list[Record]:
        """Every pair's net state changes since the last commit, as changelog records in
        the configured format: (partition, key, value or None)."""
        fmt = self.s.changelog_format
        return changelog.written([(p, *changelog.encode(c, fmt)) for p, pair in self.pairs.items()
                                  for c in pair.core.state.take_changes()], fmt)

    def install(self, restored: Mapping[int, PartitionJoin]) -> None:
        self.pairs.update({p: Pair(core, p) for p, core in restored.items()})

    def drop(self, parts: Iterable[int]) -> None:
        for p in parts:
            self.pairs.pop(p, None)

    def clear(self) -> None:
        self.pairs.clear()

    def partitions(self) -> list[int]:
        return list(self.pairs)

    def update_gauges(self, now_ms: int) -> None:
        pending = orders = recovered = 0
        oldest = None
        for pair in self.pairs.values():
            a, b, c = pair.core.sizes()
            pending, orders, recovered = pending + a, orders + b, recovered + c
            first = pair.core.oldest_pending_time()
            if first is not None:
                oldest = first if oldest is None else min(oldest, first)
        set_gauges(self.s, len(self.pairs), pending, orders, recovered, oldest, now_ms)

    # ------------------------------------------------------------ what the worker asks

    def pending_count(self) -> int:
        return sum(len(pair.core.pending) for pair in self.pairs.values())

    def held_count(self) -> int:
        return sum(len(h) for pair in self.pairs.values() for h in pair.held)

    def stale_ends(self, epoch: int) -> list[tuple[int, Side]]:
        """The ends seen before `epoch`: (partition, side), to be confirmed with the leader."""
        return [(p, side) for p, pair in self.pairs.items() for side in (Side.PAYMENT, Side.ORDER)
                if pair.ends[side].stale(epoch)]

    def confirm_end(self, partition: int, side: Side, end_offset: int, epoch: int) -> bool:
        pair = self.pairs.get(partition)
        return pair is not None and pair.ends[side].confirm(end_offset, epoch)


def internal_error(outputs: Outputs, m: Message, headers: record_headers.Headers | None, unreadable: str | None,
                   exc: BaseException, now_ms: int) -> None:
    """The join failed on a record it had accepted: logged, counted, and the record to the DLQ."""
    log.error("internal error on %s [%s] at offset %s; the record goes to the DLQ", m.topic(), m.partition(),
              m.offset(), exc_info=exc)
    metrics.JOIN_INTERNAL_ERRORS.inc()
    error = InternalError(f"internal error of the join ({type(exc).__name__}: {exc}); please report it with this "
                          "dead letter")
    outputs.dead_letter(m, headers, unreadable, error, now_ms, reason="internal_error")


def set_gauges(s: Settings, pairs: int, pending: int, orders: int, recovered: int, oldest: int | None,
               now_ms: int) -> None:
    metrics.JOIN_PENDING_PAYMENTS.set(pending)
    metrics.JOIN_PENDING_ORDERS.set(orders)
    metrics.JOIN_RECOVERED_REMEMBERED.set(recovered)
    metrics.JOIN_OLDEST_PENDING.set(0 if oldest is None else max(0.0, (now_ms - oldest) / 1000))
    for topic in (s.payments_topic, s.orders_topic):
        metrics.ASSIGNED_PARTITIONS.labels(s.join_group, topic).set(pairs)
