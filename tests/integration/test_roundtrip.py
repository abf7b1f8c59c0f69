"""Every message type survives a real produce/consume round trip, partitioned like Java."""

from __future__ import annotations

from datetime import timedelta

from schemas import Anomaly, DeadLetter, LateOrder, Recovery, recovery_id_for
from tests.factories import T0, order, payment
from tests.integration.conftest import consume_all, produce
from tests.murmur2 import java_partition


def test_each_message_type_round_trips_keyed_by_order_id_on_the_java_partition(settings) -> None:
    p = payment()
    msgs = {
        settings.payments_topic: [payment(order_id=f"ord-{i}", payment_id=f"pay-{i}") for i in range(40)],
        settings.orders_topic: [order(order_id=f"ord-{i}") for i in range(40)],
        settings.recovery_topic: [Recovery(recovery_id=recovery_id_for(p.payment_id), order_id=p.order_id, payment=p,
                                           deadline=T0 + timedelta(seconds=60),
                                           detected_at=T0 + timedelta(seconds=65))],
        settings.late_topic: [LateOrder(order_id="ord-1", order=order(), payment_id="pay-1",
                                        recovery_id=recovery_id_for("pay-1"), lateness_seconds=1.25)],
        settings.anomalies_topic: [Anomaly(kind="user_mismatch", order_id="ord-1", payments=[p],
                                           order=order(user_id="u2"), detected_at=T0)],
    }
    for topic, items in msgs.items():
        produce(settings, topic, [(m.order_id.encode(), m.encode(), None) for m in items])
    for topic, items in msgs.items():
        got = consume_all(settings, topic, len(items))
        assert len(got) == len(items)
        model = type(items[0])
        decoded = {model.decode(m.value()).encode(): m for m in got}
        assert set(decoded) == {i.encode() for i in items}
        for m in got:
            assert m.key() == model.decode(m.value()).order_id.encode()
            assert m.partition() == java_partition(m.key(), 4), (topic, m.key())

    dead = DeadLetter(source_topic=settings.payments_topic, partition=1, offset=9, key_b64=None,
                      value_b64=DeadLetter.b64(b"\x00"), error="boom", failed_at=T0)
    produce(settings, settings.dlq_topic, [(b"x", dead.encode(), None)])
    [m] = consume_all(settings, settings.dlq_topic, 1)
    assert DeadLetter.decode(m.value()) == dead
