"""loadgen's plan: valid messages, keyed by order_id, and an answer that the core agrees with."""

from __future__ import annotations

from schemas import Order, Payment
from streams.join.core import Decisions, JoinParams, PartitionJoin, Side
from streams.settings import load_settings
from streams.tools import loadgen
from streams.tools.loadgen import Shares, merged, paid_at_ms, plan


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


def test_paid_at_ms_is_the_timestamp_of_each_first_payment() -> None:
    pays, _, _ = plan(500, start_ms=1_800_000_000_000, spacing_ms=7.3, timeout_ms=5_000, seed=5)
    firsts = {}
    for _, _, value, ts in pays:
        pid = Payment.decode(value).payment_id
        firsts.setdefault(pid, ts)
    assert {pid: ts for pid, ts in firsts.items() if not pid.endswith("b")} == {
        f"p5-{i}": paid_at_ms(1_800_000_000_000, 7.3, i) for i in range(500)}


def test_produce_hands_each_record_its_delivery_report_and_serves_reports_at_once(monkeypatch) -> None:
    """(The cluster checker times each order's acknowledgement by its report.)"""
    calls: list[tuple[str, object]] = []

    class FakeProducer:
        def __init__(self, conf) -> None:
            pass

        def produce(self, topic, value, key, *, timestamp, on_delivery) -> None:
            calls.append(("produce", on_delivery))

        def poll(self, timeout) -> int:
            calls.append(("poll", timeout))
            return 0

        def flush(self, timeout) -> int:
            return 0

    monkeypatch.setattr(loadgen, "Producer", FakeProducer)
    pays, ords, _ = plan(20, start_ms=1_800_000_000_000, spacing_ms=10, timeout_ms=5_000, seed=6)

    def report(error, msg) -> None:
        pass

    loadgen.produce(load_settings(), merged(pays, ords), on_delivery=report)
    produced = [i for i, c in enumerate(calls) if c[0] == "produce"]
    assert produced and all(calls[i][1] is report for i in produced)
    assert all(calls[i + 1] == ("poll", 0) for i in produced), "polled after each record"
