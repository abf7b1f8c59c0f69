"""The two cores' outputs made comparable: decisions as tuples in the order the worker
writes them (recoveries, late orders, anomalies), and state as plain values."""

from __future__ import annotations

from schemas import Order
from streams.join import compact
from streams.join.core import Decisions, PartitionJoin


def _payment_of(record: bytes, oid: str) -> bytes:
    return compact.payment(record, oid).encode()


def python_decisions(out: Decisions) -> list[tuple]:
    """Decisions as comparable tuples, in the order the worker writes them."""
    got: list[tuple] = [("recover", r.payment.order_id, r.payment.encode(), r.deadline_ms, r.traces)
                        for r in out.recoveries]
    got += [("late", x.order.encode(), x.order_ts, x.payment_id, x.lateness_ms, x.traces) for x in out.late]
    got += [("flag", f.kind, f.order_id, tuple(p.encode() for p in f.payments),
             None if f.order is None else f.order.encode(), f.traces) for f in out.anomalies]
    return got


def native_decisions(decisions: list[tuple]) -> list[tuple]:
    by_kind: dict[str, list[tuple]] = {"recover": [], "late": [], "flag": []}
    for d in decisions:
        if d[0] == "recover":
            _, oid, record, deadline, traces = d
            by_kind["recover"].append(("recover", oid, _payment_of(record, oid), deadline, traces))
        elif d[0] == "late":
            _, order, ts, pid, lateness, traces = d
            by_kind["late"].append(("late", Order.decode(order).encode(), ts, pid, lateness, traces))
        else:
            _, kind, oid, payments, order, traces = d
            by_kind["flag"].append(("flag", kind, oid, tuple(_payment_of(p, oid) for p in payments),
                                    None if order is None else Order.decode(order).encode(), traces))
    return by_kind["recover"] + by_kind["late"] + by_kind["flag"]


def python_state(join: PartitionJoin) -> tuple:
    pending = {oid: e if isinstance(e, bytes) else e.packed() for oid, e in join.pending.items()}
    return (
        {oid: (compact.t_of(e), compact.flags_of(e) & ~compact.PERSISTED, compact.part_of(e), compact.trace_of(e))
         for oid, e in pending.items()},
        {oid: (e.ts, e.paid_id) for oid, e in join.orders.items()},
        {oid: (e.payment_id, e.deadline, e.late, e.trace) for oid, e in join.recovered.items()},
        {oid: (v >> 64, v & ((1 << 64) - 1)) for oid, v in join.settled.items()},
    )
