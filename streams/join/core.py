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
* Unmatched orders are kept until the payments partition is past their window (+ grace)
  and late_horizon longer (a payment landing in its partition behind payments stamped
  later still matches its order), matched pairs until the payments partition is past
  their window (to recognise duplicates), then settled: their order_id and a fingerprint
  of their payment_id only, until the payments partition's records are late_horizon past
  their window (a duplicate, or a second payment, landing behind payments stamped later
  is still dropped, or reported, if stamped before that: an order_id used again later is
  a new order's); the partition's progress, so that a backlog keeps them as steady
  traffic does, and for settled pairs what its records confirm alone, not the clock it
  takes once read to its end (see _expire). Recovered payments for late_horizon after the recovery was emitted, by
  the worker's clock (so a payment recovered hours after its deadline, catching up a
  backlog, still recognises its late order).
* Time is safe against bad clocks and forged records: a partition's progress never runs
  ahead of the wall clock (a record stamped in the future matches by its own timestamp
  but moves progress only up to `now`), and only records that pass validation, the
  signature included, move progress. (Records stamped absurdly far ahead or before 2000
  never reach the core: the worker sends them to the DLQ.)
* Expiry goes by expiry time (heaps), so one out-of-order entry holds up nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import cast

from schemas import AnomalyKind, Order, Payment, recovery_id_for
from schemas.fields import epoch_ms
from streams.join import compact
from streams.join.compact import LATE, Fresh
from streams.join.progress import Confirmed
from streams.join.state import (
    SETTLED_END,
    BufferedOrder,
    Bundle,
    Change,
    Cmp,
    JoinState,
    PendingPayment,
    RecoveredPayment,
    Store,
    fingerprint,
)
from streams.join.timers import Deadlines, Expiry, sequence

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

    kind: AnomalyKind
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


MISMATCH_KINDS: tuple[tuple[AnomalyKind, int], ...] = (("user_mismatch", 0), ("amount_mismatch", 1),
                                                     ("currency_mismatch", 2))


def _traces(*traces: bytes | None) -> Traces:
    return tuple(t for t in traces if t)


class PartitionJoin:
    """The rules for partition p of payments and orders; what they remember in `self.state`
    (state.py), when it comes due in `self.deadlines` and the expiry queues (timers.py),
    how far each partition has been read in `self.payments` and `self.orders_read`
    (progress.py)."""

    def __init__(self, params: JoinParams) -> None:
        self.params = params
        self.state = JoinState(params.timeout_ms + params.grace_ms)
        # The maps themselves, read on the hot path; changed only through self.state.
        self.pending = self.state.pending
        self.orders = self.state.orders
        self.recovered = self.state.recovered
        self.settled = self.state.settled  # matched pairs past their window: order_id -> fingerprint, window end
        self.deadlines = Deadlines(params.timeout_ms)
        seq = sequence()
        self._order_expiry: Expiry[BufferedOrder] = Expiry(seq)
        self._recovered_expiry: Expiry[RecoveredPayment] = Expiry(seq)
        # Unmatched orders past their window, by the payments partition's progress (see _expire).
        self._kept_orders: Expiry[BufferedOrder] = Expiry(seq)
        self.payments = Confirmed()  # each partition's progress by its records
        self.orders_read = Confirmed()
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
        self.payments.note(ts)
        if p.status != "succeeded":
            out.ignored_failed += 1
            return
        oid = p.order_id
        if self._skewed(ts, p):
            out.anomalies.append(Flag("paid_at_skew", oid, (p,), None, _traces(trace)))
        # One lookup per map; the common case (a new payment, or the order already here) is cheap.
        pending = self.pending.get(oid)
        buffered = self.orders.get(oid)
        if pending is not None or (buffered is not None and buffered.paid_id is not None) or oid in self.recovered:
            self._again(oid, p, pending, buffered, out, trace)
            return
        timeout = self.params.timeout_ms
        deadline = ts + timeout
        if buffered is not None and ts - timeout <= buffered.ts <= deadline:
            self._match_order(oid, buffered, ts, p, raw, out, trace)
            return
        if self.settled:
            settled = self.settled.get(oid)
            # Its pair matched, its window closed: what it kept is a fingerprint. It applies to a
            # payment stamped before its end + the horizon (a duplicate or a second payment is
            # stamped near the first; an order_id used again past that is a new order's).
            if settled is not None and ts < (settled & SETTLED_END) + self.params.late_horizon_ms:
                if settled >> 64 == fingerprint(p.payment_id):
                    out.duplicates += 1
                else:  # (the first payment's record is not kept: the report carries the second)
                    out.anomalies.append(Flag("duplicate_payment", oid, (p,), None, _traces(trace)))
                return
        if buffered is not None and buffered.ts > deadline:
            # The order exists but past the window: the payment will be recovered, the order is late.
            self.state.delete(ORDERS, oid)
            out.late.append(Late(Order.decode(buffered.raw), buffered.ts, p.payment_id,
                                 recovery_id_for(p.payment_id), buffered.ts - deadline,
                                 _traces(buffered.trace, trace)))
            self._add_pending(oid, Fresh(ts, LATE, trace, p, raw))
            return
        self._add_pending(oid, Fresh(ts, 0, trace, p, raw))

    def _skewed(self, ts: int, p: Payment) -> bool:
        """paid_at more than the timeout from the event time. Its float timestamp (0.17 us)
        decides unless it is within 1 ms of the bound; then exact milliseconds (0.7 us) do."""
        timeout = self.params.timeout_ms
        near = p.paid_at.timestamp() * 1000 - ts
        if near < timeout - 1 and -near < timeout - 1:
            return False
        skew = epoch_ms(p.paid_at) - ts
        return skew > timeout or -skew > timeout

    def _again(self, oid: str, p: Payment, pending: PendingPayment | None, buffered: BufferedOrder | None,
               out: Decisions, trace: bytes | None) -> None:
        """A payment for an order that has its first payment (pending, matched or recovered):
        the same one again is dropped, another is a `duplicate_payment`."""
        if pending is not None:
            first_id, first_raw = compact.payment_id_in(pending), compact.record_of(pending)
        elif buffered is not None and buffered.paid_id is not None:
            first_id, first_raw = buffered.paid_id, buffered.paid_raw or b""
        else:
            recovered = self.recovered[oid]
            first_id, first_raw = recovered.payment_id, recovered.raw
        if first_id == p.payment_id:
            out.duplicates += 1
        else:
            out.anomalies.append(Flag("duplicate_payment", oid, (compact.payment(first_raw, oid), p), None,
                                      _traces(trace)))

    def _match_order(self, oid: str, buffered: BufferedOrder, ts: int, p: Payment, raw: bytes, out: Decisions,
                     trace: bytes | None) -> None:
        """The payment `p` matches the order waiting for it."""
        buffered.paid_id, buffered.paid_t, buffered.paid_raw = p.payment_id, ts, raw
        self.state.changed(ORDERS, oid)
        window = self.params.timeout_ms + self.params.grace_ms
        if buffered.ts + window <= self.payments_progress:  # kept past its window (_expire): a pair's life now
            self._order_expiry.add(buffered.expires_at(window), oid, buffered)
        out.matched += 1
        cmp, theirs = (p.user_id, p.amount, p.currency), buffered.cmp
        if cmp != theirs:
            assert theirs is not None  # an order waiting for its payment has its fields
            self._report_mismatch(cmp, theirs, p, Order.decode(buffered.raw), oid, out, _traces(trace, buffered.trace))
        # A matched pair never matches again and emits nothing more that needs its
        # order's record, fields or trace (a restored pair has none of them either).
        buffered.raw, buffered.cmp, buffered.trace = b"", None, None

    def on_order(self, ts: int, o: Order, raw: bytes, out: Decisions, trace: bytes | None = None) -> None:
        self.orders_read.note(ts)
        oid = o.order_id
        pending = self.pending.get(oid)
        if pending is not None:
            t = compact.t_of(pending)
            deadline = t + self.params.timeout_ms
            if t - self.params.timeout_ms <= ts <= deadline:
                self._match_payment(oid, pending, t, ts, o, out, trace)
                return
            if ts > deadline:
                if not compact.flags_of(pending) & LATE:
                    self.state.mark_late(oid)
                    pid = compact.payment_id_in(pending)
                    out.late.append(Late(o, ts, pid, recovery_id_for(pid), ts - deadline,
                                         _traces(trace, compact.trace_of(pending))))
                return
            # An order from before the window does not match; it is kept like any unmatched order.
        recovered = self.recovered.get(oid)
        if recovered is not None:
            if not recovered.late:
                recovered.late = True
                self.state.changed(RECOVERED, oid)
                out.late.append(Late(o, ts, recovered.payment_id, recovery_id_for(recovered.payment_id),
                                     max(0, ts - recovered.deadline), _traces(trace, recovered.trace)))
            return
        if oid in self.orders or (self.settled and self._settled_for(oid, ts)):
            out.duplicates += 1  # a repeated order event: the first one stands
            return
        self._add_order(oid, BufferedOrder(ts, raw, (o.user_id, o.amount, o.currency), trace=trace))

    def _settled_for(self, oid: str, ts: int) -> bool:
        """A settled pair of the order_id that a record stamped `ts` belongs to: stamped
        before its window's end + the horizon (as on_payment's)."""
        settled = self.settled.get(oid)
        return settled is not None and ts < (settled & SETTLED_END) + self.params.late_horizon_ms

    def _match_payment(self, oid: str, pending: PendingPayment, t: int, ts: int, o: Order, out: Decisions,
                       trace: bytes | None) -> None:
        """The order `o` matches the payment pending for it."""
        pid, uid, amount, currency, paid = compact.match_fields(pending, o.amount)
        self.state.delete(PENDING, oid)
        entry = BufferedOrder(ts, b"", None, pid, t, paid)  # matched: the order's record is not needed
        self._add_order(oid, entry)
        self.state.changed(ORDERS, oid)
        out.matched += 1
        if uid != o.user_id or currency != o.currency or amount != o.amount:
            self._report_mismatch((uid, amount, currency), (o.user_id, o.amount, o.currency),
                                  compact.payment(paid, oid), o, oid, out, _traces(trace, compact.trace_of(pending)))

    # ------------------------------------------------------------ time

    def advance(self, now_ms: int, payments_at_end: bool, orders_at_end: bool, out: Decisions) -> None:
        """Time out pending payments and expire old entries, given how far each partition was read.

        `*_at_end`: the partition has been read to its end (nothing unread); only then does
        the wall clock count as progress for it. Never past the wall clock otherwise: a
        record stamped ahead (a producer's wrong clock, a forged record) must not time out
        every pending payment at once.
        """
        payments_progress = self.payments.at(now_ms, payments_at_end)
        self.payments_progress = max(self.payments_progress, payments_progress)
        due = self.orders_read.at(now_ms, orders_at_end) - self.params.grace_ms  # deadlines <= due are past
        if self.deadlines.any_due(due):
            for oid, e, deadline in self.deadlines.due(due, self.pending):
                self._recover(oid, e, deadline, now_ms, out)
        self.deadlines.tidy(self.pending)
        self._expire(payments_progress, self.payments.at(now_ms, False), now_ms)

    def _recover(self, oid: str, e: PendingPayment, deadline: int, now_ms: int, out: Decisions) -> None:
        self.state.delete(PENDING, oid)
        trace = compact.trace_of(e)
        self._add_recovered(oid, RecoveredPayment(compact.payment_id_in(e), deadline, compact.record_of(e),
                                                  bool(compact.flags_of(e) & LATE), recovered_at=now_ms, trace=trace))
        out.recoveries.append(Recover(compact.payment_in(e, oid), deadline, _traces(trace)))

    def _expire(self, payments_progress: int, records_progress: int, now_ms: int) -> None:
        """Matched pairs once the payments partition is past their window; unmatched
        orders once it is late_horizon past their window (a payment may land behind
        payments stamped later than its order's window: one of several producers held up;
        it must still match its order, read before it); matched pairs then settle (a
        fingerprint of their payment) until its records are late_horizon past their
        window: a duplicate may land just as late. By the partition's progress, not the
        wall clock: caught up, it is the wall clock; in a backlog (after an outage) it
        keeps the horizon's worth of its records' time, as in steady state, where the
        wall clock would keep nothing. Recovered payments late_horizon after their
        recovery, by the wall clock.

        Settled pairs go by `records_progress` alone, what the partition's records confirm
        (progress.Confirmed.time, never past the clock), not the wall clock it takes once
        read to its end: reading a backlog more than a horizon old to its end jumps the
        progress from its records' time to the clock, and a pair matched in that interval
        is then past its window and past the horizon at once. It still settles, and stays
        a horizon of its records' time, so that when the interval's offsets commit fails
        (at_least_once) its payment read again finds it (a duplicate, dropped) although
        its order's tombstone landed. A pair still leaves the live state when the clock
        passes its window. The cost: an idle payments partition keeps its settled pairs
        until its records move on (two records past them by the horizon), a horizon's
        worth of its records' time at most (a pair needs a payment); an order_id and 16
        bytes each. Unmatched orders, which hold their whole record and keep coming on
        an idle payments partition, stay by the partition's progress."""
        window = self.params.timeout_ms + self.params.grace_ms
        horizon = self.params.late_horizon_ms
        for oid, entry in self._order_expiry.due(payments_progress, self.orders):
            expiry = entry.expires_at(window)
            if expiry > payments_progress:
                self._order_expiry.add(expiry, oid, entry)  # matched since: lives longer
            elif entry.paid_id is None and expiry + horizon > payments_progress:
                self._kept_orders.add(expiry, oid, entry)  # forgotten once progress - horizon passes it
            else:
                self.state.delete(ORDERS, oid)
                if entry.paid_id is not None and expiry + horizon > records_progress:
                    self.state.settle(oid, fingerprint(entry.paid_id), expiry)
        self.state.forget_settled(records_progress - horizon)
        for oid, entry in self._kept_orders.due(payments_progress - horizon, self.orders):
            if entry.paid_id is None:  # (matched by a late payment: _match_order scheduled it)
                self.state.delete(ORDERS, oid)
        self.state.expire_bundles(payments_progress)
        for oid, _ in self._recovered_expiry.due(now_ms - self.params.late_horizon_ms, self.recovered):
            self.state.delete(RECOVERED, oid)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _report_mismatch(pay: Cmp, order: Cmp, p: Payment, o: Order, oid: str, out: Decisions,
                         traces: Traces) -> None:
        for kind, i in MISMATCH_KINDS:
            if pay[i] != order[i]:
                out.anomalies.append(Flag(kind, oid, (p,), o, traces))

    def _add_pending(self, oid: str, entry: Fresh) -> None:
        self.state.put(PENDING, oid, entry)
        self.deadlines.add(oid, entry.t)

    def _add_order(self, oid: str, entry: BufferedOrder) -> None:
        self.state.put(ORDERS, oid, entry)
        self._order_expiry.add(entry.expires_at(self.params.timeout_ms + self.params.grace_ms), oid, entry)

    def _add_recovered(self, oid: str, entry: RecoveredPayment) -> None:
        self.state.put(RECOVERED, oid, entry)
        self._recovered_expiry.add(entry.recovered_at, oid, entry)

    # ------------------------------------------------------------ restore and gauges

    def restore(self, change: Change) -> None:
        """Install a changelog value (see JoinState.install) and schedule what comes due."""
        self.state.install(change)
        value = change.value
        if value is None:
            return
        window = self.params.timeout_ms + self.params.grace_ms
        if change.store == Store.SETTLED:  # a bundle of settled pairs: forgotten by the payments' progress
            return
        if isinstance(value, list):  # a bundle of matched pairs
            for oid, matched in cast(Bundle, value):
                self._order_expiry.add(matched.expires_at(window), oid, matched)
            return
        key = change.key
        assert isinstance(key, str)
        if isinstance(value, bytes):  # a pending payment
            self.deadlines.add(key, compact.t_of(value))
        elif isinstance(value, BufferedOrder):
            self._order_expiry.add(value.expires_at(window), key, value)
        else:
            assert isinstance(value, RecoveredPayment)
            self._recovered_expiry.add(value.recovered_at, key, value)

    def restore_pending(self, entries: dict[str, PendingPayment]) -> None:
        """Install many pending payments read from the changelog at once (each with its
        PERSISTED bit set: what the changelog holds is persisted)."""
        self.state.install_pending(entries)
        self.deadlines.rebuild(self.pending)

    def oldest_pending_time(self) -> int | None:
        """Event time of (about) the oldest pending payment (timers.Deadlines.oldest)."""
        return self.deadlines.oldest(self.pending)

    def sizes(self) -> tuple[int, int, int]:
        return self.state.sizes()
