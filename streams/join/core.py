"""The join's decisions, for one co-partitioned pair of payments and orders partitions.

Pure: no Kafka, no clock, no I/O. The worker feeds it decoded records with their event
times (Kafka timestamps, in ms) and tells it how far each partition has been read and
what time it is; the core returns what to emit. What it remembers lives in a JoinState
(state.py), which also keeps what the changelog must be told.

The rules are the contract's "Join semantics", in one place:

* A succeeded payment at event time t matches the order with its order_id whose event
  time lies in [t - timeout, t + timeout], whichever of the two arrives first.
* Its deadline is t + timeout. It is recovered when no order matched and the orders
  partition's progress has reached deadline + grace. Progress is confirmed by two
  records: it is the largest time two consecutive valid records of the partition both
  reach (for each, the smaller of its time and the previous one's; the first record
  read confirms nothing), never past the wall clock; once the partition is read to its
  end, it is the wall clock. So an order waiting unread in a backlog never causes a
  recovery, one record from a fast clock moves nothing, and an idle order stream still
  recovers.
* An order for a payment that is or will be recovered (its event time is past the
  deadline, or it is read after the recovery) is a late order, emitted once.
* A duplicate payment (same payment_id) is dropped; a second distinct succeeded payment
  for an order is a `duplicate_payment` anomaly. Failed payments are ignored.
* A succeeded payment whose paid_at is more than the timeout away from its event time (a
  replay, or a producer that stamps late) is a `paid_at_skew` anomaly, and otherwise
  handled as usual (its recovery, if any, keeps the recovery_id of its payment_id).
* A matched pair whose user, amount or currency disagree is matched and reported.
* With an HMAC key, a payment without a valid signature is reported, never recovered.
* Unmatched orders are kept until the payments partition is past their window (+ grace),
  matched pairs as long (to recognise duplicates), recovered payments for late_horizon
  after the recovery was emitted, by the worker's clock (so a payment recovered hours
  after its deadline, catching up a backlog, still recognises its late order).
* Time is safe against bad clocks and forged records: a partition's progress never runs
  ahead of the wall clock (a record stamped in the future matches by its own timestamp
  but moves progress only up to `now`), and only records that pass validation, the
  signature included, move progress. (Records stamped absurdly far ahead or before 2000
  never reach the core: the worker sends them to the DLQ.)
* Expiry goes by expiry time (heaps), so one out-of-order entry holds up nothing else.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum

from schemas import Order, Payment, recovery_id_for
from schemas.fields import epoch_ms
from streams.join import compact
from streams.join.compact import LATE, PERSISTED
from streams.join.state import (
    BufferedOrder,
    Change,
    Cmp,
    JoinState,
    PendingPayment,
    RecoveredPayment,
    Store,
)


PENDING, ORDERS, RECOVERED = Store.PENDING, Store.ORDERS, Store.RECOVERED  # module globals: cheap on the hot path
_t_of, _part_of, _fields, Fresh = compact.t_of, compact.part_of, compact.fields, compact.Fresh
# Timers of pending payments go in buckets of deadlines (2**TIMER_SHIFT ms each): a bucket
# is a list of order_ids, 8 bytes an entry instead of a heap item (about 100 bytes).
TIMER_SHIFT = 3


class Side(IntEnum):
    """The two inputs of the join (and the index of each in per-side pairs)."""

    PAYMENT = 0
    ORDER = 1


@dataclass(frozen=True, slots=True)
class JoinParams:
    timeout_ms: int
    grace_ms: int
    late_horizon_ms: int
    hmac_keys: tuple[bytes, ...] = ()  # empty: signatures not checked


# ---------------------------------------------------------------- decisions


Traces = tuple[bytes, ...]  # W3C traceparents of the inputs a decision came from, the deciding one first


@dataclass(frozen=True, slots=True)
class Recover:
    """A payment whose order did not come in time: to orders.recovery."""

    payment: Payment
    deadline_ms: int
    traces: Traces = ()


@dataclass(frozen=True, slots=True)
class Late:
    """An order for a payment that is, or will be, recovered: to orders.late."""

    order: Order
    order_ts: int
    payment_id: str
    recovery_id: str
    lateness_ms: int
    traces: Traces = ()


@dataclass(frozen=True, slots=True)
class Flag:
    """An anomaly (duplicate payment, mismatched pair, bad signature): to payments.anomalies."""

    kind: str
    order_id: str
    payments: tuple[Payment, ...]
    order: Order | None = None
    traces: Traces = ()


@dataclass(slots=True)
class Decisions:
    recoveries: list[Recover] = field(default_factory=list)
    late: list[Late] = field(default_factory=list)
    anomalies: list[Flag] = field(default_factory=list)
    matched: int = 0
    duplicates: int = 0
    ignored_failed: int = 0

    def __bool__(self) -> bool:
        return bool(self.recoveries or self.late or self.anomalies)


MISMATCH_KINDS = (("user_mismatch", 0), ("amount_mismatch", 1), ("currency_mismatch", 2))


def _traces(*traces: bytes | None) -> Traces:
    return tuple(t for t in traces if t)


class PartitionJoin:
    """The rules for partition p of payments and orders; its state in `self.state`."""

    def __init__(self, params: JoinParams) -> None:
        self.params = params
        self.state = JoinState(params.timeout_ms + params.grace_ms)
        # The maps themselves, read on the hot path; changed only through self.state.
        self.pending = self.state.pending
        self.orders = self.state.orders
        self.recovered = self.state.recovered
        # Expiry heaps: (expiry, sequence, order_id, entry); stale items are skipped when they
        # come up, an order whose expiry moved later (it was matched) is pushed again.
        self._seq = itertools.count()
        self._order_queue: list[tuple[int, int, str, BufferedOrder]] = []
        self._recovered_queue: list[tuple[int, int, str, RecoveredPayment]] = []
        # Deadline buckets of pending payments: bucket number -> order_ids, and a heap of the
        # numbers. An order_id whose entry went (or is another one now) is skipped when its
        # bucket comes up; the buckets are rebuilt when most of what they hold is stale.
        self._buckets: dict[int, list[str]] = {}
        self._bucket_heap: list[int] = []
        self._timer_count = 0
        self._partial_due = -1  # the due a partly due first bucket was last scanned at
        # Each partition's progress by its records (see the module docstring): the largest
        # time two consecutive valid records both reach, and the last valid record's time.
        self.payment_time = -1
        self.order_time = -1
        self._payment_last = -1
        self._order_last = -1
        self.payments_progress = -1  # how far payments were seen at the last advance (expiry of orders)

    # ------------------------------------------------------------ records

    def on_payment(self, ts: int, p: Payment, raw: bytes, out: Decisions, trace: bytes | None = None) -> None:
        """`trace`: the record's traceparent header, carried by what it leads to."""
        keys = self.params.hmac_keys
        if keys and not p.signature_valid(keys):
            # A forged or corrupted payment moves no progress and expires nothing.
            if p.status == "succeeded":
                out.anomalies.append(Flag("bad_signature", p.order_id, (p,), None, _traces(trace)))
            else:
                out.ignored_failed += 1
            return
        last, self._payment_last = self._payment_last, ts
        if last > self.payment_time and ts > self.payment_time:
            self.payment_time = last if last < ts else ts
        if p.status != "succeeded":
            out.ignored_failed += 1
            return
        oid = p.order_id
        # paid_at's float timestamp (0.17 us) decides unless it is within 1 ms of the bound;
        # then the exact integer milliseconds (0.7 us) do.
        timeout = self.params.timeout_ms
        near = p.paid_at.timestamp() * 1000 - ts
        if near >= timeout - 1 or -near >= timeout - 1:
            skew = epoch_ms(p.paid_at) - ts
            if skew > timeout or -skew > timeout:
                out.anomalies.append(Flag("paid_at_skew", oid, (p,), None, _traces(trace)))
        # One lookup per map; the common case (a new payment, or the order already here) is cheap.
        pending = self.pending.get(oid)
        buffered = self.orders.get(oid)
        first = None
        if pending is not None:
            if type(pending) is bytes:
                part = _part_of(pending)
                first = _fields(part)[0], part
            else:
                first = pending.payment.payment_id, pending.raw
        elif buffered is not None and buffered.paid_id is not None:
            first = buffered.paid_id, buffered.paid_raw
        elif self.recovered:
            recovered = self.recovered.get(oid)
            if recovered is not None:
                first = recovered.payment_id, recovered.raw
        if first is not None:
            first_id, first_raw = first
            if first_id == p.payment_id:
                out.duplicates += 1
            else:
                out.anomalies.append(Flag("duplicate_payment", oid, (compact.payment(first_raw, oid), p), None,
                                          _traces(trace)))
            return

        t = ts
        timeout = self.params.timeout_ms
        deadline = t + timeout
        cmp = (p.user_id, p.amount, p.currency)
        if buffered is not None:
            if t - timeout <= buffered.ts <= deadline:
                buffered.paid_id, buffered.paid_t, buffered.paid_raw = p.payment_id, t, raw
                self.state.matched(oid, buffered)
                out.matched += 1
                if cmp != buffered.cmp:
                    self._report_mismatch(cmp, buffered.cmp, p, Order.decode(buffered.raw), oid, out,
                                          _traces(trace, buffered.trace))
                # A matched pair never matches again and emits nothing more that needs its
                # order's record, fields or trace (a restored pair has none of them either).
                buffered.raw, buffered.cmp, buffered.trace = b"", None, None
                return
            if buffered.ts > deadline:
                # The order exists but past the window: the payment will be recovered, the order is late.
                self.state.drop(ORDERS, oid, buffered.persisted)
                out.late.append(Late(Order.decode(buffered.raw), buffered.ts, p.payment_id,
                                     recovery_id_for(p.payment_id), buffered.ts - deadline,
                                     _traces(buffered.trace, trace)))
                self._add_pending(oid, Fresh(t, LATE, trace, p, raw))
                return
        self._add_pending(oid, Fresh(t, 0, trace, p, raw))

    def on_order(self, ts: int, o: Order, raw: bytes, out: Decisions, trace: bytes | None = None) -> None:
        last, self._order_last = self._order_last, ts
        if last > self.order_time and ts > self.order_time:
            self.order_time = last if last < ts else ts
        oid = o.order_id
        pending = self.pending.get(oid)
        if pending is not None:
            fresh = type(pending) is Fresh
            t = pending.t if fresh else _t_of(pending)
            timeout = self.params.timeout_ms
            deadline = t + timeout
            if t - timeout <= ts <= deadline:
                if fresh:
                    p = pending.payment
                    pid, uid, amount, currency, paid = p.payment_id, p.user_id, p.amount, p.currency, pending.raw
                    self.state.drop(PENDING, oid, pending.flags & PERSISTED)
                else:
                    paid = _part_of(pending)
                    pid, uid, text, currency = _fields(paid)[:4]
                    amount = o.amount if text == str(o.amount) else Decimal(text)
                    self.state.drop(PENDING, oid, pending[8] & PERSISTED)
                entry = BufferedOrder(ts, b"", None, pid, t, paid)  # matched: the order's record is not needed
                self._add_order(oid, entry)
                self.state.matched(oid, entry)
                out.matched += 1
                if uid != o.user_id or currency != o.currency or amount != o.amount:
                    self._report_mismatch((uid, amount, currency), (o.user_id, o.amount, o.currency),
                                          compact.payment(paid, oid), o, oid, out,
                                          _traces(trace, compact.trace_of(pending)))
                return
            if ts > deadline:
                if not compact.flags_of(pending) & LATE:
                    self.state.mark_late(oid, pending)
                    pid = pending.payment.payment_id if fresh else _fields(_part_of(pending))[0]
                    out.late.append(Late(o, ts, pid, recovery_id_for(pid), ts - deadline,
                                         _traces(trace, compact.trace_of(pending))))
                return
            # An order from before the window does not match; it is kept like any unmatched order.
        recovered = self.recovered.get(oid)
        if recovered is not None:
            if not recovered.late:
                recovered.late = True
                self.state.touch(RECOVERED, oid, recovered.persisted)
                out.late.append(Late(o, ts, recovered.payment_id, recovery_id_for(recovered.payment_id),
                                     max(0, ts - recovered.deadline), _traces(trace, recovered.trace)))
            return
        if oid in self.orders:
            out.duplicates += 1  # a repeated order event: the first one stands
            return
        self._add_order(oid, BufferedOrder(ts, raw, (o.user_id, o.amount, o.currency), trace=trace))

    # ------------------------------------------------------------ time

    def advance(self, now_ms: int, payments_at_end: bool, orders_at_end: bool, out: Decisions) -> None:
        """Time out pending payments and expire old entries, given how far each partition was read.

        `*_at_end`: the partition has been read to its end (nothing unread); only then does
        the wall clock count as progress for it.
        """
        p = self.params
        # Never past the wall clock: a record stamped ahead (a producer's wrong clock, a
        # forged record) must not time out every pending payment at once.
        orders_progress = now_ms if orders_at_end else min(self.order_time, now_ms)
        payments_progress = now_ms if payments_at_end else min(self.payment_time, now_ms)
        self.payments_progress = max(self.payments_progress, payments_progress)

        due = orders_progress - p.grace_ms  # deadlines <= due are past
        heap = self._bucket_heap
        if heap and heap[0] << TIMER_SHIFT <= due:
            self._time_out(due, now_ms, out)
        if self._timer_count > 64 and self._timer_count > 2 * len(self.pending):
            self._rebuild_timers()
        self._expire(payments_progress, now_ms)

    def _time_out(self, due: int, now_ms: int, out: Decisions) -> None:
        """Recover the pending payments whose deadline is <= due, bucket by bucket; the
        last bucket may be due only in part (it keeps the rest)."""
        heap, buckets, pending, timeout = self._bucket_heap, self._buckets, self.pending, self.params.timeout_ms
        shift = TIMER_SHIFT
        while heap and heap[0] << shift <= due:
            number = heap[0]
            whole = ((number + 1) << shift) - 1 <= due
            if not whole and due == self._partial_due:
                return  # scanned at this due already
            oids = buckets[number]
            keep = []
            for oid in oids:
                e = pending.get(oid)
                if e is None:
                    continue  # matched or timed out since
                deadline = _t_of(e) + timeout
                if deadline >> shift != number:
                    continue  # another entry under this order_id now, in its own bucket
                if deadline > due:
                    keep.append(oid)
                    continue
                self._recover(oid, e, deadline, now_ms, out)
            if keep:
                self._timer_count -= len(oids) - len(keep)
                buckets[number] = keep
                self._partial_due = due
                return
            self._pop_bucket()

    def _recover(self, oid: str, e: PendingPayment, deadline: int, now_ms: int, out: Decisions) -> None:
        flags, trace = compact.flags_of(e), compact.trace_of(e)
        self.state.drop(PENDING, oid, bool(flags & PERSISTED))
        if type(e) is bytes:
            record = _part_of(e)
            payment = compact.payment(record, oid)
        else:
            payment, record = e.payment, e.raw  # type: ignore[union-attr]
        self._add_recovered(oid, RecoveredPayment(payment.payment_id, deadline, record, bool(flags & LATE),
                                                  recovered_at=now_ms, trace=trace))
        out.recoveries.append(Recover(payment, deadline, _traces(trace)))

    def _add_timer(self, oid: str, deadline: int) -> None:
        number = deadline >> TIMER_SHIFT
        bucket = self._buckets.get(number)
        if bucket is None:
            self._buckets[number] = [oid]
            heapq.heappush(self._bucket_heap, number)
        else:
            bucket.append(oid)
        self._timer_count += 1
        if number == self._bucket_heap[0]:
            self._partial_due = -1  # the first bucket has a new entry: scan it again

    def _rebuild_timers(self) -> None:
        """Buckets from the live pending payments only (most of what they held was stale)."""
        self._buckets, self._bucket_heap, self._timer_count, self._partial_due = {}, [], 0, -1
        buckets, shift, timeout = self._buckets, TIMER_SHIFT, self.params.timeout_ms
        for oid, e in self.pending.items():
            buckets.setdefault((_t_of(e) + timeout) >> shift, []).append(oid)
        self._bucket_heap = list(buckets)
        heapq.heapify(self._bucket_heap)
        self._timer_count = len(self.pending)

    def _expire(self, payments_progress: int, now_ms: int) -> None:
        """Orders and matched pairs once the payments partition is past their window;
        recovered payments late_horizon after their recovery, by the wall clock."""
        window = self.params.timeout_ms + self.params.grace_ms
        orders = self.orders
        queue = self._order_queue
        while queue and queue[0][0] <= payments_progress:
            _, _, oid, entry = heapq.heappop(queue)
            if orders.get(oid) is not entry:
                continue  # dropped or replaced already
            expiry = entry.expires_at(window)
            if expiry > payments_progress:
                heapq.heappush(queue, (expiry, next(self._seq), oid, entry))  # matched since: lives longer
                continue
            self.state.drop(ORDERS, oid, entry.persisted)
        self.state.expire_bundles(payments_progress)
        recovered = self.recovered
        rqueue = self._recovered_queue
        forget_before = now_ms - self.params.late_horizon_ms
        while rqueue and rqueue[0][0] <= forget_before:
            _, _, oid, rentry = heapq.heappop(rqueue)
            if recovered.get(oid) is rentry:
                self.state.drop(RECOVERED, oid, rentry.persisted)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _report_mismatch(pay: Cmp, order: Cmp, p: Payment, o: Order, oid: str, out: Decisions,
                         traces: Traces) -> None:
        for kind, i in MISMATCH_KINDS:
            if pay[i] != order[i]:
                out.anomalies.append(Flag(kind, oid, (p,), o, traces))

    def _add_pending(self, oid: str, entry: compact.Fresh) -> None:
        self.state.add_pending(oid, entry)
        self._add_timer(oid, entry.t + self.params.timeout_ms)

    def _add_order(self, oid: str, entry: BufferedOrder) -> None:
        self.state.add(ORDERS, oid, entry)
        self._queue_order(oid, entry)

    def _add_recovered(self, oid: str, entry: RecoveredPayment) -> None:
        self.state.add(RECOVERED, oid, entry)
        heapq.heappush(self._recovered_queue, (entry.recovered_at, next(self._seq), oid, entry))

    def _queue_order(self, oid: str, entry: BufferedOrder) -> None:
        window = self.params.timeout_ms + self.params.grace_ms
        heapq.heappush(self._order_queue, (entry.expires_at(window), next(self._seq), oid, entry))

    # ------------------------------------------------------------ restore and gauges

    def restore(self, change: Change) -> None:
        """Install a changelog value (see JoinState.install) and schedule its expiry."""
        self.state.install(change)
        value = change.value
        if value is None:
            return
        if isinstance(value, list):  # a bundle of matched pairs
            for oid, pair in value:
                self._queue_order(oid, pair)
            return
        oid = change.key
        assert isinstance(oid, str)
        if isinstance(value, bytes):  # a pending payment
            self._add_timer(oid, _t_of(value) + self.params.timeout_ms)
        elif isinstance(value, BufferedOrder):
            self._queue_order(oid, value)
        else:
            heapq.heappush(self._recovered_queue, (value.recovered_at, next(self._seq), oid, value))

    def restore_pending(self, entries: dict[str, PendingPayment]) -> None:
        """Install many pending payments read from the changelog at once (each with its
        PERSISTED bit set: what the changelog holds is persisted)."""
        self.pending.update(entries)
        self._rebuild_timers()

    def oldest_pending_time(self) -> int | None:
        """Event time of (about) the oldest pending payment: the earliest in the first bucket
        with a live entry. Leading buckets with none (their payments matched since) go, so
        each stale order_id is looked at once: the gauge is read after every commit."""
        pending, shift, timeout = self.pending, TIMER_SHIFT, self.params.timeout_ms
        heap, buckets = self._bucket_heap, self._buckets
        while heap:
            number = heap[0]
            oids = buckets[number]
            times = [t for t in (_t_of(e) for e in map(pending.get, oids) if e is not None)
                     if (t + timeout) >> shift == number]
            if times:
                return min(times)
            self._pop_bucket()
        return None

    def _pop_bucket(self) -> None:
        """Drop the first bucket in line: none of its order_ids has a live timer there now."""
        self._timer_count -= len(self._buckets.pop(heapq.heappop(self._bucket_heap)))
        self._partial_due = -1  # it was about the bucket first in line

    def sizes(self) -> tuple[int, int, int]:
        return self.state.sizes()
