"""The join's decisions, for one co-partitioned pair of payments and orders partitions.

Pure: no Kafka, no clock, no I/O. The runtime feeds it decoded records with their event
times (Kafka timestamps, in ms) and tells it how far each partition has been read and
what time it is; the core returns what to emit and records which state entries changed,
so that only net changes reach the changelog.

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
  never reach the core: the runtime sends them to the DLQ.)
* Expiry goes by expiry time (heaps), so one out-of-order entry holds up nothing else.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from decimal import Decimal

from schemas import Order, Payment, recovery_id_for

PAYMENT = 0
ORDER = 1
RECOVERED = 2
MATCHED = 3  # a bundle of matched pairs, written as one changelog record per commit
# A bundle record holds matched pairs up to this many bytes (encoded), so that it fits the
# changelog's max.message.bytes whatever the payments weigh: counted in bytes, not pairs,
# because 2,000 pairs of 700-byte payments were already over 1 MB.
BUNDLE_MAX_BYTES = 512 * 1024
PAIR_OVERHEAD = 28  # the fixed part of one encoded pair (changelog._PAIR)

Cmp = tuple[str, Decimal, str]  # (user_id, amount, currency): what a matched pair must agree on


@dataclass(frozen=True, slots=True)
class JoinParams:
    timeout_ms: int
    grace_ms: int
    late_horizon_ms: int
    hmac_key: bytes | None = None


# ---------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class Recover:
    payment: Payment
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class Late:
    order: Order
    order_ts: int
    payment_id: str
    recovery_id: str
    lateness_ms: int


@dataclass(frozen=True, slots=True)
class Flag:
    kind: str
    order_id: str
    payments: tuple[Payment, ...]
    order: Order | None = None


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


# ---------------------------------------------------------------- state entries
# Entries keep the record's original bytes (for the changelog and the outputs) and only
# the few fields the hot path compares, so that a pending entry stays well under 1 KB.


class PendingPayment:
    __slots__ = ("payment_id", "t", "raw", "cmp", "late", "persisted")

    def __init__(self, payment_id: str, t: int, raw: bytes, cmp: Cmp, late: bool = False, persisted: bool = False):
        self.payment_id, self.t, self.raw, self.cmp, self.late, self.persisted = payment_id, t, raw, cmp, late, persisted


class BufferedOrder:
    """An order kept for a payment still to come, or a matched order kept to spot duplicates."""

    __slots__ = ("ts", "raw", "cmp", "paid_id", "paid_t", "paid_raw", "persisted")

    def __init__(self, ts: int, raw: bytes, cmp: Cmp, paid_id: str | None = None, paid_t: int = 0,
                 paid_raw: bytes | None = None, persisted: bool = False):
        self.ts, self.raw, self.cmp, self.persisted = ts, raw, cmp, persisted
        self.paid_id, self.paid_t, self.paid_raw = paid_id, paid_t, paid_raw

    def expires_at(self, window_ms: int) -> int:
        return max(self.ts, self.paid_t) + window_ms


class RecoveredPayment:
    __slots__ = ("payment_id", "deadline", "raw", "late", "persisted", "recovered_at")

    def __init__(self, payment_id: str, deadline: int, raw: bytes, late: bool = False, persisted: bool = False,
                 recovered_at: int = 0):
        self.payment_id, self.deadline, self.raw, self.late, self.persisted = payment_id, deadline, raw, late, persisted
        self.recovered_at = recovered_at  # wall clock (ms) when the recovery was emitted


def payment_cmp(p: Payment) -> Cmp:
    return (p.user_id, p.amount, p.currency)


def order_cmp(o: Order) -> Cmp:
    return (o.user_id, o.amount, o.currency)


MISMATCH_KINDS = (("user_mismatch", 0), ("amount_mismatch", 1), ("currency_mismatch", 2))


class PartitionJoin:
    """Join state and decisions for partition p of payments and orders (and the changelog)."""

    def __init__(self, params: JoinParams) -> None:
        self.params = params
        self.pending: dict[str, PendingPayment] = {}
        self.orders: dict[str, BufferedOrder] = {}
        self.recovered: dict[str, RecoveredPayment] = {}
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
        # order_id -> True if the changelog may hold a value for it (a tombstone is due if the entry is gone)
        self.dirty: tuple[dict[str, bool], dict[str, bool], dict[str, bool]] = ({}, {}, {})
        # Matched pairs are kept (to recognise duplicate payments) until their window closes.
        # They are persisted in bundles, one record per commit, and each bundle is deleted
        # once all its pairs have expired: two changelog records per commit instead of two
        # per order.
        self._new_matched: list[tuple[str, BufferedOrder]] = []
        self._bundles: list[tuple[int, int]] = []  # heap of (expiry, bundle number) of bundles in the log
        self._expired_bundles: list[int] = []
        self._next_bundle = 0

    # ------------------------------------------------------------ records

    def on_payment(self, ts: int, p: Payment, raw: bytes, out: Decisions) -> None:
        key = self.params.hmac_key
        if key is not None and not p.signature_valid(key):
            # A forged or corrupted payment moves no progress and expires nothing.
            if p.status == "succeeded":
                out.anomalies.append(Flag("bad_signature", p.order_id, (p,)))
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
                out.anomalies.append(Flag("duplicate_payment", oid, (Payment.decode(first_raw), p)))
            return

        t = ts
        timeout = self.params.timeout_ms
        deadline = t + timeout
        cmp = (p.user_id, p.amount, p.currency)
        if buffered is not None:
            if t - timeout <= buffered.ts <= deadline:
                buffered.paid_id, buffered.paid_t, buffered.paid_raw = p.payment_id, t, raw
                if buffered.persisted:
                    self.dirty[ORDER][oid] = True  # its unmatched record gives way to the bundle
                self._new_matched.append((oid, buffered))
                out.matched += 1
                if cmp != buffered.cmp:
                    self._report_mismatch(cmp, buffered.cmp, p, Order.decode(buffered.raw), oid, out)
                return
            if buffered.ts > deadline:
                # The order exists but past the window: the payment will be recovered, the order is late.
                self._drop_order(oid, buffered)
                out.late.append(Late(Order.decode(buffered.raw), buffered.ts, p.payment_id,
                                     recovery_id_for(p.payment_id), buffered.ts - deadline))
                self._add_pending(oid, PendingPayment(p.payment_id, t, raw, cmp, late=True))
                return
        self._add_pending(oid, PendingPayment(p.payment_id, t, raw, cmp))

    def on_order(self, ts: int, o: Order, raw: bytes, out: Decisions) -> None:
        if ts > self.order_time:
            self.order_time = ts
        oid = o.order_id
        pending = self.pending.get(oid)
        if pending is not None:
            deadline = pending.t + self.params.timeout_ms
            if pending.t - self.params.timeout_ms <= ts <= deadline:
                self._drop_pending(oid, pending)
                entry = BufferedOrder(ts, raw, (o.user_id, o.amount, o.currency), pending.payment_id, pending.t,
                                      pending.raw)
                self._add_order(oid, entry)
                self._new_matched.append((oid, entry))
                out.matched += 1
                if pending.cmp != entry.cmp:
                    self._report_mismatch(pending.cmp, entry.cmp, Payment.decode(pending.raw), o, oid, out)
                return
            if ts > deadline:
                if not pending.late:
                    pending.late = True
                    self._mark(PAYMENT, oid, pending.persisted)
                    out.late.append(Late(o, ts, pending.payment_id, recovery_id_for(pending.payment_id), ts - deadline))
                return
            # An order from before the window does not match; it is kept like any unmatched order.
        recovered = self.recovered.get(oid)
        if recovered is not None:
            if not recovered.late:
                recovered.late = True
                self._mark(RECOVERED, oid, recovered.persisted)
                out.late.append(Late(o, ts, recovered.payment_id, recovery_id_for(recovered.payment_id),
                                     max(0, ts - recovered.deadline)))
            return
        if oid in self.orders:
            out.duplicates += 1  # a repeated order event: the first one stands
            return
        self._add_order(oid, BufferedOrder(ts, raw, (o.user_id, o.amount, o.currency)))

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
            self._drop_pending(oid, pending)
            self._add_recovered(oid, RecoveredPayment(pid, deadline, pending.raw, pending.late, recovered_at=now_ms))
            out.recoveries.append(Recover(Payment.decode(pending.raw), deadline))
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
            self._drop_order(oid, entry)
        bundles = self._bundles
        while bundles and bundles[0][0] <= payments_progress:
            self._expired_bundles.append(heapq.heappop(bundles)[1])
        recovered = self.recovered
        rqueue = self._recovered_queue
        forget_before = now_ms - self.params.late_horizon_ms
        while rqueue and rqueue[0][0] <= forget_before:
            _, _, oid, rentry = heapq.heappop(rqueue)
            if recovered.get(oid) is not rentry:
                continue
            del recovered[oid]
            self._mark(RECOVERED, oid, rentry.persisted)

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _report_mismatch(pay: Cmp, order: Cmp, p: Payment, o: Order, oid: str, out: Decisions) -> None:
        for kind, i in MISMATCH_KINDS:
            if pay[i] != order[i]:
                out.anomalies.append(Flag(kind, oid, (p,), o))

    def _mark(self, kind: int, oid: str, persisted: bool) -> None:
        dirty = self.dirty[kind]
        dirty[oid] = persisted or dirty.get(oid, False)

    def _add_pending(self, oid: str, entry: PendingPayment) -> None:
        dirty = self.dirty[PAYMENT]
        entry.persisted = in_log = dirty.get(oid, False)
        self.pending[oid] = entry
        dirty[oid] = in_log
        heapq.heappush(self._timers, (entry.t + self.params.timeout_ms, oid, entry.payment_id))

    def _drop_pending(self, oid: str, entry: PendingPayment) -> None:
        del self.pending[oid]
        dirty = self.dirty[PAYMENT]
        dirty[oid] = entry.persisted or dirty.get(oid, False)

    def _add_order(self, oid: str, entry: BufferedOrder) -> None:
        dirty = self.dirty[ORDER]
        entry.persisted = in_log = dirty.get(oid, False)
        self.orders[oid] = entry
        self._queue_order(oid, entry)
        dirty[oid] = in_log

    def _queue_order(self, oid: str, entry: BufferedOrder) -> None:
        window = self.params.timeout_ms + self.params.grace_ms
        heapq.heappush(self._order_queue, (entry.expires_at(window), next(self._seq), oid, entry))

    def _queue_recovered(self, oid: str, entry: RecoveredPayment) -> None:
        heapq.heappush(self._recovered_queue, (entry.recovered_at, next(self._seq), oid, entry))

    def _drop_order(self, oid: str, entry: BufferedOrder) -> None:
        del self.orders[oid]
        self._mark(ORDER, oid, entry.persisted)

    def _add_recovered(self, oid: str, entry: RecoveredPayment) -> None:
        entry.persisted = self.dirty[RECOVERED].get(oid, False)
        self.recovered[oid] = entry
        self._queue_recovered(oid, entry)
        self._mark(RECOVERED, oid, entry.persisted)

    # ------------------------------------------------------------ changelog

    def take_changes(self) -> list[tuple[int, str | int, object | None]]:
        """Net state changes since the last call: (kind, key, value or None for a tombstone).

        For pending payments, unmatched orders and recovered payments the key is the
        order_id and the value the entry; an entry created and removed between two calls
        never appears. Matched pairs come as one MATCHED bundle (key: its number, value:
        [(order_id, entry)]), and a bundle whose pairs have all expired as its tombstone.
        The caller writes these to the changelog; they count as persisted from here on.
        """
        changes: list[tuple[int, str | int, object | None]] = []
        for kind, live in ((PAYMENT, self.pending), (ORDER, self.orders), (RECOVERED, self.recovered)):
            dirty = self.dirty[kind]
            if not dirty:
                continue
            for oid, in_log in dirty.items():
                entry = live.get(oid)
                if kind == ORDER and entry is not None and entry.paid_id is not None:  # type: ignore[union-attr]
                    if in_log or entry.persisted:  # type: ignore[union-attr]
                        changes.append((ORDER, oid, None))  # matched: its bundle holds it now
                    entry.persisted = False  # type: ignore[union-attr]
                elif entry is not None:
                    entry.persisted = True  # type: ignore[union-attr]
                    changes.append((kind, oid, entry))
                elif in_log:
                    changes.append((kind, oid, None))
            dirty.clear()
        for number in self._expired_bundles:
            changes.append((MATCHED, number, None))
        self._expired_bundles.clear()
        if self._new_matched:
            orders = self.orders
            live_pairs = [(oid, e) for oid, e in self._new_matched if orders.get(oid) is e]
            self._new_matched = []
            window = self.params.timeout_ms + self.params.grace_ms
            for bundle in _by_size(live_pairs):
                number = self._next_bundle
                self._next_bundle += 1
                heapq.heappush(self._bundles, (max(e.expires_at(window) for _, e in bundle), number))
                changes.append((MATCHED, number, bundle))
        return changes

    def restore(self, kind: int, key: str | int, entry: object) -> None:
        """Install what the changelog holds for a key (its last value).

        Bundles first (in number order), then the other entries, which take precedence.
        """
        if kind == MATCHED:
            assert isinstance(key, int) and isinstance(entry, list)
            window = self.params.timeout_ms + self.params.grace_ms
            for oid, pair in entry:
                self.orders[oid] = pair
                self._queue_order(oid, pair)
            heapq.heappush(self._bundles, (max((e.expires_at(window) for _, e in entry), default=0), key))
            self._next_bundle = max(self._next_bundle, key + 1)
            return
        assert isinstance(key, str)
        oid = key
        entry.persisted = True  # type: ignore[attr-defined]
        if kind == PAYMENT:
            assert isinstance(entry, PendingPayment)
            self.pending[oid] = entry
            heapq.heappush(self._timers, (entry.t + self.params.timeout_ms, oid, entry.payment_id))
        elif kind == ORDER:
            assert isinstance(entry, BufferedOrder)
            self.orders[oid] = entry
            self._queue_order(oid, entry)
        else:
            assert isinstance(entry, RecoveredPayment)
            self.recovered[oid] = entry
            self._queue_recovered(oid, entry)

    def oldest_pending_time(self) -> int | None:
        """Event time of (about) the oldest pending payment: the earliest live timer."""
        for deadline, oid, pid in self._timers[:64]:
            entry = self.pending.get(oid)
            if entry is not None and entry.payment_id == pid:
                return deadline - self.params.timeout_ms
        return next((e.t for e in self.pending.values()), None) if self.pending else None

    def sizes(self) -> tuple[int, int, int]:
        return len(self.pending), len(self.orders), len(self.recovered)


def _by_size(pairs: list[tuple[str, BufferedOrder]]) -> list[list[tuple[str, BufferedOrder]]]:
    """Split matched pairs into bundles of at most BUNDLE_MAX_BYTES encoded (a pair larger
    than that alone, which input size limits keep well under the record limit)."""
    bundles: list[list[tuple[str, BufferedOrder]]] = []
    current: list[tuple[str, BufferedOrder]] = []
    size = 0
    for oid, e in pairs:
        n = PAIR_OVERHEAD + len(oid) * 4 + len(e.paid_id or "") * 4 + len(e.paid_raw or b"")
        if current and size + n > BUNDLE_MAX_BYTES:
            bundles.append(current)
            current, size = [], 0
        current.append((oid, e))
        size += n
    if current:
        bundles.append(current)
    return bundles
