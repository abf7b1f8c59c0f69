"""loadgen's plan: valid messages, keyed by order_id, and an answer that the core agrees with."""

from __future__ import annotations

from schemas import Order, Payment
from streams.join.core import Decisions, JoinParams, PartitionJoin, Side
from streams.tools.loadgen import Shares, merged, plan


def test_every_planned_record_is_a_valid_message_keyed_by_its_order_id() -> None:
    pays, ords, exp = plan(2_000, start_ms=1_800_000_000_000, spacing_ms=10, timeout_ms=5_000, seed=3)
    for kind, key, value, ts in pays + ords:
        msg = Order.decode(value) if kind == Side.ORDER else Payment.decode(value)
        assert key == msg.order_id.encode() and ts > 0
    assert exp.payments == len(pays) and exp.orders == len(ords)
    assert 20 < len(exp.recovered) < 100 and exp.late and exp.anomalies


def test_the_core_concludes_what_the_plan_expects() -> None:
    pays, ords, exp = plan(3_000, start_ms=1_800_000_000_000, spacing_ms=10, timeout_ms=5_000, seed=4,
                           shares=Shares(jitter_ms=1_000))
    core = PartitionJoin(JoinParams(5_000, 1_000, 3_600_000))
    out = Decisions()
    for kind, _, value, ts in merged(pays, ords):
        if kind == Side.ORDER:
            core.on_order(ts, Order.decode(value), value, out)
        else:
            core.on_payment(ts, Payment.decode(value), value, out)
        core.advance(0, False, False, out)
    core.advance(1_900_000_000_000, True, True, out)
    assert {r.payment.payment_id for r in out.recoveries} == exp.recovered
    assert {late.order.order_id for late in out.late} == exp.late
    assert out.matched == exp.matched
    kinds: dict[str, int] = {}
    for a in out.anomalies:
        kinds[a.kind] = kinds.get(a.kind, 0) + 1
    assert kinds == exp.anomalies
