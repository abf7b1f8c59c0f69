"""Which recoveries the contract allows, when the plan says the order came back.

A payment whose order the traffic produced inside its window may still be recovered, and
rightly (CONTRACT.md, "Join semantics"): the join decides by the orders partition's
progress, and an order the join could not have read before that progress passed
deadline + GRACE is, by the contract, late. Two shapes were found in the soak
(tests/cluster/reports/):

- **late by disorder**: the order landed behind records stamped later (several producers
  write a partition; one held up by a broker fault delivers late). Progress is "the
  largest time two consecutive valid records of the partition both reach (for each valid
  record, the smaller of its timestamp and the previous valid record's)": if the records
  before the order already confirm deadline + GRACE, a worker reading the partition in
  order may recover the payment before it reads the order.
- **late in flight**: the order was appended only after the recovery was decided (it
  waited in a producer's retry queue; the partition was read to its end, and "once the
  partition is read to its end, it is the wall clock"). The join cannot see an order that
  is not in the log yet.

Anything else is a false recovery: the order was in the log, ahead of what the records
before it confirm, when the recovery was decided (a worker merely behind, an end of
partition trusted too soon). Pure: no Kafka; tests/cluster/test_recoveries.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

#: "nothing confirmed yet": the first valid record of a partition confirms nothing by itself
NOTHING = -1
#: a record the checker cannot see (no delivery report of it): it breaks the chain of
#: consecutive records, so progress computed around it comes out no higher than the
#: contract's, and a false recovery is never passed as late (see progress_before)
UNSEEN = -(2**63)
#: A recovery stamped (detected_at, the worker's wall clock) less than this after its
#: order's delivery report still counts as decided before the order was appended: the
#: worker stamps a decision after handling the batch that told it the partition's end
#: (the end is as of the broker's fetch answer, a little earlier), and both clocks are the
#: machine's one time.time() in whole milliseconds. The report came no earlier than the
#: broker acknowledged the order, which is no earlier than a consumer could fetch it
#: (acks=all: after the high watermark passed it). So the allowance can only let a false
#: recovery pass as in flight if it was decided within the order's acknowledgement time
#: plus this; each false one is reported with recovered_at - acked.
IN_FLIGHT_EPSILON_MS = 50


class Kind(StrEnum):
    MATCHED = "matched"  # order in its window, payment not recovered
    RECOVERED_MISSING = "recovered_missing"  # no order planned: recovered, as due
    RECOVERED_LATE = "recovered_late"  # order stamped past the deadline: recovered, as due
    LATE_BY_DISORDER = "late_by_disorder"  # order behind records confirming deadline + GRACE
    LATE_IN_FLIGHT = "late_in_flight"  # order appended after the recovery was decided
    FALSE = "false"  # a violation


@dataclass(frozen=True)
class Landed:
    """A recovered payment's order, produced inside its window, where it landed in the log
    (its producer's delivery report)."""

    order_id: str
    deadline_ms: int  # its payment's timestamp + ORDER_TIMEOUT
    partition: int
    offset: int
    timestamp_ms: int
    acked_ms: int  # wall clock when the delivery report came (>= when the order was appended)
    progress_before_ms: int  # P: what the valid records of its partition before it confirm


def progress_before(timestamps: Sequence[int | None], offsets: Iterable[int]) -> dict[int, int]:
    """For each of `offsets`, the progress confirmed by the valid records of a partition
    strictly before it (NOTHING when none is). `timestamps[k]`: the record at offset k;
    None when it is invalid (it moves nothing, and the next valid record pairs with the
    valid one before it), UNSEEN when the checker does not know it (the chain restarts
    after it: the pairs across it are not counted, so the result never exceeds the
    contract's progress)."""
    out: dict[int, int] = {}
    confirmed, previous, k = NOTHING, None, 0
    for at in sorted(set(offsets)):
        while k < min(at, len(timestamps)):
            ts, k = timestamps[k], k + 1
            if ts is None:
                continue
            if ts == UNSEEN:
                previous = None
                continue
            if previous is not None:
                confirmed = max(confirmed, min(previous, ts))
            previous = ts
        out[at] = confirmed
    return out


def judge(payment_id: str, order: Landed | None, recovered_at_ms: int, grace_ms: int) -> tuple[Kind, str]:
    """A recovery of a payment the plan did not expect recovered, by the contract: its kind,
    and the evidence in one line."""
    if order is None:
        return Kind.FALSE, f"{payment_id}: the plan expects no recovery and produced no order of it"
    due = order.deadline_ms + grace_ms
    where = (f"{payment_id}: deadline {order.deadline_ms}, recovered_at {recovered_at_ms}; order {order.order_id} "
             f"at partition {order.partition} offset {order.offset} stamped {order.timestamp_ms}, "
             f"P {order.progress_before_ms}, acked {order.acked_ms}")
    if recovered_at_ms < due:
        return Kind.FALSE, f"{where}: recovered before the wall clock passed deadline + GRACE ({due})"
    if order.progress_before_ms >= due:
        return Kind.LATE_BY_DISORDER, f"{where}: the records before it confirm deadline + GRACE ({due})"
    if recovered_at_ms < order.acked_ms + IN_FLIGHT_EPSILON_MS:
        return Kind.LATE_IN_FLIGHT, f"{where}: decided before the order was acknowledged"
    short = ("nothing" if order.progress_before_ms == NOTHING else
             f"{due - order.progress_before_ms} ms short of deadline + GRACE")
    return Kind.FALSE, (f"{where}: the order was acknowledged {recovered_at_ms - order.acked_ms} ms before the "
                        f"recovery (in the log at least that long), and the records before it confirm {short}")


@dataclass
class Classified:
    """One group's payments by the contract: counts of each kind, the recoveries it allows
    beyond the plan's (payment id -> order id: each must appear, its order on orders.late,
    its row reconciled), and the false ones with their evidence."""

    counts: dict[str, int] = field(default_factory=dict)
    also_recovered: dict[str, str] = field(default_factory=dict)
    false: dict[str, str] = field(default_factory=dict)  # payment id -> evidence


def classify(planned: dict[str, str], planned_late: set[str], planned_matched: int,
             recovered_at: dict[str, int], orders: dict[str, Landed | None], grace_ms: int) -> Classified:
    """`planned`: the plan's recoveries (payment id -> order id), `planned_late` the order
    ids among them stamped past the deadline, `planned_matched` how many payments had their
    order planned in the window; `recovered_at`: each recovered payment's first decision
    (detected_at, ms); `orders`: for each recovered payment not in the plan, its order as
    it landed (None: the plan produced none)."""
    out = Classified(counts={str(k): 0 for k in Kind})
    for pid, oid in planned.items():
        if pid in recovered_at:
            out.counts[Kind.RECOVERED_LATE if oid in planned_late else Kind.RECOVERED_MISSING] += 1
    within_window = 0
    for pid in sorted(set(recovered_at) - set(planned)):
        order = orders.get(pid)
        kind, why = judge(pid, order, recovered_at[pid], grace_ms)
        out.counts[kind] += 1
        within_window += order is not None
        if kind == Kind.FALSE:
            out.false[pid] = why
        else:
            assert order is not None
            out.also_recovered[pid] = order.order_id
    out.counts[Kind.MATCHED] = planned_matched - within_window
    return out
