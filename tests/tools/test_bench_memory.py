"""The benchmark's memory figure counts everything the core keeps per pending payment."""

from __future__ import annotations

import sys

from schemas import Payment
from streams.join.core import Decisions, JoinParams, PartitionJoin
from streams.tools.bench import bytes_per_pending
from streams.tools.loadgen import Shares, plan


def test_memory_per_pending_payment_counts_everything_the_core_keeps() -> None:
    """A lower bound from the objects one pending payment holds: its compact entry, its
    order_id (the map's key) and its timer's slot in a bucket; the maps add their slots.
    (An earlier figure, 581 B, missed the decoded fields: allocated before tracing started.)"""
    pays, _, _ = plan(1, start_ms=1_800_000_000_000, spacing_ms=1, timeout_ms=3_600_000,
                      shares=Shares(missing=1.0, late=0, duplicates=0, second_payment=0, failed=0, mismatch=0))
    raw = pays[0][2]
    core = PartitionJoin(JoinParams(3_600_000, 5_000, 3_600_000))
    core.on_payment(pays[0][3], Payment.decode(raw), raw, Decisions())
    core.state.take_changes()  # as a payment waiting across a commit is: packed
    (oid, entry), = core.pending.items()
    assert type(entry) is bytes
    assert core.deadlines.holds(oid, pays[0][3]) and len(core.deadlines) == 1
    floor = sys.getsizeof(entry) + sys.getsizeof(oid) + 8
    measured = bytes_per_pending(3_000)
    assert floor <= measured <= floor + 150, (floor, measured)
