"""The recovery writer's database side: one transaction per batch, idempotent rows.

A recovered order is inserted once (unique order_id, unique recovery_id); if the order
already exists nothing is overwritten and the outcome is recorded; every recovery record
gets one audit row (unique recovery_id, so a redelivery adds nothing). A late order is
kept in late_orders and marks the recovered row as reconciled, whichever of the two is
written first.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import psycopg
from psycopg.types.json import Jsonb

from schemas import LateOrder, Recovery

INSERT_RECOVERED = """
WITH inserted AS (
    INSERT INTO orders (order_id, user_id, amount, currency, created_at, metadata, source,
                        payment_id, recovery_id, recovered_at)
    SELECT %(order_id)s, %(user_id)s, %(amount)s, %(currency)s, %(created_at)s, %(metadata)s, 'recovery',
           %(payment_id)s, %(recovery_id)s, now()
    WHERE %(accept)s
    ON CONFLICT DO NOTHING
    RETURNING order_id
)
INSERT INTO recovery_audit (recovery_id, order_id, payment_id, outcome, reason, deadline, detected_at,
                            source_topic, source_partition, source_offset)
SELECT %(recovery_id)s, %(order_id)s, %(payment_id)s,
       CASE WHEN NOT %(accept)s THEN 'rejected'
            WHEN EXISTS (SELECT 1 FROM inserted) THEN 'inserted'
            ELSE 'already_present' END,
       CASE WHEN NOT %(accept)s THEN %(reason)s
            WHEN EXISTS (SELECT 1 FROM inserted) THEN NULL
            ELSE 'an order with this order_id exists; left unchanged' END,
       %(deadline)s, %(detected_at)s, %(topic)s, %(partition)s, %(offset)s
ON CONFLICT (recovery_id) DO NOTHING
RETURNING outcome
"""

INSERT_LATE = """
INSERT INTO late_orders (recovery_id, order_id, payment_id, real_order, lateness_seconds)
VALUES (%(recovery_id)s, %(order_id)s, %(payment_id)s, %(real_order)s, %(lateness)s)
ON CONFLICT (recovery_id) DO NOTHING
"""

RECONCILE = """
UPDATE orders o SET reconciled_at = l.received_at, reconciled_order = l.real_order
FROM late_orders l
WHERE o.recovery_id = l.recovery_id AND o.reconciled_at IS NULL AND l.recovery_id = ANY(%s::uuid[])
"""


@dataclass(frozen=True)
class Item:
    """One decoded record of a batch, with where it came from."""

    topic: str
    partition: int
    offset: int
    message: Recovery | LateOrder


def _recovery_params(item: Item, hmac_key: bytes | None) -> dict:
    r = item.message
    assert isinstance(r, Recovery)
    p = r.payment
    reason = None
    if p.status != "succeeded":
        reason = f"payment status is {p.status}; only succeeded payments are recovered"
    elif hmac_key is not None and not p.signature_valid(hmac_key):
        reason = "payment signature missing or invalid"
    elif p.order_id != r.order_id:
        reason = f"recovery order_id {r.order_id} differs from the payment's {p.order_id}"
    return {
        "order_id": r.order_id, "user_id": p.user_id, "amount": p.amount, "currency": p.currency,
        "created_at": p.paid_at, "metadata": Jsonb(p.metadata) if p.metadata is not None else None,
        "payment_id": p.payment_id, "recovery_id": r.recovery_id, "accept": reason is None, "reason": reason,
        "deadline": r.deadline, "detected_at": r.detected_at,
        "topic": item.topic, "partition": item.partition, "offset": item.offset,
    }


async def write_batch(conn: psycopg.AsyncConnection, items: list[Item], hmac_key: bytes | None) -> Counter[str]:
    """Write one batch in one transaction; returns the outcomes newly recorded (redeliveries count nothing)."""
    outcomes: Counter[str] = Counter()
    recoveries = [i for i in items if isinstance(i.message, Recovery)]
    lates = [i.message for i in items if isinstance(i.message, LateOrder)]
    async with conn.transaction():
        async with conn.cursor() as cur:
            if recoveries:
                await cur.executemany(INSERT_RECOVERED, [_recovery_params(i, hmac_key) for i in recoveries],
                                      returning=True)
                while True:
                    row = await cur.fetchone()
                    if row is not None:
                        outcomes[row[0]] += 1
                    if not cur.nextset():
                        break
            if lates:
                await cur.executemany(INSERT_LATE, [
                    {"recovery_id": m.recovery_id, "order_id": m.order_id, "payment_id": m.payment_id,
                     "real_order": Jsonb(m.order.model_dump(mode="json")), "lateness": m.lateness_seconds}
                    for m in lates  # type: ignore[union-attr]
                ])
            ids = [i.message.recovery_id for i in recoveries] + [m.recovery_id for m in lates]  # type: ignore[union-attr]
            await cur.execute(RECONCILE, (ids,))
            outcomes["reconciled"] += cur.rowcount
    return outcomes
