"""The recovery writer's database side: one transaction per batch, idempotent rows.

A recovered order is inserted once (unique order_id, unique recovery_id); if the order
already exists nothing is overwritten and the outcome is recorded; every recovery record
gets one audit row (a written outcome is unique per recovery_id, a rejection per record
read: so a redelivery adds nothing, and a rejected record claiming a real recovery's id
never takes that recovery's row; migration 0002). A late order is
kept in late_orders and marks the recovered row as reconciled, whichever of the two is
written first. A batch is done once its COMMIT is answered without a warning, and its
COMMIT always waits for a synchronous standby, if the server has one (DURABLE).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from schemas import LateOrder, Recovery
from streams.recover.rules import rejection

# One statement per batch: the batch comes in as one array per column (unnest), so the
# database plans and runs it once rather than once per record. Rows are taken in the
# batch's order (ord): of two recoveries for one order_id, the first is inserted and the
# second is recorded as already present, as if they had been written one by one. The
# arrays go in binary (%(name)b): dumping them as text costs the writer twice the CPU.
# The outcomes come back counted: a row per outcome, not a row per record.
INSERT_RECOVERED = """
WITH incoming AS (
    SELECT * FROM unnest(%(ord)b::int[], %(order_id)b::text[], %(user_id)b::text[], %(amount)b::numeric[],
                         %(currency)b::text[], %(created_at)b::timestamptz[], %(metadata)b::jsonb[],
                         %(payment_id)b::text[], %(recovery_id)b::uuid[], %(accept)b::bool[], %(reason)b::text[],
                         %(deadline)b::timestamptz[], %(detected_at)b::timestamptz[], %(topic)b::text[],
                         %(partition)b::int[], %(offset)b::bigint[])
        AS t(ord, order_id, user_id, amount, currency, created_at, metadata, payment_id, recovery_id, accept,
             reason, deadline, detected_at, topic, partition, "offset")
), inserted AS (
    INSERT INTO orders (order_id, user_id, amount, currency, created_at, metadata, source,
                        payment_id, recovery_id, recovered_at)
    SELECT order_id, user_id, amount, currency, created_at, metadata, 'recovery', payment_id, recovery_id, now()
    FROM incoming WHERE accept ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING recovery_id
), audited AS (
    INSERT INTO recovery_audit (recovery_id, order_id, payment_id, outcome, reason, deadline, detected_at,
                                source_topic, source_partition, source_offset)
    SELECT recovery_id, order_id, payment_id,
           CASE WHEN NOT accept THEN 'rejected'
                WHEN recovery_id IN (SELECT recovery_id FROM inserted) THEN 'inserted'
                ELSE 'already_present' END,
           CASE WHEN NOT accept THEN reason
                WHEN recovery_id IN (SELECT recovery_id FROM inserted) THEN NULL
                ELSE 'an order with this order_id exists; left unchanged' END,
           deadline, detected_at, topic, partition, "offset"
    FROM incoming ORDER BY ord
    ON CONFLICT DO NOTHING
    RETURNING outcome
)
SELECT outcome, count(*) FROM audited GROUP BY outcome
"""

INSERT_LATE = """
INSERT INTO late_orders (recovery_id, order_id, payment_id, real_order, lateness_seconds)
SELECT * FROM unnest(%(recovery_id)b::uuid[], %(order_id)b::text[], %(payment_id)b::text[], %(real_order)b::jsonb[],
                     %(lateness)b::float8[])
ON CONFLICT (recovery_id, order_id) DO NOTHING
"""

# Only a late order of the row's own order reconciles it (migration 0003).
RECONCILE = """
UPDATE orders o SET reconciled_at = l.received_at, reconciled_order = l.real_order
FROM late_orders l
WHERE o.recovery_id = l.recovery_id AND o.order_id = l.order_id AND o.reconciled_at IS NULL
  AND l.recovery_id = ANY(%b::uuid[])
"""


# Every batch writes WAL, also one whose rows are all there already (a redelivery; a retry
# after a COMMIT whose answer was lost: ON CONFLICT DO NOTHING writes nothing). A
# transaction that writes no WAL commits without waiting for a synchronous standby, so such
# a retry would be answered at once while the rows it found may be on this server alone (a
# COMMIT whose wait was cut short commits locally: pg_terminate_backend, pg_cancel_backend).
# With WAL of its own, its COMMIT waits for the standby, which confirms every commit before
# it, the earlier attempt's too. A transactional logical message: a few bytes of WAL, no
# table, no grant (logical decoding consumers, if any, see it under this prefix).
DURABLE = "SELECT pg_logical_emit_message(true, 'slipguard-writer', '')"


class CommitNotConfirmed(psycopg.OperationalError):
    """PostgreSQL answered the COMMIT with a warning. The one case known: its wait for a
    synchronous standby was cancelled, and the transaction committed on this server alone.
    Retried as a lost connection is (the retry waits for the standby again: DURABLE)."""


@dataclass(frozen=True)
class Item:
    """One decoded record of a batch, with where it came from."""

    topic: str
    partition: int
    offset: int
    message: Recovery | LateOrder


def _metadata_json(metadata: dict[str, Any]) -> bytes | str:
    """A payment's metadata as JSON for its jsonb column: msgspec's encoder, a tenth of
    json.dumps' time; the same jsonb (the same keys, strings and numbers: only spellings
    such as 1e16 for 1e+16 differ, which jsonb does not keep). What msgspec refuses (a
    lone surrogate: json.dumps escapes it and PostgreSQL rejects the row, which goes to
    the DLQ) is left to json.dumps, as before."""
    try:
        return _ENCODE_JSON(metadata)
    except (UnicodeEncodeError, TypeError, OverflowError):
        return json.dumps(metadata)


_ENCODE_JSON = msgspec.json.Encoder().encode


def _recovery_columns(items: list[Item], hmac_keys: tuple[bytes, ...] | None) -> dict[str, list]:
    """The batch's arrays, one per column of INSERT_RECOVERED, in the batch's order."""
    recoveries = cast(list[Recovery], [item.message for item in items])  # (write_batch passes recoveries only)
    payments = [r.payment for r in recoveries]
    reasons = [rejection(r, hmac_keys) for r in recoveries]
    return {
        "ord": list(range(len(items))),
        "order_id": [r.order_id for r in recoveries],
        "user_id": [p.user_id for p in payments],
        "amount": [p.amount for p in payments],
        "currency": [p.currency for p in payments],
        "created_at": [p.paid_at for p in payments],
        "metadata": [None if p.metadata is None else Jsonb(p.metadata, _metadata_json) for p in payments],
        "payment_id": [p.payment_id for p in payments],
        "recovery_id": [r.recovery_id for r in recoveries],
        "accept": [reason is None for reason in reasons],
        "reason": reasons,
        "deadline": [r.deadline for r in recoveries],
        "detected_at": [r.detected_at for r in recoveries],
        "topic": [item.topic for item in items],
        "partition": [item.partition for item in items],
        "offset": [item.offset for item in items],
    }


async def write_batch(conn: psycopg.AsyncConnection, items: list[Item],
                      hmac_keys: tuple[bytes, ...] | None) -> Counter[str]:
    """Write one batch in one transaction; returns the outcomes newly recorded (redeliveries count nothing)."""
    outcomes: Counter[str] = Counter()
    recoveries = [i for i in items if isinstance(i.message, Recovery)]
    lates = [i.message for i in items if isinstance(i.message, LateOrder)]
    committing = False
    warnings: list[str] = []

    def on_notice(diag: psycopg.errors.Diagnostic) -> None:
        if committing and diag.severity_nonlocalized == "WARNING":
            warnings.append(diag.message_primary or "")

    conn.add_notice_handler(on_notice)
    try:
        async with conn.transaction():
            await _statements(conn, recoveries, lates, hmac_keys, outcomes)
            committing = True  # the block's end is the COMMIT
    finally:
        conn.remove_notice_handler(on_notice)
    if warnings:
        raise CommitNotConfirmed(f"PostgreSQL answered the COMMIT with a warning: {warnings[0]}")
    return outcomes


async def _statements(conn: psycopg.AsyncConnection, recoveries: list[Item], lates: list[LateOrder],
                      hmac_keys: tuple[bytes, ...] | None, outcomes: Counter[str]) -> None:
    async with conn.cursor() as cur:
        await cur.execute(DURABLE)
        if recoveries:
            await cur.execute(INSERT_RECOVERED, _recovery_columns(recoveries, hmac_keys))
            for outcome, n in await cur.fetchall():
                outcomes[outcome] += n
        if lates:
            await cur.execute(INSERT_LATE, {
                "recovery_id": [m.recovery_id for m in lates], "order_id": [m.order_id for m in lates],
                "payment_id": [m.payment_id for m in lates],
                "real_order": [Jsonb(m.order.model_dump(mode="json")) for m in lates],
                "lateness": [m.lateness_seconds for m in lates],
            })
        ids = [i.message.recovery_id for i in recoveries] + [m.recovery_id for m in lates]
        await cur.execute(RECONCILE, (ids,))
        outcomes["reconciled"] += cur.rowcount
