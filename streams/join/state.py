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
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum

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

    __slots__ = ("ts", "raw", "cmp", "paid_id", "paid_t", "paid_raw", "persisted", "trace")

    def __init__(self, ts: int, raw: bytes, cmp: Cmp | None, paid_id: str | None = None, paid_t: int = 0,
                 paid_raw: bytes | None = None, persisted: bool = False, trace: bytes | None = None):
        self.ts, self.raw, self.cmp, self.persisted = ts, raw, cmp, persisted
        self.paid_id, self.paid_t, self.paid_raw = paid_id, paid_t, paid_raw
        self.trace = trace  # the order record's traceparent, while it waits for its payment

    def expires_at(self, window_ms: int) -> int:
        return max(self.ts, self.paid_t) + window_ms


class RecoveredPayment:
    __slots__ = ("payment_id", "deadline", "raw", "late", "persisted", "recovered_at", "trace")

    def __init__(self, payment_id: str, deadline: int, raw: bytes, late: bool = False, persisted: bool = False,
                 recovered_at: int = 0, trace: bytes | None = None):
        self.payment_id, self.deadline, self.raw, self.late, self.persisted = payment_id, deadline, raw, late, persisted
        self.recovered_at = recovered_at  # wall clock (ms) when the recovery was emitted
        self.trace = trace  # the payment's traceparent


Entry = PendingPayment | BufferedOrder | RecoveredPayment
Bundle = list[tuple[str, BufferedOrder]]  # matched pairs: (order_id, the matched order with its payment)


@dataclass(slots=True)  # not frozen: a frozen dataclass costs 1.2 us to make, a restore makes millions
class Change:
    """One changelog record to write: a store's key and its value now (None: delete it)."""

    store: Store
    key: str | int  # an order_id, or a bundle number for MATCHED
    value: Entry | Bundle | None


def payment_cmp(p: Payment) -> Cmp:
    return (p.user_id, p.amount, p.currency)


def order_cmp(o: Order) -> Cmp:
    return (o.user_id, o.amount, o.currency)


# ---------------------------------------------------------------- the state of one pair


class JoinState:
    """Pending payments, buffered and matched orders, recovered payments of one pair, with
    what the changelog must be told. The rules read the three maps directly and change
    them only through the methods below, which keep the bookkeeping."""

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms  # how long a matched pair is kept: timeout + grace
        self.pending: dict[str, PendingPayment] = {}
        self.orders: dict[str, BufferedOrder] = {}
        self.recovered: dict[str, RecoveredPayment] = {}
        self._live: tuple[dict, dict, dict] = (self.pending, self.orders, self.recovered)  # by Store
        # per store: order_id -> True if the changelog may hold a value for it (a tombstone
        # is due if the entry is gone by the commit)
        self._dirty: tuple[dict[str, bool], dict[str, bool], dict[str, bool]] = ({}, {}, {})
        self._new_matched: Bundle = []
        self._bundles: list[tuple[int, int]] = []  # heap of (expiry, bundle number) of bundles in the log
        self._expired_bundles: list[int] = []
        self._next_bundle = 0

    # ------------------------------------------------------------ changes the rules make

    def add(self, store: Store, oid: str, entry: BufferedOrder | RecoveredPayment) -> None:
        """A new entry under `oid` (ORDERS or RECOVERED)."""
        entry.persisted = self._settle(store, oid)
        self._live[store][oid] = entry

    def add_pending(self, oid: str, entry: compact.Fresh) -> None:
        if self._settle(Store.PENDING, oid):
            entry.flags |= compact.PERSISTED
        self.pending[oid] = entry

    def mark_late(self, oid: str, entry: PendingPayment) -> None:
        """The pending payment under `oid` has a late order now: write it at the next commit."""
        if type(entry) is bytes:
            entry = self.pending[oid] = compact.with_flag(entry, compact.LATE)
        else:
            entry.flags |= compact.LATE  # type: ignore[union-attr]
        self.touch(Store.PENDING, oid, bool(compact.flags_of(entry) & compact.PERSISTED))

    def drop(self, store: Store, oid: str, persisted: bool | int) -> None:
        """The entry under `oid` goes; `persisted`: its own flag (for a pending payment,
        its PERSISTED bit: true if set)."""
        del self._live[store][oid]
        self.touch(store, oid, persisted)

    def _settle(self, store: Store, oid: str) -> bool:
        """A new entry under `oid`: whether the changelog may hold a value for the key (a
        removed entry's, not yet tombstoned); the key is written at the next commit."""
        dirty = self._dirty[store]
        in_log = dirty[oid] = dirty.get(oid, False)
        return in_log

    def touch(self, store: Store, oid: str, persisted: bool) -> None:
        """The entry under `oid` changed (or went): write its key at the next commit."""
        dirty = self._dirty[store]
        dirty[oid] = persisted or dirty.get(oid, False)

    def matched(self, oid: str, entry: BufferedOrder) -> None:
        """`entry` (in `orders`) is now a matched pair: it goes to the next bundle, and an
        unmatched record it had in the changelog gives way."""
        if entry.persisted:
            self._dirty[Store.ORDERS][oid] = True
        self._new_matched.append((oid, entry))

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
        persisted_bit = compact.PERSISTED
        for store in (Store.PENDING, Store.ORDERS, Store.RECOVERED):
            dirty, live = self._dirty[store], self._live[store]
            if not dirty:
                continue
            for oid, in_log in dirty.items():
                entry = live.get(oid)
                if store == Store.PENDING and entry is not None:
                    if type(entry) is not bytes:  # fresh: packed now, as it waits across this commit
                        entry.flags |= persisted_bit
                        entry = live[oid] = entry.packed()
                    elif not entry[8] & persisted_bit:
                        entry = live[oid] = compact.with_flag(entry, persisted_bit)
                    changes.append(Change(store, oid, entry))
                elif store == Store.ORDERS and entry is not None and entry.paid_id is not None:
                    if in_log or entry.persisted:
                        changes.append(Change(store, oid, None))  # matched: its bundle holds it now
                    entry.persisted = False
                elif entry is not None:
                    entry.persisted = True
                    changes.append(Change(store, oid, entry))
                elif in_log:
                    changes.append(Change(store, oid, None))
            dirty.clear()
        for number in self._expired_bundles:
            changes.append(Change(Store.MATCHED, number, None))
        self._expired_bundles.clear()
        if self._new_matched:
            orders = self.orders
            live_pairs = [(oid, e) for oid, e in self._new_matched if orders.get(oid) is e]
            self._new_matched = []
            for bundle in _by_size(live_pairs):
                number = self._next_bundle
                self._next_bundle += 1
                heapq.heappush(self._bundles, (max(e.expires_at(self.window_ms) for _, e in bundle), number))
                changes.append(Change(Store.MATCHED, number, bundle))
        return changes

    def install(self, change: Change) -> None:
        """Install what the changelog holds for a key (its last value); the entry counts
        as persisted. Bundles go first (in number order), the other keys override them."""
        store, key, value = change.store, change.key, change.value
        if value is None:
            return
        if type(value) is list:  # a bundle of matched pairs (Store.MATCHED)
            assert isinstance(key, int)
            for oid, pair in value:
                self.orders[oid] = pair
            heapq.heappush(self._bundles, (max((e.expires_at(self.window_ms) for _, e in value), default=0), key))
            self._next_bundle = max(self._next_bundle, key + 1)
            return
        if store == Store.PENDING:
            assert isinstance(value, bytes)
            self.pending[key] = compact.with_flag(value, compact.PERSISTED)  # type: ignore[index]
            return
        value.persisted = True  # type: ignore[union-attr]
        self._live[store][key] = value

    def sizes(self) -> tuple[int, int, int]:
        return len(self.pending), len(self.orders), len(self.recovered)


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
