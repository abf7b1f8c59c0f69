"""The join's decisions, for one co-partitioned pair of payments and orders partitions.

Pure: no Kafka, no clock, no I/O. The worker feeds it decoded records with their event
times (Kafka timestamps, in ms) and tells it how far each partition has been read and
what time it is; the core returns what to emit. What it remembers lives in a JoinState
(state.py), which also keeps what the changelog must be told.

The rules are the contract's "Join semantics", in one place:

* A succeeded payment at event time t matches the order with its order_id whose event
  time lies in [t - timeout, t + timeout], whichever of the two arrives first.
* Its deadline is t + timeout. It is recovered when no order matched and the orders
  partition has been seen past deadline + grace: an order record with a timestamp
  >= deadline + grace was consumed, or the partition was read to its end and the wall
  clock is >= deadline + grace. So an order waiting unread in a backlog never causes a
  recovery, and an idle order stream still does.
* An order for a payment that is or will be recovered (its event time is past the
  deadline, or it is read after the recovery) is a late order, emitted once.
* A duplicate payment (same payment_id) is dropped; a second distinct succeeded payment
  for an order is a `duplicate_payment` anomaly. Failed payments are ignored.
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
from enum import IntEnum

from schemas import Order, Payment, recovery_id_for
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


class Side(IntEnum):
    """The two inputs of the join (and the index of each in per-side pairs)."""

    PAYMENT = 0
    ORDER = 1


@dataclass(frozen=True, slots=True)
class JoinParams:
    timeout_ms: int
    grace_ms: int
    late_horizon_ms: int
    hmac_key: bytes | None = None


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
        # (deadline, order_id, payment_id); stale items are skipped and compacted away.
        self._timers: list[tuple[int, str, str]] = []
        self.payment_time = -1  # highest payment event time consumed
        self.order_time = -1  # highest order event time consumed
        self.payments_progress = -1  # how far payments were seen at the last advance (expiry of orders)

    # ------------------------------------------------------------ records

    def on_payment(self, ts: int, p: Payment, raw: bytes, out: Decisions, trace: bytes | None = None) -> None:
        """`trace`: the record's traceparent header, carried by what it leads to."""
        key = self.params.hmac_key
        if key is not None and not p.signature_valid(key):
            # A forged or corrupted payment moves no progress and expires nothing.
            if p.status == "succeeded":
                out.anomalies.append(Flag("bad_signature", p.order_id, (p,), None, _traces(trace)))
            else:
                out.ignored_failed += 1
            return
        if ts > self.payment_time:
            self.payment_time = ts
        if p.status != "succeeded":
            out.ignored_failed += 1
            return
        oid = p.order_id
        # One lookup per map; the common case (a new payment, or the order already here) is cheap.
        pending = self.pending.get(oid)
        buffered = self.orders.get(oid)
        first = None
        if pending is not None:
            first = pending.payment_id, pending.raw
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
                out.anomalies.append(Flag("duplicate_payment", oid, (Payment.decode(first_raw), p), None,
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
                buffered.trace = None  # a matched pair emits nothing more that needs it
                return
            if buffered.ts > deadline:
                # The order exists but past the window: the payment will be recovered, the order is late.
                self.state.drop(ORDERS, oid, buffered)
                out.late.append(Late(Order.decode(buffered.raw), buffered.ts, p.payment_id,
                                     recovery_id_for(p.payment_id), buffered.ts - deadline,
                                     _traces(buffered.trace, trace)))
                self._add_pending(oid, PendingPayment(p.payment_id, t, raw, cmp, late=True, trace=trace))
                return
        self._add_pending(oid, PendingPayment(p.payment_id, t, raw, cmp, trace=trace))

    def on_order(self, ts: int, o: Order, raw: bytes, out: Decisions, trace: bytes | None = None) -> None:
        if ts > self.order_time:
            self.order_time = ts
        oid = o.order_id
        pending = self.pending.get(oid)
        if pending is not None:
            deadline = pending.t + self.params.timeout_ms
            if pending.t - self.params.timeout_ms <= ts <= deadline:
                self.state.drop(PENDING, oid, pending)
                entry = BufferedOrder(ts, raw, (o.user_id, o.amount, o.currency), pending.payment_id, pending.t,
                                      pending.raw)
                self._add_order(oid, entry)
                self.state.matched(oid, entry)
                out.matched += 1
                if pending.cmp != entry.cmp:
                    self._report_mismatch(pending.cmp, entry.cmp, Payment.decode(pending.raw), o, oid, out,
                                          _traces(trace, pending.trace))
                return
            if ts > deadline:
                if not pending.late:
                    pending.late = True
                    self.state.touch(PENDING, oid, pending.persisted)
                    out.late.append(Late(o, ts, pending.payment_id, recovery_id_for(pending.payment_id), ts - deadline,
                                         _traces(trace, pending.trace)))
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
        timers = self._timers
        while timers and timers[0][0] <= due:
            deadline, oid, pid = heapq.heappop(timers)
            pending = self.pending.get(oid)
            if pending is None or pending.payment_id != pid:
                continue  # matched or replaced since the timer was set
            self.state.drop(PENDING, oid, pending)
            self._add_recovered(oid, RecoveredPayment(pid, deadline, pending.raw, pending.late, recovered_at=now_ms,
                                                      trace=pending.trace))
            out.recoveries.append(Recover(Payment.decode(pending.raw), deadline, _traces(pending.trace)))
        if len(timers) > 64 and len(timers) > 2 * len(self.pending):
            self._timers = [(e.t + p.timeout_ms, oid, e.payment_id) for oid, e in self.pending.items()]
            heapq.heapify(self._timers)

        self._expire(payments_progress, now_ms)

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
            self.state.drop(ORDERS, oid, entry)
        self.state.expire_bundles(payments_progress)
        recovered = self.recovered
        rqueue = self._recovered_queue
        forget_before = now_ms - self.params.late_horizon_ms
        while rqueue and rqueue[0][0] <= forget_before:
            _, _, oid, rentry = heapq.heappop(rqueue)
            if recovered.get(oid) is rentry:
                self.state.drop(RECOVERED, oid, rentry)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _report_mismatch(pay: Cmp, order: Cmp, p: Payment, o: Order, oid: str, out: Decisions,
                         traces: Traces) -> None:
        for kind, i in MISMATCH_KINDS:
            if pay[i] != order[i]:
                out.anomalies.append(Flag(kind, oid, (p,), o, traces))

    def _add_pending(self, oid: str, entry: PendingPayment) -> None:
        self.state.add(PENDING, oid, entry)
        heapq.heappush(self._timers, (entry.t + self.params.timeout_ms, oid, entry.payment_id))

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
        if isinstance(value, PendingPayment):
            heapq.heappush(self._timers, (value.t + self.params.timeout_ms, oid, value.payment_id))
        elif isinstance(value, BufferedOrder):
            self._queue_order(oid, value)
        else:
            heapq.heappush(self._recovered_queue, (value.recovered_at, next(self._seq), oid, value))

    def restore_pending(self, entries: list[tuple[str, PendingPayment]]) -> None:
        """Install many pending payments read from the changelog (persisted) at once."""
        pending, timers, timeout = self.pending, self._timers, self.params.timeout_ms
        for oid, entry in entries:
            entry.persisted = True
            pending[oid] = entry
            timers.append((entry.t + timeout, oid, entry.payment_id))
        heapq.heapify(timers)

    def oldest_pending_time(self) -> int | None:
        """Event time of (about) the oldest pending payment: the earliest live timer."""
        for deadline, oid, pid in self._timers[:64]:
            entry = self.pending.get(oid)
            if entry is not None and entry.payment_id == pid:
                return deadline - self.params.timeout_ms
        return next((e.t for e in self.pending.values()), None) if self.pending else None

    def sizes(self) -> tuple[int, int, int]:
        return self.state.sizes()
