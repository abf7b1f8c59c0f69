"""When things come due in a pair's state: the deadlines of pending payments, and the
expiry of buffered orders, matched pairs and recovered payments.

Pending payments' timers go in buckets of deadlines (2**SHIFT ms each), a bucket a list
of order_ids: 8 bytes a payment instead of a heap item of about 100 (memory per pending
payment is a target). An order_id whose entry went, or is another one now, is skipped
when its bucket comes up; the buckets are rebuilt when most of what they hold is stale.

Expiry goes by expiry time (heaps of (expiry, sequence, order_id, entry)), so one entry
far in the future holds up nothing behind it; an item whose entry went or was replaced
is skipped when it comes up.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Mapping
from typing import Generic, TypeVar

from streams.join import compact

SHIFT = 3
E = TypeVar("E")


class Deadlines:
    """Timers of pending payments, by deadline (event time + the timeout)."""

    def __init__(self, timeout_ms: int) -> None:
        self.timeout_ms = timeout_ms
        self._buckets: dict[int, list[str]] = {}  # bucket number -> order_ids
        self._heap: list[int] = []  # the bucket numbers
        self._count = 0  # order_ids in all buckets, stale ones too
        self._partial_due = -1  # the `due` a partly due first bucket was last scanned at

    def add(self, oid: str, t: int) -> None:
        """A payment at event time `t` pending under `oid`."""
        number = (t + self.timeout_ms) >> SHIFT
        bucket = self._buckets.get(number)
        if bucket is None:
            self._buckets[number] = [oid]
            heapq.heappush(self._heap, number)
        else:
            bucket.append(oid)
        self._count += 1
        if number == self._heap[0]:
            self._partial_due = -1  # the first bucket has a new entry: scan it again

    def any_due(self, due: int) -> bool:
        heap = self._heap
        return bool(heap) and heap[0] << SHIFT <= due

    def due(self, due: int, pending: Mapping[str, compact.Pending]) -> Iterator[tuple[str, compact.Pending, int]]:
        """(order_id, entry, deadline) of each pending payment whose deadline is <= due,
        bucket by bucket; the last bucket may be due only in part (it keeps the rest).
        The caller removes each one it is given before asking for the next."""
        heap, buckets, timeout = self._heap, self._buckets, self.timeout_ms
        while heap and heap[0] << SHIFT <= due:
            number = heap[0]
            whole = ((number + 1) << SHIFT) - 1 <= due
            if not whole and due == self._partial_due:
                return  # scanned at this due already
            oids = buckets[number]
            keep = []
            for oid in oids:
                e = pending.get(oid)
                if e is None:
                    continue  # matched or timed out since
                deadline = compact.t_of(e) + timeout
                if deadline >> SHIFT != number:
                    continue  # another entry under this order_id now, in its own bucket
                if deadline > due:
                    keep.append(oid)
                    continue
                yield oid, e, deadline
            if keep:
                self._count -= len(oids) - len(keep)
                buckets[number] = keep
                self._partial_due = due
                return
            self._pop()

    def tidy(self, pending: Mapping[str, compact.Pending]) -> None:
        """Rebuild the buckets when most of what they hold is stale."""
        if self._count > 64 and self._count > 2 * len(pending):
            self.rebuild(pending)

    def rebuild(self, pending: Mapping[str, compact.Pending]) -> None:
        """Buckets from the live pending payments only."""
        buckets: dict[int, list[str]] = {}
        shift, timeout = SHIFT, self.timeout_ms
        for oid, e in pending.items():
            buckets.setdefault((compact.t_of(e) + timeout) >> shift, []).append(oid)
        self._buckets, self._heap, self._count, self._partial_due = buckets, list(buckets), len(pending), -1
        heapq.heapify(self._heap)

    def oldest(self, pending: Mapping[str, compact.Pending]) -> int | None:
        """Event time of (about) the oldest pending payment: the earliest in the first bucket
        with a live entry. Leading buckets with none (their payments matched since) go, so
        each stale order_id is looked at once: the gauge is read after every commit."""
        heap, buckets, timeout = self._heap, self._buckets, self.timeout_ms
        while heap:
            number = heap[0]
            times = [t for t in (compact.t_of(e) for e in map(pending.get, buckets[number]) if e is not None)
                     if (t + timeout) >> SHIFT == number]
            if times:
                return min(times)
            self._pop()
        return None

    def holds(self, oid: str, t: int) -> bool:
        """Whether a timer for `oid` at event time `t` is in its bucket (tests)."""
        return oid in self._buckets.get((t + self.timeout_ms) >> SHIFT, ())

    def __len__(self) -> int:
        """Order_ids in the buckets, stale ones too."""
        return self._count

    def buckets(self) -> int:
        return len(self._buckets)

    def _pop(self) -> None:
        """Drop the first bucket in line: none of its order_ids has a live timer there now."""
        self._count -= len(self._buckets.pop(heapq.heappop(self._heap)))
        self._partial_due = -1  # it was about the bucket first in line


class Expiry(Generic[E]):
    """Entries of one map by expiry time; `due(limit, live)` gives those expired by then."""

    def __init__(self, seq: Callable[[], int]) -> None:
        self._heap: list[tuple[int, int, str, E]] = []
        self._seq = seq

    def add(self, expiry: int, oid: str, entry: E) -> None:
        heapq.heappush(self._heap, (expiry, self._seq(), oid, entry))

    def due(self, limit: int, live: Mapping[str, E]) -> Iterator[tuple[str, E]]:
        """(order_id, entry) of each entry whose expiry is <= limit and that is still the
        live one under its order_id. The caller may add an entry again (a later expiry)."""
        heap = self._heap
        while heap and heap[0][0] <= limit:
            _, _, oid, entry = heapq.heappop(heap)
            if live.get(oid) is entry:
                yield oid, entry


def sequence() -> Callable[[], int]:
    """A tie-breaker shared by a pair's expiry heaps (entries themselves do not compare)."""
    return itertools.count().__next__
