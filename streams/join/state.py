"""The join's state for one pair of partitions, and its changelog bookkeeping.

The rules (core.py) decide; this keeps what they decided to remember, and which of it
the changelog does not hold yet. Every entry has a `persisted` flag (the changelog may
hold a value for its key); every store has a dirty set (keys changed since the last
commit). At each commit `take_changes()` gives the net changes: an entry created and
removed between two commits never reaches the changelog, a persisted one that is gone
becomes a tombstone.

Matched pairs are kept (to recognise duplicate payments) until their window closes.
They are written in bundles, one record per commit, and a bundle is deleted once all
its pairs have expired: two changelog records per commit instead of two per order.

A matched pair whose window has closed is then "settled": only its order_id, a 64-bit
fingerprint of its payment_id and its window's end are kept, until the payments
partition's records are the late horizon past that end (what they confirm, not the wall
clock the partition's progress is once read to its end: core._expire), so that a
duplicate of its payment delivered late (one of several producers held up behind the
others) is still dropped, and a second payment is still an anomaly. Settled entries go
to the changelog in bundles too (key b"s:" and a number shared with the matched pairs'
bundles, so that a restore replays both in the order they were written), a bundle
deleted once all its entries are forgotten.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import Any, cast

from schemas import Order, Payment
from streams.join import compact

# A bundle record holds matched pairs up to this many bytes (encoded), so that it fits the
# changelog's max.message.bytes whatever the payments weigh: counted in bytes, not pairs,
# because 2,000 pairs of 700-byte payments were already over 1 MB.
BUNDLE_MAX_BYTES = 512 * 1024
PAIR_OVERHEAD = 28  # the fixed part of one encoded pair (changelog._PAIR)

Cmp = tuple[str, Decimal, str]  # (user_id, amount, currency): what a matched pair must agree on


class Store(IntEnum):
    """The join's stores, and the changelog key space of each."""

    PENDING = 0  # payments waiting for their order, by order_id
    ORDERS = 1  # orders waiting for their payment, and matched pairs (kept to spot duplicates)
    RECOVERED = 2  # payments recovered, remembered to recognise their late order
    MATCHED = 3  # bundles of matched pairs, by bundle number (changelog only)
    SETTLED = 4  # bundles of settled pairs (order_id, payment fingerprint, window end), by bundle number


# ---------------------------------------------------------------- entries
# Orders keep the record's original bytes (for the changelog and the outputs) and only
# the few fields the hot path compares. A matched pair or recovered payment keeps its
# payment's raw record or, when it came from a pending payment, that entry's compact
# payment part (compact.payment() reads both).


# A pending payment is one compact bytes value once a commit has written it, a
# compact.Fresh (the decoded payment and its record) until then: streams/join/compact.py.
PendingPayment = compact.Pending


class BufferedOrder:
    """An order kept for a payment still to come, or a matched order kept to spot duplicates."""

    __slots__ = ("cmp", "paid_id", "paid_raw", "paid_t", "persisted", "raw", "trace", "ts")

    def __init__(self, ts: int, raw: bytes, cmp: Cmp | None, paid_id: str | None = None, paid_t: int = 0,
                 paid_raw: bytes | None = None, persisted: bool = False, trace: bytes | None = None) -> None:
        self.ts, self.raw, self.cmp, self.persisted = ts, raw, cmp, persisted
        self.paid_id, self.paid_t, self.paid_raw = paid_id, paid_t, paid_raw
        self.trace = trace  # the order record's traceparent, while it waits for its payment

    def expires_at(self, window_ms: int) -> int:
        return max(self.ts, self.paid_t) + window_ms


class RecoveredPayment:
    __slots__ = ("deadline", "late", "payment_id", "persisted", "raw", "recovered_at", "trace")

    def __init__(self, payment_id: str, deadline: int, raw: bytes, late: bool, *, recovered_at: int,
                 trace: bytes | None, persisted: bool = False) -> None:
        """(`persisted` is JoinState's to set: put() and install() do.)"""
        self.payment_id, self.deadline, self.raw, self.late, self.persisted = payment_id, deadline, raw, late, persisted
        self.recovered_at = recovered_at  # wall clock (ms) when the recovery was emitted
        self.trace = trace  # the payment's traceparent


Entry = PendingPayment | BufferedOrder | RecoveredPayment
Bundle = list[tuple[str, BufferedOrder]]  # matched pairs: (order_id, the matched order with its payment)
Settled = list[tuple[str, int, int]]  # settled pairs: (order_id, payment fingerprint, window end)

_MASK = SETTLED_END = (1 << 64) - 1  # a settled value's window end: value & SETTLED_END
SETTLED_OVERHEAD = 18  # the fixed part of one encoded settled entry (changelog._SETTLED)


def fingerprint(payment_id: str) -> int:
    """64 bits of the payment_id's SHA-256: what a settled pair keeps of its payment. Two
    distinct payments of one order alike by chance (2^-64) would be taken for duplicates."""
    return int.from_bytes(hashlib.sha256(payment_id.encode()).digest()[:8], "big")


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 1.2 us to make, a restore makes millions
class Change:
    """One changelog record to write: a store's key and its value now (None: delete it)."""

    store: Store
    key: str | int  # an order_id, or a bundle number for MATCHED
    value: Entry | Bundle | Settled | None


def payment_cmp(p: Payment) -> Cmp:
    return (p.user_id, p.amount, p.currency)


def order_cmp(o: Order) -> Cmp:
    return (o.user_id, o.amount, o.currency)


# ---------------------------------------------------------------- the state of one pair


class JoinState:
    """Pending payments, buffered and matched orders, recovered payments of one pair, and
    what the changelog must be told, kept the way Kafka Streams' change-logging store
    keeps it: the rules read the three maps and change them only through `put`,
    `delete`, `changed` and `mark_late`; which keys the changelog holds (each entry's
    persisted flag, or a pending entry's PERSISTED bit) is this class's business alone."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms  # how long a matched pair is kept: timeout + grace
        self.pending: dict[str, PendingPayment] = {}
        self.orders: dict[str, BufferedOrder] = {}
        self.recovered: dict[str, RecoveredPayment] = {}
        self._live: tuple[dict[str, Any], dict[str, Any], dict[str, Any]] = (self.pending, self.orders, self.recovered)
        # per store: order_id -> True if the changelog may hold a value for it (a tombstone
        # is due if the entry is gone by the commit)
        self._dirty: tuple[dict[str, bool], dict[str, bool], dict[str, bool]] = ({}, {}, {})
        self._bundles: list[tuple[int, int]] = []  # heap of (expiry, bundle number) of bundles in the log
        self._expired_bundles: list[int] = []
        self._next_bundle = 0  # shared by matched and settled bundles: a restore replays them in this order
        # Settled pairs: order_id -> fingerprint << 64 | window end (one int: 40 bytes); the
        # order_ids in the order they were settled (forgotten from the front: see forget_settled).
        self.settled: dict[str, int] = {}
        self.settled_queue: deque[str] = deque()
        # order_id -> how many of its places in the queue are stale (it settled again, and
        # went to the end): skipped when they reach the front. Rare: usually empty.
        self._stale_places: dict[str, int] = {}
        self._new_settled: dict[str, None] = {}  # settled since the last commit, in order
        self._settled_bundles: list[tuple[int, int]] = []  # heap of (last window end, number) in the log
        self._expired_settled: list[int] = []

    # ------------------------------------------------------------ changes the rules make

    def put(self, store: Store, oid: str, entry: Entry) -> None:
        """A new entry under `oid` (a pending payment: a compact.Fresh), replacing the one
        there, if any (an order waiting under its key matched by a copy of itself: the
        changelog may hold the replaced one, so the new one counts as persisted too)."""
        dirty = self._dirty[store]
        in_log = dirty.get(oid, False)  # a removed entry's value, not tombstoned yet
        if not in_log:
            replaced = self._live[store].get(oid)
            in_log = replaced is not None and _persisted(replaced)
        dirty[oid] = in_log
        if isinstance(entry, compact.Fresh):
            if in_log:
                entry.flags |= compact.PERSISTED
        elif not isinstance(entry, bytes):
            entry.persisted = in_log
        self._live[store][oid] = entry

    def delete(self, store: Store, oid: str) -> None:
        """The entry under `oid` goes."""
        self._touch(store, oid, self._live[store].pop(oid))

    def changed(self, store: Store, oid: str) -> None:
        """The entry under `oid` changed in place (an order now a matched pair, a recovered
        payment now with its late order): written again at the next commit."""
        self._touch(store, oid, self._live[store][oid])

    def mark_late(self, oid: str) -> None:
        """The pending payment under `oid` has its late order now."""
        self.pending[oid] = compact.flagged(self.pending[oid], compact.LATE)
        self.changed(Store.PENDING, oid)

    def _touch(self, store: Store, oid: str, entry: Entry) -> None:
        dirty = self._dirty[store]
        dirty[oid] = _persisted(entry) or dirty.get(oid, False)

    def settle(self, oid: str, fp: int, window_end: int) -> None:
        """The matched pair under `oid` has left the orders (its window closed): keep its
        payment's fingerprint (the order_id must not be in `orders`). An order_id settled
        already (a new pair of an order_id used again, its records stamped past the first
        pair's end + the horizon, before that was forgotten) goes to the end of the queue
        with its new end, as a restore lines it up: its old place is skipped."""
        settled = self.settled
        if oid in settled:
            del settled[oid]
            self._stale_places[oid] = self._stale_places.get(oid, 0) + 1
            self._new_settled.pop(oid, None)
        settled[oid] = fp << 64 | (max(window_end, 0) & _MASK)
        self.settled_queue.append(oid)
        self._new_settled[oid] = None

    def forget_settled(self, limit: int) -> None:
        """Settled pairs whose window ended at or before `limit` (what the payments
        partition's records confirm, minus the late horizon: core._expire), from the front
        of the queue: one settled out of order (a pair matched late) waits for those before
        it, never goes early; each goes by the time the records are the late horizon past
        what they were when the pair settled. Bundles whose entries are all forgotten become tombstones."""
        queue, settled, stale = self.settled_queue, self.settled, self._stale_places
        while queue:
            if stale and queue[0] in stale:  # a place its order_id left (settled again)
                oid = queue.popleft()
                if stale[oid] == 1:
                    del stale[oid]
                else:
                    stale[oid] -= 1
                continue
            value = settled.get(queue[0])
            if value is not None and value & _MASK > limit:
                break
            oid = queue.popleft()
            if value is not None:
                del settled[oid]
                self._new_settled.pop(oid, None)
        bundles = self._settled_bundles
        while bundles and bundles[0][0] <= limit:
            self._expired_settled.append(heapq.heappop(bundles)[1])

    def expire_bundles(self, payments_progress: int) -> None:
        bundles = self._bundles
        while bundles and bundles[0][0] <= payments_progress:
            self._expired_bundles.append(heapq.heappop(bundles)[1])

    # ------------------------------------------------------------ the changelog

    def take_changes(self) -> list[Change]:
        """Net changes since the last call; they count as persisted from here on.

        Pending payments, unmatched orders and recovered payments come under their
        order_id; matched pairs as one MATCHED bundle (key: its number, value: its
        pairs), and a bundle whose pairs have all expired as its tombstone.
        """
        changes: list[Change] = []
        self._pending_changes(changes)
        matched = self._order_changes(changes)
        self._recovered_changes(changes)
        for number in self._expired_bundles:
            changes.append(Change(Store.MATCHED, number, None))
        self._expired_bundles.clear()
        for bundle in _by_size(matched):
            number = self._next_bundle
            self._next_bundle += 1
            heapq.heappush(self._bundles, (max(e.expires_at(self.window_ms) for _, e in bundle), number))
            changes.append(Change(Store.MATCHED, number, bundle))
        self._settled_changes(changes)
        return changes

    def _settled_changes(self, changes: list[Change]) -> None:
        """Pairs settled since the last commit, in bundles; bundles all forgotten, as tombstones."""
        for number in self._expired_settled:
            changes.append(Change(Store.SETTLED, number, None))
        self._expired_settled.clear()
        if not self._new_settled:
            return
        settled = self.settled
        entries: Settled = []
        for oid in self._new_settled:
            value = settled[oid]
            entries.append((oid, value >> 64, value & _MASK))
        self._new_settled.clear()
        for bundle in _settled_by_size(entries):
            number = self._next_bundle
            self._next_bundle += 1
            heapq.heappush(self._settled_bundles, (max(e for _, _, e in bundle), number))
            changes.append(Change(Store.SETTLED, number, bundle))

    def _pending_changes(self, changes: list[Change]) -> None:
        """A pending payment waiting across this commit is packed here (compact.py)."""
        dirty, live = self._dirty[Store.PENDING], self.pending
        for oid, in_log in dirty.items():
            entry = live.get(oid)
            if entry is None:
                if in_log:
                    changes.append(Change(Store.PENDING, oid, None))
                continue
            if isinstance(entry, compact.Fresh):
                entry.flags |= compact.PERSISTED
                entry = live[oid] = entry.packed()
            else:
                entry = live[oid] = compact.with_flag(entry, compact.PERSISTED)
            changes.append(Change(Store.PENDING, oid, entry))
        dirty.clear()

    def _order_changes(self, changes: list[Change]) -> Bundle:
        """Unmatched orders under their key; an order matched since the last commit goes
        to the next bundle, and its unmatched record, if the changelog has one, gives way."""
        dirty, live = self._dirty[Store.ORDERS], self.orders
        matched: Bundle = []
        for oid, in_log in dirty.items():
            entry = live.get(oid)
            if entry is None or entry.paid_id is not None:
                if in_log or (entry is not None and entry.persisted):
                    changes.append(Change(Store.ORDERS, oid, None))
                if entry is not None:
                    entry.persisted = False  # its bundle holds it
                    matched.append((oid, entry))
                continue
            entry.persisted = True
            changes.append(Change(Store.ORDERS, oid, entry))
        dirty.clear()
        return matched

    def _recovered_changes(self, changes: list[Change]) -> None:
        dirty, live = self._dirty[Store.RECOVERED], self.recovered
        for oid, in_log in dirty.items():
            entry = live.get(oid)
            if entry is not None:
                entry.persisted = True
                changes.append(Change(Store.RECOVERED, oid, entry))
            elif in_log:
                changes.append(Change(Store.RECOVERED, oid, None))
        dirty.clear()

    def install(self, change: Change) -> None:
        """Install what the changelog holds for a key (its last value); the entry counts
        as persisted. Bundles go first (in number order), the other keys override them."""
        store, key, value = change.store, change.key, change.value
        if value is None:
            return
        if store == Store.SETTLED:
            assert isinstance(key, int) and isinstance(value, list)
            self._install_settled(key, cast(Settled, value))
            return
        if type(value) is list:  # a bundle of matched pairs (Store.MATCHED)
            assert isinstance(key, int)
            pairs = cast(Bundle, value)
            settled = self.settled
            for oid, matched in pairs:
                self.orders[oid] = matched
                if settled:
                    settled.pop(oid, None)  # (a bundle written later: the pair is newer)
            heapq.heappush(self._bundles, (max((e.expires_at(self.window_ms) for _, e in pairs), default=0), key))
            self._next_bundle = max(self._next_bundle, key + 1)
            return
        assert isinstance(key, str)
        if store == Store.PENDING:
            assert isinstance(value, bytes)
            self.pending[key] = compact.with_flag(value, compact.PERSISTED)
            return
        assert isinstance(value, (BufferedOrder, RecoveredPayment))
        value.persisted = True
        self._live[store][key] = value

    def _install_settled(self, number: int, entries: Settled) -> None:
        """A bundle of settled pairs (bundles are installed in number order, matched and
        settled together, so the later one for an order wins, and goes where the live
        join's queue has it: after those of the bundles before). A key of the order's own
        (p:, o:, r:) leaves it be, as the live join does: a settled entry applies to
        records stamped before its end + the horizon, an order's later records are its
        key's (and one forgotten by the live join but still in a bundle is harmless)."""
        orders, settled = self.orders, self.settled
        for oid, fp, window_end in entries:
            pair = orders.get(oid)
            if pair is not None and pair.paid_id is not None:
                del orders[oid]  # (its pair, written before it settled)
            settled.pop(oid, None)  # (settled again: to its later place)
            settled[oid] = fp << 64 | (max(window_end, 0) & _MASK)
        heapq.heappush(self._settled_bundles, (max((e for _, _, e in entries), default=0), number))
        self._next_bundle = max(self._next_bundle, number + 1)

    def install_pending(self, entries: dict[str, PendingPayment]) -> None:
        """Many packed pending payments as the changelog holds them (PERSISTED set): the
        last step of a restore, which also lines the settled pairs up to be forgotten in
        the order the dict keeps them (the live core's: an order_id settled again goes to
        the end)."""
        self.pending.update(entries)
        self.settled_queue = deque(self.settled)
        self._stale_places.clear()

    def sizes(self) -> tuple[int, int, int]:
        return len(self.pending), len(self.orders), len(self.recovered)


def _persisted(entry: Entry) -> bool:
    """The changelog may hold a value for the entry's key."""
    if isinstance(entry, (BufferedOrder, RecoveredPayment)):
        return entry.persisted
    return bool(compact.flags_of(entry) & compact.PERSISTED)


def _settled_by_size(entries: Settled) -> list[Settled]:
    """Settled entries in bundles of at most BUNDLE_MAX_BYTES encoded."""
    bundles: list[Settled] = []
    current: Settled = []
    size = 0
    for entry in entries:
        n = SETTLED_OVERHEAD + len(entry[0]) * 4
        if current and size + n > BUNDLE_MAX_BYTES:
            bundles.append(current)
            current, size = [], 0
        current.append(entry)
        size += n
    if current:
        bundles.append(current)
    return bundles


def _by_size(pairs: Bundle) -> list[Bundle]:
    """Split matched pairs into bundles of at most BUNDLE_MAX_BYTES encoded (a pair larger
    than that alone, which input size limits keep well under the record limit)."""
    bundles: list[Bundle] = []
    current: Bundle = []
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
